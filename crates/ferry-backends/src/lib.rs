//! Compute backends: the one trait every kind of compute implements, and the registry that lists them.
//!
//! A backend turns the scheduler's decision "run this job here" into the engine's native action and stops it again.
//! The Ferry agent is the first backend; Slurm, Kubernetes, Ray, Spark and cloud pools implement the same trait,
//! each behind a Cargo feature and listed in `registry.rs`. A backend must never decide where a job runs: the core
//! does that; backends only carry out and report.

use std::future::Future;
use std::pin::Pin;

use ferry_api::agent::{Assignment, RunRef};

#[cfg(feature = "agent")]
pub mod agent;
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

/// What a backend can do beyond the required minimum; the driver and the CLI consult it instead of the kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Nodes pull work and push state (an agent); otherwise the driver polls the engine.
    pub nodes_report_themselves: bool,
    /// The backend can place work on specific GPU indices.
    pub gpu_placement: bool,
    /// The backend streams job output back to the server.
    pub streams_logs: bool,
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
