-- Unmerges: a merge made in error can be undone, so each merge keeps what it moved.

-- Identity (normalization): the local ids and views a merge re-pointed, and who undid it.
ALTER TABLE identity_merges
    ADD COLUMN IF NOT EXISTS unmerged_at timestamptz,
    ADD COLUMN IF NOT EXISTS unmerged_by text,
    ADD COLUMN IF NOT EXISTS unmerge_reason text;
CREATE TABLE IF NOT EXISTS identity_merge_moves (
    absorbed_enterprise_id text NOT NULL,
    survivor_enterprise_id text NOT NULL,
    kind                   text NOT NULL CHECK (kind IN ('LINK', 'VIEW')),
    source                 text NOT NULL,
    local_id               text NOT NULL,
    PRIMARY KEY (absorbed_enterprise_id, survivor_enterprise_id, kind, source, local_id)
);

-- Conflicts: every fact each source asserted, with the source's own handle on the patient
-- (subject), so that an unmerge can work out what each patient's sources last said.
CREATE TABLE IF NOT EXISTS fact_history (
    fact_id         text PRIMARY KEY,
    patient_id      text NOT NULL,
    attribute       text NOT NULL,
    attribute_class text NOT NULL,
    source_system   text NOT NULL,
    subject         text,
    value           text,
    display         text,
    status          text NOT NULL,
    event_time      timestamptz NOT NULL,
    provenance      jsonb NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS fact_history_subject ON fact_history (source_system, subject);
CREATE INDEX IF NOT EXISTS fact_history_patient ON fact_history (patient_id);
-- Which patient each source's subject belongs to now; merges and unmerges move them.
CREATE TABLE IF NOT EXISTS subject_owners (
    source_system text NOT NULL,
    subject       text NOT NULL,
    patient_id    text NOT NULL,
    PRIMARY KEY (source_system, subject)
);
CREATE INDEX IF NOT EXISTS subject_owners_patient ON subject_owners (patient_id);
-- The subjects a merge moved from the absorbed patient, until an unmerge moves them back.
CREATE TABLE IF NOT EXISTS subject_merge_moves (
    absorbed_patient_id text NOT NULL,
    survivor_patient_id text NOT NULL,
    source_system       text NOT NULL,
    subject             text NOT NULL,
    PRIMARY KEY (absorbed_patient_id, source_system, subject)
);
