-- The audit log: one row per state-changing request, sign-in and refusal, never changed once written (the trigger
-- below refuses updates); only the retention sweep deletes, and only rows older than the configured retention.
CREATE TABLE audit_log (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at_us       INTEGER NOT NULL,
    -- Who: a user's or service account's name, `agent:<token name>`, `job:<id>`, or NULL when no one was
    -- authenticated.
    actor       TEXT,
    -- `user`, `service`, `agent`, `job` or `anonymous`.
    actor_kind  TEXT NOT NULL,
    -- What: the method and the route's pattern (`POST /api/v1/jobs/{id}/cancel`), or a named action
    -- (`sign-in`).
    action      TEXT NOT NULL,
    -- Which object: the request's path with its values (`/api/v1/jobs/12/cancel`), and what the handler said of it.
    object      TEXT,
    detail      TEXT,
    -- The HTTP status, and `ok`, `denied` (401, 403, 429) or `failed`.
    status      INTEGER NOT NULL,
    result      TEXT NOT NULL,
    -- From where: the client's address.
    source      TEXT
);

CREATE INDEX audit_log_by_time ON audit_log (at_us);
CREATE INDEX audit_log_by_actor ON audit_log (actor, at_us);

CREATE TRIGGER audit_log_append_only BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;

-- Dashboard sessions: the browser's cookie holds a random session id, of which only the SHA-256 is stored; a session
-- is not an API token and reaches only what its user may. `via` says how it was signed in (`token`, `oidc` or
-- `oidc-device`), and a single sign-on session keeps the provider's refresh token (sealed by the server, never in
-- the clear) so that it is checked again with the provider when `recheck_at_us` passes.
CREATE TABLE sessions (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    hash           TEXT NOT NULL UNIQUE,
    user_id        INTEGER NOT NULL REFERENCES users (id),
    -- The scope the session acts with (a token sign-in keeps its token's).
    scope          TEXT NOT NULL,
    -- The API token a dashboard sign-in was made with: revoking or expiring it ends the session too.
    token_id       INTEGER REFERENCES tokens (id),
    via            TEXT NOT NULL,
    created_at_us  INTEGER NOT NULL,
    expires_at_us  INTEGER NOT NULL,
    refresh_token  TEXT,
    recheck_at_us  INTEGER,
    source         TEXT
);

CREATE INDEX sessions_by_user ON sessions (user_id);

-- Single sign-on: the provider's subject a user signed in as (so that a renamed claim cannot take over another
-- account), and which memberships the provider's groups granted (`sso`, re-derived at each sign-in) as against those
-- an admin set by hand (`admin`, left alone by sign-ins).
ALTER TABLE users ADD COLUMN oidc_subject TEXT;
CREATE UNIQUE INDEX users_by_oidc_subject ON users (oidc_subject) WHERE oidc_subject IS NOT NULL;
ALTER TABLE team_members ADD COLUMN granted_by TEXT NOT NULL DEFAULT 'admin';

-- Rules the admin sets: a member of the provider's group `grp` is given `role` in `team`.
CREATE TABLE group_rules (
    grp           TEXT NOT NULL,
    team          TEXT NOT NULL REFERENCES teams (name),
    role          TEXT NOT NULL,
    created_at_us INTEGER NOT NULL,
    created_by    TEXT,
    PRIMARY KEY (grp, team)
);

-- Quotas set at run time through the API (JSON: `{"quota": {...}, "borrow_limit": {...}}`), for teams and projects
-- whose quotas the configuration file does not set; NULL: none set here.
ALTER TABLE teams ADD COLUMN quota TEXT;
ALTER TABLE projects ADD COLUMN quota TEXT;
