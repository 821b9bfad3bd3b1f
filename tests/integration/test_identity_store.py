"""The identity index in a real PostgreSQL: decisions, their persistence, and two workers."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from click.testing import CliRunner

from concord.cli import main
from concord.events import codec
from concord.events.models import ClinicalFact
from concord.normalization import identity_store
from concord.normalization.identity.blocking import blocking_keys
from concord.normalization.identity.demographics import from_fhir_patient
from concord.normalization.identity.resolution import How, IdentityRequest, new_enterprise_id
from concord.normalization.identity_store import (
    IDENTITY_OUTBOX,
    NothingRecorded,
    NotMerged,
    PostgresIdentityStore,
)
from concord.stack.postgres import PostgresInfo
from concord.topics import FACTS

pytestmark = pytest.mark.integration


def patient(
    source: str,
    pid: str,
    *,
    family: str,
    given: str,
    birth: str,
    phone: str = "555-201-7788",
    postal: str = "02139",
    gender: str = "female",
) -> IdentityRequest:
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "id": pid,
        "identifier": [{"system": f"urn:{source}:mrn", "value": pid}],
        "name": [{"family": family, "given": [given]}],
        "birthDate": birth,
        "gender": gender,
        "telecom": [{"system": "phone", "value": phone}],
        "address": [{"postalCode": postal, "line": ["12 Elm St"]}],
    }
    return IdentityRequest(
        source=source,
        local_ids=(f"Patient/{pid}", f"id:urn:{source}:mrn|{pid}"),
        demographics=from_fhir_patient(resource, source),
    )


@pytest.mark.asyncio
async def test_new_then_crosswalk_then_match_from_another_source(pool: asyncpg.Pool) -> None:
    store = PostgresIdentityStore(pool)
    run = uuid.uuid4().hex[:6]
    family = f"Quorvath{run}"
    first = patient(f"a{run}", "1", family=family, given="Elizabeth", birth="1970-05-12")
    [created] = await store.resolve_batch([first])
    assert created.how == How.NEW
    assert created.enterprise_id == new_enterprise_id(f"a{run}", "Patient/1")

    [again] = await store.resolve_batch([first])  # redelivered
    assert (again.how, again.enterprise_id) == (How.CROSSWALK, created.enterprise_id)

    nickname = patient(f"b{run}", "77", family=family, given="Liz", birth="1970-05-12")
    [matched] = await store.resolve_batch([nickname])
    assert (matched.how, matched.enterprise_id) == (How.MATCHED, created.enterprise_id)
    assert matched.match is not None and matched.match.breakdown

    rows = await pool.fetch(
        "SELECT decided_by, breakdown FROM identity_links WHERE source = $1", f"b{run}"
    )
    assert {row["decided_by"] for row in rows} == {"MATCHED"}
    assert all(row["breakdown"] for row in rows)  # the score breakdown is kept


@pytest.mark.asyncio
async def test_an_uncertain_match_gets_a_provisional_id_and_a_review_task(
    pool: asyncpg.Pool,
) -> None:
    store = PostgresIdentityStore(pool)
    run = uuid.uuid4().hex[:6]
    family = f"Brennick{run}"
    await store.resolve_batch(
        [patient(f"a{run}", "1", family=family, given="Marta", birth="1981-03-04")]
    )
    # Same name and birth year, another day, phone and postal code: maybe the same person.
    uncertain = patient(
        f"b{run}", "9", family=family, given="Marta", birth="1981-07-19",
        phone="555-999-0000", postal="94110",
    )  # fmt: skip
    [resolution] = await store.resolve_batch([uncertain])
    assert resolution.how == How.REVIEW
    assert resolution.provisional
    tasks = await pool.fetch(
        "SELECT candidate_enterprise_id, breakdown FROM identity_review_tasks WHERE source = $1",
        f"b{run}",
    )
    assert [t["candidate_enterprise_id"] for t in tasks] == [resolution.review_candidate]


@pytest.mark.asyncio
async def test_authoritative_ids_and_undescribed_patients(pool: asyncpg.Pool) -> None:
    store = PostgresIdentityStore(pool)
    run = uuid.uuid4().hex[:6]
    mpi = IdentityRequest(source=f"a{run}", local_ids=("Patient/5",), authoritative_id="EP-77")
    observation = IdentityRequest(source=f"a{run}", local_ids=("Patient/404",))
    authoritative, undescribed = await store.resolve_batch([mpi, observation])
    assert (authoritative.how, authoritative.enterprise_id) == (How.AUTHORITATIVE, "EP-77")
    assert undescribed.how == How.UNDESCRIBED and undescribed.provisional
    # A later clinical record about Patient/5 follows the crosswalk to the MPI id.
    [later] = await store.resolve_batch(
        [IdentityRequest(source=f"a{run}", local_ids=("Patient/5",))]
    )
    assert (later.how, later.enterprise_id) == (How.CROSSWALK, "EP-77")


@pytest.mark.asyncio
async def test_one_new_patient_twice_in_a_batch_gets_one_id(pool: asyncpg.Pool) -> None:
    store = PostgresIdentityStore(pool)
    run = uuid.uuid4().hex[:6]
    family = f"Ostrava{run}"
    one = patient(f"a{run}", "1", family=family, given="Jonah", birth="1955-11-30", gender="male")
    two = patient(f"b{run}", "2", family=family, given="Jonah", birth="1955-11-30", gender="male")
    first, second = await store.resolve_batch([one, two])
    assert first.how == How.NEW and second.how == How.MATCHED
    assert first.enterprise_id == second.enterprise_id


@pytest.mark.asyncio
async def test_two_workers_deciding_at_once_agree(pool: asyncpg.Pool) -> None:
    """Two stores (two workers) see the same new patient from two sources at the same time:
    the advisory lock serializes them, so the second matches the first instead of creating a
    second enterprise id."""
    run = uuid.uuid4().hex[:6]
    family = f"Lindqvist{run}"
    requests = [
        patient(f"{s}{run}", "1", family=family, given="Pia", birth="1990-01-20")
        for s in ("a", "b")
    ]
    results = await asyncio.gather(
        PostgresIdentityStore(pool).resolve_batch([requests[0]]),
        PostgresIdentityStore(pool).resolve_batch([requests[1]]),
    )
    ids = {r.enterprise_id for [r] in results}
    assert len(ids) == 1
    assert sorted(r.how for [r] in results) == [How.MATCHED, How.NEW]


@pytest.mark.asyncio
async def test_one_patient_twice_in_a_batch_is_written_once(pool: asyncpg.Pool) -> None:
    """A redelivered or re-sent Patient in the same batch as its first copy."""
    store = PostgresIdentityStore(pool)
    run = uuid.uuid4().hex[:6]
    mpi = IdentityRequest(
        source=f"a{run}", local_ids=("Patient/5", "id:x|5"), authoritative_id=f"EP-{run}"
    )
    first, again = await store.resolve_batch([mpi, mpi])
    assert first.enterprise_id == again.enterprise_id == f"EP-{run}"
    twice = patient(f"b{run}", "1", family=f"Dupe{run}", given="Ada", birth="1960-02-02")
    one, two = await store.resolve_batch([twice, twice])
    assert one.enterprise_id == two.enterprise_id


_VIEW_ROWS = """
SELECT 'view' AS kind, xmin::text AS version FROM identity_views
WHERE source = $1 AND view_id = $2
UNION ALL
SELECT 'key:' || key, xmin::text FROM identity_block_keys WHERE source = $1 AND view_id = $2
"""


@pytest.mark.asyncio
async def test_a_view_sent_again_unchanged_is_not_rewritten(pool: asyncpg.Pool) -> None:
    """A lab feed repeats its PID in every result: the same demographics for the same patient
    leave the view and its blocking keys as they were (same row versions); changed ones, or
    a view moved to another patient, are written again."""
    store = PostgresIdentityStore(pool)
    run = uuid.uuid4().hex[:6]
    source = f"lab{run}"
    first = patient(source, "1", family=f"Ostrander{run}", given="Mae", birth="1951-03-04")
    [created] = await store.resolve_batch([first])
    written = {r["kind"]: r["version"] for r in await pool.fetch(_VIEW_ROWS, source, "Patient/1")}
    assert "view" in written and any(kind.startswith("key:") for kind in written)

    again, _ = await store.resolve_batch([first, first])
    assert again.enterprise_id == created.enterprise_id
    unchanged = await pool.fetch(_VIEW_ROWS, source, "Patient/1")
    assert {r["kind"]: r["version"] for r in unchanged} == written

    moved = patient(source, "1", family=f"Ostrander{run}", given="Mae", birth="1951-03-04",
                    phone="555-999-0001")  # fmt: skip
    await store.resolve_batch([moved])
    rewritten = {r["kind"]: r["version"] for r in await pool.fetch(_VIEW_ROWS, source, "Patient/1")}
    assert rewritten["view"] != written["view"]
    stored = await pool.fetchval(
        "SELECT demographics ->> 'phone' FROM identity_views WHERE source = $1", source
    )
    assert stored == "5559990001"
    # The keys are exactly the new demographics' keys; only the phone's changed, and the
    # others were left as they were.
    assert moved.demographics is not None and first.demographics is not None
    new_keys = {f"key:{k}" for k in blocking_keys(moved.demographics)}
    old_keys = {f"key:{k}" for k in blocking_keys(first.demographics)}
    assert set(rewritten) - {"view"} == new_keys
    assert new_keys - old_keys == {"key:ph:5559990001"}
    assert old_keys - new_keys == {"key:ph:5552017788"}
    assert {k: rewritten[k] for k in new_keys & old_keys} == {
        k: written[k] for k in new_keys & old_keys
    }


@pytest.mark.asyncio
async def test_the_mpi_decides_between_look_alikes(pool: asyncpg.Pool) -> None:
    """Same demographics, two MPI ids: two people. A patient first seen without the MPI id
    is the one a later record with it matches: one person, under the id it already had."""
    store = PostgresIdentityStore(pool)
    run = uuid.uuid4().hex[:6]
    family = f"Twinning{run}"

    def with_mpi(source: str, pid: str, mpi: str | None) -> IdentityRequest:
        base = patient(source, pid, family=family, given="Sam", birth="1999-09-09")
        return base.model_copy(update={"authoritative_id": mpi})

    first, second = await store.resolve_batch(
        [with_mpi(f"a{run}", "1", f"MPI-A-{run}"), with_mpi(f"b{run}", "2", f"MPI-B-{run}")]
    )
    assert (first.enterprise_id, second.enterprise_id) == (f"MPI-A-{run}", f"MPI-B-{run}")

    [unknown] = await store.resolve_batch([with_mpi(f"c{run}", "3", None)])
    # Two equal candidates: a question for a reviewer, not a guess.
    assert unknown.how == How.REVIEW
    assert unknown.review_candidate in (f"MPI-A-{run}", f"MPI-B-{run}")
    family2 = f"Latecomer{run}"
    early = patient(f"d{run}", "4", family=family2, given="Lou", birth="1980-08-08")
    [before] = await store.resolve_batch([early])
    late = patient(f"e{run}", "5", family=family2, given="Lou", birth="1980-08-08")
    [after] = await store.resolve_batch([late.model_copy(update={"authoritative_id": f"M{run}"})])
    # The MPI id names the patient from now on; the one first seen without it is merged in.
    assert (after.how, after.enterprise_id) == (How.MATCHED, f"M{run}")
    assert after.absorbed == (before.enterprise_id,)
    [early_again] = await store.resolve_batch([early])
    assert early_again.enterprise_id == f"M{run}"  # its local ids were re-pointed
    [again] = await store.resolve_batch(
        [IdentityRequest(source=f"f{run}", local_ids=("Patient/9",), authoritative_id=f"M{run}")]
    )
    assert (again.how, again.enterprise_id) == (How.AUTHORITATIVE, f"M{run}")


def test_concord_identity_reviews_lists_open_tasks_without_values(
    postgres: PostgresInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = uuid.uuid4().hex[:6]
    family = f"Quennell{run}"

    async def uncertain() -> str:
        pool = await asyncpg.create_pool(postgres.dsn, min_size=1, max_size=2)
        assert pool is not None
        try:
            store = PostgresIdentityStore(pool)
            await store.resolve_batch(
                [patient(f"a{run}", "1", family=family, given="Rhea", birth="1981-03-04")]
            )
            # Same names and birth year, another day, phone and postal code: maybe her.
            [review] = await store.resolve_batch(
                [
                    patient(
                        f"b{run}",
                        "2",
                        family=family,
                        given="Rhea",
                        birth="1981-07-19",
                        phone="555-999-0000",
                        postal="94110",
                    )
                ]
            )
            assert review.how == How.REVIEW
            return review.enterprise_id
        finally:
            await pool.close()

    provisional = asyncio.run(uncertain())
    (tmp_path / "stack.env").write_text(f"CONCORD_DATABASE_URL={postgres.dsn}\n")
    monkeypatch.delenv("CONCORD_DATABASE_URL", raising=False)
    result = CliRunner().invoke(
        main, ["identity", "reviews", "--json", "--limit", "1000", "--state-dir", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    [task] = [json.loads(line) for line in result.output.splitlines() if provisional in line]
    assert task["source"] == f"b{run}"
    assert {w["field"] for w in task["breakdown"]} >= {"family", "given", "birth_date"}
    text = CliRunner().invoke(main, ["identity", "reviews", "--state-dir", str(tmp_path)])
    assert family.casefold() not in text.output.casefold()  # fields and levels, no values
    # Whole dates: another task's hex id may hold "1981" by chance.
    assert "1981-03-04" not in text.output and "1981-07-19" not in text.output
    assert "19810304" not in text.output and "19810719" not in text.output


@pytest.mark.asyncio
async def test_a_merge_moves_the_absorbed_patient_to_the_survivor(pool: asyncpg.Pool) -> None:
    store = PostgresIdentityStore(pool)
    run = uuid.uuid4().hex[:6]
    source = f"a{run}"
    old = patient(source, "1", family=f"Olden{run}", given="Ivo", birth="1950-01-01")
    survivor = patient(
        source, "2", family=f"Newer{run}", given="Ada", birth="1977-07-27",
        phone="555-404-1212", postal="60601",
    )  # fmt: skip
    [first], [second] = await store.resolve_batch([old]), await store.resolve_batch([survivor])
    assert first.enterprise_id != second.enterprise_id

    merge = survivor.model_copy(update={"absorbs": ("Patient/1",)})
    [merged] = await store.resolve_batch([merge])
    assert merged.enterprise_id == second.enterprise_id
    assert merged.absorbed == (first.enterprise_id,)
    # What still names the absorbed patient now leads to the survivor.
    [later] = await store.resolve_batch(
        [IdentityRequest(source=source, local_ids=(f"id:urn:{source}:mrn|1",))]
    )
    assert (later.how, later.enterprise_id) == (How.CROSSWALK, second.enterprise_id)
    rows = await pool.fetch(
        "SELECT survivor_enterprise_id FROM identity_merges WHERE absorbed_enterprise_id = $1",
        first.enterprise_id,
    )
    assert [r["survivor_enterprise_id"] for r in rows] == [second.enterprise_id]
    [again] = await store.resolve_batch([merge])  # redelivered: nothing left to absorb
    assert again.absorbed == ()


@pytest.mark.asyncio
async def test_results_before_their_patient_are_merged_into_the_patient_it_matches(
    pool: asyncpg.Pool,
) -> None:
    store = PostgresIdentityStore(pool)
    run = uuid.uuid4().hex[:6]
    family = f"Early{run}"
    [known] = await store.resolve_batch(
        [patient(f"a{run}", "1", family=family, given="Noor", birth="1966-06-16")]
    )
    result = IdentityRequest(source=f"b{run}", local_ids=("Patient/9",))
    [provisional] = await store.resolve_batch([result])
    assert provisional.how == How.UNDESCRIBED and provisional.provisional

    late = patient(f"b{run}", "9", family=family, given="Noor", birth="1966-06-16")
    [placed] = await store.resolve_batch([late])
    assert (placed.how, placed.enterprise_id) == (How.MATCHED, known.enterprise_id)
    assert placed.absorbed == (provisional.enterprise_id,)
    [again] = await store.resolve_batch([result])
    assert again.enterprise_id == known.enterprise_id

    # A Patient that matches nobody keeps the id its results gave it.
    alone = IdentityRequest(source=f"c{run}", local_ids=("Patient/5",))
    [first] = await store.resolve_batch([alone])
    nobody = patient(f"c{run}", "5", family=f"Solo{run}", given="Ines", birth="1944-04-04",
                     phone="555-777-8888", postal="10001")  # fmt: skip
    [described] = await store.resolve_batch([nobody])
    assert (described.enterprise_id, described.absorbed) == (first.enterprise_id, ())


# --- unmerges ---------------------------------------------------------------------------------

T_UNMERGE = datetime(2026, 4, 1, 9, 30, tzinfo=UTC)


async def _moves(pool: asyncpg.Pool, absorbed: str) -> set[tuple[str, str, str, str]]:
    rows = await pool.fetch(
        "SELECT survivor_enterprise_id, kind, source, local_id FROM identity_merge_moves "
        "WHERE absorbed_enterprise_id = $1",
        absorbed,
    )
    return {(r["survivor_enterprise_id"], r["kind"], r["source"], r["local_id"]) for r in rows}


async def _signals(pool: asyncpg.Pool, absorbed: str) -> list[tuple[bytes, ClinicalFact]]:
    """The identity outbox's (key, signal) about `absorbed`: other tests share the database."""
    rows = await pool.fetch(
        "SELECT topic, key, value FROM outbox WHERE stage = $1 ORDER BY seq", IDENTITY_OUTBOX
    )
    found = []
    for row in rows:
        fact = codec.CLINICAL_FACT.decode(row["value"])
        if fact.value == absorbed:
            assert row["topic"] == FACTS
            found.append((row["key"], fact))
    return found


async def _eid(store: PostgresIdentityStore, source: str, local_id: str) -> str:
    [resolution] = await store.resolve_batch(
        [IdentityRequest(source=source, local_ids=(local_id,))]
    )
    assert resolution.how == How.CROSSWALK
    return resolution.enterprise_id


def _person(source: str, pid: str, run: str, family: str, given: str) -> IdentityRequest:
    """A patient no other test's (the database is shared) resembles: birth date, phone and
    postal code drawn from the run and the family name."""
    n = int(hashlib.sha256(f"{run}{family}".encode()).hexdigest()[:12], 16)
    return patient(
        source, pid, family=f"{family}{run}", given=given,
        birth=f"19{n % 90 + 10}-{n // 90 % 12 + 1:02d}-{n // 1080 % 28 + 1:02d}",
        phone=f"555-{n // 30240 % 900 + 100}-{n // 27216000 % 9000 + 1000}",
        postal=f"{n // 245_000_000 % 90000 + 10000}",
    )  # fmt: skip


async def _two_patients(
    store: PostgresIdentityStore, run: str
) -> tuple[IdentityRequest, IdentityRequest, str, str]:
    """Patient/1 (known to sources a and b) and Patient/2 of source a: two people."""
    source = f"a{run}"
    old = _person(source, "1", run, "Olden", "Ivo")
    elsewhere = _person(f"b{run}", "7", run, "Olden", "Ivo")
    survivor = _person(source, "2", run, "Newer", "Ada")
    [first], [same], [second] = [await store.resolve_batch([r]) for r in (old, elsewhere, survivor)]
    assert same.enterprise_id == first.enterprise_id != second.enterprise_id
    return old, survivor, first.enterprise_id, second.enterprise_id


@pytest.mark.asyncio
async def test_an_unmerge_gives_the_absorbed_patient_back_what_the_merge_moved(
    pool: asyncpg.Pool,
) -> None:
    store = PostgresIdentityStore(pool)
    run = uuid.uuid4().hex[:6]
    a, b = f"a{run}", f"b{run}"
    old, survivor, absorbed_id, survivor_id = await _two_patients(store, run)
    [merged] = await store.resolve_batch([survivor.model_copy(update={"absorbs": ("Patient/1",)})])
    assert merged.absorbed == (absorbed_id,)
    # Every link and view the merge re-pointed, MRG-1's own link (written by the batch) too.
    assert await _moves(pool, absorbed_id) == {
        (survivor_id, "LINK", a, "Patient/1"),
        (survivor_id, "LINK", a, f"id:urn:{a}:mrn|1"),
        (survivor_id, "LINK", b, "Patient/7"),
        (survivor_id, "LINK", b, f"id:urn:{b}:mrn|7"),
        (survivor_id, "VIEW", a, "Patient/1"),
        (survivor_id, "VIEW", b, "Patient/7"),
    }
    assert await _eid(store, b, "Patient/7") == survivor_id

    done = await store.unmerge(absorbed_id, by="qa", reason="two people", at=T_UNMERGE)
    assert (done.absorbed, done.survivor, done.links_restored, done.views_restored) == (
        absorbed_id, survivor_id, 4, 2,
    )  # fmt: skip
    # The absorbed patient's local ids lead to it again; the survivor's stay with the survivor.
    assert await _eid(store, a, f"id:urn:{a}:mrn|1") == absorbed_id
    assert await _eid(store, b, "Patient/7") == absorbed_id
    assert await _eid(store, a, "Patient/2") == survivor_id
    [again] = await store.resolve_batch([old])  # its Patient redelivered: no re-match
    assert (again.how, again.enterprise_id) == (How.CROSSWALK, absorbed_id)
    views = await pool.fetch(
        "SELECT source, enterprise_id FROM identity_views WHERE source = ANY($1::text[])", [a, b]
    )
    assert sorted((v["source"], v["enterprise_id"]) for v in views) == sorted(
        [(a, absorbed_id), (b, absorbed_id), (a, survivor_id)]
    )
    links = await pool.fetch(
        "SELECT decided_by, provisional FROM identity_links WHERE enterprise_id = $1",
        absorbed_id,
    )
    assert {(r["decided_by"], r["provisional"]) for r in links} == {("UNMERGED", False)}
    merge = await pool.fetchrow(
        "SELECT unmerged_at, unmerged_by, unmerge_reason FROM identity_merges "
        "WHERE absorbed_enterprise_id = $1",
        absorbed_id,
    )
    assert tuple(merge) == (T_UNMERGE, "qa", "two people")
    assert await _moves(pool, absorbed_id) == set()
    # One signal, keyed and addressed to the survivor, naming the restored patient.
    [(key, fact)] = await _signals(pool, absorbed_id)
    assert key == survivor_id.encode()
    assert (fact.attribute, fact.value, fact.patient_id) == (
        "Patient.unmergedFrom", absorbed_id, survivor_id,
    )  # fmt: skip
    assert fact == done.fact

    # Twice: not merged any more, and nothing changes.
    with pytest.raises(NotMerged, match="concord identity merges"):
        await store.unmerge(absorbed_id, by="qa", reason="again", at=T_UNMERGE)
    assert len(await _signals(pool, absorbed_id)) == 1
    assert await _eid(store, b, "Patient/7") == absorbed_id


@pytest.mark.asyncio
async def test_a_merge_said_again_after_an_unmerge_is_a_new_merge(pool: asyncpg.Pool) -> None:
    store = PostgresIdentityStore(pool)
    run = uuid.uuid4().hex[:6]
    a = f"a{run}"
    _, survivor, absorbed_id, survivor_id = await _two_patients(store, run)
    merge = survivor.model_copy(update={"absorbs": ("Patient/1",)})
    await store.resolve_batch([merge])
    first = await store.unmerge(absorbed_id, by="qa", reason="error", at=T_UNMERGE)
    undone_at = await pool.fetchval(
        "SELECT merged_at FROM identity_merges WHERE absorbed_enterprise_id = $1", absorbed_id
    )

    [again] = await store.resolve_batch([merge])  # the A40 redelivered, or sent again
    assert again.absorbed == (absorbed_id,)
    row = await pool.fetchrow(
        "SELECT merged_at, unmerged_at, unmerged_by, unmerge_reason FROM identity_merges "
        "WHERE absorbed_enterprise_id = $1",
        absorbed_id,
    )
    assert row["merged_at"] > undone_at
    assert (row["unmerged_at"], row["unmerged_by"], row["unmerge_reason"]) == (None, None, None)
    assert len(await _moves(pool, absorbed_id)) == 6  # recorded afresh
    assert await _eid(store, a, "Patient/1") == survivor_id

    second = await store.unmerge(absorbed_id, by="qa", reason="still wrong", at=T_UNMERGE)
    assert (second.links_restored, second.views_restored) == (4, 2)
    assert await _eid(store, a, "Patient/1") == absorbed_id
    # Another merge undone: another signal (the first one's id is the first merge's).
    assert second.fact.fact_id != first.fact.fact_id
    assert [f.fact_id for _, f in await _signals(pool, absorbed_id)] == [
        first.fact.fact_id, second.fact.fact_id,
    ]  # fmt: skip


@pytest.mark.asyncio
async def test_unmerging_a_patient_never_merged_changes_nothing(pool: asyncpg.Pool) -> None:
    store = PostgresIdentityStore(pool)
    run = uuid.uuid4().hex[:6]
    [alone] = await store.resolve_batch([_person(f"a{run}", "1", run, "Single", "Una")])
    before = await pool.fetch(
        "SELECT * FROM identity_links WHERE enterprise_id = $1 ORDER BY local_id",
        alone.enterprise_id,
    )
    with pytest.raises(NotMerged) as raised:
        await store.unmerge(alone.enterprise_id, by="qa", reason="typo", at=T_UNMERGE)
    assert str(raised.value).startswith(f"{alone.enterprise_id} is not merged")
    assert f"Single{run}" not in str(raised.value)
    after = await pool.fetch(
        "SELECT * FROM identity_links WHERE enterprise_id = $1 ORDER BY local_id",
        alone.enterprise_id,
    )
    assert before == after
    assert await _signals(pool, alone.enterprise_id) == []


@pytest.mark.asyncio
async def test_a_chain_of_merges_gives_back_the_first_patient_from_the_last_survivor(
    pool: asyncpg.Pool,
) -> None:
    """A merged into B, then B into C: B's merge moved A's ids too. Unmerging A takes them
    back from C; unmerging B later takes B's own ids only."""
    store = PostgresIdentityStore(pool)
    run = uuid.uuid4().hex[:6]
    a = f"a{run}"
    people = [
        _person(a, "1", run, "Alpha", "Abe"),
        _person(a, "2", run, "Beta", "Bea"),
        _person(a, "3", run, "Gamma", "Cy"),
    ]
    ids = [(await store.resolve_batch([p]))[0].enterprise_id for p in people]
    eid_a, eid_b, eid_c = ids
    assert len(set(ids)) == 3
    await store.resolve_batch([people[1].model_copy(update={"absorbs": ("Patient/1",)})])
    await store.resolve_batch([people[2].model_copy(update={"absorbs": ("Patient/2",)})])
    assert await _eid(store, a, "Patient/1") == eid_c
    b_moves = {(kind, local) for _, kind, _, local in await _moves(pool, eid_b)}
    assert ("LINK", "Patient/1") in b_moves and ("VIEW", "Patient/1") in b_moves

    done = await store.unmerge(eid_a, by="qa", reason="A is not B", at=T_UNMERGE)
    assert (done.survivor, done.links_restored, done.views_restored) == (eid_c, 2, 1)
    assert await _eid(store, a, "Patient/1") == eid_a
    assert await _eid(store, a, f"id:urn:{a}:mrn|1") == eid_a
    assert await _eid(store, a, "Patient/2") == eid_c
    [(key, fact)] = await _signals(pool, eid_a)
    assert (key, fact.patient_id, fact.value) == (eid_c.encode(), eid_c, eid_a)
    assert {local for _, _, _, local in await _moves(pool, eid_b)} == {
        "Patient/2", f"id:urn:{a}:mrn|2",
    }  # fmt: skip

    undone = await store.unmerge(eid_b, by="qa", reason="B is not C", at=T_UNMERGE)
    assert (undone.survivor, undone.links_restored, undone.views_restored) == (eid_c, 2, 1)
    assert await _eid(store, a, "Patient/2") == eid_b
    assert await _eid(store, a, "Patient/1") == eid_a
    assert await _eid(store, a, "Patient/3") == eid_c


@pytest.mark.asyncio
async def test_unmerging_a_provisional_id_gives_its_patient_back_its_ids_and_view(
    pool: asyncpg.Pool,
) -> None:
    """Results came first (provisional id), their Patient then matched a known patient and
    merged the provisional id into it: undone, the Patient and its results are one patient
    of their own, and its Patient redelivered stays there."""
    store = PostgresIdentityStore(pool)
    run = uuid.uuid4().hex[:6]
    b = f"b{run}"
    family = "Early"
    [known] = await store.resolve_batch([_person(f"a{run}", "1", run, family, "Noor")])
    [provisional] = await store.resolve_batch([IdentityRequest(source=b, local_ids=("Patient/9",))])
    late = _person(b, "9", run, family, "Noor")
    [placed] = await store.resolve_batch([late])
    assert placed.absorbed == (provisional.enterprise_id,)

    done = await store.unmerge(provisional.enterprise_id, by="qa", reason="x", at=T_UNMERGE)
    assert (done.survivor, done.links_restored, done.views_restored) == (known.enterprise_id, 2, 1)
    assert await _eid(store, b, f"id:urn:{b}:mrn|9") == provisional.enterprise_id
    [again] = await store.resolve_batch([late])
    assert (again.how, again.enterprise_id) == (How.CROSSWALK, provisional.enterprise_id)


@pytest.mark.asyncio
async def test_a_merge_that_kept_no_moves_is_not_unmerged_blindly(pool: asyncpg.Pool) -> None:
    """A merge recorded before migration 0005 kept no moves: nothing to give back."""
    store = PostgresIdentityStore(pool)
    run = uuid.uuid4().hex[:6]
    await pool.execute(
        "INSERT INTO identity_merges (absorbed_enterprise_id, survivor_enterprise_id, source) "
        "VALUES ($1, $2, 'old-feed')",
        f"EOLD{run}",
        f"ENEW{run}",
    )
    with pytest.raises(NothingRecorded, match="migration 0005"):
        await store.unmerge(f"EOLD{run}", by="qa", reason="x", at=T_UNMERGE)
    assert (
        await pool.fetchval(
            "SELECT unmerged_at FROM identity_merges WHERE absorbed_enterprise_id = $1",
            f"EOLD{run}",
        )
        is None
    )
    assert await _signals(pool, f"EOLD{run}") == []


@pytest.mark.asyncio
async def test_a_views_blocking_keys_are_found_by_the_view_not_by_scanning_them_all(
    pool: asyncpg.Pool,
) -> None:
    """Rewriting a view's blocking keys deletes them by (source, view id): without an index
    led by those columns every batch read all the keys of every known patient (7.8 ms a batch
    at 10,000 patients, growing with the population; benchmarks/identity.py --store). The
    primary key (key, source, view id) does not help: PostgreSQL can only walk it whole."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL enable_seqscan = off")
        plan = [
            row[0]
            for row in await conn.fetch(
                "EXPLAIN " + identity_store._REPLACE_KEYS, ["a"], ["Patient/1"], [], [], []
            )
        ]
        used = [
            line.split(" using ")[1].split()[0]
            for line in plan
            if "Scan using " in line and "identity_block_keys" in line
        ]
        leading = [
            await conn.fetchval(
                "SELECT a.attname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
                "WHERE c.relname = $1",
                name,
            )
            for name in used
        ]
    assert leading == ["source"], "\n".join(plan)
