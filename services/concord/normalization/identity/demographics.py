"""Who a source says a patient is: the demographic view that identity matching compares.

One `Demographics` is one source's view of one patient, with its values already turned into
comparison keys (see `normalize`). The model normalizes in its validators, so a view read
back from storage and a view freshly extracted compare alike; every normalizer is idempotent.

PHI stays out of reprs and errors: the demographic fields are excluded from `repr`, and
validation errors hide their input, so an accidental log line or a bad value never prints a
name or a birth date.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from functools import cached_property
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from concord.hl7v2 import er7
from concord.normalization.identity import normalize, systems
from concord.normalization.identity.systems import MatchSystem

Sex = Literal["male", "female", "other", "unknown"]

# An identifier that names no system is only meaningful inside its source.
LOCAL_SYSTEM_PREFIX = "urn:concord:local-identifier:"

_BIRTH_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$")
# HL7 table 0001 → FHIR administrative-gender, as the HL7 v2-to-FHIR ConceptMap maps it.
V2_SEX: dict[str, Sex] = {
    "M": "male",
    "F": "female",
    "O": "other",
    "A": "other",
    "N": "other",
    "U": "unknown",
}
_FHIR_SEX: dict[str, Sex] = {
    "male": "male",
    "female": "female",
    "other": "other",
    "unknown": "unknown",
}
# Which address and phone a person is found at, best first (HL7 tables 0190 and 0201).
_V2_ADDRESS_TYPES = ("H", "C", "P", "L", "M")
_V2_PHONE_USES = ("PRN", "PRS", "ORN", "VHN", "")
_FHIR_PHONE_USES = ("home", "mobile", None, "temp", "work")


def _valid_birth_date(text: str) -> bool:
    found = _BIRTH_DATE.match(text)
    if found is None:
        return False
    year, month, day = found.groups()
    try:
        date(int(year), int(month or 1), int(day or 1))
    except ValueError:
        return False
    return True


class Identifier(BaseModel):
    """A local identifier: (system, value), plus its type code (v2 table 0203: MR, SS, …)."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    system: str
    value: str = Field(repr=False)
    type: str | None = None

    @property
    def pair(self) -> tuple[str, str]:
        return (self.system, self.value)

    def match(self) -> tuple[MatchSystem, str]:
        """The system this identifier is compared by across formats (identifier_systems), and
        its value as compared: in a named system, without blanks and dashes (123-45-6789)."""
        named = systems.active().match_system(self.system, self.type)
        if not named.named:
            return named, self.value
        return named, systems.compared_value(self.value)

    @property
    def placeholder(self) -> bool:
        """Whether the identifier systems table says the value is no one's (an SSN of
        000-00-0000): extraction leaves such an identifier out, and so do the match keys of
        a view stored before the table said so."""
        named, value = self.match()
        return not named.accepts(value)


@dataclass(frozen=True, slots=True)
class MatchKeys:
    """Derived comparison keys, computed once per view ("" where the value is missing)."""

    family: str
    family_tokens: frozenset[str]
    family_nysiis: str
    family_metaphone: str
    given: str
    given_nysiis: str
    given_metaphone: str
    birth_digits: str
    # (system, value) as compared: the system named across formats (identifier_systems).
    identifiers: frozenset[tuple[str, str]]
    systems: frozenset[str]
    # Systems where one person holds one value: a different value is evidence against.
    unique_systems: frozenset[str]
    named: frozenset[str]  # systems the identifier systems table names


class Demographics(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    source: str
    identifiers: tuple[Identifier, ...] = ()
    family: str | None = Field(default=None, repr=False)
    # First given name first; middle names after it.
    given: tuple[str, ...] = Field(default=(), repr=False)
    suffix: str | None = Field(default=None, repr=False)
    # 'YYYY', 'YYYY-MM' or 'YYYY-MM-DD': a partial date keeps its precision.
    birth_date: str | None = Field(default=None, repr=False)
    sex: Sex | None = Field(default=None, repr=False)
    postal_code: str | None = Field(default=None, repr=False)
    # Digits only, the last ten.
    phone: str | None = Field(default=None, repr=False)
    address_line: str | None = Field(default=None, repr=False)

    @field_validator("family")
    @classmethod
    def _family(cls, value: str | None) -> str | None:
        return normalize.name_key(value)

    @field_validator("given")
    @classmethod
    def _given(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(key for key in map(normalize.name_key, value) if key)

    @field_validator("suffix")
    @classmethod
    def _suffix(cls, value: str | None) -> str | None:
        return normalize.suffix_key(value)

    @field_validator("birth_date")
    @classmethod
    def _birth_date(cls, value: str | None) -> str | None:
        if value is not None and not _valid_birth_date(value):
            raise ValueError("the birth date is not YYYY, YYYY-MM or YYYY-MM-DD, or no such day")
        return value

    @field_validator("postal_code")
    @classmethod
    def _postal_code(cls, value: str | None) -> str | None:
        return normalize.postal_key(value)

    @field_validator("phone")
    @classmethod
    def _phone(cls, value: str | None) -> str | None:
        return normalize.phone_digits(value)

    @field_validator("address_line")
    @classmethod
    def _address_line(cls, value: str | None) -> str | None:
        return normalize.address_key(value)

    @classmethod
    def from_stored(cls, document: str | bytes) -> Demographics:
        """A view as `model_dump_json` wrote it, without normalizing again: what was stored
        was normalized when it was built, and the identity store reads thousands a batch."""
        data = orjson.loads(document)
        identifiers = tuple(Identifier.model_construct(**i) for i in data.pop("identifiers", ()))
        data["given"] = tuple(data.get("given") or ())
        return cls.model_construct(identifiers=identifiers, **data)

    @cached_property
    def birth_date_parsed(self) -> date | None:
        """The birth date as a date when it is complete; None for a partial one."""
        if self.birth_date is None or len(self.birth_date) != 10:
            return None
        return date.fromisoformat(self.birth_date)

    @cached_property
    def keys(self) -> MatchKeys:
        compared = (identifier.match() for identifier in self.identifiers)
        matched = [(named, value) for named, value in compared if named.accepts(value)]
        family = normalize.compact(self.family or "")
        given = normalize.compact(self.given[0]) if self.given else ""
        return MatchKeys(
            family=family,
            family_tokens=frozenset((self.family or "").split()),
            family_nysiis=normalize.nysiis(family),
            family_metaphone=normalize.metaphone(family),
            given=given,
            given_nysiis=normalize.nysiis(given),
            given_metaphone=normalize.metaphone(given),
            birth_digits=(self.birth_date or "").replace("-", ""),
            identifiers=frozenset((named.system, value) for named, value in matched),
            systems=frozenset(named.system for named, _ in matched),
            unique_systems=frozenset(named.system for named, _ in matched if named.unique),
            named=frozenset(named.system for named, _ in matched if named.named),
        )


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _dicts(value: Any) -> list[Mapping[str, Any]]:
    return [item for item in value if isinstance(item, Mapping)] if isinstance(value, list) else []


def _names(family: str, given: Iterable[str], suffixes: Iterable[str]) -> dict[str, Any]:
    """Family, given and generational suffix, with a suffix written into the family name
    ("Smith Jr") moved to where it belongs."""
    words, inline_suffix = normalize.split_suffix(normalize.tokens(family))
    suffix = next((s for s in map(normalize.suffix_key, suffixes) if s), None) or inline_suffix
    return {
        "family": " ".join(words) or None,
        "given": tuple(g for g in given if g),
        "suffix": suffix,
    }


def _local_system(source: str) -> str:
    return f"{LOCAL_SYSTEM_PREFIX}{source}"


def _fhir_identifiers(resource: Mapping[str, Any], source: str) -> tuple[Identifier, ...]:
    found: list[Identifier] = []
    for item in _dicts(resource.get("identifier")):
        value = _text(item.get("value"))
        if not value:
            continue
        type_ = item.get("type") if isinstance(item.get("type"), Mapping) else {}
        codings = _dicts(type_.get("coding")) if type_ else []
        type_code = _text(codings[0].get("code")) if codings else ""
        identifier = Identifier(
            system=_text(item.get("system")) or _local_system(source),
            value=value,
            type=type_code or None,
        )
        if not identifier.placeholder:
            found.append(identifier)
    return tuple(found)


def _fhir_name(resource: Mapping[str, Any]) -> dict[str, Any]:
    names = _dicts(resource.get("name"))
    current = [n for n in names if n.get("use") not in ("old", "anonymous", "maiden")] or names
    chosen = next((n for n in current if n.get("use") == "official"), None) or next(
        (n for n in current if n.get("use") == "usual"), current[0] if current else None
    )
    if chosen is None:
        return {}
    family = _text(chosen.get("family"))
    given = [_text(g) for g in chosen.get("given") or () if isinstance(g, str)]
    suffixes = [s for s in chosen.get("suffix") or () if isinstance(s, str)]
    if not family and not given:
        # Only a display text: its last word is the family name in the usual Western order.
        words, inline_suffix = normalize.split_suffix(normalize.tokens(_text(chosen.get("text"))))
        family, given = (words[-1], words[:-1]) if words else ("", [])
        suffixes.append(inline_suffix or "")
    return _names(family, given, suffixes)


def _fhir_address(resource: Mapping[str, Any]) -> Mapping[str, Any] | None:
    addresses = [a for a in _dicts(resource.get("address")) if a.get("use") != "old"]
    return next((a for a in addresses if a.get("use") == "home"), None) or next(
        iter(addresses), None
    )


def _fhir_phone(resource: Mapping[str, Any]) -> str | None:
    phones = [t for t in _dicts(resource.get("telecom")) if t.get("system") == "phone"]
    for use in _FHIR_PHONE_USES:
        for phone in phones:
            digits = normalize.phone_digits(_text(phone.get("value")))
            if phone.get("use") == use and digits:
                return digits
    return None


def from_fhir_patient(resource: Mapping[str, Any], source: str) -> Demographics:
    """The demographics of a FHIR R4 Patient. Never raises on content: a value that is not
    usable (a malformed birthDate, an unknown gender code) is left out, as missing."""
    birth_date = _text(resource.get("birthDate"))
    gender = _text(resource.get("gender"))
    address = _fhir_address(resource)
    lines = [line for line in (address or {}).get("line") or () if isinstance(line, str)]
    return Demographics(
        source=source,
        identifiers=_fhir_identifiers(resource, source),
        **_fhir_name(resource),
        birth_date=birth_date if _valid_birth_date(birth_date) else None,
        sex=_FHIR_SEX.get(gender),
        postal_code=_text((address or {}).get("postalCode")) or None,
        phone=_fhir_phone(resource),
        address_line=lines[0] if lines else None,
    )


def cx_identifiers(segment: er7.Segment, field: int, source: str) -> tuple[Identifier, ...]:
    """The identifiers of a CX field (PID-3, MRG-1), with the system PID-3's would have;
    placeholders (an SSN of 000-00-0000) left out."""
    found: list[Identifier] = []
    for rep in range(len(segment.repetitions(field))):
        value = segment.value(field, 1, rep).strip()
        if not value:
            continue
        # CX.4 assigning authority: its namespace id, else its universal id (an OID).
        authority = (
            segment.value(field, 4, rep).strip()
            or segment.value(field, 4, rep, subcomponent=2).strip()
        )
        identifier = Identifier(
            system=authority or _local_system(source),
            value=value,
            type=segment.value(field, 5, rep).strip() or None,
        )
        if not identifier.placeholder:
            found.append(identifier)
    return tuple(found)


def _pid_ssn(pid: er7.Segment, source: str) -> Identifier | None:
    """PID-19, SSN Number - Patient (an ST; v2.3 to v2.6, kept for backward compatibility
    since v2.7, which puts the SSN in PID-3): an identifier of type SS in the system the
    identifier systems table names for SS, the one an SSN in PID-3 or a FHIR us-ssn
    Identifier is compared by. Without such an entry, as PID-3's `<value>^^^^SS` is read."""
    value = pid.value(19).strip()
    if not value:
        return None
    system = systems.active().system_of_type("SS") or _local_system(source)
    return Identifier(system=system, value=value, type="SS")


def _pid_licence(pid: er7.Segment, source: str) -> Identifier | None:
    """PID-20, Driver's License Number - Patient (DLN: number ^ issuing state, province or
    country ^ expiration date): read as PID-3's `<number>^^^<state>^DL` is, the issuing
    state as the assigning authority; the expiration date is not kept."""
    value = pid.value(20).strip()
    if not value:
        return None
    state = pid.value(20, 2).strip()
    return Identifier(system=state or _local_system(source), value=value, type="DL")


def pid_identifiers(pid: er7.Segment, source: str) -> tuple[Identifier, ...]:
    """PID-3's identifiers, then PID-19's SSN and PID-20's driver's licence when PID-3 does
    not already hold them (compared as the matcher compares: 123-45-6789 in PID-3 and
    123456789 in PID-19 are one SSN). Placeholders are left out."""
    found = list(cx_identifiers(pid, 3, source))
    compared = {(named.system, value) for named, value in (i.match() for i in found)}
    for identifier in (_pid_ssn(pid, source), _pid_licence(pid, source)):
        if identifier is None:
            continue
        named, value = identifier.match()
        if named.accepts(value) and (named.system, value) not in compared:
            found.append(identifier)
            compared.add((named.system, value))
    return tuple(found)


def _pid_name(pid: er7.Segment) -> dict[str, Any]:
    reps = range(len(pid.repetitions(5)))
    if not reps:
        return {}
    # XPN.7 name type L is the legal name; other repetitions are aliases, maiden names, …
    rep = next((r for r in reps if pid.value(5, 7, r).strip() == "L"), 0)
    family = pid.value(5, 1, rep)  # FN.1 surname: the partner's surname parts are not it
    given = [pid.value(5, 2, rep).strip(), *pid.value(5, 3, rep).split()]
    return _names(family, given, [pid.value(5, 4, rep)])


def _pid_birth_date(pid: er7.Segment) -> str | None:
    # The date a PID-7 starts with, even when what follows it is no valid time.
    found = er7.split_dtm(pid.value(7), prefix=True)
    if found is None:
        return None
    text = "-".join(part for part in (found.year, found.month, found.day) if part)
    return text if _valid_birth_date(text) else None


def _pid_address(pid: er7.Segment) -> tuple[str | None, str | None]:
    reps = [r for r in range(len(pid.repetitions(11))) if pid.value(11, 7, r).strip() != "BA"]
    if not reps:
        return None, None
    ranked = sorted(
        reps,
        key=lambda r: (
            _V2_ADDRESS_TYPES.index(t)
            if (t := pid.value(11, 7, r).strip()) in _V2_ADDRESS_TYPES
            else len(_V2_ADDRESS_TYPES),
            r,
        ),
    )
    rep = ranked[0]
    # XAD.1 is a SAD: street or mailing address, street name, dwelling number.
    parts = [pid.value(11, 1, rep, subcomponent=s).strip() for s in (1, 3, 2)]
    line = " ".join(part for part in parts if part)
    return pid.value(11, 5, rep).strip() or None, line or None


def _xtn_digits(pid: er7.Segment, rep: int) -> str | None:
    # XTN.6 area code + XTN.7 local number, else XTN.12 unformatted, else the old XTN.1.
    local = pid.value(13, 7, rep).strip()
    text = (
        pid.value(13, 6, rep) + local
        if local
        else pid.value(13, 12, rep).strip() or pid.value(13, 1, rep)
    )
    return normalize.phone_digits(text)


def _pid_phone(pid: er7.Segment) -> str | None:
    reps = [
        r
        for r in range(len(pid.repetitions(13)))
        if pid.value(13, 3, r).strip() not in ("Internet", "X.400", "FX", "BP")
        and pid.value(13, 2, r).strip() != "NET"
    ]
    for use in _V2_PHONE_USES:
        for rep in reps:
            digits = _xtn_digits(pid, rep)
            if pid.value(13, 2, rep).strip() == use and digits:
                return digits
    return next((d for d in (_xtn_digits(pid, r) for r in reps) if d), None)


def from_pid(pid: er7.Segment, source: str) -> Demographics:
    """The demographics of an HL7 v2 PID segment: PID-3 identifiers (CX.4 assigning
    authority as the system, CX.5 as the type), PID-19 SSN and PID-20 driver's licence
    (`pid_identifiers`), PID-5 legal name, PID-7 birth date, PID-8 sex, PID-11 home address,
    PID-13 home phone. Never raises on content."""
    postal_code, line = _pid_address(pid)
    return Demographics(
        source=source,
        identifiers=pid_identifiers(pid, source),
        **_pid_name(pid),
        birth_date=_pid_birth_date(pid),
        sex=V2_SEX.get(pid.value(8).strip().upper()),
        postal_code=postal_code,
        phone=_pid_phone(pid),
        address_line=line,
    )


def shares_identifier(a: Demographics, b: Demographics, systems: Collection[str] | None) -> bool:
    """Whether a and b carry the same value of an identifier of one of `systems` (of any
    system when None). The caller's deterministic step: an authoritative identifier, or the
    same source's own MRN, links without scoring. A placeholder (an SSN of 000-00-0000, in
    a view stored before the table said so) is no one's and links nothing."""
    shared = {i.pair for i in a.identifiers if not i.placeholder} & {
        i.pair for i in b.identifiers if not i.placeholder
    }
    if systems is None:
        return bool(shared)
    wanted = set(systems)
    return any(system in wanted for system, _ in shared)
