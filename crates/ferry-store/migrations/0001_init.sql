-- Ferry's first schema. Times are microseconds since the Unix epoch; JSON columns hold small documents whose shape
-- is owned by the store crate.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);

CREATE TABLE tokens (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT NOT NULL,
    role          TEXT NOT NULL,
    hash          TEXT NOT NULL UNIQUE,
    created_at_us INTEGER NOT NULL,
    revoked_at_us INTEGER
);

CREATE TABLE nodes (
    name             TEXT PRIMARY KEY NOT NULL,
    pool             TEXT NOT NULL,
    cpu_millis       INTEGER NOT NULL,
    memory_bytes     INTEGER NOT NULL,
    gpus             TEXT NOT NULL,
    labels           TEXT NOT NULL,
    agent_version    TEXT NOT NULL,
    limits           TEXT NOT NULL,
    ready            INTEGER NOT NULL,
    usage            TEXT,
    registered_at_us INTEGER NOT NULL,
    last_seen_us     INTEGER NOT NULL
);

CREATE TABLE jobs (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    name             TEXT,
    project          TEXT,
    owner            TEXT NOT NULL,
    state            TEXT NOT NULL,
    command          TEXT NOT NULL,
    workdir          TEXT NOT NULL,
    env              TEXT NOT NULL,
    cpu_millis       INTEGER NOT NULL,
    memory_bytes     INTEGER NOT NULL,
    gpus             INTEGER NOT NULL,
    priority         TEXT NOT NULL,
    retries          INTEGER NOT NULL,
    attempt          INTEGER NOT NULL DEFAULT 0,
    max_runtime_s    INTEGER,
    node             TEXT,
    gpu_ids          TEXT NOT NULL DEFAULT '[]',
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    exit_code        INTEGER,
    signal           INTEGER,
    message          TEXT,
    submitted_at_us  INTEGER NOT NULL,
    started_at_us    INTEGER,
    finished_at_us   INTEGER
);

-- The server reloads every unfinished job at start, and listings filter by state.
CREATE INDEX jobs_by_state ON jobs (state, id);

CREATE TABLE job_events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id  INTEGER NOT NULL REFERENCES jobs (id),
    at_us   INTEGER NOT NULL,
    state   TEXT NOT NULL,
    message TEXT NOT NULL
);

CREATE INDEX job_events_by_job ON job_events (job_id, id);
