"""The ingest under benchmark: a real uvicorn server in its own process, and its CPU time.

Run as ``python -m benchmarks._ingest_server STATE_DIR PORT [--kafka BOOTSTRAP]``: the
app `create_app` builds from `IngestSettings` (region `bench`, the served policies, the
embedded sink or Kafka), served by uvicorn on 127.0.0.1 with access logging off (as a
deployment that ships its request metrics elsewhere would run it).

`IngestServer` starts that process, waits for `/healthz`, and reads the process's CPU
time (user + system of all its threads: the event loop, the worker threads that commit
the ledger, the audit log and DuckDB, and DuckDB's own threads) from /proc. Given
`cpus`, the process runs on those CPUs only (``--cpus``: its affinity is set before
anything starts a thread, so every thread it makes inherits it), as `taskset` would.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx

__all__ = ["REGION", "IngestServer", "ServerStartError"]

REGION = "bench"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_READY_TIMEOUT = 60.0


class ServerStartError(RuntimeError):
    """The ingest process exited or did not answer `/healthz` in time."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of `pid` (not of its children), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may hold spaces: count fields after its ")".
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / _CLOCK_TICKS


class IngestServer:
    """`python -m benchmarks._ingest_server` as a context manager."""

    def __init__(
        self,
        state_dir: Path,
        *,
        kafka_bootstrap: str | None = None,
        cpus: frozenset[int] | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.port = _free_port()
        self.cpus = cpus
        """The CPUs the server may run on (None: wherever the system puts it)."""
        self._kafka = kafka_bootstrap
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = state_dir / "server.log"

    @property
    def url(self) -> str:
        """Where the server listens."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The server's process id (while running)."""
        if self._proc is None:
            raise ServerStartError("the ingest is not running")
        return self._proc.pid

    def cpu_seconds(self) -> float:
        """The server process's CPU time so far."""
        return process_cpu_seconds(self.pid)

    def wait_drained(self, timeout: float = 60.0) -> None:
        """Wait until the embedded ingest's outbox is empty: every envelope answered is
        in the warehouse, and the CPU that took is spent. (No outbox on Kafka: the
        broker holds what was answered, and no sink runs in this process.)"""
        from ingest import Outbox  # not at import: the server process pins itself first

        path = self.state_dir / Outbox.DIR_NAME
        deadline = time.monotonic() + timeout
        while path.exists():
            left = Outbox.pending(path)
            if left == 0:
                return
            if time.monotonic() > deadline:
                raise ServerStartError(f"the outbox still holds {left} items after {timeout} s")
            time.sleep(0.05)

    def __enter__(self) -> Self:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "benchmarks._ingest_server", str(self.state_dir)]
        cmd.append(str(self.port))
        if self._kafka is not None:
            cmd += ["--kafka", self._kafka]
        if self.cpus is not None:
            cmd += ["--cpus", ",".join(map(str, sorted(self.cpus)))]
        with open(self._log, "wb") as log:
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            self._await_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _await_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + _READY_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ServerStartError(f"the ingest exited:\n{self._log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise ServerStartError(f"the ingest did not become ready:\n{self._log.read_text()[-2000:]}")

    def stop(self) -> None:
        """SIGINT (uvicorn's graceful shutdown: the lifespan closes the bus), then wait."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _serve(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("state_dir", type=Path)
    parser.add_argument("port", type=int)
    parser.add_argument("--kafka")
    parser.add_argument("--cpus", help="comma-separated CPU numbers to run on")
    args = parser.parse_args(argv)
    if args.cpus:
        # First, before an import or the server starts a thread: threads inherit it.
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})

    import uvicorn

    from ingest import IngestSettings, create_app
    from ingest._process import tune_garbage_collector
    from policies import DEFAULT_POLICY_PATH, PILOT_POLICY_PATH

    settings = IngestSettings(
        region=REGION,
        state_dir=args.state_dir,
        policy_paths=(DEFAULT_POLICY_PATH, PILOT_POLICY_PATH),
        kafka_bootstrap=args.kafka,
        port=args.port,
    )
    app = create_app(settings)
    tune_garbage_collector()  # as `python -m ingest serve` does
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    _serve(sys.argv[1:])
