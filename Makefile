# cdc-worker developer tasks. Tests need PostgreSQL server binaries (initdb, pg_ctl, postgres;
# Debian: apt-get install postgresql) and openssl, or CDC_TEST_DATABASE_URL pointing at a
# superuser on a server with wal_level=logical. See scripts/test-cluster.sh.

CARGO ?= cargo
CLUSTER := scripts/test-cluster.sh

.PHONY: build test lint demo demo-stop clean-test-cluster

build:
	$(CARGO) build --all-targets

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

# Runs every test target; the shared test cluster (and any private cluster a crashed test
# left) is stopped afterwards whether the tests passed or not, and make exits with cargo's status.
test: lint
	@status=0; $(CARGO) test --all-targets || status=$$?; \
	bash $(CLUSTER) stop-all || true; \
	exit $$status

demo:
	bash scripts/demo.sh

demo-stop:
	bash scripts/demo.sh stop

# Stops the test clusters of this checkout and deletes their data.
clean-test-cluster:
	bash $(CLUSTER) clean
