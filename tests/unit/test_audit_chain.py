"""The audit trail's pure core: the chain, and verify naming the first row where it breaks and
what is wrong there, for every kind of tampering at every place in a trail."""

from __future__ import annotations

import ast
import hashlib
import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from concord.review import audit
from concord.review.audit import (
    LOOKAHEAD,
    Anchor,
    AuditEntry,
    AuditRecord,
    ChainVerifier,
    Fault,
    build_trail,
    chain,
    genesis_hash,
    verify,
)

TRAIL = "6f1c2a52-0000-4000-8000-000000000001"
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
N = 8


def record(i: int) -> AuditRecord:
    return AuditRecord(
        actor=f"https://idp.example/ u{i % 3}",
        role="reviewer",
        purpose="HOPERAT" if i % 2 else None,
        action="alert.read" if i % 2 else "alert.acknowledge",
        object_type="alert",
        object_id=f"A{i}",
        detail={"revision": i, "decision": "ACK", "first": i == 1},
    )


def trail(n: int = N, trail_id: str = TRAIL) -> list[AuditEntry]:
    return build_trail(trail_id, [(record(i), T0 + timedelta(seconds=i)) for i in range(1, n + 1)])


def renumber(entries: list[AuditEntry]) -> list[AuditEntry]:
    """What an attacker's UPDATE of seq does: the rows keep everything else."""
    return [e.model_copy(update={"seq": i}) for i, e in enumerate(entries, start=1)]


def broken_at(entries: list[AuditEntry], anchors: tuple[Anchor, ...] = ()) -> tuple[int, Fault]:
    verdict = verify(TRAIL, entries, anchors)
    assert verdict.broken is not None, verdict.line()
    assert not verdict.intact
    return verdict.broken.seq, verdict.broken.fault


def anchor(entry: AuditEntry, trail_id: str = TRAIL) -> Anchor:
    return Anchor(trail_id=trail_id, seq=entry.seq, hash=entry.hash, at=T0 + timedelta(hours=1))


# --- the chain ----------------------------------------------------------------------------------


def test_a_trail_links_each_row_to_the_one_before_from_the_genesis_hash() -> None:
    entries = trail()
    assert [e.seq for e in entries] == list(range(1, N + 1))
    assert entries[0].prev_hash == genesis_hash(TRAIL) != genesis_hash("another trail")
    for before, after in itertools.pairwise(entries):
        assert after.prev_hash == before.hash
    assert len({e.hash for e in entries}) == N


def test_the_hash_format_is_fixed() -> None:
    # Every trail ever written is checked with this function: changing the encoding would
    # break them all. This pins it.
    genesis = hashlib.sha256(f"concord-audit-genesis\x1f{TRAIL}".encode()).hexdigest()
    text = (
        '{"action":"alert.read","actor":"https://idp.example/ u1",'
        '"at":"2026-03-01T09:00:00.000000+00:00",'
        '"detail":{"decision":"ACK","first":true,"revision":1},"object_id":"A1",'
        f'"object_type":"alert","prev_hash":"{genesis}","purpose":"HOPERAT",'
        '"role":"reviewer","seq":1}'
    )
    entry = chain(record(1), seq=1, at=T0, prev_hash=genesis_hash(TRAIL))
    assert entry.prev_hash == genesis
    assert entry.hash == hashlib.sha256(f"{genesis}\n{text}".encode()).hexdigest()


@pytest.mark.parametrize(
    "field",
    ["seq", "at", "actor", "role", "purpose", "action", "object_type", "object_id", "detail"],
)
def test_the_hash_covers_every_stored_field(field: str) -> None:
    entry = trail(1)[0]
    changed = {
        "seq": 2,
        "at": entry.at + timedelta(microseconds=1),
        "actor": "someone else",
        "role": "admin",
        "purpose": "TREAT",
        "action": "alert.dismiss",
        "object_type": "patient",
        "object_id": "A2",
        "detail": {**entry.detail, "revision": 2},
    }[field]
    copy = entry.model_copy(update={field: changed})
    assert audit.entry_hash(copy, seq=copy.seq, at=copy.at, prev_hash=copy.prev_hash) != entry.hash


def test_an_empty_trail_is_intact() -> None:
    verdict = verify(TRAIL, [])
    assert verdict.intact
    assert verdict.line() == "audit trail intact: 0 rows, head seq=none, latest anchor seq=none"


def test_an_untouched_trail_is_intact() -> None:
    verdict = verify(TRAIL, trail())
    assert verdict.intact
    assert verdict.line() == f"audit trail intact: {N} rows, head seq={N}, latest anchor seq=none"


def test_a_trail_of_another_id_breaks_at_its_first_row() -> None:
    assert broken_at(trail(trail_id="another trail")) == (1, Fault.EDITED)


# --- every kind of tampering, at every place ---------------------------------------------------


@pytest.mark.parametrize("k", range(1, N + 1))
@pytest.mark.parametrize(
    "update",
    [
        {"actor": "mallory"},
        {"purpose": "TREAT"},
        {"action": "alert.dismiss"},
        {"object_id": "A0"},
        {"detail": {"revision": 0}},
        {"at": T0},
        {"prev_hash": "0" * 64},
        {"hash": "0" * 64},
    ],
    ids=lambda update: next(iter(update)),
)
def test_an_edited_row_is_named(k: int, update: dict[str, object]) -> None:
    entries = trail()
    entries[k - 1] = entries[k - 1].model_copy(update=update)
    assert broken_at(entries) == (k, Fault.EDITED)
    verdict = verify(TRAIL, entries)
    assert verdict.line() == (
        f"audit trail broken at seq={k}: edited (its hash does not match its content)"
    )


@pytest.mark.parametrize("k", range(1, N))
def test_an_edited_row_whose_hash_was_recomputed_is_named(k: int) -> None:
    entries = trail()
    old = entries[k - 1]
    entries[k - 1] = chain(
        old.record.model_copy(update={"actor": "mallory"}),
        seq=k,
        at=old.at,
        prev_hash=old.prev_hash,
    )
    assert broken_at(entries) == (k, Fault.EDITED)
    assert "recomputed" in verify(TRAIL, entries).line()


@pytest.mark.parametrize("k", range(1, N))
def test_a_deleted_row_is_named(k: int) -> None:
    entries = trail()
    del entries[k - 1]
    assert broken_at(entries) == (k, Fault.DELETED)
    assert verify(TRAIL, entries).line() == (
        f"audit trail broken at seq={k}: deleted (seq={k} is missing: seq={k + 1} follows "
        f"seq={k - 1})"
    )


def test_deleted_rows_are_named_by_the_first() -> None:
    entries = trail()
    del entries[2:5]
    assert broken_at(entries) == (3, Fault.DELETED)
    assert "seq=3..5 are missing" in verify(TRAIL, entries).line()


@pytest.mark.parametrize("k", range(1, N))
def test_a_deleted_row_whose_followers_were_renumbered_is_named(k: int) -> None:
    entries = trail()
    del entries[k - 1]
    assert broken_at(renumber(entries)) == (k, Fault.DELETED)
    assert "renumbered" in verify(TRAIL, renumber(entries)).line()


@pytest.mark.parametrize("k", range(1, N + 1))
def test_an_inserted_row_is_named(k: int) -> None:
    entries = trail()
    fake = entries[k - 1].model_copy(update={"actor": "mallory", "hash": "f" * 64})
    entries.insert(k - 1, fake)
    assert broken_at(renumber(entries)) == (k, Fault.INSERTED)


@pytest.mark.parametrize("k", range(2, N + 1))
def test_an_inserted_row_with_a_recomputed_hash_is_named(k: int) -> None:
    entries = trail()
    fake = chain(
        record(50).model_copy(update={"actor": "mallory"}),
        seq=k,
        at=T0,
        prev_hash=entries[k - 2].hash,
    )
    entries.insert(k - 1, fake)
    assert broken_at(renumber(entries)) == (k, Fault.INSERTED)


def test_a_copy_of_a_row_appended_is_named() -> None:
    entries = trail()
    entries.append(entries[2].model_copy(update={"seq": N + 1}))
    assert broken_at(entries) == (N + 1, Fault.INSERTED)
    assert "a copy of the row at seq=3" in verify(TRAIL, entries).line()


@pytest.mark.parametrize("k", range(1, N))
def test_two_rows_swapped_are_named_by_the_first(k: int) -> None:
    entries = trail()
    entries[k - 1], entries[k] = entries[k], entries[k - 1]
    assert broken_at(renumber(entries)) == (k, Fault.REORDERED)
    assert verify(TRAIL, renumber(entries)).line() == (
        f"audit trail broken at seq={k}: reordered (it holds the row written as seq={k + 1}; "
        f"the row written as seq={k} is at seq={k + 1})"
    )


def test_a_row_moved_far_is_named() -> None:
    entries = trail()
    moved = entries.pop(1)
    entries.insert(6, moved)
    assert broken_at(renumber(entries)) == (2, Fault.REORDERED)


def test_rows_out_of_seq_order_are_named() -> None:
    entries = trail()
    entries[3], entries[4] = entries[4], entries[3]  # seqs kept: 1 2 3 5 4 ...
    assert broken_at(entries) == (4, Fault.DELETED)  # seq 4 is not where it should be


# --- anchors ------------------------------------------------------------------------------------


def test_a_trail_ending_exactly_at_its_anchor_is_intact() -> None:
    entries = trail()
    verdict = verify(TRAIL, entries, (anchor(entries[2]), anchor(entries[-1])))
    assert verdict.intact
    assert verdict.latest_anchor == anchor(entries[-1])
    assert verdict.line() == f"audit trail intact: {N} rows, head seq={N}, latest anchor seq={N}"


def test_rows_after_the_latest_anchor_are_fine() -> None:
    entries = trail()
    assert verify(TRAIL, entries, (anchor(entries[4]),)).intact


@pytest.mark.parametrize("kept", range(0, N))
def test_a_trail_cut_short_after_an_anchor_is_named(kept: int) -> None:
    entries = trail()
    verdict = verify(TRAIL, entries[:kept], (anchor(entries[-1]),))
    assert verdict.broken is not None
    assert (verdict.broken.seq, verdict.broken.fault) == (kept + 1, Fault.TRUNCATED)
    ends = f"seq={kept}" if kept else "no row"
    assert verdict.line() == (
        f"audit trail broken at seq={kept + 1}: truncated (the anchor of 2026-03-01 10:00:00Z "
        f"names seq={N}, the trail ends at {ends})"
    )


def test_a_cut_short_trail_without_anchors_cannot_be_told() -> None:
    assert verify(TRAIL, trail()[:5]).intact


def test_anchors_of_another_trail_do_not_count() -> None:
    entries = trail()
    other = trail(N + 5, trail_id="another trail")
    assert verify(TRAIL, entries, (anchor(other[-1], "another trail"),)).intact


def test_a_chain_recomputed_from_a_row_on_is_caught_by_an_anchor() -> None:
    entries = trail()
    rewritten = entries[:3]  # the first three as they were
    prev = entries[2].hash
    for e in entries[3:]:
        rewritten.append(
            chain(e.record.model_copy(update={"actor": "mallory"}), seq=e.seq, at=e.at,
                  prev_hash=prev)
        )  # fmt: skip
        prev = rewritten[-1].hash
    assert verify(TRAIL, rewritten).intact  # consistent in itself
    verdict = verify(TRAIL, rewritten, (anchor(entries[1]), anchor(entries[5])))
    assert verdict.broken is not None
    assert (verdict.broken.seq, verdict.broken.fault) == (6, Fault.REWRITTEN)
    assert "recomputed after seq=2" in verdict.line()


# --- streaming ----------------------------------------------------------------------------------


def test_pages_give_the_verdict_of_the_whole_and_reading_stops_after_a_break() -> None:
    entries = build_trail(TRAIL, [(record(i % 7), T0) for i in range(1, 2001)])
    entries[100] = entries[100].model_copy(update={"actor": "mallory"})
    verifier = ChainVerifier(TRAIL)
    pages = [entries[i : i + 64] for i in range(0, len(entries), 64)]
    read = 0
    for page in pages:
        read += 1
        if verifier.feed(page):
            break
    verdict = verifier.finish()
    assert verdict.broken is not None and verdict.broken.seq == 101
    assert read * 64 < 101 + LOOKAHEAD + 64 * 2  # stopped soon after the break
    assert verdict.line() == verify(TRAIL, entries).line()


# --- records --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"action": "alert.delete"},
        {"purpose": "checking on my neighbour"},
        {"detail": {"value": 7.5}},
        {"detail": {"values": ["a"]}},
        {"detail": {"Name": "x"}},
        {"detail": {"note": "line\nforged"}},
        {"actor": ""},
        {"object_id": "A\x00"},
    ],
)
def test_a_record_holds_codes_and_ids_only(change: dict[str, object]) -> None:
    fields = {**record(1).model_dump(), **change}
    with pytest.raises(ValidationError) as raised:
        AuditRecord.model_validate(fields)
    assert "neighbour" not in str(raised.value)  # errors never echo what was given


def test_an_anchor_travels_as_json() -> None:
    a = anchor(trail()[-1])
    assert Anchor.decode(a.encode()) == a


def test_the_core_is_pure() -> None:
    tree = ast.parse(Path(audit.__file__).read_text())
    imported = {
        (node.module or "") if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    roots = {name.split(".")[0] for name in imported}
    assert not roots & {"asyncpg", "aiokafka", "click", "faust"}
