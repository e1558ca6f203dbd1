# `make run` and `make test` do all set-up on a fresh Debian 12 box (as root, or with sudo).
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
ARGS   ?=

.PHONY: run test lint bench fuzz pynetdicom-tests setup system-deps clean

run: setup
	$(BIN)/dicom-router run $(ARGS)

# Two runs: the tests in parallel (they mostly wait on daemons and peers, so more workers
# than cores), a test file's tests on one worker (its module fixtures start once); then the
# `alone` tests (wall-clock latencies, time budgets) one at a time, with no neighbour.
# Exit 5 = no test selected (ARGS named none of them); any other failure fails `make test`.
JOBS   ?= 4
PYTEST := $(BIN)/python -m pytest -q --durations=15
test: system-deps setup
	status=0; \
	$(PYTEST) -n $(JOBS) --dist loadfile -m "not alone" $(ARGS) || [ $$? = 5 ] || status=1; \
	$(PYTEST) -m alone $(ARGS) || [ $$? = 5 ] || status=1; \
	exit $$status

lint: setup
	$(BIN)/ruff check router tests bench
	$(BIN)/mypy router
	$(BIN)/lint-imports  # the layers of pyproject.toml's [tool.importlinter]

bench: system-deps setup
	$(BIN)/python bench/store_throughput.py

# pynetdicom's own tests of the layers router/net/netlayer changes, with the changes applied.
UPSTREAM_TESTS ?= test_dul test_transport test_dimse_provider test_dimse_c test_fsm test_assoc test_service_storage
pynetdicom-tests: setup
	cd /tmp && for t in $(UPSTREAM_TESTS); do \
		PYTHONPATH=$(CURDIR) $(CURDIR)/$(BIN)/python -m pytest -q -c /dev/null -p tests.upstream_plugin \
			--pyargs pynetdicom.tests.$$t -p no:cacheprovider || exit 1; done

# A long fuzz campaign against a fresh daemon (docs/security.md); exits 1 on a violation.
SEED  ?= 1
COUNT ?= 10000
fuzz: system-deps setup
	$(BIN)/python -m tests.fuzz --seed $(SEED) --count $(COUNT) $(ARGS)

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# The real peers the tests talk to: DCMTK, Orthanc and its DICOMweb plugin, GDCM,
# Prometheus and promtool, HAProxy (tests/haproxy.py), PostgreSQL (tests/postgres.py),
# Chromium and its driver (tests/test_status_page.py); systemd-analyze checks the unit.
DEBS := dcmtk orthanc orthanc-dicomweb libgdcm-tools prometheus systemd python3-venv haproxy
DEBS += postgresql chromium chromium-driver
system-deps:
	@if ! command -v storescu >/dev/null || ! test -x /usr/sbin/Orthanc \
		|| ! test -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so \
		|| ! command -v gdcmconv >/dev/null || ! command -v promtool >/dev/null \
		|| ! command -v systemd-analyze >/dev/null || ! command -v haproxy >/dev/null \
		|| ! $(PYTHON) -c 'import ensurepip' 2>/dev/null || ! command -v chromedriver >/dev/null \
		|| ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(DEBS) >/dev/null; \
	fi

clean:
	rm -rf $(VENV) dicom-router-data .pytest_cache .mypy_cache .ruff_cache
