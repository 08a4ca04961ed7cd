-- Gangs: a job may run as several workers, one per node, started together. `workers` holds each worker's node, GPUs
-- and end for the current attempt (JSON, empty for a single-node job); nodes say where their peers reach them.
ALTER TABLE jobs ADD COLUMN nodes INTEGER NOT NULL DEFAULT 1;
ALTER TABLE jobs ADD COLUMN workers TEXT NOT NULL DEFAULT '[]';
ALTER TABLE nodes ADD COLUMN address TEXT;
