"""The `concord` commands people use, against the real broker and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from click.testing import CliRunner

from concord.alerting.lifecycle import apply_conflict_event
from concord.alerting.store import AlertStore
from concord.cli import main
from concord.conflicts.policy import DEFAULT_POLICY
from concord.conflicts.rules import AttributeState, apply_fact, evaluate
from concord.events.models import ClinicalFact, Provenance
from concord.runtime.outbox import Outbox
from concord.stack.broker import BrokerInfo
from concord.stack.postgres import PostgresInfo

pytestmark = pytest.mark.integration
T0 = datetime(2026, 3, 1, tzinfo=UTC)


def _patient(resource_id: str) -> dict[str, object]:
    return {"resourceType": "Patient", "id": resource_id, "gender": "female"}


async def _read(bootstrap: str, topic: str, marker: bytes) -> list[tuple[bytes, dict[str, bytes]]]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=50)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(4)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        found = []
        for _ in range(15):
            for records in (await consumer.getmany(timeout_ms=200)).values():
                found += [(r.value, dict(r.headers)) for r in records if marker in r.value]
        return found
    finally:
        await consumer.stop()


def test_publish_sends_resources_bundles_and_ndjson_with_the_source_header(
    broker: BrokerInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = uuid.uuid4().hex
    single = tmp_path / "one.json"
    single.write_bytes(orjson.dumps(_patient(f"{marker}-1")))
    bundle = tmp_path / "bundle.json"
    bundle.write_bytes(
        orjson.dumps(
            {
                "resourceType": "Bundle",
                "type": "collection",
                "entry": [
                    {"resource": _patient(f"{marker}-2")},
                    {"resource": _patient(f"{marker}-3")},
                ],
            }
        )
    )
    lines = tmp_path / "many.ndjson"
    lines.write_bytes(
        b"\n".join(orjson.dumps(_patient(f"{marker}-{i}")) for i in (4, 5, 6)) + b"\n\n"
    )
    monkeypatch.setenv("CONCORD_BOOTSTRAP_SERVERS", broker.bootstrap_servers)

    result = CliRunner().invoke(
        main,
        [
            "publish",
            "--source",
            "clinic-ehr",
            "--state-dir",
            str(tmp_path),
            str(single),
            str(bundle),
            str(lines),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "published 5 events from clinic-ehr" in result.output

    found = asyncio.run(_read(broker.bootstrap_servers, "ehr.raw.fhir", marker.encode()))
    assert len(found) == 5  # the Bundle travels whole: ingestion splits it
    assert all(headers == {"source": b"clinic-ehr"} for _, headers in found)


def test_alerts_list_json_prints_each_alert_with_its_assertions(
    postgres: PostgresInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    patient = f"EPC-{uuid.uuid4().hex[:8]}"
    asyncio.run(_store_alert(postgres.dsn, patient))
    (tmp_path / "stack.env").write_text(f"CONCORD_DATABASE_URL={postgres.dsn}\n")
    monkeypatch.delenv("CONCORD_DATABASE_URL", raising=False)

    result = CliRunner().invoke(main, ["alerts", "list", "--json", "--state-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    ours = [json.loads(line) for line in result.output.splitlines() if patient in line]
    assert len(ours) == 1
    alert = ours[0]
    for key in ("id", "kind", "attribute", "patient_id", "severity", "status", "assertions"):
        assert key in alert
    assert (alert["kind"], alert["attribute"], alert["status"]) == (
        "CONFLICT",
        "Patient.gender",
        "OPEN",
    )
    assert sorted((a["source"], a["value"]) for a in alert["assertions"]) == [
        ("clinic-ehr", "male"),
        ("hospital-ehr", "female"),
    ]
    for assertion in alert["assertions"]:
        assert assertion["event_time"].startswith("2026-03-01")
        assert assertion["source_record_id"].startswith("Patient/")

    text = CliRunner().invoke(main, ["alerts", "list", "--state-dir", str(tmp_path)])
    line = next(line for line in text.output.splitlines() if patient in line)
    assert "clinic-ehr=male" in line and "hospital-ehr=female" in line


def test_alerts_list_without_a_database_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CONCORD_DATABASE_URL", raising=False)
    result = CliRunner().invoke(main, ["alerts", "list", "--state-dir", str(tmp_path)])
    assert result.exit_code != 0
    assert "concord stack up" in result.output


async def _store_alert(dsn: str, patient: str) -> None:
    state = AttributeState(patient, "Patient.gender", "DEMOGRAPHICS")
    for source, value in (("hospital-ehr", "female"), ("clinic-ehr", "male")):
        apply_fact(
            state,
            ClinicalFact(
                fact_id=f"{patient}-{source}",
                patient_id=patient,
                attribute="Patient.gender",
                attribute_class="DEMOGRAPHICS",
                value=value,
                status="ASSERTED",
                provenance=Provenance(
                    source_system=source,
                    source_record_id=f"Patient/{source}-1",
                    event_time=T0,
                    received_time=T0,
                    raw_topic="ehr.raw.fhir",
                    raw_partition=0,
                    raw_offset=1,
                    payload_sha256="0" * 64,
                ),
            ),
        )
    event = evaluate(state, DEFAULT_POLICY, now=T0, trigger_received_time=T0)
    assert event is not None
    record = apply_conflict_event(None, event, now=T0)
    assert record is not None
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    assert pool is not None
    try:
        await AlertStore(pool, Outbox(pool, "cli-test")).save(
            [(record, "test")], [(record.alert, "test")], []
        )
    finally:
        await pool.close()
