"""The audit trail's pure core: what a row records, how rows are chained, and how a trail is
verified against itself and against the anchors published of its head.

Every PHI read and every state change of the review service (and the decisions the `concord`
command line makes) is one `AuditRecord`: who (actor, role), why (purpose of use), what
(action, one of ACTIONS) and on what (object type and id), with a small `detail` of ids and
codes. Never PHI: no names, birth dates, values or free text; `detail` takes short strings,
integers, booleans and nulls only.

Stored, a record becomes an `AuditEntry`: its place in the trail (`seq`, 1, 2, 3, ... without
gaps), its time, the hash of the entry before it (`prev_hash`; the first entry's is the trail's
genesis hash, derived from the trail's id) and its own hash, SHA-256 over the previous hash and
a canonical JSON of every stored field, seq included. Editing any field, deleting, inserting or
moving a row breaks the chain at that row; `verify` finds the first row where it breaks and
says what is wrong there. Rewriting the whole chain from some row on, hashes recomputed, or
cutting off its tail, is caught by the anchors: the head (seq, hash) published from time to
time outside the database (`Anchor`), which the trail must still contain.

No I/O here: `concord.review.audit_store` stores and reads entries (PostgreSQL) and publishes
anchors (Kafka); `concord audit verify` feeds what it reads to `ChainVerifier`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, field_validator

# --- what is recorded ---------------------------------------------------------------------------

# Every action the trail knows. The review service's reads of PHI and its state changes, then
# the decisions of the command line (role "cli").
ACTIONS: frozenset[str] = frozenset(
    {
        # alerts (object_type "alert")
        "alert.list",
        "alert.read",
        "alert.acknowledge",
        "alert.assign",
        "alert.comment",
        "alert.resolve",
        "alert.dismiss",
        # identity reviews and merges (object_type "identity_review" or "patient")
        "identity.list",
        "identity.read",
        "identity.link",
        "identity.keep_apart",
        "identity.unmerge",
        # text review tasks: findings read from clinical text (object_type "text_review")
        "text.read",
        "text.accept",
        "text.reject",
        # the audit trail itself, read by an auditor (object_type "audit_log")
        "audit.read",
        # the command line: `concord alerts resolve`, `concord identity unmerge | link |
        # keep-apart`
        "cli.alert.resolve",
        "cli.identity.unmerge",
        "cli.identity.link",
        "cli.identity.keep_apart",
        # the admin role: refusing a principal, and alert subscriptions (object_type
        # "principal", "subscription")
        "admin.principal.disable",
        "admin.principal.enable",
        "admin.subscription.put",
        "admin.subscription.delete",
    }
)
CLI_ROLE = "cli"

_MAX_TEXT = 256
_MAX_DETAIL_KEYS = 32
# A purpose of use is a code (HL7 PurposeOfUse: HOPERAT, TREAT, ...), never free text.
_PURPOSE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_DETAIL_KEY = re.compile(r"[a-z][a-z0-9_]{0,63}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

DetailValue = str | int | bool | None


def _plain_text(value: str) -> str:
    """Text a row may hold: not empty, short, no control characters (PostgreSQL refuses NUL;
    the others would let a value forge a line of `concord audit list`)."""
    if not value or len(value) > _MAX_TEXT or _CONTROL.search(value):
        raise ValueError(f"must be 1 to {_MAX_TEXT} characters, no control characters")
    return value


PlainText = Annotated[str, AfterValidator(_plain_text)]


class AuditRecord(BaseModel):
    """What happened, as the caller of `append` tells it. No PHI anywhere in it."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    actor: PlainText  # the authenticated caller (the review service: Principal.key)
    role: PlainText  # their role (reviewer, clinician, auditor, ...; "cli" for the CLI)
    purpose: str | None = None  # purpose of use code, required by the service for PHI reads
    action: str  # one of ACTIONS
    object_type: PlainText  # "alert", "identity_review", "text_review", "patient", "audit_log"
    object_id: PlainText  # the object's id (alert id, task id, enterprise id)
    detail: dict[str, DetailValue] = Field(default_factory=dict)  # ids and codes only

    @field_validator("purpose")
    @classmethod
    def _purpose_is_a_code(cls, value: str | None) -> str | None:
        if value is not None and not _PURPOSE.fullmatch(value):
            raise ValueError("a purpose of use code (letters, digits, _.:-), not free text")
        return value

    @field_validator("action")
    @classmethod
    def _known_action(cls, value: str) -> str:
        if value not in ACTIONS:
            raise ValueError("not an audited action (concord.review.audit.ACTIONS)")
        return value

    @field_validator("detail")
    @classmethod
    def _small_codes(cls, value: dict[str, DetailValue]) -> dict[str, DetailValue]:
        if len(value) > _MAX_DETAIL_KEYS:
            raise ValueError(f"at most {_MAX_DETAIL_KEYS} keys")
        for key, item in value.items():
            if not _DETAIL_KEY.fullmatch(key):
                raise ValueError("keys are snake_case names")
            if isinstance(item, str):
                _plain_text(item)
        return value


class AuditEntry(AuditRecord):
    """A stored row: the record, its place in the chain, its time and its hashes."""

    seq: int = Field(ge=1)
    at: AwareDatetime
    prev_hash: str
    hash: str

    @property
    def record(self) -> AuditRecord:
        return AuditRecord(**self.model_dump(include=set(AuditRecord.model_fields)))


class Anchor(BaseModel):
    """The head of a trail as it was at `at`, published outside the database."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    trail_id: str
    seq: int = Field(ge=1)
    hash: str
    at: AwareDatetime

    def encode(self) -> bytes:
        """The anchor topic's message value (its key is the trail id)."""
        return canonical_json(self._fields()).encode()

    @classmethod
    def decode(cls, value: bytes) -> Anchor:
        return cls.model_validate_json(value)

    def _fields(self) -> dict[str, Any]:
        return {"trail_id": self.trail_id, "seq": self.seq, "hash": self.hash, "at": _time(self.at)}


# --- the chain ----------------------------------------------------------------------------------


def genesis_hash(trail_id: str) -> str:
    """The first entry's prev_hash. Derived from the trail's id, so the id is bound into the
    chain (changing it breaks seq 1) and an anchor of another trail never matches this one."""
    return hashlib.sha256(f"concord-audit-genesis\x1f{trail_id}".encode()).hexdigest()


def canonical_json(value: Mapping[str, Any]) -> str:
    """Sorted keys, no spaces, UTF-8 as is: one text per value."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _time(at: datetime) -> str:
    # PostgreSQL's timestamptz keeps microseconds and no zone: UTC, to the microsecond.
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def stored_fields(entry: AuditRecord, *, seq: int, at: datetime, prev_hash: str) -> dict[str, Any]:
    """Every stored field but the hash, as the hash covers them."""
    return {
        "seq": seq,
        "at": _time(at),
        "actor": entry.actor,
        "role": entry.role,
        "purpose": entry.purpose,
        "action": entry.action,
        "object_type": entry.object_type,
        "object_id": entry.object_id,
        "detail": entry.detail,
        "prev_hash": prev_hash,
    }


def entry_hash(record: AuditRecord, *, seq: int, at: datetime, prev_hash: str) -> str:
    """SHA-256 (hex) of the previous hash, a newline, and the canonical JSON of the fields."""
    text = canonical_json(stored_fields(record, seq=seq, at=at, prev_hash=prev_hash))
    return hashlib.sha256(f"{prev_hash}\n{text}".encode()).hexdigest()


def chain(record: AuditRecord, *, seq: int, at: datetime, prev_hash: str) -> AuditEntry:
    """The entry `record` becomes at `seq`, after the entry whose hash is `prev_hash`."""
    at = at.astimezone(UTC)
    return AuditEntry(
        **record.model_dump(),
        seq=seq,
        at=at,
        prev_hash=prev_hash,
        hash=entry_hash(record, seq=seq, at=at, prev_hash=prev_hash),
    )


def build_trail(trail_id: str, records: Iterable[tuple[AuditRecord, datetime]]) -> list[AuditEntry]:
    """Entries 1..n of a new trail (tests, and what `append` does row by row)."""
    entries: list[AuditEntry] = []
    prev = genesis_hash(trail_id)
    for seq, (record, at) in enumerate(records, start=1):
        entries.append(chain(record, seq=seq, at=at, prev_hash=prev))
        prev = entries[-1].hash
    return entries


def _hashes_as(entry: AuditEntry, seq: int) -> bool:
    """Whether the entry's content, taken to be at `seq`, gives its stored hash."""
    return entry_hash(entry, seq=seq, at=entry.at, prev_hash=entry.prev_hash) == entry.hash


# --- verification -------------------------------------------------------------------------------


class Fault(StrEnum):
    EDITED = "edited"
    DELETED = "deleted"
    INSERTED = "inserted"
    REORDERED = "reordered"
    REWRITTEN = "rewritten"  # consistent, but not what an anchor says it was
    TRUNCATED = "truncated"  # rows an anchor names are gone


@dataclass(frozen=True)
class Break:
    """The first row at which the trail is not what was written: its seq, and what is wrong."""

    seq: int
    fault: Fault
    explanation: str

    def line(self) -> str:
        return f"audit trail broken at seq={self.seq}: {self.fault} ({self.explanation})"


@dataclass(frozen=True)
class Verdict:
    rows: int  # rows read (up to the break and the rows looked at after it)
    head_seq: int | None  # the last row read
    latest_anchor: Anchor | None  # the anchor with the highest seq, of this trail
    broken: Break | None

    @property
    def intact(self) -> bool:
        return self.broken is None

    def line(self) -> str:
        if self.broken is not None:
            return self.broken.line()
        anchor = "none" if self.latest_anchor is None else str(self.latest_anchor.seq)
        head = "none" if self.head_seq is None else str(self.head_seq)
        return f"audit trail intact: {self.rows} rows, head seq={head}, latest anchor seq={anchor}"


# How many rows after the first anomaly are read to tell an insertion from a reordering or a
# deletion whose later rows were renumbered, and how far from its place a moved row is looked
# for. Beyond them the fault is still found at the same row, named less precisely.
LOOKAHEAD = 256
SEARCH_RADIUS = 1024


def _anchor_time(anchor: Anchor) -> str:
    return f"{anchor.at.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z"


@dataclass
class ChainVerifier:
    """Streams a trail's entries in seq order (`feed`, a page at a time) and then judges it
    (`finish`). Memory holds the anchors, the hashes of the last SEARCH_RADIUS good rows and,
    after a break, up to LOOKAHEAD rows."""

    trail_id: str
    anchors: Sequence[Anchor] = ()
    rows: int = field(default=0, init=False)
    _last_seq: int = field(default=0, init=False)
    _last_hash: str = field(default="", init=False)
    _recent: dict[int, str] = field(default_factory=dict, init=False)
    _anchored: dict[int, Anchor] = field(default_factory=dict, init=False)
    _matched_anchor: int = field(default=0, init=False)  # highest anchored seq that matched
    _window: list[AuditEntry] = field(default_factory=list, init=False)
    _broken: Break | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self._last_hash = genesis_hash(self.trail_id)
        for anchor in self.anchors:
            if anchor.trail_id != self.trail_id:
                continue
            known = self._anchored.get(anchor.seq)
            if known is not None and known.hash != anchor.hash:
                # Two anchors disagree about one row: keep the one published first.
                anchor = min(known, anchor, key=lambda a: a.at)
            self._anchored[anchor.seq] = anchor

    @property
    def settled(self) -> bool:
        """True once the verdict cannot change: the caller may stop reading."""
        return self._broken is not None or len(self._window) > LOOKAHEAD

    def feed(self, entries: Iterable[AuditEntry]) -> bool:
        """Take the next entries (in seq order); return `settled`."""
        for entry in entries:
            if self.settled:
                break
            self.rows += 1
            if self._window:
                self._window.append(entry)
            elif (
                entry.seq == self._last_seq + 1
                and entry.prev_hash == self._last_hash
                and _hashes_as(entry, entry.seq)
            ):
                self._good(entry)
            else:
                self._window.append(entry)
        return self.settled

    def _good(self, entry: AuditEntry) -> None:
        anchor = self._anchored.get(entry.seq)
        if anchor is not None and anchor.hash != entry.hash:
            since = (
                f"after seq={self._matched_anchor}" if self._matched_anchor else "from the start"
            )
            self._broken = Break(
                entry.seq,
                Fault.REWRITTEN,
                f"its hash is not the one anchored at {_anchor_time(anchor)}: the chain was "
                f"recomputed {since}",
            )
            return
        if anchor is not None:
            self._matched_anchor = entry.seq
        self._last_seq, self._last_hash = entry.seq, entry.hash
        self._recent[entry.seq] = entry.hash
        self._recent.pop(entry.seq - SEARCH_RADIUS, None)

    def finish(self) -> Verdict:
        broken = self._broken
        if broken is None and self._window:
            broken = self._diagnose()
        latest = max(self._anchored.values(), key=lambda a: a.seq, default=None)
        if broken is None and latest is not None and latest.seq > self._last_seq:
            ends = f"seq={self._last_seq}" if self._last_seq else "no row"
            broken = Break(
                self._last_seq + 1,
                Fault.TRUNCATED,
                f"the anchor of {_anchor_time(latest)} names seq={latest.seq}, "
                f"the trail ends at {ends}",
            )
        head = self._window[-1].seq if self._window else (self._last_seq or None)
        return Verdict(self.rows, head, latest, broken)

    def _diagnose(self) -> Break:
        """Name the first row at which the chain breaks. The last good row is `p` (0 before
        the first, its hash then the genesis hash); the window starts at the first row after
        it that does not follow it, and holds up to LOOKAHEAD rows after that one."""
        p, hp = self._last_seq, self._last_hash
        first, rest = self._window[0], self._window[1:]
        want = p + 1
        if first.seq <= p:
            return Break(first.seq, Fault.REORDERED, f"it comes after seq={p}: out of seq order")
        if first.seq > want:
            missing = (
                f"seq={want} is" if first.seq == want + 1 else f"seq={want}..{first.seq - 1} are"
            )
            return Break(want, Fault.DELETED, f"{missing} missing: seq={first.seq} follows seq={p}")
        # first.seq == want: it does not link to the row before it, or is not what was written.
        if _hashes_as(first, want):
            # The row as written, linking to another hash than the previous row's: the previous
            # row (or, before the first, the trail id) was edited and its hash recomputed.
            if p == 0:
                return Break(want, Fault.EDITED, "its prev_hash is not this trail's genesis hash")
            return Break(
                p,
                Fault.EDITED,
                f"its hash was recomputed: seq={want}, as written, links to another hash",
            )
        # The row written at `want`, if it is further on: it links to the last good row.
        successor = next((e for e in rest if e.prev_hash == hp and _hashes_as(e, want)), None)
        written = self._written_at(first)
        if written is None:
            if successor is None:
                return Break(want, Fault.EDITED, "its hash does not match its content")
            rows = "it is" if successor.seq == want + 1 else f"seq={want}..{successor.seq - 1} are"
            return Break(
                want,
                Fault.INSERTED,
                f"{rows} not part of the chain: seq={successor.seq} links to seq={p}",
            )
        if written < want and self._recent.get(written) == first.hash:
            return Break(want, Fault.INSERTED, f"a copy of the row at seq={written}")
        if successor is not None or self._shift(written - want) is False:
            where = (
                f"; the row written as seq={want} is at seq={successor.seq}" if successor else ""
            )
            return Break(want, Fault.REORDERED, f"it holds the row written as seq={written}{where}")
        if written > want:
            gone = (
                f"the row written as seq={want} is"
                if written == want + 1
                else f"the rows written as seq={want}..{written - 1} are"
            )
            return Break(want, Fault.DELETED, f"{gone} missing; the rows after were renumbered")
        # Rows with recomputed hashes were inserted at `written`, pushing the rest on.
        made = f"seq={written} was" if want == written + 1 else f"seq={written}..{want - 1} were"
        return Break(
            written,
            Fault.INSERTED,
            f"the row written as seq={written} is at seq={want} now: {made} inserted, "
            "hashes recomputed",
        )

    def _written_at(self, entry: AuditEntry) -> int | None:
        """The seq at which the entry's content gives its hash, looked for near its place."""
        for distance in range(1, SEARCH_RADIUS + 1):
            for seq in (entry.seq + distance, entry.seq - distance):
                if seq >= 1 and _hashes_as(entry, seq):
                    return seq
        return None

    def _shift(self, by: int) -> bool | None:
        """Whether every row of the window after the first holds the row written `by` seqs
        later (rows deleted or inserted and the rest renumbered); None with no row to tell."""
        rest = self._window[1:]
        if not rest:
            return None
        return all(_hashes_as(e, e.seq + by) for e in rest)


def verify(trail_id: str, entries: Iterable[AuditEntry], anchors: Sequence[Anchor] = ()) -> Verdict:
    """Judge a whole trail: its entries in seq order (read lazily: reading stops soon after
    the first break) and the anchors published of it."""
    verifier = ChainVerifier(trail_id, anchors)
    for entry in entries:
        if verifier.feed((entry,)):
            break
    return verifier.finish()
