-- The identity index of normalization: shared by every normalization worker, durable.
-- identity_links: each source's local handle on a patient (Patient/123, id:<system>|<value>)
-- and the enterprise id it was linked to, with how and the score breakdown of that decision.
CREATE TABLE IF NOT EXISTS identity_links (
    source        text NOT NULL,
    local_id      text NOT NULL,
    enterprise_id text NOT NULL,
    decided_by    text NOT NULL,
    provisional   boolean NOT NULL DEFAULT false,
    score         double precision,
    breakdown     jsonb,
    decided_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, local_id)
);
CREATE INDEX IF NOT EXISTS identity_links_enterprise_id ON identity_links (enterprise_id);

-- identity_views: each source's demographics of a patient (PHI: it stays in this database),
-- and the blocking keys that find it.
CREATE TABLE IF NOT EXISTS identity_views (
    source        text NOT NULL,
    view_id       text NOT NULL,
    enterprise_id text NOT NULL,
    demographics  jsonb NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, view_id)
);
CREATE INDEX IF NOT EXISTS identity_views_enterprise_id ON identity_views (enterprise_id);
CREATE TABLE IF NOT EXISTS identity_block_keys (
    key     text NOT NULL,
    source  text NOT NULL,
    view_id text NOT NULL,
    PRIMARY KEY (key, source, view_id)
);

-- Uncertain matches, for the review queue: the record's provisional id and the candidate.
CREATE TABLE IF NOT EXISTS identity_review_tasks (
    task_id                   text PRIMARY KEY,
    source                    text NOT NULL,
    view_id                   text NOT NULL,
    provisional_enterprise_id text NOT NULL,
    candidate_enterprise_id   text NOT NULL,
    score                     double precision NOT NULL,
    breakdown                 jsonb NOT NULL,
    status                    text NOT NULL DEFAULT 'OPEN',
    created_at                timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS identity_review_tasks_open ON identity_review_tasks (status, created_at);
