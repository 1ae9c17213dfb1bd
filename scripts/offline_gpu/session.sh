#!/usr/bin/env bash
# On a GPU machine without internet (PyTorch there; the rest from bundle.sh's .device/): unpack,
# then run the parts named, each within a time cap, logs and results under OUT.
#   tests  the tests that need CUDA (tests/test_speed.py -k cuda: the graphed update against fast)
#   bench  python -m cmrl bench --sections gpu (JSON saved after each configuration)
#   speed  ML4 cmrl offline runs, one after another: RUNS="impl:seed:steps[:cap_s] ..." (default
#          STEPS steps, seed 0, once per path in IMPLS); run dirs OUT/gpu_ml4_runs.tgz:gpu-ml4/
#          <impl> for seed 0 at STEPS, <impl>-s<seed>-<steps> otherwise (no optimiser state)
#
#   OUT=/tmp/out bash scripts/offline_gpu/session.sh tests bench speed
# Knobs: PY (python3), STEPS (2000), IMPLS ("compiled fast eager"), SECONDS_PER_FIGURE (1.5),
# BENCH_CAP (300 s), RUN_CAP (90 s; compiled +20), DEVICE (cuda), SKIP_PIP (set: packages already
# importable), CMRL_BENCH_GPU_COMPILE=0 (bench without the compiled path).
set -u
cd "$(dirname "$0")/../.."
B=.device
OUT=${OUT:-runs/offline-gpu}
PY=${PY:-python3} STEPS=${STEPS:-2000} DEVICE=${DEVICE:-cuda}
L=$OUT/logs; mkdir -p "$L"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 MUJOCO_GL=disable  # physics only: no GL context
S=$(mktemp -d)
mkdir -p "$S/stub/glfw" && touch "$S/stub/glfw/__init__.py"  # gymnasium imports glfw, never calls it here
[ -n "${SKIP_PIP:-}" ] || $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
  --target "$S/site" $B/whl/*.whl || exit 3
mkdir -p "$S/mw" && tar xJf $B/metaworld-blank-textures.tar.xz -C "$S/mw"
for f in $B/*-expert-v1.tar.xz; do [ -e "$f" ] && tar xJf "$f"; done
export PYTHONPATH=$S/stub:$S/mw:$S/site:$PWD
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
  lscpu | grep -E "Model name|^CPU\(s\)"
  $PY -c "import torch, mujoco, metaworld, minari; print('torch', torch.__version__, 'mujoco', mujoco.__version__, 'cuda', torch.cuda.is_available())"
} 2>&1 | tee "$L/machine.txt"
for part in "$@"; do
  case $part in
    tests)
      timeout 300 $PY -m pytest -q -p no:cacheprovider tests/test_speed.py -k cuda -rs \
        > "$L/tests.log" 2>&1
      echo "tests rc=$? at ${SECONDS}s"; tail -15 "$L/tests.log" ;;
    bench)
      timeout "${BENCH_CAP:-300}" $PY -m cmrl bench --sections gpu --seconds "${SECONDS_PER_FIGURE:-1.5}" \
        --json "$OUT/bench_gpu.json" > "$L/bench.log" 2>&1
      echo "bench rc=$? at ${SECONDS}s"; tail -25 "$L/bench.log" ;;
    speed)
      runs=${RUNS:-}
      [ -n "$runs" ] || for impl in ${IMPLS:-compiled fast eager}; do runs="$runs $impl:0:$STEPS"; done
      for run in $runs; do
        IFS=: read -r impl seed steps cap <<< "$run"
        name=$impl; [ "$seed:$steps" = "0:$STEPS" ] || name=$impl-s$seed-$steps
        t=$SECONDS; cap=${cap:-${RUN_CAP:-90}}; [ $impl = compiled ] && cap=$((cap + 20))
        timeout $cap $PY scripts/offline_gpu/train.py $B/minilm_table.npz train --agent cmrl \
          --offline data/ml4-expert-v1 --steps "$steps" --batch-size 128 --eval-every 0 \
          --checkpoint-every 500 --seed "$seed" --update-impl $impl --device "$DEVICE" --text-encoder minilm \
          --run-dir "$S/runs/gpu-ml4/$name" --no-progress > "$L/train_$name.log" 2>&1
        echo "train $name rc=$? wall $((SECONDS - t)) s"; tail -1 "$L/train_$name.log"
      done
      tar czf "$OUT/gpu_ml4_runs.tgz" --exclude=state -C "$S/runs" gpu-ml4 ;;
    *) echo "unknown part $part (tests, bench, speed)" >&2; exit 2 ;;
  esac
done
(cd "$OUT" && tar czf logs.tgz logs && rm -rf logs)
