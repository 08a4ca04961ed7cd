//! The scheduler core: a pure, deterministic state machine.
//!
//! Events go in (a node joined, was heard from, went away or was removed, a job was submitted or ended, a provider
//! could not start nodes, time passed), decisions come out (start this job on that node with these GPUs, this node is
//! not ready and this job was lost with it, start, stop waiting for, or release nodes of an elastic pool), and every
//! decision or wait carries its reason as data.
//!
//! This crate must never do I/O, read a clock, spawn a task or draw a random number: the server and the simulator
//! drive the same core, so everything it needs is passed in. It knows nothing of SQL, HTTP or processes.

mod constraint;
mod elastic;
mod fairshare;
mod fgd;
mod forecast;
mod idhash;
pub mod lifecycle;
mod node;
pub mod nodelife;
mod nodeset;
pub mod order;
pub mod predict;
mod preempt;
mod queue;
mod reason;
mod resources;
mod scheduler;

pub use elastic::{ElasticPool, NodeTemplate};
pub use fairshare::HALF_LIFE_S_DEFAULT;
pub use forecast::{NoForecast, StartForecast, FORECAST_CYCLES_MAX};
pub use nodelife::{AbandonReason, Cooldown, ElasticStatus, NodeStatus, NotReadyReason, ProvisionFailure};
pub use order::QueueOrder;
pub use preempt::{PreemptReason, PREEMPTIONS_PER_CYCLE_MAX};
pub use reason::{
    BurstReason, NodeShortfall, NodesNeeded, Placement, ProvisionReason, ReleaseReason, ResourceKind, WaitReason,
    PROVISION_JOBS_NAMED_MAX,
};
pub use resources::Resources;
pub use scheduler::{
    Allocation, CoreError, Decision, Event, GpuPlacement, HeldBack, JobRequest, NodeInfo, Peer, PoolInfo, ProjectInfo,
    QueuedGroup, Scheduler, TeamInfo, RESERVE_DEPTH_DEFAULT, RESERVE_DEPTH_MAX,
};

/// A job's identifier, assigned by the store when the job is accepted.
pub type JobId = u64;
