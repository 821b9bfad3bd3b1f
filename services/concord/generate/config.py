"""What to generate: the sources and the rates, validated once, before anything is drawn."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal
from zoneinfo import ZoneInfo

from concord.config import DEFAULT_ENTERPRISE_ID_SYSTEM

SourceFormat = Literal["fhir", "hl7v2", "claims"]
FORMATS: tuple[SourceFormat, ...] = ("fhir", "hl7v2", "claims")
# A claims source (a payer) sends claim lines (docs/claims.md) to ehr.raw.claims. It holds no
# one by chance: only the persons a planted kind registers with it (generate/planted.py).
CLAIMS: SourceFormat = "claims"
_SOURCE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class SourceStyle:
    """How one sending system writes what it knows. Sources differ in these on purpose:
    normalization must see through each difference without it counting as a variation."""

    zone: str
    units: Literal["conventional", "si"]
    condition_system: Literal["snomed", "icd10"]
    ids: Literal["uuid", "counter"]
    phone: Literal["dashes", "parentheses", "digits"]


# Assigned to sources by position, so the default three differ in every respect that matters.
STYLES: tuple[SourceStyle, ...] = (
    SourceStyle("America/New_York", "conventional", "snomed", "uuid", "dashes"),
    SourceStyle("America/Chicago", "si", "icd10", "counter", "parentheses"),
    SourceStyle("America/Denver", "conventional", "icd10", "counter", "digits"),
    SourceStyle("America/Los_Angeles", "si", "snomed", "uuid", "dashes"),
)


@dataclass(frozen=True)
class SourceSpec:
    name: str
    format: SourceFormat
    style: SourceStyle

    @property
    def file_name(self) -> str:
        return f"{self.name}.hl7" if self.format == "hl7v2" else f"{self.name}.ndjson"

    @property
    def mrn_system(self) -> str:
        """The MRN's identifier system: FHIR identifier.system, and in HL7 the universal id
        of PID-3's assigning authority (whose namespace id is assigning_authority)."""
        return f"urn:concord:mrn:{self.name}"

    @property
    def assigning_authority(self) -> str:
        return self.name.upper()

    @property
    def mrn_prefix(self) -> str:
        return "".join(part[0] for part in re.split(r"[-._]", self.name) if part).upper()

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.style.zone)


DEFAULT_SOURCES = "hospital-ehr:fhir,clinic-ehr:fhir,lab-system:hl7v2,payer:claims"
# A fixed "now", so that a seed gives the same set on any day.
DEFAULT_AS_OF = datetime(2026, 1, 1, tzinfo=UTC)


def parse_sources(text: str) -> tuple[SourceSpec, ...]:
    """`name:format,name:format` (format fhir, hl7v2 or claims) into sources with their
    styles."""
    specs: list[SourceSpec] = []
    for position, item in enumerate(part.strip() for part in text.split(",") if part.strip()):
        name, _, fmt = item.partition(":")
        if not _SOURCE_NAME.match(name):
            raise ValueError(
                f"source {name!r}: use lower-case letters, digits, '.', '_' or '-' "
                "(it becomes a file name and the 'source' header)"
            )
        if fmt not in FORMATS:
            raise ValueError(f"source {name!r}: format must be one of {', '.join(FORMATS)}")
        fmt_checked = next(f for f in FORMATS if f == fmt)
        specs.append(SourceSpec(name, fmt_checked, STYLES[position % len(STYLES)]))
    if not any(spec.format != CLAIMS for spec in specs):
        raise ValueError("name at least one fhir or hl7v2 source")
    if len({spec.name for spec in specs}) != len(specs):
        raise ValueError("source names must be distinct")
    return tuple(specs)


@dataclass(frozen=True)
class GeneratorConfig:
    patients: int = 1000
    seed: int = 42
    sources: tuple[SourceSpec, ...] = field(default_factory=lambda: parse_sources(DEFAULT_SOURCES))
    # Share of persons held by two or more sources (the rest by exactly one).
    overlap: float = 0.8
    # Share of (person, source) registrations that get a second MRN at the same source.
    duplicate_rate: float = 0.05
    # Share of the other registrations whose demographics differ from the person's.
    variation_rate: float = 0.3
    # Share of registrations that carry the authoritative shared identifier.
    shared_id_rate: float = 0.2
    shared_id_system: str = DEFAULT_ENTERPRISE_ID_SYSTEM
    # Share of persons made into one side of a hard-negative pair (twins, father/son).
    hard_negative_rate: float = 0.04
    # Share of persons given a planted disagreement or stale record (generate/planted.py); as
    # many again are kept as controls. Both come from the persons held by two or more sources.
    conflict_rate: float = 0.1
    # Narrative documents with the hard cases of clinical text (generate/narrative_set.py),
    # one each on persons outside the cohort: None is patients // 5.
    narratives: int | None = None
    # Clinical records are dated in the two years before this instant; birth dates before it.
    as_of: datetime = DEFAULT_AS_OF

    def __post_init__(self) -> None:
        if self.patients < 1:
            raise ValueError("patients must be at least 1")
        for name in (
            "overlap",
            "duplicate_rate",
            "variation_rate",
            "shared_id_rate",
            "hard_negative_rate",
            "conflict_rate",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.as_of.tzinfo is None:
            raise ValueError("as_of must carry a time zone")
        if self.narratives is not None and self.narratives < 0:
            raise ValueError("narratives must be 0 or more")

    @property
    def narrative_count(self) -> int:
        """How many narrative documents to write (at most one per person who can take one)."""
        return self.patients // 5 if self.narratives is None else self.narratives

    def describe(self) -> dict[str, object]:
        """The settings as written into the answer key, enough to generate the set again."""
        return {
            "patients": self.patients,
            "seed": self.seed,
            "sources": ",".join(f"{s.name}:{s.format}" for s in self.sources),
            "overlap": self.overlap,
            "duplicate_rate": self.duplicate_rate,
            "variation_rate": self.variation_rate,
            "shared_id_rate": self.shared_id_rate,
            "shared_id_system": self.shared_id_system,
            "hard_negative_rate": self.hard_negative_rate,
            "conflict_rate": self.conflict_rate,
            "narratives": self.narrative_count,
            "as_of": self.as_of.isoformat(),
        }
