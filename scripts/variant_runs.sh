#!/usr/bin/env bash
# Method variants of cmrl (cmrl/variants.py) on ML4 and on the leave-one-task-out validation split,
# trained offline and evaluated; the runs behind docs/method_selection.md and docs/results.md's ablation.
#
#   bash scripts/variant_runs.sh                    # screening: every variant, seed 0, 4,000 steps
#   STEPS=10000 SEEDS=0,1,2 VARIANTS="baseline task-routing" bash scripts/variant_runs.sh
#
# Knobs (environment): VARIANTS (default: all), BENCHES ("ml4 loto"), SEEDS (0), STEPS (4000),
# CONCURRENT (2 runs at a time, one thread each), OUT (runs/variants/<STEPS>).
# Each run: train (resumed if killed), then evaluation.json (10 variations, 3 adaptation episodes,
# zero-shot episode first) and evaluation_unseen.json (the same with phrasings never trained on).
# Running it again skips what is finished.
set -euo pipefail
cd "$(dirname "$0")/.."
export MUJOCO_GL=${MUJOCO_GL:-egl} HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
export PY=${PY:-.venv/bin/python}
export STEPS=${STEPS:-4000}
SEEDS=${SEEDS:-0}
CONCURRENT=${CONCURRENT:-2}
export OUT=${OUT:-runs/variants/$STEPS}
read -r -a BENCHES <<< "${BENCHES:-ml4 loto}"
if [ -z "${VARIANTS:-}" ]; then
  VARIANTS=$($PY -c 'from cmrl.variants import VARIANTS; print(" ".join(VARIANTS))')
fi

ML4_DATA=data/ml4-expert-v1
LOTO_DATA=data/loto-drawer-open
[ -f $ML4_DATA/cmrl_dataset.json ] || $PY -m cmrl data --benchmark ml4 --episodes 30 \
  --noise 0.1,0.3 --random-episodes 5 --seed 0 --out $ML4_DATA
[ -f $LOTO_DATA/cmrl_dataset.json ] || $PY -m cmrl data --benchmark custom \
  --train-tasks drawer-close-v3,window-open-v3 --test-tasks drawer-open-v3 --episodes 30 \
  --noise 0.1,0.3 --random-episodes 5 --seed 0 --out $LOTO_DATA

run_one() {  # VARIANT BENCH SEED
  local variant=$1 bench=$2 seed=$3 dir="$OUT/$1/$2-s$3" bench_args
  if [ "$bench" = loto ]; then
    bench_args=(--offline data/loto-drawer-open --benchmark custom
                --train-tasks drawer-close-v3,window-open-v3 --test-tasks drawer-open-v3)
  else
    bench_args=(--offline data/ml4-expert-v1 --benchmark ml4)
  fi
  if ! $PY -m cmrl info --finished "$dir" >/dev/null 2>&1; then
    if [ -d "$dir/state" ]; then
      $PY -m cmrl train --run-dir "$dir" --resume --steps "$STEPS" --threads 1 --no-progress
    else
      $PY -m cmrl train --agent cmrl --variant "$variant" "${bench_args[@]}" --steps "$STEPS" \
        --batch-size 128 --eval-every 2000 --checkpoint-every 1000 --seed "$seed" --threads 1 \
        --run-dir "$dir" --no-progress
    fi
  fi >"$dir.log" 2>&1 || { echo "FAILED $dir (see $dir.log)"; return 0; }
  [ -f "$dir/evaluation.json" ] || $PY -m cmrl eval --checkpoint "$dir" --variations 10 \
    --adaptation-episodes 3 --eval-episodes 1 --seed 0 --json "$dir/evaluation.json" >>"$dir.log" 2>&1
  [ -f "$dir/evaluation_unseen.json" ] || $PY -m cmrl eval --checkpoint "$dir" --variations 10 \
    --adaptation-episodes 3 --eval-episodes 1 --seed 0 --unseen-paraphrases \
    --json "$dir/evaluation_unseen.json" >>"$dir.log" 2>&1
  echo "done $dir"
}
export -f run_one

mkdir -p "$OUT"
for v in $VARIANTS; do for b in "${BENCHES[@]}"; do for s in ${SEEDS//,/ }; do
  mkdir -p "$OUT/$v"; echo "$v $b $s"
done; done; done | xargs -P "$CONCURRENT" -n 3 bash -c 'run_one "$@"' _
