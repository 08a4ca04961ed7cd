//! The sweep controller: one task that drives every running sweep's search (`ferry_sweep::Sweep`, pure and seeded)
//! with what the store says, and turns its proposals into trial jobs and its stop decisions into cancellations.
//!
//! Each tick, for each running sweep: the objective metric's new values (read from the tracking tables, in the order
//! they were logged) are reported to the search, which may stop trials; trials whose jobs ended are finished; new
//! trials are proposed up to the sweep's parallelism and submitted. A trial is written (params and MLflow run) before
//! its job is submitted, and the job carries its sweep and trial into the driver's commit, so after a crash the
//! controller rebuilds the search from the store (`Sweep::restore`) and submits exactly the trials that have no job.
//! Trials are ordinary jobs of the sweep's owner: they queue under the owner's fair share and quotas.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use ferry_api::jobs::{JobState, SubmitJob};
use ferry_store::{JobRecord, SweepLink, SweepRecord};
use ferry_sweep::{ParamValue, Sweep, SweepSpec, TrialIndex, TrialOutcome, TrialRecord};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

use crate::driver::{now_us, Command};
use crate::error::ApiError;
use crate::state::AppState;

/// How often each running sweep is looked at.
const TICK: Duration = Duration::from_millis(500);
/// Values of the objective read per sweep and tick, at most.
const VALUES_PER_TICK: u32 = 20_000;
/// Trials that ended without ever logging the objective before the sweep gives up: the trials do not log it.
const SILENT_TRIALS_MAX: usize = 3;
/// The state of a sweep whose trials run.
const RUNNING: &str = "running";

/// What the controller is asked to do.
pub enum SweepCommand {
    /// A sweep was stored: start driving it.
    Started(u64),
    /// Cancel a sweep: stop its running trials, create no more.
    Cancel { id: u64, by: String, reply: oneshot::Sender<Result<(), ApiError>> },
}

#[derive(Clone)]
pub struct SweepsHandle {
    tx: mpsc::Sender<SweepCommand>,
}

impl SweepsHandle {
    pub fn channel() -> (SweepsHandle, mpsc::Receiver<SweepCommand>) {
        let (tx, rx) = mpsc::channel(1024);
        (SweepsHandle { tx }, rx)
    }

    pub async fn started(&self, id: u64) {
        let _ = self.tx.send(SweepCommand::Started(id)).await;
    }

    pub async fn cancel(&self, id: u64, by: String) -> Result<(), ApiError> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(SweepCommand::Cancel { id, by, reply }).await.map_err(|_| ApiError::unavailable())?;
        answer.await.map_err(|_| ApiError::unavailable())?
    }
}

/// The job every trial runs, as the `[trial]` table of the sweep file gives it.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrialJob {
    /// Whole GPUs (`1`) or a share (`"0.5"`).
    #[serde(default)]
    gpus: Option<toml::Value>,
    /// CPUs: `2`, `0.5` or `"500m"`.
    #[serde(default)]
    cpus: Option<toml::Value>,
    /// `"8GiB"`.
    #[serde(default)]
    memory: Option<String>,
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    pool: Option<String>,
    #[serde(default)]
    project: Option<String>,
    #[serde(default)]
    team: Option<String>,
    #[serde(default)]
    priority: Option<String>,
    #[serde(default)]
    retries: Option<u32>,
    /// `"2h"`.
    #[serde(default)]
    max_runtime: Option<String>,
    /// Trials save checkpoints and resume from them (`ferry run --checkpoints`).
    #[serde(default)]
    checkpoints: bool,
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// Secrets every trial reads, by name (`secrets = ["HF_TOKEN"]`), as `ferry run --secret` gives them.
    #[serde(default)]
    secrets: Vec<String>,
    #[serde(default)]
    selector: BTreeMap<String, String>,
    #[serde(default)]
    gpu_types: Vec<String>,
    /// An absolute directory on the node, instead of shipped code.
    #[serde(default)]
    workdir: Option<String>,
    /// The MLflow experiment of the trials' runs; by default the sweep's name, else `sweeps`.
    #[serde(default)]
    experiment: Option<String>,
}

/// A number or a string, as text for the unit parsers.
fn amount_text(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

impl TrialJob {
    pub fn parse(spec: &SweepSpec) -> Result<TrialJob, String> {
        toml::Value::Table(spec.trial.clone()).try_into().map_err(|e| format!("[trial]: {}", e.to_string().trim()))
    }

    pub fn experiment(&self, spec: &SweepSpec) -> String {
        self.experiment.clone().or_else(|| spec.name.clone()).unwrap_or_else(|| "sweeps".to_string())
    }

    /// The job of one trial, as a submission would give it.
    pub fn submission(
        &self,
        spec: &SweepSpec,
        params: &BTreeMap<String, ParamValue>,
        index: TrialIndex,
        code: Option<ferry_api::code::CodeSpec>,
    ) -> Result<SubmitJob, String> {
        use ferry_units::{parse_cpus, parse_duration_s, parse_gpus, parse_memory};
        let (gpus, share) = match &self.gpus {
            Some(v) => {
                let text = amount_text(v).ok_or("[trial] gpus: give a number such as 1 or \"0.5\"")?;
                parse_gpus(&text).map_err(|e| format!("[trial] gpus: {}", e.0))?
            }
            None => (0, 0),
        };
        let cpus = match &self.cpus {
            Some(v) => {
                let text = amount_text(v).ok_or("[trial] cpus: give a number such as 2 or \"500m\"")?;
                Some(parse_cpus(&text).map_err(|e| format!("[trial] cpus: {}", e.0))?)
            }
            None => None,
        };
        let priority = match &self.priority {
            Some(p) => Some(ferry_api::jobs::PriorityClass::parse(p).ok_or_else(|| {
                format!("[trial] priority: `{p}` is not a priority; use low, normal, high or urgent")
            })?),
            None => None,
        };
        let mut env = self.env.clone();
        env.extend(spec.env_for(params));
        let name = format!("{}-trial-{index}", spec.name.as_deref().unwrap_or("sweep"));
        Ok(SubmitJob {
            command: spec.command_for(params),
            workdir: self.workdir.clone().unwrap_or_default(),
            code: if self.workdir.is_some() { None } else { code },
            name: Some(name),
            project: self.project.clone(),
            team: self.team.clone(),
            env,
            secrets: self.secrets.iter().map(|n| (n.clone(), n.clone())).collect(),
            cpu_millis: cpus,
            memory_bytes: self
                .memory
                .as_deref()
                .map(parse_memory)
                .transpose()
                .map_err(|e| format!("[trial] memory: {}", e.0))?,
            gpus: Some(gpus),
            gpu_share_milli: (share > 0).then_some(share),
            gpu_types: self.gpu_types.clone(),
            selector: self.selector.clone(),
            priority,
            retries: self.retries,
            max_runtime_s: self
                .max_runtime
                .as_deref()
                .map(parse_duration_s)
                .transpose()
                .map_err(|e| format!("[trial] max_runtime: {}", e.0))?,
            nodes: None,
            pool: self.pool.clone(),
            image: self.image.clone(),
            experiment: None,
            checkpoints: self.checkpoints,
        })
    }
}

/// One running sweep, as the controller drives it.
struct Active {
    record: SweepRecord,
    search: Sweep,
    trial: TrialJob,
    code: Option<ferry_api::code::CodeSpec>,
    /// Each trial's run, and each run's trial.
    runs: HashMap<String, TrialIndex>,
    /// The last objective value read, by its place in the metric log.
    seq: i64,
    /// Trials asked to stop, not yet ended.
    stopping: HashMap<TrialIndex, String>,
    /// Trials whose jobs ended without a single value of the objective.
    silent: usize,
}

pub async fn run(state: AppState, mut commands: mpsc::Receiver<SweepCommand>) {
    let mut active: BTreeMap<u64, Active> = BTreeMap::new();
    match state.store.sweeps(Some(RUNNING), u32::MAX, None).await {
        Ok(records) => {
            for record in records {
                let id = record.id;
                match load(&state, record).await {
                    Ok(a) => {
                        tracing::info!(sweep = id, trials = a.search.trials().len(), "resuming sweep");
                        active.insert(id, a);
                    }
                    Err(e) => fail(&state, id, &e).await,
                }
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot read running sweeps; none will be driven until a restart"),
    }
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                None => return,
                Some(SweepCommand::Started(id)) => match state.store.sweep(id).await {
                    Ok(Some(record)) if record.state == RUNNING && !active.contains_key(&id) => {
                        match load(&state, record).await {
                            Ok(a) => { active.insert(id, a); }
                            Err(e) => fail(&state, id, &e).await,
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::error!(sweep = id, error = %e, "cannot read a new sweep"),
                },
                Some(SweepCommand::Cancel { id, by, reply }) => {
                    let result = cancel(&state, &mut active, id, &by).await;
                    let _ = reply.send(result);
                }
            },
            _ = tick.tick() => {}
        }
        let ids: Vec<u64> = active.keys().copied().collect();
        for id in ids {
            let Some(a) = active.get_mut(&id) else { continue };
            match step(&state, a).await {
                Ok(true) => {
                    active.remove(&id);
                }
                Ok(false) => {}
                Err(Stop::Retry(e)) => tracing::warn!(sweep = id, error = %e, "sweep step failed; retrying"),
                Err(Stop::Fail(message)) => {
                    if let Some(a) = active.remove(&id) {
                        let by = format!("sweep {id}, which failed");
                        stop_running(&state, &a, &format!("the sweep failed: {message}"), &by).await;
                    }
                    fail(&state, id, &message).await;
                }
            }
        }
    }
}

enum Stop {
    /// A store or driver hiccup: the next tick tries again.
    Retry(String),
    /// The sweep cannot go on.
    Fail(String),
}

impl From<ferry_store::StoreError> for Stop {
    fn from(e: ferry_store::StoreError) -> Stop {
        Stop::Retry(e.to_string())
    }
}

async fn fail(state: &AppState, id: u64, message: &str) {
    tracing::warn!(sweep = id, message, "sweep failed");
    if let Err(e) = state.store.end_sweep(id, "failed", Some(message), now_us()).await {
        tracing::error!(sweep = id, error = %e, "cannot record a sweep's failure");
    }
}

/// Rebuilds a sweep's search from the store: its file, its trials and their params, their outcomes, and every
/// objective value logged so far.
async fn load(state: &AppState, record: SweepRecord) -> Result<Active, String> {
    let spec = SweepSpec::parse(&record.spec).map_err(|e| format!("its sweep file no longer reads: {e}"))?;
    let trial = TrialJob::parse(&spec)?;
    let code = record.code.clone().map(|c| ferry_api::code::CodeSpec {
        sha256: c.sha256,
        git_commit: c.git_commit,
        git_diff: c.git_diff,
    });
    let rows = state.store.trials(record.id).await.map_err(|e| e.to_string())?;
    let mut trials = Vec::with_capacity(rows.len());
    let mut runs = HashMap::new();
    let mut stopping = HashMap::new();
    for row in &rows {
        let params: BTreeMap<String, ParamValue> =
            serde_json::from_str(&row.params).map_err(|e| format!("trial {} has unreadable params: {e}", row.index))?;
        let outcome = row.outcome.as_deref().map(outcome_from);
        if outcome.is_none() {
            if let Some(reason) = &row.stop_reason {
                stopping.insert(row.index, reason.clone());
            }
        }
        runs.insert(row.run_id.clone(), row.index);
        trials.push(TrialRecord { index: row.index, params, outcome, values: Vec::new() });
    }
    let mut seq = 0;
    loop {
        let values = state
            .store
            .sweep_metric_values(record.id, &spec.objective.metric, seq, VALUES_PER_TICK)
            .await
            .map_err(|e| e.to_string())?;
        let Some(last) = values.last() else { break };
        seq = last.seq;
        for v in values {
            if let Some(&index) = runs.get(&v.run_id) {
                let t = &mut trials[index as usize];
                // What `Sweep::report` would have kept: finite values, before the trial's end.
                if v.value.is_finite() {
                    t.values.push((v.step, v.value));
                }
            }
        }
    }
    let silent = trials.iter().filter(|t| t.outcome.is_some() && t.values.is_empty()).count();
    let search = Sweep::restore(spec, trials);
    Ok(Active { record, search, trial, code, runs, seq, stopping, silent })
}

fn outcome_from(text: &str) -> TrialOutcome {
    match text {
        "completed" => TrialOutcome::Completed,
        "stopped" => TrialOutcome::Stopped,
        _ => TrialOutcome::Failed,
    }
}

fn outcome_name(outcome: TrialOutcome) -> &'static str {
    match outcome {
        TrialOutcome::Completed => "completed",
        TrialOutcome::Failed => "failed",
        TrialOutcome::Stopped => "stopped",
    }
}

/// One look at a running sweep; `true` once it has ended.
async fn step(state: &AppState, a: &mut Active) -> Result<bool, Stop> {
    let id = a.record.id;
    // 1. New values of the objective: the search may stop trials.
    let values =
        state.store.sweep_metric_values(id, &a.search.spec().objective.metric.clone(), a.seq, VALUES_PER_TICK).await?;
    let mut decisions = Vec::new();
    for v in &values {
        a.seq = v.seq;
        if let Some(&index) = a.runs.get(&v.run_id) {
            decisions.extend(a.search.report(index, v.step, v.value));
        }
    }
    // 2. Ended trials.
    let jobs = state.store.sweep_open_jobs(id).await?;
    let by_trial: HashMap<TrialIndex, &JobRecord> =
        jobs.iter().filter_map(|j| j.spec.sweep.map(|l| (l.trial, j))).collect();
    let open: Vec<TrialIndex> = a.search.trials().iter().filter(|t| t.outcome.is_none()).map(|t| t.index).collect();
    for index in open {
        let Some(job) = by_trial.get(&index) else {
            // Written but never submitted (the server stopped in between): submit it now.
            let params = a.search.trials()[index as usize].params.clone();
            let run_id = a.runs.iter().find(|(_, &i)| i == index).map(|(r, _)| r.clone());
            submit_trial(state, a, index, &params, run_id).await?;
            continue;
        };
        if !job.state.is_terminal() {
            continue;
        }
        let logged = !a.search.trials()[index as usize].values.is_empty();
        let outcome = match job.state {
            _ if a.stopping.contains_key(&index) => TrialOutcome::Stopped,
            JobState::Succeeded if logged => TrialOutcome::Completed,
            JobState::Cancelled => TrialOutcome::Stopped,
            _ => TrialOutcome::Failed,
        };
        let reason = match (outcome, job.state, logged) {
            (TrialOutcome::Stopped, _, _) => a.stopping.remove(&index),
            (_, JobState::Succeeded, false) => Some(format!(
                "the trial ended without logging `{}`; log it with mlflow.log_metric(\"{}\", value, step=...)",
                a.search.spec().objective.metric,
                a.search.spec().objective.metric
            )),
            _ => None,
        };
        state.store.end_trial(id, index, outcome_name(outcome), reason.as_deref()).await?;
        a.search.finish(index, outcome);
        if !logged && outcome != TrialOutcome::Stopped {
            a.silent += 1;
        }
    }
    for d in decisions {
        if a.stopping.contains_key(&d.index) {
            continue;
        }
        let Some(job) = by_trial.get(&d.index) else { continue };
        if job.state.is_terminal() {
            continue;
        }
        state.store.stopping_trial(id, d.index, &d.reason).await?;
        a.stopping.insert(d.index, d.reason.clone());
        tracing::info!(sweep = id, trial = d.index, job = job.id, reason = %d.reason, "stopping trial early");
        cancel_job(state, job.id, &format!("sweep {id}'s early stopping")).await;
    }
    // 3. A sweep whose trials never log the objective would run all its trials for nothing.
    let completed = a.search.trials().iter().any(|t| !t.values.is_empty());
    if !completed && a.silent >= SILENT_TRIALS_MAX {
        let metric = &a.search.spec().objective.metric;
        return Err(Stop::Fail(format!(
            "{} trials ended without logging the objective `{metric}`; make the training script log it \
             (mlflow.log_metric(\"{metric}\", value, step=epoch)) or name the metric it logs in [objective]",
            a.silent
        )));
    }
    // 4. New trials.
    for proposal in a.search.propose() {
        submit_trial(state, a, proposal.index, &proposal.params, None).await?;
    }
    if a.search.is_done() {
        let message = match a.search.best() {
            Some((index, value)) => format!("best trial {index}: {} = {value}", a.search.spec().objective.metric),
            None => "no trial completed".to_string(),
        };
        state.store.end_sweep(id, "finished", Some(&message), now_us()).await?;
        tracing::info!(sweep = id, message, "sweep finished");
        return Ok(true);
    }
    Ok(false)
}

/// Writes a trial (unless it was written before) and submits its job.
async fn submit_trial(
    state: &AppState,
    a: &mut Active,
    index: TrialIndex,
    params: &BTreeMap<String, ParamValue>,
    run_id: Option<String>,
) -> Result<(), Stop> {
    let spec = a.search.spec();
    let submission = a.trial.submission(spec, params, index, a.code.clone()).map_err(Stop::Fail)?;
    let owner = crate::auth::user_named(state, &a.record.owner).await.map_err(|e| match e.code {
        ferry_api::ErrorCode::Unavailable | ferry_api::ErrorCode::StorageFull => Stop::Retry(e.message),
        _ => Stop::Fail(e.message),
    })?;
    let mut job = crate::submission::prepare(state, submission, &owner).await.map_err(|e| Stop::Fail(e.message))?;
    let run_id = match run_id {
        Some(run_id) => run_id,
        None => {
            let run = crate::jobruns::NewRun {
                experiment: None,
                project: None,
                owner: &a.record.owner,
                team: job.team.as_deref(),
                name: job.name.as_deref(),
                command: &job.command,
                git_commit: job.code.as_ref().and_then(|c| c.git_commit.as_deref()),
                params: params.iter().map(|(k, v)| (k.clone(), v.to_string())).collect(),
                tags: vec![
                    ("ferry.sweep_id".to_string(), a.record.id.to_string()),
                    ("ferry.trial".to_string(), index.to_string()),
                ],
            };
            // The sweep's experiment, by id: it was made when the sweep was.
            let tracking = crate::jobruns::create_in(&state.store, a.record.experiment_id, run)
                .await
                .map_err(|e| Stop::Retry(e.message))?;
            let row = ferry_store::TrialRow {
                sweep_id: a.record.id,
                index,
                params: serde_json::to_string(params).expect("params serialize"),
                run_id: tracking.run_id.clone(),
                outcome: None,
                stop_reason: None,
            };
            state.store.insert_trial(&row).await?;
            a.runs.insert(tracking.run_id.clone(), index);
            tracking.run_id
        }
    };
    job.tracking = Some(ferry_store::JobTracking { run_id: run_id.clone(), experiment_id: a.record.experiment_id });
    job.sweep = Some(SweepLink { sweep_id: a.record.id, trial: index });
    match state.driver.call(|reply| Command::Submit { job: Box::new(job), key: None, reply }).await {
        Ok(crate::driver::Submitted { id: job_id, .. }) => {
            crate::jobruns::attach(&state.store, &run_id, job_id, true).await.map_err(|e| Stop::Retry(e.message))?;
            Ok(())
        }
        Err(e) if matches!(e.code, ferry_api::ErrorCode::Unavailable | ferry_api::ErrorCode::StorageFull) => {
            Err(Stop::Retry(e.message))
        }
        Err(e) => Err(Stop::Fail(format!("trial {index} was refused: {}", e.message))),
    }
}

async fn cancel_job(state: &AppState, job: u64, by: &str) {
    let by = by.to_string();
    if let Err(e) = state.driver.call(|reply| Command::Cancel { id: job, by, reply }).await {
        // Already ended is fine: its end is read at the next tick.
        tracing::debug!(job, error = %e.message, "cancelling a trial");
    }
}

/// Stops every running trial of a sweep that is ending, noting why.
async fn stop_running(state: &AppState, a: &Active, reason: &str, by: &str) {
    let Ok(jobs) = state.store.sweep_open_jobs(a.record.id).await else { return };
    for job in jobs.iter().filter(|j| !j.state.is_terminal()) {
        if let Some(link) = job.spec.sweep {
            let _ = state.store.stopping_trial(a.record.id, link.trial, reason).await;
        }
        cancel_job(state, job.id, by).await;
    }
}

async fn cancel(state: &AppState, active: &mut BTreeMap<u64, Active>, id: u64, by: &str) -> Result<(), ApiError> {
    let record = state.store.sweep(id).await?.ok_or_else(|| ApiError::not_found(format!("no sweep {id}")))?;
    if record.state != RUNNING {
        return Err(ApiError::new(ferry_api::ErrorCode::Conflict, format!("sweep {id} is already {}", record.state)));
    }
    state.store.end_sweep(id, "cancelled", Some(&format!("cancelled by {by}")), now_us()).await?;
    let by = format!("{by} (sweep {id} cancelled)");
    match active.remove(&id) {
        Some(a) => stop_running(state, &a, "the sweep was cancelled", &by).await,
        None => {
            // Not driven (it failed to load): still stop its jobs.
            for job in state.store.sweep_open_jobs(id).await?.iter().filter(|j| !j.state.is_terminal()) {
                cancel_job(state, job.id, &by).await;
            }
        }
    }
    // Trials that end from here on are recorded by the wire view from their jobs.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(trial: &str) -> SweepSpec {
        SweepSpec::parse(&format!(
            "name = \"lr\"\nmax_trials = 4\ncommand = [\"python3\", \"train.py\", \"--lr\", \"{{lr}}\"]\n\n[objective]\nmetric = \
             \"loss\"\ngoal = \"minimize\"\n\n[method]\nname = \"random\"\n\n[params.lr]\ndistribution = \"log_uniform\"\nlow = 0.0001\nhigh = 1.0\n\n\
             [trial]\n{trial}\n"
        ))
        .unwrap()
    }

    #[test]
    fn a_trial_that_checkpoints_is_submitted_as_one_and_a_bad_value_is_named() {
        let params = BTreeMap::from([("lr".to_string(), ParamValue::Float(0.01))]);
        for (line, checkpoints) in [("checkpoints = true", true), ("", false)] {
            let spec = spec(line);
            let job = TrialJob::parse(&spec).unwrap().submission(&spec, &params, 0, None).unwrap();
            assert_eq!(job.checkpoints, checkpoints, "{line:?}");
        }
        let err = TrialJob::parse(&spec("checkpoints = \"often\"")).unwrap_err();
        assert!(err.starts_with("[trial]:") && err.contains("checkpoints"), "{err}");
    }
}
