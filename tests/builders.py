"""Builders and fakes more than one test module needs (imported as `builders`: pytest puts
tests/ on the path, as for mllp_client and pipeline_tools)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from concord.events.models import Assertion, FactStatus, Provenance
from concord.normalization.identity.index import InMemoryIdentityIndex
from concord.normalization.identity.resolution import (
    IdentityRequest,
    LocalId,
    Resolution,
    apply,
    resolve,
)


def assertion_at(
    source: str,
    value: str | None,
    at: datetime,
    *,
    fact_id: str,
    status: FactStatus = "ASSERTED",
    unit: str | None = None,
    record: str = "r",
) -> Assertion:
    """One source's assertion, effective and said at `at`."""
    return Assertion(
        source_system=source,
        value=value,
        status=status,
        fact_id=fact_id,
        unit=unit,
        effective_time=at,
        provenance=Provenance(
            source_system=source,
            source_record_id=record,
            event_time=at,
            received_time=at,
            raw_topic="ehr.raw.fhir",
            raw_partition=0,
            raw_offset=0,
            payload_sha256="00" * 32,
        ),
    )


class FakeIdentities:
    """The identity port on the pure core, with the crosswalk and index in memory."""

    def __init__(self) -> None:
        self.crosswalk: dict[LocalId, str] = {}
        self.index = InMemoryIdentityIndex()

    async def resolve_batch(self, requests: Sequence[IdentityRequest]) -> list[Resolution]:
        resolutions = []
        for request in requests:
            resolution = resolve(request, crosswalk=self.crosswalk, index=self.index)
            apply(request, resolution, self.crosswalk, self.index)
            resolutions.append(resolution)
        return resolutions


def listify(value: Any) -> Any:
    """A model_dump as an Avro reader returns it: tuples of array fields as lists."""
    if isinstance(value, dict):
        return {k: listify(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [listify(v) for v in value]
    return value
