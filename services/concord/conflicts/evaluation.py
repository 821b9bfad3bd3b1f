"""Conflict detection scored against a generated set's answer key, pure.

The answer key's `scenarios.conflicts` section lists the cohort: planted persons, each with
what the stack must raise (`expect`), and controls, which must raise nothing. The stack's
conflict events are tied to persons through their assertions' provenance (source and record,
which the key's `records` list maps to persons), never through enterprise ids, so the
evaluation does not trust the identity decisions it depends on.

- A **true positive** is an expected conflict or stale record open at the end.
- A **false negative** is an expected one not open at the end (never raised, or resolved).
- A **false positive** is a record open at the end that no plant expects; a record whose
  assertions belong to two persons is one too (an identity error reached detection), and so
  is a second record for what one expected record covers.
- A **transient** record was raised, expected by no plant, and resolved again before the end:
  the order in which a backlog's sources arrive can make one source look behind another for a
  moment. Counted apart: each one still fired (and resolved) an alert.

Stale records count once their time (`due`) has passed before the run began; those falling
due while it ran are left out of the scores and counted apart. Records about persons outside
the cohort (demographic variations, within-source duplicates) are counted by class, not
scored: the key cannot tell which of them the identity decisions make real.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from concord.conflicts.rules import hash_of
from concord.events.models import ConflictEvent
from concord.generate.planted import CONTROL, PlantedConflicts

SECTION = PlantedConflicts.name  # the answer key's scenarios.<SECTION>
STALE = "STALE"
# A record found but expected by no plant is counted against the kind its attribute suggests.
_KIND_BY_PREFIX: tuple[tuple[str, str], ...] = (
    ("Patient.birthDate", "birth_date"),
    ("Patient.gender", "sex"),
    ("Patient.name", "name"),
    ("AllergyIntolerance/", "allergy_status"),
    ("Oncology.metastatic", "oncology_metastatic"),
    ("Oncology.stageGroup", "oncology_stage"),
    ("Oncology.biomarker/", "oncology_biomarker"),
    ("Oncology.primarySite", "oncology_primary"),
)

Key = tuple[str, str, str | None]  # (person, attribute, stale source or None)


@dataclass
class KindScore:
    expected: int = 0
    found: int = 0  # expected and open at the end
    false_positives: int = 0
    transient: int = 0

    @property
    def precision(self) -> float:
        raised = self.found + self.false_positives
        return self.found / raised if raised else 1.0

    @property
    def recall(self) -> float:
        return self.found / self.expected if self.expected else 1.0


@dataclass
class ConflictScores:
    kinds: dict[str, KindScore] = field(default_factory=dict)
    missed: list[dict[str, Any]] = field(default_factory=list)
    spurious: list[dict[str, Any]] = field(default_factory=list)
    passing: list[dict[str, Any]] = field(default_factory=list)  # the transient ones
    not_yet_due: int = 0
    due_during_run: int = 0
    outside_cohort: Counter[str] = field(default_factory=Counter)
    other_records: int = 0  # events about records not in this set

    def kind(self, name: str) -> KindScore:
        return self.kinds.setdefault(name, KindScore())

    @property
    def perfect(self) -> bool:
        return all(k.precision == 1.0 and k.recall == 1.0 for k in self.kinds.values())

    def report(self) -> str:
        width = max([22, *(len(name) + 2 for name in self.kinds)])
        lines = [
            f"{'kind':<{width}}{'expected':>9}{'found':>7}{'false+':>7}{'transient':>10}"
            f"{'precision':>11}{'recall':>8}"
        ]
        total = KindScore(
            sum(k.expected for k in self.kinds.values()),
            sum(k.found for k in self.kinds.values()),
            sum(k.false_positives for k in self.kinds.values()),
            sum(k.transient for k in self.kinds.values()),
        )
        for name, score in [*sorted(self.kinds.items()), ("all", total)]:
            lines.append(
                f"{name:<{width}}{score.expected:>9}{score.found:>7}{score.false_positives:>7}"
                f"{score.transient:>10}{score.precision:>11.2f}{score.recall:>8.2f}"
            )
        if self.not_yet_due or self.due_during_run:
            lines.append(
                f"stale records not scored: {self.not_yet_due} not yet due, "
                f"{self.due_during_run} fell due during the run"
            )
        if self.outside_cohort:
            listed = ", ".join(f"{c} {n}" for c, n in sorted(self.outside_cohort.items()))
            lines.append(f"raised outside the cohort (not scored): {listed}")
        for item in self.missed[:10]:
            lines.append(f"missed: {item}")
        for item in self.spurious[:10]:
            lines.append(f"false positive: {item}")
        for item in self.passing[:10]:
            lines.append(f"transient: {item}")
        return "\n".join(lines)


@dataclass(frozen=True)
class Record:
    """One conflict or stale record as the topic tells it."""

    latest: ConflictEvent
    raised: ConflictEvent | None  # its first OPENED or STALE event, if any

    @property
    def still_open(self) -> bool:
        return self.latest.kind in ("OPENED", "UPDATED", STALE)


def records(events: Iterable[ConflictEvent]) -> list[Record]:
    """Per conflict id: its latest revision and the event that first raised it."""
    latest: dict[str, ConflictEvent] = {}
    raised: dict[str, ConflictEvent] = {}
    for event in events:
        if event.kind in ("OPENED", STALE):
            first = raised.get(event.conflict_id)
            if first is None or event.revision < first.revision:
                raised[event.conflict_id] = event
        known = latest.get(event.conflict_id)
        if known is None or event.revision >= known.revision:
            latest[event.conflict_id] = event
    return [Record(event, raised.get(cid)) for cid, event in latest.items()]


def stale_source(event: ConflictEvent) -> str | None:
    """The source whose assertion a stale record is about: the event says so (ConflictEvent
    v4); an older event's id is derived from it."""
    if event.stale_source is not None:
        return event.stale_source
    for assertion in event.assertions:
        parts = (event.patient_id, event.attribute, "stale", assertion.source_system)
        if hash_of(*parts, assertion.fact_id) == event.conflict_id:
            return assertion.source_system
    return None


def score(
    answer_key: Mapping[str, Any],
    events: Iterable[ConflictEvent],
    *,
    started: datetime,
    finished: datetime,
) -> ConflictScores:
    """Scores the conflict events (every one read from concord.conflicts) against the key.
    `started`/`finished`: when the set was first published and when the events were read."""
    scores = ConflictScores()
    persons = {(r["source"], r["record_ref"]): r["person_id"] for r in answer_key["records"]}
    section = answer_key.get("scenarios", {}).get(SECTION, [])
    cohort = {entry["person_id"] for entry in section}
    expected, unscored = _expected(section, scores, started=started, finished=finished)
    found: set[Key] = set()
    for record in records(events):
        seen = [record.latest, *([record.raised] if record.raised is not None else [])]
        owners = {
            persons[ref]
            for event in seen
            for a in event.assertions
            if (ref := (a.provenance.source_system, a.provenance.source_record_id)) in persons
        }
        if not owners:
            scores.other_records += 1
        elif not owners & cohort:
            if record.raised is not None:
                scores.outside_cohort[record.latest.attribute_class] += 1
        else:
            _judge(record, owners, expected, unscored, found, scores)
    for key, kind in sorted(expected.items(), key=lambda item: (item[1], item[0][0])):
        if key not in found:
            person, attribute, source = key
            scores.missed.append(
                {"kind": kind, "person": person, "attribute": attribute, "stale_source": source}
            )
    return scores


def _expected(
    section: Iterable[Mapping[str, Any]],
    scores: ConflictScores,
    *,
    started: datetime,
    finished: datetime,
) -> tuple[dict[Key, str], set[Key]]:
    """What the plants expect, by (person, attribute, stale source), with each one's kind;
    and the stale records that fell due during the run, which count neither way."""
    expected: dict[Key, str] = {}
    unscored: set[Key] = set()
    for entry in section:
        if entry["kind"] != CONTROL:
            scores.kind(entry["kind"])
        for item in entry["expect"]:
            key = (entry["person_id"], item["attribute"], item.get("stale_source"))
            due = item.get("due")
            if due is not None and datetime.fromisoformat(due) > started:
                if datetime.fromisoformat(due) <= finished:
                    scores.due_during_run += 1
                    unscored.add(key)
                else:
                    scores.not_yet_due += 1
                continue
            expected[key] = item["kind"]
            scores.kind(item["kind"]).expected += 1
    return expected, unscored


def _judge(
    record: Record,
    owners: set[str],
    expected: Mapping[Key, str],
    unscored: set[Key],
    found: set[Key],
    scores: ConflictScores,
) -> None:
    """One cohort record: found, a false positive, transient, or none of these (resolved and
    never raised, or an expected one resolved: missed)."""
    event = record.latest
    raised = record.raised
    source = stale_source(raised) if raised is not None and raised.kind == STALE else None
    (person,) = owners if len(owners) == 1 else (None,)
    key = (person, event.attribute, source) if person is not None else None
    if key is not None and key in unscored:
        return
    if key is not None and key in expected and key not in found:
        if record.still_open:
            found.add(key)
            scores.kind(expected[key]).found += 1
        return
    if raised is None:
        return
    kind = _kind_of(event, source)
    item = {
        "kind": kind,
        "persons": sorted(owners),
        "attribute": event.attribute,
        "stale_source": source,
    }
    if record.still_open:
        scores.kind(kind).false_positives += 1
        scores.spurious.append(item)
    else:
        scores.kind(kind).transient += 1
        scores.passing.append(item)


def _kind_of(event: ConflictEvent, source: str | None) -> str:
    if source is not None:
        return "stale_reconfirm" if event.attribute_class == "MEDICATION" else "stale_max_age"
    for prefix, kind in _KIND_BY_PREFIX:
        if event.attribute.startswith(prefix):
            return kind
    if event.attribute.startswith("Medication/"):
        return "medication_dose" if event.attribute.endswith("/dose") else "medication_status"
    if event.attribute.startswith("Condition/"):
        return "oncology_stage" if event.attribute.endswith("/stage") else "condition_status"
    if event.attribute.startswith("Observation/"):
        return "oncology_biomarker" if event.attribute_class == "ONCOLOGY" else "lab_value"
    return "other"
