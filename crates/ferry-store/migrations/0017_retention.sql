-- Retention: the sweep finds finished jobs by when they finished, records when it removed a job's stored output (so
-- the API can say so instead of answering nothing), and artifacts count against the project of the job whose run
-- logged them, which the run now records itself.
CREATE INDEX jobs_by_finished ON jobs (finished_at_us) WHERE finished_at_us IS NOT NULL;
ALTER TABLE jobs ADD COLUMN output_removed_at_us INTEGER;
ALTER TABLE tracking_runs ADD COLUMN project TEXT;
UPDATE tracking_runs SET project = (SELECT project FROM jobs WHERE jobs.tracking_run_id = tracking_runs.id)
WHERE EXISTS (SELECT 1 FROM jobs WHERE jobs.tracking_run_id = tracking_runs.id AND jobs.project IS NOT NULL);
