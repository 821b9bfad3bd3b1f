-- The conflicts state per patient, narrower (issue 17): the names every row repeats (source
-- systems, attributes, attribute classes, raw topics, event-time bases, fact statuses) are
-- stored once in state_names and referred to by an integer id, and a fact id of 32 lowercase
-- hex digits (every id Concord makes) is stored as the 16 bytes of a uuid. A fact id of any
-- other shape keeps a key derived from it (the first 16 bytes of its SHA-256, a collision as
-- unlikely as two facts' ids colliding) and is kept whole in fact_name.
--
-- The store writes and reads the coded tables; the names fact_history, assertions and
-- subject_owners are now views that decode them, column for column as before, for the
-- command line, operators and tests that read the state. Ids in state_names are committed
-- before any row refers to them (the store inserts names outside its transactions) and are
-- never deleted, so the views' joins lose no row.

CREATE TABLE state_names (
    id   integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL UNIQUE
);
INSERT INTO state_names (name)
SELECT name FROM (
    SELECT source_system AS name FROM fact_history
    UNION SELECT attribute FROM fact_history
    UNION SELECT attribute_class FROM fact_history
    UNION SELECT status FROM fact_history
    UNION SELECT raw_topic FROM fact_history
    UNION SELECT event_time_basis FROM fact_history
    UNION SELECT source_system FROM assertions
    UNION SELECT attribute FROM assertions
    UNION SELECT attribute_class FROM assertions
    UNION SELECT source_system FROM subject_owners
) AS named
WHERE name IS NOT NULL
ORDER BY name;

-- The key of a fact id (Python: concord.conflicts.state_coding.fact_key).
CREATE FUNCTION pg_temp.fact_key(fact_id text) RETURNS uuid LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN fact_id ~ '^[0-9a-f]{32}$' THEN fact_id::uuid
                ELSE encode(substring(sha256(convert_to('concord fact id' || chr(31) || fact_id,
                                                         'UTF8')) FROM 1 FOR 16), 'hex')::uuid
           END
$$;
CREATE FUNCTION pg_temp.name_id(name text) RETURNS integer LANGUAGE sql STABLE AS $$
    SELECT id FROM state_names WHERE state_names.name = name_id.name
$$;

-- Fixed-width columns first, widest first: no padding between them.
CREATE TABLE fact_history_coded (
    event_time          timestamptz NOT NULL,
    received_time       timestamptz NOT NULL,
    recorded_at         timestamptz NOT NULL DEFAULT now(),
    effective_time      timestamptz,
    raw_offset          bigint      NOT NULL,
    raw_partition       integer     NOT NULL,
    attribute_id        integer     NOT NULL,
    attribute_class_id  integer     NOT NULL,
    source_id           integer     NOT NULL,
    status_id           integer     NOT NULL,
    raw_topic_id        integer     NOT NULL,
    event_time_basis_id integer,
    fact_key            uuid        NOT NULL,
    patient_id          text        NOT NULL,
    subject             text,
    value               text,
    display             text,
    unit                text,
    record_id           text        NOT NULL,
    record_version      text,
    payload_sha256      bytea,
    payload_digest      text,
    raw_location        text,
    provenance_extra    jsonb,
    fact_name           text,
    CONSTRAINT fact_history_payload_check CHECK ((payload_sha256 IS NULL) <> (payload_digest IS NULL))
);
INSERT INTO fact_history_coded
SELECT h.event_time, h.received_time, h.recorded_at, h.effective_time, h.raw_offset,
       h.raw_partition, pg_temp.name_id(h.attribute), pg_temp.name_id(h.attribute_class),
       pg_temp.name_id(h.source_system), pg_temp.name_id(h.status), pg_temp.name_id(h.raw_topic),
       pg_temp.name_id(h.event_time_basis), pg_temp.fact_key(h.fact_id), h.patient_id, h.subject,
       h.value, h.display, h.unit, h.record_id, h.record_version, h.payload_sha256,
       h.payload_digest, h.raw_location, h.provenance_extra,
       CASE WHEN h.fact_id !~ '^[0-9a-f]{32}$' THEN h.fact_id END
FROM fact_history h;
ALTER TABLE fact_history_coded ADD CONSTRAINT fact_history_coded_pkey PRIMARY KEY (fact_key);
CREATE INDEX fact_history_coded_subject ON fact_history_coded (source_id, subject);
CREATE INDEX fact_history_coded_patient ON fact_history_coded (patient_id);

CREATE TABLE assertions_coded (
    event_time         timestamptz NOT NULL,
    kafka_partition    integer     NOT NULL,
    attribute_id       integer     NOT NULL,
    source_id          integer     NOT NULL,
    attribute_class_id integer     NOT NULL,
    fact_key           uuid        NOT NULL,
    patient_id         text        NOT NULL,
    assertion          jsonb,
    records            jsonb
);
INSERT INTO assertions_coded
SELECT a.event_time, a.kafka_partition, pg_temp.name_id(a.attribute),
       pg_temp.name_id(a.source_system), pg_temp.name_id(a.attribute_class),
       pg_temp.fact_key(a.fact_id), a.patient_id, a.assertion, a.records
FROM assertions a;
ALTER TABLE assertions_coded ADD CONSTRAINT assertions_coded_pkey
    PRIMARY KEY (patient_id, attribute_id, source_id);

CREATE TABLE subject_owners_coded (
    source_id  integer NOT NULL,
    subject    text    NOT NULL,
    patient_id text    NOT NULL,
    PRIMARY KEY (source_id, subject)
);
INSERT INTO subject_owners_coded
SELECT pg_temp.name_id(o.source_system), o.subject, o.patient_id FROM subject_owners o;
CREATE INDEX subject_owners_coded_patient ON subject_owners_coded (patient_id);

DROP TABLE fact_history;
DROP TABLE assertions;
DROP TABLE subject_owners;

-- The state as it reads: every name spelled out, every fact id as the fact has it.
CREATE VIEW fact_history AS
SELECT coalesce(h.fact_name, replace(h.fact_key::text, '-', '')) AS fact_id, h.patient_id,
       attribute.name AS attribute, class.name AS attribute_class, source.name AS source_system,
       h.subject, h.value, h.display, status.name AS status, h.event_time, h.unit,
       h.effective_time, h.received_time, h.recorded_at, h.record_id, h.record_version,
       topic.name AS raw_topic, h.raw_partition, h.raw_offset, h.payload_sha256,
       h.payload_digest, h.raw_location, basis.name AS event_time_basis, h.provenance_extra
FROM fact_history_coded h
JOIN state_names attribute ON attribute.id = h.attribute_id
JOIN state_names class ON class.id = h.attribute_class_id
JOIN state_names source ON source.id = h.source_id
JOIN state_names status ON status.id = h.status_id
JOIN state_names topic ON topic.id = h.raw_topic_id
LEFT JOIN state_names basis ON basis.id = h.event_time_basis_id;

CREATE VIEW assertions AS
SELECT a.patient_id, attribute.name AS attribute, source.name AS source_system,
       a.kafka_partition, class.name AS attribute_class,
       coalesce(a.assertion ->> 'fact_id', h.fact_name, replace(a.fact_key::text, '-', ''))
           AS fact_id,
       a.event_time, a.assertion, a.records
FROM assertions_coded a
LEFT JOIN fact_history_coded h ON a.assertion IS NULL AND h.fact_key = a.fact_key
JOIN state_names attribute ON attribute.id = a.attribute_id
JOIN state_names source ON source.id = a.source_id
JOIN state_names class ON class.id = a.attribute_class_id;

CREATE VIEW subject_owners AS
SELECT source.name AS source_system, o.subject, o.patient_id
FROM subject_owners_coded o JOIN state_names source ON source.id = o.source_id;
