-- MLflow 3's logged models: a model a run (or nobody) logged into an experiment, with its own artifacts under
-- `mlflow-artifacts:/<experiment>/models/<id>/artifacts`, its tags and params, and the runs that produced it
-- (`runs/outputs`) or used it (`runs/log-inputs`). Times are milliseconds since the Unix epoch, as MLflow's.

CREATE TABLE tracking_logged_models (
    -- `m-` and 32 hex digits.
    id              TEXT PRIMARY KEY NOT NULL,
    experiment_id   INTEGER NOT NULL REFERENCES tracking_experiments (id),
    name            TEXT NOT NULL,
    artifact_uri    TEXT NOT NULL,
    -- PENDING, READY or UPLOAD_FAILED.
    status          TEXT NOT NULL,
    status_message  TEXT,
    model_type      TEXT,
    source_run_id   TEXT,
    -- `active` or `deleted`.
    lifecycle_stage TEXT NOT NULL,
    created_at_ms   INTEGER NOT NULL,
    updated_at_ms   INTEGER NOT NULL
);

CREATE INDEX tracking_logged_models_by_experiment ON tracking_logged_models (experiment_id, created_at_ms);

CREATE TABLE tracking_logged_model_tags (
    model_id TEXT NOT NULL REFERENCES tracking_logged_models (id),
    key      TEXT NOT NULL,
    value    TEXT NOT NULL,
    PRIMARY KEY (model_id, key)
);

CREATE TABLE tracking_logged_model_params (
    model_id TEXT NOT NULL REFERENCES tracking_logged_models (id),
    key      TEXT NOT NULL,
    value    TEXT NOT NULL,
    PRIMARY KEY (model_id, key)
);

-- `direction` is `output` (the run produced the model, at `step`) or `input` (the run used it).
CREATE TABLE tracking_run_models (
    run_id    TEXT NOT NULL REFERENCES tracking_runs (id),
    model_id  TEXT NOT NULL REFERENCES tracking_logged_models (id),
    direction TEXT NOT NULL,
    step      INTEGER NOT NULL,
    PRIMARY KEY (run_id, model_id, direction)
);
