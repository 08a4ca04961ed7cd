//! Ferry's simulator: drives the same scheduler core as the server, in virtual time, over a cluster and a workload
//! read from files, and checks the core from the outside after every step.
//!
//! Inputs are a cluster (TOML, with elastic burst pools if wanted, or the Alibaba trace's node list) and a workload (a
//! simple CSV, with gangs if wanted, or the trace's pod list); every parser error names the file, the line and the
//! field, and no input makes a parser panic. Two modes:
//! a replay, where jobs arrive at their times and run for their durations, and the FGD experiment, where sampled
//! tasks arrive and never depart until they ask for every GPU. All randomness comes from a seeded generator; a
//! checker failure reports the seed and step that replay it.
//!
//! This crate must never read the wall clock or draw an unseeded random number, and never decide a placement: the
//! core decides, the simulator only applies and checks.

pub mod checker;
pub mod cli;
pub mod cluster;
mod csvin;
pub mod engine;
pub mod error;
pub mod failures;
pub mod fgd;
pub mod ledger;
pub mod predictions;
pub mod report;
pub mod runs;
pub mod starvation;
pub mod synth;
pub mod workload;

pub use cluster::{parse_cluster_toml, parse_trace_nodes, Cluster, Pool};
pub use error::{InputError, SimError, Violation};
pub use workload::{parse_trace_pods, parse_workload_csv, JobSpec, Workload};
