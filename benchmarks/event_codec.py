"""Micro-benchmark of the codec (issue 17): µs to encode and to decode one event of each type
with the code compiled from its schema (events/compiled_avro.py, what EventCodec uses)
against fastavro (writing the model's dump, reading into a dict; pydantic validates the
decoded dict either way), in alternating rounds of one run so that both see the same
machine; checks that both give the same bytes and the same event. No broker, no database.

    .venv/bin/python benchmarks/event_codec.py [--events 200] [--rounds 7]

The events are fastavro's random records of each schema that the pydantic twin accepts, and
one realistic event of each hot type (a fact, a conflict event and an alert with two
assertions), so that both random and realistic shapes are measured.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from fastavro import schemaless_reader, schemaless_writer
from fastavro.utils import generate_many
from pydantic import ValidationError

from concord.events import codec
from concord.events.codec import EventCodec
from concord.events.models import Alert, Assertion, ClinicalFact, ConflictEvent, Event, Provenance

T0 = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)


def _provenance(source: str, offset: int) -> Provenance:
    return Provenance(
        source_system=source,
        source_record_id=f"Patient/{offset}",
        source_record_version="3",
        event_time=T0 - timedelta(minutes=offset % 97),
        received_time=T0,
        raw_topic="ehr.raw.fhir",
        raw_partition=offset % 8,
        raw_offset=100_000 + offset,
        payload_sha256=f"{offset:064x}",
        event_time_basis="meta.lastUpdated",
    )


def realistic() -> dict[str, Event]:
    """A fact as normalization publishes it, and the conflict and alert it leads to."""
    fact = ClinicalFact(
        fact_id=f"{7:032x}",
        patient_id="E3F9A0C21B7D44E5A9C1",
        attribute="Observation/2345-7",
        attribute_class="LABORATORY",
        value="5.4",
        display="Glucose [Moles/volume] in Serum or Plasma",
        status="ASSERTED",
        provenance=_provenance("ehr-hospital", 7),
        unit="mmol/L",
        effective_time=T0 - timedelta(hours=2),
    )
    assertions = tuple(
        Assertion(
            source_system=source,
            value=value,
            display=fact.display,
            status="ASSERTED",
            fact_id=f"{n:032x}",
            provenance=_provenance(source, n),
            unit="mmol/L",
            effective_time=fact.effective_time,
        )
        for n, (source, value) in enumerate((("ehr-hospital", "5.4"), ("lab", "7.9")))
    )
    event = ConflictEvent(
        conflict_id=f"{11:032x}",
        revision=1,
        kind="OPENED",
        patient_id=fact.patient_id,
        attribute=fact.attribute,
        attribute_class=fact.attribute_class,
        severity="HIGH",
        assertions=assertions,
        policy_version="builtin-1",
        detected_at=T0,
        trigger_received_time=T0,
    )
    alert = Alert(
        alert_id=event.conflict_id,
        revision=1,
        kind="CONFLICT",
        status="OPEN",
        patient_id=event.patient_id,
        attribute=event.attribute,
        attribute_class=event.attribute_class,
        severity=event.severity,
        assertions=event.assertions,
        opened_at=T0,
        updated_at=T0,
    )
    return {"clinical_fact": fact, "conflict_event": event, "alert": alert}


def generated(c: EventCodec[Any], n: int) -> list[Event]:
    events: list[Event] = []
    for record in generate_many(c.schema, n):
        buf = io.BytesIO()
        schemaless_writer(buf, c.schema, record)
        buf.seek(0)
        try:
            events.append(c.model.model_validate(schemaless_reader(buf, c.schema, None)))
        except ValidationError:
            continue
    return events


def per_call_us(fn: Callable[[Any], object], items: Sequence[Any], repeats: int) -> float:
    """µs per call, over `repeats` passes of the items."""
    start = time.perf_counter()
    for _ in range(repeats):
        for item in items:
            fn(item)
    return (time.perf_counter() - start) / (repeats * len(items)) * 1e6


def alternating(
    reference: Callable[[Any], object],
    compiled: Callable[[Any], object],
    items: Sequence[Any],
    rounds: int,
) -> tuple[float, float]:
    """Median µs per call of each, their rounds alternating."""
    theirs: list[float] = []
    ours: list[float] = []
    for _ in range(rounds):
        theirs.append(per_call_us(reference, items, 20))
        ours.append(per_call_us(compiled, items, 20))
    return statistics.median(theirs), statistics.median(ours)


def measure(c: EventCodec[Any], events: Sequence[Event], rounds: int) -> dict[str, float]:
    payloads = [c.encode(event) for event in events]
    for event, data in zip(events, payloads, strict=True):
        if data != c.encode_with_fastavro(event) or c.decode(data) != event:
            raise SystemExit(f"{c.name}: the compiled codec and fastavro disagree on an event")
    encode = alternating(c.encode_with_fastavro, c.encode, events, rounds)
    decode = alternating(
        lambda data: c.model.model_validate(c.decode_with_fastavro(data)),
        c.decode,
        payloads,
        rounds,
    )
    return {
        "bytes": statistics.fmean(len(p) for p in payloads),
        "encode": encode,
        "decode": decode,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200, help="random events of each type")
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds per writer")
    args = parser.parse_args(argv)
    rows: list[tuple[str, dict[str, float]]] = []
    for name, event in realistic().items():
        c = next(c for c in codec.ALL_CODECS if c.name == name)
        rows.append((f"{name} (realistic)", measure(c, [event], args.rounds * 20)))
        print(f"measured {rows[-1][0]}", file=sys.stderr, flush=True)
    for c in codec.ALL_CODECS:
        rows.append((f"{c.name} (random)", measure(c, generated(c, args.events), args.rounds)))
        print(f"measured {rows[-1][0]}", file=sys.stderr, flush=True)
    print("\nOne event, µs (medians of alternating rounds; same bytes and events checked):")
    print(f"  {'':34} {'':>6}  {'encode':^29}  {'decode (with pydantic)':^29}")
    head = f"{'fastavro':>9} {'compiled':>9} {'speed-up':>9}"
    print(f"  {'event':34} {'bytes':>6}  {head}  {head}")
    for label, r in rows:
        cells = [
            f"{theirs:>9.1f} {ours:>9.1f} {theirs / ours:>8.2f}x"
            for theirs, ours in (r["encode"], r["decode"])
        ]
        print(f"  {label:34} {r['bytes']:>6.0f}  {cells[0]}  {cells[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
