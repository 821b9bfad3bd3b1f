-- The review service's state of an alert (issue 16): who acknowledged it and who it is
-- assigned to, reviewers' comments, and every decision sent on concord.resolutions. The alert
-- itself stays the alerting stage's; an acknowledgement sets its status (ACKNOWLEDGED), which
-- the alerting stage keeps while the conflict is open.
CREATE TABLE IF NOT EXISTS alert_reviews (
    alert_id        text PRIMARY KEY REFERENCES alerts (alert_id),
    acknowledged_by text,
    acknowledged_at timestamptz,
    assignee        text,
    assigned_by     text,
    assigned_at     timestamptz
);
CREATE INDEX IF NOT EXISTS alert_reviews_assignee ON alert_reviews (assignee);

CREATE TABLE IF NOT EXISTS alert_comments (
    comment_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alert_id   text        NOT NULL REFERENCES alerts (alert_id),
    author     text        NOT NULL,
    written_at timestamptz NOT NULL,
    body       text        NOT NULL
);
CREATE INDEX IF NOT EXISTS alert_comments_alert ON alert_comments (alert_id, comment_id);

CREATE TABLE IF NOT EXISTS alert_decisions (
    resolution_id  text PRIMARY KEY,
    alert_id       text        NOT NULL REFERENCES alerts (alert_id),
    decision       text        NOT NULL,
    chosen_value   text,
    reason_code    text,
    proposed_value text,
    overrules      boolean     NOT NULL,
    decided_by     text        NOT NULL,
    decided_at     timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS alert_decisions_alert ON alert_decisions (alert_id, decided_at);

-- The list's filters and its cursor (opened_at, alert_id).
CREATE INDEX IF NOT EXISTS alerts_opened ON alerts (opened_at, alert_id);
CREATE INDEX IF NOT EXISTS alerts_status_opened ON alerts (status, opened_at, alert_id);
