//! The fleet against an in-memory provider and a real store: reconcile (orphans, adoption, reclaimed machines),
//! launches across zones, and releases, as the driver sees them through orders and news.
//!
//! The provider is `ferry_cloud::memory::MemoryProvider`, so every machine is an entry in a map and the tests need no
//! cloud; the store is a fresh SQLite file per test.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ferry_cloud::memory::{Calls, MemoryProvider};
use ferry_cloud::{Instance, InstanceState, LaunchRequest, Market, Provider};
use ferry_core::ProvisionFailure;
use ferry_server::fleet::{Fleet, FleetHandle, FleetSettings, News, Order};
use ferry_server::{FileConfig, SystemClock, TokenCache};
use ferry_store::{CloudMachine, MachineState, NewMachine, Store};
use tokio::sync::mpsc;

/// One elastic pool, `aws`, on demand in two zones tried in order.
const CONFIG: &str = r#"
public_url = "http://10.0.0.1:7750"

[[pool]]
name = "aws"
order = 10
max_nodes = 8

[pool.cloud]
provider = "aws"
region = "us-east-1"
zones = ["us-east-1a", "us-east-1b"]
instance_type = "g5.12xlarge"
image = "ami-12345678"
"#;

/// How long a test waits for news or a record before it fails; never reached when the fleet works.
const WAIT_MAX: Duration = Duration::from_secs(10);

/// A started fleet with its provider, store and news.
struct Setup {
    _dir: tempfile::TempDir,
    store: Store,
    provider: Arc<MemoryProvider>,
    fleet: Arc<Fleet>,
    handle: FleetHandle,
    news: mpsc::UnboundedReceiver<News>,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("ferry.db")).await.unwrap();
    let config = FileConfig::parse(CONFIG).unwrap();
    let provider = Arc::new(MemoryProvider::new());
    let providers = BTreeMap::from([("aws".to_string(), provider.clone() as Arc<dyn Provider>)]);
    let settings = FleetSettings {
        server_url: "http://10.0.0.1:7750".into(),
        ca_pin: None,
        // The tests reconcile themselves; the timer's first pass is an hour away.
        reconcile: Duration::from_secs(3600),
        tokens: Arc::new(TokenCache::default()),
    };
    let fleet = Fleet::with_providers(store.clone(), Arc::new(SystemClock), &config.pools, settings, providers)
        .await
        .unwrap()
        .expect("the configuration has an elastic pool");
    let (tx, news) = mpsc::unbounded_channel();
    let (handle, _task) = fleet.start(tx);
    Setup { _dir: dir, store, provider, fleet, handle, news }
}

impl Setup {
    /// Records a machine of pool `aws` as the fleet does before a launch: `requested`, no instance yet.
    async fn record(&self) -> CloudMachine {
        let new = NewMachine {
            pool: "aws",
            provider: "aws",
            instance_type: "g5.12xlarge",
            market: "on-demand",
            price_hour: 5.672,
            client_token_prefix: self.fleet.installation(),
            token_hash: &ferry_server::hash_token(&ferry_server::new_token()),
            token_expires_at_us: i64::MAX,
        };
        self.store.insert_machine(&new, 0).await.unwrap()
    }

    /// What the fleet would ask the provider for `node` (in the first zone).
    fn request(&self, node: &str) -> LaunchRequest {
        LaunchRequest {
            installation: self.fleet.installation().to_string(),
            pool: "aws".into(),
            node: node.into(),
            instance_type: "g5.12xlarge".into(),
            zone: "us-east-1a".into(),
            market: Market::OnDemand,
            user_data: String::new(),
            client_token: None,
        }
    }

    /// A machine that was launched and whose agent joined: recorded, running, and matched.
    async fn joined(&self) -> (CloudMachine, Instance) {
        let m = self.record().await;
        let instance = self.provider.populate(&self.request(&m.node), &[&m.node]).remove(0);
        self.store.machine_launched(&m.node, &instance.id, &instance.zone, 1).await.unwrap();
        assert!(self.store.machine_joined(&m.node, 2).await.unwrap());
        (m, instance)
    }

    async fn machine(&self, node: &str) -> CloudMachine {
        self.store.machine(node).await.unwrap().expect("the machine is recorded")
    }

    fn state(&self, id: &str) -> InstanceState {
        self.provider.instance(id).expect("the provider has the machine").state
    }

    async fn next_news(&mut self) -> News {
        tokio::time::timeout(WAIT_MAX, self.news.recv()).await.expect("news within the wait").expect("the fleet runs")
    }

    /// Waits until `node`'s record names its instance. A launch that succeeds sends no news, so its record is
    /// what there is to watch.
    async fn launched(&self, node: &str) -> CloudMachine {
        let deadline = tokio::time::Instant::now() + WAIT_MAX;
        loop {
            if let Some(m) = self.store.machine(node).await.unwrap().filter(|m| m.instance_id.is_some()) {
                return m;
            }
            assert!(tokio::time::Instant::now() < deadline, "{node} was not launched within {WAIT_MAX:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test]
async fn reconcile_terminates_orphans_and_leaves_owned_machines() {
    let s = setup().await;
    let (owned, owned_instance) = s.joined().await;
    // A machine tagged for a node that has no record (its record ended, or another server's data directory).
    let orphan = s.provider.populate(&s.request("aws-99"), &["aws-99"]).remove(0);
    // Another installation's machine is not listed, so not Ferry's to touch.
    let foreign = LaunchRequest { installation: "someone-else".into(), ..s.request("aws-1") };
    let foreign = s.provider.populate(&foreign, &["aws-1"]).remove(0);

    assert!(s.fleet.reconcile_once().await);
    assert_eq!(s.state(&orphan.id), InstanceState::Terminated);
    assert_eq!(s.state(&owned_instance.id), InstanceState::Running);
    assert_eq!(s.state(&foreign.id), InstanceState::Running);
    assert_eq!(s.machine(&owned.node).await.state, MachineState::Joined);
    // A second pass finds nothing to do: the terminated orphan is listed still, but not terminated again.
    assert!(s.fleet.reconcile_once().await);
    assert_eq!(s.provider.calls(), Calls { launches: 0, lists: 2, terminates: 1 });
}

#[tokio::test]
async fn reconcile_adopts_a_machine_whose_launch_was_not_recorded() {
    let s = setup().await;
    // The server launched the machine and stopped before it recorded the instance.
    let m = s.record().await;
    let request = LaunchRequest { client_token: Some(m.client_token.clone()), ..s.request(&m.node) };
    let instance = s.provider.launch(request).await.unwrap();
    assert_eq!(s.machine(&m.node).await.instance_id, None);

    assert!(s.fleet.reconcile_once().await);
    let adopted = s.machine(&m.node).await;
    assert_eq!(
        (adopted.state, adopted.instance_id.as_deref(), adopted.zone.as_deref()),
        (MachineState::Launched, Some(instance.id.as_str()), Some("us-east-1a"))
    );
    assert_eq!(s.state(&instance.id), InstanceState::Running, "an adopted machine is not an orphan");
    assert_eq!(s.provider.calls().terminates, 0);
}

#[tokio::test]
async fn a_machine_the_provider_took_back_ends_its_record_and_its_node_is_gone() {
    let mut s = setup().await;
    let (m, instance) = s.joined().await;
    assert!(s.provider.reclaim(&instance.id));

    assert!(s.fleet.reconcile_once().await);
    let why = format!("the provider reports machine {} terminated", instance.id);
    assert_eq!(s.next_news().await, News::Gone { node: m.node.clone(), pool: "aws".into(), why: why.clone() });
    let ended = s.machine(&m.node).await;
    assert_eq!((ended.state, ended.detail.as_deref()), (MachineState::Ended, Some(why.as_str())));
}

#[tokio::test]
async fn a_zone_without_capacity_is_skipped_and_no_zone_at_all_fails_the_provision() {
    let mut s = setup().await;
    s.provider.set_no_capacity(&["us-east-1a"]);
    s.handle.order(Order::Provision { pool: "aws".into(), nodes: 1 });
    let first = s.launched("aws-1").await;
    assert_eq!((first.state, first.zone.as_deref()), (MachineState::Launched, Some("us-east-1b")));
    let instance = s.provider.instance(first.instance_id.as_deref().unwrap()).unwrap();
    assert_eq!((instance.node(), instance.zone.as_str()), (Some("aws-1"), "us-east-1b"));
    assert_eq!(s.provider.calls().launches, 2, "one refused in us-east-1a, one taken in us-east-1b");

    // Now neither zone has capacity; us-east-1a is still cooling down from its refusal, so only us-east-1b is asked.
    s.provider.set_no_capacity(&["us-east-1a", "us-east-1b"]);
    s.handle.order(Order::Provision { pool: "aws".into(), nodes: 1 });
    let News::ProvisionFailed { pool, nodes, failure, detail } = s.next_news().await else {
        panic!("expected ProvisionFailed")
    };
    assert_eq!((pool.as_str(), nodes, failure), ("aws", 1, ProvisionFailure::NoCapacity));
    assert_eq!(
        detail,
        "no zone had capacity for g5.12xlarge: us-east-1b: memory answered InsufficientInstanceCapacity: \
         no g5.12xlarge in us-east-1b"
    );
    assert_eq!(s.provider.calls().launches, 3);
    assert_eq!(s.machine("aws-2").await.state, MachineState::Ended, "a machine that never launched costs nothing");
    let cooling: Vec<String> = s.fleet.status("aws").unwrap().zones_cooling.into_iter().map(|z| z.0).collect();
    assert_eq!(cooling, ["us-east-1a", "us-east-1b"]);
}

#[tokio::test]
async fn release_terminates_the_machine_and_its_node_is_gone() {
    let mut s = setup().await;
    let (m, instance) = s.joined().await;
    s.handle.order(Order::Release { node: m.node.clone(), why: "idle for 10m".into() });

    assert_eq!(
        s.next_news().await,
        News::Gone { node: m.node.clone(), pool: "aws".into(), why: "idle for 10m".into() }
    );
    assert_eq!(s.state(&instance.id), InstanceState::Terminated);
    let ended = s.machine(&m.node).await;
    assert_eq!((ended.state, ended.detail.as_deref()), (MachineState::Ended, Some("idle for 10m")));
    assert_eq!(s.provider.calls(), Calls { launches: 0, lists: 0, terminates: 1 });
}

#[tokio::test]
async fn a_machine_launched_while_a_reconcile_pass_lists_is_not_taken_for_an_orphan() {
    let s = setup().await;
    // The listing is slow; a machine is recorded and launched while it is under way.
    s.provider.set_latency(Duration::from_millis(300));
    let fleet = s.fleet.clone();
    let pass = tokio::spawn(async move { fleet.reconcile_once().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (m, instance) = s.joined().await;
    s.provider.set_latency(Duration::ZERO);
    assert!(pass.await.unwrap());
    // Whether or not the listing saw it, the new machine is its node's, and its record stands.
    assert_eq!(s.state(&instance.id), InstanceState::Running);
    assert_eq!(s.machine(&m.node).await.state, MachineState::Joined);
    assert!(s.fleet.reconcile_once().await);
    assert_eq!((s.state(&instance.id), s.machine(&m.node).await.state), (InstanceState::Running, MachineState::Joined));
}

#[tokio::test]
async fn machines_of_a_pool_no_longer_configured_are_terminated_and_their_records_ended() {
    let mut s = setup().await;
    // A machine of a pool removed from the configuration, still recorded, and one never recorded at all.
    let old = NewMachine {
        pool: "old",
        provider: "aws",
        instance_type: "g5.12xlarge",
        market: "on-demand",
        price_hour: 5.672,
        client_token_prefix: s.fleet.installation(),
        token_hash: &ferry_server::hash_token(&ferry_server::new_token()),
        token_expires_at_us: i64::MAX,
    };
    let recorded = s.store.insert_machine(&old, 0).await.unwrap();
    let template = LaunchRequest { pool: "old".into(), ..s.request(&recorded.node) };
    let instance = s.provider.populate(&template, &[&recorded.node]).remove(0);
    s.store.machine_launched(&recorded.node, &instance.id, &instance.zone, 1).await.unwrap();
    let stray = s.provider.populate(&LaunchRequest { pool: "old".into(), ..s.request("old-7") }, &["old-7"]).remove(0);

    assert!(s.fleet.reconcile_once().await);
    assert_eq!((s.state(&instance.id), s.state(&stray.id)), (InstanceState::Terminated, InstanceState::Terminated));
    let why = "pool old is no longer configured".to_string();
    assert_eq!(s.next_news().await, News::Gone { node: recorded.node.clone(), pool: "old".into(), why });
    assert_eq!(s.machine(&recorded.node).await.state, MachineState::Ended);
}
