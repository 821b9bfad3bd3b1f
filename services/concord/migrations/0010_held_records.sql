-- Held records (the conflicts service): a disagreement or stale record found but not raised
-- yet, because the policy's suppress_for asks it to last until `held_until`. source_system is
-- '' for the attribute's conflict, else the source whose assertion is stale. A row goes away
-- when its record is raised or is gone; the attribute's timer (stale_timers) fires at
-- held_until.
CREATE TABLE IF NOT EXISTS held_records (
    patient_id      text        NOT NULL,
    attribute       text        NOT NULL,
    source_system   text        NOT NULL,
    held_since      timestamptz NOT NULL,
    held_until      timestamptz NOT NULL,
    kafka_partition integer     NOT NULL,
    PRIMARY KEY (patient_id, attribute, source_system)
);
