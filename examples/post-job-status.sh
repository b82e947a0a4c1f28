#!/usr/bin/env bash
# Posts one generic job_status to a dingtalk-relay route, signed with HMAC-SHA256 of the exact
# body (X-Signature-256: sha256=<hex>), for teams that cannot add a repository webhook.
# Used by examples/github-actions/report.yml and examples/jenkins/Jenkinsfile.
#
#   RELAY_URL=https://relay.example.com/v1/hooks/ci RELAY_SECRET=… \
#   JOB=build STATUS=failure PROJECT=acme/api PIPELINE=CI BRANCH=main COMMIT=9f2c1e7 \
#   RUN_URL=https://ci.example.com/runs/812 ACTOR=octocat RUN_ID=812 \
#     examples/post-job-status.sh
#
# Needs bash, curl and openssl. Exits non-zero when the relay does not accept the report
# (202 queued, or 200 duplicate/ignored, are accepted). The delivery id doubles as the
# Idempotency-Key, so a retried step is answered "duplicate" instead of reporting twice.
set -euo pipefail
: "${RELAY_URL:?RELAY_URL is the route URL, e.g. https://relay.example.com/v1/hooks/ci}"
: "${RELAY_SECRET:?RELAY_SECRET is the route secret (routes.<name>.secret)}"
: "${JOB:?JOB is the job name}"
: "${STATUS:?STATUS is success, failure, cancelled, …}"

# JSON string escaping for the few fields we send (quotes, backslashes, control characters).
json_string() {
  local s=$1
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\n'/\\n}
  s=${s//$'\r'/\\r}
  s=${s//$'\t'/\\t}
  printf '"%s"' "$s"
}
field() { # name, value: prints ,"name":"value" when the value is set
  if [ -n "${2:-}" ]; then printf ',"%s":%s' "$1" "$(json_string "$2")"; fi
}

body="{\"type\":\"job_status\"$(field job "$JOB")$(field status "$STATUS")$(field project "${PROJECT:-}")$(field pipeline "${PIPELINE:-}")$(field run_id "${RUN_ID:-}")$(field branch "${BRANCH:-}")$(field commit "${COMMIT:-}")$(field commit_message "${COMMIT_MESSAGE:-}")$(field url "${RUN_URL:-}")$(field actor "${ACTOR:-}")$(field summary "${SUMMARY:-}")}"
signature=$(printf '%s' "$body" | openssl dgst -sha256 -hmac "$RELAY_SECRET" -hex | sed 's/^.*= *//')
key="${PROJECT:-}:${PIPELINE:-}:${JOB}:${RUN_ID:-}:${STATUS}"

answer=$(mktemp)
trap 'rm -f "$answer"' EXIT
code=$(curl -sS -o "$answer" -w '%{http_code}' -X POST "$RELAY_URL" \
  -H 'Content-Type: application/json' \
  -H "X-Signature-256: sha256=$signature" \
  -H "Idempotency-Key: $key" \
  --data-binary "$body")
cat "$answer"; echo
case "$code" in
  200|201|202) ;;
  *) echo "dingtalk-relay answered HTTP $code" >&2; exit 1 ;;
esac
