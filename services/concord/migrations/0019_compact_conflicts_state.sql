-- The conflicts state per patient (issue 17): each fact's provenance is stored once.
--
-- fact_history keeps every consumed fact with its provenance in typed columns (the payload
-- digest as 32 bytes when it is 64 lowercase hex digits; provenance fields the columns do not
-- hold, none today, in provenance_extra). Its source_system and event_time are the
-- provenance's. An assertion row keeps its key, class, partition, event time and fact id;
-- `assertion` is NULL when the assertion is exactly its fact as fact_history holds it (the
-- store checks that on every write), else it holds the whole assertion as JSON (tombstones
-- of merges and unmerges, facts recorded before the history existed). History rows are never
-- deleted, so an assertion always leads back to its raw record (raw_topic, raw_partition,
-- raw_offset, payload_sha256). The unused assertions_partition index and the assertions'
-- received_time (the provenance's) go. Both tables are rewritten whole, so no dead space is
-- left behind.

-- Assertions first: comparing them with the history needs its provenance as it was.
CREATE TABLE assertions_0019 (
    event_time      timestamptz NOT NULL,
    kafka_partition integer     NOT NULL,
    patient_id      text        NOT NULL,
    attribute       text        NOT NULL,
    source_system   text        NOT NULL,
    attribute_class text        NOT NULL,
    fact_id         text        NOT NULL,
    assertion       jsonb,
    records         jsonb
);
INSERT INTO assertions_0019
SELECT a.event_time, a.kafka_partition, a.patient_id, a.attribute, a.source_system,
       a.attribute_class, a.fact_id,
       CASE WHEN h.fact_id IS NOT NULL
             AND h.source_system = a.source_system
             AND h.value IS NOT DISTINCT FROM a.value
             AND h.display IS NOT DISTINCT FROM a.display
             AND h.status = a.status
             AND h.unit IS NOT DISTINCT FROM a.unit
             AND h.effective_time IS NOT DISTINCT FROM a.effective_time
             AND h.provenance = a.provenance
            THEN NULL
            ELSE jsonb_build_object(
                'source_system', a.source_system, 'value', a.value, 'display', a.display,
                'status', a.status, 'fact_id', a.fact_id, 'provenance', a.provenance,
                'unit', a.unit, 'effective_time', a.effective_time)
       END,
       a.records
FROM assertions a LEFT JOIN fact_history h ON h.fact_id = a.fact_id;

CREATE TABLE fact_history_0019 (
    event_time       timestamptz NOT NULL,
    received_time    timestamptz NOT NULL,
    recorded_at      timestamptz NOT NULL DEFAULT now(),
    effective_time   timestamptz,
    raw_offset       bigint      NOT NULL,
    raw_partition    integer     NOT NULL,
    fact_id          text        NOT NULL,
    patient_id       text        NOT NULL,
    attribute        text        NOT NULL,
    attribute_class  text        NOT NULL,
    source_system    text        NOT NULL,
    subject          text,
    value            text,
    display          text,
    status           text        NOT NULL,
    unit             text,
    record_id        text        NOT NULL,
    record_version   text,
    raw_topic        text        NOT NULL,
    payload_sha256   bytea,
    payload_digest   text,
    raw_location     text,
    event_time_basis text,
    provenance_extra jsonb,
    CHECK ((payload_sha256 IS NULL) <> (payload_digest IS NULL))
);
INSERT INTO fact_history_0019
SELECT h.event_time, (p ->> 'received_time')::timestamptz, h.recorded_at, h.effective_time,
       (p ->> 'raw_offset')::bigint, (p ->> 'raw_partition')::integer, h.fact_id, h.patient_id,
       h.attribute, h.attribute_class, h.source_system, h.subject, h.value, h.display, h.status,
       h.unit, p ->> 'source_record_id', p ->> 'source_record_version', p ->> 'raw_topic',
       CASE WHEN p ->> 'payload_sha256' ~ '^[0-9a-f]{64}$'
            THEN decode(p ->> 'payload_sha256', 'hex') END,
       CASE WHEN p ->> 'payload_sha256' !~ '^[0-9a-f]{64}$' THEN p ->> 'payload_sha256' END,
       p ->> 'raw_location', p ->> 'event_time_basis',
       -- What the columns do not hold: the history's own source_system and event_time stand
       -- for the provenance's only where they are the same.
       nullif(
           p - ARRAY['source_record_id', 'source_record_version', 'received_time', 'raw_topic',
                     'raw_partition', 'raw_offset', 'payload_sha256', 'raw_location',
                     'event_time_basis']
             - CASE WHEN p ->> 'source_system' = h.source_system
                    THEN 'source_system' ELSE '' END
             - CASE WHEN (p ->> 'event_time')::timestamptz = h.event_time
                    THEN 'event_time' ELSE '' END,
           '{}'::jsonb)
FROM fact_history h, LATERAL (SELECT h.provenance AS p) AS prov;

DROP TABLE assertions;
ALTER TABLE assertions_0019 RENAME TO assertions;
ALTER TABLE assertions ADD CONSTRAINT assertions_pkey
    PRIMARY KEY (patient_id, attribute, source_system);

DROP TABLE fact_history;
ALTER TABLE fact_history_0019 RENAME TO fact_history;
ALTER TABLE fact_history ADD CONSTRAINT fact_history_pkey PRIMARY KEY (fact_id);
ALTER TABLE fact_history RENAME CONSTRAINT fact_history_0019_check TO fact_history_payload_check;
CREATE INDEX fact_history_subject ON fact_history (source_system, subject);
CREATE INDEX fact_history_patient ON fact_history (patient_id);
