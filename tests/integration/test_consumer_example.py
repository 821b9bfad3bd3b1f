"""The example consumer in docs/consumers.md, run exactly as written against the real broker:
with only aiokafka, fastavro and schemas/topics/concord.alerts.avsc it decodes an Alert that
Concord's codec wrote."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from builders import assertion_at
from concord.events import codec
from concord.events.models import Alert
from concord.stack.broker import BrokerInfo
from concord.topics import ALERTS

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "consumers.md"
WAIT_SECONDS = 60.0


def example_consumer() -> str:
    """The guide's one Python block that consumes."""
    blocks = re.findall(r"^```python\n(.*?)^```$", GUIDE.read_text(), flags=re.S | re.M)
    [example] = [block for block in blocks if "AIOKafkaConsumer" in block]
    return example


def an_alert() -> Alert:
    at = datetime(2024, 3, 1, 8, 30, tzinfo=UTC)
    return Alert(
        alert_id=uuid.uuid4().hex,
        revision=2,
        kind="CONFLICT",
        status="OPEN",
        patient_id=f"EP-{uuid.uuid4().hex[:8]}",
        attribute="Patient.birthDate",
        attribute_class="DEMOGRAPHICS",
        severity="CRITICAL",
        assertions=(
            assertion_at("clinic-ehr", "1961-05-20", at, fact_id="f1"),
            assertion_at("lab-system", "1961-05-02", at, fact_id="f2"),
        ),
        proposed_value="1961-05-20",
        proposed_reason="clinic-ehr ranks highest",
        opened_at=at,
        updated_at=at,
    )


def test_the_example_uses_no_concord_code() -> None:
    example = example_consumer()
    assert not re.search(r"^\s*(from|import)\s+concord\b", example, flags=re.M)
    assert "schemas/topics/concord.alerts.avsc" in example


async def _publish(bootstrap: str, alert: Alert) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    await producer.start()
    try:
        await producer.send_and_wait(
            ALERTS, codec.ALERT.encode(alert), key=alert.patient_id.encode()
        )
    finally:
        await producer.stop()


async def _line_for(process: asyncio.subprocess.Process, alert_id: str) -> tuple[str, Any]:
    """The example's output line for `alert_id` (the shared broker may hold other alerts)."""
    assert process.stdout is not None
    while True:
        line = await process.stdout.readline()
        if not line:
            assert process.stderr is not None
            error = (await process.stderr.read()).decode()
            raise AssertionError(f"the example exited without printing the alert:\n{error}")
        key, _, value = line.decode().rstrip("\n").partition(" ")
        decoded = json.loads(value)
        if decoded["alert_id"] == alert_id:
            return key, decoded


@pytest.mark.asyncio
async def test_the_example_consumer_decodes_an_alert_concord_wrote(
    broker: BrokerInfo, tmp_path: Path
) -> None:
    alert = an_alert()
    await _publish(broker.bootstrap_servers, alert)
    script = tmp_path / "consumer.py"
    script.write_text(example_consumer())
    group = f"consumer-example-{uuid.uuid4().hex[:8]}"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        broker.bootstrap_servers,
        group,
        cwd=ROOT,  # the example reads schemas/topics/ relative to the repository root
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(WAIT_SECONDS):
            key, decoded = await _line_for(process, alert.alert_id)
    finally:
        if process.returncode is None:
            process.terminate()
        await process.wait()
    assert key == alert.patient_id
    # every field, as the example prints it (times as str(datetime), tuples as lists)
    assert decoded == json.loads(json.dumps(alert.model_dump(), default=str))
    assert Alert.model_validate(decoded) == alert
