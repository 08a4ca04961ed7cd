-- Secrets users and projects store for their jobs. Only the sealed value is kept (AES-256-GCM under the server's
-- secrets key, which is never in this file; `nonce` is the 12 random bytes it was sealed with, and the scope, owner
-- and name are authenticated with it, so a sealed value copied to another row does not open). `scope` is `user`
-- (owner: the user's name) or `project` (owner: `team/project`).
CREATE TABLE secrets (
    scope         TEXT NOT NULL,
    owner         TEXT NOT NULL,
    name          TEXT NOT NULL,
    nonce         BLOB NOT NULL,
    sealed        BLOB NOT NULL,
    created_at_us INTEGER NOT NULL,
    updated_at_us INTEGER NOT NULL,
    updated_by    TEXT,
    PRIMARY KEY (scope, owner, name)
);

-- The secrets a job reads: a JSON object of environment variable name to secret name.
ALTER TABLE jobs ADD COLUMN secrets TEXT NOT NULL DEFAULT '{}';
