//! The node lifecycle: whether a node is alive, and what became of the nodes asked of elastic pools.
//!
//! A node is **ready** from its `NodeUp` until it stops being heard from for the configured node timeout (each
//! `Event::NodeSeen` is a heartbeat), when a tick decides `Decision::NodeNotReady` and loses its jobs; it is ready
//! again at its next `NodeUp` (an agent registers again). A node **releasing** was given back by the core and takes no
//! more jobs; it is **gone** once `Event::NodeRemoved` says so.
//!
//! A node of an elastic pool is first **asked for** (`Decision::Provision`, which counts here as a request with its
//! time), **starting** until a `NodeUp` of the pool takes the oldest request, then ready, **idle** (the scheduler
//! stamps since when), **released** (`Decision::Release`), and gone. A request **fails to start** when its provider
//! says so (`Event::ProvisionFailed`: no capacity, quota exceeded, ...) or when no node joined within the pool's
//! `startup_timeout_s` (a tick decides `Decision::Abandon`, and the driver terminates the machines it launched for
//! them). Either way the pool then **cools down** for its `retry_after_s`: it is asked for no new node meanwhile, so
//! the jobs that wanted it are offered the next elastic pool in the admin's order. Zones are below the core's level:
//! the server's provisioner tries a pool's zones in order, skipping those that failed for capacity a short while ago,
//! and reports a failure here only when every zone refused; the core reasons about pools. After a restart the driver
//! hands back the requests still outstanding (`Event::NodesStarting`) with their times, so that they are neither
//! asked for twice nor waited for past their start-up timeout.
//!
//! All of it is bookkeeping over times the driver passes in; nothing here reads a clock.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;

use serde::{Deserialize, Serialize};

/// Why nodes asked of a provider did not come.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProvisionFailure {
    /// The provider has no machines of the kind (in any zone it tried).
    NoCapacity,
    /// The account's quota or limit would be exceeded.
    QuotaExceeded,
    /// The provider refused the request as invalid (a bad instance type or image): asking again will not help.
    Invalid,
    /// Credentials were refused.
    Unauthorized,
    /// A passing failure (a timeout, a server error).
    Transient,
    /// The machines started, or were said to, but no node joined within the pool's start-up timeout.
    StartupTimeout,
}

impl ProvisionFailure {
    pub fn name(self) -> &'static str {
        match self {
            ProvisionFailure::NoCapacity => "no capacity",
            ProvisionFailure::QuotaExceeded => "quota exceeded",
            ProvisionFailure::Invalid => "invalid request",
            ProvisionFailure::Unauthorized => "credentials refused",
            ProvisionFailure::Transient => "transient failure",
            ProvisionFailure::StartupTimeout => "start-up timed out",
        }
    }
}

impl fmt::Display for ProvisionFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a node is no longer ready: it was not heard from for the node timeout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotReadyReason {
    /// How long it had been silent when the tick noticed.
    pub silent_s: u64,
    pub timeout_s: u64,
}

impl fmt::Display for NotReadyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "it has not reported for {}s (the node timeout is {}s)", self.silent_s, self.timeout_s)
    }
}

/// Why the core stopped waiting for nodes it had asked of an elastic pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbandonReason {
    pub pool: String,
    /// How long the oldest of them had been asked for.
    pub waited_s: u64,
    pub startup_timeout_s: u64,
    /// How long the pool is now asked for nothing.
    pub retry_after_s: u64,
}

impl fmt::Display for AbandonReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no node joined elastic pool {} within its start-up timeout of {}s (asked {}s ago); the pool is skipped for {}s",
            self.pool, self.startup_timeout_s, self.waited_s, self.retry_after_s
        )
    }
}

/// An elastic pool that failed to start nodes and is asked for none until `until_us`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cooldown {
    pub until_us: i64,
    pub failure: ProvisionFailure,
    /// What the provider said, for the admin.
    pub detail: String,
}

/// Where a node stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum NodeStatus {
    /// Takes work; `idle_since_us` is set while it holds no job (from the first tick after its last job left).
    Ready { idle_since_us: Option<i64> },
    /// Not heard from for the node timeout (or reported down); its jobs were lost. Back with its next `NodeUp`.
    NotReady,
    /// Given back to its elastic pool's provider; gone once `NodeRemoved` confirms.
    Releasing,
}

/// An elastic pool's nodes as the lifecycle sees them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ElasticStatus {
    /// Nodes asked for and not yet joined, and when the oldest of them was asked for.
    pub starting: u32,
    pub oldest_request_us: Option<i64>,
    pub ready: u32,
    /// Ready nodes holding no job.
    pub idle: u32,
    pub releasing: u32,
    pub not_ready: u32,
    /// Set while the pool is skipped after a failure to start nodes.
    pub cooldown: Option<Cooldown>,
}

/// The lifecycle's own state, held by the scheduler.
#[derive(Clone, Debug, Default)]
pub(crate) struct NodeLife {
    /// How long a ready node may go unheard before it is not ready; `None`: never (the simulator's nodes do not
    /// report).
    timeout_s: Option<u64>,
    /// When each ready node was last heard from.
    seen: HashMap<String, i64>,
    /// For each elastic pool, when each node asked of it and not yet joined was asked for, oldest first.
    requests: BTreeMap<String, VecDeque<i64>>,
    cooldowns: BTreeMap<String, Cooldown>,
    /// Set in forecasts, which run time forward without heartbeats or providers: nothing times out there.
    frozen: bool,
}

impl NodeLife {
    pub(crate) fn configure_timeout(&mut self, timeout_s: Option<u64>) {
        self.timeout_s = timeout_s.filter(|s| *s > 0);
    }

    pub(crate) fn freeze(&mut self) {
        self.frozen = true;
    }

    /// A node is heard from at `at_us` (never moving its time back).
    pub(crate) fn seen(&mut self, node: &str, at_us: i64) {
        match self.seen.get_mut(node) {
            Some(t) => *t = (*t).max(at_us),
            None => {
                self.seen.insert(node.to_string(), at_us);
            }
        }
    }

    /// The node is no longer ready (or gone): it is not watched until it is up again.
    pub(crate) fn forget(&mut self, node: &str) {
        self.seen.remove(node);
    }

    /// The ready nodes not heard from for the timeout at `now_us`, with how long each was silent, by name.
    pub(crate) fn silent(&self, now_us: i64) -> Vec<(String, NotReadyReason)> {
        let Some(timeout_s) = self.timeout_s.filter(|_| !self.frozen) else { return Vec::new() };
        let timeout_us = secs_us(timeout_s);
        let mut silent: Vec<(String, NotReadyReason)> = self
            .seen
            .iter()
            .filter(|(_, at)| now_us.saturating_sub(**at) > timeout_us)
            .map(|(node, at)| {
                let silent_s = (now_us.saturating_sub(*at) / 1_000_000) as u64;
                (node.clone(), NotReadyReason { silent_s, timeout_s })
            })
            .collect();
        silent.sort_by(|a, b| a.0.cmp(&b.0));
        silent
    }

    /// `nodes` more nodes asked of `pool` at `now_us`.
    pub(crate) fn requested(&mut self, pool: &str, nodes: u32, now_us: i64) {
        let queue = self.requests.entry(pool.to_string()).or_default();
        queue.extend(std::iter::repeat_n(now_us, nodes as usize));
    }

    /// Requests of `pool` made before a restart, at the times given, merged with any made since in time order.
    pub(crate) fn restarting(&mut self, pool: &str, requested_at_us: Vec<i64>) {
        if requested_at_us.is_empty() {
            return;
        }
        let queue = self.requests.entry(pool.to_string()).or_default();
        queue.extend(requested_at_us);
        queue.make_contiguous().sort_unstable();
    }

    /// A new node of `pool` joined: it is the oldest request's.
    pub(crate) fn joined(&mut self, pool: &str) {
        if let Some(queue) = self.requests.get_mut(pool) {
            queue.pop_front();
            if queue.is_empty() {
                self.requests.remove(pool);
            }
        }
    }

    pub(crate) fn starting(&self, pool: &str) -> u32 {
        self.requests.get(pool).map_or(0, |q| q.len() as u32)
    }

    pub(crate) fn oldest_request(&self, pool: &str) -> Option<i64> {
        self.requests.get(pool).and_then(|q| q.front().copied())
    }

    /// Every pool with nodes asked for and not joined, and how many.
    pub(crate) fn all_starting(&self) -> impl Iterator<Item = (&str, u32)> {
        self.requests.iter().map(|(pool, q)| (pool.as_str(), q.len() as u32))
    }

    /// Forgets requests of pools that are no longer elastic, and their cooldowns.
    pub(crate) fn retain_pools(&mut self, elastic: impl Fn(&str) -> bool) {
        self.requests.retain(|pool, _| elastic(pool));
        self.cooldowns.retain(|pool, _| elastic(pool));
    }

    /// The provider could not start `nodes` of the nodes asked of `pool` (the oldest go first, as a provider works
    /// through requests in order): they are not waited for, and the pool cools down for `retry_after_s`. Returns
    /// how many requests were dropped.
    pub(crate) fn failed(
        &mut self,
        pool: &str,
        nodes: u32,
        failure: ProvisionFailure,
        detail: String,
        retry_after_s: u64,
        now_us: i64,
    ) -> u32 {
        let mut dropped = 0;
        if let Some(queue) = self.requests.get_mut(pool) {
            dropped = queue.drain(..queue.len().min(nodes as usize)).count() as u32;
            if queue.is_empty() {
                self.requests.remove(pool);
            }
        }
        if retry_after_s > 0 {
            let until_us = now_us.saturating_add(secs_us(retry_after_s));
            self.cooldowns.insert(pool.to_string(), Cooldown { until_us, failure, detail });
        }
        dropped
    }

    /// The requests of `pool` older than `startup_timeout_s` at `now_us`: how many, and how long the oldest waited.
    pub(crate) fn overdue(&self, pool: &str, startup_timeout_s: u64, now_us: i64) -> Option<(u32, u64)> {
        if self.frozen || startup_timeout_s == 0 {
            return None;
        }
        let queue = self.requests.get(pool)?;
        let deadline = now_us.saturating_sub(secs_us(startup_timeout_s));
        let overdue = queue.iter().take_while(|at| **at < deadline).count() as u32;
        let oldest = queue.front().map(|at| (now_us.saturating_sub(*at) / 1_000_000) as u64)?;
        (overdue > 0).then_some((overdue, oldest))
    }

    /// Ends cooldowns that are over at `now_us`.
    pub(crate) fn expire_cooldowns(&mut self, now_us: i64) {
        self.cooldowns.retain(|_, c| c.until_us > now_us);
    }

    pub(crate) fn cooldown(&self, pool: &str) -> Option<&Cooldown> {
        self.cooldowns.get(pool)
    }

    /// Every pool with requests outstanding (for ticks to check their deadlines).
    pub(crate) fn pools_starting(&self) -> Vec<String> {
        self.requests.keys().cloned().collect()
    }
}

fn secs_us(s: u64) -> i64 {
    i64::try_from(s.saturating_mul(1_000_000)).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    #[test]
    fn a_node_is_silent_only_past_the_timeout_and_only_when_one_is_set() {
        let mut life = NodeLife::default();
        life.seen("a", 15 * S);
        assert!(life.silent(1_000 * S).is_empty(), "no timeout configured: never silent");
        life.configure_timeout(Some(30));
        assert!(life.silent(45 * S).is_empty(), "30 s silent is not past the timeout");
        life.seen("b", 5 * S);
        let silent = life.silent(41 * S);
        assert_eq!(silent, vec![("b".to_string(), NotReadyReason { silent_s: 36, timeout_s: 30 })]);
        // A heartbeat from the past does not move a node's time back.
        life.seen("a", 1);
        assert_eq!(life.silent(40 * S + 1).len(), 1);
        life.forget("b");
        assert!(life.silent(41 * S).is_empty());
        life.freeze();
        assert!(life.silent(1_000 * S).is_empty(), "a forecast never times a node out");
    }

    #[test]
    fn requests_are_taken_oldest_first_and_fail_oldest_first() {
        let mut life = NodeLife::default();
        life.requested("aws", 2, 10 * S);
        life.requested("aws", 1, 50 * S);
        assert_eq!(life.starting("aws"), 3);
        life.joined("aws");
        assert_eq!((life.starting("aws"), life.oldest_request("aws")), (2, Some(10 * S)));
        assert_eq!(life.overdue("aws", 60, 70 * S), None, "asked 60 s ago is not past a 60 s timeout");
        assert_eq!(life.overdue("aws", 60, 80 * S), Some((1, 70)));
        assert_eq!(life.overdue("aws", 0, 1_000 * S), None, "no timeout configured");
        let dropped = life.failed("aws", 5, ProvisionFailure::NoCapacity, "none left".into(), 600, 80 * S);
        assert_eq!((dropped, life.starting("aws")), (2, 0));
        assert_eq!(life.cooldown("aws").map(|c| c.until_us), Some(680 * S));
        life.expire_cooldowns(680 * S);
        assert!(life.cooldown("aws").is_none());
    }

    #[test]
    fn requests_taken_back_after_a_restart_keep_their_times_in_order() {
        let mut life = NodeLife::default();
        life.requested("aws", 1, 90 * S);
        life.restarting("aws", vec![30 * S, 10 * S]);
        life.restarting("gcp", Vec::new());
        assert_eq!((life.starting("aws"), life.oldest_request("aws")), (3, Some(10 * S)));
        assert_eq!(life.starting("gcp"), 0, "nothing taken back makes no entry");
        assert_eq!(life.overdue("aws", 60, 100 * S), Some((2, 90)), "the old requests time out on their own times");
    }
}
