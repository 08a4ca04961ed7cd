-- The scheduler's reason for a timeline entry as data (ferry-store's `EventReason`, JSON): where a job was placed
-- and why there, or for which job and by which rule it was preempted. NULL for entries without one, and for every
-- entry written before this column.
ALTER TABLE job_events ADD COLUMN reason TEXT;
