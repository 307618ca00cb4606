# Shared helpers for the bench/*.sh scripts: a throw-away Postgres 15 cluster on a free
# loopback port, the reference schema with generated data, and the worker binary.
# Sourced, not run. Everything lives under $WORK (a fresh /tmp dir) and is removed on exit
# unless KEEP=1.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
BIN=${CDC_BIN:-$ROOT/target/release/cdc-worker}
WORK=$(mktemp -d /tmp/cdcbench.XXXXXX)
chmod 755 "$WORK"
PGDATA_DIR=$WORK/data
# A free loopback TCP port.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
export DATABASE_URL="postgresql://postgres@127.0.0.1:$PORT/bench"
# An empty CDC_METRICS_ADDR does not disable metrics (empty env values are ignored), so
# give the metrics endpoint its own free port rather than the shared default 9187.
export CDC_METRICS_ADDR=127.0.0.1:$(free_port)
export PGHOST=127.0.0.1 PGPORT=$PORT PGUSER=postgres PGDATABASE=bench

# Postgres refuses to run as root: run its binaries as the postgres OS user then.
as_pg() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

psqlq() { "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 "$@"; }
psqlv() { "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -tA "$@"; }

start_cluster() {
    [ -x "$BIN" ] || { echo "build the worker first: cargo build --release" >&2; exit 1; }
    if [ "$(id -u)" = 0 ]; then chown postgres "$WORK"; fi
    as_pg "$PGBIN/initdb" -D "$PGDATA_DIR" -A trust -U postgres --no-sync >/dev/null
    as_pg "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -l "$WORK/postgres.log" -w start -o \
        "-p $PORT -k $WORK -c listen_addresses=127.0.0.1 -c wal_level=logical \
         -c track_commit_timestamp=on -c max_wal_size=8GB -c shared_buffers=1GB \
         -c max_connections=${MAX_CONNECTIONS:-50} -c max_replication_slots=10 -c max_wal_senders=10 \
         ${PG_EXTRA_OPTS:-}" >/dev/null
    trap stop_cluster EXIT
    "$PGBIN/createdb" bench
    echo "# cluster: port $PORT, data $PGDATA_DIR"
}

WORKER_PID=
stop_cluster() {
    set +e
    [ -n "$WORKER_PID" ] && kill "$WORKER_PID" 2>/dev/null && wait "$WORKER_PID" 2>/dev/null
    [ -n "${RECEIVER_PID:-}" ] && kill "$RECEIVER_PID" 2>/dev/null
    as_pg "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -m immediate stop >/dev/null 2>&1
    if [ "${KEEP:-0}" = 1 ]; then echo "# kept $WORK"; else rm -rf "$WORK"; fi
}

# load_data PRODUCTS [STORES]: reference schema (sql/source_schema.sql) plus PRODUCTS
# products over STORES stores, each with a USD and an EUR price, 2 inventory rows and 1-3
# images. Ids are text, as Prisma makes them: p0000001, or with LONG_IDS=1 25 characters
# like a cuid ('c' and 24 hex digits; for backlog.sh, whose load does not name products).
load_data() {
    local n=$1 stores=${2:-100}
    local pid="'p' || lpad(g::text, 7, '0')"
    [ "${LONG_IDS:-0}" = 1 ] && pid="'c' || substr(md5(g::text), 1, 24)"
    psqlq -f "$ROOT/sql/source_schema.sql"
    psqlq <<SQL
INSERT INTO "Product" ("id","storeId","title","description","active","updatedAt")
SELECT $pid, 's' || (g % $stores + 1), 'Product ' || md5(g::text),
       'Description of product ' || g, g % 10 <> 0, now()
FROM generate_series(1, $n) g;
INSERT INTO "Price" ("id","productId","currency","amount")
SELECT 'pr' || c || g, $pid, c, 100 + g % 9000
FROM generate_series(1, $n) g, unnest(ARRAY['USD','EUR']) c;
INSERT INTO "Inventory" ("id","productId","locationId","quantity","reserved")
SELECT 'inv' || l || '-' || g, $pid, 'loc' || l, 10 + (g * l) % 50, g % 3
FROM generate_series(1, $n) g, generate_series(1, 2) l;
INSERT INTO "ProductImage" ("id","productId","url","position")
SELECT 'img' || k || '-' || g, $pid,
       'https://cdn.example.com/p' || g || '/' || k || '.jpg', k
FROM generate_series(1, $n) g, generate_series(1, 3) k WHERE k <= 1 + g % 3;
VACUUM ANALYZE;
SQL
}

# Runs `cdc-worker setup` quietly (publication, slot, state schema, summary, backfill).
worker_setup() {
    (cd "$ROOT" && CDC_LOG=warn "$BIN" setup) >"$WORK/setup.log" 2>&1 \
        || { cat "$WORK/setup.log"; exit 1; }
}

# Rows where ProductSummary and the summary query (sql/summary_query.sql, $1 = 'USD')
# disagree, counted both ways (must be 0).
summary_diff() {
    local q
    q=$(grep -v '^ *--' "$ROOT/sql/summary_query.sql" | sed "s/\\\$1/'USD'/g")
    psqlv <<SQL
WITH want AS ($q),
have AS (SELECT "productId", "storeId", "title", "price", "active", "inventoryAvailable",
                "primaryImageUrl" FROM "ProductSummary")
SELECT (SELECT count(*) FROM (SELECT * FROM want EXCEPT SELECT * FROM have) a)
     + (SELECT count(*) FROM (SELECT * FROM have EXCEPT SELECT * FROM want) b);
SQL
}

machine() {
    echo "nproc=$(nproc); mem=$(free -g | awk '/Mem:/{print $2" GiB"}'); cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'); $(date -u +%FT%TZ); $("$PGBIN/postgres" --version); worker $(git -C "$ROOT" rev-parse --short HEAD); loadavg $(cut -d" " -f1-3 /proc/loadavg)"
}

TCK=$(getconf CLK_TCK)
now() { date +%s.%N; }
# CPU seconds (user+sys) of a process.
proc_cpu() { awk -v t="$TCK" '{print ($14+$15)/t}' "/proc/$1/stat"; }
# CPU seconds of the whole cluster so far: every live postgres process plus what the
# postmaster collected from children that exited.
pg_cpu() {
    local pm; pm=$(head -1 "$PGDATA_DIR/postmaster.pid")
    { awk '{print $16+$17}' "/proc/$pm/stat"; for p in $pm $(pgrep -P "$pm"); do awk '{print $14+$15}' "/proc/$p/stat" 2>/dev/null; done; } \
        | awk -v t="$TCK" '{s+=$1} END {printf "%.2f", s/t}'
}
# Starts `cdc-worker run` in the background (log: $WORK/${1:-worker}.log), sets WORKER_PID.
start_worker() {
    (cd "$ROOT" && exec "$BIN" ${WORKER_ARGS:-} run) >"$WORK/${1:-worker}.log" 2>&1 & WORKER_PID=$!
}
stop_worker() {
    kill -TERM "$WORKER_PID"; wait "$WORKER_PID" || true; WORKER_PID=
}
# Starts bench/receiver.py (the stand-in for the Next.js route) logging to $1; sets
# RECEIVER_PID and CDC_REVALIDATE_URLS.
start_receiver() {
    local rport; rport=$(free_port)
    python3 "$ROOT/bench/receiver.py" "$rport" "$1" & RECEIVER_PID=$!
    export CDC_REVALIDATE_URLS="http://127.0.0.1:$rport/api/revalidate" CDC_REVALIDATE_SECRET=bench
}

# freshness.sh's measurement: schema bench with a log of source changes (bench.src_log:
# the value the summary must reach, written by triggers on Inventory and Price), a log of
# ProductSummary writes (bench.sum_log) and the receiver's arrivals (bench.recv). The
# triggers run inside the measured transactions (ceiling.sh TRIGGERS=1 installs them only
# to measure that load).
freshness_triggers() {
psqlq <<'SQL'
CREATE SCHEMA bench;
-- xmin of a log row = the transaction that wrote it; its commit time comes after the run.
CREATE TABLE bench.src_log (kind text, product_id text, value int);
CREATE TABLE bench.sum_log (product_id text, inv int, price int);
CREATE TABLE bench.recv (t float8, tag text);
CREATE FUNCTION bench.log_inventory() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO bench.src_log SELECT 'inventory', NEW."productId",
    (SELECT sum(greatest(i."quantity" - i."reserved", 0)) FROM "Inventory" i WHERE i."productId" = NEW."productId");
  RETURN NULL;
END $$;
CREATE FUNCTION bench.log_price() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW."currency" = 'USD' THEN INSERT INTO bench.src_log VALUES ('product', NEW."productId", NEW."amount"); END IF;
  RETURN NULL;
END $$;
CREATE FUNCTION bench.log_summary() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO bench.sum_log VALUES (NEW."productId", NEW."inventoryAvailable", NEW."price");
  RETURN NULL;
END $$;
CREATE TRIGGER bench_log AFTER UPDATE ON "Inventory" FOR EACH ROW EXECUTE FUNCTION bench.log_inventory();
CREATE TRIGGER bench_log AFTER UPDATE ON "Price" FOR EACH ROW EXECUTE FUNCTION bench.log_price();
CREATE TRIGGER bench_log AFTER INSERT OR UPDATE ON "ProductSummary" FOR EACH ROW EXECUTE FUNCTION bench.log_summary();
SQL
}

# pgbench scripts of single-row updates (-D products=N): $WORK/inventory.sql (quantity + 1
# of a random Inventory row) and $WORK/price.sql (amount + 1 of a random USD price).
single_row_scripts() {
cat >"$WORK/inventory.sql" <<'EOF2'
\set p random(1, :products)
\set l random(1, 2)
UPDATE "Inventory" SET "quantity" = "quantity" + 1 WHERE "id" = 'inv' || :l || '-' || :p;
EOF2
cat >"$WORK/price.sql" <<'EOF2'
\set p random(1, :products)
UPDATE "Price" SET "amount" = "amount" + 1 WHERE "productId" = 'p' || lpad(:p::text, 7, '0') AND "currency" = 'USD';
EOF2
}
# After pgbench exits its backends end a moment later; until the postmaster has reaped
# them their CPU is neither in /proc/<pid> nor in the postmaster's cutime. Call this before
# pg_cpu after a pgbench run.
pgbench_gone() {
    until [ "$(psqlv -c "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgbench'")" = 0 ]; do sleep 0.05; done
    sleep 0.3
}
