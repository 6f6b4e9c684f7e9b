# rewardstream: `make demo` to see it work, `make test` to prove it. `make help` lists all.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.DEFAULT_GOAL := help
.PHONY: help install kafka-jars prometheus-bin kcat-bin chromium-bin demo test test-unit test-integration test-reliability test-producers-task test-at-least-once test-privacy test-cluster fuzz soak lint format kafka-up kafka-down bench bench-quick bench-learning bench-fraud bench-ope bench-experiment bench-erasure bench-console clean

help: ## List the targets
	@grep -hE '^[a-z][a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  %-18s %s\n", $$1, $$2}'

install: $(STAMP) ## Create the virtualenv and install the project with pinned dependencies

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	@touch $@

kafka-jars: install ## Fetch the Apache Kafka broker jars from Maven Central (cached)
	$(BIN)/rewardstream kafka fetch

# Debian's prometheus package (2.42 on bookworm) for tests/integration/test_prometheus.py,
# only when prometheus or promtool is missing. On a machine that runs systemd the package
# also starts its own service on port 9090; the test never uses it (it runs its own
# Prometheus on a free loopback port).
prometheus-bin: ## Install prometheus and promtool with apt, if missing (for the real-Prometheus test)
	@if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then \
		echo "prometheus: $$(command -v prometheus), promtool: $$(command -v promtool)"; \
	else \
		sudo=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
		apt-cache show prometheus >/dev/null 2>&1 || $$sudo apt-get update; \
		$$sudo env DEBIAN_FRONTEND=noninteractive \
			apt-get install -y --no-install-recommends prometheus; \
	fi

# Debian's kcat package (librdkafka's command-line client, 1.7.1 on bookworm) for
# tests/integration/test_codecs.py, only when kcat is missing.
kcat-bin: ## Install kcat with apt, if missing (for the compression codec test)
	@if command -v kcat >/dev/null 2>&1; then \
		echo "kcat: $$(command -v kcat)"; \
	else \
		sudo=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
		apt-cache show kcat >/dev/null 2>&1 || $$sudo apt-get update; \
		$$sudo env DEBIAN_FRONTEND=noninteractive \
			apt-get install -y --no-install-recommends kcat; \
	fi

# Debian's chromium package for tests/integration/test_console.py, only when /usr/bin/chromium
# is missing: Playwright drives the system browser (its own browser download cannot work here).
chromium-bin: ## Install chromium with apt, if missing (for the console's browser tests)
	@if [ -x /usr/bin/chromium ]; then \
		echo "chromium: /usr/bin/chromium"; \
	else \
		sudo=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
		apt-cache show chromium >/dev/null 2>&1 || $$sudo apt-get update; \
		$$sudo env DEBIAN_FRONTEND=noninteractive \
			apt-get install -y --no-install-recommends chromium; \
	fi

demo: install kafka-jars ## Start Kafka and a worker, stream simulated traffic, print a summary, stop
	$(BIN)/rewardstream demo

test: install kafka-jars prometheus-bin kcat-bin chromium-bin ## The whole suite: unit, integration and fault tests on a real broker
	$(BIN)/pytest --ignore=tests/cluster --ignore=tests/privacy -m "not producers_per_task and not at_least_once and not snapshot_restart"

test-unit: install ## Unit tests only (no broker)
	$(BIN)/pytest -m "not kafka"

test-integration: install kafka-jars prometheus-bin kcat-bin chromium-bin ## Integration tests on the real broker (no fault tests)
	$(BIN)/pytest -m kafka --ignore=tests/reliability --ignore=tests/cluster --ignore=tests/privacy

test-reliability: install kafka-jars ## Fault tests only: SIGKILL, broker restart, rebalance, model restore
	$(BIN)/pytest tests/reliability

test-producers-task: install kafka-jars ## The SIGKILL and rebalance fault tests with one producer per task, the mode that is not the default (2.5 min; CI runs it)
	$(BIN)/pytest -m producers_per_task tests/reliability

test-at-least-once: install kafka-jars ## The SIGKILL fault test with REWARDSTREAM_PROCESSING_GUARANTEE=at_least_once, the guarantee that is not the default (1.5 min; CI runs it)
	$(BIN)/pytest -m at_least_once tests/reliability

test-snapshot-restart: install kafka-jars ## Restarts from local snapshots: SIGKILL between two snapshots, a clean stop, SIGKILL again, each restart exactly-once (1.5 min; CI runs it)
	$(BIN)/pytest -m snapshot_restart tests/reliability

test-privacy: install kafka-jars ## Erasure end to end: 50 users erased through a SIGKILL, then every owned topic's bytes scanned (3 min; CI runs it)
	$(BIN)/pytest tests/privacy

test-cluster: install kafka-jars ## A three-node KRaft cluster on loopback loses a node mid-stream (slow)
	$(BIN)/pytest tests/cluster

fuzz: install ## The hostile-input properties with 50 times more examples (a few minutes)
	FUZZ_FACTOR=50 $(BIN)/pytest -m "not kafka" tests/unit/test_hostile_input.py

SOAK_RATE ?= 380

soak: install kafka-jars ## Ten minutes of churning users at SOAK_RATE events/s (half the measured drain rate): memory flat, state bounded
	@mkdir -p var
	$(BIN)/rewardstream soak --minutes 10 --rate $(SOAK_RATE) --out var/soak.json

lint: install ## ruff (lint and format check) and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install ## Apply ruff's formatting and safe fixes
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: install kafka-jars bench-anchors-venv ## Throughput against the raw Kafka ceiling, latency beside plain-Kafka and quixstreams anchors, replay, state per user (about 35 min here, 20 of them the state of a million users); appends to docs/benchmarks.md
	$(BIN)/rewardstream bench --docs docs/benchmarks.md

bench-quick: install kafka-jars bench-anchors-venv ## The same benchmark, smaller: about three minutes
	$(BIN)/rewardstream bench --quick

# The bench's quixstreams anchor runs with the python of a virtualenv of its own, so the
# product's dependencies stay as they are: quixstreams brings confluent-kafka (librdkafka
# wheels), pydantic, rocksdict and more. The pins are what installs on Python 3.11 here.
ANCHORS_VENV  := .venv-anchors
ANCHORS_STAMP := $(ANCHORS_VENV)/.installed-stamp
ANCHORS_PINS  := quixstreams==3.28.1 confluent-kafka==2.12.2
.PHONY: bench-anchors-venv

bench-anchors-venv: $(ANCHORS_STAMP) ## quixstreams in a virtualenv of its own (.venv-anchors) for the bench's latency anchors

$(ANCHORS_STAMP):
	$(PYTHON) -m venv $(ANCHORS_VENV)
	@echo '*' > $(ANCHORS_VENV)/.gitignore  # git leaves the whole virtualenv out
	$(ANCHORS_VENV)/bin/pip install --quiet $(ANCHORS_PINS)
	@touch $@

bench-learning: install ## Learning quality: engine vs random vs oracle, 50,000 events; appends to docs/benchmarks.md
	$(BIN)/rewardstream bench-learning --docs docs/benchmarks.md

bench-fraud: install ## Fraud: precision/recall per attack scenario, false flags, budget lost; appends to docs/benchmarks.md
	$(BIN)/rewardstream bench-fraud --docs docs/benchmarks.md

bench-erasure: install kafka-jars ## Erasure receipts under the demo's load (3 runs, a broker each); appends to docs/benchmarks.md
	$(BIN)/rewardstream bench-erasure --docs docs/benchmarks.md

bench-ope: install ## Offline evaluation against the truth: DR bias and coverage, 5 candidates, 20 seeds; appends to docs/benchmarks.md
	$(BIN)/rewardstream bench-ope --docs docs/benchmarks.md

bench-experiment: install ## An experiment with a 10% holdout on the closed loop: lift interval vs the truth, SRM on 20 seeds, then a 3% loss among 600,000 users on 3 (about 20 min); appends to docs/benchmarks.md
	$(BIN)/rewardstream bench-experiment --loss-users 600000 --docs docs/benchmarks.md

bench-console: install ## The console's user lookup with a million users in its index: p95 and memory per user; appends to docs/benchmarks.md
	$(BIN)/rewardstream bench-console --docs docs/benchmarks.md

k8s-rules: install ## Write k8s/monitoring/prometheusrule.yaml (the Prometheus Operator's copy) from deploy/prometheus/alerts.yml
	$(BIN)/python -m harness.k8s_rules

kafka-up: install ## Start the local broker on 127.0.0.1:9092 for manual use
	$(BIN)/rewardstream kafka up

kafka-down: install ## Stop the local broker started by kafka-up
	$(BIN)/rewardstream kafka down

clean: ## Remove the virtualenv and caches (the Kafka jar cache is kept)
	rm -rf $(VENV) .venv-anchors .pytest_cache .mypy_cache .ruff_cache build *.egg-info
