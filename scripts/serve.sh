#!/usr/bin/env bash
# Runs the engine on defaults: local PostgreSQL (started if down), database created and
# migrated, HTTP on 127.0.0.1:8080. Extra arguments go to `sagaflow serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_postgres
exec cargo run --release --bin sagaflow -- serve "$@"
