"""The answer key: for every record, whose it is and how it was varied; the pairs of patient
records that are the same person and the look-alike pairs that are not; the scenarios' own
sections; and the counts the summary prints."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from itertools import combinations
from typing import Any

import orjson

from concord.generate.model import Registration, World
from concord.generate.render import RecordInfo
from concord.generate.scenarios import HARD_NEGATIVE_KINDS, Scenario
from concord.generate.variations import DESCRIPTIONS

FORMAT = "concord-generate-answer-key/1"
FILE_NAME = "answer_key.json"
CROSS_SOURCE = "cross-source"
WITHIN_SOURCE = "within-source"

DOC = (
    "Answer key of a set written by `concord generate`. A patient record is one local MRN at "
    "one source (patient_key = '<source>|<MRN>'): a FHIR Patient, or the PID of every HL7 "
    "message naming that MRN. 'records' lists every record in the files with the patient "
    "record it belongs to and its true person_id (record_ref is what ingestion puts in "
    "provenance.source_record_id: 'Patient/<id>', 'ORU^R01/<MSH-10>'). 'variations' lists how "
    "a patient record's demographics differ from the person's true ones (variation_kinds); "
    "none means they are equal, up to how each source formats them. 'duplicate_pairs' are "
    "all pairs of patient records of one person (each should link); 'hard_negative_pairs' "
    "are pairs of different persons built to look alike (none may link). person_id is also "
    "the value of the shared identifier (shared_id_system) on records with shared_id true. "
    "'scenarios' holds each scenario's own section; 'scenarios.conflicts' lists planted "
    "disagreements and stale records (kind, person_id, sources, and expect: what the stack must "
    "raise, by attribute key, with stale_source and due for a stale record) and controls, "
    "which must raise nothing (`concord evaluate` scores against it); 'scenarios.narratives' lists "
    "narrative documents with hard cases of clinical text (source, record_ref, document_id, "
    "kind, expected: the facts the text states about the patient now, traps: mentions that "
    "state none), given only to persons outside that cohort."
)


def build(
    world: World, rendered: dict[str, list[RecordInfo]], scenarios: Sequence[Scenario]
) -> dict[str, Any]:
    config = world.config
    registrations = world.registrations
    counts: Counter[str] = Counter(r.registration.key for rs in rendered.values() for r in rs)
    duplicate_pairs = _duplicate_pairs(registrations)
    hard_negative_pairs = _hard_negative_pairs(world)
    sections = {s.name: s.key_section(world) for s in scenarios}
    key: dict[str, Any] = {
        "format": FORMAT,
        "doc": DOC,
        "config": config.describe(),
        "shared_id_system": config.shared_id_system,
        "sources": [
            {
                "name": s.name,
                "format": s.format,
                "file": s.file_name,
                "mrn_system": s.mrn_system,
                "assigning_authority": s.assigning_authority,
                "zone": s.style.zone,
                "units": s.style.units,
                "condition_system": s.style.condition_system,
            }
            for s in config.sources
        ],
        "variation_kinds": DESCRIPTIONS,
        "hard_negative_kinds": HARD_NEGATIVE_KINDS,
        "persons": [
            {
                "person_id": p.person_id,
                "locale": p.locale,
                "sources": p.sources,
                "related": [{"kind": k, "person_id": other} for k, other in p.related],
                "truth": {
                    "family": p.demographics.family,
                    "given": list(p.demographics.given),
                    "suffix": p.demographics.suffix,
                    "sex": p.demographics.sex,
                    "birth_date": p.demographics.birth_date.isoformat(),
                    "postal_code": p.demographics.address.postal_code
                    if p.demographics.address
                    else None,
                },
            }
            for p in world.persons
        ],
        "patients": [
            {
                "patient_key": r.key,
                "source": r.source.name,
                "mrn": r.mrn,
                "patient_id": r.patient_id if r.source.format == "fhir" else None,
                "person_id": r.person_id,
                "registration": r.number,
                "shared_id": r.shared_id,
                "variations": r.variations,
                "records": counts[r.key],
            }
            for r in _ordered(world)
        ],
        "records": [
            {
                "source": source,
                "resource_type": r.resource_type,
                "record_ref": r.record_ref,
                "record_id": r.record_ref.partition("/")[2],
                "mrn": r.registration.mrn,
                "patient_key": r.registration.key,
                "person_id": r.registration.person_id,
                "variations": r.registration.variations,
            }
            for source, records in rendered.items()
            for r in records
        ],
        "duplicate_pairs": duplicate_pairs,
        "hard_negative_pairs": hard_negative_pairs,
        "scenarios": {name: section for name, section in sections.items() if section is not None},
    }
    key["summary"] = _summary(world, rendered, duplicate_pairs, hard_negative_pairs)
    return key


def _ordered(world: World) -> list[Registration]:
    position = {s.name: i for i, s in enumerate(world.config.sources)}
    return sorted(world.registrations, key=lambda r: (position[r.source.name], r.mrn))


def _duplicate_pairs(registrations: Sequence[Registration]) -> list[dict[str, Any]]:
    by_person: dict[str, list[Registration]] = defaultdict(list)
    for registration in registrations:
        by_person[registration.person_id].append(registration)
    pairs = []
    for person_id in sorted(by_person):
        held = sorted(by_person[person_id], key=lambda r: r.key)
        for a, b in combinations(held, 2):
            pairs.append(
                {
                    "a": a.key,
                    "b": b.key,
                    "person_id": person_id,
                    "scope": WITHIN_SOURCE if a.source == b.source else CROSS_SOURCE,
                    "variations": sorted(set(a.variations) | set(b.variations)),
                }
            )
    return pairs


def _hard_negative_pairs(world: World) -> list[dict[str, Any]]:
    by_person: dict[str, list[Registration]] = defaultdict(list)
    for registration in world.registrations:
        by_person[registration.person_id].append(registration)
    pairs = []
    for person in world.persons:
        for kind, other in person.related:
            if person.person_id > other:
                continue  # each pair once, from the lower person id
            for a in sorted(by_person[person.person_id], key=lambda r: r.key):
                for b in sorted(by_person[other], key=lambda r: r.key):
                    pairs.append(
                        {
                            "a": a.key,
                            "b": b.key,
                            "kind": kind,
                            "persons": [person.person_id, other],
                            "scope": WITHIN_SOURCE if a.source == b.source else CROSS_SOURCE,
                        }
                    )
    return pairs


def _summary(
    world: World,
    rendered: dict[str, list[RecordInfo]],
    duplicate_pairs: list[dict[str, Any]],
    hard_negative_pairs: list[dict[str, Any]],
) -> dict[str, Any]:
    variation_counts: Counter[str] = Counter()
    for registration in world.registrations:
        variation_counts.update(registration.variations)
    held_by: Counter[int] = Counter(len(p.sources) for p in world.persons)
    return {
        "persons": len(world.persons),
        "persons_by_number_of_sources": {str(k): held_by[k] for k in sorted(held_by)},
        "patient_records": {
            s.name: sum(1 for r in world.registrations if r.source == s)
            for s in world.config.sources
        },
        "records": {
            source: dict(sorted(Counter(r.resource_type for r in records).items()))
            for source, records in rendered.items()
        },
        "shared_id": sum(1 for r in world.registrations if r.shared_id),
        "varied_patient_records": sum(1 for r in world.registrations if r.variations),
        "variations": {kind: variation_counts[kind] for kind in DESCRIPTIONS},
        "duplicate_pairs": dict(sorted(Counter(p["scope"] for p in duplicate_pairs).items())),
        "hard_negative_pairs": dict(
            sorted(Counter(p["kind"] for p in hard_negative_pairs).items())
        ),
    }


def summary_text(key: dict[str, Any]) -> str:
    """The README-like account printed at the end of `concord generate`."""
    summary = key["summary"]
    lines = [
        f"{summary['persons']} persons (seed {key['config']['seed']}); held by "
        + ", ".join(
            f"{k} source{'' if k == '1' else 's'}: {n}"
            for k, n in summary["persons_by_number_of_sources"].items()
        ),
        "",
        "source          file                      patient records  records",
    ]
    by_file = {s["name"]: s["file"] for s in key["sources"]}
    for source, count in summary["patient_records"].items():
        records = summary["records"].get(source, {})
        detail = ", ".join(f"{kind} {n}" for kind, n in records.items())
        lines.append(
            f"{source:<15} {by_file[source]:<25} {count:>15}  {sum(records.values())} ({detail})"
        )
    lines += [
        "",
        f"patient records with the shared identifier: {summary['shared_id']}",
        f"patient records with variations: {summary['varied_patient_records']}",
    ]
    lines += [f"  {kind:<20} {n}" for kind, n in summary["variations"].items()]
    pairs = summary["duplicate_pairs"]
    negatives = summary["hard_negative_pairs"]
    lines += [
        "duplicate pairs (must link): "
        + (", ".join(f"{scope} {n}" for scope, n in pairs.items()) or "none"),
        "hard-negative pairs (must not link): "
        + (", ".join(f"{kind} {n}" for kind, n in negatives.items()) or "none"),
    ]
    documents = key.get("scenarios", {}).get("narratives")
    if documents:
        kinds = Counter(d["resource_type"] for d in documents)
        lines.append(
            f"narrative documents (scenarios.narratives): {len(documents)} ("
            + ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items()))
            + ")"
        )
    return "\n".join(lines)


def dumps(key: dict[str, Any]) -> bytes:
    """JSON with one list item per line: diffable and greppable at 100k records, where an
    indented dump would be several times larger and a compact one a single line."""
    parts = []
    for name, value in key.items():
        parts.append(f"  {_string(name)}: {_layout(value, '  ')}")
    return ("{\n" + ",\n".join(parts) + "\n}\n").encode("utf-8")


def _layout(value: Any, indent: str) -> str:
    inner = indent + "  "
    if isinstance(value, list) and value:
        items = ",\n".join(inner + _compact(item) for item in value)
        return "[\n" + items + "\n" + indent + "]"
    if isinstance(value, dict) and value and all(isinstance(v, list) for v in value.values()):
        items = ",\n".join(f"{inner}{_string(k)}: {_layout(v, inner)}" for k, v in value.items())
        return "{\n" + items + "\n" + indent + "}"
    return _compact(value)


def _compact(value: Any) -> str:
    return orjson.dumps(value).decode("utf-8")


def _string(text: str) -> str:
    return orjson.dumps(text).decode("utf-8")
