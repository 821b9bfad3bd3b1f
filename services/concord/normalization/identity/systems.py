"""Identifier systems across formats: which FHIR system URIs, HL7 v2 assigning authorities
(CX.4 namespace id or OID) and identifier types name one system, whether one person holds
one value of it, and which values of it are placeholders rather than anyone's (an SSN of
000-00-0000). Like FHIR's NamingSystem; the table is data (data/identifier_systems.yaml,
or a site's own file), and the matcher compares identifiers by the system it names."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

_OID_PREFIX = "urn:oid:"
_SEPARATORS = re.compile(r"[\s\-]")


class NamingError(ValueError):
    """The identifier systems file cannot be used; the message names the file and the entry."""


class SystemEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    system: str = Field(min_length=1)
    name: str = Field(min_length=1)
    aliases: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    unique: bool = False
    # What a value that can be someone's looks like (a regular expression the whole value,
    # as compared, must match), and values that look like one but are no one's.
    pattern: str | None = None
    placeholders: tuple[str, ...] = ()

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as error:
                raise ValueError(f"not a regular expression ({error})") from None
        return value


class NamingFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    version: str
    systems: tuple[SystemEntry, ...] = ()
    uri_templates: tuple[str, ...] = ()


@dataclass(frozen=True)
class MatchSystem:
    """The system an identifier is compared by; whether the table names it (its values then
    compare without blanks and dashes), whether one person holds one value of it, and
    which of its values are someone's (`accepts`)."""

    system: str
    named: bool = False
    unique: bool = False
    pattern: re.Pattern[str] | None = None
    placeholders: frozenset[str] = frozenset()

    @classmethod
    def of(cls, entry: SystemEntry) -> MatchSystem:
        return cls(
            entry.system,
            named=True,
            unique=entry.unique,
            pattern=re.compile(entry.pattern) if entry.pattern is not None else None,
            placeholders=frozenset(map(compared_value, entry.placeholders)),
        )

    def accepts(self, value: str) -> bool:
        """Whether `value` (as compared, see `compared_value`) can be a person's identifier:
        not a placeholder ("unknown" written as 000-00-0000), so that it neither links two
        people who share it nor sets apart two records of one person. Values of a system
        the table does not name are taken as they are."""
        if not self.named:
            return True
        if value in self.placeholders:
            return False
        return self.pattern is None or self.pattern.fullmatch(value) is not None


def compared_value(value: str) -> str:
    """A value of a named system as compared: without blanks and dashes, upper case
    (123-45-6789 and 123456789 are one SSN)."""
    return _SEPARATORS.sub("", value).upper()


def alias_key(name: str) -> str:
    """urn:oid:X and X are one name; case and surrounding blanks do not matter."""
    key = name.strip().lower()
    return key[len(_OID_PREFIX) :] if key.startswith(_OID_PREFIX) else key


def _template_pattern(template: str) -> re.Pattern[str]:
    if template.count("{namespace}") != 1:
        raise NamingError(f"uri template {template!r} must hold {{namespace}} once")
    before, after = template.split("{namespace}")
    return re.compile(f"{re.escape(before)}(?P<namespace>[^/]+){re.escape(after)}", re.I)


@dataclass(frozen=True)
class IdentifierSystems:
    version: str
    by_alias: Mapping[str, SystemEntry]
    by_type: Mapping[str, SystemEntry]
    templates: tuple[re.Pattern[str], ...] = field(default=())
    # Each entry's MatchSystem, by its system: built once, shared by every identifier.
    matched: Mapping[str, MatchSystem] = field(default_factory=dict)

    @classmethod
    def from_file(cls, content: NamingFile) -> IdentifierSystems:
        by_alias: dict[str, SystemEntry] = {}
        by_type: dict[str, SystemEntry] = {}
        for entry in content.systems:
            for alias in (entry.system, *entry.aliases):
                taken = by_alias.setdefault(alias_key(alias), entry)
                if taken is not entry:
                    raise NamingError(f"{alias!r} names both {taken.system} and {entry.system}")
            for type_code in entry.types:
                taken = by_type.setdefault(type_code.upper(), entry)
                if taken is not entry:
                    raise NamingError(f"type {type_code} names {taken.system} and {entry.system}")
        templates = tuple(_template_pattern(t) for t in content.uri_templates)
        matched = {entry.system: MatchSystem.of(entry) for entry in content.systems}
        return cls(content.version, by_alias, by_type, templates, matched)

    @classmethod
    def load(cls, path: Path | None = None) -> IdentifierSystems:
        """A site's file, or the built-in table."""
        if path is None:
            return default_systems()
        return cls.parse(path.read_text(encoding="utf-8"), str(path))

    @classmethod
    def parse(cls, text: str, where: str) -> IdentifierSystems:
        try:
            data: Any = yaml.safe_load(text)
            return cls.from_file(NamingFile.model_validate(data))
        except yaml.YAMLError as error:
            raise NamingError(f"{where}: not YAML ({error.__class__.__name__})") from None
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()
            )
            raise NamingError(f"{where}: {problems}") from None
        except NamingError as error:
            raise NamingError(f"{where}: {error}") from None

    def match_system(self, system: str, type_code: str | None = None) -> MatchSystem:
        """The system `system` (a URI, an OID or a CX.4 namespace id) is compared by: a named
        alias's, else the namespace a URI template reads from it, else a type that names a
        system by itself (SS), else the system as written (an OID without urn:oid:)."""
        entry = self.by_alias.get(alias_key(system))
        if entry is None:
            namespace = self._namespace(system)
            if namespace is not None:
                entry = self.by_alias.get(alias_key(namespace))
                system = namespace
        if entry is None and type_code:
            entry = self.by_type.get(type_code.strip().upper())
        if entry is not None:
            return self.matched.get(entry.system) or MatchSystem.of(entry)
        stripped = system.strip()
        if stripped.lower().startswith(_OID_PREFIX):
            stripped = stripped[len(_OID_PREFIX) :]
        return MatchSystem(stripped)

    def system_of_type(self, type_code: str) -> str | None:
        """The system an identifier type names by itself (SS → the SSN's), if the table
        says: what a field that holds only one type of identifier (PID-19) is read as."""
        entry = self.by_type.get(type_code.strip().upper())
        return entry.system if entry is not None else None

    def _namespace(self, system: str) -> str | None:
        for template in self.templates:
            found = template.fullmatch(system.strip())
            if found:
                return found["namespace"]
        return None

    def unique_systems(self) -> Iterable[str]:
        return sorted({e.system for e in self.by_alias.values() if e.unique})


_active: list[IdentifierSystems] = []


def active() -> IdentifierSystems:
    """The table the matcher uses: the site's (see `configure`), else the built-in one."""
    return _active[0] if _active else default_systems()


def configure(table: IdentifierSystems | None) -> None:
    """Set the site's table once at start (the normalization worker, from its settings);
    None goes back to the built-in one. A module-level setting, because match keys are
    computed inside the Demographics model, which every part of identity shares."""
    _active[:] = [] if table is None else [table]


@cache
def default_systems() -> IdentifierSystems:
    text = (
        resources.files("concord.normalization")
        .joinpath("data/identifier_systems.yaml")
        .read_text(encoding="utf-8")
    )
    return IdentifierSystems.parse(text, "identifier_systems.yaml")
