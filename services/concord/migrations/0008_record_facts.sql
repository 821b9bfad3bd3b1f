-- What each source record's last upsert asserted, so that its delete (a FHIR DELETE, a voided
-- claim line), which names only the record, withdraws it. One row per record, not per fact:
-- an upsert replaces all that was remembered of its record in one row, and a delete asks for
-- a record, never for a fact.
-- source_record_id: the source's id of the record without its version (Observation/123,
-- ClaimLine/<claim>/<line>), shared by every version and by the delete.
-- facts: [{"attribute", "attribute_class"}], the keys of the facts the upsert published.
-- event_time: the upsert's; an older version arriving late does not replace a newer one.
CREATE TABLE IF NOT EXISTS record_facts (
    source           text NOT NULL,
    source_record_id text NOT NULL,
    patient_id       text NOT NULL,
    subject          text,
    event_time       timestamptz NOT NULL,
    facts            jsonb NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, source_record_id)
);
