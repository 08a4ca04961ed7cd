-- A requeued job's attempts that preemption used (they do not count against its retries) and the GPU-seconds its
-- attempts ran (the least-attained queue order files it by them), so that a server restart keeps both.
ALTER TABLE jobs ADD COLUMN preemptions INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN attained_gpu_s INTEGER NOT NULL DEFAULT 0;
