#!/usr/bin/env bash
# Fresh machine -> installed -> app running on http://127.0.0.1:7860. The README's app command.
#   GRADIO_SERVER_NAME / GRADIO_SERVER_PORT   where to serve (default 127.0.0.1:7860)
#   CMRL_HOSTED=1                             a public page: the Train tab launches nothing
#   CMRL_MAX_TRAIN_STEPS=N                    cap the steps of runs launched from the Train tab
#   CMRL_MAX_TRAIN_SECONDS=N                  cap their wall time (default 100,000 steps, 4 h)
#   CMRL_ALLOWED_ROOTS=DIR1:DIR2              load checkpoints / datasets from these folders too
#                                             (also: scripts/run_app.sh --allow-root DIR)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MUJOCO_GL=${MUJOCO_GL:-egl} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
export MALLOC_ARENA_MAX=${MALLOC_ARENA_MAX:-2}  # rollout threads come and go: few malloc arenas
exec .venv/bin/python app.py "$@"
