"""Ingestion's de-duplication (issue 15, items 7 and 8), with the window in memory
(builders.FakeSeenVersions): a repeat is recognised by the record's identity (source, record,
version, operation) and its content, so a sender that re-uses an HL7 v2 control id (or a FHIR
version id) for other content is ingested, not dropped; and the window is pruned as fast as it
fills.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY

from builders import FakeSeenVersions, raw
from concord.config import IngestionSettings
from concord.events import codec
from concord.events.models import DeadLetter, IngestedRecord
from concord.events.raw import Headers, RawEvent
from concord.ingestion.app import PRUNE_CHUNK_ROWS, PRUNE_EVERY_SECONDS, IngestionStage
from concord.ingestion.codes import ICD10_CM
from concord.ingestion.common import version_key_of
from concord.ingestion.gateway import MllpGateway
from concord.ingestion.hl7v2 import ingest_hl7v2, zones_from
from concord.ingestion.ports import ANY_CONTENT
from concord.runtime.batch import Outbound, run_batch
from concord.topics import INGESTED, RAW_CLAIMS, RAW_FHIR, RAW_HL7V2

DSN = "postgresql://unused@127.0.0.1:1/none"
SOURCE = b"lab-dedupe"


def _stage(seen: FakeSeenVersions | None = None) -> IngestionStage:
    settings = IngestionSettings(max_payload_bytes=64 * 1024, database_url=DSN)
    return IngestionStage(settings, seen or FakeSeenVersions())


def _event(value: bytes, topic: str, offset: int = 0) -> RawEvent:
    return raw(value, topic=topic, offset=offset, headers=(("source", SOURCE),))


def _adt(control: str, mrn: str, family: str) -> bytes:
    return (
        f"MSH|^~\\&|LAB|GH|CONCORD|GH|20240301090000-0500||ADT^A08^ADT_A01|{control}|P|2.5\r"
        f"EVN|A08|20240301090000-0500\rPID|1||{mrn}^^^GH^MR||{family}^Jo||19700101|F\r"
    ).encode()


def _ingested(out: Outbound) -> list[IngestedRecord]:
    return [codec.INGESTED_RECORD.decode(r.value) for r in out.pending if r.topic == INGESTED]


def _count(name: str, topic: str) -> float:
    return REGISTRY.get_sample_value(name, {"topic": topic}) or 0.0


def _reused(topic: str) -> float:
    return _count("concord_ingestion_reused_versions_total", topic)


def _duplicates(topic: str) -> float:
    return _count("concord_ingestion_duplicates_total", topic)


@pytest.mark.asyncio
async def test_a_reused_control_id_with_other_content_is_ingested_as_a_new_record() -> None:
    """Counters reset, or a second interface engine: the same MSH-10 (and MSH-7) for another
    message. It was answered AA, so dropping it as a duplicate would lose it without a trace."""
    stage = _stage()
    first = _adt("C-1", "M-1", "Doe")
    reused = _adt("C-1", "M-2", "Roe")
    reused_before, duplicates_before = _reused(RAW_HL7V2), _duplicates(RAW_HL7V2)

    [one] = _ingested(await run_batch(stage, [_event(first, RAW_HL7V2)]))
    [two] = _ingested(
        await run_batch(stage, [_event(reused, RAW_HL7V2, 1), _event(first, RAW_HL7V2, 2)])
    )
    assert two.payload == reused.rstrip(b"\r")
    # A record id of its own, so the facts normalization derives from it have their own ids.
    assert two.record_id != one.record_id
    assert two.provenance.source_record_id == one.provenance.source_record_id == "ADT^A08/C-1"
    assert _reused(RAW_HL7V2) == reused_before + 1
    assert _duplicates(RAW_HL7V2) == duplicates_before + 1  # the first, sent again

    # Each content, sent again, is a repeat.
    out = await run_batch(stage, [_event(reused, RAW_HL7V2, 3), _event(first, RAW_HL7V2, 4)])
    assert _ingested(out) == []
    assert _duplicates(RAW_HL7V2) == duplicates_before + 3


@pytest.mark.asyncio
async def test_a_reused_control_id_in_one_batch_is_two_records() -> None:
    out = await run_batch(
        _stage(),
        [
            _event(_adt("C-2", "M-1", "Doe"), RAW_HL7V2),
            _event(_adt("C-2", "M-2", "Roe"), RAW_HL7V2, 1),
            _event(_adt("C-2", "M-2", "Roe"), RAW_HL7V2, 2),
        ],
    )
    records = _ingested(out)
    assert len(records) == 2 and records[0].record_id != records[1].record_id


@pytest.mark.asyncio
async def test_the_record_id_is_the_same_whichever_content_came_first() -> None:
    """Two workers may see the two contents of a re-used id at once (different patients,
    different partitions): each content's record id must not depend on what was seen before."""
    a, b = _adt("C-3", "M-1", "Doe"), _adt("C-3", "M-2", "Roe")
    [a_first] = _ingested(await run_batch(_stage(), [_event(a, RAW_HL7V2)]))
    [b_alone] = _ingested(await run_batch(_stage(), [_event(b, RAW_HL7V2)]))
    both = _ingested(await run_batch(_stage(), [_event(b, RAW_HL7V2), _event(a, RAW_HL7V2, 1)]))
    assert [r.record_id for r in both] == [b_alone.record_id, a_first.record_id]


def _patient(**overrides: Any) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": "p-dedupe",
        "meta": {"versionId": "4", "lastUpdated": "2024-01-02T03:04:05Z"},
        "name": [{"family": "Zyxwvut", "given": ["Ana"]}],
        "birthDate": "1961-07-08",
    } | overrides


@pytest.mark.asyncio
async def test_a_fhir_version_serialized_again_is_a_repeat() -> None:
    """The same id and versionId with the same content, whatever the bytes: keys in another
    order, indented, a narrative generated again or a tag added on the way."""
    stage = _stage()
    sent = orjson.dumps(_patient())
    again = [
        orjson.dumps(dict(reversed(list(_patient().items()))), option=orjson.OPT_INDENT_2),
        orjson.dumps(_patient(text={"status": "generated", "div": "<div>x</div>"})),
        orjson.dumps(_patient(meta=_patient()["meta"] | {"tag": [{"code": "relayed"}]})),
    ]
    assert len(_ingested(await run_batch(stage, [_event(sent, RAW_FHIR)]))) == 1
    events = [_event(value, RAW_FHIR, offset) for offset, value in enumerate(again, start=1)]
    assert _ingested(await run_batch(stage, events)) == []


@pytest.mark.asyncio
async def test_a_fhir_version_with_other_content_is_a_new_record() -> None:
    stage = _stage()
    before = _reused(RAW_FHIR)
    sent = orjson.dumps(_patient())
    other = orjson.dumps(_patient(birthDate="1961-07-09"))
    [one] = _ingested(await run_batch(stage, [_event(sent, RAW_FHIR)]))
    [two] = _ingested(await run_batch(stage, [_event(other, RAW_FHIR, 1)]))
    assert two.record_id != one.record_id
    assert two.provenance.source_record_version == one.provenance.source_record_version == "4"
    assert _reused(RAW_FHIR) == before + 1


def _claim(**overrides: Any) -> bytes:
    line = {
        "claim_id": "CLM-DEDUPE",
        "line_number": 1,
        "claim_version": "2",
        "status": "original",
        "patient": {"identifiers": [{"system": "urn:example:member", "value": "MBR-1"}]},
        "payer": {"id": "PAYER1"},
        "service_date_from": "2024-01-02",
        "submitted_at": "2024-01-05T10:00:00Z",
        "diagnoses": [{"code": "E11.9", "system": ICD10_CM, "sequence": 1}],
    } | overrides
    return orjson.dumps(line)


@pytest.mark.asyncio
async def test_a_claim_version_with_other_content_is_a_new_record() -> None:
    stage = _stage()
    [one] = _ingested(await run_batch(stage, [_event(_claim(), RAW_CLAIMS)]))
    other = _claim(diagnoses=[{"code": "E11.65", "system": ICD10_CM, "sequence": 1}])
    [two] = _ingested(await run_batch(stage, [_event(other, RAW_CLAIMS, 1)]))
    assert two.record_id != one.record_id
    assert _ingested(await run_batch(stage, [_event(_claim(), RAW_CLAIMS, 2)])) == []


@pytest.mark.asyncio
async def test_a_version_remembered_before_contents_were_is_a_repeat_whatever_its_content() -> None:
    """Rows written before the window kept contents (migration 0013) hold the version only:
    for their window, the version is dropped as before rather than emitted a second time."""
    seen = FakeSeenVersions()
    stage = _stage(seen)
    [record] = _ingested(await run_batch(_stage(), [_event(_adt("C-4", "M-1", "Doe"), RAW_HL7V2)]))
    seen.seen[(version_key_of(record), ANY_CONTENT)] = datetime.now(UTC)
    out = await run_batch(stage, [_event(_adt("C-4", "M-2", "Roe"), RAW_HL7V2)])
    assert _ingested(out) == []


@pytest.mark.asyncio
async def test_a_reused_control_id_through_the_mllp_gateway_is_acknowledged_and_ingested() -> None:
    """The listener answers AA for both messages; the stage must then ingest both."""

    class Port:
        def __init__(self) -> None:
            self.raw: list[tuple[bytes, Headers]] = []

        async def publish_raw_hl7v2(
            self, *, message: bytes, key: bytes | None, headers: Headers
        ) -> None:
            self.raw.append((message, headers))

        async def publish_dead_letter(self, *, letter: DeadLetter) -> None:
            raise AssertionError("nothing is rejected here")

    port = Port()
    ingest = partial(ingest_hl7v2, max_payload_bytes=100_000, zone_of=zones_from({}, None))
    gateway = MllpGateway(port, ingest, source="lab-dedupe", write_timeout_seconds=1.0)
    for message in (_adt("C-5", "M-1", "Doe"), _adt("C-5", "M-2", "Roe")):
        assert (await gateway.handle(message, "127.0.0.1:5000")).code == "AA"
    events = [
        RawEvent(RAW_HL7V2, 0, offset, None, message, headers, datetime.now(UTC))
        for offset, (message, headers) in enumerate(port.raw)
    ]
    assert len(_ingested(await run_batch(_stage(), events))) == 2


# --- pruning ----------------------------------------------------------------------------------


def _aged(seen: FakeSeenVersions, rows: int, *, days: int) -> None:
    when = datetime.now(UTC) - timedelta(days=days)
    for n in range(rows):
        seen.seen[(f"key-{days}-{n}", f"id-{days}-{n}")] = when


async def _tick(stage: IngestionStage) -> None:
    await stage.on_tick(set(), Outbound(stage.stage))


@pytest.mark.asyncio
async def test_a_prune_forgets_everything_older_than_the_window_not_one_chunk() -> None:
    """Before: one DELETE of at most 10,000 rows every 600 s, ~17 rows/s per worker, so a stage
    ingesting faster grew the table without bound. Now a prune goes on chunk after chunk."""
    seen = FakeSeenVersions()
    _aged(seen, PRUNE_CHUNK_ROWS * 3 + 7, days=31)
    _aged(seen, 5, days=1)
    await _tick(_stage(seen))
    assert len(seen.seen) == 5
    assert all(limit <= PRUNE_CHUNK_ROWS for limit in seen.limits)


@pytest.mark.asyncio
async def test_a_backlog_beyond_the_ticks_budget_goes_on_at_the_next_tick(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each tick prunes for a bounded time, so a large backlog never stalls the batches; what
    is left is pruned at the next tick, not PRUNE_EVERY_SECONDS later."""
    clock = [1000.0]
    monkeypatch.setattr("concord.ingestion.app.time.monotonic", lambda: clock[0])
    seen = FakeSeenVersions()
    stage = _stage(seen)
    _aged(seen, PRUNE_CHUNK_ROWS * 4, days=40)

    async def slow_prune(before: datetime, limit: int) -> int:
        clock[0] += 0.3  # each chunk takes 0.3 s of the budget
        return await FakeSeenVersions.prune(seen, before, limit)

    monkeypatch.setattr(seen, "prune", slow_prune)
    await _tick(stage)
    left = len(seen.seen)
    assert 0 < left < PRUNE_CHUNK_ROWS * 4
    clock[0] += 5  # the next tick, long before PRUNE_EVERY_SECONDS
    for _ in range(4):
        await _tick(stage)
        clock[0] += 5
    assert seen.seen == {}


@pytest.mark.asyncio
async def test_the_first_prune_does_not_wait_for_the_machine_uptime(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """time.monotonic() counts from boot: on a machine up for 5 s, "never pruned" must still
    mean "prune now", and once caught up the next prune waits PRUNE_EVERY_SECONDS."""
    clock = [5.0]
    monkeypatch.setattr("concord.ingestion.app.time.monotonic", lambda: clock[0])
    seen = FakeSeenVersions()
    stage = _stage(seen)
    await _tick(stage)
    assert len(seen.pruned) == 1
    clock[0] += PRUNE_EVERY_SECONDS / 2
    await _tick(stage)
    assert len(seen.pruned) == 1
    clock[0] += PRUNE_EVERY_SECONDS
    await _tick(stage)
    assert len(seen.pruned) == 2
