#!/usr/bin/env bash
# What `npm test` needs on a fresh machine: the npm dependencies, a Docker engine and the base images.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x node_modules/.bin/vitest ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi
bash scripts/ensure-docker.sh
