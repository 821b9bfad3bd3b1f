"""Rolling upgrades of the event schemas (issue 15, item 6): an event's readers go first.

A stage decodes events written with its own schema or with any older one it keeps under
schemas/history/, resolving them to its own; it cannot decode an event written with a newer
schema, whose fingerprint it has never seen. Schemas only evolve compatibly (a new field has a
default), so an upgraded reader reads both versions: upgrading readers before writers loses
nothing. Writers first, the old reader dead-letters what the new writer wrote, keeping its bytes,
and `concord deadletter replay` re-sends it once the reader is upgraded (deploy/README.md,
Upgrades).

Here one such upgrade of `ingested_record` (a field added, with a default) runs through the
normalization stage, its reader, and the real replay code, with a stand-in producer."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import orjson
import pytest

from builders import FakeIdentities, ingested_fhir, raw
from concord.cli import deadletters
from concord.config import NormalizationSettings
from concord.events import codec
from concord.events.codec import EventCodec
from concord.events.models import ClinicalFact, DeadLetter, IngestedRecord
from concord.normalization.app import NormalizationStage
from concord.normalization.record_facts import InMemoryRecordFacts
from concord.normalization.terminology import Terminology
from concord.runtime.batch import Outbound, run_batch
from concord.topics import DEADLETTER, FACTS, INGESTED

MPI = "urn:concord:enterprise-patient-id"
KEY = b"ehr-alpha/Patient/p1"
HEADERS = (("source", b"ehr-alpha"),)


class NextIngestedRecord(IngestedRecord):
    """The pydantic twin as the next release has it: one field more, with a default."""

    channel: str | None = None


@pytest.fixture
def next_release(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> EventCodec[Any]:
    """The next release's ingested_record codec: schemas/ with a field added to
    ingested_record.avsc, the new version kept in its history as `python -m
    concord.events.codec` keeps it."""
    schemas = tmp_path / "schemas"
    shutil.copytree(codec.schema_dir(), schemas)
    source = schemas / "ingested_record.avsc"
    schema = json.loads(source.read_text())
    schema["fields"].append(
        {
            "name": "channel",
            "type": ["null", "string"],
            "default": None,
            "doc": "How the record reached Concord (a new field: it has a default)",
        }
    )
    source.write_text(json.dumps(schema))
    assert [path.parent.name for path in codec.snapshot(schemas)] == ["ingested_record"]
    monkeypatch.setenv("CONCORD_SCHEMA_DIR", str(schemas))
    return EventCodec("ingested_record", NextIngestedRecord)


def _record() -> IngestedRecord:
    patient = {
        "resourceType": "Patient",
        "id": "p1",
        "meta": {"versionId": "2", "lastUpdated": "2024-01-02T03:04:05Z"},
        "identifier": [{"system": MPI, "value": "E-100"}],
        "name": [{"family": "Zyxwvut", "given": ["Ana"]}],
        "gender": "female",
        "birthDate": "1961-07-08",
    }
    record: IngestedRecord = ingested_fhir(patient, "ehr-alpha")
    return record


def _normalization() -> NormalizationStage:
    settings = NormalizationSettings(
        enterprise_id_systems=[MPI],
        database_url="postgresql://unused@127.0.0.1:1/none",
    )
    return NormalizationStage(
        settings, FakeIdentities(), Terminology.load(), record_facts=InMemoryRecordFacts()
    )


def _facts(out: Outbound) -> list[ClinicalFact]:
    return [codec.CLINICAL_FACT.decode(r.value) for r in out.pending if r.topic == FACTS]


def _letters(out: Outbound) -> list[tuple[int, int, bytes]]:
    """The dead letters as the topic would hold them: (partition, offset, value)."""
    return [(0, n, r.value) for n, r in enumerate(out.pending) if r.topic == DEADLETTER]


class _Broker:
    """Stands in for AIOKafkaProducer in the replay: every send acknowledged, and kept."""

    sent: ClassVar[list[tuple[str, bytes, bytes | None, Sequence[tuple[str, bytes]]]]] = []

    def __init__(self, **_: Any) -> None:
        return None

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def send(
        self, topic: str, value: bytes, *, key: bytes | None, headers: Sequence[tuple[str, bytes]]
    ) -> asyncio.Future[None]:
        self.sent.append((topic, value, key, headers))
        acknowledged: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        acknowledged.set_result(None)
        return acknowledged


@pytest.mark.asyncio
async def test_a_reader_older_than_its_writer_dead_letters_and_reads_the_replay_once_upgraded(
    next_release: EventCodec[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    record = _record()
    written = next_release.encode(NextIngestedRecord(**record.model_dump(), channel="mllp"))
    assert written[2:10] == next_release.fingerprint != codec.INGESTED_RECORD.fingerprint
    consumed = raw(written, topic=INGESTED, partition=2, offset=41, key=KEY, headers=HEADERS)

    # The writer was upgraded first: today's normalization cannot read the record.
    out = await run_batch(_normalization(), [consumed])
    assert _facts(out) == []
    [stored] = deadletters.decode_letters(_letters(out)).letters
    letter: DeadLetter = stored.letter
    assert (letter.stage, letter.reason_code) == ("normalization", "UNDECODABLE_EVENT")
    assert letter.reason.endswith("[UNKNOWN_SCHEMA]"), letter.reason
    assert next_release.fingerprint.hex() in letter.reason  # which schema it did not know
    # Everything a replay needs is kept.
    assert (letter.original_topic, letter.original_partition, letter.original_offset) == (
        INGESTED,
        2,
        41,
    )
    assert (letter.original_key, letter.original_value) == (KEY, written)

    # The reader is upgraded; then `concord deadletter replay --reason UNDECODABLE_EVENT`.
    monkeypatch.setattr(codec, "INGESTED_RECORD", next_release)
    monkeypatch.setattr(deadletters, "AIOKafkaProducer", _Broker)
    _Broker.sent = []
    selected = deadletters.select(
        [stored], deadletters.Selection(reasons=frozenset({"UNDECODABLE_EVENT"}))
    )
    assert await deadletters.replay("127.0.0.1:9", selected) == {INGESTED: 1}
    [(topic, value, key, headers)] = _Broker.sent
    assert (topic, value, key) == (INGESTED, written, KEY)
    replayed = raw(value, topic=topic, offset=77, key=key, headers=headers)
    out = await run_batch(_normalization(), [replayed])
    assert [r.topic for r in out.pending if r.topic == DEADLETTER] == []

    # Read as the same record from the old writer would have been: nothing of it was lost.
    old_writer = raw(codec.INGESTED_RECORD.encode(record), topic=INGESTED, key=KEY)
    expected = _facts(await run_batch(_normalization(), [old_writer]))
    assert expected
    assert _facts(out) == expected


@pytest.mark.asyncio
async def test_an_upgraded_reader_reads_the_older_writer_s_events_too(
    next_release: EventCodec[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Readers first is safe: until ingestion is upgraded, its events have the old schema."""
    record = _record()
    old_bytes = codec.INGESTED_RECORD.encode(record)
    decoded = next_release.decode(old_bytes)
    assert decoded == NextIngestedRecord(**record.model_dump())
    assert decoded.channel is None  # filled from the new field's default

    before = _facts(await run_batch(_normalization(), [raw(old_bytes, topic=INGESTED)]))
    monkeypatch.setattr(codec, "INGESTED_RECORD", next_release)
    out = await run_batch(_normalization(), [raw(old_bytes, topic=INGESTED)])
    assert [r.topic for r in out.pending if r.topic == DEADLETTER] == []
    assert _facts(out) == before
    assert orjson.loads(decoded.payload)["id"] == "p1"
