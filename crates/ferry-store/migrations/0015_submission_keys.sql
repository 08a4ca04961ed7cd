-- Idempotency keys of submissions: a client that retries a submission after a lost answer sends the same key and
-- gets the first job back instead of a second one. The key is the submitter's own (two users may pick the same
-- one), recorded in the transaction that inserts the job, and kept for a day.
CREATE TABLE submission_keys (
    owner          TEXT NOT NULL,
    key            TEXT NOT NULL,
    -- The SHA-256 of the request, so a key reused for a different request is refused rather than answered with
    -- a job the client did not ask for.
    request_sha256 TEXT NOT NULL,
    job_id         INTEGER NOT NULL,
    created_at_us  INTEGER NOT NULL,
    PRIMARY KEY (owner, key)
);

CREATE INDEX submission_keys_by_time ON submission_keys (created_at_us);
