//! Engines: compute that has a scheduler of its own (Slurm, Ray, Spark, Kubernetes). Ferry places a job on one of
//! the engine's nodes with its own global queue and policy, then hands the engine one native submission and follows
//! it there until it ends.
//!
//! An engine implements [`Engine`]: capacity, submit, state, output, cancel. The engine bridge (`bridge.rs`) drives it
//! like an agent would: it registers the engine's nodes, submits what the
//! driver starts, polls states and output and reports them. The bridge, not the engine, owns timeouts and retries, so
//! an engine that is down or slow never blocks the scheduler or the other pools.
//!
//! Every submission carries a deterministic name, [`EngineJob::name`] (`ferry-<tag>-<job>-<attempt>[-<rank>]`), so
//! that a server that restarts finds its runs again ([`Engine::find`]) and a submission sent twice is recognised
//! rather than run twice.
//!
//! Safety: every field of an [`EngineJob`] is user input. An engine passes it out of band (an environment map, an
//! argument vector, a JSON field) or quotes it for the one shell that reads it; [`shell_quote`] is the one quoting
//! function. The conformance suite (`conformance.rs`) checks metacharacters, newlines and quotes in every field.

use std::collections::BTreeMap;

use ferry_api::agent::{RunEnd, SecretEnv};
use ferry_api::nodes::Gpu;

use crate::{BackendFuture, Capabilities};

/// One run of a job, as an engine is asked to run it: engine-neutral, already validated by the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineJob {
    /// The native name: `ferry-<tag>-<job>-<attempt>` (and `-<rank>` for a gang worker past rank 0). Only ASCII
    /// letters, digits and `-`, so it is safe as a Slurm job name, a Ray submission id and a Kubernetes name.
    pub name: String,
    pub job_id: u64,
    pub attempt: u32,
    /// The engine node Ferry placed the run on (the engine's own name for it, without the pool prefix).
    pub node: String,
    /// Who submitted it, for the engine's own accounting (a comment or label; never used to authenticate).
    pub user: String,
    pub project: String,
    /// The program and its arguments, exactly as the user gave them (no shell in between).
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Secret values (the job's `--secret`s, its tracking token) by variable name: set in the run's environment like
    /// `env`, but through the engine's own secret mechanism where it has one, and never in a native form Ferry shows.
    pub secrets: SecretEnv,
    /// Where the run fetches `secrets` itself when it starts, for an engine that cannot hand them over unseen (Ray,
    /// whose dashboard shows every job's entrypoint and environment); `None` when the run has none.
    pub secrets_fetch: Option<SecretsFetch>,
    /// Where the run starts; a directory the engine's nodes can reach. Empty: the engine's default.
    pub workdir: String,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub gpus: u32,
    /// Nodes the run spans (a gang); 1 for a single-node job.
    pub nodes: u32,
    pub max_runtime_s: Option<u64>,
    /// A container image, where the engine runs containers.
    pub image: Option<String>,
    /// Whether this run may already be in the engine: a submission resent after a server restart, or retried after
    /// an answer that never came. Only then must `submit` look for a run of the same name first, which on some
    /// engines costs a listing of every job; a fresh run is submitted straight away.
    pub maybe_submitted: bool,
}

/// A run's one-time request for its secrets: the server's URL for it and the ticket that opens it once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretsFetch {
    pub url: String,
    pub ticket: String,
    /// Whether the run cannot go without them: it has secrets of its own (`--secret`), not only its tracking token,
    /// without which it runs untracked when the server cannot be reached.
    pub required: bool,
}

/// What the engine made of a submission: its id, and the native form Ferry generated (the batch script, the
/// manifest, the submission body) for `ferry show`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Submitted {
    pub native_id: String,
    pub native_spec: String,
}

/// A run's state in the engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NativeState {
    /// Accepted, not running yet; `reason` is the engine's own word for why (e.g. Slurm's `Resources`).
    Pending {
        reason: Option<String>,
    },
    Running {
        started_at_us: i64,
    },
    Finished {
        end: RunEnd,
        exit_code: Option<i32>,
        signal: Option<i32>,
        started_at_us: Option<i64>,
        finished_at_us: i64,
        /// The engine's words, when the state alone does not explain (e.g. `NODE_FAIL`, `OOM`).
        message: Option<String>,
    },
    /// The engine has no record of it (purged, or never accepted).
    Unknown,
}

/// One node of the engine, as Ferry mirrors it: a Ferry node named `<pool>/<name>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineNode {
    pub name: String,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub gpus: Vec<Gpu>,
    /// Whether the engine would run work there now (not down, drained or failed).
    pub up: bool,
    /// The engine's own state word (`idle`, `mixed`, `ALIVE`...), for messages.
    pub state: String,
    /// Allocation the engine reports on the node, by anyone (Ferry or not), where it reports it.
    pub allocated_cpu_millis: Option<u64>,
    pub allocated_memory_bytes: Option<u64>,
    pub allocated_gpus: Option<u32>,
}

/// A run the engine knows, found by its Ferry name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub name: String,
    pub native_id: String,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// The engine cannot be reached, or answered with a server error or garbage: retry later.
    #[error("{engine} is unavailable: {detail}")]
    Unavailable { engine: &'static str, detail: String },
    /// The engine understood and said no (a bad partition, too many GPUs, a malformed job): do not retry.
    #[error("{engine} rejected the job: {detail}")]
    Rejected { engine: &'static str, detail: String },
    /// Ferry cannot express this job for the engine (e.g. a shell command on Spark): do not retry.
    #[error("{0}")]
    Unsupported(String),
}

impl EngineError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, EngineError::Unavailable { .. })
    }
}

/// One engine, connected to one pool.
pub trait Engine: Send + Sync {
    /// The pool kind: `slurm`, `ray`, `spark`, `kubernetes`.
    fn kind(&self) -> &'static str;

    /// What the engine can do with the settings it was connected with, stated by each engine: the scheduler sends a
    /// job with an image ([`EngineJob::image`]) or a gang only to pools whose engine runs them.
    fn capabilities(&self) -> Capabilities;

    /// The engine's nodes and their capacity. An error means the engine is down.
    fn nodes(&self) -> BackendFuture<'_, Result<Vec<EngineNode>, EngineError>>;

    /// Submits one run. If a run of this name already exists (a resubmission after a restart), returns it instead
    /// of submitting again; an engine may skip that check when [`EngineJob::maybe_submitted`] is false.
    fn submit<'a>(&'a self, job: &'a EngineJob) -> BackendFuture<'a, Result<Submitted, EngineError>>;

    /// Runs of this Ferry installation the engine still knows (names starting with `prefix`), finished ones
    /// included where the engine keeps them.
    fn find<'a>(&'a self, prefix: &'a str) -> BackendFuture<'a, Result<Vec<Found>, EngineError>>;

    /// The states of these runs, in the same order.
    fn states<'a>(&'a self, native_ids: &'a [String]) -> BackendFuture<'a, Result<Vec<NativeState>, EngineError>>;

    /// Up to `max` bytes of the run's output from byte `offset` on; empty when there is nothing more yet.
    fn output<'a>(
        &'a self,
        native_id: &'a str,
        offset: u64,
        max: usize,
    ) -> BackendFuture<'a, Result<Vec<u8>, EngineError>>;

    /// Stops a run; stopping one that has already ended is not an error.
    fn cancel<'a>(&'a self, native_id: &'a str) -> BackendFuture<'a, Result<(), EngineError>>;
}

/// Quotes one word for a POSIX shell: the word arrives intact, whatever it holds (`$`, backticks, quotes, `;`,
/// newlines), because nothing inside single quotes is special except the single quote itself.
pub fn shell_quote(word: &str) -> String {
    if !word.is_empty() && word.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:@,+%".contains(&b)) {
        return word.to_string();
    }
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// A command line of quoted words.
pub fn shell_join(words: &[String]) -> String {
    words.iter().map(|w| shell_quote(w)).collect::<Vec<_>>().join(" ")
}

/// Whether an environment variable's name is one a shell and every engine accept (`[A-Za-z_][A-Za-z0-9_]*`); the
/// server refuses others at submission, and engines may rely on it.
pub fn valid_env_name(name: &str) -> bool {
    ferry_api::text::is_env_name(name)
}

/// The native name of a run: see [`EngineJob::name`]. `tag` distinguishes Ferry installations sharing an engine.
pub fn native_name(tag: &str, job_id: u64, attempt: u32, rank: u32) -> String {
    let tag: String = tag.chars().filter(|c| c.is_ascii_alphanumeric()).take(16).collect();
    match rank {
        0 => format!("ferry-{tag}-{job_id}-{attempt}"),
        r => format!("ferry-{tag}-{job_id}-{attempt}-{r}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_words_survive_a_real_shell() {
        let words = [
            "plain",
            "",
            "two words",
            "it's",
            "$(touch /tmp/ferry-pwned)",
            "`id`",
            "a;b|c&d",
            "line\nbreak",
            "\"double\"",
            "back\\slash",
            "*",
            "~",
        ];
        let script = format!("printf '%s\\0' {}", shell_join(&words.map(String::from)));
        let out = std::process::Command::new("sh").arg("-c").arg(&script).output().unwrap();
        let want: Vec<u8> = words.iter().flat_map(|w| w.bytes().chain([0])).collect();
        assert_eq!(String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&want));
        assert!(!std::path::Path::new("/tmp/ferry-pwned").exists());
    }

    #[test]
    fn names_are_safe_everywhere() {
        assert_eq!(native_name("a b$c", 12, 0, 0), "ferry-abc-12-0");
        assert_eq!(native_name("x", 12, 1, 3), "ferry-x-12-1-3");
        assert!(valid_env_name("_A1") && !valid_env_name("1A") && !valid_env_name("A-B") && !valid_env_name(""));
    }
}
