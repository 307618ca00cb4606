#!/usr/bin/env bash
# What users would do instead of the worker (issue 13, item 4). See bench/README.md.
#
#   bench/alternatives.sh                            # off trigger mv:1 mv:5 worker off, 10 s each, 100k products
#   SECS=70 bench/alternatives.sh off mv:30 off      # N = 30 needs a longer run
#   HOT=100 bench/alternatives.sh off trigger worker:endpoints off   # a flash sale
#
# One cluster, the same data (load_data), one write load: pgbench, CLIENTS=8 connections,
# as fast as they can for SECS, single-row updates (weights 7 Inventory quantity + 1,
# 2 USD Price amount + 1, 1 Product title). Each scenario in the order given:
#
#   off      nothing attached (default replica identity, no slot): the baseline
#   trigger  row triggers on Product, Price, Inventory, ProductImage lock the product's
#            Product row (FOR NO KEY UPDATE) and recompute its row of bench."ProductSummary" (same DDL as the worker's table) with the summary
#            query in the writing transaction: INSERT ... ON CONFLICT DO UPDATE only when a
#            value differs, DELETE when the query has no row
#   trigger:nolock  the same without the row lock on Product that serializes the writers of
#            one product (what a first attempt looks like; it loses updates, see the check)
#   mv:N     a materialized view of the summary query (unique index on product_id),
#            REFRESH MATERIALIZED VIEW CONCURRENTLY every N s (the next starts N s after the
#            previous started, or at once if it took longer)
#   worker   `cdc-worker setup` (first time only: replica identity FULL, publication, slot,
#            backfill) and `cdc-worker run` (no revalidation endpoints: no outbox rows)
#   worker:endpoints  the same with bench/receiver.py as the revalidation endpoint, so
#            every changed row's tags go through the outbox (what a shop runs)
#   recvlogical  no worker: pg_recvlogical reads the worker's publication from a slot of
#            its own (pgoutput, protocol 2, streaming on, as the worker asks) into
#            /dev/null: what decoding alone costs, the floor of any logical-replication
#            consumer (its process's CPU is reported like the worker's)
#   worker:endpoints:index  the same with Inventory and Price on REPLICA IDENTITY USING
#            INDEX (their unique keys, which lead with productId) instead of FULL: an
#            UPDATE then logs no old row (docs/schema.md, "Replica identity")
#
# Before each scenario: VACUUM ANALYZE and CHECKPOINT, so every run starts from the same
# page state (full-page images after the checkpoint are in every run's WAL). Measured per
# scenario over the pgbench window (for the worker until it has caught up, see below):
# TPS, CPU seconds of every Postgres process (/proc, the postmaster's reaped children
# included; pgbench's own CPU is not in it), WAL bytes (pg_current_wal_lsn difference),
# both per 1000 updates. Staleness: trigger 0 by construction; mv: the age of what a read
# sees at a uniformly random time in the window = now - the snapshot time (start) of the
# last refresh that had committed by then, p50/p99/max, and each refresh's duration;
# worker: after pgbench ends, the time until its checkpoint passes a WAL message written
# then (CPU and WAL are counted until then), and its CPU. Also, at start, the time of a
# REFRESH (plain and CONCURRENTLY) with no load.
source "$(dirname "$0")/lib.sh"
N=${PRODUCTS:-100000}
SECS=${SECS:-10}
CLIENTS=${CLIENTS:-8}
SCEN=("$@"); [ ${#SCEN[@]} -gt 0 ] || SCEN=(off trigger mv:1 mv:5 worker off)
export CDC_REVALIDATE_URLS="" CDC_LOG=${CDC_LOG:-info}

echo "# machine: $(machine)"
start_cluster
load_data "$N"
Q=$(grep -v '^ *--' "$ROOT/sql/summary_query.sql" | sed "s/\\\$1/'USD'/g")

cat >"$WORK/mixed.sql" <<'EOF'
\set p random(1, :products)
\set k random(1, 10)
\if :k <= 7
\set l random(1, 2)
UPDATE "Inventory" SET "quantity" = "quantity" + 1 WHERE "id" = 'inv' || :l || '-' || :p;
\elif :k <= 9
UPDATE "Price" SET "amount" = "amount" + 1 WHERE "productId" = 'p' || lpad(:p::text, 7, '0') AND "currency" = 'USD';
\else
UPDATE "Product" SET "title" = 'Product ' || md5(random()::text) WHERE "id" = 'p' || lpad(:p::text, 7, '0');
\endif
EOF

# HOT=K: a flash sale, HOT_SHARE percent (default 90) of the updates on the first K
# products (as in ceiling.sh).
if [ -n "${HOT:-}" ]; then
    sed -i "s/^\\\\set p random(1, :products)\$/\\\\set h random(1, 100)\\n\\\\set p random(1, :products)\\n\\\\if :h <= ${HOT_SHARE:-90}\\n\\\\set p random(1, $HOT)\\n\\\\endif/" "$WORK/mixed.sql"
fi

# The trigger alternative's objects (created once, triggers attached only during "trigger").
psqlq <<SQL
CREATE SCHEMA bench;
SET search_path = bench;
\i $ROOT/sql/product_summary.sql
RESET search_path;
CREATE FUNCTION bench.refresh_product(pid text) RETURNS void LANGUAGE plpgsql AS \$f\$
DECLARE r record;
BEGIN
  -- Serialize the writers of one product: without this, two transactions changing the same
  -- product concurrently each compute the row without the other's change, and the one
  -- that commits last wins with a stale row (scenario trigger:nolock shows it).
  IF current_setting('bench.lock', true) IS DISTINCT FROM 'off' THEN
    PERFORM 1 FROM "Product" WHERE "id" = pid FOR NO KEY UPDATE;
  END IF;
  SELECT * INTO r FROM ($Q) q WHERE q.product_id = pid;
  IF NOT FOUND THEN
    DELETE FROM bench."ProductSummary" WHERE "productId" = pid;
  ELSE
    INSERT INTO bench."ProductSummary" AS s ("id","productId","storeId","title","price","active","inventoryAvailable","primaryImageUrl","updatedAt")
    VALUES (gen_random_uuid()::text, r.product_id, r.store_id, r.title, r.price, r.active, r.inventory_available, r.primary_image_url, now())
    ON CONFLICT ("productId") DO UPDATE SET "storeId" = EXCLUDED."storeId", "title" = EXCLUDED."title", "price" = EXCLUDED."price",
      "active" = EXCLUDED."active", "inventoryAvailable" = EXCLUDED."inventoryAvailable", "primaryImageUrl" = EXCLUDED."primaryImageUrl", "updatedAt" = now()
    WHERE (s."storeId", s."title", s."price", s."active", s."inventoryAvailable", s."primaryImageUrl")
          IS DISTINCT FROM (EXCLUDED."storeId", EXCLUDED."title", EXCLUDED."price", EXCLUDED."active", EXCLUDED."inventoryAvailable", EXCLUDED."primaryImageUrl");
  END IF;
END \$f\$;
CREATE FUNCTION bench.on_product() RETURNS trigger LANGUAGE plpgsql AS \$f\$
BEGIN
  IF TG_OP <> 'INSERT' THEN PERFORM bench.refresh_product(OLD."id"); END IF;
  IF TG_OP <> 'DELETE' AND (TG_OP = 'INSERT' OR NEW."id" <> OLD."id") THEN PERFORM bench.refresh_product(NEW."id"); END IF;
  RETURN NULL;
END \$f\$;
CREATE FUNCTION bench.on_child() RETURNS trigger LANGUAGE plpgsql AS \$f\$
BEGIN
  IF TG_OP <> 'INSERT' THEN PERFORM bench.refresh_product(OLD."productId"); END IF;
  IF TG_OP <> 'DELETE' AND (TG_OP = 'INSERT' OR NEW."productId" <> OLD."productId") THEN PERFORM bench.refresh_product(NEW."productId"); END IF;
  RETURN NULL;
END \$f\$;
INSERT INTO bench."ProductSummary"
SELECT gen_random_uuid()::text, product_id, store_id, title, price, active, inventory_available, primary_image_url, now() FROM ($Q) q;
CREATE MATERIALIZED VIEW bench.mv AS $Q;
CREATE UNIQUE INDEX ON bench.mv (product_id);
CREATE INDEX ON bench.mv (store_id);
CREATE TABLE bench.refresh_log (scenario text, t0 float8, t1 float8);
SQL
triggers() { # on|off
    local t
    for t in Product Inventory Price ProductImage; do
        if [ "$1" = on ]; then
            psqlq -c "CREATE TRIGGER bench_summary AFTER INSERT OR UPDATE OR DELETE ON \"$t\" FOR EACH ROW EXECUTE FUNCTION bench.$([ $t = Product ] && echo on_product || echo on_child)()"
        else
            psqlq -c "DROP TRIGGER bench_summary ON \"$t\""
        fi
    done
}
# setup sets FULL on the tables whose rows name a product (a delete must carry productId);
# "off" after "worker" sets DEFAULT again.
replica_identity() { local t; for t in Inventory Price ProductImage; do psqlq -c "ALTER TABLE \"$t\" REPLICA IDENTITY $1"; done; }
# One REFRESH every N s in one session, each logged with its start and end.
refresher() { # scenario N
    local next
    next=$(now)
    while :; do
        next=$(echo "$next + $2" | bc)
        while (( $(echo "$(now) < $next" | bc) )); do [ -e "$WORK/stop" ] && return 0; sleep 0.05; done
        [ -e "$WORK/stop" ] && return 0
        next=$(now)
        psqlq >/dev/null <<SQL
SELECT extract(epoch FROM clock_timestamp()) AS t0 \gset
REFRESH MATERIALIZED VIEW CONCURRENTLY bench.mv;
INSERT INTO bench.refresh_log VALUES ('$1', :t0, extract(epoch FROM clock_timestamp()));
SQL
    done
}

# Refresh time with no load (the first refresh after creating also reads everything).
for mode in "" CONCURRENTLY; do
    for i in 1 2; do
        t0=$(now); psqlq -c "REFRESH MATERIALIZED VIEW $mode bench.mv"
        echo "# idle REFRESH MATERIALIZED VIEW ${mode:-(plain)} of $N products: $(printf %.2f "$(echo "$(now) - $t0" | bc)") s"
    done
done

declare -a ROWS
worker_ready=0
for sc in "${SCEN[@]}"; do
    psqlq -c "VACUUM ANALYZE" -c CHECKPOINT
    case $sc in
        off) [ $worker_ready = 1 ] && replica_identity DEFAULT ;;
        trigger*)
            # bring the trigger's table up to date (the triggers are attached only in these scenarios)
            psqlq -c "TRUNCATE bench.\"ProductSummary\"" -c "INSERT INTO bench.\"ProductSummary\" SELECT gen_random_uuid()::text, product_id, store_id, title, price, active, inventory_available, primary_image_url, now() FROM ($Q) q" \
                -c "VACUUM ANALYZE bench.\"ProductSummary\"" -c CHECKPOINT
            triggers on
            [ "$sc" = trigger:nolock ] && psqlq -c "ALTER DATABASE bench SET bench.lock = 'off'" ;;
        worker*)
            if [ $worker_ready = 0 ]; then worker_setup; worker_ready=1; else replica_identity FULL; fi
            psqlq -c "VACUUM ANALYZE" -c CHECKPOINT
            [ "${sc#worker:endpoints}" != "$sc" ] && start_receiver "$WORK/receiver-$sc.log"
            if [ "$sc" = worker:endpoints:index ]; then
                psqlq -c 'ALTER TABLE "Inventory" REPLICA IDENTITY USING INDEX "Inventory_productId_locationId_key"' \
                      -c 'ALTER TABLE "Price" REPLICA IDENTITY USING INDEX "Price_productId_currency_key"'
            fi
            start_worker
            m=$(psqlv -c "SELECT pg_logical_emit_message(true, 'bench', 'start')")
            until [ "$(psqlv -c "SELECT coalesce((SELECT lsn >= '$m' FROM cdc_worker.checkpoint), false)")" = t ]; do sleep 0.1; done ;;
        mv:*) psqlq -c "REFRESH MATERIALIZED VIEW CONCURRENTLY bench.mv" ;;
        recvlogical)
            if [ $worker_ready = 0 ]; then worker_setup; worker_ready=1; else replica_identity FULL; fi
            psqlq -c "VACUUM ANALYZE" -c CHECKPOINT -c "SELECT pg_create_logical_replication_slot('bench_alt', 'pgoutput')"
            "$PGBIN/pg_recvlogical" -d bench --slot bench_alt --start -o proto_version=2 -o streaming=on \
                -o publication_names=cdc_worker -F 1 -s 1 -f /dev/null & RECV_PID=$! ;;
    esac
    load0=$(cut -d' ' -f1 /proc/loadavg)
    lsn0=$(psqlv -c "SELECT pg_current_wal_lsn()")
    pg0=$(pg_cpu); t0=$(now)
    rm -f "$WORK/stop"
    [ "${sc%%:*}" = mv ] && { refresher "$sc" "${sc#mv:}" & REFRESHER=$!; }
    read -r tps n < <("$PGBIN/pgbench" -n -M prepared -c "$CLIENTS" -j 2 -T "$SECS" -D products="$N" -f "$WORK/mixed.sql" bench 2>&1 \
        | awk '/^number of transactions actually processed/{n=$6} /^tps/{t=$3} END{print t, n}')
    t1=$(now); extra="-"
    pgbench_gone
    case $sc in
        mv:*)
            # stop the refresher after its current refresh (that one is counted in the CPU and WAL)
            touch "$WORK/stop"; wait "$REFRESHER" 2>/dev/null || true
            extra=$(psqlv -F ' ' <<SQL
WITH r AS (SELECT t0, t1 FROM bench.refresh_log WHERE scenario = '$sc' AND t1 <= $t1
           UNION ALL SELECT $t0, $t0),   -- the refresh just before the window
reads AS (SELECT $t0 + ($t1 - $t0) * g / 10000.0 AS t FROM generate_series(0, 9999) g),
age AS (SELECT rd.t - (SELECT r.t0 FROM r WHERE r.t1 <= rd.t ORDER BY r.t1 DESC LIMIT 1) AS a FROM reads rd)
SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY a)::numeric, 2), round(percentile_cont(0.99) WITHIN GROUP (ORDER BY a)::numeric, 2),
       round(max(a)::numeric, 2),
       (SELECT count(*) FROM bench.refresh_log WHERE scenario = '$sc'),
       (SELECT round(avg(t1 - t0)::numeric, 2) || '/' || round(max(t1 - t0)::numeric, 2) FROM bench.refresh_log WHERE scenario = '$sc')
FROM age;
SQL
)
            read -r a50 a99 amax nref dur <<<"$extra"
            extra="age at read p50 $a50 s, p99 $a99 s, max $amax s; $nref refreshes, each avg/max $dur s" ;;
        recvlogical)
            m=$(psqlv -c "SELECT pg_logical_emit_message(true, 'bench', 'end')")
            until [ "$(psqlv -c "SELECT confirmed_flush_lsn >= '$m' FROM pg_replication_slots WHERE slot_name = 'bench_alt'")" = t ]; do sleep 0.05; done
            caught=$(echo "$(now) - $t1" | bc)
            wsnd=$(psqlv -c "SELECT active_pid FROM pg_replication_slots WHERE slot_name = 'bench_alt'")
            extra=$(printf 'caught up %.2f s after pgbench ended; pg_recvlogical process CPU %.1f s; its walsender %.1f s' "$caught" "$(proc_cpu "$RECV_PID")" "$(proc_cpu "$wsnd")")
            kill -INT "$RECV_PID"; wait "$RECV_PID" 2>/dev/null || true; RECV_PID=
            sleep 0.5 # the walsender exits and is reaped: its CPU is in pg_cpu then
            t1=$(now) ;;
        worker*)
            m=$(psqlv -c "SELECT pg_logical_emit_message(true, 'bench', 'end')")
            until [ "$(psqlv -c "SELECT coalesce((SELECT lsn >= '$m' FROM cdc_worker.checkpoint), false)")" = t ]; do sleep 0.05; done
            caught=$(echo "$(now) - $t1" | bc)
            backends=$(psqlv -F ' ' -c "SELECT pid, coalesce(nullif(application_name, ''), backend_type) FROM pg_stat_activity WHERE application_name LIKE 'cdc-worker%'" \
                | while read -r pid name; do printf '%s=%.1fs ' "${name#cdc-worker/}" "$(proc_cpu "$pid")"; done)
            # batches: apply transactions (cdc_batch_size's count) during the window
            batches=$(curl -s "http://$CDC_METRICS_ADDR/metrics" | awk '/^cdc_batch_size_count/{print $2}')
            extra=$(printf 'caught up %.2f s after pgbench ended; worker process CPU %.1f s; %s apply transactions; its backends (since start) %s' "$caught" "$(proc_cpu "$WORKER_PID")" "${batches:-?}" "$backends")
            t1=$(now) ;;
    esac
    pgc=$(echo "$(pg_cpu) - $pg0" | bc)
    lsn1=$(psqlv -c "SELECT pg_current_wal_lsn()")
    wal=$(psqlv -c "SELECT '$lsn1'::pg_lsn - '$lsn0'")
    # Full-page images (written once per page touched after the scenario's CHECKPOINT, so
    # their share depends on the window's length) apart from the records themselves (the
    # cost per change): pg_waldump's totals; the per-record table goes to $WALSTATS_DIR.
    fpi=$("$PGBIN/pg_waldump" --stats=record -p "$PGDATA_DIR/pg_wal" -s "$lsn0" -e "$lsn1" 2>/dev/null | tee "$WORK/walstats-$sc.txt" \
        | awk '$1 == "Total" {print $5}')
    [ -n "${WALSTATS_DIR:-}" ] && mkdir -p "$WALSTATS_DIR" && cp "$WORK/walstats-$sc.txt" "$WALSTATS_DIR/$sc.txt"
    if [ "${sc%%:*}" = trigger ]; then
        triggers off; psqlq -c "ALTER DATABASE bench RESET bench.lock"
        extra="summary rows differing from the summary query afterwards: $(psqlv <<SQL
WITH want AS ($Q), have AS (SELECT "productId", "storeId", "title", "price", "active", "inventoryAvailable", "primaryImageUrl" FROM bench."ProductSummary")
SELECT (SELECT count(*) FROM (SELECT * FROM want EXCEPT SELECT * FROM have) a) + (SELECT count(*) FROM (SELECT * FROM have EXCEPT SELECT * FROM want) b);
SQL
)"
    fi
    [ "$sc" = recvlogical ] && psqlq -c "SELECT pg_drop_replication_slot('bench_alt')"
    if [ "${sc%%:*}" = worker ]; then
        stop_worker
        extra="$extra; summary rows differing from the summary query: $(summary_diff)"
        if [ -n "${RECEIVER_PID:-}" ]; then
            extra="$extra; outbox rows left $(psqlv -c 'SELECT count(*) FROM cdc_worker.outbox'), tags received $(wc -l <"$WORK/receiver-$sc.log")"
            kill "$RECEIVER_PID"; RECEIVER_PID=; export CDC_REVALIDATE_URLS=""
        fi
    fi
    ROWS+=("$(printf '%-8s | %6s | %7.0f | %8s | %7.1f | %8.3f | %9.0f | %9.0f | %s' "$sc" "$load0" "$tps" "$n" "$pgc" "$(echo "$pgc * 1000 / $n" | bc -l)" "$(echo "$wal * 1000 / $n" | bc -l)" "$(echo "($wal - ${fpi:-0}) * 1000 / $n" | bc -l)" "$extra")")
    echo "# $sc done, load $(cut -d' ' -f1 /proc/loadavg)"
done

echo
echo "# machine after: loadavg $(cut -d' ' -f1-3 /proc/loadavg)"
echo "products=$N secs=$SECS pgbench -c $CLIENTS -j 2 -M prepared, unthrottled: 7/10 Inventory quantity + 1, 2/10 USD Price amount + 1, 1/10 Product title; hot=${HOT:-none} (${HOT_SHARE:-90}% of updates)"
printf '%-8s | %6s | %7s | %8s | %7s | %8s | %9s | %9s | %s\n' scenario load tps updates "pg CPU" "CPU/1k" "WAL B/1k" "no FPI/1k" "staleness / notes"
for r in "${ROWS[@]}"; do echo "$r"; done
exit 0
