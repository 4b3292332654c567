"""The envelope bus: where verified envelopes go, and the ingest's one I/O seam.

`publish` returns only once every item is durable (Kafka acknowledged with acks=all, or
the embedded sink committed), because the 202 that follows tells the device it may
forget the envelope. A failure raises `BusUnavailable`, answered 503: the device keeps
the batch and retries, and the idempotent sink makes a partial publish harmless.

`check` says whether the bus's dependency answers (Kafka, or the embedded warehouse), for
`/healthz`. The Kafka bus also consults it before publishing, so once Kafka is known to
be down a request is answered 503 at once instead of after `ack_timeout`.

Deletion requests travel the same way as envelopes (same topic, keyed by device id), so
a device's deletion stays in order with its envelopes on its partition.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from ingest._errors import BusUnavailable
from ingest._group_commit import GroupCommit
from ingest._health import CachedProbe, Check
from ingest._partition import kafka_partition
from ingest._settings import DEFAULT_MAX_BATCH_BYTES
from ingest._sink import DuckDBSink
from schemas import IngestedDeletionRequest, IngestedEnvelope

__all__ = [
    "BusItem",
    "EnvelopeBus",
    "InMemoryEnvelopeBus",
    "InProcessEnvelopeBus",
    "KafkaEnvelopeBus",
    "encode_item",
]

BusItem = IngestedEnvelope | IngestedDeletionRequest
"""What the bus carries: verified envelopes and verified deletion requests."""


def encode_item(item: BusItem) -> bytes:
    """The message bytes of `item` (its JSON), as the sink decodes them."""
    return item.model_dump_json().encode()


def _region_and_device(item: BusItem) -> tuple[str, str]:
    head = item.envelope if isinstance(item, IngestedEnvelope) else item.deletion
    return head.region, head.device_id


log = logging.getLogger("quietwire.ingest.bus")

_DESCRIBE_TIMEOUT = 5.0
"""Seconds `start` waits for the topics' configuration before it goes on without it."""
_BATCH_HEADROOM = 1024
"""Bytes a batch keeps below a topic's `max.message.bytes`: the record batch header (61
bytes) and a record's own framing (at most a few dozen) are not in the estimate."""


class EnvelopeBus(ABC):
    """Hands verified envelopes on durably. Opened and closed by the app's lifespan."""

    name: str = "bus"
    dependency: str = "bus"
    """What `check` checks, as `/healthz` names it."""

    async def start(self) -> None:  # noqa: B027 - optional hook, most buses need none
        """Open connections; raise `BusUnavailable` if that is impossible."""

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """Flush and close."""

    @abstractmethod
    async def publish(
        self, items: Sequence[BusItem], encoded: Sequence[bytes] | None = None
    ) -> None:
        """Make `items` durable, or raise `BusUnavailable`.

        `encoded`: the items' message bytes, one per item, when the caller already has
        them (the verifier builds an envelope's around the device's signed bytes:
        `ingest._verify`); otherwise a bus that sends bytes encodes each item
        (`encode_item`)."""

    @abstractmethod
    async def check(self) -> Check:
        """Whether the bus's dependency answers now (cheap; may be cached briefly)."""


class KafkaEnvelopeBus(EnvelopeBus):
    """Produces to ``<topic_prefix>.<region>``, keyed by device id (one device, one partition).

    Idempotent producer with acks=all: a broker-side retry does not duplicate a message,
    and an acknowledged message is on every in-sync replica.

    aiokafka's idempotent producer never expires a batch: while Kafka is unreachable it
    retries forever. So `publish` waits at most `ack_timeout` seconds for the acks (after
    up to `request_timeout_ms` to enqueue) and then answers `BusUnavailable`. A send
    still retrying after that may land later: the device, told 503, resends, and the
    sink skips the second copy by envelope id.

    Reachability is a metadata request to the brokers, bounded by `probe_timeout` and
    cached for `health_ttl` seconds; a publish that timed out marks Kafka down for as
    long. While Kafka is down, `publish` raises `BusUnavailable` without sending.
    """

    name = "kafka"
    dependency = "kafka"

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        topic_prefix: str,
        client_id: str = "quietwire-ingest",
        request_timeout_ms: int = 10_000,
        ack_timeout: float = 10.0,
        health_ttl: float = 1.5,
        probe_timeout: float = 1.0,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        topics: Sequence[str] = (),
    ) -> None:
        """`max_batch_bytes`: the largest record batch sent to one partition; an
        envelope larger than it goes alone. `topics`: the topics this ingest produces
        to, whose `max.message.bytes` `start` reads: a batch stays below the smallest
        (a topic set lower than `max_batch_bytes` would refuse full batches)."""
        self._bootstrap = bootstrap_servers
        self._client_id = client_id
        self._topics = tuple(topics)
        self._batch_limit = max_batch_bytes
        """The largest batch `_send_batches` builds (lowered by `start` to fit the topics)."""
        self._topic_prefix = topic_prefix
        self._ack_timeout = ack_timeout
        self._reachability = CachedProbe(self._probe, ttl=health_ttl, timeout=probe_timeout)
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap_servers,
            client_id=client_id,
            acks="all",
            enable_idempotence=True,
            request_timeout_ms=request_timeout_ms,
            # An IngestedEnvelope holds at most one sealed item's payload (512 KiB) plus
            # a few fields; leave headroom over the 1 MiB default.
            max_request_size=2 * 1024 * 1024,
            max_batch_size=max_batch_bytes,
        )

    async def start(self) -> None:
        try:
            await self._producer.start()
        except KafkaError as exc:
            await self._producer.stop()
            raise BusUnavailable(f"cannot connect to Kafka: {exc}") from exc
        if self._topics:
            await self._fit_batches_to_topics()

    @property
    def batch_limit(self) -> int:
        """The largest record batch this bus sends to one partition, in bytes."""
        return self._batch_limit

    async def _fit_batches_to_topics(self) -> None:
        """Keep batches below the smallest `max.message.bytes` of `topics`, with a
        warning naming the setting. A topic that cannot be described (not created yet,
        no permission) leaves the limit as set: it is logged, not fatal."""
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self._bootstrap, client_id=f"{self._client_id}-admin"
        )
        resources = [ConfigResource(ConfigResourceType.TOPIC, t) for t in self._topics]
        try:
            await asyncio.wait_for(admin.start(), _DESCRIBE_TIMEOUT)
            responses = await asyncio.wait_for(admin.describe_configs(resources), _DESCRIBE_TIMEOUT)
        except (KafkaError, TimeoutError) as exc:
            log.warning(
                "cannot read the topics' max.message.bytes (%s): batches up to %d bytes",
                exc,
                self._batch_limit,
            )
            return
        finally:
            await admin.close()
        limits = topic_message_limits(responses)
        for topic in self._topics:
            if topic not in limits:
                log.warning(
                    "topic %s: max.message.bytes unknown (missing, or not "
                    "describable): batches up to %d bytes",
                    topic,
                    self._batch_limit,
                )
        fits = min(limits.values(), default=None)
        if fits is not None and fits - _BATCH_HEADROOM < self._batch_limit:
            lowered = max(fits - _BATCH_HEADROOM, 1)
            log.warning(
                "a topic's max.message.bytes is %d: record batches are held to %d bytes "
                "instead of %d (QUIETWIRE_INGEST_KAFKA_MAX_BATCH_BYTES)",
                fits,
                lowered,
                self._batch_limit,
            )
            self._batch_limit = lowered

    async def stop(self) -> None:
        try:
            await asyncio.wait_for(self._producer.flush(), self._ack_timeout)
        except TimeoutError:
            # Kafka is unreachable, and stop() would flush forever. Every send still
            # pending was answered 503 (requests end before the lifespan does), so
            # dropping them loses nothing.
            log.warning("Kafka unreachable at shutdown: dropping unacknowledged sends")
            await _abort_pending_sends(self._producer)
        await self._producer.stop()

    async def _probe(self) -> Check:
        cluster = await self._producer.client.fetch_all_metadata()
        return Check(True, f"{len(cluster.brokers())} broker(s) answer")

    async def check(self) -> Check:
        return await self._reachability.check()

    async def publish(
        self, items: Sequence[BusItem], encoded: Sequence[bytes] | None = None
    ) -> None:
        reachable = await self._reachability.check()
        if not reachable.ok:
            raise BusUnavailable(f"Kafka is unreachable: {reachable.detail}")
        sends: list[tuple[asyncio.Future[object], int]] = []
        try:
            for (topic, partition), messages in (await self._by_partition(items, encoded)).items():
                sends.extend(await self._send_batches(topic, partition, messages))
        except KafkaError as exc:
            _observe([future for future, _ in sends])
            raise BusUnavailable(f"Kafka refused the batch: {exc}") from exc
        if not sends:
            return
        futures = [future for future, _ in sends]
        _, pending = await asyncio.wait(futures, timeout=self._ack_timeout)
        _observe(futures)
        total = len(items)
        if pending:
            late = sum(n for future, n in sends if future in pending)
            detail = (
                f"Kafka did not acknowledge {late} of {total} envelopes "
                f"within {self._ack_timeout:g}s"
            )
            self._reachability.mark_down(detail)
            raise BusUnavailable(detail)
        errors = [(e, n) for future, n in sends if (e := future.exception()) is not None]
        if errors:
            failed = sum(n for _, n in errors)
            raise BusUnavailable(
                f"Kafka did not acknowledge {failed} of {total} envelopes: {errors[0][0]}"
            ) from errors[0][0]

    async def _by_partition(
        self, items: Sequence[BusItem], encoded: Sequence[bytes] | None
    ) -> dict[tuple[str, int], list[tuple[bytes, bytes]]]:
        """(topic, partition) -> [(key, value)], in publish order: the partition the
        producer's own default partitioner gives the device id (murmur2, as Java's:
        `ingest._partition`, the same function, faster),
        so a device's envelopes and deletion requests share one partition, in order."""
        partitions: dict[str, list[int]] = {}
        out: dict[tuple[str, int], list[tuple[bytes, bytes]]] = {}
        for index, item in enumerate(items):
            region, device_id = _region_and_device(item)
            topic = f"{self._topic_prefix}.{region}"
            known = partitions.get(topic)
            if known is None:
                # As `AIOKafkaProducer._partition` lists them (waits for metadata).
                known = partitions[topic] = list(await self._producer.partitions_for(topic))
            key = device_id.encode()
            partition = kafka_partition(key, known)
            value = encode_item(item) if encoded is None else encoded[index]
            out.setdefault((topic, partition), []).append((key, value))
        return out

    async def _send_batches(
        self, topic: str, partition: int, messages: list[tuple[bytes, bytes]]
    ) -> list[tuple[asyncio.Future[object], int]]:
        """Hand `messages` to the producer as whole record batches, one future per batch
        instead of one per message (2 to 3% of the server's CPU per envelope, A/B), each
        acknowledged like any other batch of the idempotent producer."""
        sends: list[tuple[asyncio.Future[object], int]] = []
        limit = self._batch_limit
        batch = self._producer.create_batch()
        for key, value in messages:
            if batch.record_count() and batch.size() + len(key) + len(value) > limit:
                sends.append(await self._submit(batch, topic, partition))
                batch = self._producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None) is not None:
                continue
            if batch.record_count():  # full: send it, start the next with this message
                sends.append(await self._submit(batch, topic, partition))
                batch = self._producer.create_batch()
                if batch.append(key=key, value=value, timestamp=None) is not None:
                    continue
            # Larger than any batch: on its own, as `send` does (up to max_request_size).
            alone = await self._producer.send(topic, value=value, key=key, partition=partition)
            sends.append((alone, 1))
            batch = self._producer.create_batch()
        if batch.record_count():
            sends.append(await self._submit(batch, topic, partition))
        return sends

    async def _submit(
        self, batch: Any, topic: str, partition: int
    ) -> tuple[asyncio.Future[object], int]:
        count: int = batch.record_count()
        batch.close()
        future: asyncio.Future[object] = await self._producer.send_batch(
            batch, topic, partition=partition
        )
        return future, count


def topic_message_limits(responses: Sequence[Any]) -> dict[str, int]:
    """Topic -> its `max.message.bytes`, from aiokafka's `describe_configs` answers
    (any version: each resource is (error code, message, type, name, entries), each
    entry starts (name, value)); a topic with an error or without the entry is left out."""
    limits: dict[str, int] = {}
    for response in responses:
        for resource in response.resources:
            error_code, _, _, name, entries = resource[:5]
            if error_code:
                continue
            for entry in entries:
                if entry[0] == "max.message.bytes" and str(entry[1]).isdigit():
                    limits[name] = int(entry[1])
    return limits


async def _abort_pending_sends(producer: AIOKafkaProducer) -> None:
    """Stop the sender and fail its batches, so `producer.stop()` can return.

    aiokafka (checked on 0.14) has no public abort for a non-transactional producer, so
    this reaches into its accumulator; the integration test that stops a broker under a
    running ingest covers it. The order matters: failing batches under a live sender
    races its retries (it re-enqueues them).
    """
    await producer._sender.close()  # in-flight batches go back to the accumulator
    acc = producer._message_accumulator
    stuck = [batch for batches in acc._batches.values() for batch in batches]
    # A batch drained once has a done-callback that removes it from the pending set;
    # put it back so that callback finds it when the batch fails below.
    acc._pending_batches.update(stuck)
    acc.fail_all(KafkaError("producer stopped while Kafka was unreachable"))
    for batch in stuck:
        # Nobody awaits a drain waiter once the sender is gone: observe its error.
        waiter = batch._drain_waiter
        if waiter.done() and not waiter.cancelled():
            waiter.exception()


def _observe(futures: Sequence[asyncio.Future[Any]]) -> None:
    """Mark send outcomes as retrieved, now or whenever they settle, so an error nobody
    awaits (a send abandoned after a 503) is not reported as never retrieved."""

    def retrieve(f: asyncio.Future[object]) -> None:
        if not f.cancelled():
            f.exception()

    for f in futures:
        f.add_done_callback(retrieve)


class InProcessEnvelopeBus(EnvelopeBus):
    """The embedded default: hands envelopes straight to the sink writer, no Kafka.

    Durable when DuckDB has committed. Group commit: batches published while a write is
    in flight are written together in the next transaction (one fsync for all of them),
    so concurrent clients do not queue behind one commit each. The blocking write runs
    in a worker thread so the event loop keeps serving meanwhile.

    An item whose rows the warehouse refuses is dead-lettered by the sink and the rest
    of the group is stored: every publisher of the group is answered as durable (the
    refused item is kept, in `dead_letters`, as the Kafka sink would keep it). Only a
    failing warehouse fails the group (503 to each of its requests).
    """

    name = "in-process"
    dependency = "warehouse"

    def __init__(self, sink: DuckDBSink, *, close_sink: bool = True) -> None:
        self.sink = sink
        self._close_sink = close_sink
        self._group: GroupCommit[Sequence[BusItem], None] = GroupCommit(
            self._write_all, error=_not_committed
        )
        self.dead_letters = 0
        """Items of this process's groups the warehouse refused (dead-lettered)."""
        # A long group commit holds the sink's lock: give the check time to wait for it.
        self._warehouse = CachedProbe(self._ping, ttl=1.5, timeout=5.0)

    async def stop(self) -> None:
        await self._group.idle()
        if self._close_sink:
            await asyncio.to_thread(self.sink.close)

    async def publish(
        self, items: Sequence[BusItem], encoded: Sequence[bytes] | None = None
    ) -> None:
        await self._group.submit(items)  # written as objects: `encoded` is not needed

    async def check(self) -> Check:
        return await self._warehouse.check()

    async def _ping(self) -> Check:
        await asyncio.to_thread(self.sink.ping)  # waits for a write in flight
        return Check(True, "open")

    def _write_all(self, batches: list[Sequence[BusItem]]) -> list[None]:
        try:
            result = self.sink.write([item for batch in batches for item in batch])
        except Exception:
            log.exception("embedded sink write failed")
            raise
        self.dead_letters += result.dead_letters
        return [None] * len(batches)


def _not_committed(exc: Exception) -> BaseException:
    # Whatever it is, every waiting request is answered 503: none may hang.
    return BusUnavailable(f"the warehouse did not commit the batch: {exc}")


class InMemoryEnvelopeBus(EnvelopeBus):
    """Keeps published envelopes in a list: for tests and demos, not durable.

    Set `fail_with` to a message to make every publish raise `BusUnavailable`.
    """

    name = "in-memory"

    def __init__(self) -> None:
        self.published: list[BusItem] = []
        self.fail_with: str | None = None

    async def publish(
        self, items: Sequence[BusItem], encoded: Sequence[bytes] | None = None
    ) -> None:
        if self.fail_with is not None:
            raise BusUnavailable(self.fail_with)
        self.published.extend(items)

    async def check(self) -> Check:
        if self.fail_with is not None:
            return Check(False, self.fail_with)
        return Check(True, "in memory")
