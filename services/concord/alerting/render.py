"""How an alert is shown to a person or a script: one JSON object, or one line of text.

The line is for a reviewer: each value asserted once, with the sources asserting it, so that
sources that agree read as one side of the disagreement; when every source but one agrees,
that one is marked the odd one out. The provenance of each assertion (record, version, times,
raw offset) is in the JSON. Whatever a source sent is shown through concord.text.printable,
control characters escaped, so that one alert is always one line of a terminal or a log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from concord.conflicts.compare import MERGE_TOMBSTONE_PREFIX, UNMERGE_TOMBSTONE_PREFIX
from concord.events.models import Alert, Assertion
from concord.text import printable

ODD_ONE_OUT = "odd one out"


def alert_json(alert: Alert) -> dict[str, Any]:
    return {
        "id": alert.alert_id,
        "revision": alert.revision,
        "kind": alert.kind,
        "status": alert.status,
        "severity": alert.severity,
        "patient_id": alert.patient_id,
        "attribute": alert.attribute,
        "attribute_class": alert.attribute_class,
        "proposed_value": alert.proposed_value,
        "proposed_reason": alert.proposed_reason,
        "opened_at": alert.opened_at.isoformat(),
        "updated_at": alert.updated_at.isoformat(),
        "resolved_at": alert.resolved_at.isoformat() if alert.resolved_at else None,
        "assertions": [
            {
                "source": a.source_system,
                "value": a.value,
                "display": a.display,
                "status": a.status,
                "event_time": a.provenance.event_time.isoformat(),
                "source_record_id": a.provenance.source_record_id,
                "source_record_version": a.provenance.source_record_version,
                "received_time": a.provenance.received_time.isoformat(),
                "raw": f"{a.provenance.raw_topic}[{a.provenance.raw_partition}]"
                f"@{a.provenance.raw_offset}",
            }
            for a in alert.assertions
        ],
    }


# What an assertion says, as grouped: sources whose keys are equal say the same thing.
_Key = tuple[str | None, ...]
_MOVED: _Key = ("moved",)


@dataclass
class Side:
    """One side of the alert: what one or more sources say, and which sources."""

    key: _Key
    labels: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    note: str | None = None

    def show(self) -> str:
        who = ", ".join(printable(s) for s in self.sources)
        note = f", {self.note}" if self.note else ""
        return f"{' / '.join(self.labels)} ({who}{note})"


def _said(assertion: Assertion) -> tuple[_Key, str]:
    """The grouping key of what the assertion says, and how it reads."""
    if assertion.fact_id.startswith(MERGE_TOMBSTONE_PREFIX):
        return _MOVED, "moved by a merge"
    if assertion.fact_id.startswith(UNMERGE_TOMBSTONE_PREFIX):
        return _MOVED, "moved by an unmerge"
    if assertion.status != "ASSERTED":
        return ("status", assertion.status), assertion.status.lower().replace("_", " ")
    if assertion.value is None:
        return ("value", None, assertion.unit), "no value"
    label = printable(assertion.display or assertion.value)
    if assertion.unit:
        label = f"{label} {printable(assertion.unit)}"
    return ("value", assertion.value, assertion.unit), label


def sides(alert: Alert) -> list[Side]:
    """What the sources say, one side per distinct statement: most sources first, then in
    source order (assertions are sorted by source). When every source but one agrees (three
    or more, leaving out assertions a merge moved away), a conflict's lone source is the odd
    one out."""
    by_key: dict[_Key, Side] = {}
    for assertion in alert.assertions:
        key, label = _said(assertion)
        side = by_key.setdefault(key, Side(key))
        if label not in side.labels:
            side.labels.append(label)
        side.sources.append(assertion.source_system)
    ordered = sorted(by_key.values(), key=lambda s: -len(s.sources))
    # Assertions moved to another patient by a merge say nothing about this one.
    speaking = [side for side in ordered if side.key != _MOVED]
    if (
        alert.kind == "CONFLICT"
        and len(speaking) == 2
        and len(speaking[0].sources) >= 2
        and len(speaking[1].sources) == 1
    ):
        speaking[1].note = ODD_ONE_OUT
    return ordered


def _outcome(alert: Alert, said: list[Side]) -> str:
    """The policy's proposal (or a reviewer's decision) and why, as the line ends it."""
    reason = f" ({printable(alert.proposed_reason)})" if alert.proposed_reason else ""
    if alert.proposed_value is None:
        return f"; {printable(alert.proposed_reason)}" if alert.proposed_reason else ""
    shown = next(
        (
            " / ".join(side.labels)
            for side in said
            if side.key[:2] == ("value", alert.proposed_value)
        ),
        printable(alert.proposed_value),
    )
    verb = "decided" if alert.status == "RESOLVED" else "proposed"
    return f"; {verb} {shown}{reason}"


def alert_line(alert: Alert) -> str:
    said = sides(alert)
    stale = f" (stale at {printable(alert.stale_source)})" if alert.stale_source else ""
    return (
        f"{alert.updated_at:%H:%M:%S} {alert.status:<8} {alert.severity:<6} "
        f"{printable(alert.patient_id)} {printable(alert.attribute)}{stale}: "
        f"{' vs '.join(side.show() for side in said)}{_outcome(alert, said)}  "
        f"[{alert.alert_id[:12]} r{alert.revision}]"
    )
