#!/usr/bin/env bash
# ML10 at a reduced budget, without Ray: every (agent, seed) trains offline and is then evaluated by
# the project's evaluator (zero-shot episode, 3 adaptation episodes, 1 evaluation episode, VARIATIONS
# fresh goal variations per task, all 15 tasks). JOBS at a time, one thread each. Rerunning it
# resumes killed trainings and skips finished ones, so it survives a lost session.
#
#   bash scripts/ml10_screen.sh            # the ML10 screen of docs/results.md (defaults below)
#
# Knobs (environment): RUNS ("AGENT[:VARIANT] ..."; default: cmrl:baseline cmrl:text-prior pearl),
# SEEDS (0 1 2), STEPS (4000), BATCH (128), JOBS (2), VARIATIONS (10), OUT (runs/ml10-steps$STEPS),
# DATA (data/ml10-expert-v1), FROM (a shorter screen's OUT: each of its runs is copied, without its
# evaluation, and trained on to STEPS with --resume instead of from scratch), MW (1: also Meta-World's
# own metalearning_evaluation, adapted and zero-shot, as reproduce_ml10.sh writes them).
# Make the data first with stage `data` of scripts/reproduce_ml10.sh.
#
#   STEPS=10000 FROM=runs/ml10-steps4000 bash scripts/ml10_screen.sh   # the 4,000-step runs to 10,000
# The full protocol (Ray sweeps, Meta-World's own evaluator, shipping) is reproduce_ml10.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
export MUJOCO_GL=${MUJOCO_GL:-egl} HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
PY=${PY:-.venv/bin/python}
RUNS=${RUNS:-cmrl:baseline cmrl:text-prior pearl}
SEEDS=${SEEDS:-0 1 2}
STEPS=${STEPS:-4000}
BATCH=${BATCH:-128}
JOBS=${JOBS:-2}
VARIATIONS=${VARIATIONS:-10}
OUT=${OUT:-runs/ml10-steps$STEPS}
DATA=${DATA:-data/ml10-expert-v1}
FROM=${FROM:-}
MW=${MW:-0}
[ -f "$DATA/cmrl_dataset.json" ] || { echo "no dataset at $DATA (bash scripts/reproduce_ml10.sh data)" >&2; exit 2; }
mkdir -p "$OUT"

reached() {  # RUN: its saved model has STEPS gradient steps (whatever budget its config names)
  $PY -m cmrl info --finished --steps "$STEPS" "$1" >/dev/null 2>&1
}
one() {  # AGENT[:VARIANT] SEED
  local agent=${1%%:*} variant="" name=$1 seed=$2
  [[ $1 == *:* ]] && variant=${1#*:} && name="$agent-$variant"
  local run="$OUT/$name/s$seed" log="$OUT/$name/s$seed.log"
  mkdir -p "$OUT/$name"
  if [ -n "$FROM" ] && [ ! -e "$run" ] && [ -d "$FROM/$name/s$seed/state" ]; then
    cp -r "$FROM/$name/s$seed" "$run" && rm -f "$run/evaluation.json"
    echo "[ml10_screen] continuing $FROM/$name/s$seed to $STEPS steps" >>"$log"
  fi
  if ! reached "$run"; then
    local resume=()
    [ -f "$run/config.json" ] && resume=(--resume)
    $PY -m cmrl train --agent "$agent" ${variant:+--variant "$variant"} --benchmark ml10 \
      --offline "$DATA" --steps "$STEPS" --batch-size "$BATCH" --eval-every 0 \
      --checkpoint-every 500 --seed "$seed" --threads 1 --text-encoder minilm \
      --run-dir "$run" "${resume[@]}" >>"$log" 2>&1
  fi
  if ! reached "$run"; then
    echo "FAILED $name s$seed: training did not finish (see $log)"; return 0
  fi
  [ -f "$run/evaluation.json" ] || $PY -m cmrl eval --checkpoint "$run" --variations "$VARIATIONS" \
    --adaptation-episodes 3 --eval-episodes 1 --seed 0 --json "$run/evaluation.json" \
    >>"$log" 2>&1
  if [ "$MW" = 1 ]; then  # Meta-World's own metalearning_evaluation, adapted and zero-shot
    [ -f "$run/metaworld_evaluation.json" ] || $PY -m cmrl eval --checkpoint "$run" --protocol metaworld \
      --variations "$VARIATIONS" --adaptation-episodes 3 --eval-episodes 1 --seed 0 \
      --json "$run/metaworld_evaluation.json" >>"$log" 2>&1
    [ -f "$run/metaworld_evaluation_zeroshot.json" ] || $PY -m cmrl eval --checkpoint "$run" \
      --protocol metaworld --variations "$VARIATIONS" --adaptation-episodes 0 --eval-episodes 1 \
      --seed 0 --json "$run/metaworld_evaluation_zeroshot.json" >>"$log" 2>&1
  fi
  echo "done $name s$seed"
}
export -f one reached
export PY OUT DATA STEPS BATCH VARIATIONS FROM MW
for s in $SEEDS; do for r in $RUNS; do echo "$r $s"; done; done \
  | xargs -P "$JOBS" -L 1 bash -c 'one "$0" "$1"'
