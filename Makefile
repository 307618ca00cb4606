# cdc-worker developer tasks. Tests need PostgreSQL server binaries (initdb, pg_ctl, postgres;
# Debian: apt-get install postgresql) and openssl, or CDC_TEST_DATABASE_URL pointing at a
# superuser on a server with wal_level=logical. See scripts/test-cluster.sh.

CARGO ?= cargo
CLUSTER := scripts/test-cluster.sh

.PHONY: build test lint nextjs demo clean-test-cluster

build:
	$(CARGO) build --all-targets

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

# Runs every test target; the shared test cluster (and any private cluster a crashed test
# left) is stopped afterwards whether the tests passed or not, and make exits with cargo's status.
test: lint nextjs
	@status=0; $(CARGO) test --all-targets || status=$$?; \
	bash $(CLUSTER) stop-all || true; \
	exit $$status

# The storefront the end-to-end test starts with `next start` (tests/nextjs_e2e.rs).
nextjs:
	cd nextjs && npm ci --no-audit --no-fund --loglevel=error && npm run build

# A local Postgres with sample data and live traffic, the worker and the storefront; Ctrl-C stops.
demo:
	bash scripts/demo.sh

# Stops the test clusters of this checkout and deletes their data.
clean-test-cluster:
	bash $(CLUSTER) clean
