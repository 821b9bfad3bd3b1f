"""The topics are the contracts between the services: names and partition counts live here only.

Every topic is created explicitly with its partition count before any worker starts: on the
local broker auto-created topics get 4 partitions while Faust assumes 8, and a mismatch makes
Faust crash-loop.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    description: str


RAW_FHIR = "ehr.raw.fhir"
RAW_HL7V2 = "ehr.raw.hl7v2"
RAW_CLAIMS = "ehr.raw.claims"
INGESTED = "concord.ingested"
FACTS = "concord.facts"
DOCUMENTS = "concord.documents"
CONFLICTS = "concord.conflicts"
RESOLUTIONS = "concord.resolutions"
ALERTS = "concord.alerts"
DEADLETTER = "concord.deadletter"
CONTROL = "concord.control"
AUDIT_ANCHORS = "concord.audit.anchors"

PARTITIONS = 4

ALL_TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(RAW_FHIR, PARTITIONS, "FHIR R4 JSON as sent; header 'source' names the sender"),
    TopicSpec(RAW_HL7V2, PARTITIONS, "HL7 v2 ER7 messages, one per record"),
    TopicSpec(RAW_CLAIMS, PARTITIONS, "claim lines as JSON"),
    TopicSpec(INGESTED, PARTITIONS, "validated records with provenance (Avro IngestedRecord)"),
    TopicSpec(FACTS, PARTITIONS, "atomic facts keyed by enterprise patient id (Avro ClinicalFact)"),
    # Keyed by patient like concord.facts: the narrative worker reads a patient's texts in order.
    TopicSpec(
        DOCUMENTS, PARTITIONS, "records' narrative texts, patient resolved (Avro ClinicalDocument)"
    ),
    TopicSpec(CONFLICTS, PARTITIONS, "conflict lifecycle events (Avro ConflictEvent)"),
    # Keyed by patient like concord.facts, and as many partitions: the conflicts worker that
    # owns a patient's facts owns its resolutions too.
    TopicSpec(
        RESOLUTIONS, PARTITIONS, "reviewers' decisions on conflicts (Avro ConflictResolution)"
    ),
    TopicSpec(ALERTS, PARTITIONS, "alerts for subscribers (Avro Alert)"),
    TopicSpec(DEADLETTER, PARTITIONS, "everything rejected, with reason and original bytes (Avro)"),
    TopicSpec(CONTROL, 1, "control messages for the workers' Faust apps (e.g. policy reload)"),
    # Keyed by the audit trail's id: one trail's anchors stay in order in one partition.
    TopicSpec(
        AUDIT_ANCHORS, PARTITIONS, "the audit trail's head, published now and then (JSON Anchor)"
    ),
)
