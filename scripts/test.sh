#!/usr/bin/env bash
# Installs everything and runs the whole test suite (what .ci/run calls).
#   scripts/test.sh                 lint, type check + every test, the slow SmolLM2 ones included
#   scripts/test.sh -m "not slow"   extra arguments go to pytest (one run, SQLite only)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test
# shellcheck disable=SC1091
. .venv/bin/activate
export ZEROUNLEARN_TORCH_THREADS=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
ruff check .
# Types: strict on the packages [tool.mypy] files lists in pyproject.toml.
python -m mypy
python -m pytest -q "$@"
# The tiny models are trained in the test session, and train to different weights on
# different CPU kernels: with no arguments, their quality tests run a second time under
# AVX2 kernels, on models retrained in their own cache (on a CPU without AVX-512 both
# passes use AVX2).
if [ "$#" -eq 0 ]; then
  ATEN_CPU_CAPABILITY=avx2 ZEROUNLEARN_TEST_CACHE="$PWD/.cache/avx2" python -m pytest -q \
    -m "not slow" tests/engine/test_zerounlearn_tiny.py tests/engine/test_sequential_tiny.py \
    tests/engine/test_retain_carry.py tests/engine/test_neutral.py \
    tests/engine/test_edit_history.py tests/engine/test_tiny_model.py \
    tests/engine/test_trained_families.py tests/engine/test_chained_edits.py
fi
# With no arguments (as .ci/run calls it), the API, worker and end-to-end suites run a
# second time with the metadata in PostgreSQL: a fresh database per service stack on the
# tests' throwaway server (the first run used the default SQLite file in each data
# directory).
if [ "$#" -eq 0 ]; then
  ZEROUNLEARN_TEST_DATABASE=postgresql python -m pytest -q -m "not slow" \
    tests/api/test_api_contract.py tests/e2e/test_end_to_end.py \
    tests/worker/test_worker_units.py tests/worker/test_worker_guards.py \
    tests/e2e/test_trust_end_to_end.py tests/e2e/test_coalescing.py \
    tests/e2e/test_s3_stack.py tests/e2e/test_sealing.py \
    tests/api/test_paging.py tests/store/test_old_data_dir.py
fi
