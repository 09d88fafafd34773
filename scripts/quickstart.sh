#!/usr/bin/env bash
# Installs srum-ray into ./.venv and runs the main job on the embedded default (configs/tiny.yaml).
# Extra arguments are config overrides, e.g.: scripts/quickstart.sh run.rounds=3
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh sam
exec .venv/bin/srum-ray run --config configs/tiny.yaml "$@"
