#!/usr/bin/env bash
# One bulk transaction over every product while the worker streams (issue 21, part 1).
# See bench/README.md.
#
#   bench/live_bulk.sh                      # 1M products, protocol 1 then protocol 2
#   PRODUCTS=200000 PROTOCOLS="2" bench/live_bulk.sh
#
# Per protocol: the worker is started and caught up, then one transaction updates every
# Inventory row and every price (and one product's title, the sentinel). Measured: the
# transaction's own time, and the seconds from its commit (commit timestamp) until the
# summary is exact (commit timestamp of the apply transaction that stored a checkpoint past
# the bulk commit with the sentinel in the summary), against the floor measured in the same
# run: every summary row computed with the summary query and written once into an empty
# copy of the summary table (same fillfactor and indexes), in one statement. Also: the
# worker's peak RSS over the whole run, and what the walsender streamed before the commit
# (pg_stat_replication_slots).
source "$(dirname "$0")/lib.sh"
N=${PRODUCTS:-1000000}
PROTOCOLS=${PROTOCOLS:-1 2}
export CDC_REVALIDATE_URLS="" CDC_LOG=${CDC_LOG:-info}

echo "# machine: $(machine)"
start_cluster
t0=$(now); load_data "$N"; worker_setup
echo "# loaded $N products and ran setup in $(echo "$(now) - $t0" | bc) s"

# The floor: the summary query's rows written once into an empty copy of the table.
floor() {
    local q
    q=$(grep -v '^ *--' "$ROOT/sql/summary_query.sql" | sed "s/\\\$1/'USD'/g")
    psqlq <<SQL
SET client_min_messages = warning;
DROP TABLE IF EXISTS bench_floor;
CREATE TABLE bench_floor (LIKE "ProductSummary" INCLUDING ALL) WITH (fillfactor = 70);
CHECKPOINT;
SQL
    local t; t=$(now)
    psqlq -c "INSERT INTO bench_floor (\"id\", \"productId\", \"storeId\", \"title\", \"price\", \"active\", \"inventoryAvailable\", \"primaryImageUrl\", \"updatedAt\")
              SELECT md5(product_id), product_id, store_id, title, price, active, inventory_available, primary_image_url, now() FROM ($q) q"
    echo "$(now) - $t" | bc
    psqlq -c "DROP TABLE bench_floor"
}
floor_s=$(floor)
printf '# floor: %.2f s\n' "$floor_s"

rows=()
for proto in $PROTOCOLS; do
    export CDC_PGOUTPUT_PROTOCOL=$proto
    mark=$(psqlv -c "SELECT pg_logical_emit_message(true, 'bench', 'start')")
    start_worker "worker-p$proto"
    until [ "$(psqlv -c "SELECT coalesce((SELECT lsn >= '$mark' FROM cdc_worker.checkpoint), false)")" = t ]; do sleep 0.2; done
    psqlq -c CHECKPOINT
    slot_stats() { psqlv -c "SELECT coalesce(sum(stream_bytes), 0) || ' ' || coalesce(sum(total_bytes), 0) FROM pg_stat_replication_slots WHERE slot_name = 'cdc_worker'"; }
    s0=$(slot_stats)
    sentinel="bulk-p$proto-$RANDOM"
    t0=$(now)
    # One transaction: every Inventory row, every price, and the sentinel title. Its xid
    # and the WAL position just before its commit come back.
    read -r xid before < <(psqlv <<SQL | tail -1
BEGIN;
UPDATE "Inventory" SET "quantity" = "quantity" + 1;
UPDATE "Price" SET "amount" = "amount" + 1;
UPDATE "Product" SET "title" = '$sentinel' WHERE "id" = (SELECT min("id") FROM "Product");
SELECT txid_current() || ' ' || pg_current_wal_insert_lsn();
COMMIT;
SQL
)
    txn_s=$(echo "$(now) - $t0" | bc)
    exact_s=
    while :; do
        exact_s=$(psqlv -c "SELECT extract(epoch FROM pg_xact_commit_timestamp(c.xmin) - pg_xact_commit_timestamp('$xid'::xid))
                            FROM cdc_worker.checkpoint c
                            WHERE c.lsn >= '$before'
                              AND EXISTS (SELECT 1 FROM \"ProductSummary\" WHERE \"title\" = '$sentinel')")
        [ -n "$exact_s" ] && break
        if (( $(echo "$(now) - $t0 > ${TIMEOUT:-900}" | bc) )); then exact_s=TIMEOUT; break; fi
        sleep 0.1
    done
    rss=$(awk '/VmHWM/{print $2}' "/proc/$WORKER_PID/status")
    wcpu=$(proc_cpu "$WORKER_PID")
    stop_worker
    sleep 1   # the walsender flushes the slot's statistics when it exits
    s1=$(slot_stats)
    diff=$(summary_diff)
    read -r sb0 tb0 <<<"$s0"; read -r sb1 tb1 <<<"$s1"
    streamed_mib=$(echo "($sb1 - $sb0) / 1048576" | bc)
    total_mib=$(echo "($tb1 - $tb0) / 1048576" | bc)
    passes=$(grep -c 'recomputed every product' "$WORK/worker-p$proto.log" || true)
    # The pass's own seconds (from its log line): the rest of commit -> exact is the wait
    # for the walsender to deliver the commit (decode) plus the batch's visibility wait.
    pass_s=$(grep 'recomputed every product' "$WORK/worker-p$proto.log" | tail -1 | sed -nE 's/.*seconds=([0-9.]+).*/\1/p')
    rows+=("$(printf '| %s | %.2f s | %.2f s | %.2f s | %s | %s s | %.1f MiB | %.1f s | %s of %s MiB | %s | %s |' \
        "$proto" "$txn_s" "$exact_s" "$floor_s" "$(echo "scale=2; $exact_s / $floor_s" | bc 2>/dev/null || echo -)" \
        "${pass_s:--}" "$(echo "$rss/1024" | bc -l)" "$wcpu" "$streamed_mib" "$total_mib" "$passes" "$diff")")
    echo "# protocol $proto: transaction $txn_s s, commit -> exact $exact_s s, peak RSS ${rss} kB, summary diff $diff"
done
floor2=$(floor)
printf '# floor again after the runs: %.2f s\n' "$floor2"
echo
echo "products=$N; loadavg at the end $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| protocol | transaction | commit -> exact | floor | ratio | of which the pass | worker peak RSS | worker CPU | streamed of decoded (slot stats) | passes over every product | summary diff |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
