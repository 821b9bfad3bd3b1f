"""A decodable poison record on every topic a stage consumes, amid normal records: it is
dead-lettered with the stage's reason and its original bytes, and the records after it in its
partition are processed (their alerts come).

The poisons decode (valid JSON or ER7 on the raw topics, valid Avro on the others) but a stage
cannot process them:

- ehr.raw.hl7v2 and ehr.raw.claims: a timestamp at the end of year 9999 with a -14:00 offset.
  It parses, but is past datetime's range once in UTC: the ingestion core raises
  (OverflowError), and the stage dead-letters the record as INGESTION_FAILED. (A core that
  checked the range would reject it with a code of its own: any dead letter passes here.)
- ehr.raw.fhir: no record was found on which the FHIR core or the stage raises. The same
  out-of-range instant is accepted by ingestion, and the IngestedRecord it publishes cannot be
  decoded by normalization (fastavro overflows reading it back): normalization dead-letters it
  as UNDECODABLE_EVENT. Either that, or a dead letter from ingestion, passes. Beside it, a
  Patient with NUL in its name: ingestion reads it without the NUL, with a CONTROL_CHARACTER
  warning (or, before that rule, a later stage dead-letters it); either is accounted for.
- concord.ingested: a Patient record whose source system holds NUL. PostgreSQL refuses it in
  the identity store: NORMALIZATION_FAILED.
- concord.facts: a fact whose patient id and value hold NUL: CONFLICTS_FAILED.
- concord.resolutions: a reviewer's decision whose patient id holds NUL: CONFLICTS_FAILED.
- concord.conflicts: a conflict event whose conflict and patient ids hold NUL:
  ALERTING_FAILED.

One poison goes to every partition of each topic, between two waves of the workload, so
every partition has records after its poison; reviewers' decisions on some alerts, sent after
the poisons, dismiss them through concord.resolutions.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner
from fault_tools import (
    Coordinate,
    Key,
    Outgoing,
    Workload,
    dead_letters,
    disagreeing,
    observation,
    patient_id,
    send,
)

from concord.config import DEFAULT_ENTERPRISE_ID_SYSTEM
from concord.conflicts.resolutions import decide
from concord.events import codec
from concord.events.models import (
    ClinicalFact,
    ConflictEvent,
    ConflictResolution,
    DeadLetter,
    IngestedRecord,
    Provenance,
)
from concord.events.raw import RawEvent
from concord.ingestion.fhir import ingest_fhir
from concord.stack.stack import StackInfo
from concord.topics import (
    CONFLICTS,
    FACTS,
    INGESTED,
    PARTITIONS,
    RAW_CLAIMS,
    RAW_FHIR,
    RAW_HL7V2,
    RESOLUTIONS,
)

pytestmark = [pytest.mark.faults, pytest.mark.asyncio]

PATIENTS, WAVE = 24, 12  # two waves of 12 patients, 10 FHIR records each
OUT_OF_RANGE = "9999-12-31T23:59:59-14:00"  # after 9999-12-31 in UTC
CLAIMS_SAMPLE = Path(__file__).resolve().parents[2] / "services/concord/demo/claims-sample.ndjson"
NOW = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
# What each internal topic's poison must be dead-lettered as, and by which stage.
INTERNAL_REASONS = {
    INGESTED: ("normalization", "NORMALIZATION_FAILED"),
    FACTS: ("conflicts", "CONFLICTS_FAILED"),
    RESOLUTIONS: ("conflicts", "CONFLICTS_FAILED"),
    CONFLICTS: ("alerting", "ALERTING_FAILED"),
}


# --- the raw topics' records ----------------------------------------------------------------


def _adt(token: str, n: int, *, at: str = "20261120090000-0500") -> bytes:
    return (
        f"MSH|^~\\&|FLT|GH|CONCORD|GH|{at}||ADT^A08^ADT_A01|flt{token}-{n}|P|2.5.1\r"
        f"EVN|A08|{at}\r"
        f"PID|1||FLT{token}M{n}^^^GH^MR||Hl{token}^Pat{n}||19{50 + n:02d}0512|F\r"
    ).encode()


def _claim(token: str, n: int, *, submitted: str | None = None) -> bytes:
    line: dict[str, Any] = orjson.loads(CLAIMS_SAMPLE.read_text().splitlines()[0])
    line["claim_id"] = f"FLT-{token}-{n}"
    line["patient"]["identifiers"] = [
        {"system": DEFAULT_ENTERPRISE_ID_SYSTEM, "value": f"FLTC{token}-{n}"}
    ]
    line["patient"]["member_id"] = f"M{token}{n}"
    line["patient"]["family"] = f"Cl{token}{n}"
    if submitted is not None:
        line["submitted_at"] = line["adjudicated_at"] = submitted
    return orjson.dumps(line)


def _out_of_range(token: str, partition: int) -> bytes:
    """A result whose times are past datetime's range once in UTC."""
    resource = observation(
        f"flt{token}range{partition}", "Patient/nobody", "2345-7", 1.0, "mg/dL",
        updated=OUT_OF_RANGE,
    )  # fmt: skip
    return orjson.dumps(resource | {"effectiveDateTime": OUT_OF_RANGE})


def _nul_patient(token: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": f"flt{token}nul",
        "meta": {"versionId": "1", "lastUpdated": "2026-11-20T09:00:00+00:00"},
        "identifier": [{"system": DEFAULT_ENTERPRISE_ID_SYSTEM, "value": f"FLTN{token}"}],
        "name": [{"family": "Null\u0000person", "given": ["Alex"]}],
        "gender": "female",
        "birthDate": "1970-01-01",
    }


# --- the internal topics' poisons -------------------------------------------------------------


def _provenance(source: str = "flt-poison") -> Provenance:
    return Provenance(
        source_system=source,
        source_record_id="Patient/poison",
        event_time=NOW,
        received_time=NOW,
        raw_topic="flt.poison",
        raw_partition=0,
        raw_offset=0,
        payload_sha256="0" * 64,
    )


def _ingested_poison(token: str, partition: int) -> bytes:
    """A Patient as ingestion would publish it, but from a source whose name holds NUL."""
    resource = {
        "resourceType": "Patient",
        "id": f"flt{token}poison{partition}",
        "meta": {"versionId": "1", "lastUpdated": "2026-11-20T09:00:00+00:00"},
        "identifier": [
            {"system": DEFAULT_ENTERPRISE_ID_SYSTEM, "value": f"FLTP{token}-{partition}"}
        ],
        "name": [{"family": "Poison", "given": ["Pat"]}],
        "birthDate": "1970-01-01",
    }
    # Read from no real topic: its provenance must not name a raw record the test sent.
    raw = RawEvent(
        "flt.poison", partition, 0, None, orjson.dumps(resource), (("source", b"flt-p"),), NOW
    )
    ingested = ingest_fhir(raw, max_payload_bytes=1_000_000)
    assert isinstance(ingested, list) and len(ingested) == 1
    record: IngestedRecord = ingested[0]
    poisoned = record.provenance.model_copy(update={"source_system": "flt\x00poison"})
    return codec.INGESTED_RECORD.encode(record.model_copy(update={"provenance": poisoned}))


def _fact_poison(token: str, partition: int) -> bytes:
    return codec.CLINICAL_FACT.encode(
        ClinicalFact(
            fact_id=f"flt{token}poison{partition}",
            patient_id=f"FLTP{token}\x00{partition}",
            attribute="Patient.birthDate",
            attribute_class="DEMOGRAPHICS",
            value="1970-\x0001-01",
            status="ASSERTED",
            provenance=_provenance(),
        )
    )


def _resolution_poison(token: str, partition: int) -> bytes:
    return codec.CONFLICT_RESOLUTION.encode(
        ConflictResolution(
            resolution_id=f"flt{token}poison{partition}",
            conflict_id=f"flt{token}poison{partition}",
            patient_id=f"FLTP{token}\x00{partition}",
            attribute="Patient.birthDate",
            decision="DISMISSED",
            resolved_by="flt-reviewer",
            resolved_at=NOW,
        )
    )


def _conflict_poison(token: str, partition: int) -> bytes:
    return codec.CONFLICT_EVENT.encode(
        ConflictEvent(
            conflict_id=f"flt{token}\x00poison{partition}",
            revision=1,
            kind="OPENED",
            patient_id=f"FLTP{token}\x00{partition}",
            attribute="Patient.birthDate",
            attribute_class="DEMOGRAPHICS",
            severity="LOW",
            assertions=(),
            policy_version="flt",
            detected_at=NOW,
            trigger_received_time=NOW,
        )
    )


POISONS = {
    INGESTED: _ingested_poison,
    FACTS: _fact_poison,
    RESOLUTIONS: _resolution_poison,
    CONFLICTS: _conflict_poison,
}


async def _records_after(bootstrap: str, coordinates: list[Coordinate]) -> dict[Coordinate, int]:
    """How many records each poison's partition holds after it."""
    from concord.runtime.reading import read_topic

    after: dict[Coordinate, int] = {}
    for topic in sorted({c[0] for c in coordinates}):
        last: dict[int, int] = defaultdict(lambda: -1)
        for record in await read_topic(bootstrap, topic):
            last[record.partition] = max(last[record.partition], record.offset)
        for coordinate in coordinates:
            if coordinate[0] == topic:
                after[coordinate] = last[coordinate[1]] - coordinate[2]
    return after


def _partition(key: str) -> int:
    """The partition a producer's default partitioner gives `key` (as the workers' do)."""
    every = list(range(PARTITIONS))
    return int(DefaultPartitioner()(key.encode(), every, every))


def _covering_token() -> str:
    """A run token whose second wave reaches every partition of concord.facts and of
    concord.conflicts (both keyed by patient id), so that every poison there has records
    after it. (concord.ingested, keyed by source and source patient, gets 24 keys: a partition
    left out is one chance in ~250, and is not worth a check.)"""
    second = range(WAVE, PATIENTS)
    while True:
        token = uuid.uuid4().hex[:6]
        facts = {_partition(patient_id(token, n)) for n in second}
        conflicts = {_partition(patient) for patient, _ in disagreeing(token, second)}
        if len(facts) == len(conflicts) == PARTITIONS:
            return token


def _letter_of(letters: list[DeadLetter], coordinate: Coordinate) -> list[DeadLetter]:
    return [
        d
        for d in letters
        if (d.original_topic, d.original_partition, d.original_offset) == coordinate
    ]


@dataclass
class _Poisons:
    """What was sent around the poisons, and where it landed."""

    fhir: list[Outgoing]
    hl7: list[Outgoing]  # per partition: good, poison, good
    claims: list[Outgoing]  # likewise
    nul: list[Outgoing]
    at: dict[str, list[Coordinate]] = field(default_factory=dict)  # raw topics, and "nul"
    internal: dict[Coordinate, tuple[str, bytes]] = field(default_factory=dict)  # topic, bytes

    def raw(self) -> list[Coordinate]:
        return [c for cs in self.at.values() for c in cs]


def _raw_poisons(token: str) -> _Poisons:
    fhir = [
        Outgoing(_out_of_range(token, p), source="flt-poison", partition=p)
        for p in range(PARTITIONS)
    ]
    hl7: list[Outgoing] = []
    claims: list[Outgoing] = []
    for p in range(PARTITIONS):
        n = 3 * p
        hl7 += [
            Outgoing(_adt(token, n), source="flt-clinic", partition=p),
            Outgoing(
                _adt(token, n + 1, at="99991231235959-1400"), source="flt-clinic", partition=p
            ),
            Outgoing(_adt(token, n + 2), source="flt-clinic", partition=p),
        ]
        claims += [
            Outgoing(_claim(token, n), source="flt-payer", partition=p),
            Outgoing(_claim(token, n + 1, submitted=OUT_OF_RANGE), source="flt-payer", partition=p),
            Outgoing(_claim(token, n + 2), source="flt-payer", partition=p),
        ]
    nul = [Outgoing(orjson.dumps(_nul_patient(token)), source="flt-nul")]
    return _Poisons(fhir, hl7, claims, nul)


async def _send_poisons(bootstrap: str, token: str) -> _Poisons:
    """One poison on every partition of every topic; each raw one between two good records."""
    poisons = _raw_poisons(token)
    poisons.at[RAW_FHIR] = await send(bootstrap, RAW_FHIR, poisons.fhir)
    poisons.at["nul"] = await send(bootstrap, RAW_FHIR, poisons.nul)
    poisons.at[RAW_HL7V2] = await send(bootstrap, RAW_HL7V2, poisons.hl7)
    poisons.at[RAW_CLAIMS] = await send(bootstrap, RAW_CLAIMS, poisons.claims)
    for topic, make in POISONS.items():
        values = [make(token, p) for p in range(PARTITIONS)]
        items = [Outgoing(v, key=b"poison", partition=p) for p, v in enumerate(values)]
        for coordinate, value in zip(await send(bootstrap, topic, items), values, strict=True):
            poisons.internal[coordinate] = (topic, value)
    return poisons


def _fhir_poison_outcomes(
    poisons: _Poisons, outcomes: dict[Coordinate, list[str]], unreadable: list[bytes]
) -> None:
    """The FHIR poisons' IngestedRecords cannot be decoded, by normalization nor by us: they are
    matched to their raw records by their resource ids."""
    for coordinate, item in zip(poisons.at[RAW_FHIR], poisons.fhir, strict=True):
        rid = orjson.loads(item.value)["id"].encode()
        outcomes[coordinate] += ["INGESTED" for value in unreadable if rid in value]
    assert len(unreadable) == sum(outcomes[c] == ["INGESTED"] for c in poisons.at[RAW_FHIR])


def _check_raw_poisons(
    poisons: _Poisons, outcomes: dict[Coordinate, list[str]], letters: list[DeadLetter]
) -> list[str]:
    """The HL7 and claims poisons dead-lettered by ingestion with their bytes, the good records
    on both sides of them ingested; the FHIR poison dead-lettered by ingestion, or passed and
    dead-lettered by normalization. Returns what became of each FHIR poison."""
    for topic, items in ((RAW_HL7V2, poisons.hl7), (RAW_CLAIMS, poisons.claims)):
        for index, (coordinate, item) in enumerate(zip(poisons.at[topic], items, strict=True)):
            if index % 3 == 1:
                found = _letter_of(letters, coordinate)
                assert len(found) == 1 and found[0].stage == "ingestion", coordinate
                assert found[0].original_value == item.value
            else:
                assert outcomes[coordinate] == ["INGESTED"], coordinate
    fates = []
    for coordinate, item in zip(poisons.at[RAW_FHIR], poisons.fhir, strict=True):
        if outcomes[coordinate] != ["INGESTED"]:
            assert _letter_of(letters, coordinate)[0].original_value == item.value
            fates.append(f"ingestion {outcomes[coordinate][0]}")
            continue
        rid = orjson.loads(item.value)["id"].encode()
        later = [
            (d.stage, d.reason_code)
            for d in letters
            if d.original_topic == INGESTED and d.original_value and rid in d.original_value
        ]
        assert later == [("normalization", "UNDECODABLE_EVENT")]
        fates.append("ingested, then normalization UNDECODABLE_EVENT")
    return fates


def _check_internal_poisons(poisons: _Poisons, letters: list[DeadLetter]) -> dict[str, str]:
    """Each dead-lettered once, by its stage, with its reason and original bytes."""
    fates: dict[str, str] = {}
    for coordinate, (topic, value) in poisons.internal.items():
        stage, reason = INTERNAL_REASONS[topic]
        found = _letter_of(letters, coordinate)
        assert [(d.stage, d.reason_code) for d in found] == [(stage, reason)], coordinate
        assert found[0].original_value == value
        assert "\x00" not in found[0].reason
        fates[topic] = reason
    return fates


async def test_a_decodable_poison_on_every_topic_is_dead_lettered_and_its_partition_goes_on(
    fault_stack: StackInfo, tmp_path: Path
) -> None:
    run = Workload(fault_stack, token=_covering_token())
    bootstrap, dsn = run.bootstrap, run.dsn
    waves = run.chunks(PATIENTS, WAVE)
    with run.rss:
        raw_sent = await run.send(waves[0])
        poisons = await _send_poisons(bootstrap, run.token)
        raw_sent += await run.send(waves[1])

        # Every alert of both waves comes: records after each poison were processed.
        opened = run.expected(range(PATIENTS))
        first_alerts, _ = await run.alerts_stored(opened, within=90)
        assert {k: a.status for k, a in first_alerts.items()} == opened

        # Reviewers dismiss four alerts: their decisions follow the poisons on
        # concord.resolutions, and the alerts end DISMISSED (revision 2).
        decided: list[Key] = sorted(opened)[:4]
        for key in decided:
            await decide(
                dsn, bootstrap, first_alerts[key].alert_id, "DISMISSED",
                chosen_value=None, by="flt-reviewer", at=datetime.now(UTC),
            )  # fmt: skip
        expected = run.expected(range(PATIENTS), dismissed=decided)
        stored, _ = await run.alerts_stored(expected, within=60)

    # The invariants: alerts, every raw record accounted for (the poisons dead-lettered, the
    # FHIR ones matched up by their resource ids), and the assertions stored.
    checked, letters = await asyncio.gather(
        run.checked(
            expected,
            stored,
            raw_sent + poisons.raw(),
            assertions_of=PATIENTS,
            good_only=False,
            undecodable=lambda outcomes, unreadable: _fhir_poison_outcomes(
                poisons, outcomes, unreadable
            ),
        ),
        dead_letters(bootstrap),
    )
    outcomes = checked.outcomes
    fhir_fates = _check_raw_poisons(poisons, outcomes, letters)
    internal_fates = _check_internal_poisons(poisons, letters)

    # Every partition of concord.ingested, concord.facts and concord.conflicts received the
    # second wave's records after its poison (and their alerts came); concord.resolutions, the
    # reviewers' decisions.
    after = await _records_after(bootstrap, [*poisons.internal, *poisons.at[RAW_FHIR]])
    for topic in (INGESTED, FACTS, CONFLICTS):
        assert all(after[c] > 0 for c, (t, _) in poisons.internal.items() if t == topic), topic
    assert sum(n for c, n in after.items() if c[0] == RESOLUTIONS) >= len(decided)

    run.workers_alive(none_restarted=True)
    run.report(
        tmp_path,
        "poison",
        checked,
        {
            "poisons": {
                "ehr.raw.fhir": fhir_fates,
                "ehr.raw.hl7v2": "ingestion dead letter",
                "ehr.raw.claims": "ingestion dead letter",
                "fhir_nul_patient": outcomes[poisons.at["nul"][0]],
                **internal_fates,
            },
            "records_after_poisons": {f"{t}:{p}": n for (t, p, _), n in sorted(after.items())},
        },
    )
