-- Comparing results needs more than the value: its unit, and when it was true (the specimen
-- time), so that two sources' results of one test compare only when they are one specimen.
ALTER TABLE assertions
    ADD COLUMN IF NOT EXISTS unit text,
    ADD COLUMN IF NOT EXISTS effective_time timestamptz;
ALTER TABLE fact_history
    ADD COLUMN IF NOT EXISTS unit text,
    ADD COLUMN IF NOT EXISTS effective_time timestamptz;
