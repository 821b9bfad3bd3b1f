"""Identity matching scored against a generated population's answer key, in process.

The generated files go through the same pure cores the workers run — ingestion, then
`read_record` and identity resolution against an in-memory crosswalk and index (the
PostgreSQL store's decisions are the same core's) — and each patient record (`source|MRN`)
is given the enterprise id its Patient or ADT record was resolved to. Scores are pairwise
over patient records: a predicted pair is two records given one enterprise id; a true pair,
two records of one person (the answer key's `duplicate_pairs`).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import combinations
from typing import Any

from concord.deadletters import Rejection
from concord.events.models import IngestedRecord
from concord.events.raw import RawEvent
from concord.hl7v2 import er7
from concord.ingestion.claims import ingest_claim
from concord.ingestion.fhir import ingest_fhir
from concord.ingestion.hl7v2 import ingest_hl7v2
from concord.normalization.identity.index import InMemoryIdentityIndex
from concord.normalization.identity.matcher import DEFAULT_THRESHOLDS
from concord.normalization.identity.resolution import How, LocalId, apply, resolve
from concord.normalization.identity.scoring import Thresholds
from concord.normalization.records import read_record
from concord.normalization.terminology import Terminology

MAX_PAYLOAD_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class IdentityScores:
    true_pairs: int
    predicted_pairs: int
    correct_pairs: int
    false_merges: int  # predicted pairs of two different persons
    hard_negatives_merged: int
    reviews: int  # records sent to a reviewer rather than linked or split
    decisions: Mapping[str, int]

    @property
    def precision(self) -> float:
        return self.correct_pairs / self.predicted_pairs if self.predicted_pairs else 1.0

    @property
    def recall(self) -> float:
        return self.correct_pairs / self.true_pairs if self.true_pairs else 1.0

    @property
    def f1(self) -> float:
        total = self.precision + self.recall
        return 2 * self.precision * self.recall / total if total else 0.0

    def report(self) -> str:
        return (
            f"precision {self.precision:.4f}, recall {self.recall:.4f}, F1 {self.f1:.4f} "
            f"({self.correct_pairs} of {self.true_pairs} true pairs linked, "
            f"{self.predicted_pairs} predicted); false merges {self.false_merges}, "
            f"hard negatives merged {self.hard_negatives_merged}; {self.reviews} to review; "
            f"decisions {dict(sorted(self.decisions.items()))}"
        )


def ingested_records(
    files: Mapping[str, bytes], sources: Sequence[Any]
) -> Iterator[IngestedRecord]:
    """Each source's file through the ingestion core, in file order."""
    received = datetime(2026, 1, 1, tzinfo=UTC)
    for source in sources:
        data = files[source.file_name]
        if source.format in ("fhir", "claims"):  # one JSON object a line
            values = [line for line in data.splitlines() if line.strip()]
            ingest = ingest_fhir if source.format == "fhir" else ingest_claim
            topic = "ehr.raw.fhir" if source.format == "fhir" else "ehr.raw.claims"
        else:
            values = er7.split_messages(data)
            ingest = ingest_hl7v2
            topic = "ehr.raw.hl7v2"
        for offset, value in enumerate(values):
            raw = RawEvent(topic, 0, offset, None, value, (("source", source.name.encode()),),
                           received)  # fmt: skip
            outcome = ingest(raw, max_payload_bytes=MAX_PAYLOAD_BYTES)
            if isinstance(outcome, Rejection):
                raise ValueError(f"a generated record was rejected: {outcome.reason_code}")
            yield from outcome


def evaluate(
    files: Mapping[str, bytes],
    answer_key: Mapping[str, Any],
    sources: Sequence[Any],
    *,
    systems: Sequence[str],
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> IdentityScores:
    terminology = Terminology.load()
    patient_of = {(r["source"], r["record_ref"]): r["patient_key"] for r in answer_key["records"]}
    crosswalk: dict[LocalId, str] = {}
    index = InMemoryIdentityIndex()
    assigned: dict[str, str] = {}
    authoritative: set[str] = set()
    decisions: Counter[str] = Counter()
    for record in ingested_records(files, sources):
        read = read_record(record, terminology, systems)
        if read is None or read.request.demographics is None:
            continue  # clinical records follow their patient; only demographics place one
        resolution = resolve(
            read.request,
            crosswalk=crosswalk,
            index=index,
            thresholds=thresholds,
            authoritative_ids=authoritative,
        )
        if read.request.authoritative_id:
            authoritative.add(resolution.enterprise_id)
        apply(read.request, resolution, crosswalk, index)
        for absorbed in resolution.absorbed:  # a merge: what named the absorbed id moves
            for patient, eid in assigned.items():
                if eid == absorbed:
                    assigned[patient] = resolution.enterprise_id
        decisions[resolution.how.value] += 1
        patient = patient_of[(record.provenance.source_system, record.provenance.source_record_id)]
        assigned.setdefault(patient, resolution.enterprise_id)
    return _score(assigned, answer_key, decisions)


def _score(
    assigned: Mapping[str, str], answer_key: Mapping[str, Any], decisions: Counter[str]
) -> IdentityScores:
    person = {p["patient_key"]: p["person_id"] for p in answer_key["patients"]}
    true_pairs = {frozenset((p["a"], p["b"])) for p in answer_key["duplicate_pairs"]}
    by_id: dict[str, list[str]] = defaultdict(list)
    for patient, eid in assigned.items():
        by_id[eid].append(patient)
    predicted = {
        frozenset(pair) for group in by_id.values() for pair in combinations(sorted(group), 2)
    }
    hard = {frozenset((p["a"], p["b"])) for p in answer_key["hard_negative_pairs"]}
    false_merges = sum(1 for a, b in map(tuple, predicted) if person[a] != person[b])
    return IdentityScores(
        true_pairs=len(true_pairs),
        predicted_pairs=len(predicted),
        correct_pairs=len(predicted & true_pairs),
        false_merges=false_merges,
        hard_negatives_merged=len(predicted & hard),
        reviews=decisions[How.REVIEW.value],
        decisions=dict(decisions),
    )
