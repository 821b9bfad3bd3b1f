-- Staleness (the conflicts service): each source's stale record on an attribute, and when each
-- attribute must be looked at again. The timer reads only what is due on its own partitions,
-- through the index, instead of scanning every assertion every tick.
CREATE TABLE IF NOT EXISTS stale_state (
    patient_id      text        NOT NULL,
    attribute       text        NOT NULL,
    source_system   text        NOT NULL,
    conflict_id     text        NOT NULL UNIQUE,
    revision        integer     NOT NULL,
    status          text        NOT NULL CHECK (status IN ('OPEN', 'RESOLVED')),
    fact_id         text        NOT NULL,
    kafka_partition integer     NOT NULL,
    opened_at       timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    PRIMARY KEY (patient_id, attribute, source_system)
);
CREATE TABLE IF NOT EXISTS stale_timers (
    patient_id      text        NOT NULL,
    attribute       text        NOT NULL,
    attribute_class text        NOT NULL,
    kafka_partition integer     NOT NULL,
    due_at          timestamptz NOT NULL,
    PRIMARY KEY (patient_id, attribute)
);
CREATE INDEX IF NOT EXISTS stale_timers_due ON stale_timers (kafka_partition, due_at);
