-- Ingestion's de-duplication window: which (source, record, version) it has already emitted.
-- Only the deterministic hash is kept (no record ids, no PHI); rows older than the window
-- are pruned by the ingestion workers.
CREATE TABLE IF NOT EXISTS ingested_versions (
    record_id     text PRIMARY KEY,
    source_system text NOT NULL,
    first_seen    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS ingested_versions_first_seen ON ingested_versions (first_seen);
