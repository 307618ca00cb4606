# cdc-worker developer tasks. Tests need PostgreSQL server binaries (initdb, pg_ctl, postgres;
# Debian: apt-get install postgresql) and openssl, or CDC_TEST_DATABASE_URL pointing at a
# superuser on a server with wal_level=logical. See scripts/test-cluster.sh.

CARGO ?= cargo
CLUSTER := scripts/test-cluster.sh
# Read by scripts/test-versions.sh: `make test PG_VERSIONS="15 18"`.
export PG_VERSIONS

.PHONY: build test test-matrix lint nextjs next-package demo clean-test-cluster

build:
	$(CARGO) build --all-targets

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

# Runs every test target on each PostgreSQL major version in PG_VERSIONS (default 15, or the
# binaries of PG_BINDIR when that is set); scripts/install-pg.sh fetches versions that are
# missing. The test clusters (and any private cluster a crashed test left) are stopped
# afterwards whether the tests passed or not; make fails if any version failed.
test: lint next-package nextjs
	@bash scripts/test-versions.sh --all-targets

# The whole suite on every supported version, one after the other.
test-matrix:
	@$(MAKE) --no-print-directory test PG_VERSIONS="15 16 17 18"

# The storefront the end-to-end test starts with `next start` (tests/nextjs_e2e.rs). `npm ci`
# installs a fresh copy of packages/next (the `@cdc-worker/next` package) each time.
nextjs:
	cd nextjs && npm ci --no-audit --no-fund --loglevel=error && npm run build

# The package's own tests (node's test runner: the handlers against a private redis-server,
# the declarations with tsc, `npm pack` from a clean copy). Its devDependencies are only
# for that: `next` for its types and `next/cache`, without the optional native binaries.
next-package:
	cd packages/next && npm ci --omit=optional --no-audit --no-fund --loglevel=error && npm test

# A local Postgres with sample data and live traffic, the worker and the storefront; Ctrl-C stops.
demo:
	bash scripts/demo.sh

# Stops the test clusters of this checkout and deletes their data.
clean-test-cluster:
	bash $(CLUSTER) clean
