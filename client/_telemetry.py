"""`Telemetry`: the facade an app embeds.

Processing order, top to bottom (`_collect_window`): close due windows (first, a
window the last run carried at shutdown that has ended since, with its own carried
cells, for the tiers consented at its cut and still consented: `client._carry`), take
every cell's value; skip a window that overlaps one
already released; per signal, ask the privacy gate (consent for its tier, then whether
the device's current key may send the tier under the attestation policy, then a
durable ledger charge), clamp and release through OpenDP or count the suppression; build the
envelope with the consent state and the next persisted sequence number; store it in
the encrypted spool. Sending (`_send_pending`) first delivers pending deletion
requests, then signs and seals envelopes at send time and hands batches to the
transport. Nothing is built, stored or sent for a window when no consented tier may be
sent with the device's key (in particular when no tier is consented).

Two modes, chosen once at construction: `background` runs one daemon thread that
closes windows on the wall clock and sends; `manual` runs no thread, and the caller (a
simulator with its own clock) calls `collect(now)` and `flush()`.
"""

from __future__ import annotations

import atexit
import logging
import os
import random
import threading
import time
import weakref
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from client._aggregation import CounterTable, HistogramSnapshot, HistogramTable
from client._carry import CarriedWindow, decode_carried, encode_carried, without_tiers
from client._client_report import ClientReporter
from client._clock import BudgetClock, ClockReading
from client._config import TelemetryConfig
from client._consent import ConsentError, ConsentStore, SignedConsentRecord
from client._deletion import deletion_request, sign_deletion
from client._domain import CellDomain
from client._drops import DropCounter, DropReason
from client._envelope import DeviceState, build_envelope
from client._errors import (
    ClientError,
    ConfigError,
    SignalKindError,
    SpoolError,
    TransportError,
    UnknownSignalError,
)
from client._fingerprint import ErrorFingerprinter, fingerprint_label
from client._instruments import Counter, Histogram
from client._keys import KeyStore, SoftwareKeyStore
from client._keystore_fallback import FallbackKeyStore, current_assurance, device_id_of
from client._ledger import LedgerError
from client._outbox import send_deletions, send_one_batch
from client._privacy import Admission, PrivacyGate
from client._prompt_queue import PromptQueue
from client._realtime import suspend_aware_monotonic
from client._redaction import MAX_PROMPT_CHARS, redact_findings
from client._release import (
    Release,
    Truth,
    release_counter,
    release_histogram,
)
from client._sealing import EnvelopeSealer
from client._send_hold import Held, SendHold
from client._shares import ReportSharer, share_counter, share_histogram, task_vdaf
from client._spool import Spool
from client._transport import HttpTransport, Transport
from client._window import Window, WindowClock, aligned_window
from client._worker import PeriodicWorker
from policies import AggregationTask, CounterSignal, HistogramSignal, Policy, aggregation_tasks
from schemas import (
    CounterAggregate,
    DeletionRequestV1,
    EnvelopeV1,
    HistogramAggregate,
    PrioReport,
    Tier,
    TotalAggregate,
    report_batch_start,
)

__all__ = ["CollectedWindow", "Telemetry"]

_log = logging.getLogger("client")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_Raw = list[int] | list[HistogramSnapshot]
"""One signal's raw cells: a counter's counts, or a histogram's snapshots."""


@dataclass(frozen=True, slots=True)
class CollectedWindow:
    """One released window: its envelope, and the clamped truth behind each aggregate.

    The truth is for tests and simulators only; it never leaves the device.
    """

    envelope: EnvelopeV1
    truth: list[Truth]


@dataclass(slots=True)
class _Signal:
    name: str
    spec: CounterSignal | HistogramSignal
    domain: CellDomain
    table: CounterTable | HistogramTable
    instrument: Counter | Histogram
    tasks: list[AggregationTask]
    """Its Prio3 tasks under the aggregate model; empty under the local model."""


@dataclass(slots=True)
class _LateWindow:
    """A window the last run carried that had ended before this run started: released
    on its own at the first collect, apart from the open window's cells."""

    window: Window
    cells: dict[str, _Raw]
    carried_at: ClockReading | None
    """When the window was cut short: what its release is charged as of
    (`client._carry`); None: now."""
    tiers: frozenset[Tier] | None
    """The tiers consented at the cut and not withdrawn since: the only ones it may
    release. None: a record that does not say (versions 1 and 2), the consent at the
    release decides."""


class Telemetry:
    """The client an app embeds: instruments in, sealed DP envelopes out.

    Setup (`Telemetry(...)`, `counter`, `histogram`) raises `ClientError` subclasses on
    bad configuration. Recording never raises; see `dropped()` for what was refused.
    """

    def __init__(self, config: TelemetryConfig) -> None:
        self._config = config
        self._policy = config.policy
        self._drops = DropCounter()
        self._reporter = ClientReporter(self._drops, config.clock)
        self._loaded = threading.Event()
        """Set once the device's state is loaded (`_load_state`): at once in manual mode,
        by the worker's first round in background mode."""
        self._consent_queue: list[tuple[Tier, bool]] = []
        """Consent calls made before the state was loaded: (tier, granted), in order."""
        self._transport: Transport = config.transport or HttpTransport(
            str(config.endpoint), timeout=config.timeout
        )
        # Real time for the privacy budget; the ingest's time, once known, for windows.
        real = suspend_aware_monotonic if config.mode == "background" else None
        monotonic = config.monotonic or real
        self._clock = BudgetClock(config.clock, monotonic, server_time=self._transport.server_time)
        self._tasks = aggregation_tasks(self._policy)
        self._sharer = self._make_sharer()
        self._signals = {name: self._make_signal(name, spec) for name, spec in _sorted(config)}
        self._warm_measurements()
        self._collect_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._purges: list[tuple[Tier, str, list[Tier]]] = []
        """Revocations whose deletion request and spool purge are still to run."""
        self._carry_purges: set[Tier] = set()
        """Tiers a consent decision discarded whose cells the carry record on disk may
        still hold (`_make_consent_durable`)."""
        self._consent_cond = threading.Condition()
        self._consent_asked = 0
        """Consent calls made so far (`wait_consent_durable`)."""
        self._consent_durable = 0
        """Of those, how many the worker has made durable."""
        self._consent_lost = False
        """Some consent call could not be written and never will be
        (`_write_queued_consent`): `wait_consent_durable` says False from then on."""
        self._decisions = dict.fromkeys(Tier, 0)
        """Consent decisions per tier so far (under `_consent_cond`): a queued prompt
        whose tier's consent changed while the worker redacted it is not counted."""
        self._tier_of: Mapping[str, Tier] = {
            name: spec.tier for name, spec in self._policy.signals.items()
        }
        self._fingerprinter = (
            ErrorFingerprinter(config.fingerprint_key) if config.fingerprint_key else None
        )
        self._prompts = PromptQueue(self._drops)
        # Chosen once: the worker redacts in background mode, the caller in manual mode.
        self._take_prompt: Callable[[str, str], str] = (
            self._queue_prompt if config.mode == "background" else self._count_prompt
        )
        self._window_observers: list[Callable[[], None]] = []
        self._late: _LateWindow | None = None
        self._late_lock = threading.Lock()
        """Guards `_late`: taken by the window closer, trimmed by consent calls."""
        self._failures = 0
        self._retry_at = 0.0
        self._hold = SendHold()
        self._held: Held | None = None
        """Why the last send stopped with envelopes kept for later (`client._send_hold`)."""
        self._flush_waiters: list[threading.Event] = []
        self._closed = False
        self._batch_lock = threading.Lock()
        self._sender_cut = False
        self._worker_ends_shutdown = False
        """`shutdown` returned while the worker was still loading the state: the worker
        finishes it once its load ends (`_end_late_shutdown`)."""
        self._load_failed = False
        """The worker's last load failed (under `_consent_cond`): `shutdown` then
        writes the queued consent calls itself rather than hand them to the worker."""
        """Set (under `_batch_lock`) when `shutdown` returns: its sender thread starts no
        batch after that (`_take_batch`)."""
        self._worker: PeriodicWorker | None = None
        ref = weakref.ref(self)

        def _after_fork_in_child() -> None:
            telemetry = ref()
            if telemetry is not None:
                telemetry._reset_locks_after_fork()

        os.register_at_fork(after_in_child=_after_fork_in_child)
        if config.mode == "manual":
            # A simulator records right after construction, on its own clock: loaded now.
            self._load_state()
            self._loaded.set()
        else:
            # No disk read or write here: the worker's first round loads the state.
            self._worker = PeriodicWorker(self._tick, name="quietwire-telemetry")
            self._worker.start()

            def _at_exit() -> None:
                telemetry = ref()
                if telemetry is not None:
                    telemetry.shutdown(timeout=2.0)

            # Like OTel's MeterProvider, the client is shut down when the app exits: the
            # windows that ended are released and the open one is carried to the next run.
            atexit.register(_at_exit)

    # State the device keeps on disk: loaded by the constructor in manual mode, by the
    # worker's first round in background mode (`_load_state`).
    _key_store: KeyStore
    _sealer: EnvelopeSealer
    _device_id: str
    _state: DeviceState
    _windows: WindowClock
    _outbox: Spool
    _gate: PrivacyGate

    def _load_state(self) -> None:
        """Read (or create) the device key, state, spool, carried cells, consent and
        ledger. Disk I/O: the constructor's in manual mode, the worker's otherwise."""
        config = self._config
        key_store = config.key_store or SoftwareKeyStore(config.state_dir)
        if isinstance(key_store, FallbackKeyStore):
            key_store.attach_drops(self._drops)
        # Tiers a software key may send: the attestation policy's, minus any a fallback
        # store was told to keep for its TPM.
        tpm_only = key_store.tpm_only_tiers if isinstance(key_store, FallbackKeyStore) else ()
        software_tiers = frozenset(t for t in config.software_tiers if t.value not in tpm_only)
        sealer = EnvelopeSealer(
            key_store, config.ingest_public_key, self._drops, software_tiers=software_tiers
        )
        state = DeviceState(config.state_dir)
        windows = WindowClock(self._policy.window_seconds, config.clock())
        outbox = Spool(config.state_dir, config.max_pending, self._drops)
        # Last: it takes the ledger's lock, which only `shutdown` gives back.
        gate = PrivacyGate(
            config.state_dir,
            self._policy,
            # Consent records are signed on the app's thread: never by a TPM, which may
            # make it wait (they stay on the device; envelopes are signed by the worker).
            key_store.software if isinstance(key_store, FallbackKeyStore) else key_store,
            config.clock,
            self._drops,
            software_tiers,
            budget_clock=self._clock,
            evidence=state.ledger_evidence(),
        )
        # A decision takes effect in memory first, then is written: by the worker in
        # background mode (`_run_purges`), before the call returns in manual mode
        # (`_consent_now`). So a revocation a full disk cannot write is in effect all
        # the same, and retried (`_make_consent_durable`).
        gate.consent.defer_writes()
        gate.consent.before_revocation = lambda record, consent_hash: self._store_deletion_request(
            outbox, key_store, record, consent_hash
        )
        self._key_store, self._sealer, self._state = key_store, sealer, state
        # A TPM store names the device after its EK; a software key is self-certifying.
        self._device_id = device_id_of(key_store)  # no I/O: see `FallbackKeyStore.current`
        self._windows, self._outbox, self._gate = windows, outbox, gate
        if config.mode == "background":
            self._discard_loading_records()
        self._restore_carried()

    def _start_up(self) -> None:
        """The worker's first round: load the state, then apply the consent calls made
        meanwhile, in order. Until then nothing counted as consented."""
        with self._collect_lock:
            self._load_state()
            with self._consent_cond:
                # Made before the state was known: not consented as far as the client
                # knew (dropped above); the calls made meanwhile take effect now.
                queued, self._consent_queue = self._consent_queue, []
                for tier, granted in queued:
                    try:
                        self._apply_consent(tier, granted)
                    except ConsentError:
                        _log.exception("applying a consent call made during start-up failed")
                self._loaded.set()

    def _discard_loading_records(self) -> None:
        """Drop what was recorded before the state (consent above all) was loaded,
        counted as `state_loading`: one per counted unit and per histogram value."""
        dropped = len(self._prompts.drain())
        for raw in self._take_open().values():
            dropped += _units(raw)
        if dropped:
            self._drops.add(DropReason.STATE_LOADING, dropped)

    def ready(self, timeout: float | None = None) -> bool:
        """Wait until the device's state is loaded; True if it is.

        Manual mode: always True (the constructor loaded it). Background mode: the
        worker loads it first thing; until then recordings are dropped
        (`state_loading`), consent calls are queued and applied in order after the
        load, and state queries answer from what is known (see each). It blocks: not
        for the app's UI thread.
        """
        return self._loaded.wait(timeout)

    def _require_state(self) -> None:
        """For the few calls that need the state: wait for it (see `ready`)."""
        if not self._loaded.wait(self._config.timeout):
            raise ClientError("the device's state is not loaded yet (Telemetry.ready)")

    # -- setup-time API --------------------------------------------------------------

    @property
    def device_id(self) -> str:
        """The id envelopes claim, derived from the key that signs now (no I/O).

        Background mode with the default key (no `key_store` given): the key is read
        from disk at start-up, and this waits for it (`ready`); not for the UI thread.
        """
        if self._config.key_store is not None:
            return device_id_of(self._config.key_store)
        self._require_state()
        return device_id_of(self._key_store)

    def counter(self, name: str) -> Counter:
        """The counter instrument for signal `name` of the policy."""
        return self._instrument(name, "counter")  # type: ignore[return-value]

    def histogram(self, name: str) -> Histogram:
        """The histogram instrument for signal `name` of the policy."""
        return self._instrument(name, "histogram")  # type: ignore[return-value]

    def record(self, name: str, value: float, /, **attributes: object) -> None:
        """Add to a counter or record in a histogram by signal name. Never raises.

        An unknown name is dropped and counted (`unknown_signal`). Positional-only, so an
        attribute named `name` or `value` is an attribute like any other.
        """
        signal = self._signal_named(name)
        if signal is None:
            self._drops.add(DropReason.UNKNOWN_SIGNAL)
        elif isinstance(signal.instrument, Counter):
            signal.instrument.add(value, **attributes)  # type: ignore[arg-type]
        else:
            signal.instrument.record(value, **attributes)

    def _signal_named(self, name: str) -> _Signal | None:
        """The policy's signal called `name`, or None. Never raises."""
        try:
            return self._signals.get(name)
        except Exception:  # unhashable, or a str subclass whose hash or == raises
            return None

    def dropped(self) -> dict[str, int]:
        """Counts of everything dropped so far, by reason."""
        return self._drops.snapshot()

    @property
    def policy(self) -> Policy:
        """The policy this client records under."""
        return self._policy

    @property
    def drops(self) -> DropCounter:
        """The loss counter `dropped()` reads (for adapters such as `client.otel`)."""
        return self._drops

    def add_window_observer(self, observer: Callable[[], None]) -> None:
        """Call `observer()` just before the open window's cells are read (when windows
        close, and at `shutdown` before they are carried), on the thread that closes
        windows (the worker in background mode, `collect`'s or `shutdown`'s caller
        otherwise). `client.otel` polls observable instruments there. It must return
        quickly and not raise; a failure is logged."""
        self._window_observers.append(observer)

    @property
    def pending(self) -> int:
        """Envelopes released but not yet answered by the ingest (in the spool); 0 before
        the spool is loaded (`ready`)."""
        return len(self._outbox) if self._loaded.is_set() else 0

    # -- privacy -----------------------------------------------------------------------

    def grant_consent(self, tier: Tier | str) -> None:
        """Record the user's consent for `tier`: its signals are released from now on.

        Each tier needs its own grant (`content` above all). What was recorded before
        the grant (the open window, a carried window, queued prompts) is discarded,
        never released. Manual mode: the signed record is durable when this returns;
        raises `SpoolError` if the carried window cannot be purged of the tier first
        (nothing granted then), `ConsentError` if the record cannot be written (the
        grant is then in effect in memory, retried by the next consent call, `flush`
        or `shutdown`, and nothing is sent until it is on disk). Background
        mode: the grant takes effect when this returns and the worker writes it at once
        (`wait_consent_durable` waits for that); a failure to write is logged and
        retried. Once the worker has stopped (`shutdown`), it is written before this
        returns, as in manual mode (`ClientError` if it cannot be).
        """
        tier = _tier(tier)
        if self._decides_in_background():
            self._consent_call(tier, granted=True)
        else:
            self._consent_now(tier, granted=True)

    def revoke_consent(self, tier: Tier | str) -> None:
        """Withdraw consent for `tier`: nothing of it is released or sent any more.

        Purges the tier's data from the open window and from every envelope still in
        the spool, and queues a signed deletion request (sent before any envelope) that
        the ingest records and the warehouse acts on by deleting this device's rows of
        the tier. Manual mode: all of it is on disk when this returns. Raises
        `ClientError`: `ConsentError` if the revocation cannot be written, `SpoolError`
        if the carried window cannot be purged, the deletion request stored or the
        spool purged (a full disk, say). Either way the revocation is in effect in
        memory (nothing of the tier is recorded, released or sent any more) and what
        is not yet on disk is retried by the next consent call, `flush` or `shutdown`;
        nothing is sent until it is on disk (a spooled envelope may still hold the
        tier), and until then a restart loads the previous decision.

        Background mode: the revocation takes effect in memory when this returns (no
        window releases the tier, no send carries it); the worker then strips the tier
        from the carried window, stores the deletion request, writes the revocation and
        purges the spool, in that order, before it sends anything (`wait_consent_durable`
        waits for the writes). Until they are on disk a crash loads the previous
        decision again: see docs/client.md. Once the worker has stopped (`shutdown`),
        all of it is written before this returns (`ClientError` if it cannot be).
        """
        tier = _tier(tier)
        if self._decides_in_background():
            self._consent_call(tier, granted=False)
        else:
            self._consent_now(tier, granted=False)

    def _decides_in_background(self) -> bool:
        """Whether the worker writes consent decisions: background mode, until
        `shutdown` (or while its thread runs at all)."""
        worker = self._worker
        return worker is not None and not self._closed and worker.is_alive()

    def _consent_call(self, tier: Tier, *, granted: bool) -> None:
        """Background mode: a consent decision in memory now, written by the worker;
        queued for the worker if the state is not loaded yet."""
        worker = self._worker
        assert worker is not None
        with self._consent_cond:
            if self._loaded.is_set():
                self._apply_consent(tier, granted)
            else:
                self._consent_queue.append((tier, granted))
            self._consent_asked += 1
        if self._closed or not worker.is_alive():
            # `shutdown` began meanwhile, and its last writes may be over: nobody else
            # would write this one.
            self._write_consent_now()
        else:
            worker.wake()

    def _consent_now(self, tier: Tier, *, granted: bool) -> None:
        """Manual mode, and background mode once the worker no longer runs (after
        `shutdown`: nothing would write a decision left in memory, and the next start
        would load the previous one): the decision and what it purges are on disk when
        this returns. Raises `ClientError` (`ConsentError`, `SpoolError`) if not.

        A revocation is in effect in memory before anything is written, as in
        background mode: a disk that cannot take the carried window's purge, the
        deletion request or the decision (full, say) raises, and the tier is revoked
        all the same (nothing of it is recorded, released or sent); the writes are
        retried by the next consent call, `flush` or `shutdown`, carried window first
        (`_make_consent_durable`). A grant the carried window's purge fails for is not
        in effect: it fails before anything is decided."""
        with self._collect_lock:  # after a start-up or a shutdown still running
            loaded = self._loaded.is_set()
            if loaded and granted and not self._gate.consent.allows(tier):
                # Before the decision is written (manual mode writes it at once): a
                # crash in between cannot bring back what it discards.
                _purge_carried(self._outbox, {tier}, self._tier_of)
            with self._consent_cond:
                if loaded:
                    self._apply_consent(tier, granted)
                else:
                    self._consent_queue.append((tier, granted))
                self._consent_asked += 1
        self._write_consent_now()

    def _write_consent_now(self) -> None:
        """Write every consent decision made so far, on this thread (`ClientError`)."""
        with self._collect_lock:  # a start-up may load the state meanwhile: not both
            if self._loaded.is_set():
                self._make_consent_durable()
            else:
                self._write_queued_consent()

    def _apply_consent(self, tier: Tier, granted: bool) -> None:
        """A consent decision in memory (under `_consent_cond`); `_make_consent_durable`
        writes it. What the tier recorded before a decision that changes it is
        discarded first, so nothing of it can be in a window released under the new
        decision (no lock shared with the worker)."""
        if granted:
            if not self._gate.consent.allows(tier):
                self._discard_recorded(tier)
            # Even when in effect here: the file may hold a newer revocation by now.
            self._gate.grant(tier)
        else:
            self._gate.revoke(tier)  # windows and sends see it now
            self._discard_recorded(tier)
            self._queue_purge(tier)

    def wait_consent_durable(self, timeout: float | None = None) -> bool:
        """Wait until every `grant_consent`/`revoke_consent` made so far is on disk (with
        a revocation's deletion request and spool purge); True if they are.

        Background mode only waits (the worker writes them at the start of its next
        round); manual mode has written them already. False at once, and from then on,
        once a call is known lost: the state never loaded and the calls queued meanwhile
        could not be written at `shutdown` either (`_write_queued_consent`), or the
        worker loaded the state after `shutdown` returned and could not write them
        (`_end_late_shutdown`). It blocks:
        never call it on the app's UI thread.
        """
        with self._consent_cond:
            asked = self._consent_asked
            self._consent_cond.wait_for(
                lambda: self._consent_durable >= asked or self._consent_lost, timeout=timeout
            )
            return self._consent_durable >= asked and not self._consent_lost

    def _queue_purge(self, tier: Tier) -> None:
        """Queue the spool purge of `tier` (its deletion request is stored by
        `ConsentStore.before_revocation`, before the revocation is written)."""
        consent_hash = self._gate.consent.consent_hash()
        with self._send_lock:
            self._purges.append((tier, consent_hash, self._gate.consented()))

    def _store_deletion_request(
        self,
        spool: Spool,
        key_store: KeyStore,
        record: SignedConsentRecord,
        consent_hash: str,
    ) -> None:
        """Store the (unsigned) deletion request of a new revocation before the
        revocation is written (`ConsentStore.before_revocation`; `SpoolError`). It is
        signed by the sending thread when sent: signing may wait on a TPM."""
        tier = record.record.tier
        request = self._deletion_request(device_id_of(key_store), tier, record, consent_hash)
        try:
            spool.put_deletion(request, request.request_id)
        except (ClientError, OSError) as exc:
            raise SpoolError(f"{tier.value}: {exc}") from exc

    def _deletion_request(
        self, device_id: str, tier: Tier, record: SignedConsentRecord, consent_hash: str
    ) -> DeletionRequestV1:
        """The (unsigned) deletion request of a new revocation."""
        return deletion_request(
            device_id,
            region=self._config.region,
            tier=tier,
            requested_at=self._config.clock(),
            consent_hash=consent_hash,
            consent_version=record.record.version,
        )

    def _run_purges(self) -> bool:
        """The worker's (and a send's) part of consent: `_make_consent_durable`. A
        failure is logged and tried again next time; the decisions stay in effect.
        True if every decision made so far, and what it purges, is on disk."""
        try:
            with self._collect_lock:
                self._make_consent_durable()
        except ClientError as exc:
            _log.error("consent not yet durable: %s", exc)
            return False
        return True

    def _make_consent_durable(self) -> None:
        """Make the consent decisions made so far durable, in order: strip the tiers
        they discarded from the carried window on disk (first: once a decision is
        written, a crash must not bring back what it discarded), write `consent.json`
        (each new revocation's deletion request is stored just before, under the
        file's lock: `ConsentStore.before_revocation`), then strip revoked tiers from
        the spool. Raises `ClientError` at the first step that fails; what is left stays
        queued for the next call.

        The caller holds `_collect_lock`: no window is released or carried meanwhile,
        and two threads (the worker and a flush, the shutdown's sender and a consent
        call) never interleave, so one cannot report as durable what the other is
        still writing."""
        consent = self._gate.consent
        with self._consent_cond:
            # One instant for all three (decisions are made under `_consent_cond`): what
            # is written below is exactly the decisions whose carry purges and spool
            # purges are taken here, never a later one before its own purge.
            asked = self._consent_asked
            upto = consent.unpersisted
            with self._send_lock:
                carry, self._carry_purges = self._carry_purges, set()
                purges, self._purges = self._purges, []
        try:
            _purge_carried(self._outbox, carry, self._tier_of)
            consent.persist(upto)
        except ClientError:
            with self._send_lock:
                self._carry_purges |= carry
                self._purges[:0] = purges
            raise
        for i, (tier, consent_hash, consented) in enumerate(purges):
            try:
                self._outbox.purge_tier(tier, consent_hash=consent_hash, consented_tiers=consented)
            except (ClientError, OSError) as exc:
                with self._send_lock:
                    self._purges[:0] = purges[i:]
                raise SpoolError(f"cannot purge the spool of {tier.value}: {exc}") from exc
        self._mark_durable(asked)

    def _mark_durable(self, asked: int) -> None:
        """The first `asked` consent calls are on disk (`wait_consent_durable`)."""
        with self._consent_cond:
            self._consent_durable = max(self._consent_durable, asked)
            self._consent_cond.notify_all()

    def _write_queued_consent(self) -> None:
        """Write the consent calls queued while the state never loaded, without it
        (the worker stopped, or `shutdown` found the state unreadable).

        Chosen over dropping them with a log line: the state fails to load above all
        because another `Telemetry` on the same state directory holds the privacy
        ledger's lock, and the consent history, the deletion requests, the spool and
        the carried window need no such lock. So a revocation reaches the disk (with
        its deletion request; the spool and the carried window purged), added on top
        of the file as it is (`ConsentStore`), and the next start loads it; a
        `Telemetry` still running on the directory adopts it at its next consent write
        (which adds its own decisions on top). Raises `ClientError` if they cannot be
        written either (an unreadable consent file, say): they are logged at error
        level by `shutdown`, and `wait_consent_durable` says False from then on. The caller holds
        `_collect_lock` (see `_make_consent_durable`)."""
        with self._consent_cond:
            queued, self._consent_queue = self._consent_queue, []
            asked = self._consent_asked
        try:
            if queued:
                self._write_consent_without_state(queued)
        except (ClientError, OSError) as exc:
            with self._consent_cond:
                self._consent_lost = True
                self._consent_cond.notify_all()
            raise ConsentError(f"consent calls not written: {exc}") from exc
        self._mark_durable(asked)

    def _write_consent_without_state(self, queued: list[tuple[Tier, bool]]) -> None:
        """`_write_queued_consent`'s work: the consent history, the carried window and
        the spool, opened on their own (no ledger), each decision as manual mode makes
        it."""
        config = self._config
        key_store = config.key_store or SoftwareKeyStore(config.state_dir)
        # Signed as consent is always signed: never by a TPM (see `_load_state`).
        signer = key_store.software if isinstance(key_store, FallbackKeyStore) else key_store
        consent = ConsentStore(
            config.state_dir / PrivacyGate.CONSENT_FILE,
            signer.sign,
            self._policy,
            clock=config.clock,
        )
        spool = Spool(config.state_dir, config.max_pending, self._drops)
        consent.before_revocation = lambda record, consent_hash: self._store_deletion_request(
            spool, key_store, record, consent_hash
        )
        for tier, granted in queued:
            if granted and consent.allows(tier):
                continue
            _purge_carried(spool, {tier}, self._tier_of)  # before the decision is written
            if granted:
                consent.grant(tier)
                continue
            consent.revoke(tier)  # its deletion request stored first (`before_revocation`)
            consent_hash = consent.consent_hash()
            allowed = [t for t in Tier if consent.allows(t)]
            spool.purge_tier(tier, consent_hash=consent_hash, consented_tiers=allowed)

    def consented_tiers(self) -> list[Tier]:
        """Tiers whose data may leave the device now ([] until the consent is loaded)."""
        return self._gate.consented() if self._loaded.is_set() else []

    def ledger_problem(self) -> LedgerError | None:
        """Why the privacy ledger refuses every release (a missing, emptied, rolled back
        or corrupt journal), or None (also before the ledger is loaded: `ready`). It
        lasts until `reset_ledger`."""
        return self._gate.ledger.problem if self._loaded.is_set() else None

    def reset_ledger(self, reason: str) -> None:
        """Operator action: acknowledge that the privacy ledger was lost or damaged.

        The damaged files are kept aside; the new ledger treats the current UTC day and
        the last 24 real hours as fully spent, and keeps at least the lifetime spend the
        device state shows (docs/privacy.md). `reason` is recorded in the ledger. Raises
        `LedgerError` if the ledger cannot be written. Writes to disk, and first waits
        for the state to be loaded (`ready`): not for the UI thread.
        """
        self._require_state()
        with self._collect_lock:
            self._gate.reset_ledger(self._clock.now(), reason=reason)

    def privacy_spent(self, at: datetime | None = None) -> tuple[float, float]:
        """(epsilon spent on the UTC day of `at`, epsilon spent over the device's life).

        Background mode: waits for the ledger to be loaded (`ready`) if it is not yet.
        """
        self._require_state()
        ledger = self._gate.ledger
        return ledger.spent_today(at or self._config.clock()), ledger.spent_lifetime()

    def record_exception(self, exc: BaseException, /, **labels: object) -> None:
        """Count `exc` under its error fingerprint in the policy's fingerprint signal.

        The fingerprint (keyed with `fingerprint_key`) is mapped into the signal's
        declared domain: a known fingerprint, its hash bucket, or `other`; the message,
        arguments and paths never leave. `labels` are the signal's other labels (e.g.
        `route=`, `model=`), validated as every counter's: an undeclared label is dropped
        and counted, a value outside its domain counts as `other`; a `fingerprint` label
        passed here is undeclared (the fingerprint is computed); so is one named `exc`
        (positional-only). Never raises: without a key or a fingerprint signal in the
        policy the exception is dropped and counted.
        """
        try:
            spec = self._policy.fingerprints
            signal = self._signals.get(spec.signal) if spec is not None else None
            if spec is None or signal is None or not isinstance(signal.instrument, Counter):
                self._drops.add(DropReason.UNKNOWN_SIGNAL)
                return
            if self._fingerprinter is None:
                self._drops.add(DropReason.NO_FINGERPRINT_KEY)
                return
            label = fingerprint_label(
                self._fingerprinter.fingerprint(exc), signal.spec.attributes[spec.label]
            )
            if spec.label in labels:
                del labels[spec.label]
                self._drops.add(DropReason.UNDECLARED_LABEL)
            signal.instrument.add(1, **labels, **{spec.label: label})
        except Exception:  # the host app's exception handler must never fail here
            self._drops.add(DropReason.WRONG_TYPE)

    def record_prompt(self, text: str, signal: str = "prompt.personal_data") -> str:
        """Count the kinds of personal data found in `text` (content tier).

        `signal` is a counter whose one attribute's domain lists finding kinds
        (`client._redaction.FINDING_KINDS`); each kind counts at most once per prompt.
        It is released only with the `content` tier's own consent, and only while the
        device's key may send that tier (the default attestation policy needs a TPM key
        for it: see `TelemetryConfig.software_tiers`). Neither `text` nor its redaction
        is stored or sent. Never raises: a non-string or an unknown signal is dropped
        and counted; a prompt longer than `MAX_PROMPT_CHARS` is dropped
        (`prompt_too_long`) and "" returned.

        Background mode: the prompt is queued (`client._prompt_queue`, bounded: when
        full it is dropped, `prompt_queue_full`) and redacted and counted by the worker,
        so the caller's cost does not depend on the text; returns "". A consent decision
        on the signal's tier discards the prompts queued before it (`prompt_discarded`).
        Manual mode: redacted and counted now, on the caller's thread; returns the
        redacted text (for the app's own use).
        """
        try:
            if not isinstance(text, str):
                self._drops.add(DropReason.WRONG_TYPE)
                return ""
            if len(text) > MAX_PROMPT_CHARS:
                self._drops.add(DropReason.PROMPT_TOO_LONG)
                return ""
            return self._take_prompt(text, signal)
        except Exception:  # a str subclass whose len() raises, say: never the app's problem
            self._drops.add(DropReason.WRONG_TYPE)
            return ""

    def _queue_prompt(self, text: str, signal: str) -> str:
        """Background mode: hand the prompt to the worker (see `record_prompt`). The
        queue holds plain `str` names only (the policy's own, when it knows the signal):
        a consent decision looks them up (`_discard_recorded`), and must not raise."""
        target = self._signal_named(signal)
        name = target.name if target is not None else signal if type(signal) is str else None
        if name is None:
            self._drops.add(DropReason.UNKNOWN_SIGNAL)
        elif self._prompts.offer(text, name) and self._prompts.half_full:
            worker = self._worker
            if worker is not None:
                worker.wake()
        return ""

    def _count_prompt(
        self, text: str, signal: str, decisions: Mapping[Tier, int] | None = None
    ) -> str:
        """Redact `text` and count its finding kinds; the redacted text. Never raises.

        `decisions`: the consent decisions per tier when the worker took the prompt
        from its queue. If its tier's changed since (a grant or a revocation made while
        it was redacted), the prompt is discarded (`prompt_discarded`): it was recorded
        before the decision, and must not count in a window released under it."""
        try:
            redacted, found = redact_findings(text)
            target = self._signal_named(signal)
            if target is None or not isinstance(target.instrument, Counter):
                self._drops.add(DropReason.UNKNOWN_SIGNAL)
                return redacted
            (label,) = target.spec.attributes or {"kind": []}
            if decisions is None:
                _count_kinds(target.instrument, label, found)
                return redacted
            tier = target.spec.tier
            with self._consent_cond:  # no decision between the check and the count
                if decisions[tier] != self._decisions[tier]:
                    self._drops.add(DropReason.PROMPT_DISCARDED)
                    return ""
                _count_kinds(target.instrument, label, found)
            return redacted
        except Exception:
            self._drops.add(DropReason.WRONG_TYPE)
            return ""

    def _count_queued_prompts(self) -> None:
        """The worker's part of `record_prompt`: before windows close, so each prompt
        counts in the window open when it was recorded. Taken with the consent decisions
        they were queued under (a decision discards the prompts still queued: see
        `_discard_recorded`); redacted without any lock held."""
        with self._consent_cond:
            decisions = dict(self._decisions)
            queued = self._prompts.drain()
        for text, signal in queued:
            self._count_prompt(text, signal, decisions)

    def _discard_recorded(self, tier: Tier) -> None:
        """Discard what `tier` recorded before a consent decision (under
        `_consent_cond`): the open window's cells, those of a carried window (in memory
        now, on disk by `_make_consent_durable`) and the prompts still queued for the
        worker (counted `prompt_discarded`; one it is redacting now is discarded when it
        sees the decision)."""
        self._discard_open_window(tier)
        self._decisions[tier] += 1
        dropped = self._prompts.discard(lambda signal: self._tier_of.get(signal) is tier)
        if dropped:
            self._drops.add(DropReason.PROMPT_DISCARDED, dropped)
        with self._send_lock:
            self._carry_purges.add(tier)

    def _discard_open_window(self, tier: Tier) -> None:
        """Discard what `tier` recorded before now: the open window's cells, and those
        of a carried window waiting for its late release, which no longer releases the
        tier at all (its consent did not last from the cut to the release)."""
        for signal in self._signals.values():
            if signal.spec.tier is tier:
                signal.table.take()
        with self._late_lock:
            late = self._late
            if late is not None:
                cells = late.cells
                for name in [n for n in cells if self._signals[n].spec.tier is tier]:
                    del cells[name]
                late.tiers = (late.tiers if late.tiers is not None else frozenset(Tier)) - {tier}

    # -- windows -----------------------------------------------------------------------

    def collect(self, now: datetime | None = None) -> list[EnvelopeV1]:
        """Close and release every window that ended by `now`; queue the envelopes.

        In background mode only the worker closes windows: called from another thread
        this wakes it and returns [] at once (`flush` waits for the result).
        """
        return [w.envelope for w in self.collect_with_truth(now)]

    def collect_with_truth(self, now: datetime | None = None) -> list[CollectedWindow]:
        """As `collect`, also returning the clamped truth (tests and simulation only)."""
        if self._worker is not None and not self._worker.on_worker_thread():
            # Background mode: closing a window writes to disk and may wait on a TPM;
            # the worker does it, never the app's thread.
            self._worker.wake()
            return []
        if self._worker is None:
            self._refresh_key()
        if self._clock.wants_ingest_time():
            self._transport.probe_time()  # so no window closes ahead of the ingest's clock
        now = now if now is not None else self._clock.now()
        with self._collect_lock:
            # A late carried window alone never waits: its charge is stamped at an
            # instant between its cut and now (`PrivacyGate.late_reading`).
            due = self._windows.open_window.end <= now
            if due and self._gate.hold_seconds(self._clock.read(now)):
                return []  # the last 24 real hours make room within minutes: wait for it
            windows = self._windows.close_until(now)
            return self._release_windows(windows, now)

    def _release_windows(self, windows: list[Window], now: datetime) -> list[CollectedWindow]:
        """Release a late carried window (if one waits), then `windows`, oldest first."""
        out = []
        late = self._late
        if late is not None:
            # The last run's cells, on their own: nothing of this run is read.
            collected = self._release_late(late, now)
            if collected is not None:
                out.append(collected)
        if windows:
            self._observe_window_close()
        for i, window in enumerate(windows):
            # What was recorded belongs to the window that was open: the oldest one.
            # Later windows in the list saw no recording at all, and release zeros.
            collected = self._collect_window(window, now, self._take_open if i == 0 else None)
            if collected is not None:
                out.append(collected)
        if windows or late is not None:
            try:
                # The carried cells are in a released window now (the late one, or the
                # open one they were added back into): their record is done with.
                self._outbox.drop_carried()
                self._outbox.expire(now, self._policy.retention.for_tier)
            except (ClientError, OSError) as exc:
                # A full disk, say. The windows above are queued: raising now would
                # tell the app (manual mode) they were not. A carried record left
                # behind waits for a late release at the next start, which discards it
                # (`window_already_released`) if its window was numbered, and sends it
                # once if it was not (its state could not be written either). The
                # spool's retention is applied again at the next release.
                _log.error("after releasing windows: %s; retried at the next release", exc)
        return out

    def _release_late(self, late: _LateWindow, now: datetime) -> CollectedWindow | None:
        """Release the carried window late, for the tiers consented both at its cut and
        now only: a tier granted since never covered that window (none at all: nothing
        is built, as for any window without consent). Nor the tiers whose retention
        ended meanwhile: the spool would strip them before they are sent, so charging
        them would spend budget on nothing (none left: nothing is sent, `expired`).
        The tiers left out are neither released nor charged."""
        retention = self._policy.retention.for_tier
        expired = frozenset(
            t for t in Tier if late.window.end <= now - timedelta(days=retention(t))
        )
        cut = late.tiers if late.tiers is not None else frozenset(Tier)
        covered = cut & frozenset(self._gate.consented())
        if not covered - expired:
            self._take_late()
            if covered:
                self._drops.add(DropReason.EXPIRED)
            return None
        # Every other tier is skipped, even one granted while this runs (background mode).
        skip = frozenset(Tier) - (covered - expired)
        reading = self._clock.read(now)
        if late.carried_at is not None:
            reading = self._gate.late_reading(late.carried_at, reading, skip=skip)
        return self._collect_window(
            late.window, now, self._take_late, charged_at=reading, skip_tiers=skip
        )

    def _observe_window_close(self) -> None:
        for observer in self._window_observers:
            try:
                observer()
            except Exception:
                _log.exception("a window observer failed")

    def _take_open(self) -> dict[str, _Raw]:
        """Read and reset every cell of the open window."""
        return {name: signal.table.take() for name, signal in self._signals.items()}

    def _take_late(self) -> dict[str, _Raw]:
        """The late carried window's cells, once (then it no longer waits)."""
        with self._late_lock:
            late, self._late = self._late, None
        return late.cells if late is not None else {}

    def _collect_window(
        self,
        window: Window,
        now: datetime,
        cells: Callable[[], dict[str, _Raw]] | None,
        *,
        charged_at: ClockReading | None = None,
        skip_tiers: frozenset[Tier] = frozenset(),
    ) -> CollectedWindow | None:
        """Release `window` with the cells `cells()` returns (a signal missing from them,
        or every signal when `cells` is None, is released all zero). `charged_at`: the
        real time the charge is made as of (a late carried window's cut), else now.
        `skip_tiers`: tiers not released (nor charged) at all."""
        consented = self._gate.consented()
        # Read without I/O: a fallback store that lost its TPM signs in software now.
        assurance = current_assurance(self._key_store)
        # Every cell is taken, consented or not, after the consent is read (a grant made
        # meanwhile discarded them first): what a tier recorded without consent is
        # discarded here, never released and never charged.
        raw_cells = cells() if cells is not None else {}
        sendable = any(self._gate.may_send(t, assurance) for t in consented if t not in skip_tiers)
        released = self._state.last_window_end()
        if released is not None and window.start < released:
            # Overlaps a window already released (an older version released partial
            # windows; or the policy's window length changed): a second release would
            # make the device weigh twice in that window. Discarded, uncharged.
            if sendable:
                self._drops.add(DropReason.WINDOW_ALREADY_RELEASED)
            return None
        candidates = [
            (signal, raw_cells.get(signal.name))
            for signal in self._signals.values()
            if signal.spec.tier in consented and signal.spec.tier not in skip_tiers
        ]
        # Aggregate-model signals contribute once per batch (the policy's aligned window):
        # a window of a batch already reported sends none, uncharged and counted (the
        # ingest would refuse a second contribution).
        batch_start = report_batch_start(window.start, self._policy.window_seconds)
        reported = self._state.reported_batch()
        if reported is not None and reported >= batch_start:
            for signal, _ in candidates:
                if signal.tasks:
                    self._drops.add(DropReason.BATCH_ALREADY_REPORTED)
            candidates = [(s, raw) for s, raw in candidates if not s.tasks]
        admissions = self._gate.admit_window(
            [(s.name, s.spec.tier) for s, _ in candidates],
            window.start,
            assurance=assurance,
            now=charged_at if charged_at is not None else self._clock.read(now),
        )
        aggregates: list[CounterAggregate | HistogramAggregate | TotalAggregate] = []
        reports: list[PrioReport] = []
        truth: list[Truth] = []
        suppressed: dict[str, int] = {}
        for (signal, raw), admission in zip(candidates, admissions, strict=True):
            if admission is Admission.SUPPRESSED:
                suppressed[signal.name] = 1
            elif admission is Admission.RELEASE:
                release = self._release_signal(signal, raw, batch_start)
                if release is not None:
                    aggregates.extend(release.aggregates)
                    reports.extend(release.reports)
                    truth.extend(release.truth)
            # NEEDS_TPM: the ingest would refuse it: discarded, uncharged, counted.
        if not sendable:
            # Nothing this key may send: not even an empty envelope (it would say the
            # app ran, which no consent that can be honoured covers).
            return None
        try:
            sequence = self._state.next_sequence(
                window.end,
                reported_batch=batch_start if reports else None,
                ledger_spent=self._gate.ledger.lifetime_mark(),
                at=now,  # the envelope's sent_at
            )
        except ClientError as exc:
            # The device state cannot be written (a full disk, say): no number, no
            # envelope. What the ledger charged stays charged (never an envelope sent
            # uncharged); the window is counted as lost rather than raised into the
            # app's `collect` (or the worker's tick, losing the windows after it).
            _log.error("window %s not sent: %s", window.start.isoformat(), exc)
            self._drops.add(DropReason.STATE_WRITE_FAILED)
            return None
        envelope = build_envelope(
            device_id=self._device_id,
            sequence=sequence,
            window_start=window.start,
            window_end=window.end,
            sent_at=now,
            region=self._config.region,
            policy_hash=self._policy.content_hash,
            app=self._config.app,
            aggregates=aggregates,
            reports=reports,
            consent_hash=self._gate.consent.consent_hash(),
            consented_tiers=consented,
            suppressed=suppressed,
        )
        self._outbox.put(envelope)
        return CollectedWindow(envelope, truth)

    def _release_signal(
        self,
        signal: _Signal,
        raw: _Raw | None,
        batch_start: datetime,
    ) -> Release | None:
        try:
            if isinstance(signal.table, CounterTable):
                counts = raw if raw is not None else [0] * signal.domain.size
                return self._release_counter(signal, counts, batch_start)  # type: ignore[arg-type]
            snaps = raw if raw is not None else _empty_histogram(signal)
            return self._release_histogram(signal, snaps, batch_start)  # type: ignore[arg-type]
        except Exception:
            # Skipped, not sent raw: a signal whose release fails is suppressed.
            self._drops.add(DropReason.RELEASE_FAILED)
            return None

    # -- the open window across restarts (client._carry) -------------------------------

    def _carry_open_window(self, now: datetime) -> None:
        """Shutdown: store the open window's cells of every consented signal for the
        next run, uncharged, with the tiers consented now. Written even when every cell
        is zero, so whether the window is released (late, if need be) never depends on
        what was recorded; not written when no tier is consented (a late release of the
        window would say the app ran when the user had agreed to nothing)."""
        self._observe_window_close()
        consented = frozenset(self._gate.consented())
        if not consented:
            self._take_open()  # recorded without consent: discarded, as at any close
            self._outbox.drop_carried()  # one restored into this window is done with
            return
        counters: dict[str, list[int]] = {}
        histograms: dict[str, list[HistogramSnapshot]] = {}
        for name, raw in self._take_open().items():
            signal = self._signals[name]
            if signal.spec.tier not in consented:
                continue  # recorded without consent: discarded, as at any window close
            if isinstance(signal.table, CounterTable):
                counters[name] = raw  # type: ignore[assignment]
            else:
                histograms[name] = raw  # type: ignore[assignment]
        window = self._windows.open_window
        carried = CarriedWindow(
            self._policy.content_hash,
            counters,
            histograms,
            window.start,
            carried_at=self._clock.read(now),
            tiers=consented,
        )
        self._outbox.put_carried(encode_carried(carried))

    def _discard_open(self) -> None:
        """Shutdown without a carry: the open window's cells are dropped, and what the
        consented signals held is counted (`open_window_discarded`)."""
        consented = set(self._gate.consented())
        dropped = 0
        for name, raw in self._take_open().items():
            if self._signals[name].spec.tier in consented:
                dropped += _units(raw)
        if dropped:
            self._drops.add(DropReason.OPEN_WINDOW_DISCARDED, dropped)
        self._outbox.drop_carried()  # what it carried in was in the open window

    def _restore_carried(self) -> None:
        """Start-up: the cells the last run carried go back into the open window if it
        is theirs (or the record has no window: version 1), else wait for their late
        release at the first collect (`_release_windows`). The record stays stored until
        the window it belongs to is released (a crash before then loses nothing of it;
        one after leaves a record of a released window, which is discarded as
        `window_already_released`)."""
        data = self._outbox.read_carried()
        if data is None:
            return
        carried = decode_carried(data)
        if carried is None or carried.policy_hash != self._policy.content_hash:
            self._outbox.drop_carried()
            self._drops.add(DropReason.CARRIED_DISCARDED)
            return
        if carried.tiers is not None and not carried.tiers:
            # No tier consented at the cut: nothing of it may ever be released.
            self._outbox.drop_carried()
            return
        seconds = self._policy.window_seconds
        open_window = self._windows.open_window
        start = carried.window_start
        if start is not None and (
            start > open_window.start or aligned_window(start, seconds).start != start
        ):
            # Ahead of this run's clock (the wall clock went back), or not a window of
            # this policy: no window to release it in.
            self._outbox.drop_carried()
            self._drops.add(DropReason.CARRIED_DISCARDED)
            return
        cells = self._carried_cells(carried)
        if start is None or start == open_window.start:
            for name, raw in cells.items():
                self._signals[name].table.add(raw)  # type: ignore[arg-type]
        else:
            # Ended before this run started: released on its own; the windows between it
            # and now, when the app did not run, are not released.
            with self._late_lock:
                self._late = _LateWindow(
                    aligned_window(start, seconds), cells, carried.carried_at, carried.tiers
                )

    def _carried_cells(self, carried: CarriedWindow) -> dict[str, _Raw]:
        """The carried cells that fit this run's signals; the others are counted."""
        cells: dict[str, _Raw] = {}
        for name, values in carried.counters.items():
            signal = self._signals.get(name)
            if (
                signal is not None
                and isinstance(signal.table, CounterTable)
                and len(values) == signal.domain.size
            ):
                cells[name] = values
            else:
                self._drops.add(DropReason.CARRIED_DISCARDED)
        for name, snaps in carried.histograms.items():
            signal = self._signals.get(name)
            if (
                signal is not None
                and isinstance(signal.table, HistogramTable)
                and isinstance(signal.spec, HistogramSignal)
                and len(snaps) == signal.domain.size
                and all(len(snap.counts) == len(signal.spec.buckets) + 1 for snap in snaps)
            ):
                cells[name] = snaps
            else:
                self._drops.add(DropReason.CARRIED_DISCARDED)
        return cells

    # -- sending -----------------------------------------------------------------------

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Send every pending envelope; True when none is left pending.

        Manual mode sends in the calling thread, retrying with backoff up to
        `max_attempts` per batch. Background mode asks the worker and waits up to
        `timeout` seconds. Envelopes kept for later on purpose (refused for the
        ingest's budget of its day, or ahead of its clock: `client._send_hold`) stay
        pending, and the answer is False.
        """
        if self._closed:
            # The next run owns the spool (and may purge it for a revocation): nothing
            # is sent; True only if nothing was left pending.
            return self._loaded.is_set() and not self._outbox.unsent()
        if self._worker is None:
            return self._loaded.is_set() and self._send_pending(blocking=True)
        done = threading.Event()
        with self._send_lock:
            self._flush_waiters.append(done)
        self._worker.wake()
        return done.wait(timeout) and self._loaded.is_set() and not self._outbox.unsent()

    def _send_pending(self, *, blocking: bool, until: float | None = None) -> bool:
        """Send what is pending; True when nothing is left. `until`: the shutdown
        sender's deadline (`time.monotonic`): no batch starts after it, nor once
        `shutdown` has returned (`_take_batch`); a send already on the wire finishes."""
        if not self._run_purges():
            # Before anything leaves: a revocation whose spool purge or deletion request
            # is not on disk (a full disk) would otherwise let envelopes still carrying
            # the revoked tier go out. Kept, and sent once the purge has run.
            return False
        ingest_now = self._clock.ingest_now()
        if ingest_now is None and self._clock.follows_ingest() and self._outbox.unsent():
            # Before every send while it is unknown (sending is network I/O anyway): so
            # `sent_at` is on the ingest's clock and nothing ahead of it leaves.
            self._transport.probe_time()
            ingest_now = self._clock.ingest_now()
        if ingest_now is not None:
            # Held ahead of the ingest's clock for longer than their retention: never
            # deliverable in time.
            self._outbox.expire_ahead(ingest_now, self._hold.skew, self._policy.retention.for_tier)
        self._held = None
        attempts = 0
        while self._outbox.unsent():
            if not self._may_start(until):
                return False
            try:
                # A transport that cannot deliver deletions must not hold envelopes back:
                # they no longer carry the revoked tier.
                deletion_error: TransportError | None = None
                try:
                    send_deletions(
                        self._outbox,
                        self._transport,
                        self._drops,
                        lambda request: sign_deletion(self._key_store, request),
                    )
                except TransportError as exc:
                    deletion_error = exc
                held: Held | None = None
                while self._outbox.waiting and held is None and self._may_start(until):
                    held = send_one_batch(
                        self._outbox,
                        self._transport,
                        self._sealer,
                        self._drops,
                        self._clock.now,
                        consented=self._gate.consented(),
                        fall_back=self._key_refused,
                        reporter=self._reporter,
                        withhold=self._withhold_from_software,
                        hold=self._hold,
                        ingest_now=self._clock.ingest_now,
                        take=lambda: self._take_batch(until),
                    )
                if deletion_error is not None:
                    raise deletion_error
                self._failures = 0
                if held is not None:
                    # Kept for later on purpose: not a failure, no backoff.
                    self._held = held
                    self._retry_at = time.monotonic() + self._seconds_until(held)
                    return False
            except TransportError:
                self._failures += 1
                attempts += 1
                delay = self._backoff()
                if not blocking:
                    self._retry_at = time.monotonic() + delay
                    return False
                if attempts >= self._config.max_attempts:
                    return False
                time.sleep(delay)
        return True

    def _may_start(self, until: float | None) -> bool:
        """Whether a send may start now. Never once `shutdown` has returned. Once it has
        begun, only for its sender (`until` set), before its deadline: the worker (in a
        round `shutdown` stopped waiting for) and `flush` start no batch."""
        if self._sender_cut:
            return False
        if until is None:
            return not self._closed
        return time.monotonic() < until

    def _take_batch(self, until: float | None) -> list[EnvelopeV1]:
        """The next batch to send, or [] if no send may start (`_may_start`). Checked
        and taken under `_batch_lock`, which `shutdown` takes to set `_sender_cut`: a
        batch is either taken before `shutdown` returns or not at all. (The spool in
        memory is this run's: a later `Telemetry` on the same state directory may have
        purged or sent what it still holds.)"""
        with self._batch_lock:
            if not self._may_start(until):
                return []
            return self._outbox.take()

    def _seconds_until(self, held: Held) -> float:
        """Real seconds until `held` ends, on the clock it is stated on (at least one
        second; at most an hour, so a wall clock moved meanwhile is seen)."""
        now = self._clock.ingest_now() if held.on_ingest_clock else None
        left = (held.until - (now or self._clock.now())).total_seconds()
        return min(max(left, 1.0), 3600.0)

    def _refresh_key(self) -> None:
        """Attest the TPM key if due (network I/O: the worker's thread, or manual mode's
        caller), so the window about to close knows which tiers its key may send."""
        if isinstance(self._key_store, FallbackKeyStore):
            try:
                self._key_store.refresh()
            except Exception:  # the key store never raises by contract; be sure
                _log.exception("refreshing the key's attestation failed")

    def _withhold_from_software(self, tiers: frozenset[Tier]) -> bool:
        """The ingest refuses `tiers` from software keys: stop releasing (and charging)
        them while the key is software, strip them from what it signs. True if new."""
        self._gate.software_tiers = self._gate.software_tiers - tiers
        new = self._sealer.withhold_from_software(tiers)
        if new:
            _log.warning(
                "the ingest refuses tiers %s from software keys: withheld from now on",
                sorted(t.value for t in tiers),
            )
        return new

    def _key_refused(self, reason: str) -> bool:
        """The ingest refused the signing key: True if the store switched keys."""
        return isinstance(self._key_store, FallbackKeyStore) and self._key_store.key_refused(reason)

    def _backoff(self) -> float:
        base: float = self._config.retry_backoff * float(2 ** min(self._failures - 1, 30))
        # Jitter spreads a fleet's retries after an ingest outage.
        jitter: float = random.uniform(0.5, 1.0)
        return min(base, self._config.max_backoff) * jitter

    def _tick(self) -> float:
        """One round of the background worker; returns seconds until the next."""
        # Waiters are taken first: they are released only by a round (collect and
        # send) that started after they asked.
        with self._send_lock:
            waiters, self._flush_waiters = self._flush_waiters, []
        if not self._loaded.is_set():
            with self._consent_cond:
                self._load_failed = False
            try:
                self._start_up()
            except Exception:
                with self._consent_cond:
                    self._load_failed = True
                    ends_shutdown = self._worker_ends_shutdown
                if ends_shutdown:
                    # No retry: write the calls queued meanwhile without the state.
                    _log.exception("loading the device's state failed after shutdown")
                    self._write_queued_consent_at_shutdown()
                    for done in waiters:
                        done.set()
                    return 30.0
                # The app keeps running without telemetry (recordings dropped and
                # counted) and the worker tries again: a full disk may clear.
                _log.exception("loading the device's state failed; retrying in 30 s")
                for done in waiters:
                    done.set()
                return 30.0
            if self._worker_ends_shutdown:
                self._end_late_shutdown()
                for done in waiters:
                    done.set()
                return 30.0
        try:
            self._count_queued_prompts()
            self._run_purges()
            self._refresh_key()
            self.collect()
            if waiters or time.monotonic() >= self._retry_at:
                self._send_pending(blocking=False)
        finally:
            # Even after a failed round (the worker logs it): a waiter must not sit out
            # its whole timeout; `flush` then reports what is still pending.
            for done in waiters:
                done.set()
        until_close = (self._windows.open_window.end - self._clock.now()).total_seconds()
        if until_close <= 0.0:  # a due window held for the budget (`collect`)
            until_close = self._gate.hold_seconds(self._clock.read())
        delay = min(until_close, 60.0)  # re-read the wall clock at least every minute
        if self._outbox.unsent():
            delay = min(delay, max(self._retry_at - time.monotonic(), 0.0))
        return max(delay, 0.01)

    def shutdown(self, *, carry_open_window: bool = True, timeout: float = 10.0) -> None:
        """Stop the worker, release the windows that have ended, and send.

        No partial window is released: a device sends at most one release per aligned
        policy window. With `carry_open_window` (the default) the open window's cells
        of every consented signal are carried, encrypted and uncharged, to the next
        `Telemetry` on the same state directory (`client._carry`): restarted within
        that window, it releases them with its own at the window's end; restarted
        later, it releases them on their own, late, as that window's envelope. With
        `carry_open_window=False` they are discarded (counted as
        `open_window_discarded`). Envelopes still pending afterwards stay in the
        on-disk spool and are sent by the next `Telemetry` on the same state directory.
        Returns within about `timeout` (plus the windows' release, local work):
        sending, which may wait on the network or a TPM, runs on a sender thread this
        waits for at most that long. No batch starts once this has returned, on that
        thread, on a worker still in its round, or in `flush` (one already on the wire
        finishes). Consent calls made afterwards are written
        on the caller's thread, as in manual mode.
        """
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + timeout
        if self._worker is not None:
            self._worker.stop(timeout)
            if not self._loaded.is_set() and not self._worker.is_alive():
                # Stopped before it loaded the state: load it here, so consent calls
                # made meanwhile are applied and written, not lost.
                try:
                    self._start_up()
                except Exception:
                    _log.exception("loading the device's state at shutdown failed")
        with self._consent_cond:  # `_start_up` sets `_loaded` under it: one or other
            loaded = self._loaded.is_set()
            worker = self._worker
            if not loaded and worker is not None and worker.is_alive():
                self._worker_ends_shutdown = not self._load_failed
        if not loaded:
            # Still loading on the worker (a slow disk), or the state cannot be read:
            # nothing recorded counted, nothing to release or send.
            if not self._worker_ends_shutdown:
                self._write_queued_consent_at_shutdown()
            # (Else the worker, once its load ends, writes them: `_end_late_shutdown`,
            # or without the state if the load fails.)
            self._transport.close()
            return
        # Called by the host app (or at exit): a failure here is logged, never raised,
        # and the ledger's lock and the transport are released whatever happens.
        try:
            self._count_queued_prompts()  # the worker has stopped: they are this thread's
            self._run_purges()  # consent decisions the worker had not written yet
            now = self._clock.now()
            with self._collect_lock:
                self._release_windows(self._windows.close_until(now), now)
                if carry_open_window:
                    self._carry_open_window(now)
                else:
                    self._discard_open()
        except Exception:
            _log.exception("releasing the last windows at shutdown failed")
        finally:
            self._gate.close()
        sender = threading.Thread(
            target=self._send_until, args=(deadline,), name="quietwire-shutdown", daemon=True
        )
        sender.start()
        sender.join(max(deadline - time.monotonic(), 0.0))
        with self._batch_lock:
            # From now on the sender starts no batch (`_take_batch`): the next run, which
            # may start at once, owns the spool (and may purge it for a revocation).
            self._sender_cut = True
        # A send still waiting on the network finishes on that thread (which then
        # closes the transport), or the process's exit ends it: what it carried stays
        # in the spool for the next run.

    def _end_late_shutdown(self) -> None:
        """The worker loaded the state after `shutdown` returned: write the consent
        calls applied at the load (or say loudly that they are lost), then give the
        ledger's lock back. Nothing is released, carried anew or sent: a carry record
        read at the load stays on disk for the next start."""
        try:
            with self._collect_lock:
                self._make_consent_durable()
        except ClientError as exc:
            _log.error("consent decisions made before the state loaded are lost: %s", exc)
            with self._consent_cond:
                self._consent_lost = True
                self._consent_cond.notify_all()
        finally:
            self._gate.close()

    def _write_queued_consent_at_shutdown(self) -> None:
        """The state never loaded: write the consent calls queued meanwhile without it
        (`_write_queued_consent`), or say loudly that they are lost."""
        try:
            with self._collect_lock:
                self._write_queued_consent()
        except ClientError as exc:
            _log.error("consent decisions made before the state loaded are lost: %s", exc)

    def _send_until(self, deadline: float) -> None:
        """The last sends, until `deadline` (the shutdown's sender thread)."""
        try:
            while self._outbox.unsent() and self._may_start(deadline):
                if self._send_pending(blocking=False, until=deadline) or self._held is not None:
                    break  # sent, or kept for a later run on purpose
                time.sleep(min(max(self._retry_at - time.monotonic(), 0.0), 1.0))
        except Exception:
            _log.exception("sending pending envelopes at shutdown failed")
        finally:
            self._transport.close()

    def _reset_locks_after_fork(self) -> None:
        # Another thread of the parent may have held any of these at fork time. (The
        # worker restarts its own thread through its own fork hook.)
        self._collect_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._consent_cond = threading.Condition()
        self._late_lock = threading.Lock()
        self._batch_lock = threading.Lock()
        self._drops.reset_after_fork()
        self._prompts.reset_after_fork()
        self._reporter.reset_after_fork()
        if self._loaded.is_set():  # else the child's worker loads them
            self._outbox.reset_after_fork()
            self._state.reset_after_fork()
            self._gate.reset_after_fork()
        for signal in self._signals.values():
            signal.table.reset_locks_after_fork()

    # -- construction helpers ---------------------------------------------------------

    def _instrument(self, name: str, kind: str) -> Counter | Histogram:
        signal = self._signals.get(name)
        if signal is None:
            raise UnknownSignalError(name, sorted(self._signals))
        if signal.spec.kind != kind:
            raise SignalKindError(name, signal.spec.kind, kind)
        return signal.instrument

    def _make_sharer(self) -> ReportSharer | None:
        if not self._tasks:
            return None
        helper = self._policy.aggregation.helper
        if helper is None:
            raise ConfigError(
                "the policy declares aggregate signals "
                f"({', '.join(self._policy.aggregate_signals)}) but no aggregation.helper: "
                "their reports need the helper's public key"
            )
        return ReportSharer(self._policy.content_hash, helper.public_key_bytes)

    def _make_signal(self, name: str, spec: CounterSignal | HistogramSignal) -> _Signal:
        domain = CellDomain(spec.attributes)
        tasks = [t for t in self._tasks.values() if t.signal == name]
        if isinstance(spec, CounterSignal):
            table = CounterTable(domain.size)
            counter = Counter(name, domain, table, self._drops)
            return _Signal(name, spec, domain, table, counter, tasks)
        htable = HistogramTable(domain.size, len(spec.buckets) + 1)
        hist = Histogram(name, domain, htable, self._drops, spec.buckets, spec.value_range)
        return _Signal(name, spec, domain, htable, hist, tasks)

    def _release_counter(self, signal: _Signal, raw: list[int], batch_start: datetime) -> Release:
        assert isinstance(signal.spec, CounterSignal)
        if signal.tasks:
            assert self._sharer is not None
            return share_counter(
                signal.name,
                signal.spec,
                signal.domain,
                raw,
                signal.tasks,
                self._sharer,
                batch_start,
            )
        mechanism = self._policy.privacy.mechanisms.counter
        return release_counter(signal.name, signal.spec, signal.domain, raw, mechanism)

    def _release_histogram(
        self, signal: _Signal, raw: list[HistogramSnapshot], batch_start: datetime
    ) -> Release:
        assert isinstance(signal.spec, HistogramSignal)
        if signal.tasks:
            assert self._sharer is not None
            return share_histogram(
                signal.name,
                signal.spec,
                signal.domain,
                raw,
                signal.tasks,
                self._sharer,
                batch_start,
            )
        mechanisms = self._policy.privacy.mechanisms
        return release_histogram(
            signal.name,
            signal.spec,
            signal.domain,
            raw,
            mechanisms.histogram_counts,
            mechanisms.histogram_sum,
        )

    def _warm_measurements(self) -> None:
        """Build (and cache) every OpenDP measurement and Prio3 instance now: a bad
        policy fails at setup, not at the first window close."""
        for signal in self._signals.values():
            if signal.tasks:
                for task in signal.tasks:
                    task_vdaf(task)
            elif isinstance(signal.spec, CounterSignal):
                self._release_counter(signal, [0] * signal.domain.size, _EPOCH)
            else:
                self._release_histogram(signal, _empty_histogram(signal), _EPOCH)


def _count_kinds(counter: Counter, label: str, kinds: Collection[str]) -> None:
    for kind in kinds:
        counter.add(1, **{label: kind})


def _purge_carried(spool: Spool, tiers: Collection[Tier], tier_of: Mapping[str, Tier]) -> None:
    """Strip `tiers` from the carried window on disk (`client._carry.without_tiers`):
    rewritten without them, or removed when no tier is left. Raises `SpoolError`."""
    if not tiers:
        return
    try:
        data = spool.read_carried()
        if data is None:
            return
        carried = decode_carried(data)
        # Unreadable: nothing could be released from it anyway.
        kept = without_tiers(carried, tiers, tier_of) if carried is not None else None
        if kept is None:
            spool.drop_carried()
        elif kept is not carried:
            spool.put_carried(encode_carried(kept))
    except OSError as exc:
        raise SpoolError(f"cannot purge the carried window: {exc}") from exc


def _units(raw: _Raw) -> int:
    """How many measurements `raw` holds: counted units, and histogram values."""
    return sum(sum(c.counts) if isinstance(c, HistogramSnapshot) else c for c in raw)


def _tier(tier: Tier | str) -> Tier:
    try:
        return Tier(tier)
    except ValueError:
        raise ConfigError(f"unknown tier {tier!r}; tiers are {[t.value for t in Tier]}") from None


def _empty_histogram(signal: _Signal) -> list[HistogramSnapshot]:
    assert isinstance(signal.spec, HistogramSignal)
    n = len(signal.spec.buckets) + 1
    return [HistogramSnapshot([0] * n, 0.0) for _ in range(signal.domain.size)]


def _sorted(config: TelemetryConfig) -> list[tuple[str, CounterSignal | HistogramSignal]]:
    return sorted(config.policy.signals.items())
