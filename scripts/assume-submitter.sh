#!/usr/bin/env bash
# Role chaining for CI's smoke job: from the smoke role (the stack-credentials action), become a project's
# submitter (stack output access.submitterRoleArns.<project>) as one user: the role session name and the one
# session tag crucible-user both the user's name, all the submitter's trust admits (infra/access.ts). SQS
# then reports the job's SenderId as <submitter role id>:<user>, which agents check against its address.
# Not aws-actions/configure-aws-credentials: with role-chaining it always adds its own GitHub session tags,
# which that trust refuses, and role-skip-session-tagging drops its custom-tags too.
#   bash scripts/assume-submitter.sh acme/crucible/dev [project, default ci] [user, default ci]
# Writes the session's credentials (masked) to $GITHUB_ENV, for the job's later steps.
set -euo pipefail
stack=${1:?usage: bash scripts/assume-submitter.sh <org/project/stack> [project] [user]}
project=${2:-ci}
user=${3:-ci}
: "${GITHUB_ENV:?GITHUB_ENV is not set: this runs as a GitHub Actions step}"

arn=$(pulumi stack output access --stack "$stack" --json | jq -r --arg p "$project" '.submitterRoleArns[$p] // empty')
if [ -z "$arn" ]; then
  echo "::error::$stack exports no access.submitterRoleArns.$project: declare project $project in crucible:access, its user $user the smoke role (README: CI and promotion)"
  exit 1
fi
# Chained sessions last at most an hour; the smoke job waits 15 minutes at most.
creds=$(aws sts assume-role --role-arn "$arn" --role-session-name "$user" \
  --tags "Key=crucible-user,Value=$user" --duration-seconds 3600 --query Credentials --output json)
for key in AccessKeyId SecretAccessKey SessionToken; do echo "::add-mask::$(jq -r ".$key" <<<"$creds")"; done
{
  echo "AWS_ACCESS_KEY_ID=$(jq -r .AccessKeyId <<<"$creds")"
  echo "AWS_SECRET_ACCESS_KEY=$(jq -r .SecretAccessKey <<<"$creds")"
  echo "AWS_SESSION_TOKEN=$(jq -r .SessionToken <<<"$creds")"
} >>"$GITHUB_ENV"
echo "assumed $arn as $user (project $project)"
