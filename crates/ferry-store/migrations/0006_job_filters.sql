-- Listing jobs by who or what they belong to, newest first, and by when they were submitted, without a scan of the
-- whole table (the dashboard and `ferry ps` filter 100,000 jobs this way).
CREATE INDEX jobs_by_owner ON jobs (owner, id);
CREATE INDEX jobs_by_team ON jobs (team, id);
CREATE INDEX jobs_by_project ON jobs (project, id);
CREATE INDEX jobs_by_node ON jobs (node, id);
CREATE INDEX jobs_by_submitted ON jobs (submitted_at_us);
