#!/usr/bin/env bash
# Checks the monitoring files under ops/: the Prometheus configuration and alert rules with
# promtool (Debian's `prometheus` package, installed if missing), every query of the Grafana
# dashboard as PromQL, and the YAML of docker-compose.yml and Grafana's provisioning. That
# every series they query is one the engine exports is checked by the engine's unit test
# `ops::tests::the_dashboard_and_alert_rules_query_only_exported_series`.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v promtool >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "installing prometheus (promtool) to check the alert rules" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  else
    echo "promtool is missing and cannot be installed here: ops/ is not checked" >&2
    exit 0
  fi
fi
promtool check config ops/prometheus/prometheus.yml
promtool check rules ops/prometheus/alerts.yml
# Each dashboard query as a recording rule, so that promtool parses it.
queries=$(mktemp --suffix=.yml)
trap 'rm -f "$queries"' EXIT
python3 - ops/grafana/sagaflow.json "$queries" <<'PY'
import json, sys
dashboard = json.load(open(sys.argv[1]))
rules = [
    {"record": f"dashboard:panel{p['id']}:{t['refId']}", "expr": t["expr"]}
    for p in dashboard["panels"] for t in p.get("targets", [])
]
json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(sys.argv[2], "w"))
print(f"{len(rules)} dashboard queries", file=sys.stderr)
PY
promtool check rules "$queries"
python3 - <<'PY'
import yaml
for f in ["docker-compose.yml", "ops/grafana/provisioning/datasources/prometheus.yml",
          "ops/grafana/provisioning/dashboards/sagaflow.yml"]:
    yaml.safe_load(open(f))
print("docker-compose.yml and Grafana's provisioning are valid YAML")
PY
