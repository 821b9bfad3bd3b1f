"""The identity index in PostgreSQL, shared by every normalization worker (migration 0003).

A batch is resolved in one transaction: fetch the crosswalk rows of its local ids and every
known patient that shares a blocking key with one of its records, resolve each record with
the pure core (`identity.resolution`) against that snapshot — updated in memory as the batch
goes, so two records of one new patient in one batch get one id —, then write links, views,
blocking keys and review tasks. Workers serialize on one advisory lock while they do: two
workers deciding about the same new patient at once would otherwise both create one. The
lock is held for one batch (tens of milliseconds); a finer lock is for when it shows.

A merge re-points the absorbed patient's links and views to the survivor and keeps what it
moved (identity_merge_moves, migration 0005), so that an operator can undo a merge made in
error (`unmerge`): under the same lock, the moved rows go back. The signal that tells the
conflicts stage of a merge or an unmerge is written to the identity outbox in the
transaction that decides it: a redelivered batch finds the merge done and decides nothing,
so a signal kept only in memory would be lost with the worker.

A review task (an uncertain match) is decided by a person (`link`, `keep_apart`; migration
0016), under the same lock: a link is a merge like the others (recorded, signalled through
the outbox, undone by `unmerge`); keeping apart records never-link pairs of source views,
which `resolve_batch` reads so that matching never links the two, nor asks about them again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

import asyncpg
import orjson
from pydantic import BaseModel, ConfigDict

from concord.events import codec
from concord.events.models import MERGE_ATTRIBUTE, UNMERGE_ATTRIBUTE, ClinicalFact, Provenance
from concord.normalization.facts.drafts import OPERATOR_SOURCE, unmerge_fact
from concord.normalization.identity.blocking import blocking_keys
from concord.normalization.identity.demographics import Demographics
from concord.normalization.identity.index import InMemoryIdentityIndex, KnownPerson
from concord.normalization.identity.matcher import DEFAULT_THRESHOLDS
from concord.normalization.identity.resolution import (
    AUTHORITATIVE_SOURCE,
    How,
    IdentityRequest,
    LocalId,
    Resolution,
    apply,
    resolve,
)
from concord.normalization.identity.scoring import FieldWeight, Thresholds
from concord.normalization.identity_reviews import (
    AlreadyDecided,
    AlreadyOnePatient,
    InTransaction,
    KeepApartDecision,
    KeptApart,
    LinkDecision,
    ReviewDecision,
    ReviewEntry,
    ReviewSide,
    ReviewTask,
    ReviewView,
    UnknownReviewTask,
)
from concord.normalization.outbound import fact_record
from concord.normalization.ports import IdentityReviews, IdentityStore, MergeSignal
from concord.runtime.db import unnest_columns
from concord.runtime.outbox import Outbox

# Any fixed key: it only serializes identity decisions across workers.
IDENTITY_LOCK = 0x6964656E
# A blocking key shared by more known patients than this tells them apart no better than the
# other keys do, and comparing with all of them would cost milliseconds a record.
MAX_BLOCK_SIZE = 200
# The outbox stage of identity signals: the normalization worker publishes what is left there.
IDENTITY_OUTBOX = "identity"

# A block is counted no further than one past the limit: a common key (a frequent family name's
# code) is shared by thousands of patients in a large population.
_CANDIDATES = """
WITH wanted AS (
    SELECT w.key FROM unnest($1::text[]) AS w(key)
    WHERE (
        SELECT count(*) FROM (
            SELECT 1 FROM identity_block_keys k WHERE k.key = w.key LIMIT $2 + 1
        ) AS block
    ) <= $2
), persons AS (
    SELECT DISTINCT v.enterprise_id
    FROM identity_block_keys k JOIN wanted USING (key)
    JOIN identity_views v ON v.source = k.source AND v.view_id = k.view_id
)
SELECT v.enterprise_id, v.source, v.view_id, v.demographics
FROM identity_views v JOIN persons USING (enterprise_id)
ORDER BY v.enterprise_id, v.source, v.view_id
"""
_AUTHORITATIVE = """
SELECT DISTINCT enterprise_id FROM identity_links
WHERE source = $1 AND enterprise_id = ANY($2::text[])
"""
_LINKS = """
SELECT l.source, l.local_id, l.enterprise_id FROM identity_links l
JOIN unnest($1::text[], $2::text[]) AS wanted(source, local_id)
  ON l.source = wanted.source AND l.local_id = wanted.local_id
"""
_WRITE_LINKS = """
INSERT INTO identity_links (source, local_id, enterprise_id, decided_by, provisional, score,
                            breakdown)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::boolean[],
                     $6::float8[], $7::jsonb[])
ON CONFLICT (source, local_id) DO UPDATE SET
    enterprise_id = excluded.enterprise_id, decided_by = excluded.decided_by,
    provisional = excluded.provisional, score = excluded.score, breakdown = excluded.breakdown,
    decided_at = now()
WHERE excluded.decided_by IN ('AUTHORITATIVE', 'MERGED')
"""
_MERGE = """
WITH m AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) AS m(absorbed, survivor, source)
),
links AS (
    UPDATE identity_links l SET enterprise_id = m.survivor, decided_at = now()
    FROM m WHERE l.enterprise_id = m.absorbed
    RETURNING m.absorbed, m.survivor, l.source, l.local_id
),
relinked AS (
    -- Local ids of the absorbed patient the batch itself linked to the survivor (MRG-1, a
    -- Patient placing its results' provisional id): the UPDATE above no longer sees them.
    SELECT m.absorbed, m.survivor, r.source, r.local_id
    FROM m JOIN unnest($4::text[], $5::text[], $6::text[]) AS r(absorbed, source, local_id)
        ON r.absorbed = m.absorbed
),
views AS (
    UPDATE identity_views v SET enterprise_id = m.survivor, updated_at = now()
    FROM m WHERE v.enterprise_id = m.absorbed
    RETURNING m.absorbed, m.survivor, v.source, v.view_id
),
moved_links AS (SELECT * FROM links UNION SELECT * FROM relinked),
views_of_moved_links AS (
    -- A view is named by its record's first local id: it goes back with that id, even if
    -- the batch wrote it under the survivor (a Patient placing its results' provisional id).
    SELECT ml.absorbed, ml.survivor, v.source, v.view_id
    FROM moved_links ml JOIN identity_views v
        ON v.source = ml.source AND v.view_id = ml.local_id AND v.enterprise_id = ml.survivor
),
moves AS (
    INSERT INTO identity_merge_moves (absorbed_enterprise_id, survivor_enterprise_id, kind,
                                      source, local_id)
    SELECT absorbed, survivor, 'LINK', source, local_id FROM moved_links
    UNION SELECT absorbed, survivor, 'VIEW', source, view_id FROM views
    UNION SELECT absorbed, survivor, 'VIEW', source, view_id FROM views_of_moved_links
    ON CONFLICT DO NOTHING
)
INSERT INTO identity_merges (absorbed_enterprise_id, survivor_enterprise_id, source)
SELECT absorbed, survivor, source FROM m
ON CONFLICT (absorbed_enterprise_id, survivor_enterprise_id) DO UPDATE SET
    source = excluded.source, merged_at = now(),
    unmerged_at = NULL, unmerged_by = NULL, unmerge_reason = NULL
-- A merge undone and said again is a new merge; one still in force keeps its first time.
WHERE identity_merges.unmerged_at IS NOT NULL
"""
_WRITE_VIEWS = """
INSERT INTO identity_views (source, view_id, enterprise_id, demographics)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[])
ON CONFLICT (source, view_id) DO UPDATE SET
    enterprise_id = excluded.enterprise_id, demographics = excluded.demographics,
    updated_at = now()
"""
# The views' blocking keys become exactly the given ones: those no longer given go, new ones
# come, and those kept are not touched (a view's demographics mostly change one field).
_REPLACE_KEYS = """
WITH given AS (
    SELECT * FROM unnest($3::text[], $4::text[], $5::text[]) AS g(key, source, view_id)
), dropped AS (
    DELETE FROM identity_block_keys k USING unnest($1::text[], $2::text[]) AS v(source, view_id)
    WHERE k.source = v.source AND k.view_id = v.view_id
      AND NOT EXISTS (
          SELECT 1 FROM given g
          WHERE g.key = k.key AND g.source = k.source AND g.view_id = k.view_id
      )
)
INSERT INTO identity_block_keys (key, source, view_id)
SELECT * FROM given ON CONFLICT DO NOTHING
"""
_WRITE_REVIEWS = """
INSERT INTO identity_review_tasks (task_id, source, view_id, provisional_enterprise_id,
                                   candidate_enterprise_id, score, breakdown)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                     $6::float8[], $7::jsonb[])
ON CONFLICT (task_id) DO NOTHING
"""
_ACTIVE_MERGE = """
SELECT m.survivor_enterprise_id, m.merged_at,
       (SELECT count(*) FROM identity_merge_moves mv
        WHERE mv.absorbed_enterprise_id = m.absorbed_enterprise_id
          AND mv.survivor_enterprise_id = m.survivor_enterprise_id) AS moves
FROM identity_merges m
WHERE m.absorbed_enterprise_id = $1 AND m.unmerged_at IS NULL
ORDER BY m.merged_at DESC, m.survivor_enterprise_id LIMIT 1
"""
# The survivor and what it was merged into since, in order: the last holds the moved rows.
_CHAIN = """
WITH RECURSIVE chain(eid, path) AS (
    SELECT $1::text, ARRAY[$1::text]
    UNION ALL
    SELECT m.survivor_enterprise_id, c.path || m.survivor_enterprise_id
    FROM chain c JOIN identity_merges m
        ON m.absorbed_enterprise_id = c.eid AND m.unmerged_at IS NULL
    WHERE NOT m.survivor_enterprise_id = ANY(c.path)
)
SELECT path FROM chain ORDER BY cardinality(path) DESC, path LIMIT 1
"""
# $1 absorbed, $2 recorded survivor, $3 holder. Only rows still where the merges left them:
# one decided again since (an MPI id, another merge) stays with that decision.
_RESTORE_LINKS = """
UPDATE identity_links l SET enterprise_id = $1, decided_by = $4, provisional = false,
    decided_at = now()
FROM identity_merge_moves mv
WHERE mv.absorbed_enterprise_id = $1 AND mv.survivor_enterprise_id = $2 AND mv.kind = 'LINK'
  AND l.source = mv.source AND l.local_id = mv.local_id AND l.enterprise_id = $3
RETURNING l.source, l.local_id
"""
_RESTORE_VIEWS = """
UPDATE identity_views v SET enterprise_id = $1, updated_at = now()
FROM identity_merge_moves mv
WHERE mv.absorbed_enterprise_id = $1 AND mv.survivor_enterprise_id = $2 AND mv.kind = 'VIEW'
  AND v.source = mv.source AND v.view_id = mv.local_id AND v.enterprise_id = $3
RETURNING v.source, v.view_id
"""
# The merge's own moves, and the restored rows from the moves of the later merges of the
# chain (B into C moved A's ids too): unmerging B later must not take A's ids with it.
_FORGET_MOVES = """
DELETE FROM identity_merge_moves mv
WHERE (mv.absorbed_enterprise_id = $1 AND mv.survivor_enterprise_id = $2)
   OR (mv.absorbed_enterprise_id = ANY($3::text[])
       AND (mv.kind, mv.source, mv.local_id) IN (
           SELECT * FROM unnest($4::text[], $5::text[], $6::text[])))
"""
_MARK_UNMERGED = """
UPDATE identity_merges SET unmerged_at = $3, unmerged_by = $4, unmerge_reason = $5
WHERE absorbed_enterprise_id = $1 AND survivor_enterprise_id = $2
"""
_LIST_MERGES = """
SELECT m.absorbed_enterprise_id, m.survivor_enterprise_id, m.source, m.merged_at,
       m.unmerged_at, m.unmerged_by,
       count(mv.kind) FILTER (WHERE mv.kind = 'LINK') AS links,
       count(mv.kind) FILTER (WHERE mv.kind = 'VIEW') AS views
FROM identity_merges m LEFT JOIN identity_merge_moves mv
    ON mv.absorbed_enterprise_id = m.absorbed_enterprise_id
   AND mv.survivor_enterprise_id = m.survivor_enterprise_id
WHERE $2 OR m.unmerged_at IS NULL
GROUP BY m.absorbed_enterprise_id, m.survivor_enterprise_id
ORDER BY m.merged_at DESC, m.absorbed_enterprise_id
LIMIT $1
"""

# --- review decisions (migration 0016) ---
# The enterprise ids each of the batch's views is kept apart from: the patients holding, now,
# the views a reviewer paired with it (either side of the unordered pair).
_KEPT_APART = """
WITH wanted AS (SELECT * FROM unnest($1::text[], $2::text[]) AS w(source, view_id)),
pairs AS (
    SELECT w.source, w.view_id, n.source_b AS other_source, n.view_b AS other_view
    FROM wanted w JOIN identity_never_link n ON n.source_a = w.source AND n.view_a = w.view_id
    UNION ALL
    SELECT w.source, w.view_id, n.source_a, n.view_a
    FROM wanted w JOIN identity_never_link n ON n.source_b = w.source AND n.view_b = w.view_id
)
SELECT DISTINCT p.source, p.view_id, v.enterprise_id
FROM pairs p JOIN identity_views v ON v.source = p.other_source AND v.view_id = p.other_view
"""
_TASK = """
SELECT task_id, source, view_id, provisional_enterprise_id, candidate_enterprise_id, score,
       breakdown, status, decision, decided_by, decided_at, created_at
FROM identity_review_tasks WHERE task_id = $1
"""
_VIEW_HOLDER = "SELECT enterprise_id FROM identity_views WHERE source = $1 AND view_id = $2"
_VIEWS_OF = """
SELECT source, view_id, enterprise_id, demographics, updated_at FROM identity_views
WHERE enterprise_id = ANY($1::text[]) ORDER BY source, view_id
"""
_VIEWS_MOVED = """
SELECT source, local_id FROM identity_merge_moves
WHERE absorbed_enterprise_id = $1 AND kind = 'VIEW'
"""
_PAIRS_BETWEEN = """
SELECT count(*) FROM identity_never_link n
JOIN identity_views va ON va.source = n.source_a AND va.view_id = n.view_a
JOIN identity_views vb ON vb.source = n.source_b AND vb.view_id = n.view_b
WHERE (va.enterprise_id = $1 AND vb.enterprise_id = $2)
   OR (va.enterprise_id = $2 AND vb.enterprise_id = $1)
"""
# A reviewed record's links are confirmed: no longer provisional, whatever the decision.
_CONFIRM = """
UPDATE identity_links SET provisional = false
WHERE enterprise_id = $1 AND provisional AND decided_by = 'REVIEW'
"""
_DECIDE = """
UPDATE identity_review_tasks SET status = 'DECIDED', decision = $2, decided_by = $3,
    decided_at = $4
WHERE task_id = $1
"""
_NEVER_LINK = """
INSERT INTO identity_never_link (source_a, view_a, enterprise_id_a, source_b, view_b,
                                 enterprise_id_b, task_id, decided_by, decided_at)
SELECT p.*, $7, $8, $9
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[]) AS p
ON CONFLICT DO NOTHING
"""
_LIST_REVIEWS = """
SELECT task_id, source, provisional_enterprise_id, candidate_enterprise_id, score, breakdown,
       status, decision, decided_by, decided_at, created_at
FROM identity_review_tasks
WHERE $2 OR status = 'OPEN'
ORDER BY created_at, task_id
LIMIT $1
"""


class UnmergeError(Exception):
    """An unmerge that cannot be done; names enterprise ids only, and changes nothing."""


class NotMerged(UnmergeError):
    def __init__(self, absorbed: str) -> None:
        self.absorbed = absorbed
        super().__init__(
            f"{absorbed} is not merged into another patient; "
            "`concord identity merges` lists merges (`--all` with those undone)"
        )


class NothingRecorded(UnmergeError):
    """A merge from before migration 0005, which did not keep what it moved."""

    def __init__(self, absorbed: str, survivor: str) -> None:
        self.absorbed = absorbed
        self.survivor = survivor
        super().__init__(
            f"the merge of {absorbed} into {survivor} predates the record of what merges "
            "move (migration 0005): there is nothing to restore automatically"
        )


class Unmerge(BaseModel):
    """What an unmerge did. `survivor` is the patient that held the restored rows: the merge's
    survivor, or what that was merged into since."""

    model_config = ConfigDict(frozen=True)

    absorbed: str
    survivor: str
    links_restored: int
    views_restored: int
    fact: ClinicalFact  # the signal written to the identity outbox


class MergeEntry(BaseModel):
    """One merge as operators list it: enterprise ids, times, counts; never demographics."""

    model_config = ConfigDict(frozen=True)

    absorbed: str
    survivor: str
    source: str
    merged_at: datetime
    unmerged_at: datetime | None = None
    unmerged_by: str | None = None
    # What an unmerge would restore (0 once undone: the moves are forgotten).
    links_moved: int = 0
    views_moved: int = 0


def review_link_fact(*, survivor: str, absorbed: str, task_id: str, at: datetime) -> ClinicalFact:
    """The MERGE signal of a reviewer's link, keyed by the survivor, like a source's merge; its
    id derives from the task, so publishing it twice is one merge."""
    action = f"review/{task_id}"
    digest = hashlib.sha256("\x1f".join([action, MERGE_ATTRIBUTE, absorbed]).encode()).hexdigest()
    return ClinicalFact(
        fact_id=digest[:32],
        patient_id=survivor,
        attribute=MERGE_ATTRIBUTE,
        attribute_class="DEMOGRAPHICS",
        value=absorbed,
        status="ASSERTED",
        provenance=Provenance(
            source_system=OPERATOR_SOURCE,
            source_record_id=action,
            event_time=at,
            received_time=at,
            raw_topic="",
            raw_partition=-1,
            raw_offset=-1,
            payload_sha256=digest,
        ),
    )


def _entry_fields(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "task_id": row["task_id"],
        "source": row["source"],
        "provisional_enterprise_id": row["provisional_enterprise_id"],
        "candidate_enterprise_id": row["candidate_enterprise_id"],
        "score": row["score"],
        "breakdown": tuple(FieldWeight.model_validate(w) for w in orjson.loads(row["breakdown"])),
        "created_at": row["created_at"],
        "status": row["status"],
        "decision": row["decision"],
        "decided_by": row["decided_by"],
        "decided_at": row["decided_at"],
    }


async def list_reviews(
    pool: asyncpg.Pool, *, limit: int = 100, include_decided: bool = False
) -> list[ReviewEntry]:
    """Review tasks, oldest first: the open ones, or all with `include_decided`."""
    rows = await pool.fetch(_LIST_REVIEWS, limit, include_decided)
    return [ReviewEntry(**_entry_fields(row)) for row in rows]


def unmerge_action_id(absorbed: str, merged_at: datetime) -> str:
    """One id per merge instance, so that the signal of one unmerge, published twice, is one
    signal, while undoing the same pair's later re-merge is another."""
    return f"{absorbed}@{merged_at.isoformat()}"


async def list_merges(
    pool: asyncpg.Pool, *, limit: int = 100, include_undone: bool = False
) -> list[MergeEntry]:
    """Merges, newest first; those undone too with `include_undone`."""
    rows = await pool.fetch(_LIST_MERGES, limit, include_undone)
    return [
        MergeEntry(
            absorbed=row["absorbed_enterprise_id"],
            survivor=row["survivor_enterprise_id"],
            source=row["source"],
            merged_at=row["merged_at"],
            unmerged_at=row["unmerged_at"],
            unmerged_by=row["unmerged_by"],
            links_moved=row["links"],
            views_moved=row["views"],
        )
        for row in rows
    ]


async def pending_unmerge(pool: asyncpg.Pool, absorbed: str) -> bool:
    """Whether the signal of an unmerge of `absorbed` still waits in the identity outbox."""
    rows = await pool.fetch("SELECT value FROM outbox WHERE stage = $1", IDENTITY_OUTBOX)
    for row in rows:
        try:
            fact = codec.CLINICAL_FACT.decode(row["value"])
        except codec.CodecError:
            continue
        if fact.attribute == UNMERGE_ATTRIBUTE and fact.value == absorbed:
            return True
    return False


async def pending_link(pool: asyncpg.Pool, task_id: str) -> bool:
    """Whether the signal of the link of review task `task_id` still waits in the identity
    outbox."""
    action = f"review/{task_id}"
    rows = await pool.fetch("SELECT value FROM outbox WHERE stage = $1", IDENTITY_OUTBOX)
    for row in rows:
        try:
            fact = codec.CLINICAL_FACT.decode(row["value"])
        except codec.CodecError:
            continue
        if fact.attribute == MERGE_ATTRIBUTE and fact.provenance.source_record_id == action:
            return True
    return False


class _Writes:
    """What a batch decided, as columns for unnest."""

    def __init__(self, stored: Mapping[tuple[str, str], tuple[str, str]]) -> None:
        # The views as stored before the batch, those read with its candidates: (enterprise
        # id, document) by (source, view id).
        self.stored = stored
        # Keyed, so a key decided twice in one batch is written once (an upsert may not touch
        # a row twice in one statement): the later decision stands.
        self.links: dict[LocalId, tuple[Any, ...]] = {}
        self.views: dict[tuple[str, str], tuple[str, Demographics]] = {}
        self.reviews: dict[str, tuple[Any, ...]] = {}
        self.merges: dict[str, tuple[str, str]] = {}  # absorbed -> (survivor, source)
        # Local ids of an absorbed patient the batch links to the survivor itself (the UPDATE
        # of the merge does not see them) -> the absorbed id.
        self.relinked: dict[LocalId, str] = {}

    def link(self, key: LocalId, resolution: Resolution, how: How) -> None:
        decision = resolution.match
        breakdown = (
            orjson.dumps([w.model_dump(mode="json") for w in decision.breakdown]).decode()
            if decision is not None
            else None
        )
        self.links[key] = (
            *key,
            resolution.enterprise_id,
            how.value,
            resolution.provisional,
            decision.score if decision is not None else None,
            breakdown,
        )

    def changed_views(self) -> list[tuple[str, str, str, str]]:
        """The views to write, as (source, view id, enterprise id, document): all but those
        stored already with the same patient and demographics. A lab feed repeats its PID in
        every result: rewriting the view and its blocking keys each time would only churn the
        tables (the view's updated_at is when its demographics or its patient last changed)."""
        changed = []
        for (source, view_id), (eid, demographics) in self.views.items():
            document = demographics.model_dump_json()
            stored = self.stored.get((source, view_id))
            if (
                stored is None
                or stored[0] != eid
                or orjson.loads(stored[1]) != orjson.loads(document)
            ):
                changed.append((source, view_id, eid, document))
        return changed

    def review(self, request: IdentityRequest, resolution: Resolution) -> None:
        decision = resolution.match
        if decision is None or resolution.review_candidate is None or decision.score is None:
            return
        view_id = request.local_ids[0]
        task = f"{request.source}\x1f{view_id}\x1f{resolution.review_candidate}"
        breakdown = orjson.dumps([w.model_dump(mode="json") for w in decision.breakdown])
        task_id = hashlib.sha256(task.encode()).hexdigest()[:32]
        self.reviews[task_id] = (
            task_id,
            request.source,
            view_id,
            resolution.enterprise_id,
            resolution.review_candidate,
            decision.score,
            breakdown.decode(),
        )


# A batch's candidates are mostly the same views as the last batch's: parsed once, they stay
# the same (frozen) objects, whose match and blocking keys are computed once too. Keyed by the
# stored document, so a view rewritten since is parsed anew.
@lru_cache(maxsize=16_384)
def _stored_view(document: str) -> Demographics:
    return Demographics.from_stored(document)


class PostgresIdentityStore(IdentityStore, IdentityReviews):
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        thresholds: Thresholds = DEFAULT_THRESHOLDS,
        max_block_size: int = MAX_BLOCK_SIZE,
        outbox: Outbox | None = None,
    ) -> None:
        self.pool = pool
        self.thresholds = thresholds
        self.max_block_size = max_block_size
        self.outbox = outbox or Outbox(pool, IDENTITY_OUTBOX)

    async def resolve_batch(
        self, requests: Sequence[IdentityRequest], merge_signal: MergeSignal | None = None
    ) -> list[Resolution]:
        """Each request's resolution, recorded; with the signal of each merge decided
        (`merge_signal`) in the identity outbox, in the same transaction."""
        if not requests:
            return []
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", IDENTITY_LOCK)
            crosswalk = await self._crosswalk(conn, requests)
            index, authoritative, stored = await self._candidates(conn, requests)
            apart = await self._kept_apart(conn, requests)
            writes = _Writes(stored)
            resolutions = []
            for request in requests:
                resolution = resolve(
                    request,
                    crosswalk=crosswalk,
                    index=index,
                    thresholds=self.thresholds,
                    authoritative_ids=authoritative,
                    kept_apart=apart.get((request.source, request.local_ids[0]), ()),
                )
                resolutions.append(resolution)
                if request.authoritative_id:
                    authoritative.add(resolution.enterprise_id)
                for kept in apart.values():  # a patient kept apart merged: its survivor too
                    if kept.intersection(resolution.absorbed):
                        kept.add(resolution.enterprise_id)
                self._remember(request, resolution, crosswalk, index, writes)
            await self._write(conn, writes)
            if merge_signal is not None:
                signals = [
                    merge_signal(i, resolution.enterprise_id, absorbed)
                    for i, resolution in enumerate(resolutions)
                    for absorbed in resolution.absorbed
                ]
                await self.outbox.write(conn, signals)
        return resolutions

    async def unmerge(self, absorbed: str, *, by: str, reason: str, at: datetime) -> Unmerge:
        """Undo the merge of `absorbed` (made in error): its moved links and views go back to
        it, and the signal for the conflicts stage waits in the identity outbox, all in one
        transaction. The caller publishes it (`Outbox.drain`) after commit.

        Raises NotMerged when `absorbed` is not merged into anyone (now), NothingRecorded for
        a merge that kept no moves; neither changes anything."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", IDENTITY_LOCK)
            merge = await conn.fetchrow(_ACTIVE_MERGE, absorbed)
            if merge is None:
                raise NotMerged(absorbed)
            survivor: str = merge["survivor_enterprise_id"]
            if not merge["moves"]:
                raise NothingRecorded(absorbed, survivor)
            chain: list[str] = await conn.fetchval(_CHAIN, survivor)
            holder, later = chain[-1], chain[:-1]
            links = await conn.fetch(_RESTORE_LINKS, absorbed, survivor, holder, How.UNMERGED.value)
            views = await conn.fetch(_RESTORE_VIEWS, absorbed, survivor, holder)
            restored = [("LINK", r["source"], r["local_id"]) for r in links] + [
                ("VIEW", r["source"], r["view_id"]) for r in views
            ]
            await conn.execute(
                _FORGET_MOVES, absorbed, survivor, later, *unnest_columns(restored, 3)
            )
            await conn.execute(_MARK_UNMERGED, absorbed, survivor, at, by, reason)
            fact = unmerge_fact(
                survivor=holder,
                absorbed=absorbed,
                action_id=unmerge_action_id(absorbed, merge["merged_at"]),
                at=at,
            )
            await self.outbox.write(conn, [fact_record(fact)])
        return Unmerge(
            absorbed=absorbed,
            survivor=holder,
            links_restored=len(links),
            views_restored=len(views),
            fact=fact,
        )

    async def review_task(self, task_id: str) -> ReviewTask | None:
        """A review task in full, for the detail page (both sides' demographics: PHI), or None
        when there is no such task. Read in one snapshot: a decision meanwhile shows whole."""
        async with (
            self.pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            row = await conn.fetchrow(_TASK, task_id)
            if row is None:
                return None
            record_eid, candidate_eid = await self._holders(conn, row)
            views = [
                ReviewView(
                    source=v["source"],
                    view_id=v["view_id"],
                    enterprise_id=v["enterprise_id"],
                    demographics=Demographics.from_stored(v["demographics"]),
                    updated_at=v["updated_at"],
                )
                for v in await conn.fetch(_VIEWS_OF, sorted({record_eid, candidate_eid}))
            ]
            reviewed = (row["source"], row["view_id"])
            if record_eid != candidate_eid:
                mine = {(v.source, v.view_id) for v in views if v.enterprise_id == record_eid}
            else:  # one patient now: the record's side is what the merge moved from it
                moved = await conn.fetch(_VIEWS_MOVED, row["provisional_enterprise_id"])
                mine = {reviewed, *((m["source"], m["local_id"]) for m in moved)}
        return ReviewTask(
            **_entry_fields(row),
            view_id=row["view_id"],
            record=ReviewSide(
                enterprise_id=row["provisional_enterprise_id"],
                current_enterprise_id=record_eid,
                views=tuple(v for v in views if (v.source, v.view_id) in mine),
            ),
            candidate=ReviewSide(
                enterprise_id=row["candidate_enterprise_id"],
                current_enterprise_id=candidate_eid,
                views=tuple(v for v in views if (v.source, v.view_id) not in mine),
            ),
        )

    async def link(
        self, task_id: str, *, by: str, at: datetime, also: InTransaction | None = None
    ) -> LinkDecision:
        """A reviewer says the task's record is the candidate: the patient holding the record
        (its provisional id) is merged into the candidate (or what the candidate was merged
        into since) as resolve_batch merges (identity_merges and its moves, so `identity
        merges` lists it and `unmerge` undoes it), its MERGE signal written to the identity
        outbox, and the task decided, in one transaction under the identity lock. The caller
        publishes the outbox (`Outbox.drain`) after commit; the normalization worker's drain
        publishes what it leaves.

        Linked before: a no-op (`changed` False). Raises UnknownReviewTask; AlreadyDecided
        when kept apart; KeptApart when another task kept the two patients apart. `also` runs
        in the same transaction when the link is made (the review service's audit row)."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", IDENTITY_LOCK)
            row = await self._decidable(conn, task_id, ReviewDecision.LINKED)
            if row["decision"] is not None:
                return LinkDecision(
                    task_id=task_id,
                    absorbed=row["provisional_enterprise_id"],
                    survivor=row["candidate_enterprise_id"],
                    decided_by=row["decided_by"],
                    decided_at=row["decided_at"],
                    changed=False,
                )
            absorbed, survivor = await self._holders(conn, row)
            fact = None
            if absorbed != survivor:
                if await conn.fetchval(_PAIRS_BETWEEN, absorbed, survivor):
                    raise KeptApart(task_id, absorbed, survivor)
                await conn.execute(_CONFIRM, absorbed)
                await conn.execute(_MERGE, [absorbed], [survivor], [OPERATOR_SOURCE], [], [], [])
                fact = review_link_fact(
                    survivor=survivor, absorbed=absorbed, task_id=task_id, at=at
                )
                await self.outbox.write(conn, [fact_record(fact)])
            await conn.execute(_DECIDE, task_id, ReviewDecision.LINKED.value, by, at)
            if also is not None:
                await also(conn)
        return LinkDecision(
            task_id=task_id,
            absorbed=absorbed,
            survivor=survivor,
            decided_by=by,
            decided_at=at,
            changed=True,
            fact=fact,
        )

    async def keep_apart(
        self, task_id: str, *, by: str, at: datetime, also: InTransaction | None = None
    ) -> KeepApartDecision:
        """A reviewer says the task's record and the candidate are two people: every source
        view of the one is paired with every view of the other as never to be linked
        (identity_never_link), the record's links are no longer provisional, and the task is
        decided, in one transaction under the identity lock. Nothing is published: no fact
        moves. From then on matching leaves the other side out of the candidates of either
        side's records: neither a link nor another review task for the pair.

        Kept apart before: a no-op (`changed` False). Raises UnknownReviewTask; AlreadyDecided
        when linked; AlreadyOnePatient when a merge made the two one patient since. `also` runs
        in the same transaction when the decision is made."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", IDENTITY_LOCK)
            row = await self._decidable(conn, task_id, ReviewDecision.KEPT_APART)
            record, candidate = await self._holders(conn, row)
            if row["decision"] is not None:
                return KeepApartDecision(
                    task_id=task_id,
                    record=record,
                    candidate=candidate,
                    decided_by=row["decided_by"],
                    decided_at=row["decided_at"],
                    changed=False,
                )
            if record == candidate:
                raise AlreadyOnePatient(task_id, record)
            views = await conn.fetch(_VIEWS_OF, [record, candidate])
            side: dict[str, list[tuple[str, str, str]]] = {record: [], candidate: []}
            for v in views:
                side[v["enterprise_id"]].append((v["source"], v["view_id"], v["enterprise_id"]))
            if (row["source"], row["view_id"]) not in {(s, i) for s, i, _ in side[record]}:
                side[record].append((row["source"], row["view_id"], record))
            pairs = sorted(
                (min(mine, theirs), max(mine, theirs))
                for mine in side[record]
                for theirs in side[candidate]
            )
            columns = unnest_columns([(*a, *b) for a, b in pairs], 6)
            await conn.execute(_NEVER_LINK, *columns, task_id, by, at)
            await conn.execute(_CONFIRM, record)
            await conn.execute(_DECIDE, task_id, ReviewDecision.KEPT_APART.value, by, at)
            if also is not None:
                await also(conn)
        return KeepApartDecision(
            task_id=task_id,
            record=record,
            candidate=candidate,
            decided_by=by,
            decided_at=at,
            changed=True,
            pairs=len(pairs),
        )

    @staticmethod
    async def _decidable(
        conn: asyncpg.Connection, task_id: str, decision: ReviewDecision
    ) -> asyncpg.Record:
        """The task, locked; raises unless it is open or decided `decision` already."""
        row = await conn.fetchrow(_TASK + "FOR UPDATE", task_id)
        if row is None:
            raise UnknownReviewTask(task_id)
        if row["decision"] is not None and row["decision"] != decision.value:
            raise AlreadyDecided(task_id, ReviewDecision(row["decision"]), row["decided_by"])
        return row

    @staticmethod
    async def _holders(conn: asyncpg.Connection, task: asyncpg.Record) -> tuple[str, str]:
        """The patients holding the task's two sides now: the record's view wherever merges
        took it, and the candidate or what it was merged into since."""
        record: str | None = await conn.fetchval(_VIEW_HOLDER, task["source"], task["view_id"])
        if record is None:  # not expected: the task's batch wrote the view
            record = (await conn.fetchval(_CHAIN, task["provisional_enterprise_id"]))[-1]
        candidate: str = (await conn.fetchval(_CHAIN, task["candidate_enterprise_id"]))[-1]
        return record, candidate

    async def _kept_apart(
        self, conn: asyncpg.Connection, requests: Sequence[IdentityRequest]
    ) -> dict[tuple[str, str], set[str]]:
        """For each of the batch's views a reviewer paired with others (never-link pairs):
        the patients holding those others now."""
        views = sorted({(r.source, r.local_ids[0]) for r in requests if r.demographics})
        if not views:
            return {}
        apart: dict[tuple[str, str], set[str]] = {}
        for row in await conn.fetch(_KEPT_APART, *unnest_columns(views, 2)):
            apart.setdefault((row["source"], row["view_id"]), set()).add(row["enterprise_id"])
        return apart

    async def _crosswalk(
        self, conn: asyncpg.Connection, requests: Sequence[IdentityRequest]
    ) -> dict[LocalId, str]:
        keys = sorted(
            {key for request in requests for key in (*request.keys, *request.absorbed_keys)}
        )
        rows = await conn.fetch(_LINKS, [k[0] for k in keys], [k[1] for k in keys])
        return {(row["source"], row["local_id"]): row["enterprise_id"] for row in rows}

    async def _candidates(
        self, conn: asyncpg.Connection, requests: Sequence[IdentityRequest]
    ) -> tuple[InMemoryIdentityIndex, set[str], dict[tuple[str, str], tuple[str, str]]]:
        """The known patients sharing a blocking key with the batch, which of them the MPI
        already names, and their views as stored: (enterprise id, document) by (source, view
        id)."""
        wanted = sorted(
            {
                key
                for request in requests
                if request.demographics is not None
                for key in blocking_keys(request.demographics)
            }
        )
        views: dict[str, list[Demographics]] = {}
        stored: dict[tuple[str, str], tuple[str, str]] = {}
        if wanted:
            for row in await conn.fetch(_CANDIDATES, wanted, self.max_block_size):
                demographics = _stored_view(row["demographics"])
                views.setdefault(row["enterprise_id"], []).append(demographics)
                stored[(row["source"], row["view_id"])] = (
                    row["enterprise_id"],
                    row["demographics"],
                )
        persons = (
            KnownPerson(enterprise_id=eid, demographics=tuple(v)) for eid, v in views.items()
        )
        index = InMemoryIdentityIndex(persons, max_block_size=self.max_block_size)
        rows = await conn.fetch(_AUTHORITATIVE, AUTHORITATIVE_SOURCE, list(views)) if views else []
        return index, {row["enterprise_id"] for row in rows}, stored

    def _remember(
        self,
        request: IdentityRequest,
        resolution: Resolution,
        crosswalk: dict[LocalId, str],
        index: InMemoryIdentityIndex,
        writes: _Writes,
    ) -> None:
        """Apply the decision to the batch's snapshot, and note what to write."""
        for key in request.absorbed_keys:
            if crosswalk.get(key) in resolution.absorbed:
                writes.relinked[key] = crosswalk[key]
        if request.own_id in resolution.absorbed:
            # A Patient placing the provisional id its results gave it: its own local ids
            # are the absorbed patient's, though the batch links them to the survivor.
            for key in request.keys:
                if key[0] != AUTHORITATIVE_SOURCE:
                    writes.relinked[key] = request.own_id
        for key, how in apply(request, resolution, crosswalk, index):
            writes.link(key, resolution, how)
        if resolution.how == How.REVIEW:
            writes.review(request, resolution)
        for absorbed in resolution.absorbed:
            writes.merges[absorbed] = (resolution.enterprise_id, request.source)
        if request.demographics is not None:
            view_key = (request.source, request.local_ids[0])
            writes.views[view_key] = (resolution.enterprise_id, request.demographics)

    async def _write(self, conn: asyncpg.Connection, writes: _Writes) -> None:
        if writes.links:
            await conn.execute(_WRITE_LINKS, *unnest_columns(writes.links.values(), 7))
        changed = writes.changed_views()
        if changed:
            sources, view_ids, eids, documents = unnest_columns(changed, 4)
            await conn.execute(_WRITE_VIEWS, sources, view_ids, eids, documents)
            rows = [
                (key, source, view_id)
                for source, view_id, _, _ in changed
                for key in sorted(blocking_keys(writes.views[(source, view_id)][1]))
            ]
            await conn.execute(_REPLACE_KEYS, sources, view_ids, *unnest_columns(rows, 3))
        if writes.reviews:
            await conn.execute(_WRITE_REVIEWS, *unnest_columns(writes.reviews.values(), 7))
        if writes.merges:
            absorbed = list(writes.merges)
            survivors = [writes.merges[a][0] for a in absorbed]
            sources = [writes.merges[a][1] for a in absorbed]
            relinked = [(eid, *key) for key, eid in writes.relinked.items()]
            await conn.execute(_MERGE, absorbed, survivors, sources, *unnest_columns(relinked, 3))
