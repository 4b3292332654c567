# Quietwire developer entry points. `make demo` and `make test` are the README's two
# commands; each installs what it needs and is fast the second time.
SHELL := /bin/bash
export PATH := $(HOME)/.local/bin:$(HOME)/.cargo/bin:$(PATH)
UV ?= uv
# The interpreter of .venv: Debian's python3.11 (PGO + LTO; scripts/ensure-system.sh
# installs it). `uv sync` recreates .venv if it was made with another one.
export UV_PYTHON ?= /usr/bin/python3.11
RUN := $(UV) run --frozen
KAFKA_CACHE ?= $(HOME)/.cache/quietwire
# The Prio3 binding's Rust crate (built into .venv by `uv sync` through maturin).
PRIO3 := --manifest-path prio3/Cargo.toml

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
	$(RUN) lint-imports
	cargo fmt $(PRIO3) --check
	cargo clippy $(PRIO3) --locked --all-targets -- -D warnings

test: deps kafka-jars lint
	cargo test $(PRIO3) --locked
	$(RUN) pytest -q

bench: deps
	$(RUN) python -m benchmarks

kafka: kafka-jars
	$(RUN) python scripts/kafka_broker.py run

schemas: deps
	$(RUN) python -c "from schemas import write_json_schemas; write_json_schemas()"

clean:
	rm -rf prio3/target .venv .pytest_cache .mypy_cache .ruff_cache quietwire-demo.duckdb reports/
