"""Run every benchmark module of this package (`uv run python -m benchmarks`)."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import benchmarks


def main() -> int:
    """Import each `bench_*` module and call its `main()`; non-zero if a target is missed."""
    failed = 0
    for info in sorted(pkgutil.iter_modules(benchmarks.__path__), key=lambda i: i.name):
        if info.name.startswith("bench_"):
            module = importlib.import_module(f"benchmarks.{info.name}")
            print(f"== {info.name}")
            failed += int(module.main() != 0)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
