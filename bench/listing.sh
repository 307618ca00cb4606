#!/usr/bin/env bash
# Store listing on ProductSummary vs the same page joined from the four source tables
# (issue 3's benchmark). See bench/README.md.
#
#   bench/listing.sh                  # 100k products, 100 stores, 20 s per query and client count
#   SECS=60 CLIENTS="1 4 8" bench/listing.sh
#
# Product gets an index on "storeId" first (a real shop listing by store has one; without
# it the join side would be a sequential scan and the comparison meaningless).
source "$(dirname "$0")/lib.sh"
N=${PRODUCTS:-100000}
STORES=${STORES:-100}
SECS=${SECS:-20}
CLIENTS=(${CLIENTS:-1 4})

echo "# machine: $(machine)"
start_cluster
load_data "$N" "$STORES"
worker_setup
psqlq -c 'CREATE INDEX "Product_storeId_idx" ON "Product"("storeId")' -c 'VACUUM ANALYZE'

cat >"$WORK/summary.sql" <<EOF2
\set s random(1, $STORES)
SELECT "productId", "title", "price", "inventoryAvailable", "primaryImageUrl"
FROM "ProductSummary"
WHERE "storeId" = 's' || :s AND "active"
ORDER BY "title" LIMIT 100;
EOF2
cat >"$WORK/join.sql" <<EOF2
\set s random(1, $STORES)
SELECT p."id", p."title", pr."amount",
       COALESCE((SELECT sum(greatest(i."quantity" - i."reserved", 0)) FROM "Inventory" i
                  WHERE i."productId" = p."id"), 0)::int4,
       (SELECT im."url" FROM "ProductImage" im WHERE im."productId" = p."id"
         ORDER BY im."position", im."id" LIMIT 1)
FROM "Product" p
JOIN "Price" pr ON pr."productId" = p."id" AND pr."currency" = 'USD'
WHERE p."storeId" = 's' || :s AND p."active"
ORDER BY p."title" LIMIT 100;
EOF2

# Same page both ways?
a=$(sed -e 1d -e 's/:s/7/' "$WORK/summary.sql" | psqlv | md5sum)
b=$(sed -e 1d -e 's/:s/7/' "$WORK/join.sql" | psqlv | md5sum)
[ "$a" = "$b" ] && echo "# both queries return the same page (store s7)" || echo "# WARNING: the pages differ"

printf '\n%-8s %7s %12s %10s\n' query clients "latency ms" tps
declare -A LAT
for c in "${CLIENTS[@]}"; do
    for q in summary join; do
        out=$("$PGBIN/pgbench" -n -M prepared -c "$c" -j "$(( c < 2 ? c : 2 ))" -T "$SECS" -f "$WORK/$q.sql" bench 2>&1)
        lat=$(awk '/^latency average/{print $4}' <<<"$out")
        tps=$(awk '/^tps/{print $3; exit}' <<<"$out")
        LAT[$q$c]=$lat
        printf '%-8s %7s %12s %10.1f\n' "$q" "$c" "$lat" "$tps"
    done
    printf '  %s client(s): ProductSummary latency is %.1f%% lower than the join (ratio summary/join = %.3f)\n' \
        "$c" "$(echo "(1 - ${LAT[summary$c]} / ${LAT[join$c]}) * 100" | bc -l)" "$(echo "${LAT[summary$c]} / ${LAT[join$c]}" | bc -l)"
done
echo
echo "plans (store s7):"
for q in summary join; do
    echo "-- $q"; { echo 'EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY ON)'; sed -e 1d -e 's/:s/7/' "$WORK/$q.sql"; } | psqlv | grep -E 'Scan|Sort|Join|Loop|Execution|SubPlan|Limit' | head -14
done
exit 0
