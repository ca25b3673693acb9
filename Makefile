# Loopline: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: help venv kafka-fetch kafka-up kafka-down kafka-reset promtool test test-unit demo bench clean

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

venv: $(VENV)/.installed ## Create .venv with the pinned dependencies and the `loopline` command

kafka-fetch: ## Resolve the Apache Kafka jars from Maven Central (cached)
	deploy/kafka/kafka.sh fetch

kafka-up: ## Start the local single-node Kafka (KRaft) on 127.0.0.1:9092
	deploy/kafka/kafka.sh start

kafka-down: ## Stop the local Kafka
	deploy/kafka/kafka.sh stop

kafka-reset: ## Stop the local Kafka and delete its data
	deploy/kafka/kafka.sh reset

promtool: ## Install promtool (Debian's prometheus package) for the alert-rule tests, if missing
	deploy/ensure-promtool.sh

test: venv kafka-fetch promtool ## Run every test against a real, throwaway Kafka (started and stopped here)
	deploy/run-tests.sh

test-unit: venv promtool ## Run the unit tests only (no Kafka)
	$(PY) -m pytest -q tests/unit

demo: venv kafka-fetch ## Kafka + all services + the fraud example's traffic, with progress
	$(PY) -m deploy.demo $(DEMO_ARGS)

bench: venv kafka-fetch ## Run the benchmarks under bench/ against a throwaway Kafka
	deploy/run-bench.sh

clean: ## Remove the virtualenv, Kafka jars and data
	deploy/kafka/kafka.sh stop || true
	rm -rf $(VENV) deploy/kafka/.dist deploy/kafka/.data .run
