//! One node's bookkeeping: what it has, what is allocated, and which job holds each GPU or share of one.

use std::collections::{BTreeMap, BTreeSet};

use crate::resources::Resources;
use crate::scheduler::NodeInfo;
use crate::JobId;

#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub(crate) info: NodeInfo,
    pub(crate) ready: bool,
    /// CPUs, memory and whole GPUs held by running jobs (shared GPUs are counted in `shared`).
    pub(crate) allocated: Resources,
    /// Which job holds each wholly allocated GPU.
    pub(crate) gpu_owner: BTreeMap<u32, JobId>,
    /// For each GPU that jobs share, the thousandths in use and the jobs using them. A GPU in neither map is free.
    pub(crate) shared: BTreeMap<u32, (u32, BTreeSet<JobId>)>,
    pub(crate) jobs: BTreeSet<JobId>,
    /// Since when (a tick's time) the node has held no job; `None` while it holds one, and until the first tick after
    /// its last job left. Nodes of elastic pools are released when they have idled long enough.
    pub(crate) idle_since_us: Option<i64>,
    /// Whether the core asked for the node to be released; it takes no more jobs, and waits for `NodeRemoved`.
    pub(crate) releasing: bool,
    /// How many of its GPUs are wholly free: `free_gpus().count()`, kept by `recount_gpus` whenever GPUs are taken,
    /// given back or the node changes, so that a cycle reads what every node has free without counting.
    whole_gpus_free: u32,
}

impl Node {
    pub(crate) fn new(info: NodeInfo) -> Node {
        let mut node = Node {
            info,
            ready: true,
            allocated: Resources::ZERO,
            gpu_owner: BTreeMap::new(),
            shared: BTreeMap::new(),
            jobs: BTreeSet::new(),
            idle_since_us: None,
            releasing: false,
            whole_gpus_free: 0,
        };
        node.recount_gpus();
        node
    }

    /// Counts the wholly free GPUs again (see `whole_gpus_free`); after any change of `gpu_owner`, `shared` or
    /// `info`.
    pub(crate) fn recount_gpus(&mut self) {
        self.whole_gpus_free = self.free_gpus().count() as u32;
    }

    /// Whether the kept count of wholly free GPUs is right (for `check_invariants`).
    pub(crate) fn gpu_count_kept(&self) -> bool {
        self.whole_gpus_free as usize == self.free_gpus().count()
    }

    /// Free CPUs, memory and whole GPUs (a GPU with any share taken is not whole).
    pub(crate) fn free(&self) -> Resources {
        let cpu_mem = self.info.capacity.saturating_sub(&self.allocated);
        Resources { gpus: self.whole_gpus_free, ..cpu_mem }
    }

    pub(crate) fn free_gpus(&self) -> impl Iterator<Item = u32> + '_ {
        self.info
            .gpu_indices
            .iter()
            .copied()
            .filter(|g| !self.gpu_owner.contains_key(g) && !self.shared.contains_key(g))
    }

    /// The shared GPU with the least room that still has `milli` free, so shares pack onto as few GPUs as possible.
    pub(crate) fn shared_gpu_with_room(&self, milli: u32) -> Option<u32> {
        self.shared
            .iter()
            .filter(|(_, (used, _))| used + milli <= 1000)
            .max_by_key(|(_, (used, _))| *used)
            .map(|(g, _)| *g)
    }
}

/// The scheduler's nodes, in name order, found by name or by position. A cycle works with positions (its free list,
/// its indexes and the constraints' rows are in this order), so it reads a node without comparing names; nodes join
/// and leave rarely, so keeping the vector sorted costs little.
#[derive(Clone, Debug, Default)]
pub(crate) struct Nodes {
    list: Vec<Node>,
}

impl Nodes {
    /// The position of the node named `name`, or where it would go.
    fn search(&self, name: &str) -> Result<usize, usize> {
        self.list.binary_search_by(|n| n.info.name.as_str().cmp(name))
    }

    pub(crate) fn position(&self, name: &str) -> Option<usize> {
        self.search(name).ok()
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Node> {
        self.search(name).ok().map(|i| &self.list[i])
    }

    pub(crate) fn get_mut(&mut self, name: &str) -> Option<&mut Node> {
        self.search(name).ok().map(|i| &mut self.list[i])
    }

    /// The node at position `i`.
    pub(crate) fn at(&self, i: usize) -> &Node {
        &self.list[i]
    }

    /// Adds a node, or replaces the one of the same name; returns its position.
    pub(crate) fn insert(&mut self, node: Node) -> usize {
        match self.search(&node.info.name) {
            Ok(i) => {
                self.list[i] = node;
                i
            }
            Err(i) => {
                self.list.insert(i, node);
                i
            }
        }
    }

    pub(crate) fn remove(&mut self, name: &str) -> Option<Node> {
        self.search(name).ok().map(|i| self.list.remove(i))
    }

    pub(crate) fn values(&self) -> std::slice::Iter<'_, Node> {
        self.list.iter()
    }

    pub(crate) fn values_mut(&mut self) -> std::slice::IterMut<'_, Node> {
        self.list.iter_mut()
    }

    pub(crate) fn len(&self) -> usize {
        self.list.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

impl std::ops::Index<&str> for Nodes {
    type Output = Node;

    fn index(&self, name: &str) -> &Node {
        self.get(name).unwrap_or_else(|| panic!("no node {name}"))
    }
}

impl std::ops::Index<&String> for Nodes {
    type Output = Node;

    fn index(&self, name: &String) -> &Node {
        &self[name.as_str()]
    }
}
