"""The Kafka bus's partition of a key is the producer's default partitioner's."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import strategies as st

from ingest._partition import kafka_partition, murmur2


@given(st.binary(max_size=300))
def test_murmur2_is_aiokafkas(data: bytes) -> None:
    assert murmur2(data) == aiokafka_murmur2(data)


@given(
    st.binary(min_size=1, max_size=80) | st.text(max_size=60).map(str.encode),
    st.lists(st.integers(0, 500), min_size=1, max_size=40, unique=True),
)
def test_the_partition_is_the_default_partitioners(key: bytes, partitions: list[int]) -> None:
    assert kafka_partition(key, partitions) == DefaultPartitioner()(key, partitions, partitions)


def test_a_device_id_keeps_its_partition() -> None:
    key = b"dev-40adc4936997508a3294c8258291f81c"
    assert murmur2(key) == aiokafka_murmur2(key)
    assert kafka_partition(key, [0, 1, 2]) == DefaultPartitioner()(key, [0, 1, 2], [0, 1, 2])
