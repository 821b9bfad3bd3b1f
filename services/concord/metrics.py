"""Prometheus metrics: module-level constants with bounded labels only.

Labels are stage, topic, partition, reason_code, severity, since and the like: never an
identifier, a value or anything else that could carry PHI. resource_type only ever holds the
name of a FHIR R4 resource type (ingestion refuses any other), a bounded set.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

EVENTS_CONSUMED = Counter("concord_events_consumed", "Records a stage consumed", ["stage", "topic"])
EVENTS_PRODUCED = Counter(
    "concord_events_produced", "Records a stage produced (acknowledged)", ["stage", "topic"]
)
EVENTS_DEADLETTERED = Counter(
    "concord_events_deadlettered",
    "Records a stage sent to concord.deadletter",
    ["stage", "reason_code"],
)
BATCH_SECONDS = Histogram(
    "concord_batch_seconds",
    "Time to process one batch: decode, core logic, produce and await acks, commit",
    ["stage"],
    buckets=_LATENCY_BUCKETS,
)
EVENT_SECONDS = Histogram(
    "concord_event_seconds",
    "Processing time per event (each batch's time divided by its size)",
    ["stage"],
    buckets=(0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 1),
)
BATCH_PHASE_SECONDS = Histogram(
    "concord_batch_phase_seconds",
    "Where a batch's time goes: process (decode, core logic, database), produce (send and "
    "await every ack), after_produce (the stage's bookkeeping once acknowledged: outbox rows "
    "deleted) and commit (the consumer offsets)",
    ["stage", "phase"],
    buckets=_LATENCY_BUCKETS,
)
GC_PAUSE_SECONDS = Histogram(
    "concord_gc_pause_seconds",
    "Pauses of Python's cyclic garbage collector, by generation: a full (generation 2) "
    "collection walks every object the worker holds, its caches included, and stops its "
    "batch meanwhile",
    ["generation"],
    buckets=(0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
BATCH_SIZE = Histogram(
    "concord_batch_size",
    "Records per processed batch",
    ["stage"],
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2000),
)
ALERT_LATENCY = Histogram(
    "concord_alert_latency_seconds",
    "From receipt by ingestion (since=received) or the source's event time (since=event) "
    "of the raw event that changed an alert, to the alert stored and published",
    ["since"],
    buckets=_LATENCY_BUCKETS,
)
TRANSIENT_FAILURES = Counter(
    "concord_transient_failures",
    "Transient failures the batch loop retried with backoff (database or broker away, a "
    "serialization failure, a timeout), by step: process, produce, after produce, tick",
    ["stage", "step"],
)
STAGE_READY = Gauge(
    "concord_stage_ready",
    "1 while the stage makes progress: partitions assigned and no transient failure retried",
    ["stage"],
)
ALERTS_OPEN = Gauge("concord_alerts_open", "Open alerts in PostgreSQL", ["severity"])
OUTBOX_PENDING = Gauge(
    "concord_outbox_pending",
    "Rows in the outbox table, written but not yet acknowledged (counted at each drain)",
    ["stage"],
)
CONSUMER_LAG = Gauge(
    "concord_consumer_lag",
    "Records behind the end of each owned partition (approximate on the local broker, "
    "whose ListOffsets(latest) is off by a batch)",
    ["stage", "topic", "partition"],
)
RECORDS_NOT_NORMALIZED = Counter(
    "concord_records_not_normalized",
    "Ingested records that assert no fact Concord compares and hold no narrative text "
    "(encounters, records without a patient; deletes and voids of records whose upsert "
    "normalization never saw)",
    ["format", "operation"],
)
RECORDS_WITHDRAWN = Counter(
    "concord_records_withdrawn",
    "Deletes and voids that withdrew what their record's last upsert asserted (DELETED facts)",
    ["format"],
)
IDENTITY_DECISIONS = Counter(
    "concord_identity_decisions",
    "How normalization placed each record's patient (AUTHORITATIVE, CROSSWALK, MATCHED, "
    "REVIEW, NEW, UNDESCRIBED)",
    ["outcome"],
)
DOCUMENTS_PUBLISHED = Counter(
    "concord_documents_published",
    "Narrative texts normalization published for the narrative worker (concord.documents)",
    ["kind"],
)
TEXT_FACTS = Counter(
    "concord_text_facts",
    "Facts the narrative worker read from clinical text (status ASSERTED) or withdrew "
    "because a document's newer version no longer says them (DELETED), by document kind",
    ["kind", "status"],
)
TEXT_REVIEW_TASKS = Counter(
    "concord_text_review_tasks",
    "Findings read from text below the policy's text.min_confidence, kept for a reviewer",
)
TEXT_READ_SECONDS = Histogram(
    "concord_text_read_seconds",
    "Time to read one document's text into findings, by document kind",
    ["kind"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
FACTS_FLAGGED = Counter(
    "concord_facts_flagged",
    "Facts published with what normalization could not do (UNMAPPED_CODE, UNIT_UNKNOWN, "
    "NOT_CONVERTIBLE, PROVISIONAL_PATIENT, EVENT_TIME_IS_ARRIVAL), one count per flag",
    ["attribute_class", "flag"],
)
RECORD_WARNINGS = Counter(
    "concord_record_warnings",
    "Warnings on the records a stage published: element-level problems a record was accepted "
    "with (the element left out, or kept as sent and flagged), by reason code",
    ["stage", "reason_code"],
)
RECORDS_NOT_COMPARED = Counter(
    "concord_records_not_compared",
    "Records ingestion accepted, for provenance only, of a FHIR resource type Concord neither "
    "checks nor compares (Immunization, Procedure, ...; a Bundle holding only such types)",
    ["format", "resource_type"],
)
INGESTION_DUPLICATES = Counter(
    "concord_ingestion_duplicates",
    "Records ingestion had already emitted (same source, record, version and content), not "
    "re-emitted",
    ["topic"],
)
INGESTION_REUSED_VERSIONS = Counter(
    "concord_ingestion_reused_versions",
    "Records whose source, record and version had been emitted with other content (an HL7 v2 "
    "control id or a FHIR version id re-used): emitted as records of their own",
    ["topic"],
)
# MLLP listener (outcome is AA, AE or AR)

MLLP_MESSAGES = Counter(
    "concord_mllp_messages",
    "HL7 messages the MLLP listener answered, by the ACK code it sent",
    ["outcome"],
)
MLLP_CONNECTIONS = Gauge("concord_mllp_connections", "Open MLLP connections")
MLLP_CONNECTIONS_REFUSED = Counter(
    "concord_mllp_connections_refused", "MLLP connections closed at once: max_connections reached"
)
MLLP_OVERSIZE_FRAMES = Counter(
    "concord_mllp_oversize_frames", "MLLP frames refused because they exceed max_frame_bytes"
)
MLLP_DISCARDED_BYTES = Counter(
    "concord_mllp_discarded_bytes",
    "Bytes outside MLLP frames, and of frames the sender abandoned by starting another",
)
MLLP_ACK_SECONDS = Histogram(
    "concord_mllp_ack_seconds",
    "From a complete frame received to its ACK written (includes the durable Kafka write)",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
# Source-of-truth policy (conflicts worker)

POLICY_RELOADS = Counter(
    "concord_policy_reloads",
    "Changed policy files the conflicts worker found, by outcome: applied, or rejected "
    "(invalid or unreadable; the policy in force stays)",
    ["outcome"],
)
# One label value at a time: the previous version's series is removed when another applies.
POLICY_INFO = Gauge(
    "concord_policy_info", "1 for the version of the source-of-truth policy in force", ["version"]
)

RESOLUTIONS = Counter(
    "concord_resolutions",
    "Reviewers' decisions consumed by the conflicts stage, by outcome: applied (resolved an "
    "open conflict) or ignored (the conflict was already resolved, or replaced)",
    ["outcome"],
)
