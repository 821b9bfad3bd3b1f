"""Attributes the policy derives from several codes, pure: what a fact implies besides itself.

A claim coded C78.00 (secondary malignant neoplasm of lung) says the patient's cancer is
metastatic; an EHR Condition staged I says it is not. Neither asserts `Oncology.metastatic`
in those words, so the policy defines derived attributes: each derivation names the facts
that imply it (attribute-key patterns, optionally value patterns) and the value they imply.
The derived fact belongs to the same source, patient, event time and provenance as the fact
it comes from, so it is compared, superseded and moved by merges like any other.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from fnmatch import fnmatchcase
from functools import lru_cache

from pydantic import BaseModel, ConfigDict, Field, model_validator

from concord.events.models import AttributeClass, ClinicalFact


class FactPattern(BaseModel):
    """Facts that imply a derivation: attribute keys matching `attribute` (shell-style
    pattern: `Condition/C78*`: standard codes key bare), and, when `values` is
    given, a value matching one of its patterns."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    attribute: str = Field(min_length=1)
    values: tuple[str, ...] = ()

    def matches(self, fact: ClinicalFact) -> bool:
        if not _matches(fact.attribute, self.attribute):
            return False
        if not self.values:
            return True
        return fact.value is not None and any(_matches(fact.value, v) for v in self.values)


# Every fact is tried against every pattern of every derivation; attribute keys repeat, so
# each (key, pattern) is decided once.
@lru_cache(maxsize=65_536)
def _matches(text: str, pattern: str) -> bool:
    return fnmatchcase(text, pattern)


class Derivation(BaseModel):
    """One derived attribute value: `attribute` takes `value` (or the implying fact's value
    through `value_map`) when a fact matches any of `when`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    attribute: str = Field(min_length=1, description="The derived attribute key")
    attribute_class: AttributeClass = "ONCOLOGY"
    value: str | None = Field(None, description="The value implied")
    value_map: dict[str, str] = Field(
        default_factory=dict, description="The implying fact's value → the value implied"
    )
    when: tuple[FactPattern, ...] = Field(min_length=1, description="Facts that imply it")

    @model_validator(mode="after")
    def _one_value(self) -> Derivation:
        if (self.value is None) == (not self.value_map):
            raise ValueError("a derivation needs either `value` or `value_map`, not both")
        return self

    def implied(self, fact: ClinicalFact) -> str | None:
        if not any(pattern.matches(fact) for pattern in self.when):
            return None
        if self.value is not None:
            return self.value
        return self.value_map.get(fact.value or "")


def derive(fact: ClinicalFact, derivations: Sequence[Derivation]) -> list[ClinicalFact]:
    """The derived facts a fact implies, one per derived attribute (the first derivation of an
    attribute that the fact matches decides its value)."""
    derived: dict[str, ClinicalFact] = {}
    for derivation in _for_attribute(derivations, fact.attribute):
        if derivation.attribute in derived or derivation.attribute == fact.attribute:
            continue
        value = derivation.implied(fact)
        if value is None:
            continue
        identity = f"{fact.fact_id}\x1f{derivation.attribute}"
        derived[derivation.attribute] = ClinicalFact(
            fact_id=hashlib.sha256(identity.encode()).hexdigest()[:32],
            patient_id=fact.patient_id,
            attribute=derivation.attribute,
            attribute_class=derivation.attribute_class,
            value=value,
            display=f"derived from {fact.attribute}",
            # A withdrawn or refuted diagnosis withdraws what it implied.
            status=fact.status,
            provenance=fact.provenance,
            record_id=fact.record_id,
            effective_time=fact.effective_time,
            subject=fact.subject,
        )
    return list(derived.values())


# The derivations a fact's attribute key can match, per derivation list (the policy's: one
# list until a reload replaces it). The entry holds the list, so its id stays its own.
_BY_ATTRIBUTE: dict[int, tuple[Sequence[Derivation], dict[str, tuple[Derivation, ...]]]] = {}
_MAX_LISTS, _MAX_KEYS = 8, 65_536


def _for_attribute(derivations: Sequence[Derivation], attribute: str) -> tuple[Derivation, ...]:
    entry = _BY_ATTRIBUTE.get(id(derivations))
    if entry is None or entry[0] is not derivations:
        if len(_BY_ATTRIBUTE) >= _MAX_LISTS:
            _BY_ATTRIBUTE.clear()
        entry = _BY_ATTRIBUTE[id(derivations)] = (derivations, {})
    by_attribute = entry[1]
    found = by_attribute.get(attribute)
    if found is None:
        found = tuple(
            d for d in derivations if any(_matches(attribute, p.attribute) for p in d.when)
        )
        if len(by_attribute) < _MAX_KEYS:
            by_attribute[attribute] = found
    return found
