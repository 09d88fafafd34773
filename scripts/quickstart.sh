#!/usr/bin/env bash
# Installs srum-ray into ./.venv and runs the main job on the embedded default: SRUM on the
# shapes world (configs/shapes.yaml) through the Ray runtime on a local Ray, with the base model
# and the SFT baseline scored beside it by the exact evaluator.
# Extra arguments are config overrides, e.g.: scripts/quickstart.sh run.rounds=3
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh ray
exec .venv/bin/srum-ray demo --config configs/shapes.yaml "$@"
