-- Whether a job saves checkpoints and resumes from them (`ferry run --checkpoints`): the least-attained queue order
-- may stop such a job, after its lease, for a job that has had less GPU time.
ALTER TABLE jobs ADD COLUMN checkpoints INTEGER NOT NULL DEFAULT 0;
