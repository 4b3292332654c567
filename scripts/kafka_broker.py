"""Fetch and run the single-node Kafka broker that Quietwire's tests use.

    python scripts/kafka_broker.py fetch                 # download the jars once, print where
    python scripts/kafka_broker.py run --topic t1 -t t2  # run until Ctrl-C

`make kafka-jars` and `make kafka` call these. See docs/kafka.md.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from types import FrameType

# Run as a file (`python scripts/kafka_broker.py`), the repo root is not on sys.path.
_REPO_ROOT = Path(__file__).resolve().parent.parent
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))

from tests.harness.kafka import (  # noqa: E402  (needs the sys.path entry above)
    KAFKA_VERSION,
    KafkaBroker,
    KafkaHarnessError,
    fetch_kafka,
)

__all__ = ["main"]


def _fetch(_: argparse.Namespace) -> int:
    started = time.monotonic()
    libs = fetch_kafka()
    jars = len(list(libs.glob("*.jar")))
    elapsed = time.monotonic() - started
    print(f"Kafka {KAFKA_VERSION}: {jars} jars in {libs} ({elapsed:.1f}s)")
    return 0


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    # SIGTERM (e.g. from a process manager) stops the broker as cleanly as Ctrl-C does.
    raise KeyboardInterrupt


def _run(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _raise_interrupt)
    broker = KafkaBroker(port=args.port)
    started = time.monotonic()
    try:
        broker.start()
        if args.topic:
            broker.create_topics(args.topic, partitions=args.partitions)
        print(f"Kafka {KAFKA_VERSION} ready in {time.monotonic() - started:.1f}s")
        print(f"bootstrap: {broker.bootstrap}")
        for name in args.topic:
            print(f"topic: {name} ({args.partitions} partitions)")
        print(f"log: {broker.log_file}")
        print("Ctrl-C to stop", flush=True)
        code = broker.wait()
        print(f"the broker exited on its own with code {code}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping the broker...", flush=True)
        return 0
    finally:
        broker.stop()


def main(argv: list[str] | None = None) -> int:
    """Entry point: `fetch` or `run`; returns the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser("fetch", help="download the broker's jars (once) and print where")
    fetch.set_defaults(handler=_fetch)
    run = commands.add_parser("run", help="run a broker on 127.0.0.1 until Ctrl-C")
    run.add_argument(
        "-t", "--topic", action="append", default=[], help="topic to create (repeatable)"
    )
    run.add_argument("--partitions", type=int, default=3, help="partitions per created topic")
    run.add_argument("--port", type=int, default=None, help="listener port (default: a free one)")
    run.set_defaults(handler=_run)
    args = parser.parse_args(argv)
    if args.command == "run" and args.partitions < 1:
        parser.error(f"--partitions must be at least 1, got {args.partitions}")
    try:
        code: int = args.handler(args)
    except KafkaHarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
