-- Who may do what. Users are people and service accounts; teams hold members with a role each (admin, member,
-- viewer) and projects; tokens belong either to a user (personal tokens, with a scope and an optional expiry) or to
-- a node name or pattern (agent tokens). Times are microseconds since the Unix epoch.

CREATE TABLE users (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    name           TEXT NOT NULL UNIQUE,
    -- `user` or `service`.
    kind           TEXT NOT NULL,
    -- 1 for an installation admin.
    admin          INTEGER NOT NULL DEFAULT 0,
    default_team   TEXT,
    created_at_us  INTEGER NOT NULL,
    created_by     TEXT,
    disabled_at_us INTEGER
);

CREATE TABLE teams (
    name          TEXT PRIMARY KEY NOT NULL,
    created_at_us INTEGER NOT NULL,
    created_by    TEXT
);

CREATE TABLE team_members (
    team    TEXT NOT NULL REFERENCES teams (name),
    user_id INTEGER NOT NULL REFERENCES users (id),
    -- `admin`, `member` or `viewer`.
    role    TEXT NOT NULL,
    PRIMARY KEY (team, user_id)
);

CREATE INDEX team_members_by_user ON team_members (user_id);

CREATE TABLE projects (
    team          TEXT NOT NULL REFERENCES teams (name),
    name          TEXT NOT NULL,
    created_at_us INTEGER NOT NULL,
    created_by    TEXT,
    PRIMARY KEY (team, name)
);

-- `role` is now the token's kind: `user` (a personal token of `user_id`, with `scope` read, submit or admin) or
-- `agent` (a join token bound to the node name or pattern in `node`).
ALTER TABLE tokens ADD COLUMN user_id INTEGER REFERENCES users (id);
ALTER TABLE tokens ADD COLUMN scope TEXT;
ALTER TABLE tokens ADD COLUMN node TEXT;
ALTER TABLE tokens ADD COLUMN expires_at_us INTEGER;
ALTER TABLE tokens ADD COLUMN created_by TEXT;
-- How many distinct nodes an agent token may register.
ALTER TABLE tokens ADD COLUMN max_nodes INTEGER;

-- An installation from before identities: its admin tokens become personal admin tokens of the user `admin`, and
-- its join tokens keep speaking for any node (`*`) until they are revoked and replaced by bound ones.
INSERT INTO users (name, kind, admin, created_at_us)
SELECT 'admin', 'user', 1, MIN(created_at_us) FROM tokens WHERE role = 'admin' HAVING COUNT(*) > 0;
UPDATE tokens SET user_id = (SELECT id FROM users WHERE name = 'admin'), scope = 'admin', role = 'user'
WHERE role = 'admin';
UPDATE tokens SET node = '*' WHERE role = 'agent';

-- The agent token each node registered with: no other token may speak for the node while that one is live. Kept
-- apart from `nodes`, which only the driver writes.
CREATE TABLE node_tokens (
    node     TEXT PRIMARY KEY NOT NULL,
    token_id INTEGER NOT NULL REFERENCES tokens (id)
);

-- Who owns MLflow experiments and runs, and which team sees them; NULL team: the whole installation (experiments)
-- or installation admins only (runs from before identities).
ALTER TABLE tracking_experiments ADD COLUMN owner TEXT;
ALTER TABLE tracking_experiments ADD COLUMN team TEXT;
ALTER TABLE tracking_runs ADD COLUMN owner TEXT;
ALTER TABLE tracking_runs ADD COLUMN team TEXT;

-- The team a sweep's trials run in, which sees the sweep.
ALTER TABLE sweeps ADD COLUMN team TEXT;
