#!/usr/bin/env bash
# The end-to-end suite: real browsers (Debian's Chromium via playwright-core), npm eventsource,
# httpx-sse, Starlette and Express apps, around the real ssegate binary. Installs what it needs:
# Chromium from Debian (if missing), pinned npm packages (package-lock.json) and pinned Python
# packages (requirements.txt) into e2e/.venv.
set -euo pipefail
cd "$(dirname "$0")"

if [ ! -x /usr/bin/chromium ]; then
  echo "== installing chromium from Debian"
  if [ "$(id -u)" -eq 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; fi
fi
echo "== npm ci"
npm ci --no-audit --no-fund --loglevel=error
echo "== python packages"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
echo "== building ssegate"
(cd .. && cargo build --quiet --bin ssegate)
echo "== e2e tests"
exec .venv/bin/python -m pytest "$@"
