//! The order one cycle walks the queue in, filed by class (jobs alike in everything that decides where they may go),
//! so that a class that cannot fit is skipped whole instead of job by job.
//!
//! A cycle first walks the queue job by job, while it still reserves for blocked jobs. Once that budget is spent, a
//! job that found no place only tells the jobs of its class behind it that they will find none either (free
//! resources only shrink within a cycle): from then on the walk goes from class to class, in queue order, and a class
//! the caller declares dead is dropped with all its remaining jobs. The cost of the rest of the cycle is then in the
//! jobs that can still start and the number of classes, not in the depth of the queue.
//!
//! This module only orders; what makes a class dead is the caller's to decide, and must be monotone within a cycle.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hash::Hash;

use crate::idhash::IdMap;
use crate::JobId;

/// The queue of one cycle, in cycle order, filed by class.
pub(crate) struct CycleQueue {
    jobs: Vec<JobId>,
    /// Each class's positions, ascending.
    members: Vec<Vec<usize>>,
    /// The next position to hand out while walking job by job.
    next: usize,
    /// Once walking class by class: each live class's next position, and its place in `members`.
    heap: Option<BinaryHeap<Reverse<(usize, u32)>>>,
    cursor: Vec<usize>,
}

impl CycleQueue {
    /// Files `jobs` (in cycle order) by the class `class_of` gives each.
    pub(crate) fn new<K: Hash + Eq>(jobs: Vec<JobId>, mut class_of: impl FnMut(JobId) -> K) -> CycleQueue {
        let mut ids: IdMap<K, u32> = IdMap::default();
        let mut members: Vec<Vec<usize>> = Vec::new();
        for (position, job) in jobs.iter().enumerate() {
            let next = ids.len() as u32;
            let class = *ids.entry(class_of(*job)).or_insert(next);
            if class == next {
                members.push(Vec::new());
            }
            members[class as usize].push(position);
        }
        let cursor = vec![0; members.len()];
        CycleQueue { jobs, members, next: 0, heap: None, cursor }
    }

    /// The next job, walking job by job.
    pub(crate) fn next_job(&mut self) -> Option<JobId> {
        debug_assert!(self.heap.is_none(), "the walk went class by class already");
        let job = self.jobs.get(self.next).copied()?;
        self.next += 1;
        Some(job)
    }

    /// The next job of a class that `dead` (asked with the class's next job) does not drop, walking class by class
    /// from where the job-by-job walk stopped. A dropped class never comes back in this cycle.
    pub(crate) fn next_live(&mut self, mut dead: impl FnMut(JobId) -> bool) -> Option<JobId> {
        if self.heap.is_none() {
            self.start_class_walk();
        }
        loop {
            let Reverse((position, class)) = self.heap.as_mut()?.pop()?;
            let job = self.jobs[position];
            if dead(job) {
                continue;
            }
            let k = class as usize;
            self.cursor[k] += 1;
            if let Some(&after) = self.members[k].get(self.cursor[k]) {
                self.heap.as_mut().expect("walking class by class").push(Reverse((after, class)));
            }
            return Some(job);
        }
    }

    /// Starts walking class by class: each class from its first job not yet handed out.
    fn start_class_walk(&mut self) {
        let mut heap = BinaryHeap::with_capacity(self.members.len());
        for (k, positions) in self.members.iter().enumerate() {
            let first = positions.partition_point(|p| *p < self.next);
            self.cursor[k] = first;
            if let Some(&position) = positions.get(first) {
                heap.push(Reverse((position, k as u32)));
            }
        }
        self.heap = Some(heap);
    }

    /// How many classes the queue holds.
    #[cfg(test)]
    pub(crate) fn classes(&self) -> usize {
        self.members.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks `jobs` (class = id % 3) job by job for `sequential` jobs, then class by class dropping the classes in
    /// `dead`; returns the jobs handed out.
    fn walk(jobs: &[JobId], sequential: usize, dead: &[JobId]) -> Vec<JobId> {
        let mut q = CycleQueue::new(jobs.to_vec(), |id| id % 3);
        let mut out = Vec::new();
        for _ in 0..sequential {
            out.extend(q.next_job());
        }
        while let Some(job) = q.next_live(|job| dead.contains(&(job % 3))) {
            out.push(job);
        }
        out
    }

    #[test]
    fn walks_in_queue_order_and_drops_dead_classes_whole() {
        let jobs: Vec<JobId> = (1..=10).collect();
        assert_eq!(walk(&jobs, 0, &[]), jobs);
        assert_eq!(walk(&jobs, 4, &[]), jobs);
        // Class 1 (1, 4, 7, 10) dies: after the first four jobs, 7 and 10 are skipped.
        assert_eq!(walk(&jobs, 4, &[1]), vec![1, 2, 3, 4, 5, 6, 8, 9]);
        assert_eq!(walk(&jobs, 0, &[0, 2]), vec![1, 4, 7, 10]);
        let q = CycleQueue::new(jobs, |id| id % 3);
        assert_eq!(q.classes(), 3);
    }
}
