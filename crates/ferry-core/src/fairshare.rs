//! Fair share between users: dominant resource fairness over recent usage.
//!
//! Each user's usage is a decayed integral of what its running jobs hold (CPU-, memory- and GPU-seconds, halved every
//! half-life). A user's share is the dominant share of that usage, measured against what the cluster could have
//! given in one half-life, plus the dominant share of what it holds now. Among queued jobs of one priority, the
//! cycle offers the next place to the user with the lowest share, adding each placed job's dominant share as it goes
//! (progressive filling), so one user's 500-trial sweep cannot starve a colleague's single run.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};

use crate::resources::Resources;
use crate::JobId;

/// The half-life of recorded usage unless configured: a day, so yesterday's heavy user yields to today's others.
pub const HALF_LIFE_S_DEFAULT: u64 = 24 * 3600;
/// Shares are compared as integers in these units, so ordering stays exact and deterministic.
const SHARE_SCALE: f64 = 1e9;

/// Decayed usage per user, as resource-seconds.
#[derive(Clone, Debug, Default)]
pub(crate) struct Usage {
    by_user: HashMap<String, [f64; 3]>,
    pub(crate) half_life_s: u64,
}

impl Usage {
    /// Adds `held` for `dt_s` seconds to each user, then decays everything by the time that passed.
    pub(crate) fn advance(&mut self, dt_s: f64, held: &[(&str, Resources)]) {
        if dt_s <= 0.0 {
            return;
        }
        let decay = 0.5f64.powf(dt_s / self.half_life().max(1.0));
        for value in self.by_user.values_mut() {
            for v in value.iter_mut() {
                *v *= decay;
            }
        }
        for (user, r) in held {
            let entry = self.by_user.entry(user.to_string()).or_default();
            entry[0] += r.cpu_millis as f64 * dt_s;
            entry[1] += r.memory_bytes as f64 * dt_s;
            entry[2] += r.gpus as f64 * dt_s;
        }
        // Users whose usage decayed to nothing are forgotten, so the map does not grow without bound.
        self.by_user.retain(|_, v| v.iter().any(|x| *x > 1e-9));
    }

    fn half_life(&self) -> f64 {
        if self.half_life_s == 0 {
            HALF_LIFE_S_DEFAULT as f64
        } else {
            self.half_life_s as f64
        }
    }

    /// The user's dominant share of recent usage against `capacity` held for one half-life.
    fn recent_share(&self, user: &str, capacity: &Resources) -> f64 {
        let Some(u) = self.by_user.get(user) else { return 0.0 };
        let h = self.half_life();
        dominant(&[u[0] / h, u[1] / h, u[2] / h], capacity)
    }
}

/// The largest of the per-resource fractions of `capacity` that `amounts` (CPU millis, bytes, GPUs) make up.
fn dominant(amounts: &[f64; 3], capacity: &Resources) -> f64 {
    let caps = [capacity.cpu_millis as f64, capacity.memory_bytes as f64, capacity.gpus as f64];
    amounts.iter().zip(caps).filter(|(_, c)| *c > 0.0).map(|(a, c)| a / c).fold(0.0, f64::max)
}

pub(crate) fn dominant_of(r: &Resources, capacity: &Resources) -> f64 {
    dominant(&[r.cpu_millis as f64, r.memory_bytes as f64, r.gpus as f64], capacity)
}

/// One user's queued jobs of one priority, oldest first, with what each would hold.
type UserQueue = VecDeque<(JobId, Resources)>;

/// The order in which a cycle considers queued jobs: priority first; within a priority, progressive filling across
/// users by share; within a user, submission order. `queue` is in (priority, id) order.
pub(crate) fn order(
    queue: impl Iterator<Item = (i32, JobId)>,
    user_of: impl Fn(JobId) -> (String, Resources),
    held_now: &HashMap<String, Resources>,
    usage: &Usage,
    capacity: &Resources,
) -> Vec<JobId> {
    let mut levels: BTreeMap<Reverse<i32>, BTreeMap<String, UserQueue>> = BTreeMap::new();
    for (priority, id) in queue {
        let (user, footprint) = user_of(id);
        levels.entry(Reverse(priority)).or_default().entry(user).or_default().push_back((id, footprint));
    }
    let mut out = Vec::new();
    for users in levels.into_values() {
        let mut heap = BinaryHeap::new();
        let mut queues: Vec<UserQueue> = Vec::with_capacity(users.len());
        for (i, (user, jobs)) in users.into_iter().enumerate() {
            let now = held_now.get(&user).map(|r| dominant_of(r, capacity)).unwrap_or(0.0);
            let share = now + usage.recent_share(&user, capacity);
            // Ties go to the user whose first job came first.
            let first = jobs.front().map(|(id, _)| *id).unwrap_or(0);
            heap.push(Reverse(((share * SHARE_SCALE) as u64, first, i)));
            queues.push(jobs);
        }
        while let Some(Reverse((share, _, i))) = heap.pop() {
            let Some((id, footprint)) = queues[i].pop_front() else { continue };
            out.push(id);
            if let Some((next, _)) = queues[i].front() {
                let added = (dominant_of(&footprint, capacity) * SHARE_SCALE) as u64;
                heap.push(Reverse((share.saturating_add(added), *next, i)));
            }
        }
    }
    out
}
