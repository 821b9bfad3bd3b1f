-- A conflict a reviewer resolved (concord.resolutions) stays resolved while the same
-- disagreement stands; a source saying something new opens a conflict again.
ALTER TABLE conflict_state ADD COLUMN IF NOT EXISTS reviewed boolean NOT NULL DEFAULT false;
