//! An in-memory provider: machines that are only entries in a map, for tests and benchmarks of what drives a
//! [`Provider`] (the server's fleet) without a cloud.
//!
//! It behaves as the real providers do where the fleet depends on it: a launch is idempotent by its client token
//! (as EC2's `ClientToken`), listing filters on the installation tag and keeps terminated machines listed, and
//! terminating an unknown id is not an error. It can wait before answering each call (a cloud API's latency), refuse
//! zones for capacity, and counts its calls so that a test can check how many were made.
//!
//! It must never be built from a configuration: it is not in the registry, and no pool of a real server uses it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::{
    Instance, InstanceState, InstanceType, LaunchRequest, Provider, ProviderError, ProviderFuture, Refusal,
    TAG_INSTALLATION,
};

/// The provider's name in refusals and as its kind.
pub const PROVIDER: &str = "memory";

/// How many calls of each kind were made, retries included; a call counts when it is made, before its latency.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Calls {
    pub launches: u64,
    pub lists: u64,
    pub terminates: u64,
}

/// What the map holds; one lock, never held across an await.
#[derive(Default)]
struct State {
    instances: BTreeMap<String, Instance>,
    /// Client token -> instance id: a second launch with the same token gets the first machine.
    by_token: HashMap<String, String>,
    /// Zones that answer every launch with `NoCapacity`.
    no_capacity: BTreeSet<String>,
    /// The number in the next instance's id.
    next: u64,
}

/// Machines in a map. See the module's documentation.
#[derive(Default)]
pub struct MemoryProvider {
    types: Vec<InstanceType>,
    /// How long every call waits before it answers, in microseconds.
    latency_us: AtomicU64,
    state: Mutex<State>,
    launches: AtomicU64,
    lists: AtomicU64,
    terminates: AtomicU64,
}

impl MemoryProvider {
    /// A provider that answers at once, offers no instance types and has capacity everywhere.
    pub fn new() -> MemoryProvider {
        MemoryProvider::default()
    }

    /// Every call waits `latency` before it answers, as a cloud's API does (EC2 answers in tens to hundreds of ms).
    pub fn with_latency(self, latency: Duration) -> MemoryProvider {
        self.set_latency(latency);
        self
    }

    /// The types [`Provider::instance_types`] reports.
    pub fn with_instance_types(mut self, types: Vec<InstanceType>) -> MemoryProvider {
        self.types = types;
        self
    }

    /// Changes the latency of the calls made from now on.
    pub fn set_latency(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency_us.store(us, Ordering::Relaxed);
    }

    /// Launches into `zones` are refused for capacity from now on, and launches elsewhere are taken.
    pub fn set_no_capacity<S: AsRef<str>>(&self, zones: &[S]) {
        self.lock().no_capacity = zones.iter().map(|z| z.as_ref().to_string()).collect();
    }

    /// The calls made so far.
    pub fn calls(&self) -> Calls {
        Calls {
            launches: self.launches.load(Ordering::Relaxed),
            lists: self.lists.load(Ordering::Relaxed),
            terminates: self.terminates.load(Ordering::Relaxed),
        }
    }

    /// Every machine, terminated ones included, by id.
    pub fn instances(&self) -> Vec<Instance> {
        self.lock().instances.values().cloned().collect()
    }

    pub fn instance(&self, id: &str) -> Option<Instance> {
        self.lock().instances.get(id).cloned()
    }

    /// Puts a running machine in place for each of `nodes`, as `template` with its node changed and no client token
    /// (each node's would differ), without a call, latency or a refusal: the machines a benchmark or a test starts
    /// from. Returns them in the order of `nodes`.
    pub fn populate<S: AsRef<str>>(&self, template: &LaunchRequest, nodes: &[S]) -> Vec<Instance> {
        let mut state = self.lock();
        nodes
            .iter()
            .map(|node| {
                let request = LaunchRequest { node: node.as_ref().to_string(), client_token: None, ..template.clone() };
                state.create(&request)
            })
            .collect()
    }

    /// The provider takes machine `id` back (a spot reclaim, a hand in the console): it is terminated. Returns
    /// whether there was such a machine.
    pub fn reclaim(&self, id: &str) -> bool {
        self.lock().instances.get_mut(id).map(|i| i.state = InstanceState::Terminated).is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("no holder of the memory provider's lock panics")
    }

    /// Counts a call and waits out the latency.
    async fn call(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
        let us = self.latency_us.load(Ordering::Relaxed);
        if us > 0 {
            tokio::time::sleep(Duration::from_micros(us)).await;
        }
    }
}

impl State {
    /// A new running machine for `request`, remembered by its client token.
    fn create(&mut self, request: &LaunchRequest) -> Instance {
        self.next += 1;
        let id = format!("i-{:017x}", self.next);
        let launch_time_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let instance = Instance {
            id: id.clone(),
            state: InstanceState::Running,
            instance_type: request.instance_type.clone(),
            zone: request.zone.clone(),
            market: request.market,
            launch_time_ms,
            tags: request.tags(),
        };
        if let Some(token) = &request.client_token {
            self.by_token.insert(token.clone(), id.clone());
        }
        self.instances.insert(id, instance.clone());
        instance
    }

    fn launch(&mut self, request: &LaunchRequest) -> Result<Instance, ProviderError> {
        if self.no_capacity.contains(&request.zone) {
            return Err(ProviderError::NoCapacity(Refusal {
                provider: PROVIDER,
                code: "InsufficientInstanceCapacity".into(),
                message: format!("no {} in {}", request.instance_type, request.zone),
                request_id: None,
            }));
        }
        let earlier = request.client_token.as_ref().and_then(|t| self.by_token.get(t));
        match earlier.and_then(|id| self.instances.get(id)) {
            Some(instance) => Ok(instance.clone()),
            None => Ok(self.create(request)),
        }
    }
}

impl Provider for MemoryProvider {
    fn kind(&self) -> &'static str {
        PROVIDER
    }

    fn instance_types(&self) -> &[InstanceType] {
        &self.types
    }

    fn launch(&self, request: LaunchRequest) -> ProviderFuture<'_, Instance> {
        Box::pin(async move {
            self.call(&self.launches).await;
            self.lock().launch(&request)
        })
    }

    fn list<'a>(&'a self, installation: &'a str) -> ProviderFuture<'a, Vec<Instance>> {
        Box::pin(async move {
            self.call(&self.lists).await;
            let state = self.lock();
            let ours =
                state.instances.values().filter(|i| i.tags.get(TAG_INSTALLATION).is_some_and(|t| t == installation));
            Ok(ours.cloned().collect())
        })
    }

    fn terminate<'a>(&'a self, ids: &'a [String]) -> ProviderFuture<'a, ()> {
        Box::pin(async move {
            self.call(&self.terminates).await;
            let mut state = self.lock();
            for id in ids {
                if let Some(instance) = state.instances.get_mut(id) {
                    instance.state = InstanceState::Terminated;
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Market;

    fn request(installation: &str, node: &str, zone: &str) -> LaunchRequest {
        LaunchRequest {
            installation: installation.into(),
            pool: "aws".into(),
            node: node.into(),
            instance_type: "g5.xlarge".into(),
            zone: zone.into(),
            market: Market::Spot,
            user_data: String::new(),
            client_token: Some(format!("{installation}-{node}")),
        }
    }

    /// The ids and states `list` answers for `installation`.
    async fn listed(p: &MemoryProvider, installation: &str) -> Vec<(String, InstanceState)> {
        p.list(installation).await.unwrap().into_iter().map(|i| (i.node().unwrap().to_string(), i.state)).collect()
    }

    #[tokio::test]
    async fn a_launch_is_idempotent_by_client_token_and_carries_the_request() {
        let p = MemoryProvider::new();
        let first = p.launch(request("inst", "aws-1", "us-east-1a")).await.unwrap();
        let again = p.launch(request("inst", "aws-1", "us-east-1a")).await.unwrap();
        assert_eq!(first, again, "the same client token gets the same machine");
        assert_eq!(
            (first.state, first.zone.as_str(), first.market),
            (InstanceState::Running, "us-east-1a", Market::Spot)
        );
        assert_eq!(
            (first.node(), first.pool(), first.instance_type.as_str()),
            (Some("aws-1"), Some("aws"), "g5.xlarge")
        );
        let untokened = LaunchRequest { client_token: None, ..request("inst", "aws-2", "us-east-1a") };
        let (a, b) = (p.launch(untokened.clone()).await.unwrap(), p.launch(untokened).await.unwrap());
        assert_ne!(a.id, b.id, "without a token every launch is a new machine");
        assert_eq!(p.instances().len(), 3);
        assert_eq!(p.calls(), Calls { launches: 4, lists: 0, terminates: 0 });
    }

    #[tokio::test]
    async fn list_finds_the_installation_s_machines_and_terminate_keeps_them_listed() {
        let p = MemoryProvider::new();
        let ours = p.launch(request("inst", "aws-1", "a")).await.unwrap();
        p.launch(request("inst", "aws-2", "a")).await.unwrap();
        p.launch(request("other", "aws-1", "a")).await.unwrap();
        p.terminate(&[ours.id.clone(), "i-unknown".to_string()]).await.unwrap();
        assert_eq!(
            listed(&p, "inst").await,
            [("aws-1".to_string(), InstanceState::Terminated), ("aws-2".to_string(), InstanceState::Running)]
        );
        assert_eq!(listed(&p, "nobody").await, []);
        assert_eq!(p.calls(), Calls { launches: 3, lists: 2, terminates: 1 });
    }

    #[tokio::test]
    async fn a_zone_without_capacity_refuses_and_others_take_the_launch() {
        let p = MemoryProvider::new();
        p.set_no_capacity(&["a"]);
        let refused = p.launch(request("inst", "aws-1", "a")).await.unwrap_err();
        assert!(matches!(&refused, ProviderError::NoCapacity(r) if r.provider == PROVIDER), "{refused:?}");
        assert_eq!(p.launch(request("inst", "aws-1", "b")).await.unwrap().zone, "b");
        p.set_no_capacity::<&str>(&[]);
        assert!(p.launch(request("inst", "aws-2", "a")).await.is_ok(), "capacity came back");
    }

    #[tokio::test]
    async fn populated_machines_are_listed_and_a_reclaim_terminates_one() {
        let p = MemoryProvider::new();
        let nodes: Vec<String> = (1..=3).map(|n| format!("aws-{n}")).collect();
        let made = p.populate(&request("inst", "", "a"), &nodes);
        assert_eq!(made.iter().map(|i| i.node().unwrap()).collect::<Vec<_>>(), ["aws-1", "aws-2", "aws-3"]);
        assert_eq!(p.calls(), Calls::default(), "populating makes no call");
        assert!(p.reclaim(&made[1].id));
        assert!(!p.reclaim("i-unknown"));
        assert_eq!(p.instance(&made[1].id).unwrap().state, InstanceState::Terminated);
        assert_eq!(listed(&p, "inst").await.len(), 3);
    }
}
