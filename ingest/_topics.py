"""Creating the envelope topics: brokers here run with topic auto-creation off."""

from __future__ import annotations

from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from ingest._errors import BusUnavailable

__all__ = ["ensure_topics"]


async def ensure_topics(
    bootstrap: str, names: Iterable[str], *, partitions: int = 3, replication: int = 1
) -> None:
    """Create the topics that do not exist yet; existing ones are left as they are.

    Partitions are keyed by device id, so their number bounds the sink's parallelism.
    """
    topics = [NewTopic(name, partitions, replication) for name in names]
    if not topics:
        return
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        response = await admin.create_topics(topics)
    except KafkaError as exc:
        raise BusUnavailable(f"cannot create topics on {bootstrap}: {exc!r}") from exc
    finally:
        await admin.close()
    for entry in response.to_object()["topic_errors"]:
        code = entry["error_code"]
        if code and for_code(code) is not TopicAlreadyExistsError:
            message = entry.get("error_message") or for_code(code).__name__
            raise BusUnavailable(f"cannot create topic {entry['topic']}: {message}")
