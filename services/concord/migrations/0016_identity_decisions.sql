-- Identity review decisions (issue 16): a reviewer links the two patients of a review task
-- (a merge, recorded like any other in identity_merges) or keeps them apart (a never-link
-- pair). status goes OPEN -> DECIDED; decision says which.
ALTER TABLE identity_review_tasks
    ADD COLUMN IF NOT EXISTS decision   text CHECK (decision IN ('LINKED', 'KEPT_APART')),
    ADD COLUMN IF NOT EXISTS decided_by text,
    ADD COLUMN IF NOT EXISTS decided_at timestamptz;

-- Records a reviewer said are two people: matching never links them, nor asks again. A pair
-- names two source views (source, view_id: the record's first local id), not enterprise ids:
-- merges and unmerges re-point enterprise ids (the provisional id is absorbed, an MPI id
-- absorbs the candidate), while a view stays the same record and moves with its patient, so
-- "the patient holding this view now" is always the patient the reviewer meant. The pair is
-- unordered: stored with (source_a, view_a) < (source_b, view_b) in code point order (the
-- "C" collation), whatever the database's collation. The enterprise ids are those of the
-- decision's time, for the record only.
CREATE TABLE IF NOT EXISTS identity_never_link (
    source_a        text NOT NULL,
    view_a          text NOT NULL,
    source_b        text NOT NULL,
    view_b          text NOT NULL,
    task_id         text NOT NULL REFERENCES identity_review_tasks (task_id),
    enterprise_id_a text NOT NULL,
    enterprise_id_b text NOT NULL,
    decided_by      text NOT NULL,
    decided_at      timestamptz NOT NULL,
    PRIMARY KEY (source_a, view_a, source_b, view_b),
    CHECK ((source_a COLLATE "C", view_a COLLATE "C") < (source_b COLLATE "C", view_b COLLATE "C"))
);
CREATE INDEX IF NOT EXISTS identity_never_link_b ON identity_never_link (source_b, view_b);
CREATE INDEX IF NOT EXISTS identity_never_link_task ON identity_never_link (task_id);
