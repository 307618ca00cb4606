#!/usr/bin/env bash
# Apply cost per 100k products, two worker binaries on the same cluster and data, one after
# the other (issue 13, item 2: row-wise vs set-based apply). See bench/README.md.
#
#   bench/apply.sh BIN_A BIN_B [...]     # e.g. a build of an older commit and target/release/cdc-worker
#   PRODUCTS=100000 ROUNDS=3 bench/apply.sh ...
#
# Per binary and round, two transactions each touching every product once:
#   changed:   UPDATE "Inventory" SET quantity = quantity + 1 WHERE "locationId" = 'loc1'
#              (every product's inventoryAvailable changes: N rows written)
#   unchanged: UPDATE "Inventory" SET reserved = reserved WHERE "locationId" = 'loc1'
#              (every product recomputed, nothing written)
# Prints, per transaction: commit -> checkpoint (wall), CPU seconds of the apply backend
# (the SQL) and of the worker process, and the worker's peak RSS.
source "$(dirname "$0")/lib.sh"
N=${PRODUCTS:-100000}
ROUNDS=${ROUNDS:-2}
[ $# -ge 1 ] || { echo "usage: bench/apply.sh BIN [BIN...]" >&2; exit 2; }
export CDC_REVALIDATE_URLS="" CDC_LOG=${CDC_LOG:-warn}
TCK=$(getconf CLK_TCK)
proc_cpu() { awk -v t="$TCK" '{printf "%.2f", ($14+$15)/t}' "/proc/$1/stat"; }
now() { date +%s.%N; }

echo "# machine: $(machine)"
start_cluster
load_data "$N"
# An empty config (the defaults) for every binary: one built from an older commit may not
# know every key of this checkout's config/cdc-worker.toml.
: >"$WORK/defaults.toml"
(cd "$ROOT" && CDC_LOG=warn "$1" --config "$WORK/defaults.toml" setup) >"$WORK/setup.log" 2>&1 \
    || { cat "$WORK/setup.log"; exit 1; }
echo "| binary | round | transaction | commit -> checkpoint | apply backend CPU | worker CPU | worker peak RSS |"
echo "|---|---|---|---|---|---|---|"
for bin in "$@"; do
    (cd "$ROOT" && exec "$bin" --config "$WORK/defaults.toml" run) >"$WORK/worker.log" 2>&1 & WORKER_PID=$!
    mark=$(psqlv -c "SELECT pg_logical_emit_message(true, 'bench', 'start')")
    until [ "$(psqlv -c "SELECT coalesce((SELECT lsn >= '$mark' FROM cdc_worker.checkpoint), false)")" = t ]; do sleep 0.1; done
    apply_pid=$(psqlv -c "SELECT pid FROM pg_stat_activity WHERE application_name = 'cdc-worker/apply'")
    for round in $(seq "$ROUNDS"); do
        for kind in changed unchanged; do
            case $kind in
                changed) sql='UPDATE "Inventory" SET "quantity" = "quantity" + 1 WHERE "locationId" = '"'loc1'" ;;
                unchanged) sql='UPDATE "Inventory" SET "reserved" = "reserved" WHERE "locationId" = '"'loc1'" ;;
            esac
            a0=$(proc_cpu "$apply_pid"); w0=$(proc_cpu "$WORKER_PID")
            # One simple query: the update and its xid in one transaction.
            xid=$(psqlv -c "$sql; SELECT txid_current()" | tail -1)
            lsn=$(psqlv -c "SELECT pg_current_wal_insert_lsn()")
            t0=$(psqlv -c "SELECT extract(epoch FROM pg_xact_commit_timestamp('$xid'::text::xid))")
            until [ "$(psqlv -c "SELECT lsn >= '$lsn' FROM cdc_worker.checkpoint")" = t ]; do sleep 0.05; done
            took=$(psqlv -c "SELECT round((extract(epoch FROM pg_xact_commit_timestamp(xmin)) - $t0)::numeric, 2) FROM cdc_worker.checkpoint")
            a1=$(proc_cpu "$apply_pid"); w1=$(proc_cpu "$WORKER_PID")
            rss=$(awk '/VmHWM/{printf "%.1f MiB", $2/1024}' "/proc/$WORKER_PID/status")
            echo "| $(basename "$bin") | $round | $kind | ${took} s | $(echo "$a1 - $a0" | bc) s | $(echo "$w1 - $w0" | bc) s | $rss |"
        done
    done
    kill -TERM "$WORKER_PID"; wait "$WORKER_PID" || true; WORKER_PID=
done
echo "# summary exact afterwards (0 = yes): $(summary_diff)"
