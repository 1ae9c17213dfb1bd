#!/usr/bin/env bash
# One-step setup for a fresh machine: Debian packages for headless MuJoCo rendering (and Chromium
# for the browser tests with --dev), a virtual environment in .venv, and the Python packages.
# Idempotent: running it again only installs what is missing.
#   bash scripts/setup.sh          # app + library
#   bash scripts/setup.sh --dev    # + test and benchmark tools
set -euo pipefail
cd "$(dirname "$0")/.."
DEV=0
[ "${1:-}" = "--dev" ] && DEV=1
PY=${PYTHON:-python3}

apt_pkgs="libegl1 libegl-mesa0 libgl1-mesa-dri libglvnd0 ffmpeg"
[ $DEV = 1 ] && apt_pkgs="$apt_pkgs chromium"
missing=""
for p in $apt_pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  echo "[setup] apt-get install:$missing"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip >/dev/null
# torch first and pinned, so nothing later can pull a CUDA build.
$PIP install -q torch==2.13.0
$PIP install -q -r requirements.txt -c constraints.txt
$PIP install -q --no-deps -r requirements-clip.txt
if [ $DEV = 1 ]; then
  $PIP install -q -r requirements-dev.txt -c constraints.txt
  $PIP install -q -r requirements-ray.txt -c constraints.txt
fi
echo "[setup] done: $(.venv/bin/python -c 'import torch, metaworld, gradio; print("torch", torch.__version__, "| gradio", gradio.__version__)')"
