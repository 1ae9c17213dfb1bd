#!/usr/bin/env bash
# Ship the ML10 screen (scripts/ml10_screen.sh): its finished, evaluated runs of cmrl (variant
# CMRL_RUNS, default the recipes' text-prior) and the baselines are copied without optimiser state
# to STAGE (runs/ml10-ship/<agent>/s<seed>); `cmrl report` there writes the multi-seed
# results.json, ml10_groups.py the task-group table; SHIP (checkpoints/ml10) gets seed 0 of each
# agent (weights, config, metrics, evaluations: ~2.5 MB each) and those two tables, which the app's
# Results tab and checkpoint list read; FIGURES (assets/ml10) gets the success figures (docs/results.md).
# ALSO (default cmrl-baseline: today's default cmrl) are more run groups of SRC, staged and shipped
# under their own names. Agents or seeds not finished or not
# evaluated are left out and listed. Tables label runs by their config (`cmrl` is the baseline
# variant, `cmrl:text-prior` the recipe's).
#
#   bash scripts/ml10_ship.sh      # SRC=runs/ml10-steps10000 CMRL_RUNS=cmrl-text-prior AGENTS="pearl sm care" ALSO=cmrl-baseline
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SRC=${SRC:-runs/ml10-steps10000}
CMRL_RUNS=${CMRL_RUNS:-cmrl-text-prior}
AGENTS=${AGENTS:-pearl sm care}
ALSO=${ALSO-cmrl-baseline}
SEEDS=${SEEDS:-0 1 2}
STAGE=${STAGE:-runs/ml10-ship}
SHIP=${SHIP:-checkpoints/ml10}
FIGURES=${FIGURES:-assets/ml10}
rm -rf "$STAGE"; mkdir -p "$STAGE"
missing=()
for pair in "cmrl:$CMRL_RUNS" $(for a in $AGENTS $ALSO; do echo "$a:$a"; done); do
  agent=${pair%%:*} src=${pair#*:}
  for s in $SEEDS; do
    run="$SRC/$src/s$s"
    if [ ! -f "$run/evaluation.json" ]; then missing+=("$agent s$s"); continue; fi
    $PY -m cmrl ship "$run" "$STAGE/$agent/s$s" >/dev/null  # no state; paths made relative
  done
done
$PY -m cmrl report --root "$STAGE" --figures "$FIGURES"
PYTHONPATH=. $PY scripts/ml10_groups.py "$STAGE" --json "$STAGE/groups.json"
rm -rf "$SHIP"; mkdir -p "$SHIP"
for d in "$STAGE"/*/s0; do
  [ -d "$d" ] && cp -r "$d" "$SHIP/$(basename "$(dirname "$d")")"
done
cp "$STAGE/results.json" "$STAGE/groups.json" "$SHIP/"
[ ${#missing[@]} -eq 0 ] || echo "not shipped (not finished or not evaluated): ${missing[*]}"
du -sh "$SHIP"
