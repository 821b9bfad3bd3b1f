-- Clinical text (issue 18): what the narrative worker read from a text but not surely enough
-- to be a fact (below the policy's text.min_confidence: "cannot rule out metastatic disease",
-- one report saying two stages) waits here for a reviewer instead. One task per document and
-- attribute: a redelivered document finds its task and changes nothing. The finding's words,
-- where they are and the document's provenance are in `evidence` (the ClinicalFact's
-- Provenance with its TextEvidence, as JSON), so a reviewer can go back to the raw record.
-- A reviewer accepts a task (the finding becomes a fact, as the narrative worker would have
-- published it, flagged ACCEPTED_BY_REVIEWER) or rejects it (nothing is published).
CREATE TABLE IF NOT EXISTS text_review_tasks (
    task_id       text PRIMARY KEY,
    patient_id    text NOT NULL,
    subject       text,
    attribute     text NOT NULL,
    value         text NOT NULL,
    confidence    double precision NOT NULL,
    assertion     text NOT NULL,
    document_id   text NOT NULL,
    record_id     text NOT NULL,
    source_system text NOT NULL,
    effective_time timestamptz,
    evidence      jsonb NOT NULL,
    status        text NOT NULL DEFAULT 'OPEN' CHECK (status IN ('OPEN', 'ACCEPTED', 'REJECTED')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    decided_by    text,
    decided_at    timestamptz,
    -- An accepted finding becomes this fact (published through the review outbox).
    fact_id       text
);
CREATE INDEX IF NOT EXISTS text_review_tasks_open
    ON text_review_tasks (created_at) WHERE status = 'OPEN';
CREATE INDEX IF NOT EXISTS text_review_tasks_patient ON text_review_tasks (patient_id);
