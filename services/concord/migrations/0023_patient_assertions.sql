-- A patient's assertions in few rows (issue 17): assertions_coded held a row per patient,
-- attribute and source (six a patient in the benchmark's mix), each paying a tuple header, a
-- line pointer and a primary-key entry of (patient, attribute, source) for ~60 bytes of data:
-- 804 bytes a patient in all. A row per patient and block of 64 attribute ids (the id
-- divided by 64), its entries in parallel arrays, keeps the same columns in ~380 bytes. The
-- blocks bound a row (a patient followed for years holds hundreds of lab codes, and a save
-- rewrites the rows it touches whole) and let a load find an attribute's row by its key.
--
-- Entry i of a row (1-based) is names[3i-2] (the attribute's id), names[3i-1] (the
-- source's), names[3i] (the attribute class's), fact_keys[i] and event_times[i]. An entry that
-- is not exactly its recorded fact (a tombstone, a fact recorded before the history) or that
-- keeps the source's several records has a document in `documents` under
-- "<attribute id>:<source id>": {"assertion": ..., "records": [...]}, each key only when set,
-- as the columns of the same names held them. The store locks a patient's rows, merges the
-- batch's assertions into them and writes them back whole (conflicts/store.py).
--
-- The view `assertions` reads as before, a row per entry; its kafka_partition is the row's
-- (a patient's records are keyed by the patient, so all its entries had the same one).

CREATE TABLE patient_assertions (
    kafka_partition integer       NOT NULL,
    attribute_block integer       NOT NULL,
    patient_id      text          NOT NULL,
    names           integer[]     NOT NULL,
    fact_keys       uuid[]        NOT NULL,
    event_times     timestamptz[] NOT NULL,
    documents       jsonb,
    CONSTRAINT patient_assertions_entries CHECK (
        cardinality(names) = 3 * cardinality(fact_keys)
        AND cardinality(event_times) = cardinality(fact_keys)
    ),
    PRIMARY KEY (patient_id, attribute_block)
);

WITH entries AS (
    SELECT a.*, a.attribute_id / 64 AS attribute_block,
           row_number() OVER (PARTITION BY a.patient_id, a.attribute_id / 64
                              ORDER BY a.attribute_id, a.source_id) AS n
    FROM assertions_coded a
)
INSERT INTO patient_assertions (kafka_partition, attribute_block, patient_id, names, fact_keys,
                                event_times, documents)
SELECT max(e.kafka_partition), e.attribute_block, e.patient_id,
       array_agg(t.id ORDER BY e.n, t.i),
       array_agg(e.fact_key ORDER BY e.n) FILTER (WHERE t.i = 1),
       array_agg(e.event_time ORDER BY e.n) FILTER (WHERE t.i = 1),
       jsonb_object_agg(
           e.attribute_id || ':' || e.source_id,
           CASE WHEN e.assertion IS NULL THEN '{}'::jsonb
                ELSE jsonb_build_object('assertion', e.assertion) END
           || CASE WHEN e.records IS NULL THEN '{}'::jsonb
                   ELSE jsonb_build_object('records', e.records) END
       ) FILTER (WHERE t.i = 1 AND (e.assertion IS NOT NULL OR e.records IS NOT NULL))
FROM entries e
CROSS JOIN LATERAL unnest(ARRAY[e.attribute_id, e.source_id, e.attribute_class_id])
    WITH ORDINALITY AS t(id, i)
GROUP BY e.patient_id, e.attribute_block;

DROP VIEW assertions;
DROP TABLE assertions_coded;

CREATE VIEW assertions AS
SELECT p.patient_id, attribute.name AS attribute, source.name AS source_system,
       p.kafka_partition, class.name AS attribute_class,
       coalesce(d.document -> 'assertion' ->> 'fact_id', h.fact_name,
                replace(e.fact_key::text, '-', '')) AS fact_id,
       e.event_time, d.document -> 'assertion' AS assertion, d.document -> 'records' AS records
FROM patient_assertions p
CROSS JOIN LATERAL unnest(p.fact_keys, p.event_times) WITH ORDINALITY AS e(fact_key, event_time, n)
CROSS JOIN LATERAL (
    SELECT p.names[3 * e.n - 2] AS attribute_id, p.names[3 * e.n - 1] AS source_id,
           p.names[3 * e.n] AS attribute_class_id
) AS c
CROSS JOIN LATERAL (
    SELECT p.documents -> (c.attribute_id || ':' || c.source_id) AS document
) AS d
LEFT JOIN fact_history_coded h ON d.document -> 'assertion' IS NULL AND h.fact_key = e.fact_key
JOIN state_names attribute ON attribute.id = c.attribute_id
JOIN state_names source ON source.id = c.source_id
JOIN state_names class ON class.id = c.attribute_class_id;
