#!/usr/bin/env bash
# Does the fast update learn like the eager one, within seed noise? `scripts/speed_check.sh` for each
# seed (eager and fast side by side, 4,000 offline steps, project evaluator on the meta-train tasks),
# then each path's mean and std over the seeds and Welch's t per metric, judged by the rule fixed in
# docs/cpu_fast_learning_plan.md (|t| < 2 for every metric).
#
#   bash scripts/speed_check_seeds.sh       # SEEDS="0 1 2" STEPS=4000 BASE=runs/speed-check
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SEEDS=${SEEDS:-0 1 2}
BASE=${BASE:-runs/speed-check}
dirs=()
for s in $SEEDS; do
  echo "[speed_check_seeds] seed $s: eager and fast side by side, then evaluation (log: $BASE-s$s.txt)"
  SEED=$s OUT="$BASE-s$s" bash scripts/speed_check.sh >"$BASE-s$s.txt" 2>&1 || {
    echo "seed $s failed: see $BASE-s$s.txt" >&2; exit 1; }
  dirs+=("$BASE-s$s")
done
$PY -m cmrl.experiments.learning_check "${dirs[@]}"
