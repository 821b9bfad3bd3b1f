"""Facts as the records normalization puts on concord.facts: one shape for the stage's facts
and for the identity signals that wait in the outbox, so both reach the same partition."""

from __future__ import annotations

from concord.events import codec
from concord.events.models import ClinicalFact
from concord.runtime.batch import OutboundRecord
from concord.topics import FACTS


def fact_record(fact: ClinicalFact) -> OutboundRecord:
    # Keyed by enterprise patient id: all facts of one patient meet in one partition, in order.
    return OutboundRecord(FACTS, codec.CLINICAL_FACT.encode(fact), key=fact.patient_id.encode())
