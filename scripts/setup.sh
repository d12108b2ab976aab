#!/usr/bin/env bash
# What `npm test` needs on a fresh machine: the npm dependencies, the built runtime, a Docker engine and
# the base images.
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
bash scripts/ensure-docker.sh
