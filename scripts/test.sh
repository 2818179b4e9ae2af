#!/usr/bin/env bash
# Runs the whole test suite against real services: starts PostgreSQL if it is down, installs
# and starts a Kafka-protocol broker (Tansu, on 127.0.0.1 only, stopped again at the end),
# installs headless Chromium and chromedriver (the console's browser test) if missing, then
# every crate's unit tests and the end-to-end tests. Each database test gets its own fresh database.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_postgres
ensure_chromium
# ops/: alert rules and dashboard queries with promtool (installs Debian's prometheus if missing).
bash scripts/ops-check.sh
# sqlx::test creates one database per test from this server.
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
if [ -z "${KAFKA_BROKERS:-}" ]; then
  # This clone's broker on the first port that is free (or already its own). One this run
  # starts is stopped when it ends; one that was running is left running.
  for port in $(seq 19092 19111); do
    started_here=yes
    if bash scripts/broker.sh status "$port" >/dev/null 2>&1; then
      started_here=no
    fi
    if line=$(bash scripts/broker.sh start "$port" | grep '^KAFKA_BROKERS='); then
      eval "$line"
      if [ "$started_here" = yes ]; then
        trap 'bash scripts/broker.sh stop "$port" >/dev/null 2>&1 || true' EXIT
      fi
      break
    fi
  done
  if [ -z "${KAFKA_BROKERS:-}" ]; then
    echo "could not start a Kafka-protocol broker on 127.0.0.1:19092-19111" >&2
    exit 1
  fi
  export KAFKA_BROKERS
fi
# The chaos test starts brokers of its own (it pauses them and cuts their network).
export SAGAFLOW_TANSU="${SAGAFLOW_TANSU:-$PWD/.tools/tansu/bin/tansu}"
[ -x "$SAGAFLOW_TANSU" ] || bash scripts/broker.sh install >&2
echo "PostgreSQL at 127.0.0.1:5432, Kafka-protocol broker at $KAFKA_BROKERS" >&2
bash scripts/check-guide.sh
cargo test --workspace --locked "$@"
