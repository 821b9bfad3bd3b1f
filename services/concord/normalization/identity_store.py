"""The identity index in PostgreSQL, shared by every normalization worker (migration 0003).

A batch is resolved in one transaction: fetch the crosswalk rows of its local ids and every
known patient that shares a blocking key with one of its records, resolve each record with
the pure core (`identity.resolution`) against that snapshot — updated in memory as the batch
goes, so two records of one new patient in one batch get one id —, then write links, views,
blocking keys and review tasks. Workers serialize on one advisory lock while they do: two
workers deciding about the same new patient at once would otherwise both create one. The
lock is held for one batch (tens of milliseconds); a finer lock is for when it shows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import asyncpg
import orjson

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
from concord.normalization.identity.scoring import Thresholds

# Any fixed key: it only serializes identity decisions across workers.
IDENTITY_LOCK = 0x6964656E
# A blocking key shared by more known patients than this tells them apart no better than the
# other keys do, and comparing with all of them would cost milliseconds a record.
MAX_BLOCK_SIZE = 200

_CANDIDATES = """
WITH wanted AS (
    SELECT key FROM identity_block_keys WHERE key = ANY($1::text[])
    GROUP BY key HAVING count(*) <= $2
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
WITH m AS (SELECT * FROM unnest($1::text[], $2::text[]) AS m(absorbed, survivor)),
links AS (
    UPDATE identity_links l SET enterprise_id = m.survivor, decided_at = now()
    FROM m WHERE l.enterprise_id = m.absorbed
),
views AS (
    UPDATE identity_views v SET enterprise_id = m.survivor, updated_at = now()
    FROM m WHERE v.enterprise_id = m.absorbed
)
INSERT INTO identity_merges (absorbed_enterprise_id, survivor_enterprise_id, source)
SELECT m.absorbed, m.survivor, s.source FROM m JOIN unnest($1::text[], $3::text[])
    AS s(absorbed, source) ON s.absorbed = m.absorbed
ON CONFLICT DO NOTHING
"""
_WRITE_VIEWS = """
INSERT INTO identity_views (source, view_id, enterprise_id, demographics)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[])
ON CONFLICT (source, view_id) DO UPDATE SET
    enterprise_id = excluded.enterprise_id, demographics = excluded.demographics,
    updated_at = now()
"""
_DROP_KEYS = """
DELETE FROM identity_block_keys k USING unnest($1::text[], $2::text[]) AS v(source, view_id)
WHERE k.source = v.source AND k.view_id = v.view_id
"""
_WRITE_KEYS = """
INSERT INTO identity_block_keys (key, source, view_id)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) ON CONFLICT DO NOTHING
"""
_WRITE_REVIEWS = """
INSERT INTO identity_review_tasks (task_id, source, view_id, provisional_enterprise_id,
                                   candidate_enterprise_id, score, breakdown)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                     $6::float8[], $7::jsonb[])
ON CONFLICT (task_id) DO NOTHING
"""


class IdentityStore(Protocol):
    async def resolve_batch(self, requests: Sequence[IdentityRequest]) -> list[Resolution]:
        """Each request's resolution, in order, decided and recorded durably."""


class _Writes:
    """What a batch decided, as columns for unnest."""

    def __init__(self) -> None:
        # Keyed, so a key decided twice in one batch is written once (an upsert may not touch
        # a row twice in one statement): the later decision stands.
        self.links: dict[LocalId, tuple[Any, ...]] = {}
        self.views: dict[tuple[str, str], tuple[str, Demographics]] = {}
        self.reviews: dict[str, tuple[Any, ...]] = {}
        self.merges: dict[str, tuple[str, str]] = {}  # absorbed -> (survivor, source)

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


class PostgresIdentityStore:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        thresholds: Thresholds = DEFAULT_THRESHOLDS,
        max_block_size: int = MAX_BLOCK_SIZE,
    ) -> None:
        self.pool = pool
        self.thresholds = thresholds
        self.max_block_size = max_block_size

    async def resolve_batch(self, requests: Sequence[IdentityRequest]) -> list[Resolution]:
        if not requests:
            return []
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", IDENTITY_LOCK)
            crosswalk = await self._crosswalk(conn, requests)
            index, authoritative = await self._candidates(conn, requests)
            writes = _Writes()
            resolutions = []
            for request in requests:
                resolution = resolve(
                    request,
                    crosswalk=crosswalk,
                    index=index,
                    thresholds=self.thresholds,
                    authoritative_ids=authoritative,
                )
                resolutions.append(resolution)
                if request.authoritative_id:
                    authoritative.add(resolution.enterprise_id)
                self._remember(request, resolution, crosswalk, index, writes)
            await self._write(conn, writes)
        return resolutions

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
    ) -> tuple[InMemoryIdentityIndex, set[str]]:
        """The known patients sharing a blocking key with the batch, and which of them the MPI
        already names."""
        wanted = sorted(
            {
                key
                for request in requests
                if request.demographics is not None
                for key in blocking_keys(request.demographics)
            }
        )
        views: dict[str, list[Demographics]] = {}
        if wanted:
            for row in await conn.fetch(_CANDIDATES, wanted, self.max_block_size):
                demographics = Demographics.from_stored(row["demographics"])
                views.setdefault(row["enterprise_id"], []).append(demographics)
        persons = (
            KnownPerson(enterprise_id=eid, demographics=tuple(v)) for eid, v in views.items()
        )
        index = InMemoryIdentityIndex(persons, max_block_size=self.max_block_size)
        rows = await conn.fetch(_AUTHORITATIVE, AUTHORITATIVE_SOURCE, list(views)) if views else []
        return index, {row["enterprise_id"] for row in rows}

    def _remember(
        self,
        request: IdentityRequest,
        resolution: Resolution,
        crosswalk: dict[LocalId, str],
        index: InMemoryIdentityIndex,
        writes: _Writes,
    ) -> None:
        """Apply the decision to the batch's snapshot, and note what to write."""
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
            await conn.execute(_WRITE_LINKS, *_columns(writes.links.values()))
        if writes.views:
            sources = [key[0] for key in writes.views]
            view_ids = [key[1] for key in writes.views]
            eids = [value[0] for value in writes.views.values()]
            documents = [value[1].model_dump_json() for value in writes.views.values()]
            await conn.execute(_WRITE_VIEWS, sources, view_ids, eids, documents)
            await conn.execute(_DROP_KEYS, sources, view_ids)
            rows = [
                (key, source, view_id)
                for (source, view_id), (_, demographics) in writes.views.items()
                for key in sorted(blocking_keys(demographics))
            ]
            if rows:
                await conn.execute(_WRITE_KEYS, *_columns(rows))
        if writes.reviews:
            await conn.execute(_WRITE_REVIEWS, *_columns(writes.reviews.values()))
        if writes.merges:
            absorbed = list(writes.merges)
            survivors = [writes.merges[a][0] for a in absorbed]
            sources = [writes.merges[a][1] for a in absorbed]
            await conn.execute(_MERGE, absorbed, survivors, sources)


def _columns(rows: Iterable[tuple[Any, ...]]) -> list[list[Any]]:
    """Rows as the columns unnest() takes."""
    return [list(column) for column in zip(*rows, strict=True)]
