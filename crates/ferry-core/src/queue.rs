//! The order one cycle walks the queue in, and the classes of queued jobs (jobs alike in everything that decides
//! where they may go), so that a cycle stops walking once no class left can start anything.
//!
//! A cycle first walks the queue job by job, while it still reserves for blocked jobs. Once that budget is spent, a
//! job that found no place tells the jobs of its class behind it that they will find none either (free resources
//! only shrink within a cycle): the cycle skips them, and stops when every class with jobs it has not reached yet is
//! dead. Fair share (the default order) is worked out as the walk goes (`fairshare::Filling`), so a cycle that stops
//! early costs the jobs it reached and the number of classes, not the depth of the queue.
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

/// How many queued jobs each class has, and what each of its jobs asks for.
#[derive(Clone, Debug, Default)]
pub(crate) struct Classes {
    counts: IdMap<ClassKey, (u32, Resources)>,
}

impl Classes {
    pub(crate) fn add(&mut self, class: ClassKey, resources: Resources) {
        self.counts.entry(class).or_insert((0, resources)).0 += 1;
    }

    pub(crate) fn remove(&mut self, class: ClassKey) {
        if let Some((count, _)) = self.counts.get_mut(&class) {
            *count -= 1;
            if *count == 0 {
                self.counts.remove(&class);
            }
        }
    }

    /// How many jobs all classes hold together.
    pub(crate) fn jobs(&self) -> usize {
        self.counts.values().map(|(count, _)| *count as usize).sum()
    }

    pub(crate) fn len(&self) -> usize {
        self.counts.len()
    }

    /// Whether `dead` (asked with each class and what its jobs ask for) holds for every class with jobs.
    pub(crate) fn all_dead(&self, mut dead: impl FnMut(ClassKey, &Resources) -> bool) -> bool {
        self.counts.iter().all(|(class, (_, resources))| dead(*class, resources))
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

    /// The walk reached a job of `class`.
    pub(crate) fn reached(&mut self, class: ClassKey) {
        self.classes.remove(class);
    }

    /// The walk skipped a job of a dead class: whether every class with unreached jobs is dead too, so the walk may
    /// stop (checked at most once per as many skips as there are classes).
    pub(crate) fn skipped_and_all_dead(&mut self, dead: impl FnMut(ClassKey, &Resources) -> bool) -> bool {
        self.skipped += 1;
        if self.skipped < self.classes.len() {
            return false;
        }
        self.skipped = 0;
        self.classes.all_dead(dead)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_classes_and_finds_when_every_unreached_class_is_dead() {
        let small = Resources { cpu_millis: 1000, memory_bytes: 1 << 30, gpus: 0 };
        let big = Resources { cpu_millis: 8000, memory_bytes: 1 << 30, gpus: 8 };
        let mut classes = Classes::default();
        classes.add((1, false), small);
        classes.add((1, false), small);
        classes.add((2, true), big);
        assert_eq!((classes.len(), classes.jobs()), (2, 3));
        // Every class is dead, but with two classes the walk checks once per two skips.
        let mut unreached = Unreached::new(&classes);
        assert!(!unreached.skipped_and_all_dead(|_, _| true));
        assert!(unreached.skipped_and_all_dead(|_, _| true));
        // Only the big class is dead: the walk reaches the big job, but class 1's two jobs are still ahead.
        let big_is_dead = |_: ClassKey, r: &Resources| r.gpus > 0;
        let mut unreached = Unreached::new(&classes);
        unreached.reached((2, true));
        assert!(!unreached.skipped_and_all_dead(big_is_dead));
        unreached.reached((1, false));
        unreached.reached((1, false));
        assert!(unreached.skipped_and_all_dead(big_is_dead), "nothing is left to reach");
        // The cycle's copy leaves the queue's counts alone.
        classes.remove((2, true));
        classes.remove((2, true));
        assert_eq!((classes.len(), classes.jobs()), (1, 2));
    }
}
