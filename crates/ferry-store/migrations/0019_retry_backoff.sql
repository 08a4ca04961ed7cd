-- A job queued again after a failure may not start before this time (its retry's backoff), so that a server that
-- restarts meanwhile keeps it waiting; 0 for any time.
ALTER TABLE jobs ADD COLUMN not_before_us INTEGER NOT NULL DEFAULT 0;
