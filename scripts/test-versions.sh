#!/usr/bin/env bash
# Runs `cargo test ARGS` once per PostgreSQL major version in $PG_VERSIONS (default 15), each
# against its own test cluster, and prints how each went and how long it took:
#
#   PG_VERSIONS="15 16 17 18" scripts/test-versions.sh --all-targets
#   PG_VERSIONS=18 scripts/test-versions.sh --test pipeline --test faults
#
# With PG_BINDIR already set (and PG_VERSIONS unset) it runs once on those binaries.
# scripts/install-pg.sh provides each version's binaries. Every version runs even if an
# earlier one failed; the exit status is 1 if any failed. The clusters are stopped at the end.
#
# Skips: a test that cannot run here fails unless CDC_TEST_ALLOW_SKIP names its skip
# (tests/support/skip.rs). Below 17 this script allows `failover_slot` (failover slots
# need 17+), the only skip a version implies; anything else must be allowed by the
# caller. Every skip that happened is listed in the summary (CDC_TEST_SKIP_LOG).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ -n ${PG_BINDIR:-} && -z ${PG_VERSIONS:-} ]]; then
    runs=("bindir:$PG_BINDIR")
else
    read -r -a runs <<<"${PG_VERSIONS:-15}"
fi

summary=()
skipped=()
status=0
skiplog=$(mktemp /tmp/cdc-test-skips.XXXXXX)
trap 'rm -f "$skiplog"' EXIT
for run in "${runs[@]}"; do
    if [[ $run == bindir:* ]]; then
        bindir=${run#bindir:}
    else
        bindir=$(bash scripts/install-pg.sh "$run") || { summary+=("$run: could not install"); status=1; continue; }
    fi
    version=$("$bindir/postgres" --version | sed 's/^postgres (PostgreSQL) //')
    echo "=== PostgreSQL $version ($bindir): cargo test $*" >&2
    started=$(date +%s)
    # Start (and log) this version's shared cluster up front, so its version is in the output.
    PG_BINDIR=$bindir bash scripts/test-cluster.sh start >/dev/null || { summary+=("$version: cluster did not start"); status=1; continue; }
    allow=${CDC_TEST_ALLOW_SKIP:-}
    (( ${version%%.*} < 17 )) && allow+=${allow:+,}failover_slot
    : >"$skiplog"
    if PG_BINDIR=$bindir CDC_TEST_ALLOW_SKIP=$allow CDC_TEST_SKIP_LOG=$skiplog "${CARGO:-cargo}" test "$@"; then
        result=passed
    else
        result=FAILED
        status=1
    fi
    skips=$(grep -c '^SKIPPED TEST:' "$skiplog")
    summary+=("PostgreSQL $version: $result in $(( $(date +%s) - started )) s, $skips skipped")
    while IFS= read -r line; do
        skipped+=("PostgreSQL ${version%% *}: $line")
    done < <(grep '^SKIPPED TEST:' "$skiplog")
done
bash scripts/test-cluster.sh stop-all || true
echo "=== test summary (cargo test $*):" >&2
printf '    %s\n' "${summary[@]}" >&2
if ((${#skipped[@]})); then
    echo "=== skipped (allowed by CDC_TEST_ALLOW_SKIP):" >&2
    printf '    %s\n' "${skipped[@]}" >&2
fi
exit $status
