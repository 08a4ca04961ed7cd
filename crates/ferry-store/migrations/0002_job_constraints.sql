-- Where a job may run and how much of a GPU it takes: a share of one GPU, allowed GPU models, and a node selector.
ALTER TABLE jobs ADD COLUMN gpu_share_milli INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN gpu_types TEXT NOT NULL DEFAULT '[]';
ALTER TABLE jobs ADD COLUMN selector TEXT NOT NULL DEFAULT '{}';
