#!/usr/bin/env bash
# The promotion's two guarantees, checked against Pulumi Cloud (needs the pulumi CLI logged in):
#   bash scripts/promote-check.sh <upstream> <commit>                 the upstream's last update ran <commit>,
#                                                                     so its digests are that commit's images;
#   bash scripts/promote-check.sh <upstream> <commit> <downstream>    and the downstream now runs exactly the
#                                                                     upstream's digests (nothing rebuilt).
# Stacks are org/project/stack names, such as acme/crucible/staging.
set -euo pipefail
upstream=${1:?usage: bash scripts/promote-check.sh <upstream> <commit> [<downstream>]}
commit=${2:?usage: bash scripts/promote-check.sh <upstream> <commit> [<downstream>]}
downstream=${3:-}

head=$(pulumi stack history --stack "$upstream" --json --page-size 20 |
  jq -r '[.[] | select(.kind == "update" and .result == "succeeded")][0].environment["git.head"] // empty')
if [ "$head" != "$commit" ]; then
  echo "::error::$upstream last deployed ${head:-no commit}, not $commit: deploy $commit there first (or promote the commit it runs)" >&2
  exit 1
fi
echo "$upstream runs $commit"
[ -n "$downstream" ] || exit 0

want=$(pulumi stack output imageRefs --stack "$upstream" --json)
got=$(pulumi stack output imageRefs --stack "$downstream" --json)
# Every family the downstream runs is the upstream's image, digest for digest.
mismatch=$(jq -n --argjson want "$want" --argjson got "$got" \
  '[$got | to_entries[] | select($want[.key] != .value) | "\(.key): \(.value) (upstream: \($want[.key]))"]')
if [ "$(jq length <<<"$mismatch")" != 0 ]; then
  echo "::error::$downstream does not run $upstream's images: $(jq -r 'join("; ")' <<<"$mismatch")" >&2
  exit 1
fi
echo "$downstream runs $upstream's digests:"
jq . <<<"$got"
if [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then
  {
    echo "### $downstream runs $upstream's images (commit $commit)"
    echo '```json'
    jq . <<<"$got"
    echo '```'
  } >>"$GITHUB_STEP_SUMMARY"
fi
