//! Preemption: which running jobs to stop so that a blocked job can start.
//!
//! A job may preempt running jobs of lower priority, and a team within its guaranteed quota may take back what other
//! teams borrow beyond theirs; under the least-attained order, a job may also pause a job of its priority that
//! checkpoints and has had more GPU time (see `order`). On each allowed node the fewest, least important, most
//! recently started victims that free enough are chosen (for attained service, those that had the most first); the
//! node needing the fewest victims wins. Victims are stopped with a grace period and
//! requeued by the driver; nothing here runs or stops anything.
//!
//! Every preemption must be progress, never the first half of a swap (`Scheduler::taken_back`): it is made only when
//! no victim, queued again, could stop the job it made room for in turn. So a job whose team (or project) would
//! borrow beyond its quota does not stop, even for priority, a job of another team that would then be within its
//! quota and reclaim at once; and a reclaim never stops a job of higher priority than the one it reclaims for. The
//! job a preemption is for must also be able to start once its victims stop, by the same checks as any start (its
//! team's and project's limits, counting the claims of their other jobs, and the pool's burst rules), and what its
//! victims free is held for it until it starts (`Scheduler::honour_claims`).

use serde::{Deserialize, Serialize};

use crate::resources::Resources;
use crate::JobId;

/// The most jobs one cycle may preempt, so a burst of high-priority work stops the cluster gradually.
pub const PREEMPTIONS_PER_CYCLE_MAX: usize = 64;

/// Why a running job is preempted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PreemptReason {
    /// A job of higher priority needs its resources.
    Priority { victim_priority: i32, preemptor_priority: i32 },
    /// Its team borrowed beyond its quota, and the lending team needs its guaranteed share back.
    Reclaim { victim_team: String, preemptor_team: String },
    /// Its project borrowed beyond its quota within the team, and a sibling project needs its guaranteed share back.
    ReclaimProject { team: String, victim_project: String, preemptor_project: String },
    /// Under the least-attained order: it checkpoints, ran its lease, and has received more GPU time than the job
    /// waiting (in a higher level); it resumes from its checkpoint.
    Attained { victim_gpu_s: u64, preemptor_gpu_s: u64 },
}

impl std::fmt::Display for PreemptReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PreemptReason::Priority { victim_priority, preemptor_priority } => write!(
                f,
                "a job of higher priority ({preemptor_priority}) needs its resources (its priority is {victim_priority})"
            ),
            PreemptReason::Reclaim { victim_team, preemptor_team } => write!(
                f,
                "team {victim_team} borrowed beyond its quota and team {preemptor_team} needs its guaranteed share back"
            ),
            PreemptReason::ReclaimProject { team, victim_project, preemptor_project } => write!(
                f,
                "project {victim_project} of team {team} borrowed beyond its quota and project {preemptor_project} needs its guaranteed share back"
            ),
            PreemptReason::Attained { victim_gpu_s, preemptor_gpu_s } => write!(
                f,
                "it has had {} of GPU time and a job of its priority waits that has had {}; it resumes from its checkpoint (least-attained order)",
                gpu_time(*victim_gpu_s),
                gpu_time(*preemptor_gpu_s)
            ),
        }
    }
}

/// GPU-seconds as people read them: GPU-hours with one decimal, or GPU-minutes under an hour.
fn gpu_time(gpu_s: u64) -> String {
    if gpu_s < 3600 {
        format!("{} GPU-minutes", gpu_s / 60)
    } else {
        format!("{:.1} GPU-hours", gpu_s as f64 / 3600.0)
    }
}

/// A running job that could be stopped, as preemption sees it.
#[derive(Clone, Debug)]
pub(crate) struct Candidate {
    pub(crate) job: JobId,
    pub(crate) priority: i32,
    /// What it has received, where it is stopped for attained service (it goes first); 0 otherwise.
    pub(crate) attained_gpu_s: u64,
    pub(crate) resources: Resources,
    pub(crate) gpus: u32,
    pub(crate) reason: PreemptReason,
}

/// The fewest victims, lowest priority first, then the most attained GPU time first (for attained service), then
/// newest first, whose resources added to `free` make room for `needs`; `None` if even all of them would not.
pub(crate) fn victims(mut candidates: Vec<Candidate>, free: Resources, needs: &Resources) -> Option<Vec<Candidate>> {
    use std::cmp::Reverse;
    candidates.sort_by_key(|c| (c.priority, Reverse(c.attained_gpu_s), Reverse(c.job)));
    let mut room = free;
    let mut chosen = Vec::new();
    for c in candidates {
        if needs.fits_in(&room) {
            break;
        }
        room = room.checked_add(&Resources { gpus: c.gpus, ..c.resources }).unwrap_or(room);
        chosen.push(c);
    }
    needs.fits_in(&room).then_some(chosen)
}
