#!/usr/bin/env bash
# Install what tests/integration/test_ui_browser.py needs: Debian's chromium and the playwright Python package.
# Idempotent: does nothing when /usr/bin/chromium exists and playwright is importable.
# Playwright's own browser download (`playwright install`) is blocked here, so the test drives the
# system chromium through executable_path; we never run `playwright install`.
# Usage: activate the project's virtualenv first (pip installs into the active environment).
set -euo pipefail

CHROMIUM=/usr/bin/chromium
PYTHON="${PYTHON:-python}"

if [ -x "$CHROMIUM" ]; then
    echo "chromium: already installed ($("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM"))"
else
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
            echo "error: need root (or sudo) to apt-get install chromium" >&2; exit 1
        fi
    fi
    echo "chromium: installing with apt-get"
    $SUDO apt-get update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y chromium
    [ -x "$CHROMIUM" ] || { echo "error: apt-get installed chromium but $CHROMIUM is missing" >&2; exit 1; }
fi

if "$PYTHON" -c "import playwright.sync_api" >/dev/null 2>&1; then
    echo "playwright: already importable ($("$PYTHON" -m pip show playwright 2>/dev/null | sed -n 's/^Version: //p'))"
else
    echo "playwright: installing into $("$PYTHON" -c 'import sys; print(sys.prefix)')"
    CONSTRAINTS="$(cd "$(dirname "$0")/.." && pwd)/constraints.txt"
    if [ -f "$CONSTRAINTS" ]; then
        "$PYTHON" -m pip install -c "$CONSTRAINTS" "playwright>=1.40"
    else
        "$PYTHON" -m pip install "playwright>=1.40"
    fi
    "$PYTHON" -c "import playwright.sync_api"
fi
