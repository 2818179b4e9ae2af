#!/usr/bin/env bash
# Runs the whole test suite against real services: starts PostgreSQL if it is down, then every
# crate's unit tests and the end-to-end tests. Each database test gets its own fresh database.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_postgres
# sqlx::test creates one database per test from this server.
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
cargo test --workspace --locked "$@"
