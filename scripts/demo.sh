#!/usr/bin/env bash
# make demo: a throw-away local Postgres (wal_level=logical) with sample data and a little
# live traffic, the worker keeping ProductSummary fresh, and the example storefront being
# revalidated. Ctrl-C stops everything. DEMO_STOREFRONT=0 skips the Next.js part; DEMO_PG_PORT,
# DEMO_WEB_PORT, DEMO_METRICS_ADDR and DEMO_DIR move it off its defaults.
set -euo pipefail
set -m # background jobs get their own process groups (see cleanup)
cd "$(dirname "$0")/.."
ROOT=$PWD
PORT=${DEMO_PG_PORT:-55433}
WEB_PORT=${DEMO_WEB_PORT:-3000}
METRICS=${DEMO_METRICS_ADDR:-127.0.0.1:9187}
DIR=${DEMO_DIR:-/tmp/cdc-worker-demo}
SECRET=demo-secret
PGBIN=${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}
[ -x "$PGBIN/initdb" ] || { echo "PostgreSQL server binaries not found (apt-get install postgresql)"; exit 1; }
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
PSQL=(psql -X -q -h 127.0.0.1 -p "$PORT" -U postgres)

pids=()
cleanup() {
  echo; echo "demo: stopping"
  # Each background job leads its own process group (set -m below): kill the groups, so
  # children such as next start's server process go too.
  for p in "${pids[@]}"; do kill -- "-$p" 2>/dev/null || kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  as_pg "$PGBIN/pg_ctl" -D "$DIR/data" -m fast stop >/dev/null 2>&1 || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "demo: building the worker"
cargo build --quiet
BIN=$ROOT/target/debug/cdc-worker

echo "demo: starting Postgres on port $PORT in $DIR"
as_pg "$PGBIN/pg_ctl" -D "$DIR/data" -m immediate stop >/dev/null 2>&1 || true
rm -rf "$DIR"; mkdir -p "$DIR"
[ "$(id -u)" = 0 ] && chown postgres "$DIR"
as_pg "$PGBIN/initdb" -D "$DIR/data" -U postgres --auth=trust >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$DIR/data" -l "$DIR/postgres.log" -w start -o \
  "-p $PORT -k $DIR -c listen_addresses=127.0.0.1 -c wal_level=logical" >/dev/null
"${PSQL[@]}" -c "CREATE DATABASE shop"
"${PSQL[@]}" -d shop -f sql/source_schema.sql -f sql/demo_data.sql

export DATABASE_URL="postgresql://postgres@127.0.0.1:$PORT/shop?sslmode=disable"
export CDC_METRICS_ADDR=$METRICS
echo "demo: cdc-worker setup"
"$BIN" setup

if [ "${DEMO_STOREFRONT:-1}" = 1 ]; then
  echo "demo: building the storefront (nextjs/; log: $DIR/next-build.log)"
  # npm ci installs a copy of packages/next: again when the package changed since.
  installed=nextjs/node_modules/.package-lock.json
  if [ ! -f "$installed" ] || [ -n "$(find packages/next -path packages/next/node_modules -prune -o -type f -newer "$installed" -print -quit)" ]; then
    (cd nextjs && npm ci --no-audit --no-fund --loglevel=error)
  fi
  (cd nextjs && npm run build) >"$DIR/next-build.log" 2>&1 || { cat "$DIR/next-build.log"; exit 1; }
  (cd nextjs && DATABASE_URL=$DATABASE_URL CDC_REVALIDATE_SECRET=$SECRET \
     exec npx next start -p "$WEB_PORT" -H 127.0.0.1 >"$DIR/next.log" 2>&1) &
  pids+=($!)
  export CDC_REVALIDATE_URLS="http://127.0.0.1:$WEB_PORT/api/revalidate" CDC_REVALIDATE_SECRET=$SECRET
  # The worker's first deliveries would only be refused while next start is coming up
  # (it listens once it is ready).
  for _ in $(seq 120); do
    (exec 3<>"/dev/tcp/127.0.0.1/$WEB_PORT") 2>/dev/null && break
    sleep 0.5
  done
fi

# sed -u: each worker line as it comes, also when make demo's output is a pipe or a file
# (sed would otherwise hold it back in a 4 KiB buffer).
"$BIN" run 2>&1 | sed -u 's/^/worker | /' &
pids+=($!)

# A product to look at, and the store that holds it.
read -r PRODUCT STORE TITLE < <("${PSQL[@]}" -d shop -At -F ' ' -c \
  "SELECT \"productId\", \"storeId\", title FROM \"ProductSummary\" WHERE active ORDER BY \"storeId\", \"productId\" LIMIT 1")

echo
echo "demo: running. Try:"
if [ "${DEMO_STOREFRONT:-1}" = 1 ]; then
  cat <<TXT
  storefront   http://127.0.0.1:$WEB_PORT/                     every store
               http://127.0.0.1:$WEB_PORT/stores/$STORE
               http://127.0.0.1:$WEB_PORT/products/$PRODUCT   ($TITLE, in that store)
               (its log: $DIR/next.log)
TXT
fi
cat <<TXT
  metrics      http://$METRICS/metrics   /healthz   /readyz
  psql         ${PSQL[*]} -d shop
  reconcile    DATABASE_URL='$DATABASE_URL' $BIN reconcile
TXT
if [ "${DEMO_STOREFRONT:-1}" = 1 ]; then
  cat <<TXT
  revalidate   DATABASE_URL='$DATABASE_URL' CDC_REVALIDATE_URLS=$CDC_REVALIDATE_URLS \\
                 CDC_REVALIDATE_SECRET=$SECRET $BIN revalidate --product $PRODUCT --store $STORE
TXT
fi
cat <<TXT
Every second a random stock, price or title change is written; Ctrl-C stops.

TXT
i=0
while true; do
  sleep 1
  i=$((i + 1)); p=$((1 + RANDOM % 196))
  case $((i % 3)) in
    0) sql="UPDATE \"Inventory\" SET quantity = (random() * 40)::int WHERE id = 'inv-$p-1'" ;;
    1) sql="UPDATE \"Price\" SET amount = 500 + (random() * 4500)::int WHERE id = 'price-usd-$p'" ;;
    2) sql="UPDATE \"Product\" SET title = split_part(title, ' (', 1) || ' (v$i)', \"updatedAt\" = now() WHERE id = 'prod-$p'" ;;
  esac
  "${PSQL[@]}" -d shop -c "$sql"
  if ((i % 5 == 0)); then
    "${PSQL[@]}" -d shop -At -c "SELECT 'demo: prod-$p now: ' || row_to_json(s)::text FROM \"ProductSummary\" s WHERE \"productId\" = 'prod-$p'" || true
  fi
done
