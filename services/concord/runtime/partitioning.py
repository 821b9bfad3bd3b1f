"""Which partition a keyed record goes to: what aiokafka's DefaultPartitioner picks (murmur2 of
the key, as the Java client does, so any producer of a topic agrees), with each key's hash
remembered. aiokafka's murmur2 is a Python loop over the key's bytes (~4 µs for a 28-byte key),
and a stage sends many records under few keys: a patient's facts, a source's patient's
records."""

from __future__ import annotations

import random
from collections.abc import Sequence
from functools import lru_cache

from aiokafka.partitioner import murmur2

# Keys whose hash is remembered (~100 bytes each): a stage's working set of patients.
KEYS_REMEMBERED = 32_768


@lru_cache(maxsize=KEYS_REMEMBERED)
def _key_hash(key: bytes) -> int:
    return int(murmur2(key)) & 0x7FFFFFFF


def key_partitioner(
    key: bytes | None, all_partitions: Sequence[int], available: Sequence[int]
) -> int:
    """aiokafka's partitioner signature: the key's partition among all of the topic's (sorted
    by id), or, without a key, any partition, an available one if there is one."""
    if key is None:
        return random.choice(available or all_partitions)  # noqa: S311 (not for security)
    return all_partitions[_key_hash(bytes(key)) % len(all_partitions)]
