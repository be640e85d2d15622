#!/usr/bin/env bash
# Installs Debian's Chromium for the browser end-to-end tests (never a downloaded browser).
set -euo pipefail
if [ -x /usr/bin/chromium ]; then exit 0; fi
if [ "$(id -u)" != 0 ]; then
  echo "setup_browser: /usr/bin/chromium missing; install Debian's 'chromium' package (needs root)" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq chromium >/dev/null
