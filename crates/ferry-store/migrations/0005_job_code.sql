-- Shipped code: the archive a job runs in (its SHA-256 and compressed size) and the git state of the folder it was
-- packed from (the commit, and the uncommitted diff when there was one). All unset for jobs that ship nothing.
ALTER TABLE jobs ADD COLUMN code_sha256 TEXT;
ALTER TABLE jobs ADD COLUMN code_bytes INTEGER;
ALTER TABLE jobs ADD COLUMN git_commit TEXT;
ALTER TABLE jobs ADD COLUMN git_diff TEXT;
