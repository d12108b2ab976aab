#!/usr/bin/env bash
# The platform end to end on a deployed stack: submits runtime/templates/hello to its cpu-small queue and
# waits for the result (queue, scaling from zero, node, agent, sandbox, workspace). Needs the pulumi CLI
# logged in and credentials of project ci's submitter role as user ci (scripts/assume-submitter.sh), whose
# session name the agents check against the job's address. CI runs it after every deploy of dev and staging.
#   bash scripts/smoke.sh acme/crucible/dev [timeout-seconds, default 900]
set -euo pipefail
cd "$(dirname "$0")/.."
stack=${1:?usage: bash scripts/smoke.sh <org/project/stack> [timeout-seconds]}
timeout=${2:-900}

output() { pulumi stack output "$1" --stack "$stack" --json; }
AWS_REGION=$(output region | jq -r .)
CRUCIBLE_BUCKET=$(output storage | jq -r .bucketName)
CRUCIBLE_QUEUES=$(output queues | jq -c 'map_values(map_values(.queueUrl))')
CRUCIBLE_SCHEDULING=$(output scheduling | jq -c .)
export AWS_REGION CRUCIBLE_BUCKET CRUCIBLE_QUEUES CRUCIBLE_SCHEDULING CRUCIBLE_PROJECT=ci CRUCIBLE_USER=ci

job=$(npm run --silent crucible -- submit runtime/templates/hello --tier cpu-small)
echo "submitted $job to $stack's cpu-small queue; waiting up to ${timeout}s for its result"
out=$(mktemp)
err=$(mktemp)
trap 'rm -f "$out" "$err"' EXIT
deadline=$((SECONDS + timeout))
while :; do
  status=0
  npm run --silent crucible -- result "$job" --json >"$out" 2>"$err" || status=$?
  if [ "$status" = 0 ]; then
    echo "job $job succeeded: $(jq -c .result "$out")"
    exit 0
  fi
  # Exit 2 with "no result yet" is the only answer worth waiting on; anything else is the answer.
  if [ "$status" != 2 ] || ! grep -q "has no result yet" "$err"; then
    echo "job $job did not succeed (exit $status):" >&2
    cat "$out" "$err" >&2
    exit 1
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "job $job has no result after ${timeout}s; its state:" >&2
    npm run --silent crucible -- status "$job" >&2 || true
    exit 1
  fi
  sleep 15
done
