-- Concord's state of record. Workers keep a memory cache of the partitions they own;
-- this is what survives them.

-- What each source currently asserts, per patient attribute (the conflicts service).
CREATE TABLE assertions (
    patient_id     text        NOT NULL,
    attribute      text        NOT NULL,
    source_system  text        NOT NULL,
    kafka_partition integer    NOT NULL,
    attribute_class text       NOT NULL,
    value          text,
    display        text,
    status         text        NOT NULL,
    fact_id        text        NOT NULL,
    event_time     timestamptz NOT NULL,
    received_time  timestamptz NOT NULL,
    provenance     jsonb       NOT NULL,
    PRIMARY KEY (patient_id, attribute, source_system)
);
CREATE INDEX assertions_partition ON assertions (kafka_partition);

-- The conflict each patient attribute is in, if any (the conflicts service).
CREATE TABLE conflict_state (
    patient_id      text        NOT NULL,
    attribute       text        NOT NULL,
    conflict_id     text        NOT NULL UNIQUE,
    revision        integer     NOT NULL,
    status          text        NOT NULL CHECK (status IN ('OPEN', 'RESOLVED')),
    assertions_digest text      NOT NULL,
    kafka_partition integer     NOT NULL,
    opened_at       timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    PRIMARY KEY (patient_id, attribute)
);

-- Transactional outbox: events written in the same transaction as the state they describe,
-- published after commit, deleted once the broker has acknowledged them.
CREATE TABLE outbox (
    seq        bigserial   PRIMARY KEY,
    stage      text        NOT NULL,
    topic      text        NOT NULL,
    key        bytea,
    value      bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_stage ON outbox (stage, seq);

-- Alerts as reviewers and subscribers see them (the alerting service).
CREATE TABLE alerts (
    alert_id          text        PRIMARY KEY,
    revision          integer     NOT NULL,
    conflict_revision integer     NOT NULL,
    kind              text        NOT NULL,
    status            text        NOT NULL,
    patient_id        text        NOT NULL,
    attribute         text        NOT NULL,
    attribute_class   text        NOT NULL,
    severity          text        NOT NULL,
    assertions        jsonb       NOT NULL,
    proposed_value    text,
    proposed_reason   text,
    opened_at         timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL,
    resolved_at       timestamptz
);
CREATE INDEX alerts_status ON alerts (status, updated_at);
CREATE INDEX alerts_patient ON alerts (patient_id);

-- Every state an alert has been in, append-only.
CREATE TABLE alert_history (
    alert_id   text        NOT NULL REFERENCES alerts (alert_id),
    revision   integer     NOT NULL,
    status     text        NOT NULL,
    changed_at timestamptz NOT NULL,
    reason     text        NOT NULL,
    PRIMARY KEY (alert_id, revision)
);
