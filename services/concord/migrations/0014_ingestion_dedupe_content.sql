-- De-duplication by version and content (issue 15, item 8): a sender may re-use a version's
-- key for other content (an HL7 v2 control id counter reset, a second interface engine), and
-- that content is a record of its own, not a repeat. `record_id` keeps what it held before:
-- the version key, a hash of (source, record, version, operation). `emitted_id` is the record
-- id the version was emitted under, which covers its content too; '' on the rows written
-- before this migration, whose content is not known (a repeat of them is dropped as before,
-- until the window prunes them). Workers of the previous release keep working meanwhile:
-- their inserts fill `emitted_id` with ''.
ALTER TABLE ingested_versions ADD COLUMN IF NOT EXISTS emitted_id text NOT NULL DEFAULT '';
ALTER TABLE ingested_versions DROP CONSTRAINT IF EXISTS ingested_versions_pkey;
ALTER TABLE ingested_versions ADD CONSTRAINT ingested_versions_pkey
    PRIMARY KEY (record_id, emitted_id);
