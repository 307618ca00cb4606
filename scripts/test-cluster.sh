#!/usr/bin/env bash
# A throwaway local PostgreSQL cluster for the tests and the demo.
#
#   scripts/test-cluster.sh start     start it (initdb on first use; reuse it if running); prints its URL
#   scripts/test-cluster.sh stop      stop it (data kept)
#   scripts/test-cluster.sh crash     stop it with `pg_ctl -m immediate` (like a power cut, no checkpoint)
#   scripts/test-cluster.sh restart   stop + start, on the same port
#   scripts/test-cluster.sh status    print running/stopped and the URL; exit 0 only if running
#   scripts/test-cluster.sh url       print the superuser URL (postgres database)
#   scripts/test-cluster.sh info      print KEY=VALUE lines (DATA_DIR, PORT, HOST, URL, SSL_CERT, LOG)
#   scripts/test-cluster.sh stop-all  stop this cluster and every private cluster of this checkout
#   scripts/test-cluster.sh clean     stop-all, then delete their directories
#   scripts/test-cluster.sh default-dir   print the directory used when CDC_TEST_PG_DIR is unset
#   scripts/test-cluster.sh bindir    print the server binaries' directory it uses
#   scripts/test-cluster.sh psql [DB [PSQL ARGS...]]   psql as the superuser on DB (default postgres)
#   scripts/test-cluster.sh standby-of PRIMARY_DIR   make and start, in CDC_TEST_PG_DIR, a physical
#                                     standby of the running cluster in PRIMARY_DIR (see below)
#   scripts/test-cluster.sh promote   promote this standby to a primary (waits until it is one)
#
# This script is the single definition of the test cluster: the Rust harness
# (tests/support/mod.rs) shells out to it, so settings live only here.
#
# Where: CDC_TEST_PG_DIR if set, else /tmp/cdc-worker-test-pg/<hash of this checkout's path>-pg<major>
# (one cluster per server major version, so runs on 15 and on 18 never share a data directory).
# That directory holds data/ (PGDATA), port, server.log and the socket directory; a sibling
# <dir>.lock serializes concurrent callers (several test processes) with flock(1).
# Private clusters of the Rust harness live under <default dir>-private/.
#
# Settings: wal_level=logical, 128 replication slots and WAL senders, 400 connections,
# fsync off, ssl=on with a self-signed certificate (CN=localhost, SAN localhost + 127.0.0.1),
# listen on 127.0.0.1 only, scram-sha-256 for every TCP connection (replication included),
# trust on the private Unix socket; superuser `postgres`, password $CDC_TEST_PG_PASSWORD
# (default cdc-test-password).
#
# Postgres refuses to run as root: as root the server runs as the `postgres` OS user, which must
# own the data directory (hence /tmp and not the checkout). Binaries: $PG_BINDIR, else those that
# last started the cluster in CDC_TEST_PG_DIR, else the highest /usr/lib/postgresql/*/bin, else
# `pg_config --bindir`, else $PATH. scripts/install-pg.sh MAJOR
# installs 14-18 and prints the value for PG_BINDIR. psql comes from PG_BINDIR when it has one,
# else from any installed version (the npm builds of install-pg.sh have no client programs).
#
# Standbys (standby-of): a physical replica streaming from the primary through a physical slot
# `cdc_test_standby`, with hot_standby_feedback; on 17+ also sync_replication_slots = on (the
# primary lists the physical slot in synchronized_standby_slots), so failover-enabled logical
# slots are synchronized to it. Made with `pg_basebackup -R` when PG_BINDIR has a pg_basebackup
# of the server's version, else by copying the primary's data directory while it is stopped.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
repo_hash=$(printf '%s' "$repo_root" | sha256sum | cut -c1-12)
base_root=/tmp/cdc-worker-test-pg
password=${CDC_TEST_PG_PASSWORD:-cdc-test-password}
host=127.0.0.1

say() { echo "test-cluster: $*" >&2; }
die() { say "error: $*"; exit 1; }
standby_slot=cdc_test_standby

find_bindir() {
    if [[ -n ${PG_BINDIR:-} ]]; then echo "$PG_BINDIR"; return; fi
    # An existing cluster keeps the binaries that started it (recorded at each start).
    if [[ -n ${CDC_TEST_PG_DIR:-} && -f $CDC_TEST_PG_DIR/bindir ]]; then cat "$CDC_TEST_PG_DIR/bindir"; return; fi
    local d best=""
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V); do
        [[ -x $d/initdb ]] && best=$d
    done
    if [[ -n $best ]]; then echo "$best"; return; fi
    if command -v pg_config >/dev/null && [[ -x "$(pg_config --bindir)/initdb" ]]; then
        pg_config --bindir; return
    fi
    if command -v initdb >/dev/null; then dirname "$(command -v initdb)"; return; fi
    die "no PostgreSQL server binaries (initdb) found: install postgresql or set PG_BINDIR"
}

# psql of any version speaks to newer servers for what this script does with it.
find_psql() {
    if [[ -x $bindir/psql ]]; then echo "$bindir/psql"; return; fi
    local d best=""
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V); do
        [[ -x $d/psql ]] && best=$d/psql
    done
    if [[ -n $best ]]; then echo "$best"; return; fi
    command -v psql || die "no psql found: install postgresql-client (any version)"
}

# Run a command as the cluster's OS user: `postgres` when we are root, else ourselves.
as_pg() {
    if [[ $(id -u) == 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

url_for() { echo "postgresql://postgres:$password@$host:$(cat "$portfile")/${1:-postgres}"; }

is_running() {
    [[ -f $data/PG_VERSION ]] || return 1
    as_pg "$bindir/pg_ctl" status -D "$data" >/dev/null 2>&1
}

port_in_use() {
    # Anything listening on 127.0.0.1:$1 (or on all addresses)?
    (exec 3<>"/dev/tcp/$host/$1") 2>/dev/null
}

pick_port() {
    local p
    for _ in $(seq 1 200); do
        p=$(( 20000 + RANDOM % 30000 ))
        port_in_use "$p" || { echo "$p"; return; }
    done
    die "no free port found"
}

init_cluster() {
    command -v openssl >/dev/null || die "openssl is needed to make the test cluster's certificate"
    if [[ $(id -u) == 0 ]] && ! id postgres >/dev/null 2>&1; then
        useradd --system --home-dir "$base_root" --shell /usr/sbin/nologin postgres
    fi
    say "initdb in $data ($("$bindir/postgres" --version))"
    rm -rf "$data"
    mkdir -p "$dir"
    [[ $(id -u) == 0 ]] && chown postgres: "$dir"
    local pwfile="$dir/pwfile"
    as_pg sh -c "umask 077 && printf '%s\n' \"\$1\" > \"\$2\"" sh "$password" "$pwfile"
    as_pg "$bindir/initdb" -D "$data" -U postgres --pwfile="$pwfile" --auth-local=trust \
        --auth-host=scram-sha-256 --encoding=UTF8 --locale=C --no-sync >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
    rm -f "$pwfile"

    # Self-signed certificate, a leaf (CA:FALSE) so that rustls/webpki accept it as its own root.
    local cnf="$dir/openssl.cnf"
    cat >"$cnf" <<'CNF'
[req]
distinguished_name = dn
prompt = no
x509_extensions = ext
[dn]
CN = localhost
[ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
CNF
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -config "$cnf" \
        -keyout "$data/server.key" -out "$data/server.crt" >/dev/null 2>&1 \
        || die "openssl could not make the certificate"
    chmod 600 "$data/server.key"
    [[ $(id -u) == 0 ]] && chown postgres: "$data/server.key" "$data/server.crt"

    cat >"$data/pg_hba.conf" <<'HBA'
# Generated by scripts/test-cluster.sh
local   all             all                     trust
local   replication     all                     trust
host    all             all     127.0.0.1/32    scram-sha-256
host    replication     all     127.0.0.1/32    scram-sha-256
host    all             all     ::1/128         scram-sha-256
host    replication     all     ::1/128         scram-sha-256
HBA
    cat >>"$data/postgresql.conf" <<'CONF'

# --- scripts/test-cluster.sh: its settings are in these files, rewritten on every start ---
include 'cdc-test.conf'
include_if_exists 'port.conf'
CONF
    [[ $(id -u) == 0 ]] && chown postgres: "$data/pg_hba.conf" "$data/postgresql.conf"
    return 0
}

# Drop what earlier test runs left behind: databases and roles named t_*, every replication slot.
# Only called right after this script started the shared server, when no test can be using them.
drop_leftovers() {
    local psql=("$(find_psql)" -X -q -At -h "$sock" -p "$(cat "$portfile")" -U postgres -d postgres)
    as_pg "${psql[@]}" -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots" >/dev/null || true
    local db n=0
    while read -r db; do
        [[ -n $db ]] || continue
        as_pg "${psql[@]}" -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null || true
        n=$((n + 1))
    done < <(as_pg "${psql[@]}" -c "SELECT datname FROM pg_database WHERE datname LIKE 't\\_%'")
    (( n == 0 )) || say "dropped $n leftover test database(s)"
    # Roles named after a test database (TestDb::create_role with "<db name>_..." names).
    while read -r db; do
        [[ -n $db ]] || continue
        as_pg "${psql[@]}" -c "DROP ROLE IF EXISTS \"$db\"" >/dev/null 2>&1 || true
    done < <(as_pg "${psql[@]}" -c "SELECT rolname FROM pg_roles WHERE rolname LIKE 't\\_%'")
}

# The cluster's settings, rewritten before every start so that a change here reaches
# clusters made by an older version of this script.
write_settings() {
    as_pg tee "$data/cdc-test.conf" >/dev/null <<CONF
# Generated by scripts/test-cluster.sh on every start: edit the script, not this file.
listen_addresses = '$host'
unix_socket_directories = '$sock'
max_connections = 400
wal_level = logical
max_replication_slots = 128
max_wal_senders = 128
# Throwaway data: no fsync and no full-page writes (only an OS crash could hurt). Commits stay
# synchronous, so what a client saw committed survives a server crash (crash tests rely on it).
fsync = off
full_page_writes = off
password_encryption = 'scram-sha-256'
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
log_line_prefix = '%m [%p] %q%u@%d '
# Primary/standby settings of standby-of, when this cluster is one of a pair.
include_if_exists 'replication-role.conf'
CONF
}

start_locked() {
    [[ -f $data/PG_VERSION ]] || init_cluster
    if is_running; then
        say "reusing the running cluster in $data"
        return
    fi
    write_settings
    local port tries
    [[ -f $portfile ]] && port=$(cat "$portfile") || port=$(pick_port)
    for tries in 1 2 3 4 5; do
        if port_in_use "$port"; then port=$(pick_port); continue; fi
        as_pg sh -c "echo \"port = $port\" > \"\$1\"" sh "$data/port.conf"
        echo "$port" >"$portfile"
        as_pg mkdir -p "$sock"
        # 9>&-: the server must not inherit the lock's descriptor, or it would hold the lock forever.
        if as_pg "$bindir/pg_ctl" start -D "$data" -l "$log" -w -t 60 >/dev/null 2>&1 9>&-; then
            echo "$bindir" >"$dir/bindir"
            say "started $server_version on port $port (data $data, log $log, binaries $bindir)"
            # Only the shared cluster, and only on `start`: a private cluster's (re)start must
            # keep the databases of the test that restarts it.
            [[ $cmd == start && $dir == "$default_dir" ]] && drop_leftovers
            return 0
        fi
        say "start on port $port failed (try $tries):"
        tail -n 5 "$log" >&2 || true
        port=$(pick_port)
    done
    die "could not start the cluster; see $log"
}

stop_dir() { # stop_dir DIR MODE
    local d=$1/data b=$bindir
    [[ -f $d/PG_VERSION ]] || return 0
    # The binaries that started it (stop-all also stops clusters of other versions).
    [[ -f $1/bindir ]] && b=$(cat "$1/bindir")
    if as_pg "$b/pg_ctl" status -D "$d" >/dev/null 2>&1; then
        as_pg "$b/pg_ctl" stop -D "$d" -m "$2" -w -t 60 >/dev/null
        say "stopped ($2) $d"
    fi
}

# make_standby PRIMARY_DIR: a physical standby of the running cluster in PRIMARY_DIR, in $dir.
make_standby() {
    local pdir=$1 pdata=$1/data psock=$1/socket pport
    [[ -f $1/port ]] || die "no cluster in $pdir"
    pport=$(cat "$1/port")
    as_pg "$bindir/pg_ctl" status -D "$pdata" >/dev/null 2>&1 || die "the primary in $pdir is not running"
    [[ ! -f $data/PG_VERSION ]] || die "$data already holds a cluster"
    local psql=("$(find_psql)" -X -q -At -h "$psock" -p "$pport" -U postgres -d postgres)
    as_pg "${psql[@]}" -c "SELECT pg_create_physical_replication_slot('$standby_slot', true)
        WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = '$standby_slot')" >/dev/null
    if (( major >= 17 )); then
        # Logical walsenders of failover slots wait until the standby has the WAL they send, so a
        # synchronized slot is never ahead of what the standby can replay after a promotion.
        as_pg sh -c "echo \"synchronized_standby_slots = '$standby_slot'\" > \"\$1\"" sh "$pdata/replication-role.conf"
        as_pg "$bindir/pg_ctl" reload -D "$pdata" >/dev/null
    fi
    mkdir -p "$dir"
    [[ $(id -u) == 0 ]] && chown postgres: "$dir"
    local basebackup=$bindir/pg_basebackup
    if [[ -x $basebackup ]] && [[ $("$basebackup" --version) == *") $major."* ]]; then
        as_pg "$basebackup" -h "$psock" -p "$pport" -U postgres -D "$data" -X stream -S "$standby_slot" \
            -R -c fast --no-sync >"$dir/basebackup.log" 2>&1 \
            || { cat "$dir/basebackup.log" >&2; die "pg_basebackup failed"; }
        say "pg_basebackup of $pdir into $data"
    else
        # No pg_basebackup of this version (the npm builds have none, and an older one refuses a
        # newer server): copy the data directory while the primary is cleanly stopped.
        as_pg "$bindir/pg_ctl" stop -D "$pdata" -m fast -w -t 60 >/dev/null
        as_pg cp -a "$pdata" "$data"
        as_pg "$bindir/pg_ctl" start -D "$pdata" -l "$pdir/server.log" -w -t 60 >/dev/null 2>&1 9>&- \
            || die "could not restart the primary in $pdir"
        # What pg_basebackup leaves out: the primary's pid file and its slots.
        as_pg sh -c 'rm -f "$1/postmaster.pid" "$1/postmaster.opts" && rm -rf "$1"/pg_replslot/*' sh "$data"
        say "copied $pdata into $data (primary stopped and restarted)"
    fi
    as_pg touch "$data/standby.signal"
    # dbname: the slot sync worker of 17+ needs a database to read the primary's slots from.
    local sync=""
    (( major >= 17 )) && sync="sync_replication_slots = on"
    as_pg tee "$data/replication-role.conf" >/dev/null <<CONF
# Generated by scripts/test-cluster.sh standby-of: a standby of $pdir
primary_conninfo = 'host=$psock port=$pport user=postgres dbname=postgres application_name=cdc_test_standby'
primary_slot_name = '$standby_slot'
hot_standby_feedback = on
$sync
CONF
    start_locked
}

with_lock() {
    mkdir -p "$(dirname "$dir")"
    chmod 755 "$base_root" 2>/dev/null || true
    exec 9>"$dir.lock"
    flock 9
    "$@"
    exec 9>&-
}

cmd=${1:-}
bindir=$(find_bindir)
[[ -x $bindir/postgres ]] || die "no postgres in $bindir (PG_BINDIR)"
# `postgres --version` prints e.g. "postgres (PostgreSQL) 18.4".
server_version=$("$bindir/postgres" --version | sed 's/^postgres (PostgreSQL) /PostgreSQL /')
major=$(sed -E 's/^PostgreSQL ([0-9]+).*/\1/' <<<"$server_version")
[[ $major =~ ^[0-9]+$ ]] || die "cannot tell the major version of '$server_version' ($bindir/postgres)"
default_dir="$base_root/$repo_hash-pg$major"
dir=${CDC_TEST_PG_DIR:-$default_dir}
data="$dir/data"
sock="$dir/socket"
log="$dir/server.log"
portfile="$dir/port"
case "$cmd" in
    start)
        with_lock start_locked
        url_for
        ;;
    default-dir) echo "$default_dir" ;;
    bindir) echo "$bindir" ;;
    psql)
        [[ -f $portfile ]] || die "no cluster in $dir yet: run '$0 start'"
        db=${2:-postgres}
        shift $(( $# < 2 ? $# : 2 ))
        exec "$(find_psql)" -X "$(url_for "$db")" "$@"
        ;;
    stop)    with_lock stop_dir "$dir" fast ;;
    crash)   with_lock stop_dir "$dir" immediate ;;
    restart)
        with_lock stop_dir "$dir" fast
        with_lock start_locked
        ;;
    status)
        if is_running; then echo "running: $(url_for)"; else echo "stopped"; exit 3; fi
        ;;
    url)
        [[ -f $portfile ]] || die "no cluster in $dir yet: run '$0 start'"
        url_for "${2:-postgres}"
        ;;
    info)
        [[ -f $portfile ]] || die "no cluster in $dir yet: run '$0 start'"
        echo "DATA_DIR=$data"
        echo "PORT=$(cat "$portfile")"
        echo "HOST=$host"
        echo "PASSWORD=$password"
        echo "URL=$(url_for)"
        echo "SSL_CERT=$data/server.crt"
        echo "LOG=$log"
        echo "SERVER_VERSION=$server_version"
        echo "BINDIR=$bindir"
        ;;
    standby-of)
        [[ -n ${2:-} ]] || die "usage: CDC_TEST_PG_DIR=STANDBY_DIR $0 standby-of PRIMARY_DIR"
        [[ -n ${CDC_TEST_PG_DIR:-} ]] || die "standby-of needs CDC_TEST_PG_DIR (the standby's directory)"
        primary_dir=$(cd "$2" && pwd -P)
        with_lock make_standby "$primary_dir"
        url_for
        ;;
    promote)
        [[ -f $data/standby.signal ]] || die "$data is not a standby"
        with_lock as_pg "$bindir/pg_ctl" promote -D "$data" -w -t 60 >/dev/null
        say "promoted $data"
        ;;
    stop-all|clean)
        # Every version's cluster of this checkout (a matrix run leaves one per version).
        for base in "$base_root/$repo_hash"-pg*; do
            [[ $base =~ -pg[0-9]+$ && -d $base ]] || continue
            for d in "$base" "$base"-private/*; do
                [[ -d $d ]] || continue
                CDC_TEST_PG_DIR=$d dir=$d with_lock stop_dir "$d" fast
            done
            if [[ $cmd == clean ]]; then
                rm -rf "$base" "$base-private" "$base.lock"
                say "removed $base and its private clusters"
            fi
        done
        ;;
    *)
        sed -n '2,17p' "$0" >&2
        exit 2
        ;;
esac
