"""Facts as the records normalization puts on concord.facts: one shape for the stage's facts
and for the identity signals that wait in the outbox, so both reach the same partition; and
narrative texts as it puts them on concord.documents."""

from __future__ import annotations

from concord.events import codec
from concord.events.models import ClinicalDocument, ClinicalFact
from concord.runtime.batch import OutboundRecord
from concord.topics import DOCUMENTS, FACTS


def fact_record(fact: ClinicalFact) -> OutboundRecord:
    # Keyed by enterprise patient id: all facts of one patient meet in one partition, in order.
    return OutboundRecord(FACTS, codec.CLINICAL_FACT.encode(fact), key=fact.patient_id.encode())


def document_record(document: ClinicalDocument) -> OutboundRecord:
    # Keyed like the facts: a patient's texts reach one narrative worker, in order.
    return OutboundRecord(
        DOCUMENTS, codec.CLINICAL_DOCUMENT.encode(document), key=document.patient_id.encode()
    )
