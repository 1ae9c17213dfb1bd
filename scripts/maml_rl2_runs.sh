#!/usr/bin/env bash
# The rl2 and maml runs of docs/maml_rl2.md: point robot (3 seeds each) and ML1 reach (seed 0),
# then both evaluators. Usage: scripts/maml_rl2_runs.sh [point|ml1|eval] [OUT] (default: all, runs).
# Each run checkpoints as it goes; rerunning resumes a killed run (train --resume).
set -euo pipefail
cd "$(dirname "$0")/.."
export MUJOCO_GL=${MUJOCO_GL:-egl} HF_HUB_OFFLINE=1
PY=${PY:-.venv/bin/python}
WHAT=${1:-all}
OUT=${2:-runs}

# the point robot: rl2 with a small fast-learning GRU (the settings of its learning test, 4-episode
# trials), maml with the defaults but a 1e-3 outer learning rate
RL2_POINT="--ppo-lr 3e-3 --rl2-hidden 64 --rl2-embed 32 --init-std 0.5 --ppo-reward-scale 1.0
           --tasks-per-iteration 16 --ppo-epochs 4 --ppo-minibatches 2"
MAML_POINT="--ppo-lr 1e-3 --tasks-per-iteration 20"
POINT_STEPS_RL2=${POINT_STEPS_RL2:-150000}
POINT_STEPS_MAML=${POINT_STEPS_MAML:-60000}
# ML1 reach: the onpolicy defaults (rl2 GRU 128, PPO 10 epochs at 5e-4; maml 100x100, inner lr 0.1,
# 5 outer PPO steps at 5e-4) with a meta-batch of 10 goal variations
ML1_STEPS=${ML1_STEPS:-3000000}

train() {  # run_dir, then train flags
  local dir=$1; shift
  if [ -d "$dir/state" ]; then
    $PY -m cmrl train --resume --run-dir "$dir" --no-progress
  else
    $PY -m cmrl train --run-dir "$dir" --threads 1 --no-progress "$@"
  fi
}

if [[ $WHAT == all || $WHAT == point ]]; then
  for s in 0 1 2; do
    # shellcheck disable=SC2086
    train "$OUT/point/rl2-s$s" --agent rl2 --benchmark point --seed "$s" --steps "$POINT_STEPS_RL2" \
      --eval-every 30000 --eval-variations 10 --checkpoint-every 30000 $RL2_POINT &
    # shellcheck disable=SC2086
    train "$OUT/point/maml-s$s" --agent maml --benchmark point --seed "$s" --steps "$POINT_STEPS_MAML" \
      --eval-every 12000 --eval-variations 10 --checkpoint-every 12000 $MAML_POINT &
  done
  wait
fi
if [[ $WHAT == all || $WHAT == ml1 ]]; then
  train "$OUT/ml1/reach-v3/maml-s0" --agent maml --benchmark ml1:reach-v3 --seed 0 --steps "$ML1_STEPS" \
    --eval-every 240000 --eval-variations 5 --checkpoint-every 48000 --tasks-per-iteration 10 \
    --ppo-epochs 5 &
  train "$OUT/ml1/reach-v3/rl2-s0" --agent rl2 --benchmark ml1:reach-v3 --seed 0 --steps "$ML1_STEPS" \
    --eval-every 240000 --eval-variations 5 --checkpoint-every 48000 --tasks-per-iteration 10 &
  wait
fi
if [[ $WHAT == all || $WHAT == eval ]]; then
  # the project's evaluator: zero-shot, 3 adaptation episodes, 1 evaluation episode, 20 variations
  for run in "$OUT"/point/*-s* "$OUT"/ml1/reach-v3/*-s*; do
    [ -f "$run/config.json" ] || continue
    $PY -m cmrl eval --checkpoint "$run" --variations 20 --adaptation-episodes 3 --no-progress \
      --json "$run/evaluation.json"
  done
  # Meta-World's own metalearning_evaluation (ML1's held-out goals), 10 rounds of one variation
  for run in "$OUT"/ml1/reach-v3/*-s*; do
    [ -f "$run/config.json" ] || continue
    $PY -m cmrl eval --checkpoint "$run" --protocol metaworld --split test --variations 10 \
      --adaptation-episodes 3 --json "$run/metaworld_evaluation.json"
  done
fi
