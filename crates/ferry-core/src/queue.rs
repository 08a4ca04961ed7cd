//! The order one cycle walks the queue in, and the classes of queued jobs (jobs alike in everything that decides
//! where they may go), so that a cycle stops walking once no class left can start anything.
//!
//! A cycle first walks the queue job by job, while it still reserves for blocked jobs. Once that budget is spent, a
//! job that found no place tells the jobs of its class behind it that they will find none either (free resources
//! only shrink within a cycle): the cycle skips them, and stops when every class with jobs it has not reached yet is
//! dead. A class whose first job is deep in the queue need not wait for the walk to reach it: the cycle tries one of
//! its jobs out of turn (`Class::member`), and a class that finds no place is dead at once. Fair share (the default
//! order) is worked out as the walk goes (`fairshare::Filling`), so a cycle that stops early costs the jobs it
//! reached and the number of classes, not the depth of the queue.
//!
//! This module only orders and counts; what makes a class dead is the caller's to decide, and must be monotone
//! within a cycle once the walk skips.

use crate::fairshare::{Filling, Groups, Shares};
use crate::idhash::IdMap;
use crate::resources::Resources;
use crate::JobId;

/// The order of one cycle's walk.
pub(crate) enum Walk {
    /// An order worked out whole (FIFO and the service orderings, which sort each level).
    Listed(std::vec::IntoIter<JobId>),
    /// Fair share, worked out job by job.
    Filling(Filling),
}

impl Walk {
    pub(crate) fn next(&mut self, groups: &Groups, shares: &impl Shares) -> Option<JobId> {
        match self {
            Walk::Listed(jobs) => jobs.next(),
            Walk::Filling(filling) => filling.next(groups, shares),
        }
    }
}

/// What makes two queued jobs alike for a cycle: their shape (a hash of everything that decides where they may go)
/// and whether they may backfill (a runtime limit).
pub(crate) type ClassKey = (u64, bool);

/// One class's queued jobs: how many, what each asks for, and one of them (the last queued that is still there,
/// while it is), so that the class can be tried out of turn.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Class {
    jobs: u32,
    pub(crate) resources: Resources,
    pub(crate) member: Option<JobId>,
}

/// The queue's classes.
#[derive(Clone, Debug, Default)]
pub(crate) struct Classes {
    counts: IdMap<ClassKey, Class>,
}

impl Classes {
    pub(crate) fn add(&mut self, class: ClassKey, resources: Resources, job: JobId) {
        let entry = self.counts.entry(class).or_insert(Class { jobs: 0, resources, member: None });
        entry.jobs += 1;
        entry.member = Some(job);
    }

    pub(crate) fn remove(&mut self, class: ClassKey, job: JobId) {
        if let Some(entry) = self.counts.get_mut(&class) {
            entry.jobs -= 1;
            if entry.member == Some(job) {
                entry.member = None;
            }
            if entry.jobs == 0 {
                self.counts.remove(&class);
            }
        }
    }

    /// How many jobs all classes hold together.
    pub(crate) fn jobs(&self) -> usize {
        self.counts.values().map(|c| c.jobs as usize).sum()
    }

    pub(crate) fn len(&self) -> usize {
        self.counts.len()
    }
}

/// The classes of the jobs a cycle has not reached yet: the queue's classes as the cycle began, less each job the walk
/// hands out. Checking them all costs the number of classes, so the walk checks once per that many skipped jobs.
pub(crate) struct Unreached {
    classes: Classes,
    skipped: usize,
}

impl Unreached {
    pub(crate) fn new(classes: &Classes) -> Unreached {
        Unreached { classes: classes.clone(), skipped: 0 }
    }

    /// The walk reached `job`, of `class`: its class keeps it as a member no longer.
    pub(crate) fn reached(&mut self, class: ClassKey, job: JobId) {
        self.classes.remove(class, job);
    }

    /// The walk skipped a job of a dead class: whether it is time to check whether every class with unreached jobs
    /// is dead too (once per as many skips as there are classes).
    pub(crate) fn skipped(&mut self) -> bool {
        self.skipped += 1;
        if self.skipped < self.classes.len() {
            return false;
        }
        self.skipped = 0;
        true
    }

    /// The classes with jobs not reached yet.
    pub(crate) fn classes(&self) -> impl Iterator<Item = (&ClassKey, &Class)> {
        self.classes.counts.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_classes_keeps_a_member_and_checks_once_per_as_many_skips_as_classes() {
        let small = Resources { cpu_millis: 1000, memory_bytes: 1 << 30, gpus: 0 };
        let big = Resources { cpu_millis: 8000, memory_bytes: 1 << 30, gpus: 8 };
        let mut classes = Classes::default();
        classes.add((1, false), small, 10);
        classes.add((1, false), small, 11);
        classes.add((2, true), big, 12);
        assert_eq!((classes.len(), classes.jobs()), (2, 3));
        let mut unreached = Unreached::new(&classes);
        assert!(!unreached.skipped());
        assert!(unreached.skipped(), "two classes: a check every second skip");
        // The walk reaches job 11, the class's member: the class has jobs left but no member to try.
        unreached.reached((1, false), 11);
        let members: Vec<(ClassKey, Option<JobId>)> = unreached.classes().map(|(k, c)| (*k, c.member)).collect();
        assert!(members.contains(&((1, false), None)) && members.contains(&((2, true), Some(12))));
        unreached.reached((2, true), 12);
        assert_eq!(unreached.classes().count(), 1);
        // The cycle's copy leaves the queue's counts alone.
        classes.remove((2, true), 12);
        assert_eq!((classes.len(), classes.jobs()), (1, 2));
    }
}
