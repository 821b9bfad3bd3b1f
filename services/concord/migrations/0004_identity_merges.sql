-- Patients merged into others (HL7 A40, FHIR Patient.link): the absorbed enterprise id, the
-- one that survives, who said so and when. Links and views of the absorbed id are re-pointed
-- to the survivor in the same transaction.
CREATE TABLE IF NOT EXISTS identity_merges (
    absorbed_enterprise_id text NOT NULL,
    survivor_enterprise_id text NOT NULL,
    source                 text NOT NULL,
    merged_at              timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (absorbed_enterprise_id, survivor_enterprise_id)
);
CREATE INDEX IF NOT EXISTS identity_merges_survivor ON identity_merges (survivor_enterprise_id);
