#!/usr/bin/env bash
# Installs everything and runs the service: API on http://127.0.0.1:8000, one worker,
# an embedded Redis-compatible server when REDIS_URL is unset, artifacts under ./data,
# and the built-in SmolLM2 demo model registered (preparation takes a few minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# shellcheck disable=SC1091
. .venv/bin/activate
exec python -m app.local_stack "$@"
