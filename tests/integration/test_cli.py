"""The `concord` commands people use, against the real broker and PostgreSQL."""

from __future__ import annotations

import asyncio
import getpass
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
from concord.events import codec
from concord.events.models import ClinicalFact, Provenance
from concord.normalization.identity.demographics import from_fhir_patient
from concord.normalization.identity.resolution import IdentityRequest
from concord.normalization.identity_store import PostgresIdentityStore
from concord.runtime.outbox import Outbox
from concord.stack.broker import BrokerInfo
from concord.stack.postgres import PostgresInfo
from concord.topics import FACTS

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
    assert "male (clinic-ehr) vs female (hospital-ehr)" in line


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


# --- identity merges | unmerge --------------------------------------------------------------


async def _merge(dsn: str, run: str) -> tuple[str, str]:
    """Patient/1 (described) merged into Patient/2 by an A40-like record: (absorbed, survivor)."""
    source = f"cli{run}"
    number = int(run, 16)
    described = from_fhir_patient(
        {
            "resourceType": "Patient",
            "id": "1",
            "name": [{"family": f"Merged{run}", "given": ["Zed"]}],
            # Drawn from the run: the session's database keeps the other tests' patients, and
            # one that looks alike would be matched instead of a new one made.
            "birthDate": f"{1900 + number % 100}-{1 + number % 12:02d}-{1 + number % 28:02d}",
        },
        source,
    )
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    assert pool is not None
    try:
        store = PostgresIdentityStore(pool)
        [old] = await store.resolve_batch(
            [IdentityRequest(source=source, local_ids=("Patient/1",), demographics=described)]
        )
        [merge] = await store.resolve_batch(
            [IdentityRequest(source=source, local_ids=("Patient/2",), absorbs=("Patient/1",))]
        )
        assert merge.absorbed == (old.enterprise_id,)
        return old.enterprise_id, merge.enterprise_id
    finally:
        await pool.close()


async def _identity_outbox(dsn: str, absorbed: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return sum(
            codec.CLINICAL_FACT.decode(row["value"]).value == absorbed
            for row in await conn.fetch("SELECT value FROM outbox WHERE stage = 'identity'")
        )
    finally:
        await conn.close()


async def _unmerged_by(dsn: str, absorbed: str) -> str | None:
    conn = await asyncpg.connect(dsn)
    try:
        by: str | None = await conn.fetchval(
            "SELECT unmerged_by FROM identity_merges WHERE absorbed_enterprise_id = $1", absorbed
        )
        return by
    finally:
        await conn.close()


def _stack_env(tmp_path: Path, dsn: str, bootstrap: str) -> Path:
    folder = tmp_path / f"stack-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    (folder / "stack.env").write_text(
        f"CONCORD_DATABASE_URL={dsn}\nCONCORD_BOOTSTRAP_SERVERS={bootstrap}\n"
    )
    return folder


def test_identity_merges_and_unmerge_publish_the_signal(
    postgres: PostgresInfo, broker: BrokerInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in ("CONCORD_DATABASE_URL", "CONCORD_BOOTSTRAP_SERVERS"):
        monkeypatch.delenv(variable, raising=False)
    run = uuid.uuid4().hex[:6]
    absorbed, survivor = asyncio.run(_merge(postgres.dsn, run))
    stack = _stack_env(tmp_path, postgres.dsn, broker.bootstrap_servers)
    cli = CliRunner()

    listed = cli.invoke(main, ["identity", "merges", "--json", "--state-dir", str(stack)])
    assert listed.exit_code == 0, listed.output
    [entry] = [json.loads(line) for line in listed.output.splitlines() if absorbed in line]
    assert (entry["survivor_enterprise_id"], entry["source"]) == (survivor, f"cli{run}")
    assert (entry["links_moved"], entry["views_moved"], entry["unmerged_at"]) == (1, 1, None)
    text = cli.invoke(main, ["identity", "merges", "--state-dir", str(stack)]).output
    [line] = [line for line in text.splitlines() if absorbed in line]
    assert line.endswith(
        f" {absorbed} merged into {survivor} (source cli{run}; moved 1 local id, 1 view)"
    )
    assert f"Merged{run}" not in text and "Zed" not in text

    done = cli.invoke(
        main,
        ["identity", "unmerge", absorbed, "--reason", "two people", "--by", "qa",
         "--state-dir", str(stack)],
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    assert done.output == (
        f"{absorbed} is a patient again: 1 local id and 1 view restored from {survivor}; "
        "signal published to concord.facts\n"
    )
    assert asyncio.run(_identity_outbox(postgres.dsn, absorbed)) == 0
    [(value, _)] = asyncio.run(_read(broker.bootstrap_servers, FACTS, absorbed.encode()))
    signal = codec.CLINICAL_FACT.decode(value)
    assert (signal.attribute, signal.patient_id, signal.value) == (
        "Patient.unmergedFrom", survivor, absorbed,
    )  # fmt: skip

    active = cli.invoke(main, ["identity", "merges", "--state-dir", str(stack)]).output
    assert absorbed not in active
    undone = cli.invoke(main, ["identity", "merges", "--all", "--state-dir", str(stack)]).output
    [line] = [line for line in undone.splitlines() if absorbed in line]
    assert " by qa)" in line and "unmerged 20" in line and "two people" not in line

    again = cli.invoke(
        main, ["identity", "unmerge", absorbed, "--reason", "x", "--state-dir", str(stack)]
    )
    assert again.exit_code == 1
    assert f"{absorbed} is not merged into another patient" in again.output


def test_an_unmerge_without_kafka_is_committed_and_its_signal_waits(
    postgres: PostgresInfo, broker: BrokerInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in ("CONCORD_DATABASE_URL", "CONCORD_BOOTSTRAP_SERVERS"):
        monkeypatch.delenv(variable, raising=False)
    run = uuid.uuid4().hex[:6]
    absorbed, survivor = asyncio.run(_merge(postgres.dsn, run))
    cli = CliRunner()
    unreachable = _stack_env(tmp_path, postgres.dsn, "127.0.0.1:1")
    failed = cli.invoke(
        main, ["identity", "unmerge", absorbed, "--reason", "x", "--state-dir", str(unreachable)]
    )
    assert failed.exit_code == 1
    assert f"{absorbed} is a patient again" in failed.output and "committed" in failed.output
    assert "waits in the identity outbox" in failed.output
    assert asyncio.run(_identity_outbox(postgres.dsn, absorbed)) == 1
    by = asyncio.run(_unmerged_by(postgres.dsn, absorbed))
    assert by == getpass.getuser()  # --by defaults to the OS user

    # The same command once Kafka is back: the signal that waited is published.
    stack = _stack_env(tmp_path, postgres.dsn, broker.bootstrap_servers)
    again = cli.invoke(
        main, ["identity", "unmerge", absorbed, "--reason", "x", "--state-dir", str(stack)]
    )
    assert again.exit_code == 0, again.output
    assert "already unmerged" in again.output and "was published" in again.output
    assert asyncio.run(_identity_outbox(postgres.dsn, absorbed)) == 0
    [(value, _)] = asyncio.run(_read(broker.bootstrap_servers, FACTS, absorbed.encode()))
    assert codec.CLINICAL_FACT.decode(value).patient_id == survivor


def test_identity_commands_without_a_database_say_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CONCORD_DATABASE_URL", raising=False)
    for command in (["merges"], ["unmerge", "E1", "--reason", "x"]):
        result = CliRunner().invoke(main, ["identity", *command, "--state-dir", str(tmp_path)])
        assert result.exit_code == 2  # a missing setting, like any bad one
        assert "CONCORD_DATABASE_URL: not set" in result.output
        assert "concord stack up" in result.output


def test_resolving_an_alert_that_cannot_be_decided_says_why(
    postgres: PostgresInfo, broker: BrokerInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in ("CONCORD_DATABASE_URL", "CONCORD_BOOTSTRAP_SERVERS"):
        monkeypatch.delenv(variable, raising=False)
    stack = _stack_env(tmp_path, postgres.dsn, broker.bootstrap_servers)
    cli = CliRunner()
    unknown = cli.invoke(
        main,
        ["alerts", "resolve", "no-such-alert", "--decision", "dismiss", "--by", "r7",
         "--state-dir", str(stack)],
    )  # fmt: skip
    assert unknown.exit_code == 1
    assert "no alert no-such-alert" in unknown.output
    valueless = cli.invoke(
        main,
        ["alerts", "resolve", "a1", "--decision", "choose", "--by", "r7",
         "--state-dir", str(stack)],
    )  # fmt: skip
    assert valueless.exit_code == 2
    assert "--value goes with --decision choose" in valueless.output
