#!/usr/bin/env bash
# Reproduce the ML4 results (docs/results.md) end to end: data -> Ray sweep -> evaluations -> shipped
# checkpoints -> fine-tuning -> results.json, tables and figures.
#
#   bash scripts/reproduce_ml4.sh [STAGE...]      stages: data sweep eval ship finetune report
#                                                 variants (default: all but variants, in order)
# `variants` is the method ablation (docs/results.md, "Method variants"): every cmrl variant screened at 1 seed
# and 4,000 steps on ML4 and the leave-one-task-out split, the finalists and baseline at 3 seeds and
# 10,000 steps, then the table and the pre-registered choice (`python -m cmrl ablation`).
# Every stage resumes or skips finished work, so a killed run is continued by running it again.
# Knobs (environment): STEPS (offline gradient steps, 10000), SEEDS (0,1,2), FT_STEPS (fine-tuning
# env steps, 20000), CONCURRENT (trials at once, 2), OUT (work folder, runs/ml4-repro), AGENTS
# ("cmrl pearl sm") and ARMS ("meta scratch meta-bc"; on 2 cores run them side by side, e.g.
# ARMS=meta and ARMS=scratch at once). meta-bc: meta-trained, with a TD3+BC term towards the replay's
# own actions and 1,000 critic-only updates first.
# Needs the dev install (`bash scripts/setup.sh --dev`, which includes Ray).
set -euo pipefail
cd "$(dirname "$0")/.."
export MUJOCO_GL=${MUJOCO_GL:-egl} HF_HUB_OFFLINE=1
PY=${PY:-.venv/bin/python}
STEPS=${STEPS:-10000}
SEEDS=${SEEDS:-0,1,2}
FT_STEPS=${FT_STEPS:-20000}
CONCURRENT=${CONCURRENT:-2}
OUT=${OUT:-runs/ml4-repro}
DATA=${DATA:-data/ml4-expert-v1}
SHIP=${SHIP:-checkpoints/ml4}
read -r -a AGENTS <<< "${AGENTS:-cmrl pearl sm}"
read -r -a ARMS <<< "${ARMS:-meta scratch meta-bc}"
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(data sweep eval ship finetune report)

finished() {  # a run directory whose training reached its budget
  $PY - "$1" <<'PYEOF'
import json, sys
from pathlib import Path
try:
    info = json.loads((Path(sys.argv[1]) / "config.json").read_text())
except (OSError, ValueError):
    sys.exit(1)
t = info["config"]["train"]
done = info.get("grad_steps" if t["mode"] == "offline" else "env_steps") or 0
sys.exit(0 if done >= t["steps"] else 1)
PYEOF
}
run_dirs() { for a in "${AGENTS[@]}"; do for s in ${SEEDS//,/ }; do echo "$OUT/sweep/$a-s$s"; done; done; }

for stage in "${stages[@]}"; do
  echo "== $stage"
  case $stage in
    data)
      [ -f "$DATA/cmrl_dataset.json" ] || $PY -m cmrl data --benchmark ml4 --episodes 30 \
        --noise 0.1,0.3 --random-episodes 5 --seed 0 --out "$DATA" ;;
    sweep)
      $PY -m cmrl sweep --agents cmrl,pearl,sm --seeds "$SEEDS" --out "$OUT/sweep" \
        --cpus-per-trial 1 --max-concurrent "$CONCURRENT" --offline "$DATA" --steps "$STEPS" \
        --batch-size 128 --eval-every 2000 --checkpoint-every 1000 ;;
    eval)
      for run in $(run_dirs); do
        if ! finished "$run"; then echo "skip $run: training not finished" >&2; continue; fi
        [ -f "$run/evaluation.json" ] || $PY -m cmrl eval --checkpoint "$run" --variations 10 \
          --adaptation-episodes 3 --eval-episodes 1 --seed 0 --json "$run/evaluation.json"
        [ -f "$run/metaworld_evaluation.json" ] || $PY -m cmrl eval --checkpoint "$run" \
          --protocol metaworld --variations 10 --adaptation-episodes 3 --eval-episodes 1 --seed 0 \
          --json "$run/metaworld_evaluation.json"
      done ;;
    ship)
      # Seed 0 of each agent at checkpoints/ml4/<agent> (the app's default is cmrl), the other
      # seeds under checkpoints/ml4/seeds/; weights, config, metrics and evaluations, no replay.
      for run in $(run_dirs); do
        [ -f "$run/metaworld_evaluation.json" ] || { echo "$run is not evaluated yet" >&2; exit 1; }
      done
      rm -rf "$SHIP"; mkdir -p "$SHIP/seeds"
      for run in $(run_dirs); do
        name=$(basename "$run"); agent=${name%-s*}
        dest="$SHIP/seeds/$name"; [ "$name" = "$agent-s0" ] && dest="$SHIP/$agent"
        $PY -m cmrl ship "$run" "$dest" >/dev/null  # paths in its JSON made relative to here
      done ;;
    finetune)  # from the seed-0 runs, the ones shipped at checkpoints/ml4/<agent>
      for a in "${AGENTS[@]}"; do
        for arm in "${ARMS[@]}"; do
          dir="$OUT/finetune/$a-$arm"; flag=()
          [ $arm = scratch ] && flag=(--scratch)
          [ $arm = meta-bc ] && flag=(--bc-weight 2.5 --critic-warmup 1000)
          [ -f "$dir/finetune.json" ] && continue
          resume=(); [ -d "$dir/state" ] && resume=(--resume)
          $PY -m cmrl finetune --checkpoint "$OUT/sweep/$a-s0" --task window-close-v3 --steps "$FT_STEPS" \
            --eval-every 2000 --eval-variations 10 --seed 0 --threads 1 --run-dir "$dir" \
            --no-progress "${flag[@]}" "${resume[@]}"
        done
      done ;;
    report)
      $PY -m cmrl report --root "$SHIP" --finetune "$OUT"/finetune/* --figures assets ;;
    variants)
      PY=$PY bash scripts/variant_runs.sh
      $PY -m cmrl ablation --root runs/variants/4000 --json runs/variants/screening.json
      finalists=$($PY -c 'import json, sys; print(" ".join(json.load(open(sys.argv[1]))
        ["screening"]["finalists"]))' runs/variants/screening.json)
      PY=$PY STEPS=10000 SEEDS=0,1,2 VARIANTS="$finalists baseline" bash scripts/variant_runs.sh
      $PY -m cmrl ablation --root runs/variants/4000 --finalists runs/variants/10000 \
        --json runs/variants/ablation.json ;;
    *) echo "unknown stage $stage (data sweep eval ship finetune report variants)" >&2; exit 2 ;;
  esac
done
