#!/usr/bin/env bash
# Rerun the second phase that made a shipped ML10 checkpoint (docs/adaptation.md, rounds 45 and 50):
# its own config (`checkpoints/ml10/<agent>/config.json`: 4,000 offline steps from
# `checkpoints/ml10/<agent>-phase1`, its dataset and context fields) at another seed, then the
# project's evaluation on fresh variations of the meta-train tasks, the numbers the rounds' rules read.
#
#   bash scripts/ml10_second_phase.sh pearl|cmrl [SEED] [OUT]
#
# The dataset is made first, by the command the checkpoint recorded, where it is missing. STEPS
# overrides the step count (a quick check). One thread per run: 10-25 minutes on a 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
AGENT=${1:?usage: ml10_second_phase.sh pearl|cmrl [SEED] [OUT]}
SEED=${2:-0}
OUT=${3:-runs/ml10-second-phase/$AGENT-s$SEED}
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} MUJOCO_GL=${MUJOCO_GL:-egl}
case "$AGENT" in pearl|cmrl) ;; *) echo "agent must be pearl or cmrl, not $AGENT" >&2; exit 2 ;; esac
CONFIG=checkpoints/ml10/$AGENT/config.json
read -r DATA DATA_CMD < <($PY -c 'import json, sys
d = json.load(open(sys.argv[1]))["offline_data"]
print(d["path"], d["command"].removeprefix("python "))' "$CONFIG")
[ -f "$DATA/cmrl_dataset.json" ] || $PY $DATA_CMD
STEP_ARGS=()
[ -n "${STEPS:-}" ] && STEP_ARGS=(--steps "$STEPS")
$PY -m cmrl train --config "$CONFIG" --seed "$SEED" "${STEP_ARGS[@]}" --run-dir "$OUT" --no-progress
$PY -m cmrl eval --checkpoint "$OUT" --split train --variations 10 --adaptation-episodes 3 \
  --eval-episodes 1 --seed 0 --json "$OUT/eval_train_s0.json"
