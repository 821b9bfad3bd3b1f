"""Local codes → the standard codes Concord compares by, from versioned crosswalk files.

Two sources can only disagree about a concept they both name the same way: laboratory tests
by LOINC, conditions by ICD-10-CM (a SNOMED CT disorder through its crosswalk row, else as
it is), allergies by SNOMED CT (or an RxNorm
ingredient), medications by RxNorm ingredient. A code already in one of those systems is
returned as it is (unless it fails that system's format or check digit: then it is no code of
it); another is looked up in the crosswalks; a code no crosswalk knows comes back unchanged
with `mapped=False`, so the caller keeps the fact and flags it (and counts it). Nothing here
raises on a code or drops one.

Crosswalk files (data/crosswalks/*.csv) start with `# key: value` lines naming the
crosswalk, its version, its source and its licence, then a CSV header and rows:

    # name: ndc-rxnorm-ingredient
    # version: 2026-12-01
    # source: where the mapping comes from
    # licence: under which terms
    from_system,from_code,to_system,to_code,to_display

A mapped code names its crosswalk as `name@version`, so a fact says which edition of which
mapping made it. Every row is checked when the files load (target system standard, code well
formed with its check digit, no (system, code) mapped twice): a bad file fails at start,
not on the first message that needs it.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from concord.ingestion.codes import ICD10_CM, LOINC, NDC, RXNORM, SNOMED_CT, check_coding
from concord.ingestion.hl7v2 import CODING_SYSTEMS

# The systems facts are keyed by: a code in one of these needs no crosswalk.
STANDARD_SYSTEMS = frozenset({LOINC, SNOMED_CT, ICD10_CM, RXNORM})
# How an HL7 v2 coding system name outside table 0396's known ones becomes a system URI.
HL7_LOCAL_SYSTEM_PREFIX = "urn:concord:hl7v2-coding-system:"
COLUMNS = ("from_system", "from_code", "to_system", "to_code", "to_display")
REQUIRED_HEADER = ("version", "source", "licence")

_DEFAULT_FOLDER = resources.files("concord.normalization").joinpath("data", "crosswalks")
_HEADER_LINE = re.compile(r"^#\s*([A-Za-z_]+)\s*:\s*(.*?)\s*$")
_NDC_HYPHENATED = re.compile(r"(?a)^(\d{4,5})-(\d{3,4})-(\d{1,2})$")


class MappedCode(BaseModel):
    """A code as Concord compares it. `mapped` is True for a standard code, whether it came
    so (`crosswalk` None) or through a crosswalk (`crosswalk` = "name@version"); False for a
    code no crosswalk knows, given back with its original system and code."""

    model_config = ConfigDict(frozen=True)

    system: str
    code: str
    display: str | None = None
    mapped: bool
    crosswalk: str | None = None


@dataclass(frozen=True)
class Crosswalk:
    name: str
    version: str
    source: str
    licence: str
    rows: Mapping[tuple[str, str], tuple[str, str, str | None]] = field(repr=False)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


class CrosswalkError(ValueError):
    """A crosswalk file that cannot be trusted: raised at load, naming file and line."""


def hl7_system(name: str) -> str:
    """The system URI of an HL7 v2 coding system name (CWE-3): table 0396 names Concord
    knows (LN, SCT, I10, RXNORM, NDC, CPT, ...) → their FHIR URI, others → a local URN."""
    name = name.strip()
    return CODING_SYSTEMS.get(name.upper(), f"{HL7_LOCAL_SYSTEM_PREFIX}{name}")


def ndc11(code: str) -> str:
    """An NDC in the 11-digit 5-4-2 form when its hyphens say how to pad it; as given
    otherwise (a 10-digit NDC without hyphens is ambiguous: which segment lacks a zero?)."""
    match = _NDC_HYPHENATED.fullmatch(code.strip())
    if match is None:
        return code.strip()
    labeler, product, package = match.groups()
    if len(labeler) + len(product) + len(package) not in (10, 11):
        return code.strip()
    return f"{labeler:0>5}{product:0>4}{package:0>2}"


def _system_uri(system: str) -> str:
    """HL7 table 0396 names given as the system (LN, SCT, ...) → URIs; URIs unchanged."""
    system = system.strip()
    if system.startswith(HL7_LOCAL_SYSTEM_PREFIX):
        return CODING_SYSTEMS.get(system[len(HL7_LOCAL_SYSTEM_PREFIX) :].upper(), system)
    if ":" not in system:
        return CODING_SYSTEMS.get(system.upper(), system)
    return system


def icd10cm(code: str) -> str:
    """An ICD-10-CM code as the code set writes it: X12 claims and many billing systems drop
    the dot (C50911, Z171) and some lower-case it; the dot goes after the third character."""
    code = code.strip().upper()
    if "." not in code and len(code) > 3:
        return f"{code[:3]}.{code[3:]}"
    return code


def _lookup_code(system: str, code: str) -> str:
    if system == NDC:
        return ndc11(code)
    if system == ICD10_CM:
        return icd10cm(code)
    return code.strip()


class Terminology:
    """The crosswalks of one folder, merged into one lookup; immutable once loaded."""

    def __init__(self, crosswalks: Iterable[Crosswalk]) -> None:
        self.crosswalks = tuple(crosswalks)
        self._index: dict[tuple[str, str], tuple[Crosswalk, tuple[str, str, str | None]]] = {}
        for crosswalk in self.crosswalks:
            for key, target in crosswalk.rows.items():
                if key in self._index:
                    other = self._index[key][0].ref
                    raise CrosswalkError(f"{key} is mapped by {other} and by {crosswalk.ref}")
                self._index[key] = (crosswalk, target)
        # Codes repeat (a lab sends the same few hundred tests): each is looked up and
        # checked once. Bounded, since a source may send codes without end.
        self.map = lru_cache(maxsize=65_536)(self._map)  # type: ignore[method-assign]

    @classmethod
    def load(cls, folder: Path | None = None) -> Terminology:
        """Every `*.csv` crosswalk of `folder` (default: the packaged data/crosswalks)."""
        base: Traversable = folder if folder is not None else _DEFAULT_FOLDER
        files = sorted((f for f in base.iterdir() if f.name.endswith(".csv")), key=_name)
        return cls(parse_crosswalk(f.read_text("utf-8"), origin=f.name) for f in files)

    def map(self, system: str, code: str) -> MappedCode:
        """The code as Concord compares it (frozen, so a cached result is shared safely)."""
        return self._map(system, code)

    def _map(self, system: str, code: str) -> MappedCode:
        uri = _system_uri(system)
        # A crosswalk may key one standard code by another (a molar LOINC term by its mass
        # twin), so the crosswalks are asked before a standard code passes through.
        found = self._index.get((uri, _lookup_code(uri, code)))
        if found is None:
            # A code that fails its standard system's format or check digit (ingestion kept it
            # with an INVALID_CODE warning) is not that system's code: it stays unmapped.
            if uri in STANDARD_SYSTEMS and _well_formed(uri, _lookup_code(uri, code)):
                return MappedCode(system=uri, code=_lookup_code(uri, code), mapped=True)
            return MappedCode(system=system, code=code, mapped=False)
        crosswalk, (to_system, to_code, to_display) = found
        return MappedCode(
            system=to_system, code=to_code, display=to_display, mapped=True, crosswalk=crosswalk.ref
        )


def _well_formed(system: str, code: str) -> bool:
    return check_coding({"system": system, "code": code}) is None


def _name(file: Traversable) -> str:
    return file.name


def parse_crosswalk(text: str, *, origin: str = "crosswalk") -> Crosswalk:
    """One crosswalk file's text → Crosswalk; CrosswalkError names the line at fault."""
    lines = text.splitlines()
    header: dict[str, str] = {}
    body_start = 0
    for number, line in enumerate(lines):
        if not line.strip():
            continue
        if not line.lstrip().startswith("#"):
            body_start = number
            break
        match = _HEADER_LINE.match(line.strip())
        if match is None:
            raise CrosswalkError(f"{origin} line {number + 1}: expected '# key: value'")
        key = match[1].lower()
        header[key] = f"{header[key]} {match[2]}" if key in header else match[2]
    else:
        body_start = len(lines)
    missing = [key for key in REQUIRED_HEADER if not header.get(key)]
    if missing:
        raise CrosswalkError(f"{origin}: the header does not give {', '.join(missing)}")
    reader = csv.reader(lines[body_start:])
    columns = tuple(column.strip() for column in next(reader, []))
    if columns != COLUMNS:
        raise CrosswalkError(f"{origin} line {body_start + 1}: columns must be {COLUMNS}")
    rows: dict[tuple[str, str], tuple[str, str, str | None]] = {}
    for offset, row in enumerate(reader, start=body_start + 2):
        if not any(cell.strip() for cell in row):
            continue
        key, target = _row(row, f"{origin} line {offset}")
        if key in rows:
            raise CrosswalkError(f"{origin} line {offset}: {key} is mapped twice")
        rows[key] = target
    name = header.get("name") or Path(origin).stem
    return Crosswalk(name, header["version"], header["source"], header["licence"], rows)


def _row(row: list[str], where: str) -> tuple[tuple[str, str], tuple[str, str, str | None]]:
    if len(row) != len(COLUMNS):
        raise CrosswalkError(f"{where}: {len(row)} cells, expected {len(COLUMNS)}")
    from_system, from_code, to_system, to_code, to_display = (cell.strip() for cell in row)
    if not (from_system and from_code and to_system and to_code):
        raise CrosswalkError(f"{where}: a system or code is empty")
    if to_system not in STANDARD_SYSTEMS:
        raise CrosswalkError(f"{where}: {to_system} is not a system facts are keyed by")
    problem = check_coding({"system": to_system, "code": to_code})
    if problem is not None:
        raise CrosswalkError(f"{where}: {problem[1]}")
    uri = _system_uri(from_system)
    # A standard code may be keyed by another (a molar LOINC term by its mass twin), never by
    # itself: such a row would say nothing.
    if (uri, _lookup_code(uri, from_code)) == (to_system, to_code):
        raise CrosswalkError(f"{where}: maps a code to itself")
    return (uri, _lookup_code(uri, from_code)), (to_system, to_code, to_display or None)
