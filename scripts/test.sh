#!/usr/bin/env bash
# Fresh machine -> installed -> tested. The README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
export MUJOCO_GL=${MUJOCO_GL:-egl} HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
exec .venv/bin/python -m pytest -q "$@"
