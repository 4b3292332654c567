# Quietwire developer entry points. `make demo` and `make test` are the README's two
# commands; each installs what it needs and is fast the second time.
SHELL := /bin/bash
export PATH := $(HOME)/.local/bin:$(PATH)
UV ?= uv
RUN := $(UV) run --frozen
KAFKA_CACHE ?= $(HOME)/.cache/quietwire

.PHONY: setup deps kafka-jars demo test lint bench kafka schemas clean

setup: deps

deps:
	@bash scripts/ensure-system.sh
	@$(UV) sync --frozen --quiet

kafka-jars: deps
	@$(RUN) python scripts/kafka_broker.py fetch

demo: deps
	$(RUN) quietwire demo

lint: deps
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) mypy

test: deps kafka-jars lint
	$(RUN) pytest -q

bench: deps
	$(RUN) python -m benchmarks

kafka: kafka-jars
	$(RUN) python scripts/kafka_broker.py run

schemas: deps
	$(RUN) python -c "from schemas import write_json_schemas; write_json_schemas()"

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache quietwire-demo.duckdb reports/
