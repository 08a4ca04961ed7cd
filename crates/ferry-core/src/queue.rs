//! The order one cycle walks the queue in, and the classes of queued jobs (jobs alike in everything that decides
//! where they may go but the CPUs and memory they ask for), so that a cycle stops walking once no class left can
//! start anything.
//!
//! A cycle first walks the queue job by job, while it still reserves for blocked jobs. Once that budget is spent, a
//! job that found no place tells the jobs of its class behind it that ask for at least as much CPU and memory that
//! they will find none either (free resources only shrink within a cycle): the cycle skips them, and stops when
//! every class with jobs it has not reached yet is dead. A class whose jobs are deep in the queue need not wait for
//! the walk to reach them: the cycle tries the least its jobs ask for out of turn (`Class::least`), and a class
//! where that finds no place is dead at once. Fair share (the default order) is worked out as the walk goes
//! (`fairshare::Filling`), so a cycle that stops early costs the jobs it reached and the number of classes, not the
//! depth of the queue.
//!
//! This module only orders and counts; what makes a class dead is the caller's to decide, and must be monotone
//! within a cycle once the walk skips.

use std::collections::BTreeMap;

use crate::fairshare::{Filling, Groups, Shares};
use crate::idhash::IdMap;
use crate::resources::Resources;
use crate::scheduler::JobRequest;
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

/// What makes two queued jobs alike for a cycle: their shape (a hash of everything that decides where they may go
/// but their CPUs and memory) and whether they may backfill (a runtime limit).
pub(crate) type ClassKey = (u64, bool);

/// One class's queued jobs: how many, the GPUs each asks for, how many ask for each amount of CPU and memory (so
/// that the least any asks for is known as jobs come and go), and, so that the class can be tried out of turn, one of
/// them (the last queued that is still there, while it is) and the request of the first (which may have left: all
/// ask for the same but CPUs and memory).
#[derive(Clone, Debug)]
pub(crate) struct Class {
    jobs: u32,
    gpus: u32,
    amounts: BTreeMap<(u64, u64), u32>,
    pub(crate) member: Option<JobId>,
    template: Box<JobRequest>,
}

impl Class {
    /// The least the class's jobs ask for: the CPU and memory amounts that no job of the class asks for less of both
    /// than (fewest CPUs first), each with the class's GPUs. Every job asks for at least as much as one of them, so
    /// where none of them finds a place, no job of the class does. Unless `monotone` is false (a job that asks for
    /// more may find a place where one that asks for less does not; see `scheduler::Failed`): then every amount.
    pub(crate) fn least(&self, monotone: bool) -> impl Iterator<Item = Resources> + '_ {
        let mut least_memory = u64::MAX;
        let gpus = self.gpus;
        self.amounts
            .keys()
            .filter(move |&&(_, memory_bytes)| {
                let least = memory_bytes < least_memory;
                least_memory = least_memory.min(memory_bytes);
                least || !monotone
            })
            .map(move |&(cpu_millis, memory_bytes)| Resources { cpu_millis, memory_bytes, gpus })
    }
}

/// The queue's classes.
#[derive(Clone, Debug, Default)]
pub(crate) struct Classes {
    counts: IdMap<ClassKey, Class>,
}

impl Classes {
    pub(crate) fn add(&mut self, class: ClassKey, request: &JobRequest) {
        let (resources, job) = (request.resources, request.id);
        let entry = self.counts.entry(class).or_insert_with(|| Class {
            jobs: 0,
            gpus: resources.gpus,
            amounts: BTreeMap::new(),
            member: None,
            template: Box::new(request.clone()),
        });
        entry.jobs += 1;
        *entry.amounts.entry((resources.cpu_millis, resources.memory_bytes)).or_insert(0) += 1;
        entry.member = Some(job);
    }

    pub(crate) fn remove(&mut self, class: ClassKey, resources: Resources, job: JobId) {
        if let Some(entry) = self.counts.get_mut(&class) {
            entry.jobs -= 1;
            let amounts = (resources.cpu_millis, resources.memory_bytes);
            if let Some(n) = entry.amounts.get_mut(&amounts) {
                *n -= 1;
                if *n == 0 {
                    entry.amounts.remove(&amounts);
                }
            }
            if entry.member == Some(job) {
                entry.member = None;
            }
            if entry.jobs == 0 {
                self.counts.remove(&class);
            }
        }
    }

    pub(crate) fn get(&self, class: &ClassKey) -> Option<&Class> {
        self.counts.get(class)
    }

    /// The request of a job of the class (see `Class`).
    pub(crate) fn template(&self, class: &ClassKey) -> Option<&JobRequest> {
        self.counts.get(class).map(|c| &*c.template)
    }

    /// How many jobs all classes hold together.
    pub(crate) fn jobs(&self) -> usize {
        self.counts.values().map(|c| c.jobs as usize).sum()
    }
}

/// The classes of the jobs a cycle has not reached yet, with how many: the queue's classes as the cycle began, less
/// each job the walk hands out. Checking them all costs the number of classes, so the walk checks once per that many
/// skipped jobs. Every job not reached is still queued, so what its class asks for at least (see `Class::least`) is
/// read from the queue's classes as they are when checked.
pub(crate) struct Unreached {
    classes: IdMap<ClassKey, u32>,
    skipped: usize,
}

impl Unreached {
    pub(crate) fn new(classes: &Classes) -> Unreached {
        // The first skip checks at once: on a full cluster, the classes are often all dead by then.
        Unreached { classes: classes.counts.iter().map(|(key, c)| (*key, c.jobs)).collect(), skipped: usize::MAX - 1 }
    }

    /// The walk reached a job of `class`; the class is left once all its jobs are reached.
    pub(crate) fn reached(&mut self, class: ClassKey) {
        if let Some(jobs) = self.classes.get_mut(&class) {
            *jobs -= 1;
            if *jobs == 0 {
                self.classes.remove(&class);
            }
        }
    }

    /// The walk skipped a job of a dead class: whether it is time to check whether every class with unreached jobs
    /// is dead too (at the first skip, then once per as many skips as there are classes).
    pub(crate) fn skipped(&mut self) -> bool {
        self.skipped = self.skipped.saturating_add(1);
        if self.skipped < self.classes.len() {
            return false;
        }
        self.skipped = 0;
        true
    }

    /// The classes with jobs not reached yet.
    pub(crate) fn classes(&self) -> impl Iterator<Item = &ClassKey> {
        self.classes.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_classes_keeps_the_least_asked_for_and_checks_once_per_as_many_skips_as_classes() {
        let r = |cpus: u64, gib: u64, gpus: u32| Resources { cpu_millis: cpus * 1000, memory_bytes: gib << 30, gpus };
        let (small, wide, big, large) = (r(1, 4, 1), r(4, 1, 1), r(8, 1, 8), r(4, 8, 1));
        let mut classes = Classes::default();
        let job = |id, resources| JobRequest { id, resources, ..JobRequest::default() };
        classes.add((1, false), &job(10, small));
        classes.add((1, false), &job(11, wide));
        classes.add((1, false), &job(12, small));
        classes.add((1, false), &job(14, large));
        classes.add((2, true), &job(13, big));
        assert_eq!((classes.counts.len(), classes.jobs()), (2, 5));
        // The least asked for: the amounts no job asks for less of both than. The large job asks for more of both
        // than the small ones, so it is not among them.
        let least = |classes: &Classes| classes.get(&(1, false)).unwrap().least(true).collect::<Vec<_>>();
        assert_eq!(least(&classes), vec![small, wide]);
        let all: Vec<Resources> = classes.get(&(1, false)).unwrap().least(false).collect();
        assert_eq!(all, vec![small, wide, large], "every amount, where asking for more may find a place");
        // One small job leaves: another still asks for as little. The wide one leaves: only the small one is least.
        classes.remove((1, false), small, 10);
        assert_eq!(least(&classes), vec![small, wide]);
        classes.remove((1, false), wide, 11);
        assert_eq!(least(&classes), vec![small]);
        classes.remove((1, false), small, 12);
        assert_eq!(least(&classes), vec![large]);
        assert_eq!(classes.get(&(1, false)).unwrap().member, Some(14));
        assert_eq!(classes.template(&(1, false)).map(|r| r.id), Some(10), "the first job's request, though it left");

        classes.add((1, false), &job(15, small));
        let mut unreached = Unreached::new(&classes);
        assert!(unreached.skipped(), "the first skip checks");
        assert!(!unreached.skipped());
        assert!(unreached.skipped(), "two classes: a check every second skip");
        // The walk reaches jobs 14 and 15: their class has no job left to reach.
        unreached.reached((1, false));
        assert_eq!(unreached.classes().count(), 2);
        unreached.reached((1, false));
        assert_eq!(unreached.classes().copied().collect::<Vec<_>>(), vec![(2, true)]);
        // The cycle's copy leaves the queue's counts alone.
        classes.remove((2, true), big, 13);
        assert_eq!((classes.counts.len(), classes.jobs()), (1, 2));
        classes.remove((1, false), large, 14);
        classes.remove((1, false), small, 15);
        assert_eq!((classes.counts.len(), classes.jobs()), (0, 0));
    }
}
