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
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ -n ${PG_BINDIR:-} && -z ${PG_VERSIONS:-} ]]; then
    runs=("bindir:$PG_BINDIR")
else
    read -r -a runs <<<"${PG_VERSIONS:-15}"
fi

summary=()
status=0
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
    if PG_BINDIR=$bindir "${CARGO:-cargo}" test "$@"; then
        result=passed
    else
        result=FAILED
        status=1
    fi
    summary+=("PostgreSQL $version: $result in $(( $(date +%s) - started )) s")
done
bash scripts/test-cluster.sh stop-all || true
echo "=== test summary (cargo test $*):" >&2
printf '    %s\n' "${summary[@]}" >&2
exit $status
