#!/usr/bin/env bash
# Times the console's data routes over a database of many sagas (100,000 by default): runs the
# release binary on a database of its own (sagaflow_console_perf, dropped and made anew), lets
# it run one order that completes and one that compensates, copies those two sagas (their
# streams, their order's stream and their read-model rows, with fresh ids) N times in bulk SQL,
# one in fifty left running at its first step, then asks each route 20 times after a warm-up
# and prints the median, 95th percentile and maximum time to the first byte of the answer.
#
#   bash scripts/console-perf.sh [N]
#
# PGPORT chooses another PostgreSQL on 127.0.0.1 (5432 by default), one nothing else uses.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
export PGPORT="${PGPORT:-5432}"
if [ "$PGPORT" = 5432 ]; then
  ensure_postgres
fi
N="${1:-100000}"
RUNS=20
DB=sagaflow_console_perf
TOKEN=console-perf-token
PORT=18089
BASE="http://127.0.0.1:$PORT"
export DATABASE_URL="postgres://postgres@127.0.0.1:$PGPORT/$DB"
psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
cargo build --release --bin sagaflow -q
BIN="${CARGO_TARGET_DIR:-target}/release/sagaflow"
SAGAFLOW_ADMIN_TOKEN=$TOKEN RUST_LOG=warn "$BIN" serve --http-addr "127.0.0.1:$PORT" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
until curl -sf "$BASE/readyz" >/dev/null; do sleep 0.5; done

post() { curl -sf -XPOST "$BASE$1" -H 'content-type: application/json' -d "$2"; }
CUSTOMER=0193a0c4-0000-7000-8000-000000000001
post /inventory/SKU-1/restock '{"quantity": 100}' >/dev/null
post /inventory/SKU-2/restock '{"quantity": 1}' >/dev/null
post "/accounts/$CUSTOMER/deposits" '{"amount_cents": 100000}' >/dev/null
post /orders "{\"customer_id\": \"$CUSTOMER\", \"lines\": [{\"sku\": \"SKU-1\", \"quantity\": 1, \"unit_price_cents\": 100}]}" >/dev/null
post /orders "{\"customer_id\": \"$CUSTOMER\", \"lines\": [{\"sku\": \"SKU-1\", \"quantity\": 1, \"unit_price_cents\": 100}, {\"sku\": \"SKU-2\", \"quantity\": 5, \"unit_price_cents\": 100}]}" >/dev/null
until [ "$(psql -h 127.0.0.1 -U postgres -d $DB -Atc "SELECT count(*) FROM sagas WHERE state IN ('completed', 'compensated')")" = 2 ]; do
  sleep 0.5
done

echo "copying the two sagas $N times" >&2
time psql -q -h 127.0.0.1 -U postgres -d $DB -v ON_ERROR_STOP=1 -v n="$N" <<'SQL'
CREATE EXTENSION IF NOT EXISTS "uuid-ossp";
-- k = 0: the saga that completed; k = 1: the one that compensated.
CREATE TEMP TABLE tpl AS
SELECT (state = 'compensated')::int AS k, saga_id::text AS saga, data->>'order_id' AS ord,
       correlation_id::text AS corr, s.*
FROM sagas s;
-- One in twenty compensates; one in fifty is still running its first step; a saga started
-- every 2 s back from now.
CREATE TEMP TABLE gen AS
SELECT i, (i % 20 = 0)::int AS k, (i % 50 = 7) AS stuck, gen_random_uuid()::text AS ord,
       gen_random_uuid()::text AS corr, now() - i * interval '2 seconds' AS at
FROM generate_series(1, :n) i;
ALTER TABLE gen ADD COLUMN saga text;
UPDATE gen SET saga = uuid_generate_v5('5a6af10e-0000-4000-8000-5a6af10e0001',
                                       'order_fulfillment:order-' || ord)::text;
INSERT INTO events (stream_id, stream_version, message_id, event_type, schema_version, payload,
                    metadata, recorded_at)
SELECT replace(replace(e.stream_id, t.saga, g.saga), t.ord, g.ord), e.stream_version,
       gen_random_uuid(), e.event_type, e.schema_version,
       replace(replace(replace(e.payload::text, t.saga, g.saga), t.ord, g.ord), t.corr, g.corr)::jsonb,
       replace(replace(replace(e.metadata::text, t.saga, g.saga), t.ord, g.ord), t.corr, g.corr)::jsonb,
       g.at + (e.recorded_at - t.started_at)
FROM gen g JOIN tpl t ON t.k = g.k
JOIN events e ON e.stream_id IN ('saga-' || t.saga, 'order-' || t.ord)
WHERE NOT g.stuck OR e.stream_version <= 3;
INSERT INTO sagas (saga_id, saga_type, state, current_step, data, failure, steps, correlation_id,
                   started_at, updated_at, version)
SELECT g.saga::uuid, t.saga_type,
       CASE WHEN g.stuck THEN 'running' ELSE t.state END,
       CASE WHEN g.stuck THEN 'reserve_stock' ELSE t.current_step END,
       replace(t.data::text, t.ord, g.ord)::jsonb, t.failure, t.steps, g.corr::uuid, g.at,
       g.at + CASE WHEN g.stuck THEN interval '0' ELSE t.updated_at - t.started_at END,
       CASE WHEN g.stuck THEN 3 ELSE t.version END
FROM gen g JOIN tpl t ON t.k = g.k;
ANALYZE;
SQL
psql -h 127.0.0.1 -U postgres -d $DB -Atc "SELECT 'sagas: ' || count(*) FROM sagas" -c "SELECT 'events: ' || count(*) FROM events"

q() { psql -h 127.0.0.1 -U postgres -d $DB -Atc "$1"; }
ORDER=$(q "SELECT data->>'order_id' FROM sagas WHERE state = 'compensated' ORDER BY started_at LIMIT 1 OFFSET 2000")
SAGA=$(q "SELECT saga_id FROM sagas WHERE data->>'order_id' = '$ORDER'")
CORRELATION=$(q "SELECT correlation_id FROM sagas WHERE saga_id = '$SAGA'")
STUCK=$(q "SELECT saga_id FROM sagas WHERE state = 'running' ORDER BY updated_at LIMIT 1 OFFSET 1000")
DEEP=$(q "SELECT 'e.' || to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') || '_' || saga_id
          FROM sagas WHERE state IN ('completed', 'compensated', 'failed')
          ORDER BY updated_at DESC, saga_id DESC LIMIT 1 OFFSET 50000")

time_route() {
  curl -s -o /dev/null -H "Authorization: Bearer $TOKEN" "$BASE$2" # warm-up
  for _ in $(seq 1 $RUNS); do
    curl -s -o /dev/null -w '%{time_starttransfer}\n' -H "Authorization: Bearer $TOKEN" "$BASE$2"
  done | sort -n | awk -v name="$1" '{ t[NR] = $1 * 1000 }
    END { printf "%-44s median %6.1f ms   p95 %6.1f ms   max %6.1f ms\n", name, t[int(NR / 2) + 1], t[int(NR * 0.95)], t[NR] }'
}

echo "each route $RUNS times after a warm-up, time to the first byte:"
time_route "overview" "/admin/console/overview"
time_route "sagas, stuck first (first page)" "/admin/console/sagas"
time_route "sagas, a page 50,000 sagas deep" "/admin/console/sagas?after=$DEEP"
time_route "sagas, compensated" "/admin/console/sagas?state=compensated"
time_route "sagas, of a type, idle for an hour" "/admin/console/sagas?saga_type=order_fulfillment&older_than=3600"
time_route "sagas, by an order's id" "/admin/console/sagas?q=$ORDER"
time_route "a compensated saga" "/admin/console/sagas/$SAGA"
time_route "a stuck saga" "/admin/console/sagas/$STUCK"
time_route "search: an order's id" "/admin/console/search?q=$ORDER"
time_route "search: a correlation id" "/admin/console/search?q=$CORRELATION"
time_route "search: a stream id" "/admin/console/search?q=order-$ORDER"
time_route "search: unknown" "/admin/console/search?q=nothing-here"
time_route "stream: events of the saga's stream" "/streams/saga-$SAGA/events"
time_route "stream: the saga's state at version 6" "/streams/saga-$SAGA/state?at_version=6"
