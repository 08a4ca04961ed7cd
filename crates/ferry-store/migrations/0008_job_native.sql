-- Where an engine (Slurm, Ray, Spark...) runs the job's current attempt: the engine kind, the engine's own id for
-- it, and the native form Ferry generated (the batch script, the submission body). Unset on agent pools.
ALTER TABLE jobs ADD COLUMN native_kind TEXT;
ALTER TABLE jobs ADD COLUMN native_id TEXT;
ALTER TABLE jobs ADD COLUMN native_spec TEXT;
