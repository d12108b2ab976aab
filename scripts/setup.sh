#!/usr/bin/env bash
# What `npm test` needs on a fresh machine: the npm dependencies, the built runtime, Debian's Chromium
# (the console's browser test), a Docker engine and the base images.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x node_modules/.bin/vitest ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi
# runtime/dist: the `crucible` command (npx crucible, npm run crucible, npm start) and what
# @crucible/runtime resolves to without the "development" condition. Incremental, and nothing to do when
# no source is newer than the last build. Type errors do not stop the tests: tsc emits regardless, and
# npm run typecheck reports them.
npm run -s build:fresh
# npm ci links a workspace's bin only if its file exists, and the runtime is built after it links (by
# prepare): link `crucible` now that runtime/dist holds it, so `npx crucible` finds the built CLI.
[ -e node_modules/.bin/crucible ] || npm rebuild --ignore-scripts @crucible/runtime >/dev/null
# The console's browser test (test/runtime/console/) drives Debian's Chromium through playwright-core,
# which brings no browser of its own.
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: /usr/bin/chromium is missing and installing it needs root on Debian: apt-get install chromium" >&2
    exit 1
  fi
  echo "setup: installing Debian's chromium (the console's browser test)" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
bash scripts/ensure-docker.sh
