.PHONY: setup test test-unit lint schemas bench bench-pipeline bench-faults bench-soak bench-recovery demo broker-up broker-down broker-status

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Everything a fresh machine needs: the venv with the package and its test extras, the ops tools
# (Debian's prometheus + alertmanager, for promtool/amtool and the real-Prometheus test) and the
# Kafka broker's jars (fetched by scripts/broker.sh on first use).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)
	bash scripts/install-ops-tools.sh

# The one test command (README, .ci/run): unit, property, ops and real-broker integration tests.
test: setup
	$(BIN)/ruff check schemas streams tests bench
	$(BIN)/ruff format --check schemas streams tests bench
	$(BIN)/mypy
	$(BIN)/pytest

test-unit: $(STAMP)
	$(BIN)/pytest tests/unit

lint: $(STAMP)
	$(BIN)/ruff check schemas streams tests bench
	$(BIN)/ruff format --check schemas streams tests bench
	$(BIN)/mypy

schemas: $(STAMP)
	$(BIN)/python -m schemas.generate

bench: $(STAMP)
	$(BIN)/python -m bench.engine

# Local single-node Kafka (KRaft) on 127.0.0.1; see scripts/broker.sh for the environment knobs.
broker-up:
	bash scripts/broker.sh up

broker-down:
	bash scripts/broker.sh down

broker-status:
	bash scripts/broker.sh status

# The live pipeline: broker, worker, synthetic feed, alerts printed as they fire; Ctrl-C (or
# DURATION seconds: `make demo DURATION=60`) stops what it started. Metrics on 127.0.0.1:9464.
DURATION ?=
demo:
	DURATION=$(DURATION) bash scripts/demo.sh

# Worker vs plain-Kafka loop vs Quix Streams, history, 1 vs 2 workers, latency (bench/pipeline).
bench-pipeline: $(STAMP)
	$(BIN)/python -m bench.pipeline

# Issue 12's full runs, each on its own broker: SIGKILLs, broker restarts and a rebalance checked
# against carwatch replay; five 1M-result backlogs per delivery mode; recovery of 100,000 patients.
bench-faults: $(STAMP)
	$(BIN)/python -m bench.faults

bench-soak: $(STAMP)
	$(BIN)/python -m bench.soak

bench-recovery: $(STAMP)
	$(BIN)/python -m bench.recovery
