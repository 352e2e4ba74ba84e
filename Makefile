# The two commands a newcomer needs, on a fresh Debian machine as root: `make demo` and `make test`.
# Each installs what it needs (apt and pip) first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
APT_PACKAGES := iproute2 nftables conntrack prometheus prometheus-alertmanager
STAMP := $(VENV)/.installed

.PHONY: all deps system-deps apiserver demo test lint bench clean

all: test

system-deps:
	@missing=""; \
	for tool in ip:iproute2 nft:nftables conntrack:conntrack promtool:prometheus prometheus-alertmanager:prometheus-alertmanager; do \
	  command -v $${tool%%:*} >/dev/null 2>&1 || missing="$$missing $${tool#*:}"; \
	done; \
	if ! $(PYTHON) -c 'import venv, ensurepip' >/dev/null 2>&1; then missing="$$missing python3-venv"; fi; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

deps: system-deps $(STAMP)

# etcd, kube-apiserver built once from Debian's source package into ~/.cache/khan (about 5 minutes, once), and
# Debian's kubectl where the machine has none.
apiserver:
	bash tests/kube/build-apiserver.sh

lint: deps
	$(BIN)/ruff check khan tests benchmarks dashboards
	$(BIN)/ruff format --check khan tests benchmarks dashboards
	$(BIN)/mypy

test: deps lint apiserver
	$(BIN)/python -m pytest -q

demo: deps
	$(BIN)/khan demo

bench: deps apiserver
	$(BIN)/python benchmarks/snapshot_vs_conntrack.py
	$(BIN)/python benchmarks/inventory_scale.py
	$(BIN)/python benchmarks/churn.py
	$(BIN)/python benchmarks/peer_churn_memory.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
