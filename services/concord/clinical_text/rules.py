"""The oncology text rules file (data/oncology_text_rules.yaml), read and checked once."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

Direction = Literal["FORWARD", "BACKWARD", "BIDIRECTIONAL", "TERMINATE", "PSEUDO"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SiteWords(_Frozen):
    nouns: tuple[str, ...]
    adjectives: tuple[str, ...] = ()


class Histology(_Frozen):
    phrases: tuple[str, ...]
    site: str | None = Field(None, description="The ICD-10-CM category the type belongs to")


class ContextRule(_Frozen):
    literal: str
    category: str
    direction: Direction = "BIDIRECTIONAL"
    # A spaCy token pattern, where the literal's words alone would match too much.
    pattern: tuple[dict[str, Any], ...] | None = None
    # How many tokens it reaches (its whole sentence when unset).
    max_scope: int | None = None


class SectionRule(_Frozen):
    literal: str
    category: str


class Confidence(_Frozen):
    affirmed: float
    weak: float
    possible: float
    contradicted: float


class TextRules(_Frozen):
    version: str
    sites: dict[str, SiteWords]
    cancer_nouns: tuple[str, ...]
    weak_cancer_nouns: tuple[str, ...]
    primary_nouns: tuple[str, ...]
    histologies: dict[str, Histology]
    metastatic_sites: dict[str, tuple[str, ...]]
    nodal_words: tuple[str, ...]
    metastasis_phrases: tuple[str, ...]
    unambiguous_biomarkers: frozenset[str]
    biomarkers: dict[str, tuple[str, ...]]
    ish_words: tuple[str, ...]
    disease_status: dict[str, tuple[str, ...]]
    context_dropped: frozenset[str]
    context: tuple[ContextRule, ...]
    sections: tuple[SectionRule, ...]
    unasserting_sections: frozenset[str]
    confidence: Confidence


def parse_rules(document: dict[str, Any]) -> TextRules:
    return TextRules.model_validate(document)


@cache
def default_rules() -> TextRules:
    text = resources.files("concord.clinical_text").joinpath("data/oncology_text_rules.yaml")
    return parse_rules(yaml.safe_load(text.read_text(encoding="utf-8")))
