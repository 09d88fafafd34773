#!/usr/bin/env bash
# Installs srum-ray with its test extras into ./.venv and runs the test suite.
# Extra arguments go to pytest, e.g.: scripts/test.sh -m "not slow" -x
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
exec .venv/bin/python -m pytest -q "$@"
