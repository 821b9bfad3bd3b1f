"""The source-of-truth policy: per attribute class, how values compare, whose value should
stand, how bad a disagreement is, and how old an assertion may grow.

Policy is data, not code: a YAML file (CONCORD_POLICY_PATH) replaces the built-in default.
A class the policy does not list is not compared: its facts are kept as assertions, and
nothing is raised about them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from fnmatch import fnmatchcase
from importlib import resources
from pathlib import Path
from typing import Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from concord.conflicts.derive import Derivation
from concord.conflicts.policy_file import PolicyError as PolicyError
from concord.conflicts.policy_file import unreadable, validate_document
from concord.events.models import Assertion, AttributeClass, Severity
from concord.topics import RAW_CLAIMS

# How two sources' values of one attribute compare:
# - exact: the normalized values are equal (demographics; codes already mapped to a standard);
# - code: equal after the crosswalks (the fact's key holds the standard code, its value the
#   status or the code the source used, compared as is);
# - numeric: numbers within the tolerance (values are already in the canonical unit);
# - status: what is asserted about the thing (active, resolved, refuted, entered in error):
#   an allergy active in one source and refuted in another disagree.
Compare = Literal["exact", "code", "numeric", "status"]


class Tolerance(BaseModel):
    """How far two numbers may be apart and still agree: the larger of the two bounds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    absolute: float | None = Field(None, ge=0, description="In the canonical unit")
    relative: float | None = Field(
        None, ge=0, le=1, description="A fraction of the larger magnitude, e.g. 0.05 for 5%"
    )

    @model_validator(mode="after")
    def _one_bound(self) -> Tolerance:
        if self.absolute is None and self.relative is None:
            raise ValueError("a tolerance needs `absolute`, `relative` or both")
        return self

    def agree(self, a: float, b: float) -> bool:
        bound = max(self.absolute or 0.0, (self.relative or 0.0) * max(abs(a), abs(b)))
        return abs(a - b) <= bound


Evidence = Literal["result", "record", "claim", "pathology-text", "note-text"]
EVIDENCE_NAMES: dict[str, str] = {
    "result": "pathology or laboratory result",
    "record": "clinical record",
    "claim": "claim",
    "pathology-text": "pathology report's text",
    "note-text": "clinical note's text",
}
_RESULT_RECORDS = ("Observation/", "DiagnosticReport/", "ORU", "OUL", "MDM")


def evidence_of(assertion: Assertion) -> Evidence:
    """What kind of evidence an assertion rests on, from the record it came from: a claim
    line, a result (an Observation, a DiagnosticReport, an HL7 v2 result message), a
    clinical record (anything else: a Condition, an ADT message), or the text of a pathology
    report or a clinical note (a fact the narrative worker read)."""
    provenance = assertion.provenance
    if provenance.text is not None:  # read from text: the text's own class
        return "pathology-text" if provenance.text.kind == "pathology-text" else "note-text"
    if provenance.raw_topic == RAW_CLAIMS:
        return "claim"
    if provenance.source_record_id.startswith(_RESULT_RECORDS):
        return "result"
    return "record"


class ClassRule(BaseModel):
    """What the policy says about one attribute class."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    compare: Compare = Field("exact", description="How values compare")
    severity: Severity = Field("MEDIUM", description="Severity of a disagreement")
    source_rank: tuple[str, ...] | None = Field(
        None, description="Sources most trusted first for this class; the policy's when unset"
    )
    evidence_rank: tuple[Evidence, ...] | None = Field(
        None,
        description="Kinds of evidence most trusted first (result: a pathology or laboratory "
        "report; record: a clinical record such as a Condition or an ADT message; claim: a "
        "claim line; pathology-text, note-text: what was read from a pathology report's or a "
        "clinical note's text), for sources the ranking does not tell apart",
    )
    tolerance: Tolerance | None = Field(None, description="For `numeric`: how far apart agree")
    specimen_window: timedelta | None = Field(
        None,
        description="For results: two sources' values are of the same specimen (and compared) "
        "only when their effective times are at most this far apart",
    )
    max_age: timedelta | None = Field(
        None,
        description="An assertion older than this, while another source holds a newer, "
        "different one, is stale",
    )
    reconfirm_within: timedelta | None = Field(
        None,
        description="An active assertion not confirmed again within this window is stale "
        "(e.g. an active medication list)",
    )
    suppress_for: timedelta = Field(
        timedelta(0),
        description="A disagreement is raised only once it has lasted this long: sources "
        "updating one after the other within the window raise nothing",
    )

    @model_validator(mode="after")
    def _numeric_needs_tolerance(self) -> ClassRule:
        if self.compare == "numeric" and self.tolerance is None:
            raise ValueError("`compare: numeric` needs a `tolerance` (absolute: 0 for exact)")
        return self


class AttributeRule(BaseModel):
    """Overrides for one attribute key (`Observation/2345-7`) or a pattern of keys
    (`Observation/*`, `Medication/*/dose`: a dose compares as a number, not as a status)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    compare: Compare | None = None
    severity: Severity | None = None
    source_rank: tuple[str, ...] | None = None
    evidence_rank: tuple[Evidence, ...] | None = None
    tolerance: Tolerance | None = None
    specimen_window: timedelta | None = None
    max_age: timedelta | None = None
    reconfirm_within: timedelta | None = None
    suppress_for: timedelta | None = None

    @model_validator(mode="after")
    def _numeric_needs_tolerance(self) -> AttributeRule:
        if self.compare == "numeric" and self.tolerance is None:
            raise ValueError("`compare: numeric` needs a `tolerance` (absolute: 0 for exact)")
        return self


def _demographics_only() -> dict[AttributeClass, ClassRule]:
    return {"DEMOGRAPHICS": ClassRule(compare="exact")}


class TextRule(BaseModel):
    """How facts read from clinical text are admitted (the narrative worker)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_confidence: float = Field(
        0.7,
        ge=0,
        le=1,
        description="A finding read from text with a lower confidence (a possible one: "
        "'cannot rule out'; one a document contradicts) becomes a review task, not a fact",
    )


class SourcePolicy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    version: str = Field(description="Recorded on every conflict event this policy decides")
    source_rank: tuple[str, ...] = Field(
        (), description="Source systems, most trusted first; unlisted sources rank last"
    )
    default_severity: Severity = Field(
        "MEDIUM", description="Severity of a class listed without one"
    )
    classes: dict[AttributeClass, ClassRule] = Field(
        default_factory=_demographics_only,
        description="The attribute classes compared, and how; a class not listed raises nothing",
    )
    attributes: dict[str, AttributeRule] = Field(
        default_factory=dict,
        description="Overrides per attribute key, or per pattern of keys with `*`; the "
        "longest matching pattern wins",
    )
    # Rules per (attribute, class), merged once: evaluation asks for one per changed fact.
    _rules: dict[tuple[str, str], ClassRule | None] = PrivateAttr(default_factory=dict)
    _rules_of: int = PrivateAttr(0)
    derived: tuple[Derivation, ...] = Field(
        (),
        description="Attributes implied by other facts (metastatic status from a C78 claim or "
        "a stage IV Condition), compared like the facts sources send",
    )
    text: TextRule = Field(
        default_factory=TextRule, description="Facts read from clinical text (issue 18)"
    )

    @property
    def compared_classes(self) -> tuple[AttributeClass, ...]:
        return tuple(self.classes)

    def rule(self, attribute: str, attribute_class: AttributeClass) -> ClassRule | None:
        """The class's rule with the attribute's overrides; None when the class is not
        compared."""
        key = (attribute, attribute_class)
        # Read through the private attributes' dict: each `self._rules` goes through
        # BaseModel.__getattr__ (~2 µs; evaluation asks twice per changed attribute).
        private = cast(dict[str, Any], self.__pydantic_private__)
        if private["_rules_of"] != id(self):  # a model_copy shares the dict: never trust it
            private["_rules"] = {}
            private["_rules_of"] = id(self)
        rules: dict[tuple[str, str], ClassRule | None] = private["_rules"]
        if key not in rules:
            rules[key] = self._rule(attribute, attribute_class)
        return rules[key]

    def _rule(self, attribute: str, attribute_class: AttributeClass) -> ClassRule | None:
        base = self.classes.get(attribute_class)
        if base is None:
            return None
        override = self._override(attribute)
        if override is None:
            return base
        # A field the override names replaces the class's, even with null: `reconfirm_within:
        # null` exempts an attribute from a reconfirmation its class asks for.
        changes = {name: getattr(override, name) for name in override.model_fields_set}
        # Validated again: an override may turn the class's comparison into one that needs more
        # (numeric needs a tolerance).
        return ClassRule.model_validate({**dict(base), **changes})

    def _override(self, attribute: str) -> AttributeRule | None:
        if attribute in self.attributes:
            return self.attributes[attribute]
        patterns = [key for key in self.attributes if "*" in key and fnmatchcase(attribute, key)]
        return self.attributes[max(patterns, key=len)] if patterns else None

    def severity(
        self, attribute: str, attribute_class: AttributeClass = "DEMOGRAPHICS"
    ) -> Severity:
        override = self._override(attribute)
        if override is not None and override.severity is not None:
            return override.severity
        base = self.classes.get(attribute_class)
        if base is not None and "severity" in base.model_fields_set:
            return base.severity
        return self.default_severity

    def propose(
        self, assertions: Sequence[Assertion], rule: ClassRule | None = None
    ) -> tuple[str | None, str | None]:
        """The value that should stand and why: the best-ranked source (by the rule's ranking,
        else the policy's), then the newest."""
        if not assertions:
            return None, None
        ranking = rule.source_rank if rule is not None and rule.source_rank else self.source_rank
        rank = {source: i for i, source in enumerate(ranking)}
        unranked = len(rank)
        kinds = {kind: i for i, kind in enumerate(rule.evidence_rank or ())} if rule else {}

        def order(a: Assertion) -> tuple[int, int, float]:
            return (
                rank.get(a.source_system, unranked),
                kinds.get(evidence_of(a), len(kinds)),
                -a.provenance.event_time.timestamp(),
            )

        best = min(assertions, key=order)
        # The sources the ranking does not tell from the best one (all of them, unranked).
        peers = [a for a in assertions if order(a)[0] == order(best)[0]]
        other_kinds = {evidence_of(a) for a in peers} - {evidence_of(best)}
        if kinds and other_kinds:
            outranked = " and ".join(
                EVIDENCE_NAMES[k]
                for k in sorted(other_kinds, key=lambda k: kinds.get(k, len(kinds)))
            )
            why = (
                f"{best.source_system}'s {EVIDENCE_NAMES[evidence_of(best)]} outranks a {outranked}"
            )
        elif best.source_system in rank:
            why = f"{best.source_system} ranks highest among the disagreeing sources"
        else:
            why = f"no ranked source; {best.source_system} asserted most recently"
        return best.value, why


def load_policy(path: Path | None) -> SourcePolicy:
    """The policy in the YAML file at `path`, or the built-in one when there is none.

    Raises PolicyError, naming the file and line of every problem."""
    if path is None:
        return DEFAULT_POLICY
    try:
        document = path.read_bytes()
    except OSError as exc:
        raise unreadable(str(path), exc) from exc
    return parse_policy(document, str(path))


def parse_policy(document: str | bytes, source: str = "policy.yaml") -> SourcePolicy:
    """A policy from YAML text; `source` names it in error messages (`source:LINE: ...`)."""
    return validate_document(SourcePolicy, document, source)


# The built-in policy, from the packaged file compose also mounts: one text for both.
DEFAULT_POLICY = parse_policy(
    resources.files("concord.conflicts").joinpath("default_policy.yaml").read_bytes(),
    "default_policy.yaml",
)
