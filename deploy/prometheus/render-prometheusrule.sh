#!/usr/bin/env bash
# Writes deploy/kubernetes/components/monitoring/prometheusrule.yaml: the PrometheusRule
# (prometheus-operator) carrying exactly the groups of deploy/prometheus/alerts.yaml.
#   deploy/prometheus/render-prometheusrule.sh          # rewrite the file
#   deploy/prometheus/render-prometheusrule.sh --check  # exit 1 if it is out of date (CI)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
src="$here/alerts.yaml"
dst="$here/../kubernetes/components/monitoring/prometheusrule.yaml"

render() {
  cat <<'HEADER'
# GENERATED from deploy/prometheus/alerts.yaml by deploy/prometheus/render-prometheusrule.sh.
# Do not edit: change alerts.yaml and re-run the script (.ci/deploy-checks fails when stale).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: dingtalk-relay
spec:
HEADER
  # alerts.yaml's top-level `groups:` becomes spec.groups; comment lines stay out.
  grep -v '^#' "$src" | sed -e 's/^\(.\)/  \1/'
}

if [ "${1:-}" = "--check" ]; then
  if ! diff -u "$dst" <(render); then
    echo "$dst is stale: run deploy/prometheus/render-prometheusrule.sh" >&2
    exit 1
  fi
else
  render > "$dst"
  echo "wrote $dst"
fi
