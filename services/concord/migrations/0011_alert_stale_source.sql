-- A stale record's alert names the source whose assertion is stale (Alert v4, ConflictEvent
-- v4 stale_source); null for a conflict's alert and for alerts stored before.
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS stale_source text;
