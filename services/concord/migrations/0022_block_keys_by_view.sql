-- A view's blocking keys by the view (issue 17): normalization deletes and rewrites the keys
-- of every view it writes, by (source, view_id), and the primary key (key, source, view_id)
-- cannot find them: each identity batch read every key of every known patient (7.8 ms a batch
-- of ten records at 10,000 patients, growing with the population).
CREATE INDEX IF NOT EXISTS identity_block_keys_view ON identity_block_keys (source, view_id);
