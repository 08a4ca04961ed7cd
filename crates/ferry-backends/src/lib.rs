//! Compute backends: the one trait every kind of compute implements, and the registry that builds them.
//!
//! A backend turns the scheduler's decision "run this job here" into the engine's native action and stops it again.
//! The Ferry agent is the first backend; Slurm, Kubernetes, Ray and Spark are engines (`engine.rs`) that the engine
//! bridge (`bridge.rs`) turns into backends; each kind is one module behind a Cargo feature and one line in
//! `registry.rs`, which builds every pool's backend from its kind and settings. A backend must never decide where a
//! job runs: the core does that, reading what the backend can do ([`Capabilities`]); backends only carry out and
//! report.

use std::future::Future;
use std::pin::Pin;

use ferry_api::agent::{Assignment, RunRef};

#[cfg(feature = "agent")]
pub mod agent;
pub mod bridge;
pub mod conformance;
pub mod engine;
#[cfg(feature = "kubernetes")]
pub mod kubernetes;
#[cfg(feature = "ray")]
pub mod ray;
pub mod registry;
#[cfg(feature = "slurm")]
pub mod slurm;
#[cfg(feature = "spark")]
pub mod spark;

/// A future a backend returns; boxed so that backends can sit behind `dyn ComputeBackend`.
pub type BackendFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BackendError {
    #[error("node {0} is not served by this backend")]
    UnknownNode(String),
    #[error("the backend refused the run: {0}")]
    Refused(String),
}

/// What a backend can do beyond launching and stopping runs: data that placement (through the pool's
/// `ferry_core::PoolInfo`), the API, `ferry pools` and the dashboard read, never a kind's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Runs jobs in container images (`ferry run --image`); the scheduler sends such jobs only to pools that do.
    pub images: bool,
    /// Runs gangs: one job over several nodes at once; the scheduler sends them only to pools that do.
    pub gangs: bool,
    /// Measures each GPU's use (utilisation and memory per GPU and per run); elsewhere utilisation is "no data".
    pub gpus_measured: bool,
    /// Runs have a native id and form in a scheduler of their own (the batch script, the manifest), which
    /// `ferry show --native` and the job page show, and which the engine's own tools and dashboard list.
    pub native_view: bool,
    /// A run lands on the node the scheduler chose; otherwise the engine may move it within the pool.
    pub node_pinning: bool,
    /// A run gets the GPUs the scheduler chose, by index; otherwise the engine picks which GPUs of the node.
    pub gpu_pinning: bool,
}

/// One kind of compute.
pub trait ComputeBackend: Send + Sync {
    /// The kind's name, as pools name it in configuration: `agent`, later `slurm`, `kubernetes`, ...
    fn kind(&self) -> &'static str;

    fn capabilities(&self) -> Capabilities;

    /// Starts one run of a job on a node. Returning is not starting: the node reports when the run really runs.
    fn launch<'a>(&'a self, node: &'a str, assignment: Assignment) -> BackendFuture<'a, Result<(), BackendError>>;

    /// Stops a run (SIGTERM, a grace period, then SIGKILL, or the engine's equivalent).
    fn stop<'a>(&'a self, node: &'a str, run: RunRef) -> BackendFuture<'a, Result<(), BackendError>>;
}
