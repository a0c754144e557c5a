#!/usr/bin/env bash
# Debian's Chromium and its chromedriver for the browser tier (tests/test_browser.py); idempotent.
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    echo "browser: chromium and chromedriver already installed"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
packages=(chromium chromium-driver)
apt-get install -y -q --no-install-recommends "${packages[@]}" >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${packages[@]}" >/dev/null; }
echo "browser: $(/usr/bin/chromium --version 2>/dev/null | head -1)"
