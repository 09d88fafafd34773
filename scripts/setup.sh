#!/usr/bin/env bash
# Installs srum-ray into ./.venv (created if missing). Usage: scripts/setup.sh [EXTRAS]
# On a machine without a GPU it installs the CPU build of torch first, so that nothing
# pulls a multi-GB CUDA build; with a GPU (nvidia-smi works) it keeps or installs the
# torch your index offers.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=${1:-dev}
PY=${PYTHON:-python3}
TORCH_VERSION=${SRUM_TORCH_VERSION:-2.13.0}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPY=.venv/bin/python
"$VPY" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
if ! "$VPY" -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    "$VPY" -m pip install -q torch
  else
    # SRUM_TORCH_INDEX: a CPU-only torch index for machines whose pip would pick a CUDA build
    "$VPY" -m pip install -q "torch==${TORCH_VERSION}" ${SRUM_TORCH_INDEX:+--index-url "$SRUM_TORCH_INDEX"}
  fi
fi
# keep whatever torch is installed now: nothing below may replace it
"$VPY" -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > "$constraints"
"$VPY" -m pip install -q -c "$constraints" -e ".[${EXTRAS}]"
echo "srum-ray installed in .venv ($("$VPY" -c 'import torch; print("torch", torch.__version__)'))" >&2
