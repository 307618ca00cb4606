#!/usr/bin/env bash
# Failover: promotion-to-convergence at 100k products (issue 10). See bench/README.md.
#
#   bench/failover.sh                                # 15 (recreate + recompute), 18 (failover slot)
#   PG_VERSIONS="15 16 17 18" PRODUCTS=20000 bench/failover.sh
#   FAILOVER_BENCH_PATH=recompute PG_VERSIONS=18 bench/failover.sh   # 18 without a failover slot
#
# Runs the scenario of tests/failover.rs (a primary, a physical standby made by
# scripts/test-cluster.sh, the worker behind a TCP proxy; changes the worker never saw, the
# primary stops, the standby is promoted, the proxy repointed, a write on the new primary)
# with PRODUCTS products, release build. Prints one RESULT line per version: the time from
# `pg_ctl promote` to that write being in the summary (the summary then equals the source
# and reconcile reports 0, both checked), and the worker's recompute time when it took that
# path. The clusters are the test clusters (fsync off), not bench/lib.sh's.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
echo "# machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), load $(cut -d' ' -f1-3 /proc/loadavg)"
status=0
for v in ${PG_VERSIONS:-15 18}; do
    bindir=$(bash scripts/install-pg.sh "$v")
    PG_BINDIR=$bindir FAILOVER_BENCH_PRODUCTS=${PRODUCTS:-100000} \
        cargo test --release --test failover -- --ignored --nocapture --exact bench_promotion_to_convergence \
        >"/tmp/cdc-bench-failover-$v.log" 2>&1 || status=1
    grep -E '^RESULT|panicked' "/tmp/cdc-bench-failover-$v.log" || tail -20 "/tmp/cdc-bench-failover-$v.log"
done
bash scripts/test-cluster.sh stop-all >/dev/null 2>&1 || true
exit $status
