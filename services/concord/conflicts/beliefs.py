"""A source's belief about a concept, from all of its current records of it, pure.

One source may hold several records of one concept: a condition that recurs keeps a resolved
episode and an active one, a medication is ordered, stopped and ordered again, a claim line
per visit names the same diagnosis. Each record is an assertion of its own (a newer version of
the same record replaces it); what the source believes is derived from all of them, whatever
their arrival order or ids:

- a condition or an allergy is active if any current record says so (the latest such record
  speaks for the source), else the latest record does;
- anything else (a medication's status and dose, a result, a demographic) is its latest
  record's, by event time;
- a record entered in error, deleted or voided withdraws itself only: the source's other
  records still stand, and only when every record is withdrawn is the belief a withdrawal.

Records are told apart by the source record they came from (a FHIR resource, a claim); an HL7
v2 message is a snapshot of the patient rather than a record of its own, so a source's messages
count as one record whose latest version stands, as before. Tombstones Concord writes itself
(a merge's, an unmerge's) replace all of a source's records.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Protocol

from concord.conflicts.compare import ACTIVE, SYNTHETIC_PREFIXES, status_position
from concord.events.models import Assertion, AttributeClass, Provenance
from concord.topics import RAW_HL7V2

# Classes whose attributes a source may hold several records of. Results and demographics are
# one value at a time: their latest record is the belief, and only it is kept.
RECORD_CLASSES: frozenset[AttributeClass] = frozenset({"CONDITION", "ALLERGY", "MEDICATION"})
# Active if any current record is: an episode that recurs, an allergy recorded twice.
ANY_ACTIVE_CLASSES: frozenset[AttributeClass] = frozenset({"CONDITION", "ALLERGY"})
WITHDRAWN_STATUSES = frozenset({"ENTERED_IN_ERROR", "DELETED"})
# The record key of a tombstone: it stands for the whole source.
TOMBSTONE_KEY = ""


class Said(Protocol):
    """What precedence reads of a fact or an assertion."""

    @property
    def provenance(self) -> Provenance: ...
    @property
    def fact_id(self) -> str: ...
    @property
    def value(self) -> str | None: ...
    @property
    def status(self) -> str: ...


def precedence(said: Said) -> tuple[datetime, int, str, str, str]:
    """Which of two assertions is newer: the later event time; on a tie, the higher numeric
    version (a status change that carries no newer time of its own), then the content (the
    status, the value), and only then the fact id. A total order, so the outcome never depends
    on arrival; and two sources holding the same records pick the same one among records of one
    time (several symptoms observed at one visit), whatever their ids."""
    provenance = said.provenance
    version = provenance.source_record_version
    number = int(version) if version is not None and version.isdigit() else -1
    return provenance.event_time, number, said.status, said.value or "", said.fact_id


def is_tombstone(assertion: Assertion) -> bool:
    return assertion.fact_id.startswith(SYNTHETIC_PREFIXES)


def record_key(assertion: Assertion) -> str:
    """Which of its source's records an assertion comes from."""
    if is_tombstone(assertion) or assertion.provenance.raw_topic == RAW_HL7V2:
        return TOMBSTONE_KEY
    return assertion.provenance.source_record_id


def believed(records: Mapping[str, Assertion], attribute_class: AttributeClass) -> Assertion | None:
    """The assertion that speaks for the source, from its current records."""
    if not records:
        return None
    standing = [a for a in records.values() if a.status not in WITHDRAWN_STATUSES]
    if not standing:
        return max(records.values(), key=precedence)  # every record withdrawn: so is the belief
    if attribute_class in ANY_ACTIVE_CLASSES:
        active = [a for a in standing if status_position(a.value) == ACTIVE]
        if active:
            return max(active, key=precedence)
    return max(standing, key=precedence)


def keeps_records(attribute_class: AttributeClass) -> bool:
    return attribute_class in RECORD_CLASSES
