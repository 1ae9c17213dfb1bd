#!/usr/bin/env bash
# The second phase that made the shipped ML10 pearl and cmrl (docs/adaptation.md, rounds 45 and 50):
# 4,000 offline steps from the 10,000-step weights (`checkpoints/ml10/<agent>-phase1`) with goal-
# variation contexts, relabelled where a task has a relabeller, then the project's evaluation on
# fresh variations of the meta-train tasks (the numbers the rounds' rules read).
#
#   bash scripts/ml10_second_phase.sh pearl [SEED] [OUT]   # pearl VT3: 3.3x data, task-wide contexts elsewhere
#   bash scripts/ml10_second_phase.sh cmrl [SEED] [OUT]    # cmrl FV: the original data
#
# STEPS overrides the 4,000 steps (a quick check). One thread per run; on a 2-core Intel Xeon the training took 541-709 s (pearl) and 808-1,541 s
# (cmrl), the evaluation about 2 minutes. The data is made first where it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
AGENT=${1:?usage: ml10_second_phase.sh pearl|cmrl [SEED] [OUT]}
SEED=${2:-0}
OUT=${3:-runs/ml10-second-phase/$AGENT-s$SEED}
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} MUJOCO_GL=${MUJOCO_GL:-egl}
case "$AGENT" in
  pearl)
    DATA=data/ml10-expert-x3
    DATA_ARGS=(--episodes 100 --noise 0.1,0.3 --random-episodes 17)
    FIELDS=(sac.context_from=variation sac.meta_batch=8 sac.context_relabel=1.0
            sac.reward_decoder=1.0 sac.decoder_relabel=1.0 sac.context_window=32
            sac.kl_weight=0.001 sac.relabel_recorded=true sac.unrelabelled_context_from=task) ;;
  cmrl)
    DATA=data/ml10-expert-v1
    DATA_ARGS=(--episodes 30 --noise 0.1,0.3 --random-episodes 5)
    FIELDS=(sac.context_from=variation sac.meta_batch=8 sac.context_relabel=1.0
            sac.relabel_recorded=true) ;;
  *) echo "agent must be pearl or cmrl, not $AGENT" >&2; exit 2 ;;
esac
SRC=checkpoints/ml10/$AGENT-phase1
[ -f "$DATA/cmrl_dataset.json" ] || $PY -m cmrl data --benchmark ml10 "${DATA_ARGS[@]}" --seed 0 --out "$DATA"
SETS=()
for f in "${FIELDS[@]}" "train.init_from=$SRC"; do SETS+=(--set "$f"); done
$PY -m cmrl train --config "$SRC/config.json" --offline "$DATA" --seed "$SEED" --steps "${STEPS:-4000}" \
  "${SETS[@]}" --run-dir "$OUT" --no-progress
$PY -m cmrl eval --checkpoint "$OUT" --split train --variations 10 --adaptation-episodes 3 \
  --eval-episodes 1 --seed 0 --json "$OUT/eval_train_s0.json"
