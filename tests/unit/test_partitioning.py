"""The stage producers' partitioner picks what aiokafka's DefaultPartitioner picks (so every
producer of a topic, Concord's or another Kafka client's, puts a key in the same partition),
the first time and once the key's hash is remembered."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from concord.runtime.partitioning import key_partitioner

PARTITIONS = st.integers(min_value=1, max_value=64).map(lambda n: list(range(n)))


@given(key=st.binary(max_size=80), partitions=PARTITIONS)
def test_a_key_goes_where_the_default_partitioner_sends_it(
    key: bytes, partitions: list[int]
) -> None:
    expected = DefaultPartitioner()(key, partitions, partitions)
    assert key_partitioner(key, partitions, partitions) == expected
    assert key_partitioner(key, partitions, []) == expected  # remembered, availability aside


# murmur2 of these keys as the Java client computes it (Kafka's own UtilsTest.testMurmur2).
JAVA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


def test_known_keys_land_where_the_java_client_puts_them() -> None:
    for partitions in (1, 3, 12, 100):
        for key, murmur in JAVA_MURMUR2.items():
            expected = (murmur & 0x7FFFFFFF) % partitions
            assert key_partitioner(key, list(range(partitions)), []) == expected
    assert key_partitioner(bytearray(b"abc"), [0, 1, 2], []) == key_partitioner(
        b"abc", [0, 1, 2], []
    )


@given(available=st.lists(st.integers(min_value=0, max_value=11), min_size=1, unique=True))
def test_a_record_without_a_key_goes_to_an_available_partition(available: list[int]) -> None:
    assert key_partitioner(None, list(range(12)), available) in available
    assert key_partitioner(None, [3, 4], []) in (3, 4)
