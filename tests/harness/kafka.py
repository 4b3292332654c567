"""A real single-node Apache Kafka broker (KRaft mode) for tests and manual runs.

The broker is assembled from Maven Central jars (no tarball, no Docker): `fetch_kafka()`
asks Maven for `org.apache.kafka:kafka_2.13` with its runtime dependencies, plus the
reload4j logging backend that Maven's transitive resolution misses, and caches them
outside the work tree. `KafkaBroker` formats a fresh log directory, starts
`kafka.Kafka` on free loopback ports and returns once an admin call succeeds.

    with KafkaBroker() as broker:
        broker.create_topics(["telemetry.eu.health"], partitions=3)
        ...  # talk to broker.bootstrap ("127.0.0.1:PORT")

Errors: `KafkaHarnessError` is the root; `KafkaFetchError` (Maven or Java missing or
failing) and `KafkaStartError` (formatting or startup failed, with the log's tail).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import fcntl
import os
import shutil
import subprocess
import tempfile
import time
import uuid
import weakref
from collections.abc import Coroutine, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from tests.harness.net import free_port

__all__ = [
    "KAFKA_VERSION",
    "KafkaBroker",
    "KafkaFetchError",
    "KafkaHarnessError",
    "KafkaStartError",
    "cache_root",
    "fetch_kafka",
    "kafka_libs_dir",
]

KAFKA_VERSION = "3.9.1"
# Versions Kafka 3.9's own distribution ships in libs/ for its logging backend.
_SLF4J_VERSION = "1.7.36"
_RELOAD4J_VERSION = "1.2.25"
# Pinned so a fetch does not depend on whatever plugin version is newest today.
_DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
_MARKER = "libs.complete"
_LOG_TAIL_LINES = 20

_T = TypeVar("_T")


class KafkaHarnessError(Exception):
    """Root of the errors the Kafka test harness raises."""


class KafkaFetchError(KafkaHarnessError):
    """The broker's jars could not be fetched (Maven or Java missing, or Maven failed)."""


class KafkaStartError(KafkaHarnessError):
    """The broker could not be formatted or started; the message carries its log's tail."""


# --- fetching the jars -------------------------------------------------------------------


def cache_root() -> Path:
    """Where Quietwire caches downloads: `$QUIETWIRE_CACHE` or `~/.cache/quietwire`."""
    configured = os.environ.get("QUIETWIRE_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "quietwire"


def kafka_libs_dir() -> Path:
    """The directory that holds (or will hold) the broker's jars."""
    return cache_root() / f"kafka-{KAFKA_VERSION}" / "libs"


def _pom() -> str:
    deps = [
        ("org.apache.kafka", "kafka_2.13", KAFKA_VERSION),
        ("org.slf4j", "slf4j-reload4j", _SLF4J_VERSION),
        ("ch.qos.reload4j", "reload4j", _RELOAD4J_VERSION),
    ]
    dep_xml = "".join(
        f"<dependency><groupId>{g}</groupId><artifactId>{a}</artifactId>"
        f"<version>{v}</version></dependency>"
        for g, a, v in deps
    )
    return (
        '<project xmlns="http://maven.apache.org/POM/4.0.0">'
        "<modelVersion>4.0.0</modelVersion>"
        "<groupId>dev.quietwire</groupId><artifactId>kafka-broker-libs</artifactId>"
        f"<version>{KAFKA_VERSION}</version><packaging>pom</packaging>"
        f"<dependencies>{dep_xml}</dependencies></project>\n"
    )


def _complete_libs(libs: Path) -> bool:
    """True when a fetch finished: the marker exists and every jar it lists is present."""
    marker = libs.parent / _MARKER
    if not marker.is_file():
        return False
    names = marker.read_text().split()
    return bool(names) and all((libs / name).is_file() for name in names)


def fetch_kafka() -> Path:
    """Download the broker's jars once and return their directory.

    Instant when a previous fetch completed. The jars land in a staging directory that is
    renamed into place only after Maven succeeds, and the completion marker is written
    last, so an interrupted fetch is redone rather than mistaken for a complete one.
    """
    libs = kafka_libs_dir()
    if _complete_libs(libs):
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaFetchError("Maven (mvn) is not on PATH; run scripts/ensure-system.sh")
    home = libs.parent
    home.mkdir(parents=True, exist_ok=True)
    # Two processes fetching at once (e.g. `make kafka` and a test run) take turns.
    with open(home / ".fetch.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _complete_libs(libs):
            return libs
        staging = home / "libs.partial"
        shutil.rmtree(staging, ignore_errors=True)
        (home / _MARKER).unlink(missing_ok=True)
        pom = home / "pom.xml"
        pom.write_text(_pom())
        cmd = [
            mvn,
            "-q",
            "-B",
            "-f",
            str(pom),
            f"{_DEPENDENCY_PLUGIN}:copy-dependencies",
            f"-DoutputDirectory={staging}",
            "-DincludeScope=runtime",
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        jars = sorted(p.name for p in staging.glob("*.jar")) if staging.is_dir() else []
        if done.returncode != 0 or not jars:
            output = _tail(done.stdout + done.stderr)
            raise KafkaFetchError(
                f"Maven could not fetch Kafka {KAFKA_VERSION} (exit {done.returncode}):\n{output}"
            )
        shutil.rmtree(libs, ignore_errors=True)
        staging.rename(libs)
        (home / _MARKER).write_text("\n".join(jars) + "\n")
    return libs


# --- running the broker ------------------------------------------------------------------


def _cluster_id() -> str:
    """A random Kafka cluster id: 16 random bytes, URL-safe base64 without padding."""
    while True:
        value = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        # Kafka's own Uuid.randomUuid() rejects ids starting with '-' (they read as flags).
        if not value.startswith("-"):
            return value


def _tail(text: str, lines: int = _LOG_TAIL_LINES) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _error_lines(log: str, limit: int = 20) -> list[str]:
    """ERROR/FATAL records with their exception messages (not their stack frames)."""
    picked: list[str] = []
    in_error = False
    for line in log.splitlines():
        if line.startswith("["):
            in_error = "] ERROR " in line or "] FATAL " in line
            if in_error:
                picked.append(line)
        elif in_error and line.strip() and not line.lstrip().startswith(("at ", "...")):
            picked.append(line)
    return picked[:limit]


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise KafkaStartError("java is not on PATH; run scripts/ensure-system.sh")
    return found


def _run_coroutine(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run a coroutine to completion from sync code, even if a loop runs in this thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _kill(proc: subprocess.Popen[bytes]) -> None:
    # Safety net for an interpreter that exits without calling stop().
    if proc.poll() is None:
        proc.kill()
        proc.wait()


async def _accepts_connections(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


class KafkaBroker:
    """One combined broker+controller Kafka node on 127.0.0.1, in a temporary directory.

    Use as a context manager, or call `start()` and `stop()`. `port=None` picks a free
    port (and retries with new ports if another process grabs it first); an explicit port
    is used as given. `properties` adds to or overrides the generated server.properties.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        properties: dict[str, str] | None = None,
        startup_timeout: float = 90.0,
        heap: str = "512m",
    ) -> None:
        self._requested_port = port
        self._properties = dict(properties or {})
        self._startup_timeout = startup_timeout
        self._heap = heap
        self._port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    @property
    def bootstrap(self) -> str:
        """The broker's bootstrap address, "127.0.0.1:PORT" (only while running)."""
        if self._port is None or self._proc is None:
            raise KafkaHarnessError("the broker is not running")
        return f"127.0.0.1:{self._port}"

    @property
    def log_file(self) -> Path:
        """The broker's server log (log4j output) in its temporary directory."""
        if self._dir is None:
            raise KafkaHarnessError("the broker is not running")
        return self._dir / "logs" / "server.log"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Fetch the jars if needed, format a fresh log dir, start the broker, await ready."""
        if self._proc is not None:
            raise KafkaHarnessError("the broker is already running")
        libs = fetch_kafka()
        attempts = 1 if self._requested_port is not None else 3
        for attempt in range(attempts):
            try:
                self._start_once(libs)
                return
            except KafkaStartError as exc:
                self.stop()
                port_taken = "Address already in use" in str(exc)
                if not port_taken or attempt == attempts - 1:
                    raise

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after `timeout`) and delete its files."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        self._port = None

    def wait(self) -> int:
        """Block until the broker process exits; return its exit code."""
        if self._proc is None:
            raise KafkaHarnessError("the broker is not running")
        return self._proc.wait()

    def create_topics(
        self, names: Iterable[str], partitions: int = 3, configs: dict[str, str] | None = None
    ) -> None:
        """Create topics (replication factor 1, topic `configs` such as
        ``{"max.message.bytes": "65536"}``); topics that already exist are left as is."""
        _run_coroutine(self.create_topics_async(names, partitions, configs))

    async def create_topics_async(
        self, names: Iterable[str], partitions: int = 3, configs: dict[str, str] | None = None
    ) -> None:
        """Async form of `create_topics`, for callers already inside an event loop."""
        topics = [NewTopic(name, partitions, 1, topic_configs=configs or {}) for name in names]
        if not topics:
            return
        if partitions < 1:
            raise ValueError(f"partitions must be at least 1, got {partitions}")
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            response = await admin.create_topics(topics)
        finally:
            await admin.close()
        for entry in response.to_object()["topic_errors"]:
            code = entry["error_code"]
            if code and for_code(code) is not TopicAlreadyExistsError:
                message = entry.get("error_message") or for_code(code).__name__
                raise KafkaHarnessError(f"could not create topic {entry['topic']}: {message}")

    # --- internals ---------------------------------------------------------------------

    def _start_once(self, libs: Path) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="quietwire-kafka-"))
        self._port = self._requested_port or free_port()
        controller_port = free_port()
        while controller_port == self._port:
            controller_port = free_port()
        config = self._write_config(self._dir, self._port, controller_port)
        java = [
            _java(),
            f"-Xmx{self._heap}",
            "-Xms64m",
            "-Djava.awt.headless=true",
            f"-Dlog4j.configuration={(self._dir / 'log4j.properties').as_uri()}",
            f"-Dkafka.logs.dir={self._dir / 'logs'}",
            "-cp",
            f"{libs}/*",
        ]
        fmt = subprocess.run(
            [*java, "kafka.tools.StorageTool", "format", "-t", _cluster_id(), "-c", str(config)],
            capture_output=True,
            text=True,
            check=False,
        )
        if fmt.returncode != 0:
            raise KafkaStartError(
                f"formatting the broker's storage failed (exit {fmt.returncode}):\n"
                + _tail(fmt.stdout + fmt.stderr)
            )
        with open(self._dir / "logs" / "stdout.log", "wb") as out:
            # Own session: Ctrl-C in a terminal reaches us, and we stop the broker in order.
            self._proc = subprocess.Popen(
                [*java, "kafka.Kafka", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._finalizer = weakref.finalize(self, _kill, self._proc)
        deadline = time.monotonic() + self._startup_timeout
        _run_coroutine(self._await_ready(self._proc, self._port, deadline))

    def _write_config(self, root: Path, port: int, controller_port: int) -> Path:
        (root / "logs").mkdir()
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(root / "data"),
            "num.partitions": "3",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "offsets.topic.replication.factor": "1",
            # 50 partitions (the default) make the first consumer group slow to start.
            "offsets.topic.num.partitions": "5",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "5",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "false",
            **self._properties,
        }
        config = root / "server.properties"
        config.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        log4j = {
            "log4j.rootLogger": "INFO, file",
            "log4j.appender.file": "org.apache.log4j.FileAppender",
            "log4j.appender.file.File": str(root / "logs" / "server.log"),
            "log4j.appender.file.layout": "org.apache.log4j.PatternLayout",
            "log4j.appender.file.layout.ConversionPattern": "[%d] %p %m (%c)%n",
            # The controller's per-record chatter drowns the lines worth reading.
            "log4j.logger.kafka.controller": "WARN",
            "log4j.logger.org.apache.kafka.controller": "WARN",
        }
        (root / "log4j.properties").write_text("".join(f"{k}={v}\n" for k, v in log4j.items()))
        return config

    def _log_tail(self) -> str:
        if self._dir is None:
            return ""
        parts = []
        for name in ("stdout.log", "server.log"):
            path = self._dir / "logs" / name
            if not path.is_file():
                continue
            text = path.read_text(errors="replace")
            # The cause is logged before the shutdown chatter that fills the tail.
            errors = _error_lines(text)
            if errors:
                parts.append(f"--- {name} (errors) ---\n" + "\n".join(errors[:10]))
            if text.strip():
                parts.append(f"--- {name} (tail) ---\n{_tail(text)}")
        return "\n".join(parts)

    async def _await_ready(self, proc: subprocess.Popen[bytes], port: int, deadline: float) -> None:
        """Retry an admin call until the broker answers with itself as a live node."""
        last_error: BaseException | None = None
        while True:
            code = proc.poll()
            if code is not None:
                raise KafkaStartError(
                    f"the Kafka broker exited with code {code} during startup:\n{self._log_tail()}"
                )
            if time.monotonic() > deadline:
                raise KafkaStartError(
                    f"the Kafka broker was not ready within {self._startup_timeout:.0f}s "
                    f"(last error: {last_error!r}):\n{self._log_tail()}"
                )
            # A bare TCP probe first: aiokafka logs every refused connection as an error.
            if not await _accepts_connections(port):
                await asyncio.sleep(0.1)
                continue
            admin = AIOKafkaAdminClient(
                bootstrap_servers=f"127.0.0.1:{port}", request_timeout_ms=5000
            )
            try:
                await admin.start()
                cluster = await admin.describe_cluster()
                if cluster.get("brokers") and cluster.get("controller_id", -1) >= 0:
                    return
            except (KafkaError, OSError) as exc:
                last_error = exc
            finally:
                with contextlib.suppress(KafkaError, OSError):
                    await admin.close()
            # Backoff between polls, not a guess at how long startup takes.
            await asyncio.sleep(0.2)
