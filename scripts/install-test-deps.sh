#!/usr/bin/env bash
# Installs what the test suite needs outside Python, only where it is missing:
# a Java runtime (PySpark), Debian's Chromium (the page test), and Azurite (the Azure Blob emulator).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v java >/dev/null 2>&1 || need_apt+=(openjdk-17-jre-headless)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${need_apt[@]}"
fi

if [ ! -x tools/node_modules/.bin/azurite ]; then
  mkdir -p tools
  npm install --prefix tools --no-audit --no-fund --silent azurite@3
fi
