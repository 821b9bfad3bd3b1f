-- A source may hold several records of one concept (a recurring condition's episodes, a
-- medication ordered, stopped and ordered again): its belief is derived from all of them
-- (conflicts/beliefs.py). `records` keeps them, as a JSON list of assertions, when there is
-- more than one; the row's own columns are the belief. `event_time` becomes the newest of the
-- records' event times, which a stale cache must not go behind.
ALTER TABLE assertions ADD COLUMN IF NOT EXISTS records jsonb;
