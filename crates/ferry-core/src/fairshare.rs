//! Fair share between projects and users: dominant resource fairness over recent usage.
//!
//! Each project's and each user's usage is a decayed integral of what its running jobs hold (CPU-, memory- and
//! GPU-seconds, halved every half-life). A share is the dominant share of that usage, measured against what the
//! cluster could have given in one half-life, plus the dominant share of what is held now. Among queued jobs of one
//! priority, the cycle offers the next place to the project with the lowest share, and within it to the user with
//! the lowest share, adding each placed job's dominant share to both as it goes (progressive filling). So one user's
//! 500-trial sweep cannot starve a colleague's single run, and one project's flood cannot starve another project.
//! Projects are named within their team (`team/project`); jobs without a project form one group of their own.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};

use crate::idhash::IdMap;
use crate::resources::Resources;
use crate::JobId;

/// The half-life of recorded usage unless configured: a day, so yesterday's heavy user yields to today's others.
pub const HALF_LIFE_S_DEFAULT: u64 = 24 * 3600;
/// Shares are compared as integers in these units, so ordering stays exact and deterministic.
const SHARE_SCALE: f64 = 1e9;

/// Decayed usage per user or per project, as resource-seconds.
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

/// One user's queued jobs of one priority within one project, oldest first, with what each would hold.
type UserQueue = VecDeque<(JobId, Resources)>;

/// Who a queued job's fair share is counted for: its project (named within its team) and its user, by name and by
/// the ids the scheduler interned them under (jobs are grouped by id, so no name is compared per job).
pub(crate) struct Owner<'a> {
    pub(crate) team: &'a str,
    pub(crate) project: &'a str,
    pub(crate) user: &'a str,
    pub(crate) project_id: u32,
    pub(crate) user_id: u32,
    pub(crate) footprint: Resources,
}

/// What projects and users hold now and have used recently.
pub(crate) struct Standing<'a> {
    pub(crate) project_held: &'a HashMap<String, Resources>,
    pub(crate) user_held: &'a HashMap<String, Resources>,
    pub(crate) project_usage: &'a Usage,
    pub(crate) user_usage: &'a Usage,
}

type ShareKey = Reverse<(u64, JobId, usize)>;

/// One project's users, lowest share first, and their queues.
struct ProjectQueue {
    heap: BinaryHeap<ShareKey>,
    users: Vec<UserQueue>,
    user_shares: Vec<u64>,
}

/// One user's queue within a project of one priority level, as the level is gathered.
struct UserGroup<'a> {
    id: u32,
    name: &'a str,
    jobs: UserQueue,
}

/// One project of one priority level, as the level is gathered.
struct ProjectGroup<'a> {
    team: &'a str,
    project: &'a str,
    users: Vec<UserGroup<'a>>,
    /// Each user's place in `users`.
    slots: IdMap<u32, usize>,
}

/// The order in which a cycle considers queued jobs: priority first; within a priority, progressive filling across
/// projects by share, then across the project's users by share; within a user, submission order. `queue` is in
/// (priority, id) order.
pub(crate) fn order<'a>(
    queue: impl Iterator<Item = (i32, JobId)>,
    owner_of: impl Fn(JobId) -> Owner<'a>,
    standing: &Standing<'_>,
    capacity: &Resources,
) -> Vec<JobId> {
    // A user's share counts all its projects, and stays one number across them within a cycle.
    let mut user_share: IdMap<u32, u64> = IdMap::default();
    let mut out = Vec::new();
    let mut level: Option<i32> = None;
    let mut projects: Vec<ProjectGroup<'a>> = Vec::new();
    let mut slots: IdMap<u32, usize> = IdMap::default();
    for (priority, id) in queue {
        if level != Some(priority) {
            fill_level(std::mem::take(&mut projects), &mut user_share, standing, capacity, &mut out);
            slots.clear();
            level = Some(priority);
        }
        let Owner { team, project, user, project_id, user_id, footprint } = owner_of(id);
        let p = *slots.entry(project_id).or_insert_with(|| {
            projects.push(ProjectGroup { team, project, users: Vec::new(), slots: IdMap::default() });
            projects.len() - 1
        });
        let group = &mut projects[p];
        let u = *group.slots.entry(user_id).or_insert_with(|| {
            group.users.push(UserGroup { id: user_id, name: user, jobs: VecDeque::new() });
            group.users.len() - 1
        });
        group.users[u].jobs.push_back((id, footprint));
    }
    fill_level(projects, &mut user_share, standing, capacity, &mut out);
    out
}

/// Progressive filling of one priority level, appended to `out`. Every user and project queue holds at least one
/// job, and the heaps break ties by the id of each queue's first job, which no two queues share: the order in which
/// the groups were gathered decides nothing.
fn fill_level(
    projects: Vec<ProjectGroup<'_>>,
    user_share: &mut IdMap<u32, u64>,
    standing: &Standing<'_>,
    capacity: &Resources,
    out: &mut Vec<JobId>,
) {
    let share = |held: &HashMap<String, Resources>, usage: &Usage, key: &str| {
        let now = held.get(key).map(|r| dominant_of(r, capacity)).unwrap_or(0.0);
        ((now + usage.recent_share(key, capacity)) * SHARE_SCALE) as u64
    };
    let mut heap = BinaryHeap::new();
    let mut queues: Vec<ProjectQueue> = Vec::with_capacity(projects.len());
    let mut user_ids: Vec<Vec<u32>> = Vec::with_capacity(projects.len());
    for (p, group) in projects.into_iter().enumerate() {
        let mut q = ProjectQueue { heap: BinaryHeap::new(), users: Vec::new(), user_shares: Vec::new() };
        let mut ids = Vec::new();
        let mut first_of_project = JobId::MAX;
        for (u, user) in group.users.into_iter().enumerate() {
            let s =
                *user_share.entry(user.id).or_insert_with(|| share(standing.user_held, standing.user_usage, user.name));
            // Ties go to the user whose first job came first.
            let first = user.jobs.front().map(|(id, _)| *id).unwrap_or(0);
            first_of_project = first_of_project.min(first);
            q.heap.push(Reverse((s, first, u)));
            q.users.push(user.jobs);
            q.user_shares.push(s);
            ids.push(user.id);
        }
        let s = share(standing.project_held, standing.project_usage, &format!("{}/{}", group.team, group.project));
        heap.push(Reverse((s, first_of_project, p)));
        queues.push(q);
        user_ids.push(ids);
    }
    while let Some(Reverse((project_share, _, p))) = heap.pop() {
        let q = &mut queues[p];
        let Some(Reverse((_, _, u))) = q.heap.pop() else { continue };
        let Some((id, footprint)) = q.users[u].pop_front() else { continue };
        out.push(id);
        let added = (dominant_of(&footprint, capacity) * SHARE_SCALE) as u64;
        // The user's share grows wherever it queues; its other projects see the new value when they next pick.
        let user = user_ids[p][u];
        let grown = user_share.get(&user).copied().unwrap_or(q.user_shares[u]).saturating_add(added);
        user_share.insert(user, grown);
        q.user_shares[u] = grown;
        if let Some((next, _)) = q.users[u].front() {
            q.heap.push(Reverse((grown, *next, u)));
        }
        if let Some(Reverse((_, next, _))) = q.heap.peek() {
            heap.push(Reverse((project_share.saturating_add(added), *next, p)));
        }
    }
}
