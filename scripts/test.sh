#!/usr/bin/env bash
# Set up .venv (with test tools) and Debian's Chromium, then run every test.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh tests/test_masks.py -x`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh requirements-test.txt
if [ ! -x /usr/bin/chromium ]; then
  # The browser tests drive Debian's Chromium; Playwright's own browser download is not used.
  sudo_cmd=""
  if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null; then sudo_cmd="sudo"; fi
  if command -v apt-get >/dev/null; then
    $sudo_cmd apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq chromium >/dev/null || echo "warning: could not install chromium" >&2
  fi
fi
exec .venv/bin/python -m pytest -q "$@"
