-- Experiment tracking in MLflow's model: experiments, runs, and each run's params, tags and metrics. Times here are
-- milliseconds since the Unix epoch, as MLflow's clients send them. Run ids are 32 hex digits, as MLflow's.

CREATE TABLE tracking_experiments (
    id                INTEGER PRIMARY KEY,
    name              TEXT NOT NULL UNIQUE,
    artifact_location TEXT NOT NULL,
    -- `active` or `deleted`.
    lifecycle_stage   TEXT NOT NULL,
    created_at_ms     INTEGER NOT NULL,
    updated_at_ms     INTEGER NOT NULL
);

-- MLflow's default experiment, which runs land in when no experiment is named.
INSERT INTO tracking_experiments (id, name, artifact_location, lifecycle_stage, created_at_ms, updated_at_ms)
VALUES (0, 'Default', 'mlflow-artifacts:/0', 'active', 0, 0);

CREATE TABLE tracking_experiment_tags (
    experiment_id INTEGER NOT NULL REFERENCES tracking_experiments (id),
    key           TEXT NOT NULL,
    value         TEXT NOT NULL,
    PRIMARY KEY (experiment_id, key)
);

CREATE TABLE tracking_runs (
    id              TEXT PRIMARY KEY NOT NULL,
    experiment_id   INTEGER NOT NULL REFERENCES tracking_experiments (id),
    name            TEXT NOT NULL,
    user_id         TEXT NOT NULL,
    -- RUNNING, SCHEDULED, FINISHED, FAILED or KILLED.
    status          TEXT NOT NULL,
    start_time_ms   INTEGER,
    end_time_ms     INTEGER,
    artifact_uri    TEXT NOT NULL,
    lifecycle_stage TEXT NOT NULL
);

CREATE INDEX tracking_runs_by_experiment ON tracking_runs (experiment_id, start_time_ms);

CREATE TABLE tracking_params (
    run_id TEXT NOT NULL REFERENCES tracking_runs (id),
    key    TEXT NOT NULL,
    value  TEXT NOT NULL,
    PRIMARY KEY (run_id, key)
);

CREATE TABLE tracking_tags (
    run_id TEXT NOT NULL REFERENCES tracking_runs (id),
    key    TEXT NOT NULL,
    value  TEXT NOT NULL,
    PRIMARY KEY (run_id, key)
);

-- Every logged value of every metric. A NULL value is NaN, which SQLite cannot hold as a REAL.
CREATE TABLE tracking_metrics (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id       TEXT NOT NULL REFERENCES tracking_runs (id),
    key          TEXT NOT NULL,
    value        REAL,
    timestamp_ms INTEGER NOT NULL,
    step         INTEGER NOT NULL
);

CREATE INDEX tracking_metrics_by_key ON tracking_metrics (run_id, key, id);

-- Each metric's latest value (the greatest step, then the greatest timestamp), kept as values are logged.
CREATE TABLE tracking_latest_metrics (
    run_id       TEXT NOT NULL REFERENCES tracking_runs (id),
    key          TEXT NOT NULL,
    value        REAL,
    timestamp_ms INTEGER NOT NULL,
    step         INTEGER NOT NULL,
    PRIMARY KEY (run_id, key)
);
