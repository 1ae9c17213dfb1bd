#!/usr/bin/env bash
# The rl2 and maml runs of docs/maml_rl2.md: point robot and ML1 reach (3 seeds each), ML4 and ML1
# pick-place and push (seed 0; SEEDS= and AGENTS= pick others), then both evaluators.
# Usage: [SEEDS="1 2"] [AGENTS=maml|rl2] scripts/maml_rl2_runs.sh
#          [point|ml1|ml4|pickplace|push|reachlonger|eval] [OUT] (default: all, runs).
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
# ML1 reach, a meta-batch of 10 goal variations: maml with the onpolicy defaults (100x100, inner lr
# 0.1) and 5 outer PPO steps at 5e-4; rl2 with a GRU of 128, PPO 5 epochs x 2 minibatches at 1e-3,
# initial action std 0.5
ML1_STEPS=${ML1_STEPS:-3000000}
ML4_STEPS=${ML4_STEPS:-1000000}
PICK_PUSH_STEPS=${PICK_PUSH_STEPS:-1500000}

wants() {  # whether AGENTS (default both) names this agent
  [[ " ${AGENTS:-maml rl2} " == *" $1 "* ]]
}

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
  for s in 0 1 2; do
    train "$OUT/ml1/reach-v3/maml-s$s" --agent maml --benchmark ml1:reach-v3 --seed "$s" \
      --steps "$ML1_STEPS" --eval-every 240000 --eval-variations 5 --checkpoint-every 48000 \
      --tasks-per-iteration 10 --ppo-epochs 5 &
    train "$OUT/ml1/reach-v3/rl2-s$s" --agent rl2 --benchmark ml1:reach-v3 --seed "$s" \
      --steps "$ML1_STEPS" --eval-every 240000 --eval-variations 5 --checkpoint-every 48000 \
      --tasks-per-iteration 10 --ppo-lr 1e-3 --init-std 0.5 --ppo-epochs 5 --ppo-minibatches 2 &
  done
  wait
fi
if [[ $WHAT == all || $WHAT == ml4 ]]; then
  # ML4 (seed 0; SEEDS="1 2" for more, AGENTS= for one agent): the ML1 settings, a meta-batch of 12
  # (4 goal variations of each meta-train task)
  for s in ${SEEDS:-0}; do
    wants maml && \
    train "$OUT/ml4/maml-s$s" --agent maml --benchmark ml4 --seed "$s" --steps "$ML4_STEPS" \
      --eval-every 240000 --eval-variations 5 --checkpoint-every 48000 --tasks-per-iteration 12 \
      --ppo-epochs 5 &
    wants rl2 && \
    train "$OUT/ml4/rl2-s$s" --agent rl2 --benchmark ml4 --seed "$s" --steps "$ML4_STEPS" \
      --eval-every 240000 --eval-variations 5 --checkpoint-every 48000 --tasks-per-iteration 12 \
      --ppo-lr 1e-3 --init-std 0.5 --ppo-epochs 5 --ppo-minibatches 2 &
    wait
  done
fi
for task in pick-place push; do
  [[ $WHAT == all || $WHAT == ${task//-/} ]] || continue
  # ML1 pick-place and push (seed 0; SEEDS="1 2" for more, AGENTS= for one agent): reach's settings
  # at half its budget
  for s in ${SEEDS:-0}; do
    wants maml && \
    train "$OUT/ml1/$task-v3/maml-s$s" --agent maml --benchmark "ml1:$task-v3" --seed "$s" \
      --steps "$PICK_PUSH_STEPS" --eval-every 240000 --eval-variations 5 --checkpoint-every 48000 \
      --tasks-per-iteration 10 --ppo-epochs 5 &
    wants rl2 && \
    train "$OUT/ml1/$task-v3/rl2-s$s" --agent rl2 --benchmark "ml1:$task-v3" --seed "$s" \
      --steps "$PICK_PUSH_STEPS" --eval-every 240000 --eval-variations 5 --checkpoint-every 48000 \
      --tasks-per-iteration 10 --ppo-lr 1e-3 --init-std 0.5 --ppo-epochs 5 --ppo-minibatches 2 &
    wait
  done
done
if [[ $WHAT == reachlonger ]]; then
  # rl2 on ML1 reach trained on from its 3M-step weights (fresh optimiser, same flags): 1.5M env
  # steps more per seed, 4.5M in all (docs/maml_rl2.md, "rl2 on reach, longer"). The shipped rl2
  # reach weights are the 4.5M ones since; the 3M ones are in git at commit 5994079:
  #   git worktree add /tmp/rl2-3m 5994079 && SRC=/tmp/rl2-3m/checkpoints/ml1/reach-v3 ...
  SRC=${SRC:-checkpoints/ml1/reach-v3}
  for s in ${SEEDS:-0 1 2}; do
    src=$SRC/rl2; [ "$s" = 0 ] || src=$SRC/seeds/rl2-s$s
    train "$OUT/ml1/reach-v3/rl2-longer-s$s" --config "$src/config.json" --init-from "$src" \
      --seed "$s" --steps "${MORE_STEPS:-1500000}"
  done
fi
if [[ $WHAT == all || $WHAT == eval ]]; then
  # the project's evaluator: zero-shot, 3 adaptation episodes, 1 evaluation episode, 20 variations
  for run in "$OUT"/point/*-s* "$OUT"/ml1/*/*-s* "$OUT"/ml4/*-s*; do
    [ -f "$run/config.json" ] || continue
    $PY -m cmrl eval --checkpoint "$run" --variations 20 --adaptation-episodes 3 --no-progress \
      --json "$run/evaluation.json"
  done
  # Meta-World's own metalearning_evaluation on the held-out split, 10 rounds of one variation,
  # after 3 adaptation episodes and after none
  for run in "$OUT"/ml1/*/*-s* "$OUT"/ml4/*-s*; do
    [ -f "$run/config.json" ] || continue
    $PY -m cmrl eval --checkpoint "$run" --protocol metaworld --split test --variations 10 \
      --adaptation-episodes 3 --json "$run/metaworld_evaluation.json"
    $PY -m cmrl eval --checkpoint "$run" --protocol metaworld --split test --variations 10 \
      --adaptation-episodes 0 --json "$run/metaworld_evaluation_zeroshot.json"
  done
fi
