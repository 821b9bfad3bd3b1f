"""An output record the producer refuses as too large is the input record's failure, not the
partition's (issue 15: "one record can stop a stage").

aiokafka's producer refuses a record larger than its max_request_size in `send`, before anything
is sent, with MessageSizeTooLargeError, which is not transient: before this was handled, the
loop raised it, the worker restarted on the same batch, and the partition stopped. Ingestion's
output wraps the raw bytes in metadata, so a raw record just under the broker's limit (an HL7
message with an embedded PDF) comes out over it; and its dead letter, which carries the
original bytes, can be over it too."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime

import orjson
import pytest
from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata, TopicPartition

from builders import FakeProducer, FakeSeenVersions, raw
from concord.config import IngestionSettings
from concord.deadletters import REASON_CODES, Rejection
from concord.events import codec
from concord.events.models import DeadLetter
from concord.events.raw import RawEvent
from concord.ingestion.app import IngestionStage
from concord.runtime.batch import (
    BatchLoop,
    Outbound,
    OutboundRecord,
    publish_dead_letter,
    run_batch,
)
from concord.runtime.stage import BaseStage
from concord.topics import CONFLICTS, DEADLETTER, FACTS, INGESTED, RAW_FHIR, RAW_HL7V2

DSN = "postgresql://concord@127.0.0.1:1/concord"  # never connected to
# aiokafka's default max_request_size, which the workers' producer keeps (make_producer_for).
PRODUCER_LIMIT = 1024 * 1024
ENVELOPE = b"<metadata>" * 20


class _SizeLimitedProducer(FakeProducer):
    """Refuses a record as aiokafka's AIOKafkaProducer.send does: with MessageSizeTooLargeError,
    raised before anything is queued, when the record's estimated size (the same estimate)
    exceeds max_request_size."""

    def __init__(self, max_request_size: int = PRODUCER_LIMIT) -> None:
        super().__init__()
        self.max_request_size = max_request_size
        self.refused = 0

    async def send(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[None]:
        size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers or [])
        if size > self.max_request_size:
            self.refused += 1
            raise MessageSizeTooLargeError(f"The message is {size} bytes when serialized")
        return await super().send(topic, value, key=key, headers=headers)


class _Wraps(BaseStage):
    """Each input comes out wrapped in metadata, larger than it went in, as ingestion's does."""

    stage = "conflicts"
    topics = (FACTS,)

    def __init__(self, *, twice: bool = False) -> None:
        self.twice = twice

    async def process(self, events: Sequence[RawEvent], out: Outbound) -> None:
        for event in events:
            value = event.value or b""
            wrapped = ENVELOPE + value + (value if self.twice else b"")
            out.add(OutboundRecord(CONFLICTS, wrapped, key=event.key))


def _consumed(offset: int, value: bytes) -> ConsumerRecord:
    return ConsumerRecord(
        topic=FACTS, partition=0, offset=offset, timestamp=0, timestamp_type=0, key=b"patient-1",
        value=value, checksum=None, serialized_key_size=9, serialized_value_size=len(value),
        headers=(("source", b"lab"),),
    )  # fmt: skip


class _Consumer:
    """One batch on partition 0, then nothing; remembers what it committed."""

    def __init__(self, values: Sequence[bytes]) -> None:
        self.tp = TopicPartition(FACTS, 0)
        self.batches = [{self.tp: [_consumed(i, v) for i, v in enumerate(values)]}]
        self.committed: list[dict[TopicPartition, int]] = []

    async def getmany(self, **_: object) -> dict[TopicPartition, list[ConsumerRecord]]:
        return self.batches.pop(0) if self.batches else {}

    async def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        self.committed.append({tp: o.offset for tp, o in offsets.items()})

    def assignment(self) -> set[TopicPartition]:
        return {self.tp}

    def highwater(self, tp: TopicPartition) -> int:
        return 3


def _loop(stage: BaseStage) -> BatchLoop:
    return BatchLoop(stage, IngestionSettings(database_url=DSN))


def _letters(producer: FakeProducer) -> list[DeadLetter]:
    return [
        codec.DEAD_LETTER.decode(value) for topic, value, *_ in producer.sent if topic == DEADLETTER
    ]


@pytest.mark.asyncio
async def test_an_output_too_large_to_produce_is_dead_lettered_and_the_partition_moves_on() -> None:
    # The input fits the limit (the broker took it); wrapped, it does not.
    big = b"B" * (PRODUCER_LIMIT - 100)
    consumer = _Consumer([b"small-1", big, b"small-2"])
    producer = _SizeLimitedProducer()

    await _loop(_Wraps()).run_once(consumer, producer, timeout_ms=0)  # type: ignore[arg-type]

    # The batch is committed: the partition goes on past the record.
    assert consumer.committed == [{consumer.tp: 3}]
    assert producer.refused == 0  # nothing too large reached the producer
    passed = [value for topic, value, *_ in producer.sent if topic == CONFLICTS]
    assert passed == [ENVELOPE + b"small-1", ENVELOPE + b"small-2"]
    [letter] = _letters(producer)
    assert (letter.stage, letter.reason_code) == ("conflicts", "OUTPUT_TOO_LARGE")
    assert (letter.original_topic, letter.original_partition, letter.original_offset) == (
        FACTS,
        0,
        1,
    )
    # The letter with the original bytes would be over the limit too: it keeps the record's
    # coordinates, length and SHA-256 instead, and says so.
    assert letter.original_value is None
    assert letter.original_key == b"patient-1"
    assert [(h.key, h.value) for h in letter.original_headers] == [("source", b"lab")]
    assert f"{len(big)} bytes" in letter.reason
    assert f"SHA-256 {hashlib.sha256(big).hexdigest()}" in letter.reason
    assert "not kept" in letter.reason
    assert str(PRODUCER_LIMIT) in letter.reason  # the limit that was exceeded


@pytest.mark.asyncio
async def test_a_dead_letter_that_fits_keeps_the_original_bytes() -> None:
    # Doubled, the output is over the limit; the input alone, in its letter, is not.
    medium = b"M" * (PRODUCER_LIMIT // 2 + 1000)
    consumer = _Consumer([b"small-1", medium, b"small-2"])
    producer = _SizeLimitedProducer()

    await _loop(_Wraps(twice=True)).run_once(consumer, producer, timeout_ms=0)  # type: ignore[arg-type]

    assert consumer.committed == [{consumer.tp: 3}]
    [letter] = _letters(producer)
    assert (letter.reason_code, letter.original_offset) == ("OUTPUT_TOO_LARGE", 1)
    assert letter.original_value == medium
    assert "SHA-256" not in letter.reason
    assert "M" * 10 not in letter.reason  # no payload in the reason


def test_the_workers_producer_refuses_what_the_loop_checks_against() -> None:
    """One number: the producer the workers build is configured with the loop's limit."""
    from concord.runtime.batch import MAX_RECORD_BYTES

    async def configured() -> int:
        producer = BatchLoop.make_producer_for(IngestionSettings(database_url=DSN))
        try:
            return int(producer._max_request_size)
        finally:
            await producer.stop()

    assert asyncio.run(configured()) == MAX_RECORD_BYTES == PRODUCER_LIMIT
    assert "OUTPUT_TOO_LARGE" in REASON_CODES


def _oru(pdf: bytes, control_id: str) -> bytes:
    """An HL7 v2 ORU^R01 with a PDF report embedded in an ED OBX, as labs send them."""
    encoded = base64.b64encode(pdf).decode()
    return (
        f"MSH|^~\\&|LAB|GH|CONCORD|GH|20240301090000-0500||ORU^R01^ORU_R01|{control_id}|P|2.5.1\r"
        "PID|1||MRN-55012^^^GH^MR||Quorvatz^Ann||19700512|F\r"
        "OBR|1||ACC-9|11502-2^Laboratory report^LN|||20240301070000-0500\r"
        f"OBX|1|ED|11502-2^Laboratory report^LN||^application^pdf^Base64^{encoded}||||||F\r"
    ).encode()


@pytest.mark.asyncio
async def test_ingestion_dead_letters_a_raw_message_whose_ingested_record_is_too_large() -> None:
    """The realistic case: an HL7 message under the broker's limit with a PDF in it; its
    ingested record (the message plus provenance) is over it. Its neighbours are ingested,
    and its version is not remembered as emitted, so a replay once the limit is raised is
    not dropped as a duplicate."""
    pdf = (b"%PDF" + bytes(range(256)) * 4000)[: (PRODUCER_LIMIT - 350) * 3 // 4]
    big = _oru(pdf, "CTRL-BIG")  # base64 makes it just under the limit
    assert PRODUCER_LIMIT - 1000 < len(big) < PRODUCER_LIMIT
    small = _oru(b"%PDF tiny", "CTRL-SMALL")
    seen = FakeSeenVersions()
    stage = IngestionStage(IngestionSettings(database_url=DSN), seen)
    events = [
        raw(v, topic=RAW_HL7V2, offset=i, headers=[("source", b"lab")])
        for i, v in enumerate([small, big])
    ]

    out = await run_batch(stage, events)
    producer = _SizeLimitedProducer()
    await out.flush(producer)

    ingested = [codec.INGESTED_RECORD.decode(v) for t, v, *_ in producer.sent if t == INGESTED]
    assert [r.provenance.raw_offset for r in ingested] == [0]
    [letter] = _letters(producer)
    assert (letter.stage, letter.reason_code, letter.original_offset) == (
        "ingestion",
        "OUTPUT_TOO_LARGE",
        1,
    )
    assert len(seen.seen) == 1  # the small message's version only


def test_a_dead_letter_is_always_small_enough_to_send() -> None:
    """Even with a key and headers that alone exceed the limit, the letter is sent: it keeps
    the coordinates, and says what it left out."""
    huge = b"H" * PRODUCER_LIMIT
    event = RawEvent(
        topic=FACTS,
        partition=2,
        offset=77,
        key=huge,
        value=huge,
        headers=(("source", huge),),
        received_time=datetime.now(UTC),
    )
    out = Outbound("conflicts")
    publish_dead_letter(out, raw=event, rejection=Rejection("CONFLICTS_FAILED", "ValueError"))
    [record] = out.pending
    size = DefaultRecordBatchBuilder.estimate_size_in_bytes(
        record.key, record.value, list(record.headers)
    )
    assert size <= PRODUCER_LIMIT
    letter = codec.DEAD_LETTER.decode(record.value)
    assert (letter.original_topic, letter.original_partition, letter.original_offset) == (
        FACTS,
        2,
        77,
    )
    assert letter.original_value is None and letter.original_key is None
    assert letter.original_headers == ()
    assert letter.reason.startswith("ValueError")
    assert hashlib.sha256(huge).hexdigest() in letter.reason


def _patient(number: int, photo: str | None = None) -> dict[str, object]:
    return {
        "resourceType": "Patient",
        "id": f"p{number}",
        "meta": {"versionId": "1", "lastUpdated": "2024-03-01T12:00:00Z"},
        "identifier": [{"system": "urn:lab:mrn", "value": f"m{number}"}],
        "name": [{"family": "Quorvatz", "given": ["Ann"]}],
        **({"photo": [{"contentType": "image/png", "data": photo}]} if photo else {}),
    }


@pytest.mark.asyncio
async def test_a_bundle_with_an_entry_too_large_leaves_no_entry_remembered_as_emitted() -> None:
    """The Bundle is dead-lettered whole; the entry before the large one was ingested in the
    failed pass, whose output is dropped: were it remembered as emitted, a replay of the
    Bundle once the limit is raised would drop it as a duplicate, and it would be lost."""
    photo = "QUJD" * ((PRODUCER_LIMIT - 300) // 4)  # the entry's record comes out over the limit
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": _patient(1)}, {"resource": _patient(2, photo)}],
    }
    seen = FakeSeenVersions()
    stage = IngestionStage(IngestionSettings(database_url=DSN), seen)
    event = raw(orjson.dumps(bundle), topic=RAW_FHIR, headers=[("source", b"lab")])

    out = await run_batch(stage, [event])

    [record] = out.pending
    assert record.topic == DEADLETTER
    assert codec.DEAD_LETTER.decode(record.value).reason_code == "OUTPUT_TOO_LARGE"
    assert seen.seen == {}
