"""A record's narrative texts → ClinicalDocument events, for the narrative worker to read.

Normalization resolves the patient once for the record, as it does for its facts, so that
the narrative worker (which reads text two orders of magnitude slower than a coded record)
needs no identity index, and a record's structured facts never wait for its text.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

from concord.clinical_text.documents import MAX_TEXT_CHARS, DocumentText
from concord.events.models import ClinicalDocument, IngestedRecord
from concord.normalization.facts.drafts import provenance_flags
from concord.normalization.records import source_zone
from concord.normalization.timing import from_hl7, normalize_time

# A document's text on concord.documents, in UTF-8 bytes: the event must stay under the
# producer's record limit (runtime.batch.MAX_RECORD_BYTES, 1 MiB) with its provenance, or the
# whole record (its coded facts too) would be dead-lettered as too large. A longer text is cut
# and flagged `truncated`; no real note or report comes near it.
MAX_DOCUMENT_BYTES = 512 * 1024


def to_document(
    text: DocumentText,
    *,
    patient_id: str,
    record: IngestedRecord,
    subject: str | None,
    withdrawn: bool = False,
    extra_flags: tuple[str, ...] = (),
) -> ClinicalDocument:
    authored = _authored(text.authored, record)
    cut = text.text.encode()[:MAX_DOCUMENT_BYTES].decode("utf-8", "ignore")
    system, code = text.type_code if text.type_code else (None, None)
    return ClinicalDocument(
        document_id=document_id(record.record_id, text.part),
        patient_id=patient_id,
        subject=subject,
        record_id=record.record_id,
        provenance=record.provenance,
        part=text.part,
        kind=text.kind,
        media_type=text.media_type,
        authored_time=authored,
        authored_text=text.authored,
        type_system=system,
        type_code=code,
        text=None if withdrawn else cut,
        truncated=len(text.text) >= MAX_TEXT_CHARS or len(cut) < len(text.text),
        withdrawn=withdrawn,
        flags=(*extra_flags, *provenance_flags(record.provenance)),
    )


def document_id(record_id: str, part: str) -> str:
    return hashlib.sha256(f"{record_id}\x1f{part}".encode()).hexdigest()[:32]


def _authored(text: str | None, record: IngestedRecord) -> datetime | None:
    """The authored time as an instant (None for a date alone, or a time with no zone)."""
    if not text:
        return None
    zone = source_zone(record.source_time_zone)
    moment = (
        from_hl7(text, zone=zone) if record.format == "HL7V2" else normalize_time(text, zone=zone)
    )
    return moment.utc if moment is not None else None
