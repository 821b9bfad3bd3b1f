"""How an alert is shown to a person or a script: one JSON object, or one line of text."""

from __future__ import annotations

from typing import Any

from concord.events.models import Alert


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


def _printable(text: object) -> str:
    """Control characters escaped, so one alert is always one line of a terminal or log."""
    value = str(text)
    return value if value.isprintable() else value.encode("unicode_escape").decode("ascii")


def alert_line(alert: Alert) -> str:
    said = "  vs  ".join(
        f"{_printable(a.source_system)}={_printable(a.display or a.value)} "
        f"({_printable(a.provenance.source_record_id)}"
        f" v{_printable(a.provenance.source_record_version or '?')}, "
        f"{a.provenance.event_time:%Y-%m-%d})"
        for a in alert.assertions
    )
    stale = f" (stale at {_printable(alert.stale_source)})" if alert.stale_source else ""
    return (
        f"{alert.updated_at:%H:%M:%S} {alert.status:<8} {alert.severity:<6} "
        f"{_printable(alert.patient_id)} {_printable(alert.attribute)}{stale}: {said}  "
        f"[{alert.alert_id[:12]} r{alert.revision}]"
    )
