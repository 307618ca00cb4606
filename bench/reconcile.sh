#!/usr/bin/env bash
# Benchmark of `cdc-worker reconcile` on N products (default 1,000,000).
#
# Creates a throwaway Postgres cluster (as the postgres OS user, wal_level=logical, on a
# free port), loads sql/source_schema.sql and bench/reconcile_data.sql (each product with a
# USD price, 2 inventory rows and 1 image), runs `cdc-worker setup` (which backfills the
# summary), then times `cdc-worker reconcile --json` with /usr/bin/time -v (wall clock and
# peak RSS of the reconcile process). The cluster is removed at the end unless KEEP=1.
#
#   bench/reconcile.sh              # 1M products
#   PRODUCTS=100000 bench/reconcile.sh
#   KEEP=1 bench/reconcile.sh       # keep the cluster (prints how to stop it)
#   NOSTATS=1 bench/reconcile.sh    # tables never analyzed (as after pg_restore before 18)
#   CDC_BIN=/path/to/cdc-worker bench/reconcile.sh   # that binary, no build
set -euo pipefail

PRODUCTS=${PRODUCTS:-1000000}
PGBIN=${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${CDC_BIN:-$ROOT/target/release/cdc-worker}

cd "$ROOT"
[ -n "${CDC_BIN:-}" ] || cargo build --release --quiet

DIR=$(mktemp -d /tmp/cdc-bench-reconcile.XXXXXX)
chown postgres:postgres "$DIR"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
as_pg() { runuser -u postgres -- "$@"; }
cleanup() {
    if [ "${KEEP:-0}" = 1 ]; then
        echo "kept: $PGBIN/pg_ctl -D $DIR/data stop (port $PORT)"
    else
        as_pg "$PGBIN/pg_ctl" -D "$DIR/data" -m immediate stop >/dev/null 2>&1 || true
        rm -rf "$DIR"
    fi
}
trap cleanup EXIT

as_pg "$PGBIN/initdb" -D "$DIR/data" -U postgres -A trust >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$DIR/data" -l "$DIR/log" -w start -o \
    "-p $PORT -k $DIR -c listen_addresses=127.0.0.1 -c wal_level=logical -c shared_buffers=512MB -c max_wal_size=4GB" >/dev/null
URL=postgresql://postgres@127.0.0.1:$PORT
psql -q "$URL/postgres" -c "CREATE DATABASE bench"
psql -q "$URL/bench" -f sql/source_schema.sql

echo "== loading $PRODUCTS products"
start=$(date +%s)
if [ "${NOSTATS:-0}" = 1 ]; then
    grep -v '^VACUUM ANALYZE' bench/reconcile_data.sql \
        | psql -q "$URL/bench" -v ON_ERROR_STOP=1 -v products="$PRODUCTS" -f -
else
    psql -q "$URL/bench" -v ON_ERROR_STOP=1 -v products="$PRODUCTS" -f bench/reconcile_data.sql
fi
echo "loaded in $(( $(date +%s) - start )) s"

export DATABASE_URL=$URL/bench CDC_SLOT=bench CDC_METRICS_ADDR=127.0.0.1:0
echo "== cdc-worker setup (backfill)"
/usr/bin/time -f "setup: %e s, peak RSS %M KB" "$BIN" setup 2> >(grep -E "backfill done|setup:" >&2)
[ "${NOSTATS:-0}" = 1 ] || psql -q "$URL/bench" -c 'VACUUM ANALYZE "ProductSummary"'

echo "== nproc: $(nproc)"; free -g | head -2
echo "== cdc-worker reconcile --json"
/usr/bin/time -v "$BIN" reconcile --json > "$DIR/report.json" 2> "$DIR/time.txt" || true
cat "$DIR/report.json"
grep -E "Elapsed \(wall clock\)|Maximum resident set size|Exit status" "$DIR/time.txt"
