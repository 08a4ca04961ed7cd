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
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::ops::Bound;

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

/// One priority level's queued jobs: by project id, then user id, then job id.
type Level = IdMap<u32, IdMap<u32, BTreeSet<JobId>>>;

/// The queued jobs filed the way fair share walks them: by priority (highest first), then project, then user (both
/// by their interned ids); each user's jobs by id, which is submission order. The scheduler keeps it as jobs are
/// queued and leave, so that a cycle orders the queue without gathering it first, and only as far as it walks.
#[derive(Clone, Debug, Default)]
pub(crate) struct Groups {
    levels: BTreeMap<Reverse<i32>, Level>,
    len: usize,
}

impl Groups {
    pub(crate) fn insert(&mut self, priority: i32, project: u32, user: u32, job: JobId) {
        let users = self.levels.entry(Reverse(priority)).or_default().entry(project).or_default();
        if users.entry(user).or_default().insert(job) {
            self.len += 1;
        }
    }

    /// Removes a job, and the groups it leaves empty.
    pub(crate) fn remove(&mut self, priority: i32, project: u32, user: u32, job: JobId) {
        let Some(projects) = self.levels.get_mut(&Reverse(priority)) else { return };
        let Some(users) = projects.get_mut(&project) else { return };
        let Some(jobs) = users.get_mut(&user) else { return };
        if !jobs.remove(&job) {
            return;
        }
        self.len -= 1;
        if jobs.is_empty() {
            users.remove(&user);
            if users.is_empty() {
                projects.remove(&project);
                if projects.is_empty() {
                    self.levels.remove(&Reverse(priority));
                }
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Each priority level, highest first, with its jobs in submission order.
    pub(crate) fn by_level(&self) -> impl Iterator<Item = (i32, Vec<JobId>)> + '_ {
        self.levels.iter().map(|(Reverse(priority), level)| (*priority, Self::submission_order(level)))
    }

    /// The jobs of the levels below `priority`, highest first, each level in submission order.
    pub(crate) fn below(&self, priority: i32) -> Vec<JobId> {
        let lower = self.levels.range((Bound::Excluded(Reverse(priority)), Bound::Unbounded));
        lower.flat_map(|(_, level)| Self::submission_order(level)).collect()
    }

    fn submission_order(level: &Level) -> Vec<JobId> {
        let mut jobs: Vec<JobId> = level.values().flat_map(|users| users.values().flatten().copied()).collect();
        jobs.sort_unstable();
        jobs
    }

    /// The user's next job after `job` in one level and project.
    fn after(&self, priority: i32, project: u32, user: u32, job: JobId) -> Option<JobId> {
        let jobs = self.levels.get(&Reverse(priority))?.get(&project)?.get(&user)?;
        jobs.range(job.saturating_add(1)..).next().copied()
    }
}

/// What the filling reads of the scheduler: each project's and user's share when the walk reaches a level, and the
/// share each queued job adds to its project and user (`share` turns amounts into these integers).
pub(crate) trait Shares {
    fn project(&self, project: u32) -> u64;
    fn user(&self, user: u32) -> u64;
    fn added(&self, job: JobId) -> u64;
}

/// A share as the integer that the filling compares: `held` now and `usage` recently, by the user or project named
/// `key`, as dominant shares of `capacity`.
pub(crate) fn share(held: Option<&Resources>, usage: &Usage, key: &str, capacity: &Resources) -> u64 {
    let now = held.map(|r| dominant_of(r, capacity)).unwrap_or(0.0);
    ((now + usage.recent_share(key, capacity)) * SHARE_SCALE) as u64
}

/// A job's dominant share of `capacity`, as the integer that the filling compares.
pub(crate) fn added(footprint: &Resources, capacity: &Resources) -> u64 {
    (dominant_of(footprint, capacity) * SHARE_SCALE) as u64
}

/// Heap entries: a share, the id of the job the entry stands for next (ties go to the earlier job; no two entries
/// share it), and a slot.
type ShareKey = Reverse<(u64, JobId, usize)>;

/// One project of the level being filled: its users, lowest share first, by the next job of each.
struct ProjectFill {
    id: u32,
    heap: BinaryHeap<ShareKey>,
    users: Vec<u32>,
}

/// The level being filled.
struct LevelFill {
    priority: i32,
    heap: BinaryHeap<ShareKey>,
    projects: Vec<ProjectFill>,
}

/// The order in which a cycle considers queued jobs, produced one job at a time: priority first; within a priority,
/// progressive filling across projects by share, then across the project's users by share; within a user,
/// submission order. Each job taken adds its dominant share to its project and its user, so one user's 500-trial
/// sweep takes turns with a colleague's single run. A user's share counts all its projects and stays one number
/// across them within a cycle.
///
/// The filling only borrows the `Groups` while it takes a job, so the cycle may start (and dequeue) jobs between
/// calls; it must not queue new ones. A cycle that stops early (the cluster is full, or nothing left can fit) pays
/// only for the jobs it took and the groups of the levels it reached.
pub(crate) struct Filling {
    levels: Vec<i32>,
    next_level: usize,
    user_share: IdMap<u32, u64>,
    level: Option<LevelFill>,
}

impl Filling {
    pub(crate) fn new(groups: &Groups) -> Filling {
        Filling {
            levels: groups.levels.keys().map(|Reverse(p)| *p).collect(),
            next_level: 0,
            user_share: IdMap::default(),
            level: None,
        }
    }

    /// The next job in fair-share order.
    pub(crate) fn next(&mut self, groups: &Groups, shares: &impl Shares) -> Option<JobId> {
        loop {
            if let Some(level) = &mut self.level {
                if let Some(job) = Self::take(level, groups, shares, &mut self.user_share) {
                    return Some(job);
                }
            }
            let priority = *self.levels.get(self.next_level)?;
            self.next_level += 1;
            self.level = Some(self.start_level(priority, groups, shares));
        }
    }

    /// Sets up a level: every project and user with jobs there, by share; a user keeps the share it grew to on
    /// higher levels.
    fn start_level(&mut self, priority: i32, groups: &Groups, shares: &impl Shares) -> LevelFill {
        let mut level = LevelFill { priority, heap: BinaryHeap::new(), projects: Vec::new() };
        let Some(projects) = groups.levels.get(&Reverse(priority)) else { return level };
        for (&project, users) in projects {
            let mut fill = ProjectFill { id: project, heap: BinaryHeap::new(), users: Vec::new() };
            let mut first_of_project = JobId::MAX;
            for (&user, jobs) in users {
                let Some(&first) = jobs.first() else { continue };
                let s = *self.user_share.entry(user).or_insert_with(|| shares.user(user));
                first_of_project = first_of_project.min(first);
                fill.heap.push(Reverse((s, first, fill.users.len())));
                fill.users.push(user);
            }
            if fill.users.is_empty() {
                continue;
            }
            level.heap.push(Reverse((shares.project(project), first_of_project, level.projects.len())));
            level.projects.push(fill);
        }
        level
    }

    /// Takes the level's next job: the lowest-share project's lowest-share user's oldest job.
    fn take(
        level: &mut LevelFill,
        groups: &Groups,
        shares: &impl Shares,
        user_share: &mut IdMap<u32, u64>,
    ) -> Option<JobId> {
        let Reverse((project_share, _, p)) = level.heap.pop()?;
        let fill = &mut level.projects[p];
        let Reverse((this_user_share, job, u)) = fill.heap.pop()?;
        let added = shares.added(job);
        let user = fill.users[u];
        // The user's share grows wherever it queues; its other projects see the new value when they next pick.
        let grown = user_share.get(&user).copied().unwrap_or(this_user_share).saturating_add(added);
        user_share.insert(user, grown);
        if let Some(next) = groups.after(level.priority, fill.id, user, job) {
            fill.heap.push(Reverse((grown, next, u)));
        }
        if let Some(Reverse((_, next, _))) = fill.heap.peek() {
            level.heap.push(Reverse((project_share.saturating_add(added), *next, p)));
        }
        Some(job)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shares for the tests: every project and user starts at what the maps say (else 0), and every job adds 10.
    struct Flat {
        projects: HashMap<u32, u64>,
        users: HashMap<u32, u64>,
    }

    impl Shares for Flat {
        fn project(&self, project: u32) -> u64 {
            self.projects.get(&project).copied().unwrap_or(0)
        }
        fn user(&self, user: u32) -> u64 {
            self.users.get(&user).copied().unwrap_or(0)
        }
        fn added(&self, _job: JobId) -> u64 {
            10
        }
    }

    fn walk(groups: &Groups, shares: &Flat) -> Vec<JobId> {
        let mut filling = Filling::new(groups);
        std::iter::from_fn(|| filling.next(groups, shares)).collect()
    }

    #[test]
    fn fills_projects_then_users_by_share_and_priority_first() {
        let mut groups = Groups::default();
        // Priority 0: project 1 has user 1's sweep (jobs 1-4) and user 2's run (job 5); project 2 has job 6.
        for job in 1..=4 {
            groups.insert(0, 1, 1, job);
        }
        groups.insert(0, 1, 2, 5);
        groups.insert(0, 2, 3, 6);
        // Priority 5 comes first whatever the shares.
        groups.insert(5, 2, 3, 7);
        assert_eq!(groups.len(), 7);
        let flat = Flat { projects: HashMap::new(), users: HashMap::new() };
        // Job 7 (priority 5) grows user 3 to 10. Then: project 1 (0, first job 1) takes user 1's job 1 -> project 1
        // at 10; project 2 (0) takes job 6 -> 10; project 1 (10, next job 5: user 2 at 0) takes job 5; project 2 is
        // empty; project 1 goes on with user 1.
        assert_eq!(walk(&groups, &flat), vec![7, 1, 6, 5, 2, 3, 4]);
        // A project that used much recently waits for the others to catch up.
        let heavy = Flat { projects: HashMap::from([(1, 25)]), users: HashMap::new() };
        assert_eq!(walk(&groups, &heavy), vec![7, 6, 1, 5, 2, 3, 4]);
        // Jobs leave; a removed group is gone.
        groups.remove(0, 1, 2, 5);
        groups.remove(5, 2, 3, 7);
        groups.remove(5, 2, 3, 7);
        assert_eq!(groups.len(), 5);
        assert_eq!(walk(&groups, &flat), vec![1, 6, 2, 3, 4]);
        let levels: Vec<(i32, Vec<JobId>)> = groups.by_level().collect();
        assert_eq!(levels, vec![(0, vec![1, 2, 3, 4, 6])]);
    }

    #[test]
    fn jobs_started_between_takes_leave_and_the_walk_goes_on() {
        let mut groups = Groups::default();
        for job in 1..=2 {
            groups.insert(0, 1, 1, job);
        }
        groups.insert(0, 2, 2, 3);
        let flat = Flat { projects: HashMap::new(), users: HashMap::new() };
        let mut filling = Filling::new(&groups);
        assert_eq!(filling.next(&groups, &flat), Some(1));
        // The cycle starts job 1: it leaves the queue while the walk goes on.
        groups.remove(0, 1, 1, 1);
        assert_eq!(filling.next(&groups, &flat), Some(3));
        groups.remove(0, 2, 2, 3);
        assert_eq!(filling.next(&groups, &flat), Some(2));
        groups.remove(0, 1, 1, 2);
        assert_eq!(filling.next(&groups, &flat), None);
        assert_eq!(groups.len(), 0);
        assert_eq!(groups.by_level().count(), 0, "empty groups are removed");
    }
}
