//! Jobs and their state timelines.
//!
//! Writes go through `Tx`, so the server's driver commits one batch of decisions in one transaction.

use std::collections::BTreeMap;

use ferry_api::jobs::{JobState, JobWorker, PriorityClass};
use ferry_core::predict::{Basis, Prediction};
use ferry_core::Resources;
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, Sqlite, Transaction};

use crate::rows::{
    priority_from, priority_name, state_from, state_name, EventReason, EventRecord, LossRecord, PlacementRecord,
    PreemptionRecord, RequeueRecord, WorkerRow,
};
use crate::{from_json, to_json, Store, StoreError};

/// A job as accepted from a user, before it has an id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewJob {
    pub name: Option<String>,
    pub project: Option<String>,
    /// The team whose quota the job counts against.
    pub team: Option<String>,
    pub owner: String,
    pub command: Vec<String>,
    pub workdir: String,
    pub env: BTreeMap<String, String>,
    /// The secrets the job reads: environment variable name to secret name.
    pub secrets: BTreeMap<String, String>,
    pub resources: Resources,
    pub priority: PriorityClass,
    pub retries: u32,
    pub max_runtime_s: Option<u64>,
    /// A share of one GPU in thousandths; 0 when the job takes whole GPUs or none.
    pub gpu_share_milli: u32,
    /// GPU models the job may run on; empty means any.
    pub gpu_types: Vec<String>,
    /// Node labels the job requires.
    pub selector: BTreeMap<String, String>,
    /// Workers of a gang, each on a node of its own with `resources`; 1 for a single-node job.
    pub nodes: u32,
    /// The shipped folder the job runs in; `None` when it ships nothing.
    pub code: Option<JobCode>,
    /// The pool the job is pinned to; `None` lets the scheduler choose.
    pub pool: Option<String>,
    /// The container image the job runs in; `None` runs its command directly on the node.
    pub image: Option<String>,
    /// The MLflow run made for the job; `None` for jobs older than tracking.
    pub tracking: Option<JobTracking>,
    /// The sweep the job is a trial of, and which trial.
    pub sweep: Option<SweepLink>,
    /// The job saves checkpoints and resumes from them: least-attained preemption may stop it.
    pub checkpoints: bool,
}

/// A job's MLflow run and the experiment it is in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobTracking {
    pub run_id: String,
    pub experiment_id: i64,
}

/// Which trial of which sweep a job runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SweepLink {
    pub sweep_id: u64,
    pub trial: u32,
}

/// The code archive a job runs in, and the git state of the folder it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobCode {
    pub sha256: String,
    pub size_bytes: u64,
    pub git_commit: Option<String>,
    /// The uncommitted changes at submission (`git diff HEAD`), already capped by the server.
    pub git_diff: Option<String>,
}

/// What a requeue records of a job: its next attempt, when it may start (0: at once; later for a retry's backoff),
/// and its counts that a restart must keep.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Requeue {
    pub attempt: u32,
    pub not_before_us: i64,
    pub preemptions: u32,
    pub attained_gpu_s: u64,
}

/// A job as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobRecord {
    pub id: u64,
    pub spec: NewJob,
    pub state: JobState,
    pub attempt: u32,
    pub node: Option<String>,
    pub gpu_ids: Vec<u32>,
    /// A gang's workers in the current attempt, rank 0 first; empty for a single-node job or before placement.
    pub workers: Vec<JobWorker>,
    pub cancel_requested: bool,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub message: Option<String>,
    pub submitted_at_us: i64,
    pub started_at_us: Option<i64>,
    pub finished_at_us: Option<i64>,
    /// Where an engine runs (or last ran) the job; `None` on agent pools.
    pub native: Option<Native>,
    /// When the retention sweep removed the job's stored output; `None` while it is kept.
    pub output_removed_at_us: Option<i64>,
    /// A queued retry may not start before this time (its backoff); 0 for any time.
    pub not_before_us: i64,
    /// Attempts that preemption used (they do not count against the retries).
    pub preemptions: u32,
    /// GPU-seconds the job's earlier attempts ran (the least-attained queue order files it by them).
    pub attained_gpu_s: u64,
    /// The runtime predicted when the job was submitted, and what it rested on; `None` without history.
    pub prediction: Option<Prediction>,
}

/// A job as an engine knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Native {
    /// The engine kind: `slurm`, `ray`, `spark`...
    pub kind: String,
    /// The engine's own id (a Slurm job id, a Ray submission id).
    pub id: String,
    /// The native form Ferry generated: the batch script, the submission body, the command line.
    pub spec: String,
}

#[derive(Clone, Debug, Default)]
pub struct JobFilter {
    pub states: Vec<JobState>,
    pub limit: u32,
    pub owner: Option<String>,
    pub team: Option<String>,
    pub project: Option<String>,
    /// Jobs placed on a node of this pool (for a gang, its rank 0's node).
    pub pool: Option<String>,
    pub node: Option<String>,
    /// Only jobs submitted at or after this time.
    pub submitted_after_us: Option<i64>,
    /// Only jobs with a smaller id: the next page after a page that ended at this id.
    pub before_id: Option<u64>,
    /// Only jobs this caller may see: its own, and those of these teams; `None` for every job.
    pub visible_to: Option<Visibility>,
}

/// Whose jobs a caller may see: its own and its teams'.
#[derive(Clone, Debug, Default)]
pub struct Visibility {
    pub owner: String,
    pub teams: Vec<String>,
}

const JOB_COLUMNS: &str = "id, name, project, owner, state, command, workdir, env, cpu_millis, memory_bytes, gpus, \
     priority, retries, attempt, max_runtime_s, node, gpu_ids, cancel_requested, exit_code, signal, message, \
     submitted_at_us, started_at_us, finished_at_us, gpu_share_milli, gpu_types, selector, team, nodes, workers, \
     code_sha256, code_bytes, git_commit, git_diff, pool, native_kind, native_id, native_spec, image, \
     tracking_run_id, tracking_experiment_id, sweep_id, sweep_trial, secrets, output_removed_at_us, not_before_us, \
     predicted_s, predicted_samples, predicted_basis, preemptions, attained_gpu_s, checkpoints";

fn job_from_row(row: &SqliteRow) -> Result<JobRecord, StoreError> {
    let spec = NewJob {
        name: row.get("name"),
        project: row.get("project"),
        team: row.get("team"),
        owner: row.get("owner"),
        command: from_json("command", row.get("command"))?,
        workdir: row.get("workdir"),
        env: from_json("env", row.get("env"))?,
        secrets: from_json("secrets", row.get("secrets"))?,
        resources: Resources::new(
            row.get::<i64, _>("cpu_millis") as u64,
            row.get::<i64, _>("memory_bytes") as u64,
            row.get::<i64, _>("gpus") as u32,
        ),
        priority: priority_from(row.get("priority"))?,
        retries: row.get::<i64, _>("retries") as u32,
        max_runtime_s: row.get::<Option<i64>, _>("max_runtime_s").map(|v| v as u64),
        gpu_share_milli: row.get::<i64, _>("gpu_share_milli") as u32,
        gpu_types: from_json("gpu_types", row.get("gpu_types"))?,
        selector: from_json("selector", row.get("selector"))?,
        nodes: row.get::<i64, _>("nodes") as u32,
        pool: row.get("pool"),
        image: row.get("image"),
        tracking: match (
            row.get::<Option<String>, _>("tracking_run_id"),
            row.get::<Option<i64>, _>("tracking_experiment_id"),
        ) {
            (Some(run_id), Some(experiment_id)) => Some(JobTracking { run_id, experiment_id }),
            _ => None,
        },
        sweep: match (row.get::<Option<i64>, _>("sweep_id"), row.get::<Option<i64>, _>("sweep_trial")) {
            (Some(sweep_id), Some(trial)) => Some(SweepLink { sweep_id: sweep_id as u64, trial: trial as u32 }),
            _ => None,
        },
        code: row.get::<Option<String>, _>("code_sha256").map(|sha256| JobCode {
            sha256,
            size_bytes: row.get::<Option<i64>, _>("code_bytes").unwrap_or(0) as u64,
            git_commit: row.get("git_commit"),
            git_diff: row.get("git_diff"),
        }),
        checkpoints: row.get::<i64, _>("checkpoints") != 0,
    };
    Ok(JobRecord {
        id: row.get::<i64, _>("id") as u64,
        spec,
        state: state_from(row.get("state"))?,
        attempt: row.get::<i64, _>("attempt") as u32,
        node: row.get("node"),
        gpu_ids: from_json("gpu_ids", row.get("gpu_ids"))?,
        workers: from_json::<Vec<WorkerRow>>("workers", row.get("workers"))?
            .into_iter()
            .map(WorkerRow::into_wire)
            .collect::<Result<_, _>>()?,
        cancel_requested: row.get::<i64, _>("cancel_requested") != 0,
        exit_code: row.get::<Option<i64>, _>("exit_code").map(|v| v as i32),
        signal: row.get::<Option<i64>, _>("signal").map(|v| v as i32),
        message: row.get("message"),
        submitted_at_us: row.get("submitted_at_us"),
        started_at_us: row.get("started_at_us"),
        finished_at_us: row.get("finished_at_us"),
        not_before_us: row.get("not_before_us"),
        preemptions: row.get::<i64, _>("preemptions").try_into().unwrap_or(0),
        attained_gpu_s: row.get::<i64, _>("attained_gpu_s").try_into().unwrap_or(0),
        native: match (row.get::<Option<String>, _>("native_kind"), row.get::<Option<String>, _>("native_id")) {
            (Some(kind), Some(id)) => {
                Some(Native { kind, id, spec: row.get::<Option<String>, _>("native_spec").unwrap_or_default() })
            }
            _ => None,
        },
        output_removed_at_us: row.get("output_removed_at_us"),
        prediction: prediction_from_row(row),
    })
}

/// A stored prediction; one whose basis this release does not know reads as none.
fn prediction_from_row(row: &SqliteRow) -> Option<Prediction> {
    let runtime_s = row.get::<Option<i64>, _>("predicted_s")?;
    let basis = Basis::from_name(&row.get::<Option<String>, _>("predicted_basis")?)?;
    let samples = row.get::<Option<i64>, _>("predicted_samples").unwrap_or(0);
    Some(Prediction { runtime_s: runtime_s.max(0) as u64, samples: samples.clamp(0, u32::MAX as i64) as u32, basis })
}

impl Store {
    pub async fn begin(&self) -> Result<Tx, StoreError> {
        Ok(Tx(self.write().await?))
    }

    pub async fn job(&self, id: u64) -> Result<Option<JobRecord>, StoreError> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?");
        let row = sqlx::query(&sql).bind(id as i64).fetch_optional(&self.pool).await?;
        row.as_ref().map(job_from_row).transpose()
    }

    /// Jobs matching the filter, newest first.
    pub async fn jobs(&self, filter: &JobFilter) -> Result<Vec<JobRecord>, StoreError> {
        let mut conditions: Vec<String> = Vec::new();
        if !filter.states.is_empty() {
            conditions.push(format!("state IN ({})", vec!["?"; filter.states.len()].join(", ")));
        }
        let text_filters = [
            ("owner = ?", &filter.owner),
            ("team = ?", &filter.team),
            ("project = ?", &filter.project),
            ("node IN (SELECT name FROM nodes WHERE pool = ?)", &filter.pool),
            ("node = ?", &filter.node),
        ];
        conditions.extend(text_filters.iter().filter(|(_, v)| v.is_some()).map(|(c, _)| c.to_string()));
        if filter.submitted_after_us.is_some() {
            conditions.push("submitted_at_us >= ?".into());
        }
        if filter.before_id.is_some() {
            conditions.push("id < ?".into());
        }
        if let Some(visible) = &filter.visible_to {
            let teams = vec!["?"; visible.teams.len()].join(", ");
            conditions.push(format!("(owner = ? OR team IN ({teams}))"));
        }
        let mut sql = format!("SELECT {JOB_COLUMNS} FROM jobs");
        if !conditions.is_empty() {
            sql += &format!(" WHERE {}", conditions.join(" AND "));
        }
        sql += " ORDER BY id DESC LIMIT ?";
        // Bound in the order the conditions were written.
        let mut query = sqlx::query(&sql);
        for state in &filter.states {
            query = query.bind(state_name(*state));
        }
        for value in text_filters.iter().filter_map(|(_, v)| v.as_deref()) {
            query = query.bind(value);
        }
        if let Some(after) = filter.submitted_after_us {
            query = query.bind(after);
        }
        if let Some(before) = filter.before_id {
            query = query.bind(before as i64);
        }
        if let Some(visible) = &filter.visible_to {
            query = query.bind(&visible.owner);
            for team in &visible.teams {
                query = query.bind(team);
            }
        }
        let rows = query.bind(filter.limit as i64).fetch_all(&self.pool).await?;
        rows.iter().map(job_from_row).collect()
    }

    /// Every job of a sweep, by trial.
    pub async fn sweep_jobs(&self, sweep_id: u64) -> Result<Vec<JobRecord>, StoreError> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE sweep_id = ? ORDER BY sweep_trial");
        let rows = sqlx::query(&sql).bind(sweep_id as i64).fetch_all(&self.pool).await?;
        rows.iter().map(job_from_row).collect()
    }

    /// The jobs of a sweep's trials that have not ended yet (as the sweep recorded them), by trial: what the sweep's
    /// controller looks at each time, however many trials ended before.
    pub async fn sweep_open_jobs(&self, sweep_id: u64) -> Result<Vec<JobRecord>, StoreError> {
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE sweep_id = ? AND sweep_trial IN \
             (SELECT idx FROM sweep_trials WHERE sweep_id = ? AND outcome IS NULL) ORDER BY sweep_trial"
        );
        let rows = sqlx::query(&sql).bind(sweep_id as i64).bind(sweep_id as i64).fetch_all(&self.pool).await?;
        rows.iter().map(job_from_row).collect()
    }

    /// Jobs that run in the code archive `sha256`, newest first, at most `limit`; with `started`, only those starting
    /// or running (what a node may fetch the archive for).
    pub async fn jobs_with_code(&self, sha256: &str, started: bool, limit: u32) -> Result<Vec<JobRecord>, StoreError> {
        let states = if started { "AND state IN ('starting', 'running')" } else { "" };
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE code_sha256 = ? {states} ORDER BY id DESC LIMIT ?");
        let rows = sqlx::query(&sql).bind(sha256).bind(limit as i64).fetch_all(&self.pool).await?;
        rows.iter().map(job_from_row).collect()
    }

    /// Every job that has not reached a final state, oldest first: what the server reloads at start.
    pub async fn unfinished_jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        let sql =
            format!("SELECT {JOB_COLUMNS} FROM jobs WHERE state IN ('queued', 'starting', 'running') ORDER BY id ASC");
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter().map(job_from_row).collect()
    }

    /// The code archives that unfinished jobs (which may yet start, or start again) need.
    pub async fn unfinished_code_digests(&self) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT code_sha256 FROM jobs WHERE state IN ('queued', 'starting', 'running') \
             AND code_sha256 IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// The kind keys and runtimes (of the last attempt, in seconds) of the jobs that succeeded since `since_us`, in
    /// the order they finished, at most `limit` of the most recent: what the server learns runtimes from at start.
    pub async fn succeeded_runtimes(&self, since_us: i64, limit: u32) -> Result<Vec<(u64, u64, u64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT kind_key, name_key, (finished_at_us - started_at_us) / 1000000 AS ran_s FROM \
             (SELECT kind_key, name_key, finished_at_us, started_at_us FROM jobs \
              WHERE state = 'succeeded' AND kind_key IS NOT NULL AND finished_at_us >= ? \
              AND started_at_us IS NOT NULL ORDER BY finished_at_us DESC LIMIT ?) \
             ORDER BY finished_at_us ASC",
        )
        .bind(since_us)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let key = |c: &str| r.get::<i64, _>(c) as u64;
                (key("kind_key"), key("name_key"), r.get::<i64, _>("ran_s").max(0) as u64)
            })
            .collect())
    }

    /// Predicted and measured runtimes, in seconds, of the jobs that succeeded since `since_us` with a prediction,
    /// among those `visible` (all with `None`), at most `limit` of the most recent.
    pub async fn prediction_outcomes(
        &self,
        since_us: i64,
        visible: Option<&Visibility>,
        limit: u32,
    ) -> Result<Vec<(u64, u64)>, StoreError> {
        let mut sql = "SELECT predicted_s, (finished_at_us - started_at_us) / 1000000 AS ran_s FROM jobs \
             WHERE state = 'succeeded' AND predicted_s IS NOT NULL AND started_at_us IS NOT NULL \
             AND finished_at_us >= ?"
            .to_string();
        if let Some(v) = visible {
            sql += &format!(" AND (owner = ? OR team IN ({}))", vec!["?"; v.teams.len()].join(", "));
        }
        sql += " ORDER BY finished_at_us DESC LIMIT ?";
        let mut query = sqlx::query(&sql).bind(since_us);
        if let Some(v) = visible {
            query = query.bind(&v.owner);
            for team in &v.teams {
                query = query.bind(team);
            }
        }
        let rows = query.bind(limit as i64).fetch_all(&self.pool).await?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<i64, _>("predicted_s").max(0) as u64, r.get::<i64, _>("ran_s").max(0) as u64))
            .collect())
    }

    /// How many jobs are in each state, over the whole history; states without jobs are left out.
    pub async fn job_counts(&self) -> Result<Vec<(JobState, u64)>, StoreError> {
        let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state").fetch_all(&self.pool).await?;
        rows.iter().map(|r| Ok((state_from(r.get("state"))?, r.get::<i64, _>("n") as u64))).collect()
    }

    pub async fn job_events(&self, id: u64) -> Result<Vec<EventRecord>, StoreError> {
        let rows = sqlx::query("SELECT at_us, state, message, reason FROM job_events WHERE job_id = ? ORDER BY id")
            .bind(id as i64)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(EventRecord {
                    at_us: r.get("at_us"),
                    state: state_from(r.get("state"))?,
                    message: r.get("message"),
                    reason: r.get::<Option<&str>, _>("reason").map(|text| from_json("reason", text)).transpose()?,
                })
            })
            .collect()
    }
}

/// One transaction of job writes. Dropping it without `commit` rolls everything back.
pub struct Tx(Transaction<'static, Sqlite>);

impl Tx {
    pub(crate) fn conn(&mut self) -> &mut sqlx::SqliteConnection {
        &mut self.0
    }

    /// Reads a job inside the transaction, so jobs inserted earlier in it are visible.
    pub async fn job(&mut self, id: u64) -> Result<Option<JobRecord>, StoreError> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?");
        let row = sqlx::query(&sql).bind(id as i64).fetch_optional(&mut *self.0).await?;
        row.as_ref().map(job_from_row).transpose()
    }

    pub async fn commit(self) -> Result<(), StoreError> {
        Ok(self.0.commit().await?)
    }

    pub async fn insert_job(&mut self, job: &NewJob, now_us: i64) -> Result<u64, StoreError> {
        let id = sqlx::query(
            "INSERT INTO jobs (name, project, owner, state, command, workdir, env, cpu_millis, memory_bytes, gpus, \
             priority, retries, max_runtime_s, submitted_at_us, gpu_share_milli, gpu_types, selector, team, nodes, \
             code_sha256, code_bytes, git_commit, git_diff, pool, image, tracking_run_id, tracking_experiment_id, \
             sweep_id, sweep_trial, secrets, checkpoints) \
             VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&job.name)
        .bind(&job.project)
        .bind(&job.owner)
        .bind(to_json(&job.command))
        .bind(&job.workdir)
        .bind(to_json(&job.env))
        .bind(job.resources.cpu_millis as i64)
        .bind(job.resources.memory_bytes as i64)
        .bind(job.resources.gpus as i64)
        .bind(priority_name(job.priority))
        .bind(job.retries as i64)
        .bind(job.max_runtime_s.map(|v| v as i64))
        .bind(now_us)
        .bind(job.gpu_share_milli as i64)
        .bind(to_json(&job.gpu_types))
        .bind(to_json(&job.selector))
        .bind(&job.team)
        .bind(job.nodes as i64)
        .bind(job.code.as_ref().map(|c| c.sha256.clone()))
        .bind(job.code.as_ref().map(|c| c.size_bytes as i64))
        .bind(job.code.as_ref().and_then(|c| c.git_commit.clone()))
        .bind(job.code.as_ref().and_then(|c| c.git_diff.clone()))
        .bind(&job.pool)
        .bind(&job.image)
        .bind(job.tracking.as_ref().map(|t| t.run_id.clone()))
        .bind(job.tracking.as_ref().map(|t| t.experiment_id))
        .bind(job.sweep.map(|l| l.sweep_id as i64))
        .bind(job.sweep.map(|l| l.trial as i64))
        .bind(to_json(&job.secrets))
        .bind(i64::from(job.checkpoints))
        .execute(&mut *self.0)
        .await?
        .last_insert_rowid() as u64;
        self.event(id, now_us, JobState::Queued, "submitted").await?;
        Ok(id)
    }

    /// Records what kind of job `id` is (`ferry_core::predict::JobKind` keys) and the runtime predicted for it.
    pub async fn set_prediction(
        &mut self,
        id: u64,
        kind_key: u64,
        name_key: u64,
        prediction: Option<&Prediction>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE jobs SET kind_key = ?, name_key = ?, predicted_s = ?, predicted_samples = ?, predicted_basis = ? \
             WHERE id = ?",
        )
        .bind(kind_key as i64)
        .bind(name_key as i64)
        .bind(prediction.map(|p| p.runtime_s.min(i64::MAX as u64) as i64))
        .bind(prediction.map(|p| i64::from(p.samples)))
        .bind(prediction.map(|p| p.basis.name()))
        .bind(id as i64)
        .execute(&mut *self.0)
        .await?;
        Ok(())
    }

    /// Adds an entry to a job's timeline.
    pub async fn event(&mut self, id: u64, at_us: i64, state: JobState, message: &str) -> Result<(), StoreError> {
        self.event_with(id, at_us, state, message, None).await
    }

    async fn event_with(
        &mut self,
        id: u64,
        at_us: i64,
        state: JobState,
        message: &str,
        reason: Option<&EventReason>,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO job_events (job_id, at_us, state, message, reason) VALUES (?, ?, ?, ?, ?)")
            .bind(id as i64)
            .bind(at_us)
            .bind(state_name(state))
            .bind(message)
            .bind(reason.map(to_json))
            .execute(&mut *self.0)
            .await?;
        Ok(())
    }

    /// Records that a job was placed on a node, with why there; it is `starting` until the node confirms.
    pub async fn placed(
        &mut self,
        id: u64,
        node: &str,
        gpu_ids: &[u32],
        at_us: i64,
        why: &str,
        placement: PlacementRecord,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE jobs SET state = 'starting', node = ?, gpu_ids = ? WHERE id = ?")
            .bind(node)
            .bind(to_json(&gpu_ids))
            .bind(id as i64)
            .execute(&mut *self.0)
            .await?;
        self.event_with(id, at_us, JobState::Starting, why, Some(&EventReason::Placed(placement))).await
    }

    /// Records that a started job is being stopped to make room for another, with for which job and by which rule.
    pub async fn preempting(
        &mut self,
        id: u64,
        at_us: i64,
        state: JobState,
        why: &str,
        preemption: PreemptionRecord,
    ) -> Result<(), StoreError> {
        self.event_with(id, at_us, state, why, Some(&EventReason::Preempted(preemption))).await
    }

    /// Records a gang's workers as they are placed, start and end.
    pub async fn set_workers(&mut self, id: u64, workers: &[JobWorker]) -> Result<(), StoreError> {
        let rows: Vec<WorkerRow> = workers.iter().map(WorkerRow::from_wire).collect();
        sqlx::query("UPDATE jobs SET workers = ? WHERE id = ?")
            .bind(to_json(&rows))
            .bind(id as i64)
            .execute(&mut *self.0)
            .await?;
        Ok(())
    }

    pub async fn running(&mut self, id: u64, started_at_us: i64, message: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE jobs SET state = 'running', started_at_us = ? WHERE id = ?")
            .bind(started_at_us)
            .bind(id as i64)
            .execute(&mut *self.0)
            .await?;
        // The job's MLflow run starts with it, unless the job's code already set the run's status.
        sqlx::query(
            "UPDATE tracking_runs SET status = 'RUNNING', start_time_ms = COALESCE(start_time_ms, ?) \
             WHERE status = 'SCHEDULED' AND id = (SELECT tracking_run_id FROM jobs WHERE id = ?)",
        )
        .bind(started_at_us / 1000)
        .bind(id as i64)
        .execute(&mut *self.0)
        .await?;
        self.event(id, started_at_us, JobState::Running, message).await
    }

    /// Records a final state.
    #[allow(clippy::too_many_arguments)]
    pub async fn finished(
        &mut self,
        id: u64,
        state: JobState,
        exit_code: Option<i32>,
        signal: Option<i32>,
        message: &str,
        at_us: i64,
    ) -> Result<(), StoreError> {
        self.finished_with(id, state, exit_code, signal, message, at_us, None).await
    }

    /// Records that a job was lost, with how as data.
    pub async fn lost(&mut self, id: u64, message: &str, at_us: i64, loss: LossRecord) -> Result<(), StoreError> {
        self.finished_with(id, JobState::Lost, None, None, message, at_us, Some(EventReason::Lost(loss))).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn finished_with(
        &mut self,
        id: u64,
        state: JobState,
        exit_code: Option<i32>,
        signal: Option<i32>,
        message: &str,
        at_us: i64,
        reason: Option<EventReason>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE jobs SET state = ?, exit_code = ?, signal = ?, message = ?, finished_at_us = ? WHERE id = ?",
        )
        .bind(state_name(state))
        .bind(exit_code)
        .bind(signal)
        .bind(message)
        .bind(at_us)
        .bind(id as i64)
        .execute(&mut *self.0)
        .await?;
        // The job's MLflow run ends with it, unless the job's code ended the run first.
        let status = match state {
            JobState::Succeeded => "FINISHED",
            JobState::Cancelled => "KILLED",
            _ => "FAILED",
        };
        sqlx::query(
            "UPDATE tracking_runs SET status = ?, \
             start_time_ms = COALESCE(start_time_ms, (SELECT started_at_us / 1000 FROM jobs WHERE id = ?), ?), \
             end_time_ms = COALESCE(end_time_ms, ?) \
             WHERE status IN ('RUNNING', 'SCHEDULED') AND id = (SELECT tracking_run_id FROM jobs WHERE id = ?)",
        )
        .bind(status)
        .bind(id as i64)
        .bind(at_us / 1000)
        .bind(at_us / 1000)
        .bind(id as i64)
        .execute(&mut *self.0)
        .await?;
        self.event_with(id, at_us, state, message, reason.as_ref()).await
    }

    /// Records that a job is queued again for its next attempt (see `Requeue`), with why as words and as data.
    pub async fn requeued(
        &mut self,
        id: u64,
        requeue: &Requeue,
        at_us: i64,
        why: &str,
        reason: RequeueRecord,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE jobs SET state = 'queued', attempt = ?, node = NULL, gpu_ids = '[]', workers = '[]', \
             started_at_us = NULL, exit_code = NULL, signal = NULL, not_before_us = ?, preemptions = ?, \
             attained_gpu_s = ? WHERE id = ?",
        )
        .bind(requeue.attempt as i64)
        .bind(requeue.not_before_us)
        .bind(requeue.preemptions as i64)
        .bind(i64::try_from(requeue.attained_gpu_s).unwrap_or(i64::MAX))
        .bind(id as i64)
        .execute(&mut *self.0)
        .await?;
        self.event_with(id, at_us, JobState::Queued, why, Some(&EventReason::Requeued(reason))).await
    }

    /// Records what an engine made of the job's current attempt, with a line in its timeline.
    pub async fn native(&mut self, id: u64, native: &Native, at_us: i64, state: JobState) -> Result<(), StoreError> {
        sqlx::query("UPDATE jobs SET native_kind = ?, native_id = ?, native_spec = ? WHERE id = ?")
            .bind(&native.kind)
            .bind(&native.id)
            .bind(&native.spec)
            .bind(id as i64)
            .execute(&mut *self.0)
            .await?;
        let message = format!("submitted to {}, where its id is {}", native.kind, native.id);
        self.event(id, at_us, state, &message).await
    }

    /// Records that `by` asked to cancel a started job.
    pub async fn cancel_requested(&mut self, id: u64, at_us: i64, state: JobState, by: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE jobs SET cancel_requested = 1 WHERE id = ?").bind(id as i64).execute(&mut *self.0).await?;
        self.event(id, at_us, state, &format!("cancel requested by {by}; stopping")).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PlacedWorkerRecord, PreemptRuleRecord};

    fn job() -> NewJob {
        NewJob {
            owner: "ana".into(),
            command: vec!["true".into()],
            resources: Resources::new(1000, 1 << 20, 1),
            nodes: 2,
            ..NewJob::default()
        }
    }

    /// What the database holds for a timeline's reasons and a gang's workers is the store's own JSON, exactly, and
    /// it reads back as written; an entry without a reason holds NULL and reads as none.
    #[tokio::test]
    async fn timeline_reasons_and_workers_are_stored_in_the_stores_own_form() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("ferry.db")).await.unwrap();
        let placement = PlacementRecord {
            pool: "onprem".into(),
            workers: vec![
                PlacedWorkerRecord { node: "a".into(), gpu_ids: vec![0] },
                PlacedWorkerRecord { node: "b".into(), gpu_ids: vec![1] },
            ],
            cpu_millis: 1000,
            gpu_share_milli: 0,
            candidates: 2,
            gpus_free_after: 1,
            cpu_millis_free_after: 500,
            backfilled_before: None,
            burst_waited_s: Some(60),
            burst_past: vec!["local".into()],
        };
        let preemption = PreemptionRecord {
            by: 9,
            rule: PreemptRuleRecord::Priority { victim_priority: 0, preemptor_priority: 100 },
            grace_s: 10,
        };
        let worker = JobWorker { rank: 0, node: "a".into(), gpu_ids: vec![0], started_at_us: None, end: None };
        let mut tx = store.begin().await.unwrap();
        let id = tx.insert_job(&job(), 1).await.unwrap();
        tx.placed(id, "a", &[0], 2, "placed as a gang", placement.clone()).await.unwrap();
        tx.set_workers(id, std::slice::from_ref(&worker)).await.unwrap();
        tx.preempting(id, 3, JobState::Running, "preempted for job 9", preemption.clone()).await.unwrap();
        tx.commit().await.unwrap();

        let stored: Vec<Option<String>> =
            sqlx::query_scalar("SELECT reason FROM job_events WHERE job_id = ? ORDER BY id")
                .bind(id as i64)
                .fetch_all(&store.pool)
                .await
                .unwrap();
        assert_eq!(
            stored,
            [
                None,
                Some(
                    r#"{"kind":"placed","pool":"onprem","workers":[{"node":"a","gpu_ids":[0]},{"node":"b","gpu_ids":[1]}],"cpu_millis":1000,"gpu_share_milli":0,"candidates":2,"gpus_free_after":1,"cpu_millis_free_after":500,"burst_waited_s":60,"burst_past":["local"]}"#.to_string()
                ),
                Some(
                    r#"{"kind":"preempted","by":9,"rule":{"kind":"priority","victim_priority":0,"preemptor_priority":100},"grace_s":10}"#.to_string()
                ),
            ]
        );
        let workers: String = sqlx::query_scalar("SELECT workers FROM jobs WHERE id = ?")
            .bind(id as i64)
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(workers, r#"[{"rank":0,"node":"a","gpu_ids":[0],"started_at_us":null,"end":null}]"#);

        let events = store.job_events(id).await.unwrap();
        let reasons: Vec<Option<EventReason>> = events.iter().map(|e| e.reason.clone()).collect();
        assert_eq!(reasons, [None, Some(EventReason::Placed(placement)), Some(EventReason::Preempted(preemption))]);
        assert_eq!(events[2].state, JobState::Running);
        assert_eq!(store.job(id).await.unwrap().unwrap().workers, [worker]);
    }
}
