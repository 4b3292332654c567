"""Nothing the host app calls waits on the network or the TPM.

The transport's `send` and the TPM's `sign` each sleep `DELAY` seconds, and so does the
attestor's `ensure_attested` (an ingest far away, a slow discrete TPM). Background
mode: every public call must return in a small fraction of that delay, while the worker
thread does the slow work. `flush` and `shutdown` wait as long as their `timeout`
says, and no longer.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import pytest

from client import (
    ClientError,
    FallbackKeyStore,
    MemoryTransport,
    SoftwareKeyStore,
    Telemetry,
    TelemetryConfig,
    TransportError,
)
from client._consent import ConsentStore
from schemas import AppInfo, BatchResult, EnvelopeBatch, Tier
from tests.client.conftest import POLICY, FakeClock, MemoryIngest
from tests.client.memory_keys import MemoryTpmKeyStore, ScriptedAttestor

DELAY = 5.0
BOUND = 0.2 * DELAY
"""Each public call returns within a fifth of one slow operation. Measured on the shared
2-core machine: under 25 ms for the consent calls, under 0.1 ms for recording, about
0.2 s for the constructor (it builds every DP measurement: CPU work, which a busy
machine slows down; hence a delay long enough for a bound with room)."""
TIMEOUT = 0.05

T = TypeVar("T")


def timed(call: Callable[[], T]) -> tuple[T, float]:
    start = time.perf_counter()
    out = call()
    return out, time.perf_counter() - start


class SlowIngest:
    """An ingest that answers each batch after `DELAY` seconds (and counts them)."""

    def __init__(self) -> None:
        self.ingest = MemoryIngest()
        self.batches = 0

    def handle(self, batch: EnvelopeBatch) -> BatchResult:
        time.sleep(DELAY)
        self.batches += 1
        return self.ingest.handle(batch)


def test_every_public_call_returns_quickly_while_the_network_and_the_tpm_are_slow(
    tmp_path: Path, clock: FakeClock
) -> None:
    slow = SlowIngest()
    tpm = MemoryTpmKeyStore(delay=DELAY)
    keys = FallbackKeyStore(lambda: tpm, SoftwareKeyStore(tmp_path / "sw"))
    attestor = ScriptedAttestor(succeeds=True, delay=DELAY)
    keys.attach_attestor(attestor)
    config = TelemetryConfig(
        app=AppInfo(name="demo-app", version="1.0"),
        region="eu-west",
        policy=POLICY,
        ingest_public_key=slow.ingest.public_key,
        transport=MemoryTransport(slow.handle, lambda _request: None),
        state_dir=tmp_path / "state",
        key_store=keys,
        clock=clock,
        mode="background",
        retry_backoff=0.0,
    )
    took: dict[str, float] = {}
    qw, took["Telemetry()"] = timed(lambda: Telemetry(config))
    _, took["grant_consent(health)"] = timed(lambda: qw.grant_consent(Tier.HEALTH))
    _, took["grant_consent(performance)"] = timed(lambda: qw.grant_consent(Tier.PERFORMANCE))
    requests = qw.counter("inference.requests")
    _, took["Counter.add"] = timed(lambda: requests.add(1, route="local", model="a@1"))
    _, took["Histogram.record"] = timed(lambda: qw.histogram("latency").record(0.3))
    _, took["record"] = timed(lambda: qw.record("app.starts", 1))
    _, took["record_exception"] = timed(lambda: qw.record_exception(ValueError("x")))
    _, took["record_prompt"] = timed(lambda: qw.record_prompt("mail ann@example.com"))
    clock.advance(hours=1)
    # The worker now attests, releases the window and signs and sends it: slowly.
    _, took["collect"] = timed(qw.collect)
    time.sleep(0.1)  # let the worker start its slow round
    _, took["dropped"] = timed(qw.dropped)
    _, took["device_id"] = timed(lambda: qw.device_id)
    _, took["privacy_spent"] = timed(qw.privacy_spent)
    _, took["consented_tiers"] = timed(qw.consented_tiers)
    _, took["revoke_consent"] = timed(lambda: qw.revoke_consent(Tier.PERFORMANCE))
    _, took["grant_consent(again)"] = timed(lambda: qw.grant_consent(Tier.PERFORMANCE))
    flushed, took["flush"] = timed(lambda: qw.flush(timeout=TIMEOUT))
    assert not flushed  # nothing could have been sent yet
    _, took["shutdown"] = timed(lambda: qw.shutdown(timeout=TIMEOUT))

    slow_calls = {
        name: seconds
        for name, seconds in took.items()
        if seconds > BOUND + (TIMEOUT if name in {"flush", "shutdown"} else 0.0)
    }
    assert slow_calls == {}, took
    # The slow work did happen, on the worker's thread: it attested the key. Its round
    # then starts no send: `shutdown` has begun, and the next run owns the spool.
    worker = qw._worker
    assert worker is not None
    deadline = time.monotonic() + 6 * DELAY
    while worker.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert attestor.calls > 0
    assert slow.batches == 0


def test_a_revocation_takes_effect_at_once_and_is_on_disk_after_the_documented_wait(
    tmp_path: Path, clock: FakeClock
) -> None:
    ingest = MemoryIngest()
    state = tmp_path / "state"

    def offline(_request: object) -> NoReturn:
        raise TransportError("offline")  # so the deletion request stays in the spool

    qw = Telemetry(
        TelemetryConfig(
            app=AppInfo(name="demo-app", version="1.0"),
            region="eu-west",
            policy=POLICY,
            ingest_public_key=ingest.public_key,
            transport=MemoryTransport(offline, offline),
            state_dir=state,
            clock=clock,
            mode="background",
            retry_backoff=0.0,
        )
    )
    try:
        qw.grant_consent(Tier.HEALTH)
        qw.revoke_consent(Tier.HEALTH)
        assert qw.consented_tiers() == []  # in effect before anything is written
        assert qw.wait_consent_durable(timeout=30)
        on_disk = ConsentStore(state / "consent.json", lambda _b: b"x", POLICY)
        assert [(s.record.tier, s.record.granted) for s in on_disk.records()] == [
            (Tier.HEALTH, True),
            (Tier.HEALTH, False),
        ]
        assert not on_disk.allows(Tier.HEALTH)
        # The deletion request was stored with it, ahead of any send.
        assert [p.suffix for p in (state / "spool").iterdir()] in ([".req"], [".del"])
    finally:
        qw.shutdown(carry_open_window=False, timeout=1.0)


class SlowDisk:
    """Every read, open and fsync of a file under `root` first sleeps `delay` seconds (a
    spun-down disk, a network home directory), on whichever thread makes it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, root: Path, delay: float) -> None:
        self.root = str(root)
        self.delay = delay
        self.calls = 0
        real_open, real_fsync = os.open, os.fsync
        real_read_bytes, real_read_text, real_mkdir = Path.read_bytes, Path.read_text, Path.mkdir

        def under_root(path: object) -> bool:
            return str(path).startswith(self.root)

        def slow_open(path: str | os.PathLike[str], *args: Any, **kw: Any) -> int:
            self._wait(under_root(path))
            return real_open(path, *args, **kw)

        def slow_fsync(fd: int) -> None:
            self._wait(True)
            real_fsync(fd)

        def slow_read_bytes(path: Path) -> bytes:
            self._wait(under_root(path))
            return real_read_bytes(path)

        def slow_read_text(path: Path, *args: Any, **kw: Any) -> str:
            self._wait(under_root(path))
            return real_read_text(path, *args, **kw)

        def slow_mkdir(path: Path, *args: Any, **kw: Any) -> None:
            self._wait(under_root(path))
            real_mkdir(path, *args, **kw)

        monkeypatch.setattr(os, "open", slow_open)
        monkeypatch.setattr(os, "fsync", slow_fsync)
        monkeypatch.setattr(Path, "read_bytes", slow_read_bytes)
        monkeypatch.setattr(Path, "read_text", slow_read_text)
        monkeypatch.setattr(Path, "mkdir", slow_mkdir)

    def _wait(self, slow: bool) -> None:
        if slow:
            self.calls += 1
            time.sleep(self.delay)


def test_every_public_call_returns_quickly_while_the_disk_too_is_slow(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = SlowIngest()
    tpm = MemoryTpmKeyStore(delay=DELAY)
    keys = FallbackKeyStore(lambda: tpm, SoftwareKeyStore(tmp_path / "sw"))
    keys.attach_attestor(ScriptedAttestor(succeeds=True, delay=DELAY))
    config = TelemetryConfig(
        app=AppInfo(name="demo-app", version="1.0"),
        region="eu-west",
        policy=POLICY,
        ingest_public_key=slow.ingest.public_key,
        transport=MemoryTransport(slow.handle, lambda _request: None),
        state_dir=tmp_path / "state",
        key_store=keys,
        clock=clock,
        mode="background",
        retry_backoff=0.0,
    )
    disk = SlowDisk(monkeypatch, tmp_path, DELAY)
    took: dict[str, float] = {}
    qw, took["Telemetry()"] = timed(lambda: Telemetry(config))
    _, took["grant_consent(health)"] = timed(lambda: qw.grant_consent(Tier.HEALTH))
    _, took["grant_consent(performance)"] = timed(lambda: qw.grant_consent(Tier.PERFORMANCE))
    requests = qw.counter("inference.requests")
    _, took["Counter.add"] = timed(lambda: requests.add(1, route="local", model="a@1"))
    _, took["Histogram.record"] = timed(lambda: qw.histogram("latency").record(0.3))
    _, took["record"] = timed(lambda: qw.record("app.starts", 1))
    _, took["record_exception"] = timed(lambda: qw.record_exception(ValueError("x")))
    _, took["record_prompt"] = timed(lambda: qw.record_prompt("mail ann@example.com"))
    clock.advance(hours=1)
    _, took["collect"] = timed(qw.collect)
    time.sleep(0.1)  # the worker is now deep in its slow start-up
    _, took["dropped"] = timed(qw.dropped)
    _, took["device_id"] = timed(lambda: qw.device_id)
    _, took["consented_tiers"] = timed(qw.consented_tiers)
    _, took["ledger_problem"] = timed(qw.ledger_problem)
    _, took["pending"] = timed(lambda: qw.pending)
    _, took["revoke_consent"] = timed(lambda: qw.revoke_consent(Tier.PERFORMANCE))
    _, took["grant_consent(again)"] = timed(lambda: qw.grant_consent(Tier.PERFORMANCE))
    ready, took["ready"] = timed(lambda: qw.ready(timeout=TIMEOUT))
    durable, took["wait_consent_durable"] = timed(lambda: qw.wait_consent_durable(TIMEOUT))
    flushed, took["flush"] = timed(lambda: qw.flush(timeout=TIMEOUT))
    _, took["shutdown"] = timed(lambda: qw.shutdown(timeout=TIMEOUT))

    waits = {"ready", "wait_consent_durable", "flush", "shutdown"}
    slow_calls = {
        name: seconds
        for name, seconds in took.items()
        if seconds > BOUND + (TIMEOUT if name in waits else 0.0)
    }
    assert slow_calls == {}, took
    # Nothing could be loaded, written or sent yet, and the calls said so.
    assert (ready, durable, flushed) == (False, False, False)
    assert qw.consented_tiers() == []  # not known yet: nothing counts as consented
    assert disk.calls > 0  # the disk was used, by the worker only


def test_a_fresh_start_records_nothing_until_the_consent_is_loaded_then_records(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    ingest = MemoryIngest()
    qw = Telemetry(_config(tmp_path, ingest, clock))
    try:
        assert qw.ready(timeout=30)
        qw.grant_consent(Tier.HEALTH)
        assert qw.wait_consent_durable(timeout=30)
    finally:
        qw.shutdown(carry_open_window=False, timeout=5.0)

    # The next start, on a slow disk: the grant above is on it, but not yet read.
    SlowDisk(monkeypatch, tmp_path, 0.3)
    again = Telemetry(_config(tmp_path, ingest, clock))
    try:
        again.record("app.starts", 2)
        again.record_prompt("mail ann@example.com")
        assert again.consented_tiers() == []
        assert again.ready(timeout=60)
        assert again.consented_tiers() == [Tier.HEALTH]
        assert again.dropped().get("state_loading") == 3  # two starts and a prompt
        again.record("app.starts", 1)
        assert again.dropped().get("state_loading") == 3
        clock.advance(hours=1)
        assert again.flush(timeout=60)
    finally:
        again.shutdown(carry_open_window=False, timeout=5.0)
    (envelope,) = ingest.envelopes
    assert {a.signal for a in envelope.aggregates} == {"app.starts"}
    assert envelope.consented_tiers == [Tier.HEALTH]


def test_a_revocation_is_durable_only_after_the_worker_wrote_it_on_a_slow_disk(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    ingest = MemoryIngest()
    qw = Telemetry(_config(tmp_path, ingest, clock))
    try:
        assert qw.ready(timeout=30)
        qw.grant_consent(Tier.HEALTH)
        assert qw.wait_consent_durable(timeout=30)
        SlowDisk(monkeypatch, tmp_path, 1.0)
        _, took = timed(lambda: qw.revoke_consent(Tier.HEALTH))
        assert took < 0.2
        assert qw.consented_tiers() == []  # in effect at once
        assert not qw.wait_consent_durable(timeout=0.1)  # the worker is still writing
        assert qw.wait_consent_durable(timeout=60)
        monkeypatch.undo()
        on_disk = ConsentStore(tmp_path / "state" / "consent.json", lambda _b: b"x", POLICY)
        assert not on_disk.allows(Tier.HEALTH)
    finally:
        qw.shutdown(carry_open_window=False, timeout=5.0)


def test_a_consent_call_after_shutdown_is_written_before_it_returns(
    tmp_path: Path, clock: FakeClock
) -> None:
    """The worker that would write it has stopped: the call writes it, as manual mode
    does, with the deletion request and the carried window purged."""
    state = tmp_path / "state"
    qw = Telemetry(_config(tmp_path, MemoryIngest(), clock))
    assert qw.ready(timeout=30)
    qw.grant_consent(Tier.HEALTH)
    assert qw.wait_consent_durable(timeout=30)
    qw.shutdown(timeout=1.0)  # carries the open window (health)
    assert (state / "spool" / "open_window.sealed").exists()

    qw.revoke_consent(Tier.HEALTH)  # the user switches telemetry off
    assert qw.wait_consent_durable(timeout=0)
    assert not ConsentStore(state / "consent.json", lambda _b: b"x", POLICY).allows(Tier.HEALTH)
    assert [p.suffix for p in (state / "spool").iterdir()] == [".req"]


def test_consent_calls_queued_while_another_client_holds_the_ledger_are_written(
    tmp_path: Path, clock: FakeClock
) -> None:
    """A second `Telemetry` on the state directory never loads (the first holds the
    ledger's lock): its consent calls are written at `shutdown` and after it, without
    the ledger, and the next start loads them."""
    ingest = MemoryIngest()
    state = tmp_path / "state"
    holder = Telemetry(_config(tmp_path, ingest, clock).model_copy(update={"mode": "manual"}))
    holder.grant_consent(Tier.HEALTH)
    qw = Telemetry(_config(tmp_path, ingest, clock))
    try:
        assert not qw.ready(timeout=0.5)
        qw.revoke_consent(Tier.HEALTH)  # queued for a load that never comes
        qw.shutdown(timeout=1.0)
        assert qw.wait_consent_durable(timeout=0)
        qw.grant_consent(Tier.PERFORMANCE)  # after shutdown: written before it returns
        assert qw.wait_consent_durable(timeout=0)
    finally:
        holder.shutdown(carry_open_window=False, timeout=1.0)
    on_disk = ConsentStore(state / "consent.json", lambda _b: b"x", POLICY)
    assert [t for t in Tier if on_disk.allows(t)] == [Tier.PERFORMANCE]
    assert [p.suffix for p in (state / "spool").iterdir()] == [".req"]  # the deletion


def test_consent_calls_that_cannot_be_written_are_reported_lost(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "consent.json").write_text("not a consent history")  # the state never loads
    qw = Telemetry(_config(tmp_path, MemoryIngest(), clock))
    assert not qw.ready(timeout=0.5)
    qw.revoke_consent(Tier.HEALTH)
    qw.shutdown(timeout=1.0)
    assert "consent decisions made before the state loaded are lost" in caplog.text
    durable, took = timed(lambda: qw.wait_consent_durable(timeout=30))
    assert not durable
    assert took < 1.0  # known lost: no need to wait
    with pytest.raises(ClientError):
        qw.grant_consent(Tier.HEALTH)  # after shutdown: cannot be written, and says so


def _config(tmp_path: Path, ingest: MemoryIngest, clock: FakeClock) -> TelemetryConfig:
    return TelemetryConfig(
        app=AppInfo(name="demo-app", version="1.0"),
        region="eu-west",
        policy=POLICY,
        ingest_public_key=ingest.public_key,
        transport=MemoryTransport(ingest.handle, lambda _request: None),
        state_dir=tmp_path / "state",
        clock=clock,
        mode="background",
        retry_backoff=0.0,
    )
