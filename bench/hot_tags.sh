#!/usr/bin/env bash
# Hot tags (issue 12): one store under constant stock changes, its listing viewed on a real
# `next start`; re-renders of the listing per second and staleness, per variant.
# See bench/README.md.
#
#   bench/hot_tags.sh                        # variants 0 1000 0:store 1000:store, 30 s each
#   SECS=60 RATE=1000 VIEWS=50 bench/hot_tags.sh 0 1000:store
#
# A variant is INTERVAL[:store]: INTERVAL is the worker's
# revalidate.min_interval_ms for "store:{storeId}:products" (0: none, every tag at once);
# ":store" starts the storefront with STOREFRONT_LISTING_TAGS=store (the listing carries
# the store tag only, not the product/inventory tags of the products it shows).
#
# Load: pgbench -R RATE single-row stock updates (Inventory quantity + 1 of a random row)
# over PRODUCTS products of store s1, and VIEWS GET /stores/s1 per second (bench/viewer.py,
# open loop). Measured: re-renders (the storefront logs a line each time the listing's
# 'use cache' entry is computed, i.e. read from the database), store tags enqueued (a
# trigger on the outbox), and per stock change of a product the listing shows: the time
# from its commit until the first view that started after the commit and shows it ended.
source "$(dirname "$0")/lib.sh"
N=${PRODUCTS:-2000}
SECS=${SECS:-30}
RATE=${RATE:-1000}
VIEWS=${VIEWS:-50}
CLIENTS=${CLIENTS:-4}
WARM=${WARM:-15}
VARIANTS=("$@"); [ ${#VARIANTS[@]} -gt 0 ] || VARIANTS=(0 1000 0:store 1000:store)
NEXT_DIR=$ROOT/nextjs
[ -f "$NEXT_DIR/.next/BUILD_ID" ] || { echo "build the storefront first: make nextjs" >&2; exit 1; }

echo "# machine: $(machine)"
start_cluster
load_data "$N" 1
worker_setup
single_row_scripts

psqlq <<'SQL'
CREATE SCHEMA bench;
-- Every stock change: the product's available stock after it (values only grow); the
-- row's xmin is the source transaction, pg_xact_commit_timestamp(xmin) its commit time.
CREATE TABLE bench.src_log (product_id text, value int);
CREATE FUNCTION bench.log_inventory() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO bench.src_log SELECT NEW."productId",
    (SELECT sum(greatest(i."quantity" - i."reserved", 0)) FROM "Inventory" i WHERE i."productId" = NEW."productId");
  RETURN NULL;
END $$;
CREATE TRIGGER bench_log AFTER UPDATE ON "Inventory" FOR EACH ROW EXECUTE FUNCTION bench.log_inventory();
-- Every store tag the worker puts into the outbox (= every revalidation of it).
CREATE TABLE bench.store_tags (t timestamptz DEFAULT clock_timestamp());
CREATE FUNCTION bench.log_store_tag() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO bench.store_tags DEFAULT VALUES; RETURN NULL; END $$;
CREATE TRIGGER bench_log AFTER INSERT ON cdc_worker.outbox FOR EACH ROW
  WHEN ('store:s1:products' = ANY(NEW.tags)) EXECUTE FUNCTION bench.log_store_tag();
CREATE TABLE bench.views (vid int, t0 float8, t1 float8, status int, shown int);
CREATE TABLE bench.shown (vid int, t0 float8, t1 float8, product_id text, inv int);
SQL

NPORT=$(free_port)
export CDC_REVALIDATE_URLS="http://127.0.0.1:$NPORT/api/revalidate" CDC_REVALIDATE_SECRET=bench
export CDC_LOG=${CDC_LOG:-info}
NEXT_PID=
stop_next() {
    [ -n "$NEXT_PID" ] && kill -- -"$NEXT_PID" 2>/dev/null && { wait "$NEXT_PID" 2>/dev/null || true; }
    NEXT_PID=
}
trap 'stop_next || true; stop_cluster' EXIT
start_next() {   # $1: STOREFRONT_LISTING_TAGS, $2: log file
    # setsid: `next start` runs the server in a child; its whole group is stopped.
    (cd "$NEXT_DIR" && DATABASE_URL="$DATABASE_URL" STOREFRONT_LISTING_TAGS="$1" \
        STOREFRONT_LOG_LISTING_READS=1 CDC_REVALIDATE_SECRET=bench \
        exec setsid npx next start -p "$NPORT" -H 127.0.0.1) >"$2" 2>&1 & NEXT_PID=$!
    for _ in $(seq 600); do
        curl -fsS -o /dev/null "http://127.0.0.1:$NPORT/stores/s1" 2>/dev/null && return
        sleep 0.1
    done
    echo "next start did not answer; log:" >&2; cat "$2" >&2; exit 1
}
# Successful revalidation POSTs so far (cdc_revalidate_requests_total{outcome="ok"}).
posts_ok() {
    curl -fsS "http://$CDC_METRICS_ADDR/metrics" \
        | awk '/^cdc_revalidate_requests_total\{/ && /outcome="ok"/ {s += $2} END {printf "%d\n", s}'
}

printf '\n%-11s %6s %6s %10s | %9s %9s | %7s %9s | %-22s | %s\n' variant "upd/s" "views" "late/skip" "re-render" "store-tag" "POSTs" "view ms" "staleness ms" "changes seen"
printf '%-11s %6s %6s %10s | %9s %9s | %7s %9s | %6s %6s %8s |\n' "" "" "/s" "" "/s" "sent/s" "/s" "p50/p99" p50 p99 max
for v in "${VARIANTS[@]}"; do
    interval=${v%%:*}
    tags=; [ "$v" != "${v#*:}" ] && tags=${v#*:}
    cfg=$WORK/hot-$interval.toml
    if [ "$interval" -gt 0 ]; then
        printf '[revalidate]\nmin_interval_ms = { "store:{storeId}:products" = %s }\n' "$interval" >"$cfg"
    else
        : >"$cfg"
    fi
    WORKER_ARGS="--config $cfg" start_worker "worker-$v"
    start_next "$tags" "$WORK/next-$v.log"
    # Warm-up under the same load (a fresh `next start` renders slowly for ~10 s), not measured.
    python3 "$ROOT/bench/viewer.py" "http://127.0.0.1:$NPORT/stores/s1" "$VIEWS" "$WARM" "$WORK/warm" 2>/dev/null &
    "$PGBIN/pgbench" -n -M prepared -c "$CLIENTS" -j 2 -R "$RATE" -T "$WARM" -D products="$N" \
        -f "$WORK/inventory.sql" bench >/dev/null 2>&1
    wait $!
    sleep 2
    psqlq -c "TRUNCATE bench.src_log, bench.store_tags, bench.views, bench.shown"
    posts0=$(posts_ok)
    t0=$(now)
    # Views go on 3 s after the writes stop, so the last changes can be seen.
    python3 "$ROOT/bench/viewer.py" "http://127.0.0.1:$NPORT/stores/s1" "$VIEWS" $((SECS + 3)) \
        "$WORK/view-$v" 2>"$WORK/viewer-$v.log" & VIEWER=$!
    tps=$("$PGBIN/pgbench" -n -M prepared -c "$CLIENTS" -j 2 -R "$RATE" -T "$SECS" -D products="$N" \
        -f "$WORK/inventory.sql" bench 2>&1 | awk '/^tps/{print $3; exit}')
    t1=$(now)
    wait "$VIEWER"
    posts=$(( $(posts_ok) - posts0 ))
    late=$(sed -n 's/.*late=\([0-9]*\).*/\1/p' "$WORK/viewer-$v.log")
    skipped=$(sed -n 's/.*skipped=//p' "$WORK/viewer-$v.log")
    psqlq -c "\\copy bench.views FROM '$WORK/view-$v.views'" -c "\\copy bench.shown FROM '$WORK/view-$v.products'"
    # Re-renders while the writes ran: the storefront's log lines with t in [t0, t1].
    renders=$(grep -o 'listing read from the database store=s1 t=[0-9]*' "$WORK/next-$v.log" \
        | awk -F't=' -v a="$t0" -v b="$t1" '{ t = $2 / 1000; if (t >= a && t <= b) n++ } END {print n+0}')
    psqlv -F ' ' -v t0="$t0" -v t1="$t1" <<'SQL' | while read -r views vp50 vp99 sent n seen s50 s99 smax; do
CREATE INDEX ON bench.shown (product_id, t0);
WITH w AS (SELECT :t1::float8 - :t0::float8 AS secs),
ch AS (
  SELECT l.product_id, l.value, extract(epoch FROM pg_xact_commit_timestamp(l.xmin)) AS tc
  FROM bench.src_log l WHERE l.product_id IN (SELECT DISTINCT product_id FROM bench.shown)
),
m AS (
  SELECT ch.*, (SELECT min(s.t1) FROM bench.shown s
                 WHERE s.product_id = ch.product_id AND s.t0 >= ch.tc AND s.inv >= ch.value) AS seen
  FROM ch
),
st AS (SELECT (seen - tc) * 1000 AS ms FROM m WHERE seen IS NOT NULL)
SELECT
  round(((SELECT count(*) FROM bench.views WHERE status = 200 AND t0 BETWEEN :t0 AND :t1) / (SELECT secs FROM w))::numeric, 1),
  (SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY (t1 - t0) * 1000)::numeric) FROM bench.views),
  (SELECT round(percentile_cont(0.99) WITHIN GROUP (ORDER BY (t1 - t0) * 1000)::numeric) FROM bench.views),
  round(((SELECT count(*) FROM bench.store_tags WHERE extract(epoch FROM t) BETWEEN :t0 AND :t1) / (SELECT secs FROM w))::numeric, 1),
  (SELECT count(*) FROM m), (SELECT count(*) FROM st),
  (SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric) FROM st),
  (SELECT round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric) FROM st),
  (SELECT round(max(ms)::numeric) FROM st);
DROP INDEX bench.shown_product_id_t0_idx;
SQL
        secs=$(echo "$t1 - $t0" | bc -l)
        printf '%-11s %6.0f %6s %10s | %9.1f %9s | %7.1f %4s/%-4s | %6s %6s %8s | %s/%s\n' "$v" "$tps" "$views" "$late/$skipped" \
            "$(echo "$renders / $secs" | bc -l)" "$sent" "$(echo "$posts / $secs" | bc -l)" "$vp50" "$vp99" \
            "$s50" "$s99" "$smax" "$seen" "$n"
    done
    stop_worker
    stop_next
done
echo
echo "after the run: summary rows differing from the summary query: $(summary_diff) of $N"
echo "pgbench: -c $CLIENTS -j 2 -M prepared -R $RATE -T $SECS, Inventory quantity + 1 of a random row of $N products (store s1)"
echo "views: $VIEWS GET /stores/s1 per second, open loop (bench/viewer.py, 16 threads), for SECS + 3 s"
echo "re-render = the listing's 'use cache' entry computed (read from the database), per second of writes"
echo "staleness = per stock change of a product the listing shows: from its commit until the end of"
echo "            the first view that started after the commit and shows the new stock or more"
echo "changes seen = changes with such a view / changes to shown products"
echo "worker errors/warnings: $(cat "$WORK"/worker-*.log | grep -cE 'WARN|ERROR' || true)"
exit 0
