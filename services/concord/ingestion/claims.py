"""Claim-line ingestion, pure: raw bytes in, one IngestedRecord or a Rejection out.

A line is checked against schemas/raw/claim-line.schema.json (the documented format,
docs/claims.md), then against the rules a schema cannot express: service dates in order,
diagnosis sequences unique, pointers that name a diagnosis, real calendar instants. Every
failing location is reported with the rule it broke; the reason is built from the schema and
the paths alone, never from the validator's messages, which quote the input. A string
carrying NUL or another C0 control character (escaped in the JSON) is read without it, with
a warning.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator, Mapping
from datetime import date
from typing import Any

import orjson
from jsonschema import Draft202012Validator, ValidationError, validators
from jsonschema.protocols import Validator

from concord.deadletters import Rejection
from concord.events.codec import schema_dir
from concord.events.models import IngestedRecord, RecordOperation
from concord.events.raw import RawEvent
from concord.ingestion.common import (
    control_warning,
    ingested_record,
    instant,
    json_without_controls,
    load_json,
)
from concord.ingestion.record_time import ARRIVAL, CLAIM_TIME_FIELDS, RecordTime, claim_record_time

SCHEMA_FILE = ("raw", "claim-line.schema.json")
RESOURCE_TYPE = "ClaimLine"
LOCATION_ROOT = "Claim"
EVENT_TIME_FIELDS = CLAIM_TIME_FIELDS  # in order of preference (record_time.py)
# A dead-letter reason is read in logs and consoles; the full bytes travel with it anyway.
MAX_PROBLEMS_NAMED = 50
# Property names that are not in the schema are input, and a key can be a surname or a member
# id as easily as a typo: such a property is shown as `*`, with the schema's closest name
# at that place as a hint. Only names the schema defines are ever repeated.
HINT_CUTOFF = 0.75

# What each schema keyword means, worded from the schema's own values, never the input's.
RULES: dict[str, str] = {
    "type": "mistyped: expected {either}",
    "pattern": "malformed: not {title}",
    "format": "malformed: not a valid {expected}",
    "enum": "not one of {any_of}",
    "const": "must be {expected}",
    "minimum": "out of range: at least {expected}",
    "maximum": "out of range: at most {expected}",
    "exclusiveMinimum": "out of range: more than {expected}",
    "minLength": "too short: at least {expected} characters",
    "maxLength": "too long: at most {expected} characters",
    "minItems": "too few items: at least {expected}",
    "maxItems": "too many items: at most {expected}",
    "uniqueItems": "repeated items",
}

Problem = tuple[str, str]  # (path relative to the line, the rule it broke)


def _ecma_pattern(
    validator: Validator, pattern: str, instance: object, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    # JSON Schema patterns are ECMA-262, where \d is ASCII and $ ends the string; Python's
    # re.search would let "C50.911\n" or full-width digits through. Every pattern in the
    # schema is anchored ^...$ (a test checks), so a full ASCII match is the same reading.
    if isinstance(instance, str) and not re.fullmatch(pattern, instance, flags=re.ASCII):
        yield ValidationError("does not match the pattern")


def _load_validator() -> Validator:
    schema = orjson.loads(schema_dir().joinpath(*SCHEMA_FILE).read_bytes())
    strict: type[Validator] = validators.extend(  # type: ignore[no-untyped-call]
        Draft202012Validator, {"pattern": _ecma_pattern}
    )
    return strict(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


VALIDATOR = _load_validator()


def ingest_claim(raw: RawEvent, *, max_payload_bytes: int) -> list[IngestedRecord] | Rejection:
    """Validate one raw claim line; a void becomes a DELETE of the line."""
    loaded = load_json(raw, max_payload_bytes=max_payload_bytes)
    if isinstance(loaded, Rejection):
        return loaded
    source, sent = loaded
    # What is read is cleaned; the bytes as sent stay on the raw topic, which provenance names.
    line, controls = json_without_controls(raw.value or b"", sent)
    problems = list(_schema_problems(line))
    if problems:
        return _rejection(problems)
    # The schema checked the shape of the event times; whether they are real instants is
    # known only by parsing them, once, here.
    times = {name: instant(line[name]) for name in EVENT_TIME_FIELDS if name in line}
    problems = [(name, "malformed: not a real date-time") for name, t in times.items() if not t]
    problems += _rule_problems(line)
    if problems:
        return _rejection(problems)
    # The schema requires one of the times, so arrival never stands in; it is there for safety.
    when = claim_record_time(line) or RecordTime(raw.received_time, ARRIVAL)
    record_ref = f"{RESOURCE_TYPE}/{line['claim_id']}/{int(line['line_number'])}"
    version = str(line["claim_version"])
    operation: RecordOperation = "DELETE" if line["status"] == "void" else "UPSERT"
    return [
        ingested_record(
            raw,
            source=source,
            record_format="CLAIM",
            resource_type=RESOURCE_TYPE,
            record_ref=record_ref,
            version=version,
            payload=orjson.dumps(line, option=orjson.OPT_SORT_KEYS),
            event_time=when.moment,
            event_time_basis=when.basis,
            operation=operation,
            warnings=[control_warning(f"{LOCATION_ROOT}{path}") for path in controls],
        )
    ]


def _schema_problems(line: Any) -> Iterator[Problem]:
    for error in VALIDATOR.iter_errors(line):
        yield from _explain(error)


def _explain(error: ValidationError) -> Iterator[Problem]:
    """The paths and rules of one schema error, from the schema and the path only."""
    path = _path(error.absolute_path)
    keyword = str(error.validator)
    expected: Any = error.validator_value
    schema: Mapping[str, Any] = error.schema if isinstance(error.schema, Mapping) else {}
    instance: Any = error.instance
    if keyword == "required" and isinstance(instance, dict):
        for name in expected:
            if name not in instance:
                yield _join(path, name), "missing"
    elif keyword == "additionalProperties" and isinstance(instance, dict):
        known = list(schema.get("properties", {}))
        for name in instance:
            if name not in known:
                hint = difflib.get_close_matches(name, known, n=1, cutoff=HINT_CUTOFF)
                rule = f"unexpected property, did you mean {hint[0]}?" if hint else ""
                yield _join(path, "*"), rule or "unexpected property"
    elif keyword == "anyOf" and all(sub.validator == "required" for sub in error.context or ()):
        names = [name for branch in expected for name in branch.get("required", ())]
        yield path, f"missing: one of {', '.join(names)}"
    else:
        yield path, _rule(keyword, expected, schema)


def _rule(keyword: str, expected: Any, schema: Mapping[str, Any]) -> str:
    values = expected if isinstance(expected, list) else [expected]
    template = RULES.get(keyword, "fails the schema's {keyword} rule")
    return template.format(
        keyword=keyword,
        expected=expected,
        either=" or ".join(map(str, values)),
        any_of=", ".join(map(str, values)),
        title=schema.get("title", "the expected format"),
    )


def _rule_problems(line: Mapping[str, Any]) -> Iterator[Problem]:
    """What the schema cannot say. Runs on a line that passed it, so the types are known."""
    if "service_date_to" in line and date.fromisoformat(line["service_date_to"]) < (
        date.fromisoformat(line["service_date_from"])
    ):
        yield "service_date_to", "out of order: before service_date_from"
    sequences: set[int] = set()
    for position, diagnosis in enumerate(line["diagnoses"]):
        if diagnosis["sequence"] in sequences:
            yield f"diagnoses[{position}].sequence", "repeated: each diagnosis needs its own"
        sequences.add(diagnosis["sequence"])
    for position, pointer in enumerate(line.get("diagnosis_pointers", ())):
        if pointer not in sequences:
            yield f"diagnosis_pointers[{position}]", "dangling: names no diagnosis sequence"


def _rejection(problems: list[Problem]) -> Rejection:
    # One rule per path: a date that is neither YYYY-MM-DD nor a real date is one mistake.
    by_path: dict[str, str] = {}
    for path, rule in problems:
        by_path.setdefault(path, rule)
    unique = list(by_path.items())
    named = "; ".join(
        f"{path or 'the line'} ({rule})" for path, rule in unique[:MAX_PROBLEMS_NAMED]
    )
    more = len(unique) - MAX_PROBLEMS_NAMED
    if more > 0:
        named += f"; and {more} more"
    first = unique[0][0]
    return Rejection(
        "CLAIM_INVALID",
        f"the claim line breaks its format at {named}",
        location=_join(LOCATION_ROOT, first) if first else LOCATION_ROOT,
    )


def _path(parts: Iterable[str | int]) -> str:
    """diagnoses[0].code: keys joined by dots, array positions in brackets."""
    path = ""
    for part in parts:
        path = f"{path}[{part}]" if isinstance(part, int) else _join(path, str(part))
    return path


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name
