"""A full disk while windows are released: the loss is counted, never raised into the
app, and the windows after it go on."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from client import ClientError, DropReason, MemoryTransport, TransportError
from client._envelope import DeviceState, sequence_floor
from client._spool import Spool
from schemas import (
    BatchResult,
    DeletionReceipt,
    DeletionRequestV1,
    EnvelopeBatch,
    EnvelopeV1,
    SignedDeletionRequest,
    Tier,
)
from tests.client.conftest import FakeClock, MakeTelemetry, MemoryIngest


def _state_writes_fail(monkeypatch: pytest.MonkeyPatch, failures: int) -> list[int]:
    """The next `failures` writes of the device state (`client_state.json`) fail as on a
    full disk (its atomic rename, the write's last step); other files are written as
    usual. Returns a list counting the failed writes."""
    failed: list[int] = []
    real_replace = os.replace

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if Path(dst).name == DeviceState.FILE_NAME and len(failed) < failures:
            failed.append(1)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    return failed


def test_a_window_whose_state_cannot_be_written_is_counted_not_raised(
    make_telemetry: MakeTelemetry,
    clock: FakeClock,
    ingest: MemoryIngest,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    telemetry = make_telemetry()
    control = make_telemetry(state_dir=tmp_path / "control")  # the same windows, no failure
    for t in (telemetry, control):
        t.counter("inference.requests").add(3, route="local", model="a@1")
    failed = _state_writes_fail(monkeypatch, failures=2)
    clock.advance(hours=3)
    # Three windows close: the first two cannot be numbered, the third can.
    sent = telemetry.collect()
    assert len(failed) == 2
    assert len(sent) == 1
    assert sent[0].window_end == clock.now
    assert sent[0].sequence == sequence_floor(clock.now.timestamp())  # none used up
    assert telemetry.dropped() == {DropReason.STATE_WRITE_FAILED.value: 2}
    monkeypatch.undo()
    assert len(control.collect()) == 3
    # The charges of the lost windows stay: nothing is ever sent uncharged.
    assert telemetry.privacy_spent() == control.privacy_spent()
    assert telemetry.privacy_spent()[0] > 0


def test_a_full_disk_in_manual_mode_loses_nothing_after_it(
    make_telemetry: MakeTelemetry,
    clock: FakeClock,
    ingest: MemoryIngest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    telemetry = make_telemetry()
    requests = telemetry.counter("inference.requests")
    requests.add(3, route="local", model="a@1")
    _state_writes_fail(monkeypatch, failures=1)
    clock.advance(hours=1)
    assert telemetry.collect() == []  # no exception reaches the app
    monkeypatch.undo()
    requests.add(2, route="local", model="a@1")
    clock.advance(hours=1)
    sent = telemetry.collect()
    assert len(sent) == 1
    assert telemetry.flush()
    assert [e.window_start for e in ingest.envelopes] == [sent[0].window_start]
    assert telemetry.dropped() == {DropReason.STATE_WRITE_FAILED.value: 1}


def test_a_spool_that_cannot_apply_retention_still_returns_the_released_windows(
    make_telemetry: MakeTelemetry,
    clock: FakeClock,
    ingest: MemoryIngest,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Applying retention rewrites spooled envelopes; on a full disk that fails after
    the window was queued: the app is told what was queued, and the error is logged."""
    telemetry = make_telemetry()
    telemetry.counter("inference.requests").add(3, route="local", model="a@1")

    def expire(*_: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Spool, "expire", expire)
    (sent,) = telemetry.collect(clock.advance(hours=1))
    assert "retried at the next release" in caplog.text
    monkeypatch.undo()
    assert telemetry.flush()
    assert [e.envelope_id for e in ingest.envelopes] == [sent.envelope_id]


def _every_write_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every atomic write (temp file, then rename) fails as on a full disk."""

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize("carried", [False, True], ids=["spooled", "carried"])
def test_a_revocation_on_a_full_disk_is_in_effect_and_nothing_of_the_tier_leaves(
    make_telemetry: MakeTelemetry,
    clock: FakeClock,
    ingest: MemoryIngest,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    carried: bool,
) -> None:
    """Manual mode, the disk full when the user revokes a tier: the call raises (the
    deletion request, the revocation and the spool's purge cannot be written), but the
    tier is revoked all the same. Nothing is sent while the purge is not on disk (a
    spooled envelope, or a carried window from before a restart, still holds the tier);
    once the disk has room, the next flush writes it all, the deletion request goes
    first, and nothing sent after the revocation holds the tier. Before, the failed
    write left the tier consented, and (in either mode) a send after a failed purge
    carried the revoked tier's data. Background mode shares the send path."""
    state = tmp_path / "device"
    deletions = _Deletions()

    def transport() -> MemoryTransport:
        return MemoryTransport(ingest.handle, deletion_handler=deletions)

    telemetry = make_telemetry(transport=transport(), state_dir=state)
    telemetry.counter("inference.requests").add(3, route="local", model="a@1")
    telemetry.counter("app.starts").add(1)
    assert len(telemetry.collect(clock.advance(hours=1))) == 1  # spooled, not sent
    if carried:  # a restart mid-window: the open window is carried on disk
        telemetry.counter("inference.requests").add(2, route="local", model="a@1")
        telemetry.shutdown()
        telemetry = make_telemetry(transport=transport(), state_dir=state, consent=())
    sent_before = len(ingest.envelopes)  # a shutdown sends what is spooled
    _every_write_fails(monkeypatch)
    with pytest.raises(ClientError):
        telemetry.revoke_consent(Tier.PERFORMANCE)
    assert Tier.PERFORMANCE not in telemetry.consented_tiers()
    telemetry.counter("inference.requests").add(5, route="local", model="a@1")  # not kept
    assert not telemetry.flush()
    assert len(ingest.envelopes) == sent_before  # nothing leaves while not on disk
    assert deletions.tiers == []

    monkeypatch.undo()  # room again
    assert telemetry.flush()
    assert telemetry.wait_consent_durable(timeout=0)
    assert deletions.tiers == [Tier.PERFORMANCE]
    telemetry.collect(clock.advance(hours=1))  # the next window (and a carried one)
    telemetry.flush()
    assert len(ingest.envelopes) > sent_before
    _assert_without(Tier.PERFORMANCE, ingest.envelopes[sent_before:])


def test_in_background_mode_nothing_is_sent_while_a_revocation_is_not_on_disk(
    make_telemetry: MakeTelemetry,
    clock: FakeClock,
    ingest: MemoryIngest,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """The worker's sends go through the same guard: with the revocation's writes
    failing, an envelope spooled before it (still holding the tier) stays put."""
    state = tmp_path / "device"
    online = [False]

    def handle(batch: EnvelopeBatch) -> BatchResult:
        if not online[0]:
            raise TransportError("offline")
        return ingest.handle(batch)

    def transport() -> MemoryTransport:
        return MemoryTransport(handle, deletion_handler=_Deletions())

    first = make_telemetry(transport=transport(), state_dir=state)
    first.counter("inference.requests").add(3, route="local", model="a@1")
    assert len(first.collect(clock.advance(hours=1))) == 1
    first.shutdown(carry_open_window=False, timeout=1.0)  # offline: stays spooled

    second = make_telemetry(transport=transport(), state_dir=state, consent=(), mode="background")
    _every_write_fails(monkeypatch)
    second.revoke_consent(Tier.PERFORMANCE)  # in effect now; the worker's writes fail
    assert Tier.PERFORMANCE not in second.consented_tiers()
    assert not second.wait_consent_durable(timeout=1.0)
    online[0] = True
    assert not second.flush(timeout=2.0)
    assert ingest.envelopes == []

    monkeypatch.undo()
    assert second.flush(timeout=30.0)
    assert second.wait_consent_durable(timeout=30.0)
    assert len(ingest.envelopes) == 1
    _assert_without(Tier.PERFORMANCE, ingest.envelopes)


class _Deletions:
    """A deletion handler for `MemoryTransport`: records each request, answers it."""

    def __init__(self) -> None:
        self.tiers: list[Tier] = []

    def __call__(self, request: SignedDeletionRequest) -> DeletionReceipt:
        deletion = DeletionRequestV1.model_validate_json(request.payload)
        self.tiers.append(deletion.tier)
        return DeletionReceipt(request_id=deletion.request_id)


def _assert_without(tier: Tier, envelopes: list[EnvelopeV1]) -> None:
    for envelope in envelopes:
        assert tier not in envelope.consented_tiers
        assert all(a.tier is not tier for a in envelope.aggregates)
        assert all(r.tier is not tier for r in envelope.reports)
