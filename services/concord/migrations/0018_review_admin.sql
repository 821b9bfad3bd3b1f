-- The review service's administration (issue 16, role admin): the principals that have used
-- the API (from their verified tokens; the identity provider owns the accounts) and whether
-- Concord refuses one before its token expires, and the alert subscriptions consumers follow.
CREATE TABLE IF NOT EXISTS review_principals (
    issuer       text        NOT NULL,
    subject      text        NOT NULL,
    role         text        NOT NULL,
    display_name text,
    first_seen   timestamptz NOT NULL,
    last_seen    timestamptz NOT NULL,
    disabled_at  timestamptz,
    disabled_by  text,
    PRIMARY KEY (issuer, subject)
);

CREATE TABLE IF NOT EXISTS alert_subscriptions (
    name        text PRIMARY KEY,
    description text        NOT NULL,
    filter      jsonb       NOT NULL,
    created_by  text        NOT NULL,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);
