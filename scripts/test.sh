#!/usr/bin/env bash
# Installs everything and runs the whole test suite (what .ci/run calls).
#   scripts/test.sh                 lint + every test, the slow SmolLM2 ones included
#   scripts/test.sh -m "not slow"   extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test
# shellcheck disable=SC1091
. .venv/bin/activate
export ZEROUNLEARN_TORCH_THREADS=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
ruff check .
python -m pytest -q "$@"
