#!/usr/bin/env bash
# Installs Label Studio into its own venv (.venv-labelstudio) for the review integration test.
# It pins its own Django, pandas and friends, so it stays out of the service's environment.
# Idempotent: does nothing when the pinned version is already there.
set -euo pipefail

VERSION="${LABEL_STUDIO_VERSION:-1.23.2}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LABEL_STUDIO_VENV:-$ROOT/.venv-labelstudio}"
PYTHON="${PYTHON:-python3}"

if [ -x "$VENV/bin/label-studio" ] \
   && "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('label-studio') != '$VERSION')" 2>/dev/null; then
  echo "label-studio $VERSION already in $VENV"
  exit 0
fi

"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "label-studio==$VERSION"
# `label-studio --version` would try to reach the network for the latest release; importing is enough.
"$VENV/bin/python" -c "import label_studio"
echo "label-studio $VERSION installed in $VENV"
