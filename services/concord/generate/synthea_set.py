"""`concord generate --engine pysynthea`: a population simulated by PySynthea, written as two
EHRs (A as generated; B with its own ids and MRNs, optionally re-ordered or as a FHIR Bulk
Data export, optionally with planted disagreements) and an answer key `concord evaluate`
scores. See docs/generate.md.

Two passes over the generated Bundles (kept gzipped in the set's folder, so a set can be
written again from them without simulating): the first sees every person and decides who
gets which plant, the second writes the files, one person at a time.
"""

from __future__ import annotations

import gzip
import random
import shutil
import tempfile
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import orjson

from concord.generate import answer_key, planted, variations
from concord.generate import synthea_plants as plants
from concord.generate.synthea_engine import (
    REFERENCE_DATE,
    GenerationLog,
    SyntheaSettings,
    bundles,
)
from concord.generate.two_ehrs import (
    FACT_TYPES,
    SHARED_TYPES,
    Ehr,
    PersonRecord,
    Rebrander,
    Resource,
    flatten,
    mrn_of,
    ref_of,
)

Order = Literal["as-generated", "reversed", "shuffled"]
Layout = Literal["ndjson", "bulk"]
ORDERS: tuple[Order, ...] = ("as-generated", "reversed", "shuffled")
LAYOUTS: tuple[Layout, ...] = ("ndjson", "bulk")
ENGINE = "pysynthea"
BUNDLES_FILE = "pysynthea-bundles.ndjson.gz"
BUNDLES_FORMAT = "concord-pysynthea-bundles/1"
MANIFEST = "manifest.json"
BULK_FILE_LINES = 100_000
# The types ingestion/subjects.py ties to a patient, of those the generator writes.
DEFAULT_TYPES = (
    "Patient",
    "Encounter",
    "Condition",
    "Observation",
    "AllergyIntolerance",
    "MedicationRequest",
    "DiagnosticReport",
    "DocumentReference",
)
_PLANTED_VARIATIONS = {
    planted.BIRTH_DATE: variations.PLANTED_BIRTH_DATE,
    planted.SEX: variations.PLANTED_SEX,
    planted.NAME: variations.PLANTED_NAME,
}

DOC = (
    "Answer key of a set written by `concord generate --engine pysynthea`: a population "
    "simulated by PySynthea (tietai-synthea), published as two EHRs. The first source holds "
    "the resources as generated; the second the same content under its own resource ids and "
    "MRNs (nothing else differs unless planted). No identifier is shared but the national "
    "ones the generator writes (SSN, driver's licence, passport): who is who must be matched. "
    "'records' lists every record of the types Concord makes facts of, with its person; "
    "record_ref is what ingestion puts in provenance.source_record_id. 'scenarios.conflicts' "
    "holds every person: a plant (kind, the one element changed in the second source: "
    "'change') or a control, each with what the stack must raise ('expect'): the plant's "
    "conflicts, and the stale records the histories hold (each active medication not "
    "reconfirmed within the policy's window, at each source, with its record and why)."
)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class SyntheaSetConfig:
    settings: SyntheaSettings
    sources: tuple[Ehr, Ehr]
    conflict_rate: float = 0.0
    b_order: Order = "as-generated"
    b_layout: Layout = "ndjson"
    resource_types: frozenset[str] | None = frozenset(DEFAULT_TYPES)  # None: every type

    def __post_init__(self) -> None:
        if not 0.0 <= self.conflict_rate <= 1.0:
            raise ValueError("conflict_rate must be between 0 and 1")
        if self.sources[0].name == self.sources[1].name:
            raise ValueError("the two EHRs need distinct names")
        if self.resource_types is not None and "Patient" not in self.resource_types:
            raise ValueError("the resource types must include Patient")

    def keeps(self, resource_type: str) -> bool:
        return self.resource_types is None or resource_type in self.resource_types

    def file_of(self, position: int) -> str:
        name = self.sources[position].name
        if position == 1 and self.b_layout == "bulk":
            return f"{name}/{MANIFEST}"
        return f"{name}.ndjson"

    def describe(self) -> dict[str, Any]:
        return {
            "engine": ENGINE,
            **self.settings.describe(),
            "sources": ",".join(f"{e.name}:fhir" for e in self.sources),
            "conflict_rate": self.conflict_rate,
            "b_order": self.b_order,
            "b_layout": self.b_layout,
            "resource_types": "all"
            if self.resource_types is None
            else ",".join(sorted(self.resource_types)),
        }


# --- the generator's output, kept ------------------------------------------------------------


def simulate(
    settings: SyntheaSettings,
    path: Path,
    log: GenerationLog,
    progress: Progress | None = None,
    progress_every: int = 10,
) -> None:
    """Runs the generator and keeps its Bundles, one line per person after a header line."""
    with gzip.open(path, "wb", compresslevel=1) as out:
        out.write(orjson.dumps({"format": BUNDLES_FORMAT, **settings.describe()}) + b"\n")
        for index, bundle in bundles(settings, log, progress, progress_every):
            out.write(orjson.dumps({"index": index, "bundle": bundle}) + b"\n")


def read_header(path: Path) -> dict[str, Any]:
    with gzip.open(path, "rb") as lines:
        header: dict[str, Any] = orjson.loads(lines.readline())
    if header.get("format") != BUNDLES_FORMAT:
        raise ValueError(f"{path} is not a file of generated Bundles ({BUNDLES_FORMAT})")
    return header


def read_bundles(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with gzip.open(path, "rb") as lines:
        lines.readline()
        for line in lines:
            item = orjson.loads(line)
            yield int(item["index"]), item["bundle"]


# --- writing ---------------------------------------------------------------------------------


class Spool:
    """Lines kept in a temporary file, to be written out again in another order."""

    def __init__(self, folder: Path) -> None:
        self.file: IO[bytes] = tempfile.TemporaryFile(dir=folder)
        self.offsets = array("q")
        self.lengths = array("q")

    def add(self, line: bytes) -> None:
        self.offsets.append(self.file.tell())
        self.lengths.append(len(line))
        self.file.write(line)

    def __len__(self) -> int:
        return len(self.offsets)

    def lines(self, order: Order, rng: random.Random) -> Iterator[bytes]:
        positions = list(range(len(self.offsets)))
        if order == "reversed":
            positions.reverse()
        elif order == "shuffled":
            rng.shuffle(positions)
        self.file.flush()
        for position in positions:
            self.file.seek(self.offsets[position])
            yield self.file.read(self.lengths[position])
        self.file.seek(0, 2)

    def close(self) -> None:
        self.file.close()


class BWriter:
    """EHR B's records: one NDJSON file, or a Bulk Data export folder (Type.NNN.ndjson files
    and a manifest), each in the chosen order."""

    def __init__(self, config: SyntheaSetConfig, out: Path) -> None:
        self.config = config
        self.out = out
        self.spools: dict[str, Spool] = {}

    def add(self, resource: Resource, line: bytes) -> None:
        key = str(resource["resourceType"]) if self.config.b_layout == "bulk" else ""
        spool = self.spools.get(key)
        if spool is None:
            spool = self.spools[key] = Spool(self.out)
        spool.add(line)

    def finish(self) -> list[Path]:
        rng = plants.stream(self.config.settings.seed, "order")
        name = self.config.sources[1].name
        try:
            if self.config.b_layout == "ndjson":
                path = self.out / f"{name}.ndjson"
                with path.open("wb") as out:
                    for line in self.spools[""].lines(self.config.b_order, rng):
                        out.write(line)
                return [path]
            return self._bulk(self.out / name, rng)
        finally:
            for spool in self.spools.values():
                spool.close()

    def _bulk(self, folder: Path, rng: random.Random) -> list[Path]:
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        outputs: list[dict[str, Any]] = []
        for resource_type in sorted(self.spools, key=lambda t: (t != "Patient", t)):
            lines = self.spools[resource_type].lines(self.config.b_order, rng)
            for number, chunk in enumerate(_chunks(lines, BULK_FILE_LINES)):
                path = folder / f"{resource_type}.{number:03d}.ndjson"
                path.write_bytes(b"".join(chunk))
                outputs.append({"type": resource_type, "url": path.name, "count": len(chunk)})
        manifest = {
            "transactionTime": REFERENCE_DATE.isoformat() + "Z",
            "request": "[base]/$export",
            "requiresAccessToken": False,
            "output": outputs,
            "error": [],
        }
        (folder / MANIFEST).write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
        return [*(folder / str(o["url"]) for o in outputs), folder / MANIFEST]


def _chunks(lines: Iterator[bytes], size: int) -> Iterator[list[bytes]]:
    chunk: list[bytes] = []
    for line in lines:
        chunk.append(line)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# --- the set ---------------------------------------------------------------------------------


@dataclass
class Built:
    """What was written, and the counts the summary prints."""

    files: list[Path] = field(default_factory=list)
    key: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Key:
    """The answer key's lists, built one person at a time; records spooled to disk."""

    records: IO[bytes]
    persons: list[dict[str, Any]] = field(default_factory=list)
    patients: list[dict[str, Any]] = field(default_factory=list)
    pairs: list[dict[str, Any]] = field(default_factory=list)
    section: list[dict[str, Any]] = field(default_factory=list)
    record_counts: dict[str, Counter[str]] = field(default_factory=dict)
    stale: plants.StaleCounts = field(default_factory=plants.StaleCounts)
    cancers: int = 0
    written_records: int = 0

    def record(self, source: str, resource: Resource, person_id: str) -> None:
        resource_type = str(resource["resourceType"])
        self.record_counts.setdefault(source, Counter())[resource_type] += 1
        if resource_type not in FACT_TYPES:
            return  # no facts: no conflict event can name it
        ref = ref_of(resource)
        entry = {
            "source": source,
            "resource_type": resource_type,
            "record_ref": ref,
            "person_id": person_id,
        }
        prefix = b",\n    " if self.written_records else b"    "
        self.records.write(prefix + orjson.dumps(entry))
        self.written_records += 1


def feasibility(
    config: SyntheaSetConfig, bundles_path: Path, progress: Progress | None
) -> dict[str, list[str]]:
    """Pass 1: every person's plantable kinds (of the resource types written)."""
    found: dict[str, list[str]] = {}
    a = config.sources[0]
    for index, bundle in read_bundles(bundles_path):
        person = flatten(index, bundle, a)
        kept = [r for r in person.resources if config.keeps(str(r["resourceType"]))]
        found[person.person_id] = plants.feasible(plants.index(person, kept))
    if progress:
        progress(f"read {len(found)} persons' histories")
    return found


def build(
    config: SyntheaSetConfig,
    bundles_path: Path,
    out: Path,
    progress: Progress | None = None,
    log: GenerationLog | None = None,
) -> Built:
    """Pass 2: writes EHR A's and B's files and the answer key into `out` (created)."""
    out.mkdir(parents=True, exist_ok=True)
    kinds = feasibility(config, bundles_path, progress)
    count = round(len(kinds) * config.conflict_rate)
    chosen = plants.choose(kinds, count, config.settings.seed)
    a, b = config.sources
    rebrander = Rebrander(b, config.settings.seed)
    b_writer = BWriter(config, out)
    built = Built()
    a_path = out / f"{a.name}.ndjson"
    with a_path.open("wb") as a_file, tempfile.TemporaryFile(dir=out) as records:
        key = _Key(records)
        shared: set[str] = set()
        for index, bundle in read_bundles(bundles_path):
            person = flatten(index, bundle, a)
            kind = chosen.get(person.person_id)
            for resource, b_resource in _person(config, person, kind, rebrander, key):
                if resource["resourceType"] in SHARED_TYPES:
                    if ref_of(resource) in shared:
                        continue  # an EHR holds a facility or clinician once
                    shared.add(ref_of(resource))
                key.record(a.name, resource, person.person_id)
                key.record(b.name, b_resource, person.person_id)
                a_file.write(orjson.dumps(resource) + b"\n")
                b_writer.add(b_resource, orjson.dumps(b_resource) + b"\n")
        built.files = [a_path, *b_writer.finish()]
        key_path = out / answer_key.FILE_NAME
        built.key = _assemble(config, key, log)
        _write_key(key_path, built.key, records)
        built.files.append(key_path)
    return built


def _person(
    config: SyntheaSetConfig,
    person: PersonRecord,
    kind: str | None,
    rebrander: Rebrander,
    key: _Key,
) -> list[tuple[Resource, Resource]]:
    """The person's answer-key entries; returns (A's, B's) copy of each record written, B's
    planted if `kind`."""
    a, b = config.sources
    kept = [r for r in person.resources if config.keeps(str(r["resourceType"]))]
    index_a = plants.index(person, kept)
    b_copy: list[Resource] = [orjson.loads(orjson.dumps(r)) for r in kept]  # B's, A's ids
    made = plants.plant(index_a, kind, config.settings.seed) if kind is not None else None
    if made is not None:
        made.apply(b_copy)
    index_b = plants.index(person, [r for r in b_copy if _is_medication(r)])
    expect = [*(made.expect if made is not None else [])]
    expect += plants.baseline_stale(index_a, a.name, lambda ref: ref, key.stale)
    expect += plants.baseline_stale(index_b, b.name, rebrander.new_ref, key.stale)
    b_resources = rebrander.rebrand(person, b_copy)
    varied = [_PLANTED_VARIATIONS[kind]] if kind in _PLANTED_VARIATIONS else []
    _patients(config, person, (kept[0], b_resources[0]), varied, key)
    cancers = _cancers(kept)
    key.cancers += bool(cancers)
    key.persons.append(_person_entry(person, kept[0], (a.name, b.name), cancers))
    entry: dict[str, Any] = {
        "kind": kind or planted.CONTROL,
        "person_id": person.person_id,
        "sources": [a.name, b.name],
    }
    if made is not None:
        entry["change"] = {
            "source": b.name,
            "record_ref": rebrander.new_ref(made.record_ref),
            "first_source_record_ref": made.record_ref,
            "element": made.element,
            "first_source": made.a_value,
            "second_source": made.b_value,
        }
    entry["expect"] = [e.as_json() for e in expect]
    key.section.append(entry)
    return list(zip(kept, b_resources, strict=True))


def _patients(
    config: SyntheaSetConfig,
    person: PersonRecord,
    patients: tuple[Resource, Resource],
    varied: list[str],
    key: _Key,
) -> None:
    """The person's two patient records, and the pair of them that must link."""
    names = [ehr.name for ehr in config.sources]
    keys = [f"{name}|{mrn_of(patient)}" for name, patient in zip(names, patients, strict=True)]
    for name, patient, patient_key, varies in zip(names, patients, keys, ([], varied), strict=True):
        key.patients.append(
            {
                "patient_key": patient_key,
                "source": name,
                "mrn": mrn_of(patient),
                "patient_id": patient["id"],
                "person_id": person.person_id,
                "registration": 1,
                "shared_id": False,
                "variations": varies,
            }
        )
    key.pairs.append(
        {
            "a": min(keys),
            "b": max(keys),
            "person_id": person.person_id,
            "scope": answer_key.CROSS_SOURCE,
            "variations": varied,
        }
    )


def _is_medication(resource: Resource) -> bool:
    return resource.get("resourceType") in ("MedicationRequest", "MedicationStatement")


def _cancers(resources: list[Resource]) -> list[str]:
    found = []
    for resource in resources:
        if resource.get("resourceType") != "Condition":
            continue
        for coding in resource.get("code", {}).get("coding", ()):
            display = str(coding.get("display", "")).lower()
            if any(word in display for word in ("malignant", "carcinoma", "neoplasm")):
                found.append(f"{coding.get('code')} {coding.get('display')}")
    return sorted(set(found))


def _person_entry(
    person: PersonRecord, patient: Resource, sources: tuple[str, str], cancers: list[str]
) -> dict[str, Any]:
    names = patient.get("name") or [{}]
    official = next((n for n in names if n.get("use") == "official"), names[0])
    address = (patient.get("address") or [{}])[0]
    return {
        "person_id": person.person_id,
        "generator_index": person.index,
        "generator_id": person.generator_id,
        "sources": list(sources),
        "related": [],
        "truth": {
            "family": official.get("family"),
            "given": official.get("given", []),
            "suffix": (official.get("suffix") or [None])[0],
            "sex": patient.get("gender"),
            "birth_date": patient.get("birthDate"),
            "postal_code": address.get("postalCode"),
        },
        "cancers": cancers,
    }


def _assemble(config: SyntheaSetConfig, key: _Key, log: GenerationLog | None) -> dict[str, Any]:
    a, b = config.sources
    kinds = Counter(e["kind"] for e in key.section)
    expected = Counter(x["kind"] for e in key.section for x in e["expect"])
    return {
        "format": answer_key.FORMAT,
        "engine": ENGINE,
        "doc": DOC,
        "config": config.describe(),
        "shared_id_system": None,
        "sources": [
            {
                "name": ehr.name,
                "format": "fhir",
                "file": config.file_of(position),
                "mrn_system": ehr.mrn_system,
                "layout": "ndjson" if position == 0 else config.b_layout,
                "order": "as-generated" if position == 0 else config.b_order,
            }
            for position, ehr in enumerate((a, b))
        ],
        "variation_kinds": {v: variations.DESCRIPTIONS[v] for v in _PLANTED_VARIATIONS.values()},
        "hard_negative_kinds": {},
        "persons": key.persons,
        "patients": key.patients,
        "duplicate_pairs": key.pairs,
        "hard_negative_pairs": [],
        "scenarios": {planted.PlantedConflicts.name: key.section},
        "summary": {
            "persons": len(key.persons),
            "persons_with_cancer": key.cancers,
            "records": {
                source: dict(sorted(counts.items())) for source, counts in key.record_counts.items()
            },
            "plants": {k: kinds[k] for k in plants.KINDS if kinds[k]},
            "controls": kinds[planted.CONTROL],
            "expected": dict(sorted(expected.items())),
            "stale_ambiguous": key.stale.ambiguous,
            "generator_warnings": log.module_warnings if log is not None else None,
            "generator_rejected": log.rejected if log is not None else None,
        },
    }


def _write_key(path: Path, key: dict[str, Any], records: IO[bytes]) -> None:
    head = answer_key.dumps(key)
    assert head.endswith(b"\n}\n")  # noqa: S101 - answer_key.dumps' layout
    with path.open("wb") as out:
        out.write(head[: -len(b"\n}\n")])
        out.write(b',\n  "records": [\n')
        records.flush()
        records.seek(0)
        shutil.copyfileobj(records, out)
        out.write(b"\n  ]\n}\n")


def summary_text(key: dict[str, Any]) -> str:
    summary = key["summary"]
    config = key["config"]
    lines = [
        f"{summary['persons']} persons simulated by {config['library']} (seed {config['seed']}, "
        f"cancer cohort {'on' if config['cancer_cohort'] else 'off'}); "
        f"{summary['persons_with_cancer']} with a cancer",
        "",
    ]
    for source in key["sources"]:
        records = summary["records"].get(source["name"], {})
        detail = ", ".join(f"{kind} {n}" for kind, n in records.items())
        lines.append(
            f"{source['name']:<15} {source['file']:<28} {source['layout']}, {source['order']}: "
            f"{sum(records.values())} records ({detail})"
        )
    plants_made = summary["plants"]
    lines += [
        "",
        "plants: "
        + (", ".join(f"{k} {n}" for k, n in plants_made.items()) or "none")
        + f"; controls {summary['controls']}",
        "expected: " + (", ".join(f"{k} {n}" for k, n in summary["expected"].items()) or "none"),
    ]
    if summary["stale_ambiguous"]:
        lines.append(
            f"medications whose latest statements tie in time and differ in status (no stale "
            f"record expected): {summary['stale_ambiguous']}"
        )
    if summary["generator_warnings"]:
        lines.append(f"warnings the generator logged: {summary['generator_warnings']}")
    return "\n".join(lines)
