#!/usr/bin/env bash
# The sustained ceiling (issue 13, item 3). See bench/README.md.
#
#   bench/ceiling.sh                          # 1000 5000 10000 20000 updates/s, 10 s each, 20k products
#   SECS=20 bench/ceiling.sh 2000 4000 8000
#   TRIGGERS=1 bench/ceiling.sh 1000          # with freshness.sh's measurement triggers, to see their load
#   ROWS=5 bench/ceiling.sh 10000             # 5 updates per transaction (rates stay in updates/s)
#   HOT=20 bench/ceiling.sh 5000 10000        # skewed (a flash sale): 90% of updates on 20 products
#
# Same load as freshness.sh (single-row updates: 4/5 Inventory quantity + 1, 1/5 USD Price
# amount + 1, pgbench -R rate), measured without triggers: a second slot with the
# test_decoding plugin is read only after each rate, so it adds no work during it. From it:
# every source change (its commit time, and the value the summary must reach: the
# product's available sum before the rate plus one per Inventory update so far, or the new
# USD amount) and every ProductSummary write of the worker (its commit time and values).
# commit -> summary and commit -> endpoint are then matched as in freshness.sh.
# Lag: every 0.5 s, pg_current_wal_lsn() minus the worker's stored checkpoint (applied)
# and minus its walsender's sent_lsn (decoded). After pgbench ends a WAL message marks the
# end; catch-up = time until the checkpoint (applied) / sent_lsn (decoded) pass it.
# Then the worker is stopped and every rate is repeated with pg_recvlogical alone on a
# fresh pgoutput slot (same publication): its decoded lag and catch-up.
# HOT=K: HOT_SHARE percent (default 90) of the updates pick one of the first K products,
# the rest any product, so changes of a few products coalesce in the worker's batches.
# The load generator's CPU (pgbench, user+sys) is printed per rate: on this 2-core
# machine it competes with Postgres and the worker.
source "$(dirname "$0")/lib.sh"
N=${PRODUCTS:-20000}
SECS=${SECS:-10}
RATES=("$@"); [ ${#RATES[@]} -gt 0 ] || RATES=(1000 5000 10000 20000)
RECV=${RECV:-1}            # 0: leave out the pg_recvlogical phase
ROWS=${ROWS:-1}            # updates per transaction, each of a random row (pgbench -R rate/ROWS)
CATCHUP_MAX=${CATCHUP_MAX:-60}
# clients: enough that the rate is not limited by round trips (one client does a few
# hundred to a few thousand updates/s here); -j 2 threads.
clients_for() { local c=$(($1 / ROWS / 250)); [ $c -lt 4 ] && c=4; [ $c -gt 40 ] && c=40; echo "${CLIENTS:-$c}"; }

echo "# machine: $(machine)"
start_cluster
load_data "$N"
worker_setup
single_row_scripts
# ROWS > 1: each script becomes ROWS copies of its update (own random row each) in one
# transaction; deadlocks between them are retried (--max-tries).
multi_row() {
    { for i in $(seq "$ROWS"); do grep '^\\set' "$1" | sed -E "s/^\\\\set ([a-z]+) /\\\\set \\1$i /"; done
      echo "BEGIN;"
      for i in $(seq "$ROWS"); do grep -v '^\\set' "$1" | sed -E "s/:(p|l)\\b/:\\1$i/g"; done
      echo "COMMIT;"; } >"$1.multi"
    mv "$1.multi" "$1"
}
if [ -n "${HOT:-}" ]; then
    for f in "$WORK/inventory.sql" "$WORK/price.sql"; do
        sed -i "s/^\\\\set p random(1, :products)\$/\\\\set h random(1, 100)\\n\\\\set p random(1, :products)\\n\\\\if :h <= ${HOT_SHARE:-90}\\n\\\\set p random(1, $HOT)\\n\\\\endif/" "$f"
    done
fi
if [ "$ROWS" -gt 1 ]; then multi_row "$WORK/inventory.sql"; multi_row "$WORK/price.sql"; fi
[ "${TRIGGERS:-0}" = 1 ] && freshness_triggers
psqlq <<'SQL'
CREATE SCHEMA ceil;
CREATE TABLE ceil.lag (consumer text, rate int, t float8, applied bigint, decoded bigint);
CREATE TABLE ceil.recv (t float8, tag text);
SQL
psqlv -c "SELECT 1 FROM pg_create_logical_replication_slot('bench_trace', 'test_decoding')" >/dev/null

start_receiver "$WORK/recv.log"
export CDC_LOG=${CDC_LOG:-info}
start_worker
sleep 2

# walsender pid of a slot
slot_pid() { psqlv -c "SELECT active_pid FROM pg_replication_slots WHERE slot_name = '$1'"; }
# sample lags every 0.5 s into ceil.lag until $WORK/stop exists (one psql session)
sampler() { # consumer rate slot
    local applied="NULL"
    [ "$1" = worker ] && applied="pg_current_wal_lsn() - (SELECT lsn FROM cdc_worker.checkpoint)"
    rm -f "$WORK/stop"
    while [ ! -e "$WORK/stop" ]; do
        echo "INSERT INTO ceil.lag SELECT '$1', $2, extract(epoch FROM clock_timestamp()), $applied,
              pg_current_wal_lsn() - (SELECT sent_lsn FROM pg_stat_replication WHERE pid = (SELECT active_pid FROM pg_replication_slots WHERE slot_name = '$3'));"
        sleep 0.5
    done | psqlq >/dev/null 2>&1
}
# wait until cond (SQL boolean) holds; prints seconds since $2 (epoch), or "n/a" after CATCHUP_MAX
wait_for() {
    local t
    for _ in $(seq $((CATCHUP_MAX * 20))); do
        t=$(psqlv -c "SELECT CASE WHEN $1 THEN round((extract(epoch FROM clock_timestamp()) - $2)::numeric, 2) END")
        [ -n "$t" ] && { echo "$t"; return; }
        sleep 0.05
    done
    echo "n/a"
}
lag_stats() { # consumer rate column -> "p50 max q1 q2 q3 q4" in MiB over the pgbench window (q = mean of each quarter)
    psqlv -F ' ' -c "WITH l AS (SELECT t, $3 AS v, ntile(4) OVER (ORDER BY t) AS q FROM ceil.lag WHERE consumer = '$1' AND rate = $2)
        SELECT round((percentile_cont(0.5) WITHIN GROUP (ORDER BY v) / 1048576)::numeric, 1), round((max(v) / 1048576.0)::numeric, 1),
               $(for q in 1 2 3 4; do printf "round((avg(v) FILTER (WHERE q = $q) / 1048576)::numeric, 1)"; [ $q = 4 ] || printf ', '; done)
        FROM l"
}
run_pgbench() { # rate (updates/s) -> "updates/s updates" (its CPU seconds in $WORK/pgbench.time)
    /usr/bin/time -f '%U %S' -o "$WORK/pgbench.time" "$PGBIN/pgbench" -n -M prepared -c "$(clients_for "$1")" -j 2 -R "$(($1 / ROWS))" -T "$SECS" -D products="$N" \
        $([ "$ROWS" -gt 1 ] && echo --max-tries=10) -f "$WORK/inventory.sql@4" -f "$WORK/price.sql@1" bench 2>&1 \
        | awk -v r="$ROWS" '/^number of transactions actually processed/{n=$6} /^tps/{t=$3} END{print t * r, n * r}'
}

declare -A W_TPS W_N W_LAG W_CU W_CPU W_LAT
for rate in "${RATES[@]}"; do
    # start from an idle, caught-up worker; the trace starts here
    m=$(psqlv -c "SELECT pg_logical_emit_message(true, 'bench', 'idle')")
    wait_for "(SELECT lsn >= '$m' FROM cdc_worker.checkpoint)" "$(now)" >/dev/null
    psqlq <<SQL
DROP TABLE IF EXISTS ceil.base;
CREATE TABLE ceil.base AS SELECT "productId" AS product_id, sum(greatest("quantity" - "reserved", 0))::int AS inv
  FROM "Inventory" GROUP BY 1;
SELECT 1 FROM pg_replication_slot_advance('bench_trace', pg_current_wal_lsn()) \g /dev/null
SQL
    : >"$WORK/recv.log"
    sampler worker "$rate" cdc_worker & SAMPLER=$!
    pg0=$(pg_cpu); w0=$(proc_cpu "$WORKER_PID"); t0=$(now); lsn0=$(psqlv -c "SELECT pg_current_wal_lsn()")
    read -r tps n < <(run_pgbench "$rate")
    tend=$(now)
    walrate=$(psqlv -c "SELECT round(((pg_current_wal_lsn() - '$lsn0') / 1048576.0 / ($tend - $t0))::numeric, 2)")
    end=$(psqlv -c "SELECT pg_logical_emit_message(true, 'bench', 'end')")
    touch "$WORK/stop"; wait "$SAMPLER" 2>/dev/null || true
    wait_for "(SELECT lsn >= '$end' FROM cdc_worker.checkpoint)" "$tend" >/dev/null
    pgbench_gone
    pgc=$(echo "$(pg_cpu) - $pg0" | bc); wc=$(echo "$(proc_cpu "$WORKER_PID") - $w0" | bc)
    W_CPU[$rate]="$pgc $wc $(awk '{print $1+$2}' "$WORK/pgbench.time")"
    sleep 1   # the last tags reach the receiver
    W_TPS[$rate]=$tps; W_N[$rate]=$n
    W_LAG[$rate]="$(lag_stats worker "$rate" applied) $(lag_stats worker "$rate" decoded)"
    W_CU[$rate]=$walrate
    # the trace of this rate: source changes and summary writes, with commit times
    psqlq <<SQL
DROP TABLE IF EXISTS ceil.tr, ceil.src, ceil.sum;
CREATE TABLE ceil.tr AS SELECT o AS ord, xid, data
  FROM pg_logical_slot_get_changes('bench_trace', NULL, NULL) WITH ORDINALITY AS c(lsn, xid, data, o)
 WHERE data LIKE 'table public."Inventory": UPDATE:%' OR data LIKE 'table public."Price": UPDATE:%'
    OR data LIKE 'table public."ProductSummary": %';
CREATE TABLE ceil.src AS
SELECT kind, product_id, t,
       CASE kind WHEN 'inventory' THEN (SELECT inv FROM ceil.base b WHERE b.product_id = x.product_id)
                                      + row_number() OVER (PARTITION BY kind, product_id ORDER BY ord)
                 ELSE amount END AS value
FROM (SELECT ord, pg_xact_commit_timestamp(xid) AS t,
             CASE WHEN data LIKE 'table public."Inventory"%' THEN 'inventory' ELSE 'product' END AS kind,
             substring(nt FROM '"productId"\[text\]:''([^'']*)''') AS product_id,
             substring(nt FROM ' amount\[integer\]:(-?[0-9]+)')::int AS amount,
             substring(nt FROM ' currency\[text\]:''([^'']*)''') AS currency
        FROM (SELECT ord, xid, data, substring(data FROM 'new-tuple:.*') AS nt FROM ceil.tr
               WHERE data NOT LIKE 'table public."ProductSummary"%') y) x
WHERE kind = 'inventory' OR currency = 'USD';
CREATE TABLE ceil.sum AS
SELECT substring(data FROM '"productId"\[text\]:''([^'']*)''') AS product_id,
       substring(data FROM '"inventoryAvailable"\[integer\]:(-?[0-9]+)')::int AS inv,
       substring(data FROM ' price\[integer\]:(-?[0-9]+)')::int AS price,
       pg_xact_commit_timestamp(xid) AS t
FROM (SELECT xid, coalesce(substring(data FROM 'new-tuple:.*'), data) AS data FROM ceil.tr
       WHERE data LIKE 'table public."ProductSummary"%' AND data NOT LIKE '%: DELETE:%') s;
CREATE INDEX ON ceil.sum (product_id, t);
TRUNCATE ceil.recv;
\copy ceil.recv FROM '$WORK/recv.log'
CREATE INDEX ON ceil.recv (tag, t);
ANALYZE ceil.src, ceil.sum, ceil.recv;
SQL
    W_LAT[$rate]=$(psqlv -F ' ' <<SQL
WITH m AS (
  SELECT l.kind, l.product_id, l.t,
    (SELECT min(s.t) FROM ceil.sum s WHERE s.product_id = l.product_id AND s.t >= l.t
        AND CASE l.kind WHEN 'inventory' THEN s.inv >= l.value ELSE s.price >= l.value END) AS ts
  FROM ceil.src l
), r AS (
  SELECT m.*, (SELECT to_timestamp(min(r.t)) FROM ceil.recv r
                WHERE r.tag = m.kind || ':' || m.product_id AND r.t >= extract(epoch FROM m.ts)) AS tr
  FROM m
), ms AS (SELECT extract(epoch FROM ts - t) * 1000 AS s, extract(epoch FROM tr - t) * 1000 AS e FROM r)
SELECT count(*), (SELECT round((extract(epoch FROM max(ts)) - $tend)::numeric, 2) FROM m),
  round(percentile_cont(0.5) WITHIN GROUP (ORDER BY s)::numeric, 1), round(percentile_cont(0.99) WITHIN GROUP (ORDER BY s)::numeric, 1), round(max(s)::numeric, 1), count(s),
  round(percentile_cont(0.5) WITHIN GROUP (ORDER BY e)::numeric, 1), round(percentile_cont(0.99) WITHIN GROUP (ORDER BY e)::numeric, 1), round(max(e)::numeric, 1), count(e)
FROM ms;
SQL
)
    echo "# rate $rate done (worker), load $(cut -d' ' -f1 /proc/loadavg)"
done
stop_worker
psqlv -c "SELECT pg_drop_replication_slot('bench_trace')" >/dev/null
sleep 1
diff=$(summary_diff)

declare -A R_TPS R_LAG R_CU R_CPU
if [ "$RECV" = 1 ]; then
    psqlv -c "SELECT 1 FROM pg_create_logical_replication_slot('bench_recv', 'pgoutput')" >/dev/null
    "$PGBIN/pg_recvlogical" -d bench --slot bench_recv --start -o proto_version=1 -o publication_names=cdc_worker \
        -s 1 -F 0 -f /dev/null & RECVL_PID=$!
    sleep 1
    for rate in "${RATES[@]}"; do
        sampler recvlogical "$rate" bench_recv & SAMPLER=$!
        pg0=$(pg_cpu); r0=$(proc_cpu "$RECVL_PID"); t0=$(now); lsn0=$(psqlv -c "SELECT pg_current_wal_lsn()")
        read -r tps n < <(run_pgbench "$rate")
        tend=$(now)
        walrate=$(psqlv -c "SELECT round(((pg_current_wal_lsn() - '$lsn0') / 1048576.0 / ($tend - $t0))::numeric, 2)")
        end=$(psqlv -c "SELECT pg_current_wal_insert_lsn()")
        touch "$WORK/stop"; wait "$SAMPLER" 2>/dev/null || true
        dec=$(wait_for "(SELECT sent_lsn >= '$end' FROM pg_stat_replication WHERE pid = $(slot_pid bench_recv))" "$tend")
        pgbench_gone
        R_CPU[$rate]="$(echo "$(pg_cpu) - $pg0" | bc) $(echo "$(proc_cpu "$RECVL_PID") - $r0" | bc)"
        R_TPS[$rate]=$tps; R_LAG[$rate]=$(lag_stats recvlogical "$rate" decoded); R_CU[$rate]="$walrate $dec"
        echo "# rate $rate done (pg_recvlogical), load $(cut -d' ' -f1 /proc/loadavg)"
    done
    kill "$RECVL_PID"; wait "$RECVL_PID" 2>/dev/null || true
fi

echo
echo "# machine after: loadavg $(cut -d' ' -f1-3 /proc/loadavg)"
echo "products=$N secs=$SECS pgbench -M prepared -j 2 -R rate/$ROWS, 4/5 Inventory + 1/5 USD Price updates, $ROWS per transaction; triggers=${TRIGGERS:-0}; hot=${HOT:-none} (${HOT_SHARE:-90}% of updates)"
echo
echo "worker: lags = MiB of WAL behind pg_current_wal_lsn, sampled every 0.5 s during the run: p50, max, and the mean of each"
echo "quarter of the run (growing = not keeping up); 'last in summary' = last change's summary commit, s after pgbench ended"
printf '%6s %7s %4s %7s %6s | %-34s | %-9s | %6s %6s %6s | %6s %6s %6s | %8s | %-11s | %s\n' \
    rate tps cli updates "WAL/s" "applied lag p50 max | q1 q2 q3 q4" "decoded" s_p50 s_p99 s_max e_p50 e_p99 e_max "last in" "pg/worker/pgbench" "matched s/e"
printf '%6s %7s %4s %7s %6s | %-34s | %-9s | %-20s | %-20s | %8s | %-17s |\n' "" "" "" "" "MiB" "" "p50 max" "commit->summary ms" "commit->endpoint ms" "summary" "CPU s"
for rate in "${RATES[@]}"; do
    read -r al50 almax q1 q2 q3 q4 dl50 dlmax _ <<<"${W_LAG[$rate]}"
    read -r pgc wc bc_cpu <<<"${W_CPU[$rate]}"
    read -r cnt last s50 s99 smax ns e50 e99 emax ne <<<"${W_LAT[$rate]}"
    printf '%6s %7.0f %4s %7s %6s | %4s %4s | %4s %4s %4s %4s | %4s %4s | %6s %6s %6s | %6s %6s %6s | %8s | %5s %5s %5s | %s/%s of %s\n' \
        "$rate" "${W_TPS[$rate]}" "$(clients_for "$rate")" "${W_N[$rate]}" "${W_CU[$rate]}" "$al50" "$almax" "$q1" "$q2" "$q3" "$q4" "$dl50" "$dlmax" \
        "$s50" "$s99" "$smax" "$e50" "$e99" "$emax" "+$last" "$pgc" "$wc" "$bc_cpu" "$ns" "$ne" "$cnt"
done
echo "summary rows differing from the summary query after the worker phase: $diff of $N"
echo "worker errors/warnings: $(grep -cE 'WARN|ERROR' "$WORK/worker.log" || true)"
if [ "$RECV" = 1 ]; then
    echo
    echo "pg_recvlogical alone (pgoutput, same publication, -s 1 -F 0 -f /dev/null), the same rates afterwards;"
    echo "catch-up = s after pgbench ended until its walsender's sent_lsn passed the WAL insert position read then"
    printf '%6s %7s %6s | %-34s | %-10s | %s\n' rate tps "WAL/s" "decoded lag p50 max | q1 q2 q3 q4" "catch-up s" "pg/recvlogical CPU s"
    for rate in "${RATES[@]}"; do
        read -r dl50 dlmax q1 q2 q3 q4 <<<"${R_LAG[$rate]}"
        read -r pgc rc <<<"${R_CPU[$rate]}"
        read -r wr cu <<<"${R_CU[$rate]}"
        printf '%6s %7.0f %6s | %4s %4s | %4s %4s %4s %4s | %10s | %7s %7s\n' "$rate" "${R_TPS[$rate]}" "$wr" "$dl50" "$dlmax" "$q1" "$q2" "$q3" "$q4" "$cu" "$pgc" "$rc"
    done
fi
exit 0
