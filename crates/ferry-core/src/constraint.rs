//! Placement constraints as interned ids, and which nodes each allows.
//!
//! A queued job's GPU models, label selector, pool, image flag and gang-ness decide which nodes may run it, whatever is free
//! there. Comparing those strings for every job against every node dominated cycles on deep queues, while a queue
//! holds few distinct constraints: each is interned once, when a job with it is submitted, and a cycle reads which
//! nodes it allows from a row of booleans, kept until the nodes themselves change.
//!
//! This module decides nothing: `JobRequest::allowed_on` stays the one definition of "allowed", evaluated here once
//! per constraint and node.

use std::collections::{BTreeMap, HashMap};

use crate::node::Nodes;
use crate::nodeset::bits_of;
use crate::resources::Resources;
use crate::scheduler::{JobRequest, PoolInfo};

/// An interned constraint: an index into `Constraints`.
pub(crate) type ConstraintId = u32;

/// Everything of a job that `JobRequest::allowed_on` reads.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ConstraintKey {
    wants_gpu: bool,
    gpu_models: Vec<String>,
    selector: BTreeMap<String, String>,
    pool: Option<String>,
    image: bool,
    gang: bool,
}

impl ConstraintKey {
    fn of(request: &JobRequest) -> ConstraintKey {
        ConstraintKey {
            wants_gpu: request.resources.gpus > 0 || request.gpu_share_milli > 0,
            gpu_models: request.gpu_models.clone(),
            selector: request.selector.clone(),
            pool: request.pool.clone(),
            image: request.image,
            gang: request.is_gang(),
        }
    }

    /// A request that asks for nothing but this constraint, to evaluate `allowed_on` with.
    fn request(&self) -> JobRequest {
        JobRequest {
            resources: Resources { gpus: u32::from(self.wants_gpu), ..Resources::ZERO },
            gpu_models: self.gpu_models.clone(),
            selector: self.selector.clone(),
            pool: self.pool.clone(),
            image: self.image,
            nodes: if self.gang { 2 } else { 1 },
            ..JobRequest::default()
        }
    }
}

/// One interned constraint: how many queued jobs have it, and which nodes it allows (in the order of the scheduler's
/// nodes), once computed for the current nodes.
#[derive(Clone, Debug)]
struct Entry {
    key: ConstraintKey,
    users: u32,
    allowed: Option<Vec<bool>>,
    /// The same row as a bitmap.
    bits: Option<Vec<u64>>,
}

/// The interned constraints of the queued jobs. Ids of constraints no queued job has any more are reused, so the
/// table never holds more entries than there are queued jobs.
#[derive(Clone, Debug, Default)]
pub(crate) struct Constraints {
    ids: HashMap<ConstraintKey, ConstraintId>,
    entries: Vec<Entry>,
    free: Vec<ConstraintId>,
}

impl Constraints {
    /// The id of the request's constraint, counting one more queued job with it.
    pub(crate) fn intern(&mut self, request: &JobRequest) -> ConstraintId {
        let key = ConstraintKey::of(request);
        if let Some(&id) = self.ids.get(&key) {
            self.entries[id as usize].users += 1;
            return id;
        }
        let entry = Entry { key: key.clone(), users: 1, allowed: None, bits: None };
        let id = match self.free.pop() {
            Some(id) => {
                self.entries[id as usize] = entry;
                id
            }
            None => {
                self.entries.push(entry);
                (self.entries.len() - 1) as ConstraintId
            }
        };
        self.ids.insert(key, id);
        id
    }

    /// One queued job with constraint `id` left the queue; the id is freed with its last job.
    pub(crate) fn release(&mut self, id: ConstraintId) {
        let entry = &mut self.entries[id as usize];
        entry.users -= 1;
        if entry.users == 0 {
            entry.allowed = None;
            entry.bits = None;
            self.ids.remove(&entry.key);
            self.free.push(id);
        }
    }

    /// The nodes changed (one joined, left or changed its model or labels), or the pools did (what their backends
    /// run): every row must be computed again.
    pub(crate) fn nodes_changed(&mut self) {
        for entry in &mut self.entries {
            entry.allowed = None;
            entry.bits = None;
        }
    }

    /// Computes the rows that are missing, for every constraint a queued job has.
    pub(crate) fn refresh(&mut self, nodes: &Nodes, pools: &BTreeMap<String, PoolInfo>) {
        for entry in self.entries.iter_mut().filter(|e| e.users > 0 && e.allowed.is_none()) {
            let request = entry.key.request();
            let allowed = nodes.values().map(|n| request.allowed_on(&n.info, pools.get(&n.info.pool)));
            let row: Vec<bool> = allowed.collect();
            entry.bits = Some(bits_of(&row));
            entry.allowed = Some(row);
        }
    }

    /// Constraint `id`'s row as a bitmap of positions (see `nodeset::bits_of`), once computed.
    pub(crate) fn bits(&self, id: ConstraintId) -> Option<&[u64]> {
        self.entries.get(id as usize)?.bits.as_deref()
    }

    /// Writes constraint `id` into a request rebuilt from a queued job's compact form: the constraint holds the one
    /// copy of its GPU models, labels and pool for all the queued jobs that have it.
    pub(crate) fn fill(&self, id: ConstraintId, request: &mut JobRequest) {
        let key = &self.entries[id as usize].key;
        request.gpu_models.clone_from(&key.gpu_models);
        request.selector.clone_from(&key.selector);
        request.pool.clone_from(&key.pool);
        request.image = key.image;
    }

    /// Which nodes constraint `id` allows, by their position among the scheduler's nodes; `None` until `refresh`.
    pub(crate) fn row(&self, id: ConstraintId) -> Option<&[bool]> {
        self.entries.get(id as usize)?.allowed.as_deref()
    }

    /// How many constraints are interned.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(models: &[&str]) -> JobRequest {
        JobRequest {
            resources: Resources::new(1000, 1, 1),
            gpu_models: models.iter().map(|m| m.to_string()).collect(),
            ..JobRequest::default()
        }
    }

    #[test]
    fn equal_constraints_share_an_id_which_is_reused_once_free() {
        let mut c = Constraints::default();
        let a = c.intern(&request(&["A100"]));
        assert_eq!(c.intern(&request(&["A100"])), a);
        let b = c.intern(&request(&["T4"]));
        assert_ne!(a, b);
        c.release(b);
        assert_eq!(c.len(), 1);
        // The freed id serves the next new constraint.
        assert_eq!(c.intern(&request(&["H100"])), b);
        c.release(a);
        assert_eq!(c.len(), 2, "a is still held by its second job");
    }
}
