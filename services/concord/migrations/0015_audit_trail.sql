-- Audit trail (issue 16, item 5): every PHI read and every state change of the review service,
-- and the command line's decisions, one row each, hash-chained (concord/review/audit.py).
-- Append-only: triggers refuse UPDATE, DELETE and TRUNCATE, even from the table's owner, and
-- the review service's role may only INSERT and SELECT. A superuser can still get round both
-- (disable the triggers); `concord audit verify` then names the first row touched.

-- The trail's identity: one row, made here. Its id is hashed into the first row's prev_hash
-- (the genesis hash) and keys the anchors published of the trail's head, so the anchors of
-- another database on the same broker never count for this one.
CREATE TABLE IF NOT EXISTS audit_trail (
    singleton  boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    trail_id   uuid        NOT NULL DEFAULT gen_random_uuid(),
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO audit_trail DEFAULT VALUES ON CONFLICT DO NOTHING;

-- seq is assigned by the appender (head + 1, under an advisory lock held to commit), not by a
-- sequence: a sequence hands out numbers outside transactions, so a rolled-back append would
-- leave a gap that verify could not tell from a deleted row. With head + 1 a rollback takes
-- its number with it, and the primary key refuses two rows at one place in the chain.
CREATE TABLE IF NOT EXISTS audit_log (
    seq         bigint      PRIMARY KEY CHECK (seq >= 1),
    at          timestamptz NOT NULL,
    actor       text        NOT NULL,
    role        text        NOT NULL,
    purpose     text,
    action      text        NOT NULL,
    object_type text        NOT NULL,
    object_id   text        NOT NULL,
    detail      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    prev_hash   text        NOT NULL,
    hash        text        NOT NULL
);
-- What happened to an object, and what someone did, newest first.
CREATE INDEX IF NOT EXISTS audit_log_object ON audit_log (object_type, object_id, seq);
CREATE INDEX IF NOT EXISTS audit_log_actor ON audit_log (actor, seq);

CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'object_not_in_prerequisite_state';
END
$$;

DROP TRIGGER IF EXISTS audit_log_no_change ON audit_log;
CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
DROP TRIGGER IF EXISTS audit_log_no_truncate ON audit_log;
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
DROP TRIGGER IF EXISTS audit_trail_no_change ON audit_trail;
CREATE TRIGGER audit_trail_no_change BEFORE UPDATE OR DELETE ON audit_trail
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
DROP TRIGGER IF EXISTS audit_trail_no_truncate ON audit_trail;
CREATE TRIGGER audit_trail_no_truncate BEFORE TRUNCATE ON audit_trail
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();

-- The review service's role: it appends and reads the trail, never changes it. NOLOGIN: the
-- service logs in as a role of its own that is granted this one (docs/audit.md). Roles belong
-- to the server, not the database, so another database of the server may have made it; two
-- migrating at once may race, hence the handler.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'concord_review') THEN
        CREATE ROLE concord_review NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;
REVOKE ALL ON audit_log, audit_trail FROM concord_review;
GRANT SELECT, INSERT ON audit_log TO concord_review;
GRANT SELECT ON audit_trail TO concord_review;
