//! The server's side of the engine bridges (`ferry_backends::bridge`): [`ServerHost`], through which a bridge
//! registers and reports its nodes to the driver, follows runs the store knows and ships output and code into the
//! server's stores; and [`EngineStates`], what the bridges last saw, for the API. Nothing here decides: the bridge
//! does what an agent does, the driver decides.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use ferry_api::agent::{Assignment, RegisterNode, Reports, RunRef};
use ferry_api::jobs::JobState;
use ferry_api::nodes::EngineHealth;
use ferry_backends::bridge::{Host, Native, RunContext, Unfinished};
use ferry_backends::engine::SecretsFetch;
use ferry_backends::BackendFuture;
use ferry_store::Store;

use crate::code::CodeStore;
use crate::driver::{now_us, Command, DriverHandle};
use crate::logs::LogStore;
use crate::signals::Signals;

/// What the bridges last saw, for the API: each followed run's state in its engine, in words, by job id, and each
/// engine pool's health, by pool name. Shared by every bridge.
#[derive(Default)]
pub struct EngineStates {
    runs: Mutex<HashMap<u64, String>>,
    pools: Mutex<HashMap<String, EngineHealth>>,
}

impl EngineStates {
    pub fn get(&self, job: u64) -> Option<String> {
        self.runs.lock().expect("never poisoned: no panics inside").get(&job).cloned()
    }

    fn set(&self, job: u64, state: Option<String>) {
        let mut states = self.runs.lock().expect("never poisoned: no panics inside");
        match state {
            Some(state) => states.insert(job, state),
            None => states.remove(&job),
        };
    }

    /// An engine pool's health; one that no bridge has called yet is not answering, since no time.
    pub fn health(&self, pool: &str) -> EngineHealth {
        let pools = self.pools.lock().expect("never poisoned: no panics inside");
        pools.get(pool).cloned().unwrap_or(EngineHealth { answering: false, since_us: None, error: None })
    }

    fn set_health(&self, pool: &str, answering: bool, error: Option<String>) {
        let mut pools = self.pools.lock().expect("never poisoned: no panics inside");
        let health = pools.entry(pool.to_string()).or_insert(EngineHealth { answering, since_us: None, error: None });
        if health.answering != answering || health.since_us.is_none() {
            health.since_us = Some(now_us());
        }
        health.answering = answering;
        health.error = error;
    }
}

/// The server as every engine bridge reaches it.
pub struct ServerHost {
    pub store: Store,
    pub logs: Arc<LogStore>,
    pub code: Arc<CodeStore>,
    pub signals: Arc<Signals>,
    pub states: Arc<EngineStates>,
    /// The server's address as jobs on engines reach it, for `MLFLOW_TRACKING_URI` and fetching secrets.
    pub tracking_uri: String,
    /// The key that signs the tickets with which runs fetch their secrets.
    pub job_key: Arc<Vec<u8>>,
    /// The driver's handle: the bridges are built before the driver (which needs their backends) and run after it.
    pub driver: OnceLock<DriverHandle>,
}

impl ServerHost {
    fn driver(&self) -> Result<&DriverHandle, String> {
        self.driver.get().ok_or_else(|| "the driver has not started".to_string())
    }
}

impl Host for ServerHost {
    fn register(&self, node: RegisterNode) -> BackendFuture<'_, Result<Vec<RunRef>, String>> {
        Box::pin(async move {
            let registered = self.driver()?.call(|reply| Command::Register { node, reply }).await;
            registered.map(|r| r.stop).map_err(|e| e.message)
        })
    }

    fn report(&self, reports: Reports) -> BackendFuture<'_, Result<Vec<RunRef>, String>> {
        Box::pin(async move {
            let ack = self.driver()?.call(|reply| Command::Reports { reports, reply }).await;
            ack.map(|a| a.stop).map_err(|e| e.message)
        })
    }

    fn native<'a>(&'a self, node: &'a str, run: RunRef, native: Native) -> BackendFuture<'a, Result<bool, String>> {
        Box::pin(async move {
            let native = ferry_store::Native { kind: native.kind.to_string(), id: native.id, spec: native.spec };
            let node = node.to_string();
            self.driver()?.call(|reply| Command::Native { node, run, native, reply }).await.map_err(|e| e.message)
        })
    }

    fn unfinished_runs<'a>(&'a self, pool: &'a str) -> BackendFuture<'a, Result<Vec<Unfinished>, String>> {
        Box::pin(async move {
            let nodes: BTreeSet<String> = self
                .store
                .nodes()
                .await
                .map_err(|e| e.to_string())?
                .into_iter()
                .filter(|n| n.pool == pool)
                .map(|n| n.name)
                .collect();
            let mut runs = Vec::new();
            for record in self.store.unfinished_jobs().await.map_err(|e| e.to_string())? {
                let (Some(node), Some(native)) = (record.node, record.native) else { continue };
                if !nodes.contains(&node) || !matches!(record.state, JobState::Starting | JobState::Running) {
                    continue;
                }
                let run = RunRef::new(record.id, record.attempt);
                let followers =
                    record.workers.iter().skip(1).map(|w| (w.node.clone(), RunRef { rank: w.rank, ..run })).collect();
                runs.push(Unfinished {
                    run,
                    node,
                    native_id: native.id,
                    followers,
                    stop: record.cancel_requested,
                    started_at_us: record.started_at_us,
                    max_runtime_s: record.spec.max_runtime_s,
                });
            }
            Ok(runs)
        })
    }

    fn unfinished_jobs(&self) -> BackendFuture<'_, Result<BTreeSet<u64>, String>> {
        Box::pin(async move {
            let jobs = self.store.unfinished_jobs().await.map_err(|e| e.to_string())?;
            Ok(jobs.into_iter().map(|j| j.id).collect())
        })
    }

    fn run_context<'a>(
        &'a self,
        run: RunRef,
        assignment: &'a Assignment,
    ) -> BackendFuture<'a, Result<RunContext, String>> {
        Box::pin(async move {
            let record = self.store.job(run.job_id).await.map_err(|e| format!("reading the job: {e}"))?;
            let (user, project) =
                record.map(|r| (r.spec.owner, r.spec.project.unwrap_or_default())).unwrap_or_default();
            let mut env = assignment.env.clone();
            if env.contains_key(crate::jobruns::RUN_ID_VAR) {
                env.entry(crate::jobruns::URI_VAR.to_string()).or_insert_with(|| self.tracking_uri.clone());
            }
            let secrets = &assignment.secrets;
            let secrets_fetch = (!secrets.is_empty()).then(|| SecretsFetch {
                url: format!("{}/api/v1/runs/{}/{}/secrets", self.tracking_uri, run.job_id, run.attempt),
                ticket: crate::auth::fetch_ticket(&self.job_key, run.job_id, run.attempt),
                required: secrets.0.keys().any(|k| k != crate::jobruns::TOKEN_VAR),
            });
            Ok(RunContext { user, project, env, secrets_fetch })
        })
    }

    fn output_size(&self, run: RunRef) -> BackendFuture<'_, u64> {
        Box::pin(self.logs.size(run.job_id, run.attempt, run.rank))
    }

    fn append_output<'a>(
        &'a self,
        run: RunRef,
        offset: u64,
        bytes: &'a [u8],
    ) -> BackendFuture<'a, Result<u64, String>> {
        Box::pin(async move {
            let held = self.logs.append(run.job_id, run.attempt, run.rank, offset, bytes).await;
            let held = held.map_err(|e| e.to_string())?;
            self.signals.signal(run.job_id);
            Ok(held)
        })
    }

    fn unpack_code<'a>(&'a self, sha256: &'a str, dest: &'a Path) -> BackendFuture<'a, Result<(), String>> {
        let archive = self.code.path(sha256);
        let dest = dest.to_path_buf();
        Box::pin(async move {
            let unpacked = tokio::task::spawn_blocking(move || ferry_archive::unpack(&archive, &dest)).await;
            unpacked.map_err(|e| e.to_string())?.map_err(|e| e.to_string())
        })
    }

    fn engine_health(&self, pool: &str, answering: bool, error: Option<String>) {
        self.states.set_health(pool, answering, error);
    }

    fn run_state(&self, job: u64, state: Option<String>) {
        self.states.set(job, state);
    }
}
