-- Every job gets an MLflow run (its metrics, params and artifacts), and a job may be one trial of a sweep. The sweep
-- link is written with the job in the driver's transaction, so after a crash a trial either has its job or has none:
-- the sweep resubmits exactly the trials that have none, never one twice.
ALTER TABLE jobs ADD COLUMN tracking_run_id TEXT;
ALTER TABLE jobs ADD COLUMN tracking_experiment_id INTEGER;
ALTER TABLE jobs ADD COLUMN sweep_id INTEGER;
ALTER TABLE jobs ADD COLUMN sweep_trial INTEGER;

CREATE INDEX jobs_by_sweep ON jobs (sweep_id, sweep_trial) WHERE sweep_id IS NOT NULL;

CREATE TABLE sweeps (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    name           TEXT,
    owner          TEXT NOT NULL,
    -- The sweep file as submitted (TOML): parsed again at every start, so the search is rebuilt from it.
    spec           TEXT NOT NULL,
    -- The shipped folder every trial runs in, as JSON (`CodeSpec`); NULL when it ships nothing.
    code           TEXT,
    experiment_id  INTEGER NOT NULL REFERENCES tracking_experiments (id),
    -- running, finished, cancelled or failed.
    state          TEXT NOT NULL,
    message        TEXT,
    created_at_us  INTEGER NOT NULL,
    finished_at_us INTEGER
);

-- A trial is written (with its parameters and its MLflow run) before its job is submitted.
CREATE TABLE sweep_trials (
    sweep_id    INTEGER NOT NULL REFERENCES sweeps (id),
    idx         INTEGER NOT NULL,
    params      TEXT NOT NULL,
    run_id      TEXT NOT NULL,
    -- NULL while the trial runs; completed, failed or stopped once it has ended.
    outcome     TEXT,
    stop_reason TEXT,
    PRIMARY KEY (sweep_id, idx)
);
