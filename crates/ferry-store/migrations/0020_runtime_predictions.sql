-- Runtime predictions (ferry_core::predict): what kind of job each is, as stable 64-bit keys (the same user, name,
-- command, project and resources; the same user and name), so that the server learns from finished jobs without
-- reading their specs; and the prediction a job was given when it was submitted, with what it rested on.
ALTER TABLE jobs ADD COLUMN kind_key INTEGER;
ALTER TABLE jobs ADD COLUMN name_key INTEGER;
ALTER TABLE jobs ADD COLUMN predicted_s INTEGER;
ALTER TABLE jobs ADD COLUMN predicted_samples INTEGER;
ALTER TABLE jobs ADD COLUMN predicted_basis TEXT;
-- What the server reads at start: the runtimes of recent successful jobs, oldest first.
CREATE INDEX jobs_succeeded_by_end ON jobs (finished_at_us) WHERE state = 'succeeded' AND kind_key IS NOT NULL;
