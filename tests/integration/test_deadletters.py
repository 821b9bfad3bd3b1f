"""`concord deadletter list | replay` against the real broker and PostgreSQL, with the real
ingestion stage running in-process as a worker runs it.

The session's broker is shared by every test, so each test's records carry a source of its
own and everything read back is filtered by it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from click.testing import CliRunner, Result
from prometheus_client import REGISTRY

from concord.cli import main
from concord.cli.deadletters import (
    REPLAY_HEADER,
    Selection,
    StoredLetter,
    read_dead_letters,
    replay_of,
    select,
)
from concord.config import IngestionSettings
from concord.deadletters import without_payload
from concord.events import codec
from concord.events.models import DeadLetter, Header, IngestedRecord
from concord.ingestion.app import IngestionStage
from concord.ingestion.dedupe import PostgresSeenVersions
from concord.runtime.batch import BatchLoop
from concord.runtime.db import create_pool
from concord.runtime.reading import read_topic
from concord.stack.broker import BrokerInfo
from concord.stack.postgres import PostgresInfo
from concord.topics import DEADLETTER, INGESTED, RAW_CLAIMS, RAW_HL7V2

pytestmark = pytest.mark.integration
T = TypeVar("T")
Headers = list[tuple[str, bytes | None]]


class StageThread:
    """The real IngestionStage in a BatchLoop on its own thread and event loop, as a worker
    runs it, so that the test can drive the `concord` CLI (which calls asyncio.run) meanwhile."""

    def __init__(self, settings: IngestionSettings, group_id: str) -> None:
        self.settings = settings
        self.group_id = group_id
        self._joined = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._batch: BatchLoop | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name=f"stage-{group_id}", daemon=True)

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as error:  # re-raised in the test's thread
            self._error = error
        finally:
            self._joined.set()

    async def _run(self) -> None:
        pool = await create_pool(self.settings.database_url.get_secret_value(), 2)
        try:
            stage = IngestionStage(self.settings, PostgresSeenVersions(pool))
            # Only HL7 v2: other tests' FHIR and claims on the shared broker are not ours.
            stage.topics = (RAW_HL7V2,)
            self._batch = BatchLoop(stage, self.settings, group_id=self.group_id)
            self._loop = asyncio.get_running_loop()
            running = asyncio.create_task(self._batch.run())
            joined = asyncio.create_task(self._batch.ready.wait())
            await asyncio.wait({running, joined}, return_when=asyncio.FIRST_COMPLETED)
            self._joined.set()
            await running
        finally:
            await pool.close()

    def __enter__(self) -> StageThread:
        self._thread.start()
        assert self._joined.wait(60), "the stage never joined its consumer group"
        if self._error is not None:
            raise self._error
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._loop is not None and self._batch is not None:
            self._loop.call_soon_threadsafe(self._batch.stop)
        self._thread.join(60)
        assert not self._thread.is_alive(), "the stage did not stop"
        if self._error is not None and error is None:
            raise self._error


def eventually(probe: Callable[[], T | None], *, timeout: float = 45.0) -> T:
    """probe()'s first truthy answer. Each probe reads a topic until idle, so no sleep."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        assert time.monotonic() < deadline, "timed out"


def adt(uid: str) -> bytes:
    """An ADT^A04 whose timestamps carry no offset, as many lab systems send them."""
    return (
        f"MSH|^~\\&|LAB|GH|CONCORD|GH|20240301090000||ADT^A04^ADT_A01|C-{uid}|P|2.5\r"
        f"EVN|A04|20240301090000\rPID|1||M-{uid}^^^GH^MR||Zyxwvut^Ana||19700101|F\r"
    ).encode()


async def _publish(
    bootstrap: str, topic: str, records: Sequence[tuple[bytes, bytes | None]], headers: Headers
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        futures = [
            await producer.send(topic, value, key=key, headers=headers) for value, key in records
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def letters_from(bootstrap: str, source: str) -> list[StoredLetter]:
    topic = asyncio.run(read_dead_letters(bootstrap))
    return select(topic.letters, Selection(sources=frozenset({source})))


def ingested_from(bootstrap: str, source: str) -> list[IngestedRecord]:
    records = [
        codec.INGESTED_RECORD.decode(r.value) for r in asyncio.run(read_topic(bootstrap, INGESTED))
    ]
    return [r for r in records if r.provenance.source_system == source]


def duplicates() -> float:
    value = REGISTRY.get_sample_value("concord_ingestion_duplicates_total", {"topic": RAW_HL7V2})
    return value or 0.0


async def _remembered(dsn: str, source: str) -> int:
    connection = await asyncpg.connect(dsn)
    try:
        count = await connection.fetchval(
            "SELECT count(*) FROM ingested_versions WHERE source_system = $1", source
        )
        return int(count)
    finally:
        await connection.close()


def _both(letters: list[StoredLetter]) -> list[StoredLetter] | None:
    return letters if len(letters) == 2 else None


def headers_of(stored: StoredLetter) -> Headers:
    return [(h.key, h.value) for h in stored.letter.original_headers]


@pytest.fixture
def concord(
    broker: BrokerInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Result]:
    """`concord ARGS...` through click, pointed at the session's broker."""
    monkeypatch.setenv("CONCORD_BOOTSTRAP_SERVERS", broker.bootstrap_servers)

    def run(*args: str) -> Result:
        return CliRunner().invoke(main, [*args, "--state-dir", str(tmp_path)])

    return run


def test_a_fixed_record_replayed_is_ingested_once_however_often_it_is_replayed(
    broker: BrokerInfo, postgres: PostgresInfo, concord: Callable[..., Result]
) -> None:
    bootstrap = broker.bootstrap_servers
    uid = uuid.uuid4().hex[:8]
    source = f"lab-{uid}"
    group = f"test-deadletter-replay-{uid}"
    message, malformed = adt(uid), f"not an HL7 message {uid}".encode()
    key = f"{source}/PID/M-{uid}".encode()
    sent_headers: Headers = [("source", source.encode()), ("trace", None)]
    asyncio.run(_publish(bootstrap, RAW_HL7V2, [(message, key), (malformed, None)], sent_headers))

    def settings(**zones: str) -> IngestionSettings:
        return IngestionSettings(
            bootstrap_servers=bootstrap,
            database_url=postgres.dsn,
            fetch_max_wait_ms=20,
            source_time_zones=zones,
        )

    # Before the fix: the source has no configured zone, so the message is dead-lettered.
    with StageThread(settings(), group):
        letters = eventually(lambda: _both(letters_from(bootstrap, source)))
    by_reason = {stored.letter.reason_code: stored for stored in letters}
    zoneless, broken = by_reason["HL7_TIME_ZONE_UNKNOWN"], by_reason["HL7_MALFORMED"]
    assert zoneless.letter.location == "EVN-2"
    assert (zoneless.letter.original_value, zoneless.letter.original_key) == (message, key)
    assert headers_of(zoneless) == sent_headers  # the null header survives too
    assert ingested_from(bootstrap, source) == []

    # The fix is configuration. The worker restarts in the same consumer group, so the raw
    # records are not read again: only the replay brings them back.
    before = duplicates()
    with StageThread(settings(**{source: "America/Chicago"}), group):
        result = concord(
            "deadletter", "replay", "--source", source, "--reason", "HL7_TIME_ZONE_UNKNOWN"
        )
        assert result.exit_code == 0, result.output
        assert f"re-submitted 1 to {RAW_HL7V2}" in result.stdout
        assert zoneless.position in result.stdout
        [ingested] = eventually(lambda: ingested_from(bootstrap, source))
        assert ingested.source_time_zone == "America/Chicago"
        assert ingested.provenance.source_record_id.endswith(f"/C-{uid}")
        assert ingested.provenance.event_time == datetime(2024, 3, 1, 15, tzinfo=UTC)

        # Replayed again (say, by an operator unsure it went through), with the malformed one.
        result = concord(
            "deadletter", "replay", "--offset", zoneless.position, "--offset", broken.position
        )
        assert result.exit_code == 0, result.output
        assert f"re-submitted 2 to {RAW_HL7V2}" in result.stdout
        eventually(lambda: duplicates() > before)
        again = eventually(
            lambda: [s for s in letters_from(bootstrap, source) if replay_of(s.letter)]
        )

    assert len(ingested_from(bootstrap, source)) == 1  # exactly once, however often replayed
    assert duplicates() - before == 1
    assert asyncio.run(_remembered(postgres.dsn, source)) == 1
    [redead] = again
    assert redead.letter.reason_code == "HL7_MALFORMED"
    assert redead.letter.original_value == malformed
    assert headers_of(redead) == [*sent_headers, (REPLAY_HEADER, broken.position.encode())]
    # The fixed message was not dead-lettered again; the malformed one was, once.
    assert sorted(s.letter.reason_code for s in letters_from(bootstrap, source)) == [
        "HL7_MALFORMED",
        "HL7_MALFORMED",
        "HL7_TIME_ZONE_UNKNOWN",
    ]
    listed = concord("deadletter", "list", "--source", source, "--reason", "HL7_MALFORMED")
    assert f"replay-of={broken.position}" in listed.stdout


def _letter(source: str, reason: str, topic: str, value: bytes, key: bytes) -> DeadLetter:
    return DeadLetter(
        stage="ingestion",
        reason_code=reason,
        reason="names fields and rules only",
        location="Claim.diagnoses[0].code" if reason == "CLAIM_INVALID" else "EVN-2",
        original_topic=topic,
        original_partition=1,
        original_offset=7,
        original_key=key,
        original_value=value,
        original_headers=(Header(key="source", value=source.encode()),),
        failed_at=datetime(2026, 3, 1, 10, tzinfo=UTC),
    )


def test_list_shows_where_and_why_and_the_payload_only_when_asked(
    broker: BrokerInfo, concord: Callable[..., Result]
) -> None:
    uid = uuid.uuid4().hex[:8]
    source = f"clinic-{uid}"
    secret = f"Zyxwvut-{uid}".encode()  # stands in for a patient's record
    key = f"{source}/PID/MRN-{uid}".encode()
    letters = [
        _letter(source, "HL7_TIME_ZONE_UNKNOWN", RAW_HL7V2, b"MSH|" + secret, key),
        _letter(source, "CLAIM_INVALID", RAW_CLAIMS, b'{"claim":"' + secret + b'"}', key),
    ]
    encoded = [(codec.DEAD_LETTER.encode(letter), key) for letter in letters]
    asyncio.run(_publish(broker.bootstrap_servers, DEADLETTER, encoded, []))

    text = concord("deadletter", "list", "--source", source)
    assert text.exit_code == 0, text.output
    lines = text.stdout.splitlines()
    assert len(lines) == 2
    assert any("HL7_TIME_ZONE_UNKNOWN  at=EVN-2  from=ehr.raw.hl7v2[1]@7" in line for line in lines)
    assert all(f"source={source}" in line for line in lines)
    assert "2 of" in text.stderr and "CLAIM_INVALID" in text.stderr
    for hidden in (secret, f"MRN-{uid}".encode(), base64.b64encode(b"MSH|" + secret)):
        assert hidden.decode() not in text.output

    as_json = concord(
        "deadletter", "list", "--source", source, "--json", "--reason", "CLAIM_INVALID"
    )
    [document] = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert document["reason_code"] == "CLAIM_INVALID" and document["original_topic"] == RAW_CLAIMS
    assert "original_value" not in document and secret.decode() not in as_json.output

    full = concord("deadletter", "list", "--source", source, "--json", "--with-payload")
    values = {
        base64.b64decode(json.loads(line)["original_value"]) for line in full.stdout.splitlines()
    }
    assert values == {letter.original_value for letter in letters}

    unknown = concord("deadletter", "list", "--reason", "NO_SUCH_CODE")
    assert unknown.exit_code == 2
    assert "unknown reason code NO_SUCH_CODE" in unknown.output

    dry = concord("deadletter", "replay", "--source", source, "--topic", RAW_CLAIMS, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert f"would re-submit 1 to {RAW_CLAIMS}" in dry.stdout
    on_claims = asyncio.run(read_topic(broker.bootstrap_servers, RAW_CLAIMS))
    assert not [r for r in on_claims if r.value and secret in r.value]  # a dry run sends nothing

    nothing = concord("deadletter", "replay", "--source", source, "--reason", "NOT_FHIR")
    assert nothing.exit_code == 1 and "no dead letter matches" in nothing.output


def test_a_letter_whose_bytes_were_too_large_to_keep_is_not_replayed_empty(
    broker: BrokerInfo, concord: Callable[..., Result]
) -> None:
    """A letter over the producer's limit keeps only the original's coordinates and
    fingerprint (deadletters.without_payload): replaying it would send an empty record, so
    the replay skips it and says where the original is."""
    uid = uuid.uuid4().hex[:8]
    source = f"pacs-{uid}"
    key = f"{source}/PID/MRN-{uid}".encode()
    big = _letter(source, "OUTPUT_TOO_LARGE", RAW_HL7V2, b"MSH|" + b"x" * 2048, key)
    kept = _letter(source, "HL7_TIME_ZONE_UNKNOWN", RAW_HL7V2, b"MSH|small-" + uid.encode(), key)
    unkept = without_payload(big, limit=1024)
    assert unkept.original_value is None
    encoded = [(codec.DEAD_LETTER.encode(letter), key) for letter in (unkept, kept)]
    asyncio.run(_publish(broker.bootstrap_servers, DEADLETTER, encoded, []))

    only_unkept = concord(
        "deadletter", "replay", "--source", source, "--reason", "OUTPUT_TOO_LARGE"
    )
    assert only_unkept.exit_code == 1
    assert f"re-send from {RAW_HL7V2}[1]@7" in only_unkept.stderr
    assert "nothing left to replay" in only_unkept.output

    both = concord("deadletter", "replay", "--source", source, "--dry-run")
    assert both.exit_code == 0, both.output
    assert "skipping 1 letter(s)" in both.stderr
    assert f"would re-submit 1 to {RAW_HL7V2}" in both.stdout


def test_a_message_accepted_with_warnings_is_ingested_and_listed_with_them(
    broker: BrokerInfo, postgres: PostgresInfo, concord: Callable[..., Result]
) -> None:
    """Partial acceptance (issue 13): an ADT whose allergen has no coding system and which
    carries no EVN is ingested, not dead-lettered, and `concord warnings list` names both
    warnings with where the message came from, never its content."""
    bootstrap = broker.bootstrap_servers
    uid = uuid.uuid4().hex[:8]
    source = f"ward-{uid}"
    message = (
        f"MSH|^~\\&|WARD|GH|CONCORD|GH|20240301090000+0000||ADT^A08^ADT_A01|C-{uid}|P|2.5\r"
        f"PID|1||M-{uid}^^^GH^MR||Zyxwvut^Ana||19700101|F\r"
        f"AL1|1|DA|allergen-{uid}|SV|Hives\r"
    ).encode()
    asyncio.run(_publish(bootstrap, RAW_HL7V2, [(message, None)], [("source", source.encode())]))
    settings = IngestionSettings(
        bootstrap_servers=bootstrap, database_url=postgres.dsn, fetch_max_wait_ms=20
    )
    with StageThread(settings, f"test-warnings-{uid}"):
        [ingested] = eventually(lambda: ingested_from(bootstrap, source))
    assert letters_from(bootstrap, source) == []
    assert [(w.reason_code, w.location) for w in ingested.warnings] == [
        ("HL7_INVALID", "EVN"),
        ("CODE_WITHOUT_SYSTEM", "AL1-3.3"),
    ]

    listed = concord("warnings", "list", "--source", source)
    assert listed.exit_code == 0, listed.output
    lines = listed.stdout.splitlines()
    assert [line.split("  ")[2:4] for line in lines] == [
        ["HL7_INVALID", "at=EVN"],
        ["CODE_WITHOUT_SYSTEM", "at=AL1-3.3"],
    ]
    assert all(f"from={RAW_HL7V2}[" in line and "type=ADT^A08" in line for line in lines)
    assert f"M-{uid}" not in listed.output and f"allergen-{uid}" not in listed.output
    only = concord("warnings", "list", "--source", source, "--reason", "CODE_WITHOUT_SYSTEM")
    assert len(only.stdout.splitlines()) == 1 and only.stderr.startswith("1 of ")
