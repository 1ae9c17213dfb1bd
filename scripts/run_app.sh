#!/usr/bin/env bash
# Fresh machine -> installed -> app running on http://127.0.0.1:7860. The README's app command.
#   GRADIO_SERVER_NAME / GRADIO_SERVER_PORT   where to serve (default 127.0.0.1:7860)
#   CMRL_HOSTED=1                             a public page: the Train tab launches nothing
#   CMRL_MAX_TRAIN_STEPS=N                    cap the steps of runs launched from the Train tab
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MUJOCO_GL=${MUJOCO_GL:-egl} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
exec .venv/bin/python app.py "$@"
