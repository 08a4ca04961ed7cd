//! The protocol between the server and its node agents. An agent on another machine speaks exactly this.
//!
//! The agent registers (and re-registers after any restart of either side) with the state of every job it still
//! knows, long-polls for work, and reports job state changes and node usage. Assignments carry a per-node sequence
//! number and the server's epoch, so an agent that polls after a server restart is sent everything outstanding again;
//! agents drop assignments they already run.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::nodes::{Gpu, NodeUsage};

/// The longest a work poll is held open by the server.
pub const WORK_WAIT_MS_MAX: u64 = 30_000;
/// The most bytes of output one log upload may carry.
pub const LOG_CHUNK_BYTES_MAX: usize = 4 << 20;

/// A job run, as the agent knows it: the job id, which attempt, and which worker of a gang.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
pub struct RunRef {
    pub job_id: u64,
    pub attempt: u32,
    /// The worker's rank in a gang (a multi-node job); 0 for a single-node job. Each worker of a gang runs on a node
    /// of its own, so a node never holds two runs that differ only in rank.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rank: u32,
}

impl RunRef {
    pub fn new(job_id: u64, attempt: u32) -> RunRef {
        RunRef { job_id, attempt, rank: 0 }
    }
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RegisterNode {
    pub name: String,
    pub pool: String,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub gpus: Vec<Gpu>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub agent_version: String,
    pub limits: String,
    /// The address other nodes reach this one at (the workers of a gang connect to rank 0's); the node's host name
    /// when the agent does not say.
    #[serde(default)]
    pub address: Option<String>,
    /// Every job run the agent still knows of, with its current state.
    pub runs: Vec<RunReport>,
    /// The agent's clock when it sent the registration (microseconds since the Unix epoch); the server refuses an
    /// agent whose clock is more than `telemetry::CLOCK_SKEW_MAX_US` off its own.
    pub now_us: i64,
}

/// A cloud machine's own agent token, given once for the single-use join token its start-up script carried (which
/// no longer works afterwards).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExchangedToken {
    pub token: String,
}

/// The token is left out.
impl std::fmt::Debug for ExchangedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExchangedToken { .. }")
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Registered {
    /// How often the agent must report, at least.
    pub heartbeat_ms: u64,
    /// Runs the server no longer wants (cancelled, lost or retried elsewhere): the agent stops them.
    pub stop: Vec<RunRef>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WorkRequest {
    pub node: String,
    /// The epoch and sequence number of the last work the agent received; 0 and "" at first.
    #[serde(default)]
    pub epoch: String,
    #[serde(default)]
    pub after_seq: u64,
    pub wait_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Work {
    pub epoch: String,
    pub seq: u64,
    pub start: Vec<Assignment>,
    pub stop: Vec<RunRef>,
}

/// Everything an agent needs to start one run of a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Assignment {
    pub run: RunRef,
    pub command: Vec<String>,
    /// Where the run starts. Empty: in a directory of its own under the agent's data directory, holding the unpacked
    /// `code` when there is some.
    pub workdir: String,
    /// The SHA-256 of the code archive to unpack into the run's directory before it starts.
    #[serde(default)]
    pub code: Option<String>,
    pub env: BTreeMap<String, String>,
    /// The values of the job's secrets (its `--secret`s and its tracking token), by variable name: set in the run's
    /// environment like `env`, but kept apart so that engines hand them over through their own secret mechanisms
    /// and nothing shows them.
    #[serde(default, skip_serializing_if = "SecretEnv::is_empty")]
    pub secrets: SecretEnv,
    /// The Ferry user the job belongs to: a root agent runs it as the Unix account it maps that user to (its
    /// `[job_users]`), else as its unprivileged `job_user`.
    #[serde(default)]
    pub owner: String,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub gpu_ids: Vec<u32>,
    pub max_runtime_s: Option<u64>,
    /// Seconds between SIGTERM and SIGKILL when the run is stopped.
    pub grace_s: u64,
    /// The container image to run the command in, through the node's container engine; absent: directly.
    #[serde(default)]
    pub image: Option<String>,
}

/// Secret values by environment variable name. Its `Debug` form names the variables only, so that a value never
/// reaches a log line through an assignment printed whole.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(transparent)]
pub struct SecretEnv(pub BTreeMap<String, String>);

impl SecretEnv {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for SecretEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.0.keys().map(|k| (k, "(hidden)"))).finish()
    }
}

/// How a run ended, as its supervisor saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunEnd {
    Exited,
    /// Stopped because it reached its maximum runtime.
    TimedOut,
    /// Stopped because the server asked.
    Stopped,
    /// The program could not be started at all (no such file, no permission, bad working directory).
    FailedToStart,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RunStatus {
    Running {
        pid: u32,
        started_at_us: i64,
    },
    Finished {
        end: RunEnd,
        exit_code: Option<i32>,
        signal: Option<i32>,
        finished_at_us: i64,
        /// Total bytes of output the run wrote; the server has them all before it records the end.
        log_bytes: u64,
        message: Option<String>,
        /// When the run started, if it did; a run that ends before its start was reported still has one.
        #[serde(default)]
        started_at_us: Option<i64>,
    },
}

/// The longest end message of a run, in characters: agents cut longer ones before they report, and the server cuts
/// what an older agent sends, so a report never grows past the body limit whatever the job or its code did.
pub const RUN_MESSAGE_CHARS_MAX: usize = 4000;

impl RunStatus {
    /// Cuts the end message at `RUN_MESSAGE_CHARS_MAX`.
    pub fn bound_message(&mut self) {
        if let RunStatus::Finished { message: Some(message), .. } = self {
            *message = crate::text::cut(message, RUN_MESSAGE_CHARS_MAX);
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunReport {
    pub run: RunRef,
    pub status: RunStatus,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Reports {
    pub node: String,
    pub runs: Vec<RunReport>,
    pub usage: Option<NodeUsage>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReportsAck {
    /// Runs the server no longer wants: the agent stops them.
    pub stop: Vec<RunRef>,
}

/// The answer to a log upload: how many bytes of the run's output the server now holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LogAck {
    pub stored: u64,
}
