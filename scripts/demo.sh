#!/usr/bin/env bash
# Demo (stub): a local Postgres with the shop's tables and sample data.
#
#   scripts/demo.sh        start the demo cluster, (re)create database `shop`, load
#                          sql/source_schema.sql and sql/sample_data.sql, show what is there
#   scripts/demo.sh stop   stop the demo cluster
#
# The demo cluster is separate from the test cluster (`make test` stops that one): it is
# scripts/test-cluster.sh with CDC_TEST_PG_DIR=/tmp/cdc-worker-demo-pg/<hash of the checkout>.
# Running cdc-worker against it is not part of the demo yet.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$repo_root"
hash=$(printf '%s' "$repo_root" | sha256sum | cut -c1-12)
export CDC_TEST_PG_DIR=${CDC_DEMO_PG_DIR:-/tmp/cdc-worker-demo-pg/$hash}
cluster=scripts/test-cluster.sh
db=shop

if [[ ${1:-} == stop ]]; then
    "$cluster" stop
    exit 0
fi

step() { printf '\n==> %s\n' "$*"; }

step "Starting the demo Postgres cluster in $CDC_TEST_PG_DIR"
"$cluster" start >/dev/null

step "Recreating database '$db'"
"$cluster" psql postgres -q -v ON_ERROR_STOP=1 \
    -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"

step "Loading sql/source_schema.sql (the shop's Prisma tables)"
"$cluster" psql "$db" -q -v ON_ERROR_STOP=1 -f sql/source_schema.sql

step "Loading sql/sample_data.sql"
"$cluster" psql "$db" -q -v ON_ERROR_STOP=1 -f sql/sample_data.sql

step "What is in '$db' now"
"$cluster" psql "$db" -v ON_ERROR_STOP=1 -c "
SELECT 'Product' AS table, count(*) AS rows FROM \"Product\"
UNION ALL SELECT 'ProductImage', count(*) FROM \"ProductImage\"
UNION ALL SELECT 'Inventory', count(*) FROM \"Inventory\"
UNION ALL SELECT 'Price', count(*) FROM \"Price\""

url=$("$cluster" url "$db")
step "Done"
cat <<MSG
Database:  $url
Settings:  wal_level=logical, ssl=on (self-signed), scram-sha-256 over TCP
psql:      CDC_TEST_PG_DIR=$CDC_TEST_PG_DIR scripts/test-cluster.sh psql $db
Stop it:   scripts/demo.sh stop

Not done yet: running cdc-worker (setup, run) against this database and showing
ProductSummary follow the changes. That part of the demo comes with the worker.
MSG
