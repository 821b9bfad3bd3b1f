"""The source-of-truth policy: how bad a disagreement is and whose value should stand.

Policy is data, not code: a YAML file (CONCORD_POLICY_PATH) replaces the built-in default.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field

from concord.events.models import Assertion, AttributeClass, Severity


class AttributeRule(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    severity: Severity = Field(description="Severity of a disagreement on this attribute")


class SourcePolicy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    version: str = Field(description="Recorded on every conflict event this policy decides")
    source_rank: tuple[str, ...] = Field(
        (), description="Source systems, most trusted first; unlisted sources rank last"
    )
    default_severity: Severity = "MEDIUM"
    attributes: dict[str, AttributeRule] = Field(default_factory=dict)
    compared_classes: tuple[AttributeClass, ...] = Field(
        ("DEMOGRAPHICS",),
        description="Attribute classes whose disagreements raise conflicts; the facts of the "
        "others are kept as assertions until their comparison rules exist (issue 5)",
    )

    def severity(self, attribute: str) -> Severity:
        rule = self.attributes.get(attribute)
        return rule.severity if rule else self.default_severity

    def propose(self, assertions: Sequence[Assertion]) -> tuple[str | None, str | None]:
        """The value that should stand and why: the best-ranked source, then the newest."""
        if not assertions:
            return None, None
        rank = {source: i for i, source in enumerate(self.source_rank)}
        unranked = len(rank)

        def order(a: Assertion) -> tuple[int, float]:
            return rank.get(a.source_system, unranked), -a.provenance.event_time.timestamp()

        best = min(assertions, key=order)
        if best.source_system in rank:
            why = f"{best.source_system} ranks highest among the disagreeing sources"
        else:
            why = f"no ranked source; {best.source_system} asserted most recently"
        return best.value, why


DEFAULT_POLICY = SourcePolicy(
    version="builtin-1",
    attributes={
        "Patient.birthDate": AttributeRule(severity="HIGH"),
        "Patient.gender": AttributeRule(severity="HIGH"),
        "Patient.name": AttributeRule(severity="MEDIUM"),
    },
)


def load_policy(path: Path | None) -> SourcePolicy:
    if path is None:
        return DEFAULT_POLICY
    return SourcePolicy.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
