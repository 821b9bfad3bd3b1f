"""Identity review tasks decided by a person (issue 16, item 3), in a real PostgreSQL: link
(a merge like any other, its signal through the identity outbox, undone by unmerge) and keep
apart (a never-link pair matching respects), through the store and `concord identity`."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from click.testing import CliRunner

from builders import FakeProducer
from concord.cli import main
from concord.config import NormalizationSettings
from concord.events import codec
from concord.events.models import MERGE_ATTRIBUTE, ClinicalFact
from concord.normalization.app import NormalizationStage
from concord.normalization.facts.drafts import OPERATOR_SOURCE, PROVISIONAL_PATIENT
from concord.normalization.identity.resolution import How, IdentityRequest
from concord.normalization.identity_reviews import (
    AlreadyDecided,
    AlreadyOnePatient,
    ReviewConflict,
    ReviewDecision,
    UnknownReviewTask,
)
from concord.normalization.identity_store import (
    IDENTITY_OUTBOX,
    PostgresIdentityStore,
    list_merges,
    list_reviews,
)
from concord.normalization.record_facts import PostgresRecordFacts
from concord.normalization.terminology import Terminology
from concord.runtime.batch import Outbound, run_batch
from concord.stack.broker import BrokerInfo
from concord.stack.postgres import PostgresInfo
from concord.topics import FACTS
from identity_tools import Person, look_alikes, review_task_of, task_of

pytestmark = pytest.mark.integration
T_DECIDED = datetime(2026, 4, 2, 10, 15, tzinfo=UTC)


def _worker(pool: asyncpg.Pool) -> tuple[NormalizationStage, FakeProducer]:
    """A normalization worker as composition.build_normalization wires it."""
    identities = PostgresIdentityStore(pool)
    producer = FakeProducer()
    stage = NormalizationStage(
        NormalizationSettings(database_url="postgresql://unused"),
        identities,
        Terminology.load(),
        record_facts=PostgresRecordFacts(pool),
        identity_outbox=identities.outbox,
        producer=producer,
    )
    return stage, producer


def _facts(out: Outbound) -> list[ClinicalFact]:
    return [codec.CLINICAL_FACT.decode(r.value) for r in out.pending if r.topic == FACTS]


async def _signals_about(pool: asyncpg.Pool, absorbed: str) -> list[ClinicalFact]:
    rows = await pool.fetch("SELECT value FROM outbox WHERE stage = $1", IDENTITY_OUTBOX)
    facts = [codec.CLINICAL_FACT.decode(r["value"]) for r in rows]
    return [f for f in facts if f.value == absorbed]


async def _eid(store: PostgresIdentityStore, source: str, local_id: str) -> str:
    [resolution] = await store.resolve_batch(
        [IdentityRequest(source=source, local_ids=(local_id,))]
    )
    assert resolution.how == How.CROSSWALK
    return resolution.enterprise_id


# --- link -------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_linked_review_merges_signals_and_can_be_unmerged(pool: asyncpg.Pool) -> None:
    run = uuid.uuid4().hex[:6]
    a, b = f"a{run}", f"b{run}"
    known, maybe = look_alikes(run)
    worker, _ = _worker(pool)
    [candidate_id] = {f.patient_id for f in _facts(await run_batch(worker, [known.event(a, "1")]))}
    provisional = _facts(await run_batch(worker, [maybe.event(b, "2")]))
    [provisional_id] = {f.patient_id for f in provisional}
    assert provisional_id != candidate_id
    assert all(PROVISIONAL_PATIENT in f.flags for f in provisional)
    store = PostgresIdentityStore(pool)
    task_id = await task_of(pool, b)

    # The detail page: both sides' demographics as the index holds them, and the score.
    task = await store.review_task(task_id)
    assert task is not None
    assert (task.status, task.decision, task.source, task.view_id) == ("OPEN", None, b, "Patient/2")
    assert (task.record.enterprise_id, task.record.current_enterprise_id) == (
        provisional_id, provisional_id,
    )  # fmt: skip
    assert task.candidate.current_enterprise_id == candidate_id
    [mine] = task.record.views
    [theirs] = task.candidate.views
    assert (mine.source, theirs.source) == (b, a)
    assert mine.demographics.family == theirs.demographics.family == known.family.casefold()
    assert (mine.demographics.birth_date, theirs.demographics.birth_date) == (
        maybe.birth, known.birth,
    )  # fmt: skip
    levels = {(w.field, w.level) for w in task.breakdown}
    assert {("family", "exact"), ("given", "exact"), ("birth_date", "same_year")} <= levels
    assert task.score == pytest.approx(sum(w.weight for w in task.breakdown))

    linked = await store.link(task_id, by="qa", at=T_DECIDED)
    assert (linked.absorbed, linked.survivor, linked.changed) == (
        provisional_id, candidate_id, True,
    )  # fmt: skip
    # A merge like a source's: listed, with its moves, under the operator's source.
    [merge] = [m for m in await list_merges(pool) if m.absorbed == provisional_id]
    assert (merge.survivor, merge.source) == (candidate_id, OPERATOR_SOURCE)
    assert (merge.links_moved, merge.views_moved) == (2, 1)
    # Its signal waits in the outbox, keyed by the survivor: the facts follow.
    assert linked.fact is not None
    [signal] = await _signals_about(pool, provisional_id)
    assert signal == linked.fact
    assert (signal.attribute, signal.patient_id) == (MERGE_ATTRIBUTE, candidate_id)
    decided = await store.review_task(task_id)
    assert decided is not None
    assert (decided.status, decided.decision, decided.decided_by, decided.decided_at) == (
        "DECIDED", ReviewDecision.LINKED, "qa", T_DECIDED,
    )  # fmt: skip
    assert decided.record.current_enterprise_id == decided.candidate.current_enterprise_id
    assert [v.source for v in decided.record.views] == [b]
    assert [v.source for v in decided.candidate.views] == [a]
    assert not await pool.fetchval(
        "SELECT bool_or(provisional) FROM identity_links WHERE source = $1", b
    )

    # The normalization worker's drain publishes it (the CLI publishes it itself).
    drainer, producer = _worker(pool)
    await drainer.on_assigned({0})
    sent = [codec.CLINICAL_FACT.decode(v) for topic, v, *_ in producer.sent if topic == FACTS]
    assert [f.fact_id for f in sent if f.value == provisional_id] == [signal.fact_id]
    assert await _signals_about(pool, provisional_id) == []

    # Later records of either side: the survivor.
    for event in (maybe.event(b, "2", version="2"), known.event(a, "1", version="2")):
        later = _facts(await run_batch(worker, [event]))
        assert {f.patient_id for f in later} == {candidate_id}
        assert not any(PROVISIONAL_PATIENT in f.flags for f in later)

    # Deciding again: the same way is a no-op, the other way an error.
    again = await store.link(task_id, by="someone-else", at=datetime.now(UTC))
    assert (again.changed, again.decided_by, again.fact) == (False, "qa", None)
    assert await _signals_about(pool, provisional_id) == []
    with pytest.raises(AlreadyDecided, match="linked by qa") as raised:
        await store.keep_apart(task_id, by="qa", at=T_DECIDED)
    assert isinstance(raised.value, ReviewConflict)
    assert raised.value.decision == ReviewDecision.LINKED

    # A wrong link is undone like any merge.
    undone = await store.unmerge(provisional_id, by="qa", reason="twins", at=T_DECIDED)
    assert (undone.survivor, undone.links_restored, undone.views_restored) == (candidate_id, 2, 1)
    assert await _eid(store, b, "Patient/2") == provisional_id
    assert await _eid(store, a, "Patient/1") == candidate_id
    later = _facts(await run_batch(worker, [maybe.event(b, "2", version="3")]))
    assert {f.patient_id for f in later} == {provisional_id}


@pytest.mark.asyncio
async def test_a_task_whose_patients_a_source_merged_since_is_linked_without_a_merge(
    pool: asyncpg.Pool,
) -> None:
    store = PostgresIdentityStore(pool)
    run = uuid.uuid4().hex[:6]
    b = f"b{run}"
    task_id, provisional_id, candidate_id, known, _ = await review_task_of(store, run)
    # Source b says Patient/9, which matches the candidate, replaces its Patient/2.
    [merged] = await store.resolve_batch(
        [known.request(b, "9").model_copy(update={"absorbs": ("Patient/2",)})]
    )
    assert (merged.enterprise_id, merged.absorbed) == (candidate_id, (provisional_id,))

    with pytest.raises(AlreadyOnePatient, match=f"one patient now, {candidate_id}"):
        await store.keep_apart(task_id, by="qa", at=T_DECIDED)
    pairs = "SELECT count(*) FROM identity_never_link WHERE task_id = $1"
    assert await pool.fetchval(pairs, task_id) == 0
    task = await store.review_task(task_id)
    assert task is not None and task.decision is None
    # The detail page still tells the sides apart: the record's view is what the merge moved.
    assert [v.view_id for v in task.record.views] == ["Patient/2"]
    assert {v.view_id for v in task.candidate.views} == {"Patient/1", "Patient/9"}

    linked = await store.link(task_id, by="qa", at=T_DECIDED)
    assert (linked.absorbed, linked.survivor, linked.changed, linked.fact) == (
        candidate_id, candidate_id, True, None,
    )  # fmt: skip
    merges = [m for m in await list_merges(pool) if m.absorbed == provisional_id]
    assert [m.source for m in merges] == [b]  # the source's merge only
    assert await _signals_about(pool, provisional_id) == []  # nothing merged now: no signal


@pytest.mark.asyncio
async def test_unknown_tasks_are_an_error(pool: asyncpg.Pool) -> None:
    store = PostgresIdentityStore(pool)
    assert await store.review_task("no-such-task") is None
    with pytest.raises(UnknownReviewTask, match="no identity review task no-such-task"):
        await store.link("no-such-task", by="qa", at=T_DECIDED)
    with pytest.raises(UnknownReviewTask):
        await store.keep_apart("no-such-task", by="qa", at=T_DECIDED)


@pytest.mark.asyncio
async def test_two_reviewers_deciding_one_task_at_once_one_wins(pool: asyncpg.Pool) -> None:
    store = PostgresIdentityStore(pool)
    run = uuid.uuid4().hex[:6]
    task_id, provisional_id, _, _, _ = await review_task_of(store, run)
    results = await asyncio.gather(
        PostgresIdentityStore(pool).link(task_id, by="r1", at=T_DECIDED),
        PostgresIdentityStore(pool).keep_apart(task_id, by="r2", at=T_DECIDED),
        return_exceptions=True,
    )
    [error] = [r for r in results if isinstance(r, BaseException)]
    assert isinstance(error, AlreadyDecided)
    task = await store.review_task(task_id)
    assert task is not None
    assert task.decision == error.decision
    assert task.decided_by == ("r1" if task.decision == ReviewDecision.LINKED else "r2")
    merged = [m for m in await list_merges(pool) if m.absorbed == provisional_id]
    pairs = await pool.fetchval(
        "SELECT count(*) FROM identity_never_link WHERE task_id = $1", task_id
    )
    # One decision applied, never both.
    assert (len(merged), pairs) == ((1, 0) if task.decision == ReviewDecision.LINKED else (0, 1))


# --- keep apart -------------------------------------------------------------------------------


def _moved_in_with(person: Person, other: Person, family: str) -> Person:
    """`person`'s new version: a new family name (married), and the other's birth date, phone
    and address (corrected, moved in). No blocking key of `person`'s old version is left, so
    the index matches it afresh, and it scores as a link (~42 bits) against `other`."""
    return Person(family, person.given, other.birth, other.phone, other.postal, other.line)


@pytest.mark.asyncio
async def test_kept_apart_records_are_never_linked_nor_reviewed_again(pool: asyncpg.Pool) -> None:
    store = PostgresIdentityStore(pool)

    # Control: the same change to an undecided pair's records links them.
    control = uuid.uuid4().hex[:6]
    _, provisional_id, candidate_id, known, maybe = await review_task_of(store, control)
    [merged] = await store.resolve_batch(
        [_moved_in_with(maybe, known, f"Osei{control}").request(f"b{control}", "2")]
    )
    assert (merged.how, merged.enterprise_id, merged.absorbed) == (
        How.MATCHED, candidate_id, (provisional_id,),
    )  # fmt: skip

    run = uuid.uuid4().hex[:6]
    a, b = f"a{run}", f"b{run}"
    task_id, provisional_id, candidate_id, known, maybe = await review_task_of(store, run)
    kept = await store.keep_apart(task_id, by="qa", at=T_DECIDED)
    assert (kept.record, kept.candidate, kept.changed, kept.pairs) == (
        provisional_id, candidate_id, True, 1,
    )  # fmt: skip
    pair = await pool.fetchrow(
        "SELECT source_a, view_a, source_b, view_b, enterprise_id_a, enterprise_id_b, "
        "decided_by, decided_at FROM identity_never_link WHERE task_id = $1",
        task_id,
    )
    assert tuple(pair) == (
        a, "Patient/1", b, "Patient/2", candidate_id, provisional_id, "qa", T_DECIDED,
    )  # fmt: skip
    assert not await pool.fetchval(
        "SELECT bool_or(provisional) FROM identity_links WHERE source = $1", b
    )

    # A new version of the record reviewed, now looking like the candidate: not linked.
    [record] = await store.resolve_batch(
        [_moved_in_with(maybe, known, f"Osei{run}").request(b, "2")]
    )
    assert (record.enterprise_id, record.absorbed) == (provisional_id, ())
    assert record.match is not None and record.match.enterprise_id != candidate_id
    # A new version of the candidate's record, now looking like the record reviewed.
    [other] = await store.resolve_batch(
        [_moved_in_with(known, maybe, f"Abara{run}").request(a, "1")]
    )
    assert (other.enterprise_id, other.absorbed) == (candidate_id, ())
    assert other.match is not None and other.match.enterprise_id != provisional_id
    tasks = await pool.fetch(
        "SELECT task_id FROM identity_review_tasks WHERE source = ANY($1::text[])", [a, b]
    )
    assert [t["task_id"] for t in tasks] == [task_id]  # no other task for the pair
    assert [m for m in await list_merges(pool) if provisional_id in (m.absorbed, m.survivor)] == []

    # Deciding again: the same way is a no-op, the other way an error.
    again = await store.keep_apart(task_id, by="someone-else", at=datetime.now(UTC))
    assert (again.changed, again.decided_by, again.pairs) == (False, "qa", 0)
    with pytest.raises(AlreadyDecided, match="kept apart by qa"):
        await store.link(task_id, by="qa", at=T_DECIDED)
    assert await _signals_about(pool, provisional_id) == []


# --- the CLI ----------------------------------------------------------------------------------


def _stack_env(tmp_path: Path, dsn: str, bootstrap: str) -> Path:
    folder = tmp_path / f"stack-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    (folder / "stack.env").write_text(
        f"CONCORD_DATABASE_URL={dsn}\nCONCORD_BOOTSTRAP_SERVERS={bootstrap}\n"
    )
    return folder


async def _open_review(dsn: str, run: str) -> tuple[str, str, str]:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    assert pool is not None
    try:
        task_id, provisional_id, candidate_id, _, _ = await review_task_of(
            PostgresIdentityStore(pool), run
        )
        return task_id, provisional_id, candidate_id
    finally:
        await pool.close()


async def _identity_state(dsn: str, task_id: str, absorbed: str) -> tuple[int, int, int]:
    """(signals of `absorbed` waiting in the outbox, its active merges, the task's pairs)"""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    assert pool is not None
    try:
        waiting = len(await _signals_about(pool, absorbed))
        merges = [m for m in await list_merges(pool) if m.absorbed == absorbed]
        pairs = await pool.fetchval(
            "SELECT count(*) FROM identity_never_link WHERE task_id = $1", task_id
        )
        return waiting, len(merges), pairs
    finally:
        await pool.close()


async def _read_signal(bootstrap: str, marker: bytes) -> list[ClinicalFact]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=50)
    await consumer.start()
    try:
        partitions = [TopicPartition(FACTS, p) for p in range(4)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        found = []
        for _ in range(15):
            for records in (await consumer.getmany(timeout_ms=200)).values():
                found += [r.value for r in records if marker in r.value]
        return [codec.CLINICAL_FACT.decode(v) for v in found]
    finally:
        await consumer.stop()


def test_concord_identity_link_publishes_and_reviews_all_shows_it(
    postgres: PostgresInfo, broker: BrokerInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in ("CONCORD_DATABASE_URL", "CONCORD_BOOTSTRAP_SERVERS"):
        monkeypatch.delenv(variable, raising=False)
    run = uuid.uuid4().hex[:6]
    task_id, provisional_id, candidate_id = asyncio.run(_open_review(postgres.dsn, run))
    stack = _stack_env(tmp_path, postgres.dsn, broker.bootstrap_servers)
    cli = CliRunner()

    listed = cli.invoke(main, ["identity", "reviews", "--state-dir", str(stack)])
    assert listed.exit_code == 0, listed.output
    [line] = [line for line in listed.output.splitlines() if task_id in line]
    assert f"{provisional_id} may be {candidate_id}" in line
    assert f"Vantreck{run}".casefold() not in listed.output.casefold()  # no values

    done = cli.invoke(main, ["identity", "link", task_id, "--by", "qa", "--state-dir", str(stack)])
    assert done.exit_code == 0, done.output
    assert done.output == (
        f"task {task_id} linked: {provisional_id} merged into {candidate_id}; "
        "signal published to concord.facts\n"
    )
    assert asyncio.run(_identity_state(postgres.dsn, task_id, provisional_id)) == (0, 1, 0)
    [signal] = asyncio.run(_read_signal(broker.bootstrap_servers, provisional_id.encode()))
    assert (signal.attribute, signal.patient_id, signal.value) == (
        MERGE_ATTRIBUTE, candidate_id, provisional_id,
    )  # fmt: skip

    # Decided: gone from the open tasks, listed with --all, with the decision.
    open_tasks = cli.invoke(main, ["identity", "reviews", "--json", "--state-dir", str(stack)])
    assert task_id not in open_tasks.output
    everything = cli.invoke(
        main, ["identity", "reviews", "--json", "--all", "--state-dir", str(stack)]
    )
    [entry] = [json.loads(x) for x in everything.output.splitlines() if task_id in x]
    assert (entry["status"], entry["decision"], entry["decided_by"]) == ("DECIDED", "LINKED", "qa")
    text = cli.invoke(main, ["identity", "reviews", "--all", "--state-dir", str(stack)]).output
    [line] = [line for line in text.splitlines() if task_id in line]
    assert line.endswith(" by qa") and "; linked 20" in line

    again = cli.invoke(main, ["identity", "link", task_id, "--state-dir", str(stack)])
    assert again.exit_code == 0, again.output
    assert again.output.startswith(f"task {task_id} was already linked ")
    assert again.output.rstrip().endswith("by qa: nothing changed")
    other_way = cli.invoke(main, ["identity", "keep-apart", task_id, "--state-dir", str(stack)])
    assert other_way.exit_code == 1
    assert f"task {task_id} was already decided: linked by qa" in other_way.output
    assert "concord identity unmerge" in other_way.output


def test_a_link_without_kafka_is_committed_and_its_signal_waits(
    postgres: PostgresInfo, broker: BrokerInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in ("CONCORD_DATABASE_URL", "CONCORD_BOOTSTRAP_SERVERS"):
        monkeypatch.delenv(variable, raising=False)
    run = uuid.uuid4().hex[:6]
    task_id, provisional_id, candidate_id = asyncio.run(_open_review(postgres.dsn, run))
    cli = CliRunner()
    unreachable = _stack_env(tmp_path, postgres.dsn, "127.0.0.1:1")
    failed = cli.invoke(main, ["identity", "link", task_id, "--state-dir", str(unreachable)])
    assert failed.exit_code == 1
    assert f"{provisional_id} merged into {candidate_id} (committed)" in failed.output
    assert "waits in the identity outbox" in failed.output
    assert asyncio.run(_identity_state(postgres.dsn, task_id, provisional_id)) == (1, 1, 0)

    # The same command once Kafka is back: the signal that waited is published.
    stack = _stack_env(tmp_path, postgres.dsn, broker.bootstrap_servers)
    again = cli.invoke(main, ["identity", "link", task_id, "--state-dir", str(stack)])
    assert again.exit_code == 0, again.output
    assert f"task {task_id} was already linked" in again.output
    assert "its signal, waiting in the outbox, was published to concord.facts" in again.output
    assert asyncio.run(_identity_state(postgres.dsn, task_id, provisional_id)) == (0, 1, 0)
    [signal] = asyncio.run(_read_signal(broker.bootstrap_servers, provisional_id.encode()))
    assert signal.patient_id == candidate_id


def test_concord_identity_keep_apart_and_its_errors(
    postgres: PostgresInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in ("CONCORD_DATABASE_URL", "CONCORD_BOOTSTRAP_SERVERS"):
        monkeypatch.delenv(variable, raising=False)
    run = uuid.uuid4().hex[:6]
    task_id, provisional_id, candidate_id = asyncio.run(_open_review(postgres.dsn, run))
    # No broker: keeping apart publishes nothing, so it needs none.
    stack = _stack_env(tmp_path, postgres.dsn, "127.0.0.1:1")
    cli = CliRunner()

    kept = cli.invoke(
        main, ["identity", "keep-apart", task_id, "--by", "qa", "--state-dir", str(stack)]
    )
    assert kept.exit_code == 0, kept.output
    assert kept.output == (
        f"task {task_id} kept apart: {provisional_id} and {candidate_id} are two patients "
        "(1 never-link pair of source records); matching will not link them nor ask again\n"
    )
    assert asyncio.run(_identity_state(postgres.dsn, task_id, provisional_id)) == (0, 0, 1)
    again = cli.invoke(main, ["identity", "keep-apart", task_id, "--state-dir", str(stack)])
    assert again.exit_code == 0, again.output
    assert "was already kept apart" in again.output and "by qa: nothing changed" in again.output

    linked = cli.invoke(main, ["identity", "link", task_id, "--state-dir", str(stack)])
    assert linked.exit_code == 1
    assert f"task {task_id} was already decided: kept apart by qa" in linked.output
    assert asyncio.run(_identity_state(postgres.dsn, task_id, provisional_id)) == (0, 0, 1)

    for command in ("link", "keep-apart"):
        unknown = cli.invoke(main, ["identity", command, "nope", "--state-dir", str(stack)])
        assert unknown.exit_code == 1
        assert "no identity review task nope" in unknown.output


@pytest.mark.asyncio
async def test_list_reviews_shows_decided_tasks_only_when_asked(pool: asyncpg.Pool) -> None:
    store = PostgresIdentityStore(pool)
    run = uuid.uuid4().hex[:6]
    task_id, _, _, _, _ = await review_task_of(store, run)
    assert task_id in {t.task_id for t in await list_reviews(pool, limit=100_000)}
    await store.keep_apart(task_id, by="qa", at=T_DECIDED)
    assert task_id not in {t.task_id for t in await list_reviews(pool, limit=100_000)}
    [entry] = [
        t
        for t in await list_reviews(pool, limit=100_000, include_decided=True)
        if t.task_id == task_id
    ]
    assert (entry.status, entry.decision, entry.decided_by, entry.decided_at) == (
        "DECIDED", ReviewDecision.KEPT_APART, "qa", T_DECIDED,
    )  # fmt: skip
