-- Runs on engines without a secret store (Ray) fetch their secrets once, when they start, with a ticket their
-- entrypoint carries; a used ticket is recorded here so that whoever else reads the entrypoint cannot use it again.
CREATE TABLE secret_fetches (
    job_id     INTEGER NOT NULL,
    attempt    INTEGER NOT NULL,
    fetched_at_us INTEGER NOT NULL,
    PRIMARY KEY (job_id, attempt)
);
