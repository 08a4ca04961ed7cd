-- The team whose quota a job counts against.
ALTER TABLE jobs ADD COLUMN team TEXT;
