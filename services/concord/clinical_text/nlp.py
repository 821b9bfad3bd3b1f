"""The medspaCy pipeline text is read with, built from the rules file.

A blank English spaCy pipeline (no model to download) with medspaCy's clinical tokenizer;
sentences end at line breaks as well as at . ; ? ! (reports are written a finding a line,
often without a full stop, and ConText's scope must not cross a line); medspaCy's target
matcher finds the rules' phrases, its ConText component decides each mention's assertion
with its default modifiers plus the rules', and its sectionizer names each mention's
section (a family-history section makes a mention the family's, a past history historical).
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path
from typing import Any

import medspacy  # (importing it registers medSpaCy's pipeline components with spaCy)
import spacy
from medspacy.context import ConTextRule
from medspacy.custom_tokenizer import create_medspacy_tokenizer
from medspacy.section_detection import SectionRule
from medspacy.target_matcher import TargetRule
from spacy.language import Language
from spacy.tokens import Doc

from concord.clinical_text.rules import ContextRule as ContextRuleSpec
from concord.clinical_text.rules import TextRules

# PyRuSH, which medspaCy imports, logs each sentence's tokens through loguru at DEBUG level:
# document text (PHI) in the logs. Concord does not use PyRuSH; silence it all the same.
try:
    from loguru import logger as _loguru

    _loguru.disable("PyRuSH")
except ImportError:  # pragma: no cover - loguru comes with PyRuSH
    pass
logging.getLogger("medspacy").setLevel(logging.WARNING)
# medSpaCy's components keep a regex matcher each, empty with Concord's rules; spaCy warns
# of an empty matcher on every document it reads.
warnings.filterwarnings("ignore", message=r"\[W036\]", category=UserWarning)

# Where medSpaCy keeps its English rules (a folder beside the package, not in it).
_MEDSPACY_RESOURCES = Path(medspacy.__file__).resolve().parents[1] / "resources" / "en"
_SENTENCE_ENDS = frozenset({".", ";", "?", "!"})
# Labels of the target matcher's entities.
CANCER = "CANCER"
HISTOLOGY = "HISTOLOGY"
SITE = "SITE"
NODAL = "NODAL"
METASTASIS = "METASTASIS"
STAGE = "STAGE"
TNM = "TNM"
BIOMARKER = "BIOMARKER"
ISH = "ISH"
STATUS = "STATUS"

_STAGE_VALUE = r"^(?i:0|i{1,3}|iv|[1-4])(?i:[a-c][1-3]?)?$"
# One TNM category or several run together: (y)(c|p) T.. N.. M.., as AJCC writes them.
TNM_TOKEN = re.compile(
    r"^(?=\S*[TNM](?:is|[0-4X]))(?:y|r|a)?(?:[cp])?(T(?:is|[0-4X])[a-d]?(?:\((?:m|sn|\d+)\))?)?"
    r"(?:y?[cp])?(N[0-3X][a-c]?(?:\((?:sn|mi|i[+-]|\d+/\d+)\))?)?(?:y?[cp])?(M[01X][a-d]?)?$"
)


@Language.component("concord_lines")
def _lines(doc: Doc) -> Doc:
    for i, token in enumerate(doc):
        if i == 0:
            token.is_sent_start = True
            continue
        previous = doc[i - 1]
        token.is_sent_start = (
            "\n" in previous.text_with_ws or previous.text in _SENTENCE_ENDS or previous.is_space
        )
    return doc


def build_pipeline(rules: TextRules) -> Language:
    nlp = spacy.blank("en")
    nlp.tokenizer = create_medspacy_tokenizer(nlp)
    nlp.add_pipe("concord_lines")
    # medSpaCy's components are untyped: add_pipe says only that each is a callable.
    matcher: Any = nlp.add_pipe("medspacy_target_matcher")
    matcher.add(_target_rules(rules))
    context: Any = nlp.add_pipe("medspacy_context", config={"rules": None})
    defaults = ConTextRule.from_json(str(_MEDSPACY_RESOURCES / "context_rules.json"))
    context.add([r for r in defaults if r.literal not in rules.context_dropped])
    context.add([_context_rule(r) for r in rules.context])
    sectionizer: Any = nlp.add_pipe("medspacy_sectionizer")
    sectionizer.add([SectionRule(r.literal, r.category) for r in rules.sections])
    return nlp


def _context_rule(rule: ContextRuleSpec) -> ConTextRule:
    pattern = [dict(token) for token in rule.pattern] if rule.pattern else None
    return ConTextRule(
        rule.literal,
        rule.category,
        pattern=pattern,
        direction=rule.direction,
        max_scope=rule.max_scope,
    )


def _phrase(literal: str, category: str, **meta: Any) -> TargetRule:
    return TargetRule(literal, category, metadata=meta)


def _target_rules(rules: TextRules) -> list[TargetRule]:
    # A word may name a primary site and a metastatic one (liver, lung): one rule says both.
    sites: dict[str, dict[str, str]] = {}
    for code, words in rules.sites.items():
        for word in (*words.nouns, *words.adjectives):
            sites.setdefault(word, {})["site"] = code
    for code, metastatic_words in rules.metastatic_sites.items():
        for word in metastatic_words:
            sites.setdefault(word, {})["metastatic_site"] = code
    found = [_phrase(word, SITE, **meta) for word, meta in sites.items()]
    for code, histology in rules.histologies.items():
        found += [
            _phrase(p, HISTOLOGY, histology=code, site=histology.site) for p in histology.phrases
        ]
    for code, words in rules.sites.items():
        found += [
            _phrase(f"{word} {noun}", CANCER, site=code)
            for word in (*words.nouns, *words.adjectives)
            for noun in rules.primary_nouns
        ]
    weak = set(rules.weak_cancer_nouns)
    found += [_phrase(n, CANCER, weak=n in weak) for n in rules.cancer_nouns]
    found += [_phrase(w, NODAL) for w in rules.nodal_words]
    found += [_phrase(p, METASTASIS) for p in rules.metastasis_phrases]
    for marker, names in rules.biomarkers.items():
        found += [_phrase(n, BIOMARKER, marker=marker) for n in names]
    found += [_phrase(w, ISH) for w in rules.ish_words]
    for status, phrases in rules.disease_status.items():
        found += [_phrase(p, STATUS, status=status) for p in phrases]
    stage = [
        {"LOWER": {"IN": ["stage", "stages"]}},
        {
            "LOWER": {"IN": ["group", "grouping", ":", "-", "ajcc", "clinical", "pathologic"]},
            "OP": "*",
        },
        {"TEXT": {"REGEX": _STAGE_VALUE}},
    ]
    found.append(TargetRule("stage", STAGE, pattern=stage))
    found.append(TargetRule("tnm", TNM, pattern=[{"TEXT": {"REGEX": TNM_TOKEN.pattern}}]))
    # "(T3 N1a M0)": the categories written apart, T then N, and M when given.
    spaced = [
        {"TEXT": {"REGEX": r"^(?:y?[cp])?T(?:is|[0-4X])[a-d]?$"}},
        {"TEXT": {"REGEX": r"^(?:y?[cp])?N[0-3X][a-c]?$"}},
        {"TEXT": {"REGEX": r"^(?:y?[cp])?M[01X][a-d]?$"}, "OP": "?"},
    ]
    found.append(TargetRule("tnm (spaced)", TNM, pattern=spaced))
    return found
