//! The queue orderings an admin may choose between, besides fair share (`fairshare`).
//!
//! Every ordering keeps priority first: a higher-priority job is always considered before a lower one. Within one
//! priority the orderings differ:
//!
//! - **fair share** (the default, `fairshare::Filling`): progressive filling across projects and users by recent
//!   usage; within a user, submission order.
//! - **FIFO**: submission order, nothing else. The baseline the others are measured against.
//! - **shortest first** (after QSSF, the quasi-shortest-service-first ordering of the Helios study): the job that
//!   asks for the least *service*, its expected runtime times its dominant share of the cluster, first. The
//!   expected runtime is the job's prediction from history, else its runtime limit, else `unknown_runtime_s`.
//! - **least attained** (after Tiresias' discretised two-dimensional LAS): jobs are filed into levels by the GPU
//!   time they have already received in earlier attempts (a preempted or requeued job that checkpoints); the level
//!   that has received least comes first, and submission order within a level. A job that never ran is in the first
//!   level, so new work overtakes long-running work that was stopped.
//!
//! Both service orderings **age**: a job that has waited `aging_s` or longer is considered before every job that has
//! not, in submission order among the aged. That is the starvation bound: jobs that arrived after a job can pass it
//! only during its first `aging_s` of waiting; after that it waits only for the aged jobs ahead of it and for room
//! to free, as under FIFO. The bound is a trade: when the queue is deeper than the bound (days, at a sustained
//! overload), most jobs are aged and the order falls back towards FIFO; the default of a day kept the mean
//! completion time within 1.2x of clairvoyant shortest-job-first on the simulator's trace-shaped workload at 4x load
//! (figures for other bounds in crates/ferry-sim/README.md).
//!
//! Least-attained also **preempts**, as Tiresias does, but only jobs that say they checkpoint (`JobRequest::checkpoints`,
//! `ferry run --checkpoints`): a blocked job may stop a running job of its own priority that checkpoints, has run its
//! current attempt for at least the lease (`lease_s`, ten minutes by default) and has received more GPU time, counting
//! the attempt under way, so that it sits in a higher level than the blocked job. The victim resumes from its
//! checkpoint when it starts again, behind the newer work. The lease bounds the churn: a job runs at least that long
//! each time it starts, and a victim, queued again, sits in a higher level than the job it made room for until that
//! job has itself received the GPU time of the level between them, so the two cannot swap back and forth. Jobs that
//! do not checkpoint are never stopped for attained service; without them least-attained orders fresh jobs by
//! submission (none has received any service) and differs from FIFO only for requeued jobs.
//!
//! Under least-attained a job ages by *waiting*: its time since submission less what its earlier attempts ran (their
//! GPU time over its GPUs). A job that has waited `aging_s` in all goes first, and once started it is not stopped for
//! attained service again; so a long job is passed and stopped only until it has waited the bound, and then runs to
//! its end like any job under FIFO. On the simulator's trace-shaped workload with checkpoints every ten minutes, the
//! preemption cut the mean completion time to a third at 3x load, and the bound halved the longest wait against no
//! aging (crates/ferry-sim/README.md).

use serde::{Deserialize, Serialize};

use crate::fairshare::dominant_of;
use crate::resources::Resources;
use crate::scheduler::JobRequest;
use crate::JobId;

/// Jobs without a prediction or a runtime limit are taken to run this long under `ShortestFirst`, unless configured.
pub const UNKNOWN_RUNTIME_S_DEFAULT: u64 = 3600;
/// The aging bound of the service orderings unless configured: a day. Shorter bounds trade mean completion time for
/// a tighter promise; the simulator's README has the figures (on the synthetic 70,000-job trace-shaped workload at 4x
/// load, a day's bound kept the mean within 1.2x of clairvoyant shortest-job-first, half a day's within 1.6x).
pub const AGING_S_DEFAULT: u64 = 86_400;
/// The level thresholds of `LeastAttained` unless configured, in GPU-seconds already received: one GPU-hour and ten.
pub const ATTAINED_LEVELS_GPU_S_DEFAULT: [u64; 2] = [3600, 36_000];
/// How long a checkpointing job runs, each time it starts, before `LeastAttained` may stop it for a job that has
/// received less GPU time, unless configured: ten minutes.
pub const LEASE_S_DEFAULT: u64 = 600;
/// The most levels `LeastAttained` may have.
pub const LEVELS_MAX: usize = 8;
/// The longest lease that may be configured: a week (a longer one is as good as no preemption).
pub const LEASE_S_MAX: u64 = 7 * 86_400;

/// How the queue is ordered within one priority.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "order")]
pub enum QueueOrder {
    /// Progressive filling across projects and users by recent usage, then submission order.
    #[default]
    FairShare,
    /// Submission order.
    Fifo,
    /// Least expected service first, with aging.
    ShortestFirst {
        /// A job that has waited this long goes before every job that has not; 0 turns aging off (clairvoyant
        /// shortest-job-first in the simulator), which can starve a long job for as long as short ones keep coming.
        aging_s: u64,
        /// The runtime assumed for a job with neither a prediction nor a runtime limit.
        unknown_runtime_s: u64,
    },
    /// Least GPU time already received first, by levels, with aging.
    LeastAttained {
        /// The level boundaries in GPU-seconds received, ascending.
        levels_gpu_s: Vec<u64>,
        aging_s: u64,
        /// How long a job that checkpoints runs, each time it starts, before a job in a lower level may stop it;
        /// `None` for no preemption by attained service.
        #[serde(default)]
        lease_s: Option<u64>,
    },
}

impl QueueOrder {
    /// The shortest-first ordering with the default aging bound and unknown runtime.
    pub fn shortest_first() -> QueueOrder {
        QueueOrder::ShortestFirst { aging_s: AGING_S_DEFAULT, unknown_runtime_s: UNKNOWN_RUNTIME_S_DEFAULT }
    }

    /// The least-attained ordering with the default levels and aging bound.
    pub fn least_attained() -> QueueOrder {
        QueueOrder::LeastAttained {
            levels_gpu_s: ATTAINED_LEVELS_GPU_S_DEFAULT.to_vec(),
            aging_s: AGING_S_DEFAULT,
            lease_s: Some(LEASE_S_DEFAULT),
        }
    }

    /// The name configuration files and the CLI use.
    pub fn name(&self) -> &'static str {
        match self {
            QueueOrder::FairShare => "fair-share",
            QueueOrder::Fifo => "fifo",
            QueueOrder::ShortestFirst { .. } => "shortest-first",
            QueueOrder::LeastAttained { .. } => "least-attained",
        }
    }

    /// Reads a name (`fair-share`, `fifo`, `shortest-first`, `least-attained`) with the defaults of its settings.
    pub fn from_name(name: &str) -> Option<QueueOrder> {
        Some(match name {
            "fair-share" => QueueOrder::FairShare,
            "fifo" => QueueOrder::Fifo,
            "shortest-first" => QueueOrder::shortest_first(),
            "least-attained" => QueueOrder::least_attained(),
            _ => return None,
        })
    }

    /// Reads a name and, for the orderings that age, an aging bound in seconds (0 turns aging off); the error says
    /// what is wrong and what would be right.
    pub fn configure(name: &str, aging_s: Option<u64>) -> Result<QueueOrder, String> {
        let mut order = QueueOrder::from_name(name)
            .ok_or_else(|| format!("\"{name}\" is not a queue order; write {}", QueueOrder::NAMES))?;
        match (&mut order, aging_s) {
            (_, None) => {}
            (QueueOrder::ShortestFirst { aging_s, .. } | QueueOrder::LeastAttained { aging_s, .. }, Some(bound)) => {
                *aging_s = bound
            }
            (QueueOrder::FairShare | QueueOrder::Fifo, Some(_)) => {
                return Err(format!(
                    "queue order {name} does not age jobs; an aging bound goes with shortest-first or least-attained"
                ))
            }
        }
        Ok(order)
    }

    /// Sets the lease of the least-attained order (`None`: it preempts nothing); the error says why no other order
    /// takes one, or what range a lease must be in.
    pub fn with_lease(mut self, lease: Option<u64>) -> Result<QueueOrder, String> {
        let QueueOrder::LeastAttained { lease_s, .. } = &mut self else {
            return Err(format!(
                "queue order {} does not preempt for attained service; a lease goes with least-attained",
                self.name()
            ));
        };
        if let Some(s) = lease {
            if s == 0 || s > LEASE_S_MAX {
                return Err(format!(
                    "a lease of {s} s is out of range: write 1s to 7d (default {}m), or \"off\" for no preemption",
                    LEASE_S_DEFAULT / 60
                ));
            }
        }
        *lease_s = lease;
        Ok(self)
    }

    /// Sets the level boundaries of the least-attained order, in GPU-seconds received: 1 to `LEVELS_MAX` of them,
    /// each above 0 and above the one before; the error says what is wrong.
    pub fn with_levels(mut self, levels: Vec<u64>) -> Result<QueueOrder, String> {
        let QueueOrder::LeastAttained { levels_gpu_s, .. } = &mut self else {
            return Err(format!("queue order {} has no levels; levels go with least-attained", self.name()));
        };
        if levels.is_empty() || levels.len() > LEVELS_MAX || levels[0] == 0 {
            return Err(format!(
                "give 1 to {LEVELS_MAX} levels of GPU time received, each above 0, such as [\"1h\", \"10h\"] (the \
                 default: GPU-hours)"
            ));
        }
        *levels_gpu_s = levels;
        self.validate()?;
        Ok(self)
    }

    /// The level boundaries of the least-attained order in GPU-seconds; `None` for the other orders.
    pub fn levels_gpu_s(&self) -> Option<&[u64]> {
        match self {
            QueueOrder::LeastAttained { levels_gpu_s, .. } => Some(levels_gpu_s),
            _ => None,
        }
    }

    /// The lease of the least-attained order; `None` for the other orders or with its preemption off.
    pub fn lease_s(&self) -> Option<u64> {
        match self {
            QueueOrder::LeastAttained { lease_s, .. } => *lease_s,
            _ => None,
        }
    }

    /// The names `from_name` reads, for error messages.
    pub const NAMES: &'static str = "fair-share, fifo, shortest-first or least-attained";

    /// The aging bound in seconds, for the orderings that age; `None` for the others or with aging off.
    pub fn aging_s(&self) -> Option<u64> {
        match self {
            QueueOrder::ShortestFirst { aging_s, .. } | QueueOrder::LeastAttained { aging_s, .. } => {
                (*aging_s > 0).then_some(*aging_s)
            }
            QueueOrder::FairShare | QueueOrder::Fifo => None,
        }
    }

    /// Checks the settings: levels ascending and distinct.
    pub fn validate(&self) -> Result<(), String> {
        if let QueueOrder::LeastAttained { levels_gpu_s, .. } = self {
            if levels_gpu_s.windows(2).any(|w| w[0] >= w[1]) {
                return Err(format!(
                    "the least-attained levels must ascend, each above the one before; got {levels_gpu_s:?}"
                ));
            }
        }
        Ok(())
    }
}

/// What the service orderings read of a queued job: a full `JobRequest`, or the core's compact form of one.
pub(crate) trait Service {
    fn submitted_at_us(&self) -> i64;
    fn runtime_s(&self) -> (Option<u64>, Option<u64>);
    fn attained_gpu_s(&self) -> u64;
}

impl Service for JobRequest {
    fn submitted_at_us(&self) -> i64 {
        self.submitted_at_us
    }

    /// The prediction, then the limit.
    fn runtime_s(&self) -> (Option<u64>, Option<u64>) {
        (self.expected_runtime_s, self.max_runtime_s)
    }

    fn attained_gpu_s(&self) -> u64 {
        self.attained_gpu_s
    }
}

/// The expected runtime of a job under the service orderings: its prediction, else its limit, else `unknown_s`.
pub(crate) fn expected_runtime_s(request: &impl Service, unknown_s: u64) -> u64 {
    let (expected, limit) = request.runtime_s();
    expected.or(limit).unwrap_or(unknown_s)
}

/// How long a job submitted at `submitted_at_us` has waited by `at_us` under least-attained, in microseconds: its
/// time since submission less what its earlier attempts ran (their `attained_gpu_s` over its `gpus`). A job ages by
/// waiting, not by running.
pub(crate) fn waited_us(submitted_at_us: i64, attained_gpu_s: u64, gpus: u32, at_us: i64) -> i64 {
    let ran_us = (attained_gpu_s / u64::from(gpus.max(1))).saturating_mul(1_000_000);
    at_us.saturating_sub(submitted_at_us).saturating_sub(i64::try_from(ran_us).unwrap_or(i64::MAX))
}

/// The least-attained level of a job that has received `attained_gpu_s`: how many boundaries it has reached.
pub(crate) fn level(levels_gpu_s: &[u64], attained_gpu_s: u64) -> usize {
    levels_gpu_s.iter().filter(|t| attained_gpu_s >= **t).count()
}

/// The order of one priority level's jobs (given in submission order) under a service ordering; FIFO and fair share
/// are not handled here. `total` is what a job holds with all its workers.
pub(crate) fn order_level<'a, R: Service + 'a>(
    order: &QueueOrder,
    jobs: &mut [JobId],
    request_of: impl Fn(JobId) -> (&'a R, Resources),
    capacity: &Resources,
    now_us: i64,
) {
    let past_bound =
        |waited_us: i64, aging_s: u64| aging_s > 0 && waited_us >= (aging_s as i64).saturating_mul(1_000_000);
    let aged = |r: &R, aging_s: u64| past_bound(now_us.saturating_sub(r.submitted_at_us()), aging_s);
    match order {
        QueueOrder::FairShare | QueueOrder::Fifo => {}
        QueueOrder::ShortestFirst { aging_s, unknown_runtime_s } => {
            jobs.sort_by_cached_key(|&id| {
                let (r, total) = request_of(id);
                if aged(r, *aging_s) {
                    return (false, 0, id);
                }
                let share = (dominant_of(&total, capacity) * 1e9) as u64;
                (true, share.saturating_mul(expected_runtime_s(r, *unknown_runtime_s)), id)
            });
        }
        QueueOrder::LeastAttained { levels_gpu_s, aging_s, .. } => {
            jobs.sort_by_cached_key(|&id| {
                let (r, total) = request_of(id);
                if past_bound(waited_us(r.submitted_at_us(), r.attained_gpu_s(), total.gpus, now_us), *aging_s) {
                    return (false, 0, id);
                }
                (true, level(levels_gpu_s, r.attained_gpu_s()) as u64, id)
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    fn job(id: JobId, gpus: u32, expected_s: Option<u64>, submitted_s: i64) -> JobRequest {
        JobRequest {
            id,
            resources: Resources::new(1000, 1 << 30, gpus),
            expected_runtime_s: expected_s,
            submitted_at_us: submitted_s * S,
            ..JobRequest::default()
        }
    }

    fn ordered(order: &QueueOrder, jobs: &[JobRequest], now_s: i64) -> Vec<JobId> {
        let capacity = Resources::new(64_000, 512 << 30, 8);
        let mut ids: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
        let find = |id: JobId| {
            let r = jobs.iter().find(|j| j.id == id).unwrap();
            (r, r.resources)
        };
        order_level(order, &mut ids, find, &capacity, now_s * S);
        ids
    }

    #[test]
    fn shortest_first_orders_by_runtime_times_size_and_unknown_takes_the_default() {
        let order = QueueOrder::ShortestFirst { aging_s: 0, unknown_runtime_s: 3600 };
        // 1: 1 GPU x 2 h; 2: 2 GPUs x 10 min; 3: unknown (1 h) x 1 GPU; 4: 8 GPUs x 20 min.
        let jobs = [job(1, 1, Some(7200), 0), job(2, 2, Some(600), 1), job(3, 1, None, 2), job(4, 8, Some(1200), 3)];
        assert_eq!(ordered(&order, &jobs, 10), vec![2, 3, 1, 4]);
        // A runtime limit stands in for a missing prediction.
        let mut limited = job(3, 1, None, 2);
        limited.max_runtime_s = Some(60);
        let jobs = [job(1, 1, Some(7200), 0), job(2, 2, Some(600), 1), limited];
        assert_eq!(ordered(&order, &jobs, 10), vec![3, 2, 1]);
    }

    #[test]
    fn an_aged_job_goes_before_every_job_that_has_not_waited_as_long() {
        let order = QueueOrder::ShortestFirst { aging_s: 3600, unknown_runtime_s: 3600 };
        let jobs = [job(1, 8, Some(86_400), 0), job(2, 1, Some(60), 100), job(3, 8, Some(50_000), 10)];
        // Before the bound the long jobs wait behind the short one.
        assert_eq!(ordered(&order, &jobs, 3000), vec![2, 3, 1]);
        // Past it, both aged jobs go first in submission order, whatever their size.
        assert_eq!(ordered(&order, &jobs, 3650), vec![1, 3, 2]);
        // Without aging the longest stays last for ever.
        let clairvoyant = QueueOrder::ShortestFirst { aging_s: 0, unknown_runtime_s: 3600 };
        assert_eq!(ordered(&clairvoyant, &jobs, 1_000_000), vec![2, 3, 1]);
    }

    #[test]
    fn a_lease_goes_with_least_attained_within_its_range() {
        assert_eq!(QueueOrder::least_attained().lease_s(), Some(LEASE_S_DEFAULT));
        let off = QueueOrder::least_attained().with_lease(None).unwrap();
        assert_eq!(off.lease_s(), None);
        assert_eq!(QueueOrder::least_attained().with_lease(Some(3600)).unwrap().lease_s(), Some(3600));
        let zero = QueueOrder::least_attained().with_lease(Some(0)).unwrap_err();
        assert!(zero.contains("write 1s to 7d (default 10m), or \"off\""), "{zero}");
        assert!(QueueOrder::least_attained().with_lease(Some(LEASE_S_MAX + 1)).is_err());
        let levels = QueueOrder::least_attained().with_levels(vec![60, 7200]).unwrap();
        assert_eq!(levels.levels_gpu_s(), Some(&[60, 7200][..]));
        assert!(QueueOrder::least_attained().with_levels(vec![7200, 60]).unwrap_err().contains("ascend"));
        assert!(QueueOrder::least_attained().with_levels(vec![]).unwrap_err().contains("1 to 8 levels"));
        assert!(QueueOrder::least_attained().with_levels(vec![0, 5]).unwrap_err().contains("each above 0"));
        assert!(QueueOrder::Fifo.with_levels(vec![60]).unwrap_err().contains("levels go with least-attained"));
        let fifo = QueueOrder::Fifo.with_lease(Some(600)).unwrap_err();
        assert!(fifo.contains("queue order fifo does not preempt") && fifo.contains("least-attained"), "{fifo}");
    }

    #[test]
    fn least_attained_files_jobs_by_the_gpu_time_they_already_had() {
        let order = QueueOrder::LeastAttained { levels_gpu_s: vec![3600, 36_000], aging_s: 0, lease_s: None };
        let mut a = job(1, 1, None, 0);
        a.attained_gpu_s = 40_000;
        let mut b = job(2, 1, None, 1);
        b.attained_gpu_s = 3600;
        let c = job(3, 1, None, 2);
        let mut d = job(4, 1, None, 3);
        d.attained_gpu_s = 100;
        assert_eq!(ordered(&order, &[a, b, c, d], 10), vec![3, 4, 2, 1]);
    }

    #[test]
    fn under_least_attained_a_job_ages_by_waiting_not_by_running() {
        let order = QueueOrder::LeastAttained { levels_gpu_s: vec![3600], aging_s: 7200, lease_s: None };
        // Both arrived three hours ago with two GPUs: job 1 ran two of those hours (14,400 GPU-seconds) and waited
        // one; job 2 waited all three and had a GPU-hour before. Job 3 is new.
        let mut ran = job(1, 2, None, 0);
        ran.attained_gpu_s = 14_400;
        let mut waited = job(2, 2, None, 0);
        waited.attained_gpu_s = 3600;
        let fresh = job(3, 2, None, 10_000);
        // Job 2 waited 2.5 hours (past the bound) and goes first; job 1 is not aged, and the new job passes it.
        assert_eq!(ordered(&order, &[ran, waited, fresh], 10_800), vec![2, 3, 1]);
    }

    #[test]
    fn names_read_back_and_bad_levels_are_refused() {
        for name in ["fair-share", "fifo", "shortest-first", "least-attained"] {
            assert_eq!(QueueOrder::from_name(name).unwrap().name(), name);
        }
        assert_eq!(QueueOrder::from_name("sjf"), None);
        let bad = QueueOrder::LeastAttained { levels_gpu_s: vec![10, 10], aging_s: 0, lease_s: None };
        assert!(bad.validate().unwrap_err().contains("ascend"));
        assert_eq!(QueueOrder::shortest_first().aging_s(), Some(AGING_S_DEFAULT));
        assert_eq!(QueueOrder::Fifo.aging_s(), None);
    }
}
