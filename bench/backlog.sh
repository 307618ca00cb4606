#!/usr/bin/env bash
# Backlog drain (issue 6, benchmarks 1 and 3). See bench/README.md.
#
#   bench/backlog.sh            # 100k products: 5 x 200k Inventory updates + 100k USD prices = 1.1M changes
#   PRODUCTS=20000 bench/backlog.sh
#
# Prints: write time, worker time to its checkpoint / confirmed_flush_lsn reaching the end of
# the written WAL, pg_recvlogical time over the same WAL range from a second slot created at
# the same point, the ratio, the worker's peak RSS and CPU seconds per 100k changes, the CPU
# of the Postgres processes in each phase, and whether the summary is exact afterwards.
source "$(dirname "$0")/lib.sh"
N=${PRODUCTS:-100000}
TXNS=${TXNS:-5}
export CDC_REVALIDATE_URLS="" CDC_LOG=${CDC_LOG:-info}
lsn_ge() { psqlv -c "SELECT '$1'::pg_lsn >= '$2'::pg_lsn"; }

echo "# machine: $(machine)"
start_cluster
t0=$(now); load_data "$N"; worker_setup
echo "# loaded $N products and ran setup in $(echo "$(now) - $t0" | bc) s"

# Bring the worker's checkpoint to a marker, stop it, and create the second slot there,
# so both slots start at the same point of the WAL.
mark=$(psqlv -c "SELECT pg_logical_emit_message(true, 'bench', 'start')")
(cd "$ROOT" && exec "$BIN" ${WORKER_ARGS:-} run) >"$WORK/worker0.log" 2>&1 & WORKER_PID=$!
until [ "$(psqlv -c "SELECT coalesce((SELECT lsn >= '$mark' FROM cdc_worker.checkpoint), false)")" = t ]; do sleep 0.2; done
kill -TERM $WORKER_PID; wait $WORKER_PID || true; WORKER_PID=
start_lsn=$(psqlv -c "SELECT lsn FROM pg_create_logical_replication_slot('bench_recv', 'pgoutput')")
echo "# worker checkpoint $(psqlv -c 'SELECT lsn FROM cdc_worker.checkpoint'), bench_recv created at $start_lsn"

# The backlog: TXNS transactions each updating every Inventory row, one updating every USD price.
t0=$(now)
end_lsn=$(psqlv <<SQL | tail -1
$(for i in $(seq "$TXNS"); do echo 'UPDATE "Inventory" SET "quantity" = "quantity" + 1;'; done)
UPDATE "Price" SET "amount" = "amount" + 1 WHERE "currency" = 'USD';
SELECT pg_current_wal_insert_lsn();
SQL
)
write_s=$(echo "$(now) - $t0" | bc)
changes=$((TXNS * 2 * N + N))
wal_mb=$(psqlv -c "SELECT round(('$end_lsn'::pg_lsn - '$start_lsn'::pg_lsn) / 1048576.0)")
echo "# wrote $changes row changes ($wal_mb MiB of WAL) in $write_s s; end LSN $end_lsn"
psqlq -c CHECKPOINT

# (a) the worker, from process start until its checkpoint (applied) and the slot's
# confirmed_flush_lsn (acknowledged) reach the end LSN.
pg0=$(pg_cpu); t0=$(now)
(cd "$ROOT" && exec "$BIN" ${WORKER_ARGS:-} run) >"$WORK/worker.log" 2>&1 & WORKER_PID=$!
# PERF=1: sample the whole machine (call graphs) during the drain, report per process.
if [ "${PERF:-0}" = 1 ]; then perf record -a -g -F 499 -o "$WORK/perf.data" >/dev/null 2>&1 & PERF_PID=$!; fi
applied_s= ; acked_s= ; rss=0
while :; do
    rss=$(awk '/VmHWM/{print $2}' "/proc/$WORKER_PID/status")
    if [ -z "$applied_s" ] && [ "$(psqlv -c "SELECT coalesce((SELECT lsn >= '$end_lsn' FROM cdc_worker.checkpoint), false)")" = t ]; then
        # Exact: the commit time of the apply transaction that stored the checkpoint.
        applied_s=$(psqlv -c "SELECT extract(epoch FROM pg_xact_commit_timestamp(xmin)) - $t0 FROM cdc_worker.checkpoint")
    fi
    if [ -n "$applied_s" ] && [ "$(psqlv -c "SELECT confirmed_flush_lsn >= '$end_lsn' FROM pg_replication_slots WHERE slot_name = 'cdc_worker'")" = t ]; then
        acked_s=$(echo "$(now) - $t0" | bc); break
    fi
    if (( $(echo "$(now) - $t0 > ${TIMEOUT:-600}" | bc) )); then echo "TIMEOUT"; break; fi
    sleep 0.1
done
wcpu=$(proc_cpu $WORKER_PID)
rss=$(awk '/VmHWM/{print $2}' "/proc/$WORKER_PID/status")
# Per-backend CPU of the worker's connections (walsender = decoding, apply = the SQL).
backends=$(psqlv -F ' ' -c "SELECT pid, coalesce(nullif(application_name, ''), backend_type) FROM pg_stat_activity WHERE application_name LIKE 'cdc-worker%' OR backend_type = 'walsender'" \
    | while read -r pid name; do printf '%s=%.1fs ' "$name" "$(proc_cpu "$pid")"; done)
pg_worker=$(echo "$(pg_cpu) - $pg0" | bc)
if [ -n "${PERF_PID:-}" ]; then
    kill -INT "$PERF_PID"; wait "$PERF_PID" || true
    psqlv -F ' ' -c "SELECT pid, coalesce(nullif(application_name, ''), backend_type) FROM pg_stat_activity" >"$WORK/pids"
fi
kill -TERM $WORKER_PID; wait $WORKER_PID || true; WORKER_PID=
batches=$(grep -c 'applied batch' "$WORK/worker.log" || true)

# (b) pg_recvlogical over the same range from bench_recv.
pg0=$(pg_cpu); t0=$(now)
/usr/bin/time -f '%U %S' -o "$WORK/recv.time" "$PGBIN/pg_recvlogical" -d bench --slot bench_recv --start \
    -o proto_version=1 -o publication_names=cdc_worker --endpos "$end_lsn" -f /dev/null
recv_s=$(echo "$(now) - $t0" | bc)
pg_recv=$(echo "$(pg_cpu) - $pg0" | bc)
recv_cpu=$(awk '{print $1+$2}' "$WORK/recv.time")

diff=$(summary_diff)
echo
echo "products=$N changes=$changes wal_mib=$wal_mb"
printf 'worker: applied %.2f s, slot confirmed %.2f s, peak RSS %.1f MiB, CPU %.2f s (%.3f s / 100k changes), postgres CPU %.1f s [%s]\n' \
    "$applied_s" "$acked_s" "$(echo "$rss/1024" | bc -l)" "$wcpu" "$(echo "$wcpu * 100000 / $changes" | bc -l)" "$pg_worker" "$backends"
printf 'pg_recvlogical: %.2f s, its CPU %.2f s, postgres CPU %.1f s\n' "$recv_s" "$recv_cpu" "$pg_recv"
printf 'ratio worker(applied)/pg_recvlogical = %.2f ; worker(confirmed)/pg_recvlogical = %.2f\n' \
    "$(echo "$applied_s / $recv_s" | bc -l)" "$(echo "$acked_s / $recv_s" | bc -l)"
echo "summary rows differing from the summary query: $diff"
echo "(worker log: $batches 'applied batch' debug lines; set CDC_LOG=info,cdc_worker=debug to see them)"
if [ -n "${PERF_PID:-}" ]; then
    set +e +o pipefail
    cp "$WORK/perf.data" "${PERF_OUT:-/tmp/backlog.perf.data}" && cp "$WORK/pids" "${PERF_OUT:-/tmp/backlog.perf.data}.pids"
    echo; echo "perf: share of samples by process (postgres backends named from pg_stat_activity), then top symbols"
    perf report -i "$WORK/perf.data" --no-children --sort pid --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -8 \
        | while read -r pct pidcomm; do pid=${pidcomm%%:*}; printf '  %-8s %-28s %s\n' "$pct" "$pidcomm" "$(awk -v p="$pid" '$1==p{print $2}' "$WORK/pids")"; done
    perf report -i "$WORK/perf.data" --no-children --sort pid,dso,symbol --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -${PERF_TOP:-40}
    echo "perf data: ${PERF_OUT:-/tmp/backlog.perf.data} (perf report -i ... --sort pid,symbol)"
fi
[ "${SHOW_LOG:-0}" = 1 ] && tail -20 "$WORK/worker.log"
exit 0
