#!/usr/bin/env bash
# Freshness under load (issue 2 "Speed", issue 6 benchmark 2). See bench/README.md.
#
#   bench/freshness.sh                 # rates 50 500 1000 2000 tx/s, 15 s each, 20k products
#   SECS=30 PRODUCTS=100000 bench/freshness.sh 1000
#
# pgbench issues single-row updates at a fixed rate (4/5 Inventory quantity += 1, 1/5 USD
# Price amount += 1) while the worker runs with bench/receiver.py as its revalidation
# endpoint. Measured server-side with track_commit_timestamp=on: triggers log each source
# change (its transaction's commit time, and the value the summary must reach) and each
# ProductSummary write (the worker's commit time, the values written); the receiver logs
# each tag's arrival. Per source change: commit -> first summary commit showing it, and
# commit -> first arrival of its tag (inventory:{id} / product:{id}) after that.
# The triggers add load to both the writers and the worker's apply transaction.
source "$(dirname "$0")/lib.sh"
N=${PRODUCTS:-20000}
SECS=${SECS:-15}
CLIENTS=${CLIENTS:-4}
RATES=("$@"); [ ${#RATES[@]} -gt 0 ] || RATES=(50 500 1000 2000)

echo "# machine: $(machine)"
start_cluster
load_data "$N"
worker_setup

freshness_triggers

single_row_scripts

start_receiver "$WORK/recv.log"
export CDC_LOG=${CDC_LOG:-info}
start_worker
sleep 2

printf '\n%6s %8s %8s | %-26s | %-26s | %s\n' rate achieved updates "commit->summary ms" "commit->endpoint ms" "measured (summary/endpoint) stale"
printf '%6s %8s %8s | %8s %8s %8s | %8s %8s %8s |\n' "" "tx/s" "" p50 p99 max p50 p99 max
for rate in "${RATES[@]}"; do
    psqlq -c "TRUNCATE bench.src_log, bench.sum_log, bench.recv"
    : >"$WORK/recv.log"
    tps=$("$PGBIN/pgbench" -n -M prepared -c "$CLIENTS" -j 2 -R "$rate" -T "$SECS" -D products="$N" \
        -f "$WORK/inventory.sql@4" -f "$WORK/price.sql@1" bench 2>&1 | awk '/^tps/{print $3; exit}')
    sleep 3   # let the last changes reach the summary and the endpoint
    psqlq -c "\\copy bench.recv FROM '$WORK/recv.log'"
    psqlv -F ' ' <<SQL | while read -r n s50 s99 smax ns e50 e99 emax ne stale; do
CREATE INDEX ON bench.sum_log (product_id);
CREATE INDEX ON bench.recv (tag, t);
WITH m AS (
  SELECT l.kind, l.product_id, l.value, pg_xact_commit_timestamp(l.xmin) AS t,
    (SELECT min(pg_xact_commit_timestamp(s.xmin)) FROM bench.sum_log s
      WHERE s.product_id = l.product_id AND pg_xact_commit_timestamp(s.xmin) >= pg_xact_commit_timestamp(l.xmin)
        AND CASE l.kind WHEN 'inventory' THEN s.inv >= l.value ELSE s.price >= l.value END) AS ts,
    -- the first summary write after the source commit still shows an older value: the
    -- worker read the source before this transaction was visible to it
    (SELECT CASE l.kind WHEN 'inventory' THEN s.inv < l.value ELSE s.price < l.value END FROM bench.sum_log s
      WHERE s.product_id = l.product_id AND pg_xact_commit_timestamp(s.xmin) >= pg_xact_commit_timestamp(l.xmin)
      ORDER BY pg_xact_commit_timestamp(s.xmin) LIMIT 1) AS stale
  FROM bench.src_log l
), r AS (
  SELECT m.*, (SELECT to_timestamp(min(r.t)) FROM bench.recv r
                WHERE r.tag = m.kind || ':' || m.product_id AND r.t >= extract(epoch FROM m.ts)) AS tr
  FROM m
), ms AS (
  SELECT extract(epoch FROM ts - t) * 1000 AS s, extract(epoch FROM tr - t) * 1000 AS e, stale FROM r
)
SELECT count(*),
  round(percentile_cont(0.5) WITHIN GROUP (ORDER BY s)::numeric, 1), round(percentile_cont(0.99) WITHIN GROUP (ORDER BY s)::numeric, 1), round(max(s)::numeric, 1), count(s),
  round(percentile_cont(0.5) WITHIN GROUP (ORDER BY e)::numeric, 1), round(percentile_cont(0.99) WITHIN GROUP (ORDER BY e)::numeric, 1), round(max(e)::numeric, 1), count(e), count(*) FILTER (WHERE stale)
FROM ms;
DROP INDEX bench.sum_log_product_id_idx; DROP INDEX bench.recv_tag_t_idx;
SQL
        printf '%6s %8.0f %8s | %8s %8s %8s | %8s %8s %8s | %s/%s %s\n' "$rate" "$tps" "$n" "$s50" "$s99" "$smax" "$e50" "$e99" "$emax" "$ns" "$ne" "$stale"
    done
done
sleep 2   # the worker is idle now: every change must have reached the summary
echo
echo "after the run: summary rows differing from the summary query: $(summary_diff) of $N"
echo "pgbench: -c $CLIENTS -j 2 -M prepared -T $SECS, 4/5 Inventory and 1/5 Price single-row updates over $N products"
echo "stale = first summary write after the source commit still showed the old value (the apply read"
echo "        the source before that commit was visible to it), or, when that write's apply transaction took its"
echo "        snapshot before the commit and committed after it, the next apply catches up (then it is still measured)"
echo "worker errors/warnings: $(grep -cE 'WARN|ERROR' "$WORK/worker.log" || true)"
exit 0
