#!/usr/bin/env bash
# ML10 end to end: data -> Ray sweeps -> evaluations (both protocols, zero-shot and adapted) ->
# shipped checkpoints -> results.json, tables, per-group table and figures.
#
#   bash scripts/reproduce_ml10.sh [STAGE...]     stages: data sweep eval ship report
#                                                 (default: all, in that order)
# Every stage resumes or skips finished work, so a killed run is continued by running it again.
#
# What runs: cmrl (the variant VARIANT of cmrl/variants.py) and the baselines pearl, sm, care,
# SEEDS each, offline from one dataset of ML10's 10 meta-train tasks (scripted experts at action
# noise 0.1 and 0.3, 30 episodes each, plus 5 random episodes; horizon 200; the 5 held-out tasks
# never generated). Each run is evaluated on 15 tasks (meta-train tasks on fresh goal variations):
#   evaluation.json                     project evaluator: zero-shot episode, 3 adaptation, 1 eval
#   metaworld_evaluation.json           metaworld.evaluation.metalearning_evaluation, 3 adaptation
#   metaworld_evaluation_zeroshot.json  the same with no adaptation episode (goal text only)
#   evaluation_unseen.json              (UNSEEN=1) project evaluator, phrasings never trained on
# Shipped: $SHIP/{cmrl,pearl,sm,care} (seed 0) and $SHIP/seeds/<agent>-s<seed>; every ALSO_VARIANTS
# cmrl variant under $SHIP-variants/cmrl-<variant>/ with a report of its own.
#
# Knobs (environment): VARIANT (baseline: today's default cmrl), ALSO_VARIANTS (more cmrl variants,
# e.g. "baseline" once VARIANT names the chosen one; default none), AGENTS ("pearl sm care"),
# STEPS (offline gradient steps, 10000), SEEDS (0,1,2), BATCH (transitions per task per update,
# 128), EVAL_EVERY (2000), CONCURRENT (trials at once, one thread each, 2), VARIATIONS (goal
# variations per task per evaluation, 10), UNSEEN (0), OUT (runs/ml10-repro), DATA
# (data/ml10-expert-v1), SHIP (checkpoints/ml10), FIGURES (assets/ml10).
# Budget on a 2-core CPU: see docs/speed.md (per-update speeds at 10 tasks x 128).
# Needs the dev install (`bash scripts/setup.sh --dev`, which includes Ray).
set -euo pipefail
cd "$(dirname "$0")/.."
export MUJOCO_GL=${MUJOCO_GL:-egl} HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
PY=${PY:-.venv/bin/python}
VARIANT=${VARIANT:-baseline}
read -r -a ALSO <<< "${ALSO_VARIANTS:-}"
read -r -a AGENTS <<< "${AGENTS:-pearl sm care}"
STEPS=${STEPS:-10000}
SEEDS=${SEEDS:-0,1,2}
BATCH=${BATCH:-128}
EVAL_EVERY=${EVAL_EVERY:-2000}
CONCURRENT=${CONCURRENT:-2}
VARIATIONS=${VARIATIONS:-10}
UNSEEN=${UNSEEN:-0}
OUT=${OUT:-runs/ml10-repro}
DATA=${DATA:-data/ml10-expert-v1}
SHIP=${SHIP:-checkpoints/ml10}
FIGURES=${FIGURES:-assets/ml10}
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(data sweep eval ship report)
variants=("$VARIANT" "${ALSO[@]}")
seeds=${SEEDS//,/ }

run_dirs() {  # every run directory: the cmrl variants', then the baselines'
  for v in "${variants[@]}"; do for s in $seeds; do echo "$OUT/cmrl-$v/cmrl-s$s"; done; done
  for a in "${AGENTS[@]}"; do for s in $seeds; do echo "$OUT/baselines/$a-s$s"; done; done
}
sweep_flags=(--benchmark ml10 --offline "$DATA" --steps "$STEPS" --seeds "$SEEDS"
             --batch-size "$BATCH" --eval-every "$EVAL_EVERY" --checkpoint-every 1000
             --cpus-per-trial 1 --max-concurrent "$CONCURRENT" --text-encoder minilm)
EVAL_FILES=(config.json model.safetensors metrics.jsonl evaluation.json metaworld_evaluation.json
            metaworld_evaluation_zeroshot.json)
[ "$UNSEEN" = 1 ] && EVAL_FILES+=(evaluation_unseen.json)

ship_run() {  # RUN DEST: weights, config, metrics and evaluations; no replay or optimiser state,
  $PY -m cmrl ship "$1" "$2" >/dev/null  # and no absolute paths
}

for stage in "${stages[@]}"; do
  echo "== $stage"
  case $stage in
    data)
      [ -f "$DATA/cmrl_dataset.json" ] || $PY -m cmrl data --benchmark ml10 --episodes 30 \
        --noise 0.1,0.3 --random-episodes 5 --seed 0 --out "$DATA" ;;
    sweep)
      for v in "${variants[@]}"; do
        $PY -m cmrl sweep --agents cmrl --variant "$v" --out "$OUT/cmrl-$v" "${sweep_flags[@]}"
      done
      if [ ${#AGENTS[@]} -gt 0 ]; then
        $PY -m cmrl sweep --agents "$(IFS=,; echo "${AGENTS[*]}")" --out "$OUT/baselines" \
          "${sweep_flags[@]}"
      fi ;;
    eval)
      for run in $(run_dirs); do
        if ! $PY -m cmrl info --finished "$run" >/dev/null 2>&1; then
          echo "skip $run: training not finished" >&2; continue
        fi
        ev() {  # FILE [eval flags]: written only once the evaluation has finished
          local file=$1; shift
          [ -f "$run/$file" ] || $PY -m cmrl eval --checkpoint "$run" --variations "$VARIATIONS" \
            --eval-episodes 1 --seed 0 --json "$run/$file" "$@"
        }
        ev evaluation.json --adaptation-episodes 3
        ev metaworld_evaluation.json --protocol metaworld --adaptation-episodes 3
        ev metaworld_evaluation_zeroshot.json --protocol metaworld --adaptation-episodes 0
        if [ "$UNSEEN" = 1 ]; then
          ev evaluation_unseen.json --adaptation-episodes 3 --unseen-paraphrases
        fi
      done ;;
    ship)
      for run in $(run_dirs); do
        for f in "${EVAL_FILES[@]}"; do
          [ -f "$run/$f" ] || { echo "$run has no $f yet (run the eval stage)" >&2; exit 1; }
        done
      done
      rm -rf "$SHIP"; mkdir -p "$SHIP/seeds"
      for s in $seeds; do
        dest="$SHIP/seeds/cmrl-s$s"; [ "$s" = 0 ] && dest="$SHIP/cmrl"
        ship_run "$OUT/cmrl-$VARIANT/cmrl-s$s" "$dest"
        for a in "${AGENTS[@]}"; do
          dest="$SHIP/seeds/$a-s$s"; [ "$s" = 0 ] && dest="$SHIP/$a"
          ship_run "$OUT/baselines/$a-s$s" "$dest"
        done
        for v in "${ALSO[@]}"; do
          ship_run "$OUT/cmrl-$v/cmrl-s$s" "$SHIP-variants/cmrl-$v/cmrl-s$s"
        done
      done ;;
    report)
      $PY -m cmrl report --root "$SHIP" --figures "$FIGURES"
      PYTHONPATH=. $PY scripts/ml10_groups.py "$SHIP" --json "$SHIP/groups.json"
      for v in "${ALSO[@]}"; do
        $PY -m cmrl report --root "$SHIP-variants/cmrl-$v"
        PYTHONPATH=. $PY scripts/ml10_groups.py "$SHIP-variants/cmrl-$v" \
          --json "$SHIP-variants/cmrl-$v/groups.json"
      done ;;
    *) echo "unknown stage $stage (data sweep eval ship report)" >&2; exit 2 ;;
  esac
done
