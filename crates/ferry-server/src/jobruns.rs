//! Every job's MLflow run: made when the job is submitted and handed to the job through the environment; the store
//! moves it along with the job's own state changes (`Tx::running`, `Tx::finished`), in the same transaction.
//!
//! A job gets `MLFLOW_RUN_ID`, `MLFLOW_EXPERIMENT_ID`, `MLFLOW_TRACKING_TOKEN` (a token for the tracking API alone,
//! valid while the job is) and `MLFLOW_TRACKING_URI` (the server's address as the node reaches it: the agent's own
//! server address on agent nodes, the configured public address on engines), so that `mlflow.start_run()` inside the
//! job attaches to the job's run with no code change. What the user set in the job's environment wins.

use std::collections::BTreeMap;
use std::sync::Arc;

use ferry_api::agent::SecretEnv;
use ferry_store::{JobRecord, JobTracking, Ownership, RunRecord, Store};
use rand::RngCore;

use crate::error::ApiError;

/// MLflow's variables, as the client reads them.
pub const RUN_ID_VAR: &str = "MLFLOW_RUN_ID";
pub const EXPERIMENT_ID_VAR: &str = "MLFLOW_EXPERIMENT_ID";
pub const TOKEN_VAR: &str = "MLFLOW_TRACKING_TOKEN";
pub const URI_VAR: &str = "MLFLOW_TRACKING_URI";

/// The longest experiment name, as MLflow's.
const EXPERIMENT_NAME_CHARS_MAX: usize = 500;
/// The experiment runs land in when a job names none and has no project.
const DEFAULT_EXPERIMENT: &str = "Default";

/// What the driver adds to each run's environment.
#[derive(Clone)]
pub struct TrackingEnv {
    pub key: Arc<Vec<u8>>,
    /// The server's address for jobs, when configured; else each node's agent (or engine bridge) fills in the
    /// address it reaches the server at.
    pub uri: Option<String>,
}

impl TrackingEnv {
    /// Adds the job's tracking variables to `env`, and its token to `secrets`, keeping what the user set.
    pub fn add(&self, record: &JobRecord, env: &mut BTreeMap<String, String>, secrets: &mut SecretEnv) {
        let Some(tracking) = &record.spec.tracking else { return };
        let mut put = |key: &str, value: String| {
            env.entry(key.to_string()).or_insert(value);
        };
        put(RUN_ID_VAR, tracking.run_id.clone());
        put(EXPERIMENT_ID_VAR, tracking.experiment_id.to_string());
        if let Some(uri) = &self.uri {
            put(URI_VAR, uri.clone());
        }
        if !env.contains_key(TOKEN_VAR) {
            secrets.0.entry(TOKEN_VAR.to_string()).or_insert_with(|| crate::auth::job_token(&self.key, record.id));
        }
    }
}

fn now_ms() -> i64 {
    crate::driver::now_us() / 1000
}

/// The experiment named `name`, made if it does not exist (owned by `ownership`); refused when it was deleted.
pub async fn experiment_named(store: &Store, name: &str, ownership: Ownership<'_>) -> Result<i64, ApiError> {
    if name.trim().is_empty() || name.chars().count() > EXPERIMENT_NAME_CHARS_MAX || name.chars().any(char::is_control)
    {
        return Err(ApiError::invalid(format!(
            "`{}` is not an experiment name: give 1 to {EXPERIMENT_NAME_CHARS_MAX} printable characters",
            name.escape_debug()
        )));
    }
    for _ in 0..3 {
        if let Some(found) = store.experiment_by_name(name).await? {
            if found.lifecycle_stage != "active" {
                return Err(ApiError::invalid(format!(
                    "the experiment `{name}` is deleted; restore it (MLflow's experiments/restore) or name another \
                     with --experiment"
                )));
            }
            return Ok(found.id);
        }
        if let Some(id) = store.create_experiment(name, None, &[], ownership, now_ms()).await? {
            return Ok(id);
        }
        // Made by someone else in between: read it again.
    }
    Err(ApiError::unavailable())
}

/// What a job's run is made of.
pub struct NewRun<'a> {
    /// The experiment's name; `None` for the job's project, else MLflow's default experiment.
    pub experiment: Option<&'a str>,
    pub project: Option<&'a str>,
    pub owner: &'a str,
    /// The job's team, which sees the run.
    pub team: Option<&'a str>,
    /// The job's name; the run is renamed `job-<id>` once the job has an id when it has none.
    pub name: Option<&'a str>,
    pub command: &'a [String],
    /// The git commit of the shipped code, recorded as MLflow records it (`mlflow.source.git.commit`).
    pub git_commit: Option<&'a str>,
    pub params: Vec<(String, String)>,
    pub tags: Vec<(String, String)>,
}

/// Makes the run of a job about to be submitted, `SCHEDULED` until the job starts.
pub async fn create(store: &Store, new: NewRun<'_>) -> Result<JobTracking, ApiError> {
    let experiment_name = new.experiment.or(new.project).unwrap_or(DEFAULT_EXPERIMENT);
    let ownership = Ownership { owner: Some(new.owner), team: new.team };
    let experiment_id = experiment_named(store, experiment_name, ownership).await?;
    create_in(store, experiment_id, new).await
}

/// Makes a job's run in a known experiment.
pub async fn create_in(store: &Store, experiment_id: i64, new: NewRun<'_>) -> Result<JobTracking, ApiError> {
    let experiment = store.experiment(experiment_id).await?.ok_or_else(ApiError::unavailable)?;
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    let id = hex::encode(bytes);
    let name = new.name.map_or_else(|| "job".to_string(), str::to_string);
    let source: String = new.command.join(" ").chars().take(500).collect();
    let mut tags = vec![
        ("mlflow.runName".to_string(), name.clone()),
        ("mlflow.user".to_string(), new.owner.to_string()),
        ("mlflow.source.name".to_string(), source),
        ("mlflow.source.type".to_string(), "JOB".to_string()),
    ];
    if let Some(commit) = new.git_commit {
        tags.push(("mlflow.source.git.commit".to_string(), commit.to_string()));
    }
    tags.extend(new.tags);
    let run = RunRecord {
        id: id.clone(),
        experiment_id,
        name,
        user_id: new.owner.to_string(),
        status: "SCHEDULED".to_string(),
        start_time_ms: None,
        end_time_ms: None,
        artifact_uri: format!("{}/{id}/artifacts", experiment.artifact_location.trim_end_matches('/')),
        lifecycle_stage: "active".to_string(),
        owner: Some(new.owner.to_string()),
        team: new.team.map(str::to_string),
        project: new.project.map(str::to_string),
    };
    store.create_run(&run, &tags).await?;
    if !new.params.is_empty() {
        let _ = store.log_batch(&id, &[], &new.params, &[]).await?;
    }
    Ok(JobTracking { run_id: id, experiment_id })
}

/// Ties a run to the job made for it: the job's id as a tag, and its name when the job has none.
pub async fn attach(store: &Store, run_id: &str, job: u64, named: bool) -> Result<(), ApiError> {
    let tags = [("ferry.job_id".to_string(), job.to_string())];
    let _ = store.log_batch(run_id, &[], &[], &tags).await?;
    if !named {
        store.update_run(run_id, None, None, Some(&format!("job-{job}"))).await?;
    }
    Ok(())
}

/// Undoes `create` for a job that was refused.
pub async fn discard(store: &Store, run_id: &str) {
    if let Err(e) = store.set_run_stage(run_id, "deleted").await {
        tracing::warn!(run = %run_id, error = %e, "could not delete the run of a refused job");
    }
}
