"""What the alerting stage stores is what it stored before it was made faster: the
assertions' JSON (one pydantic call) holds what the per-assertion model_dump(mode="json") and
orjson gave, so the stored jsonb is the same."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from builders import assertion_at
from concord.alerting.lifecycle import apply_conflict_event
from concord.alerting.store import assertions_json
from concord.events.models import Alert, Assertion, ConflictEvent

T0 = datetime(2024, 3, 1, 8, 0, tzinfo=UTC)


def _alert(n: int, *, values: tuple[str, str] = ("1980-01-01", "1980-02-02")) -> Alert:
    event = ConflictEvent(
        conflict_id=f"{n:032x}",
        revision=1,
        kind="OPENED",
        patient_id=f"E-{n}",
        attribute="Patient.birthDate",
        attribute_class="DEMOGRAPHICS",
        severity="HIGH",
        assertions=(
            assertion_at("a", values[0], T0, fact_id=f"fa-{n}"),
            assertion_at("b", values[1], T0 + timedelta(microseconds=7), fact_id=f"fb-{n}"),
        ),
        policy_version="builtin-1",
        detected_at=T0,
        trigger_received_time=T0,
    )
    record = apply_conflict_event(None, event, now=T0 + timedelta(minutes=n))
    assert record is not None
    return record.alert


def _old_assertions_json(assertions: tuple[Assertion, ...]) -> str:
    """store.assertions_json as it was."""
    return orjson.dumps([a.model_dump(mode="json") for a in assertions]).decode()


def test_assertions_json_is_what_it_was_for_the_usual_assertions() -> None:
    alert = _alert(1)
    assert assertions_json(alert.assertions) == _old_assertions_json(alert.assertions)
    assert assertions_json(list(alert.assertions)) == _old_assertions_json(alert.assertions)
    assert assertions_json(()) == "[]"


# Any text a source may send, beyond ASCII: control characters, quotes, backslashes, non-BMP.
_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)


@settings(max_examples=200, deadline=None)
@given(value=_text, display=st.none() | _text, unit=st.none() | _text, source=_text)
def test_assertions_json_holds_the_same_json_for_any_text(
    value: str, display: str | None, unit: str | None, source: str
) -> None:
    assertion = assertion_at(
        source, value, T0, fact_id=value, display=display, unit=unit, record=source
    )
    assertions = (assertion, assertion.model_copy(update={"value": None}))
    assert json.loads(assertions_json(assertions)) == json.loads(_old_assertions_json(assertions))
