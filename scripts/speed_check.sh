#!/usr/bin/env bash
# The fast update learns what the eager one learns, and how much sooner: two offline cmrl runs that
# differ only in sac.update_impl (eager: the reference; fast: the default on CPU), same seed, data and
# budget, started side by side (one thread each, so both see the same machine), then both evaluated
# with the project evaluator. Prints wall times, their ratio, the loss curves side by side and the
# final success per task.
#
#   bash scripts/speed_check.sh            # STEPS=4000 SEED=0 OUT=runs/speed-check
set -euo pipefail
cd "$(dirname "$0")/.."
export MUJOCO_GL=${MUJOCO_GL:-egl} HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
PY=${PY:-.venv/bin/python}
STEPS=${STEPS:-4000}
SEED=${SEED:-0}
OUT=${OUT:-runs/speed-check}
DATA=${DATA:-data/ml4-expert-v1}
[ -f "$DATA/cmrl_dataset.json" ] || $PY -m cmrl data --benchmark ml4 --episodes 30 \
  --noise 0.1,0.3 --random-episodes 5 --seed 0 --out "$DATA"
mkdir -p "$OUT"
for impl in eager fast; do
  dir="$OUT/$impl"
  if ! $PY -m cmrl info --finished "$dir" >/dev/null 2>&1; then
    resume=(--agent cmrl --offline "$DATA" --steps "$STEPS" --batch-size 128 --eval-every "$STEPS"
            --checkpoint-every 1000 --seed "$SEED" --update-impl "$impl")
    [ -d "$dir/state" ] && resume=(--resume --steps "$STEPS")
    $PY -m cmrl train --run-dir "$dir" "${resume[@]}" --threads 1 --no-progress >"$dir.log" 2>&1 &
  fi
done
wait
for impl in eager fast; do
  [ -f "$OUT/$impl/evaluation.json" ] || $PY -m cmrl eval --checkpoint "$OUT/$impl" --variations 10 \
    --adaptation-episodes 3 --eval-episodes 1 --seed 0 --split train --json "$OUT/$impl/evaluation.json" \
    >>"$OUT/$impl.log" 2>&1 &
done
wait
$PY - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = {impl: [json.loads(x) for x in (out / impl / "metrics.jsonl").read_text().splitlines()]
        for impl in ("eager", "fast")}
wall = {impl: r[-1]["wall_time"] for impl, r in rows.items()}
print(f"wall time of {rows['fast'][-1]['grad_steps']:,} offline steps (one thread each, side by side): "
      f"eager {wall['eager']:.0f} s, fast {wall['fast']:.0f} s; fast/eager speed {wall['eager'] / wall['fast']:.2f}x")
print("step | kl eager / fast | critic_loss eager / fast | bc_mse eager / fast")
fast = {r["step"]: r for r in rows["fast"]}
for r in rows["eager"]:
    f = fast.get(r["step"])
    if f and "kl" in r and "kl" in f and r["step"] % 500 == 0:
        print(f"{r['step']} | {r['kl']:.3f} / {f['kl']:.3f} | {r['critic_loss']:.2f} / "
              f"{f['critic_loss']:.2f} | {r['bc_mse']:.4f} / {f['bc_mse']:.4f}")
for impl in ("eager", "fast"):
    ev = json.loads((out / impl / "evaluation.json").read_text())
    tasks = ev["splits"]["train"]["tasks"]
    print(f"{impl}: meta-train success after adaptation (10 fresh variations): "
          + ", ".join(f"{t} {v['success_rate']:.2f}" for t, v in tasks.items()))
PYEOF
