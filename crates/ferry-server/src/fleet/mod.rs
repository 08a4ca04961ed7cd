//! The fleet: elastic pools' machines, rented from cloud providers as the core asks and given back when it releases
//! them, with nothing left running that no node owns.
//!
//! The driver hands the core's `Provision`, `Release` and `Abandon` decisions here as [`Order`]s and never waits on a
//! provider; the fleet reports back what the core must hear ([`News`]: a failure to start nodes, a machine gone).
//!
//! - **Launch.** Each node asked for is first recorded (`cloud_machines`, with a single-use join token bound to the
//!   node), then launched with a start-up script that starts `ferry agent` with that token, trying the pool's zones in
//!   order (see `zones`). A zone that has no capacity is skipped for the pool's `retry_after`; a quota, invalid or
//!   credentials error fails at once; a passing error is retried with backoff. Only when no zone took it does the
//!   core hear `ProvisionFailed`, and then it skips the pool and offers its jobs the next one.
//! - **Join.** The machine's agent registers as its node (the register route marks the machine joined).
//! - **Give back.** `Release` (idle) and `Abandon` (never joined) terminate the machine; a machine gone is reported,
//!   and the driver removes its node (losing its jobs to the queue, after a spot reclaim).
//! - **Reconcile.** Every `reconcile` interval, and once before the driver starts, the fleet lists every provider's
//!   machines by the installation's tag: a machine no live record owns is terminated, one whose launch was never
//!   recorded (the server died in between) is adopted by its node's tag, and a record whose machine the provider no
//!   longer runs is ended. So a restart neither launches twice nor forgets a machine.
//!
//! Calls to each provider are rate-limited (a token bucket), and every machine costs its price from its launch
//! request to its end (`CloudMachine::cost`).

pub mod userdata;
pub mod zones;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_cloud::{Instance, InstanceState, LaunchRequest, Provider, ProviderError};
use ferry_core::ProvisionFailure;
use ferry_store::{CloudMachine, MachineState, NewMachine, Store};
use tokio::sync::mpsc;

use crate::clock::Clock;
use crate::config::PoolConfig;
use zones::{backoff, RateLimit, ZoneBook};

/// How many passing failures one call is retried through before it counts as failed.
const TRANSIENT_TRIES_MAX: u32 = 4;
/// Calls to one pool's provider: a burst of this many, then `CALLS_PER_SECOND`.
const CALLS_BURST: u32 = 50;
const CALLS_PER_SECOND: f64 = 10.0;
/// How long a provider's listing may lag a launch: a machine launched less than this before a reconcile pass began
/// and missing from its listing is not taken for gone.
const LISTING_LAG_US: i64 = 60_000_000;
/// How often the fleet lists the providers' machines, unless the configuration says.
pub const RECONCILE_DEFAULT: Duration = Duration::from_secs(60);

/// What the driver asks of the fleet, from the core's decisions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Order {
    /// `nodes` more machines for `pool`.
    Provision { pool: String, nodes: u32 },
    /// Terminate the machine of `node`, which idled.
    Release { node: String, why: String },
    /// Terminate the `nodes` oldest machines of `pool` that have not joined.
    Abandon { pool: String, nodes: u32, why: String },
}

/// What the fleet tells the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum News {
    /// `nodes` machines asked of `pool` could not be started.
    ProvisionFailed { pool: String, nodes: u32, failure: ProvisionFailure, detail: String },
    /// The machine of `node` in `pool` is gone (terminated by Ferry, or by the provider: a spot reclaim).
    Gone { node: String, pool: String, why: String },
}

/// The fleet's handle, which the driver sends orders through; it never blocks.
#[derive(Clone)]
pub struct FleetHandle {
    tx: mpsc::UnboundedSender<Order>,
}

impl FleetHandle {
    pub fn order(&self, order: Order) {
        if self.tx.send(order).is_err() {
            tracing::error!("the fleet has stopped; a cloud order was dropped");
        }
    }
}

/// One elastic pool as the fleet works it.
struct PoolFleet {
    config: PoolConfig,
    provider: Arc<dyn Provider>,
    zones: Mutex<ZoneBook>,
    calls: Mutex<RateLimit>,
    /// The last failure to launch, for `ferry pools`.
    last_error: Mutex<Option<String>>,
}

impl PoolFleet {
    fn new(config: &PoolConfig, provider: Arc<dyn Provider>, now_us: i64) -> PoolFleet {
        let zones = config.cloud.as_ref().map(|c| c.zones.clone()).unwrap_or_default();
        let retry_after_s = config.info.elastic.as_ref().map_or(0, |e| e.retry_after_s);
        PoolFleet {
            config: config.clone(),
            provider,
            zones: Mutex::new(ZoneBook::new(zones, retry_after_s)),
            calls: Mutex::new(RateLimit::new(CALLS_BURST, CALLS_PER_SECOND, now_us)),
            last_error: Mutex::new(None),
        }
    }

    fn cloud(&self) -> &ferry_cloud::registry::CloudPool {
        self.config.cloud.as_ref().expect("only pools with a cloud are in the fleet")
    }

    fn startup_timeout_s(&self) -> u64 {
        self.config.info.elastic.as_ref().map_or(0, |e| e.startup_timeout_s)
    }

    /// Waits for this pool's next call to its provider.
    async fn pace(&self, clock: &dyn Clock) {
        let wait = self.calls.lock().expect("rate limit lock").take(clock.now_us());
        if let Some(wait) = wait {
            tokio::time::sleep(wait).await;
        }
    }
}

/// What `ferry pools` shows of an elastic pool's cloud.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PoolCloudStatus {
    pub zones_cooling: Vec<(String, i64, String)>,
    pub last_error: Option<String>,
}

/// The fleet's shared state; launches and terminations run as tasks of their own over it.
pub struct Fleet {
    store: Store,
    clock: Arc<dyn Clock>,
    /// The elastic pools, by name; changed at run time by `ferry pool add`, `update` and `remove`.
    pools: std::sync::RwLock<BTreeMap<String, Arc<PoolFleet>>>,
    installation: String,
    /// How machines reach the server (`public_url`), and the join string's certificate pin, if any.
    server_url: String,
    ca_pin: Option<ferry_api::tls::CaFingerprint>,
    news: Mutex<Option<mpsc::UnboundedSender<News>>>,
    reconcile: Duration,
    /// The server's cache of checked tokens, cleared when a machine's join token is revoked.
    tokens: Arc<crate::auth::TokenCache>,
    /// Held by the reconcile pass under way.
    reconciling: tokio::sync::Mutex<()>,
    /// Reconcile passes done, and provider calls made, for tests and benchmarks.
    pub stats: Mutex<FleetStats>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FleetStats {
    pub reconciles: u64,
    pub launches: u64,
    pub lists: u64,
    pub terminates: u64,
}

/// Where the fleet's settings come from.
pub struct FleetSettings {
    pub server_url: String,
    pub ca_pin: Option<ferry_api::tls::CaFingerprint>,
    pub reconcile: Duration,
    pub tokens: Arc<crate::auth::TokenCache>,
}

impl Fleet {
    /// The fleet of the configured elastic pools, each with its provider built (credentials read). It is made (and
    /// always `Some`) even without elastic pools, which `ferry pool add` may add later.
    pub async fn new(
        store: Store,
        clock: Arc<dyn Clock>,
        pools: &[PoolConfig],
        settings: FleetSettings,
    ) -> Result<Option<Arc<Fleet>>, String> {
        let mut providers = BTreeMap::new();
        for pool in pools {
            let Some(cloud) = &pool.cloud else { continue };
            let provider = ferry_cloud::registry::build(cloud).map_err(|e| format!("pool {}: {e}", pool.info.name))?;
            providers.insert(pool.info.name.clone(), provider);
        }
        Fleet::with_providers(store, clock, pools, settings, providers).await
    }

    /// As [`Fleet::new`], with each elastic pool's provider given (by pool name) instead of built from its
    /// configuration: for tests and benchmarks with an in-memory provider.
    pub async fn with_providers(
        store: Store,
        clock: Arc<dyn Clock>,
        pools: &[PoolConfig],
        settings: FleetSettings,
        mut providers: BTreeMap<String, Arc<dyn Provider>>,
    ) -> Result<Option<Arc<Fleet>>, String> {
        let mut fleet_pools = BTreeMap::new();
        for pool in pools.iter().filter(|p| p.cloud.is_some()) {
            let provider = providers
                .remove(&pool.info.name)
                .ok_or_else(|| format!("pool {}: no provider was given for it", pool.info.name))?;
            fleet_pools.insert(pool.info.name.clone(), Arc::new(PoolFleet::new(pool, provider, clock.now_us())));
        }
        let fresh = crate::auth::new_token();
        let installation = store.installation_id(&fresh[fresh.len() - 16..]).await.map_err(|e| e.to_string())?;
        Ok(Some(Arc::new(Fleet {
            store,
            clock,
            pools: std::sync::RwLock::new(fleet_pools),
            installation,
            server_url: settings.server_url,
            ca_pin: settings.ca_pin,
            news: Mutex::new(None),
            reconcile: settings.reconcile,
            tokens: settings.tokens,
            reconciling: tokio::sync::Mutex::new(()),
            stats: Mutex::new(FleetStats::default()),
        })))
    }

    fn pool(&self, name: &str) -> Option<Arc<PoolFleet>> {
        self.pools.read().expect("fleet pools lock").get(name).cloned()
    }

    /// Adds an elastic pool, or replaces one's settings, building its provider (its credentials read anew). Machines
    /// already running stay; new ones are launched as the new settings say.
    pub fn set_pool(&self, config: &PoolConfig) -> Result<(), String> {
        let cloud = config.cloud.as_ref().ok_or_else(|| format!("pool {} has no cloud", config.info.name))?;
        let provider = ferry_cloud::registry::build(cloud).map_err(|e| format!("pool {}: {e}", config.info.name))?;
        let pool = Arc::new(PoolFleet::new(config, provider, self.clock.now_us()));
        self.pools.write().expect("fleet pools lock").insert(config.info.name.clone(), pool);
        Ok(())
    }

    /// Forgets an elastic pool (it has no machines left: the caller checked).
    pub fn remove_pool(&self, name: &str) {
        self.pools.write().expect("fleet pools lock").remove(name);
    }

    pub fn installation(&self) -> &str {
        &self.installation
    }

    /// Where the pool's cloud stands, for `ferry pools`.
    pub fn status(&self, pool: &str) -> Option<PoolCloudStatus> {
        let p = self.pool(pool)?;
        let now = self.clock.now_us();
        let zones_cooling = p.zones.lock().expect("zones lock").cooling(now);
        let last_error = p.last_error.lock().expect("error lock").clone();
        Some(PoolCloudStatus { zones_cooling, last_error })
    }

    /// Starts the fleet's loop: orders from the driver, and the reconcile timer. `news` goes to the driver.
    pub fn start(self: &Arc<Fleet>, news: mpsc::UnboundedSender<News>) -> (FleetHandle, tokio::task::JoinHandle<()>) {
        *self.news.lock().expect("news lock") = Some(news);
        let (tx, mut rx) = mpsc::unbounded_channel::<Order>();
        let fleet = self.clone();
        let task = tokio::spawn(async move {
            let mut timer = tokio::time::interval(fleet.reconcile);
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            timer.tick().await;
            loop {
                tokio::select! {
                    order = rx.recv() => {
                        let Some(order) = order else { break };
                        fleet.clone().apply(order).await;
                    }
                    _ = timer.tick() => {
                        let fleet = fleet.clone();
                        tokio::spawn(async move { fleet.reconcile_once().await });
                    }
                }
            }
        });
        (FleetHandle { tx }, task)
    }

    fn tell(&self, news: News) {
        tracing::debug!(?news, "fleet news");
        if let Some(tx) = self.news.lock().expect("news lock").as_ref() {
            let _ = tx.send(news);
        }
    }

    async fn apply(self: Arc<Fleet>, order: Order) {
        match order {
            Order::Provision { pool, nodes } => {
                for _ in 0..nodes {
                    let fleet = self.clone();
                    let pool = pool.clone();
                    tokio::spawn(async move { fleet.provision(&pool).await });
                }
            }
            Order::Release { node, why } => {
                tokio::spawn(async move { self.terminate(&node, &why).await });
            }
            Order::Abandon { pool, nodes, why } => {
                let waiting = match self.store.live_machines().await {
                    Ok(machines) => machines,
                    Err(e) => {
                        tracing::error!(error = %e, pool, "cannot read the cloud machines to abandon; reconcile will");
                        return;
                    }
                };
                let abandoned: Vec<CloudMachine> = waiting
                    .into_iter()
                    .filter(|m| m.pool == pool && matches!(m.state, MachineState::Requested | MachineState::Launched))
                    .take(nodes as usize)
                    .collect();
                for machine in abandoned {
                    let fleet = self.clone();
                    let why = why.clone();
                    tokio::spawn(async move { fleet.terminate(&machine.node, &why).await });
                }
            }
        }
    }

    /// Records and launches one machine for `pool`, trying its zones in order.
    async fn provision(&self, pool_name: &str) {
        let Some(pool) = self.pool(pool_name) else {
            tracing::error!(pool = pool_name, "asked for a machine of a pool that has no cloud");
            return;
        };
        let cloud = pool.cloud();
        let token = crate::auth::new_token();
        let now = self.clock.now_us();
        // The token expires unless the agent joins by the start-up timeout (with a minute's margin for clocks).
        let expires = now.saturating_add(((pool.startup_timeout_s() + 60) * 1_000_000) as i64);
        let market = cloud.market().to_string();
        let new = NewMachine {
            pool: pool_name,
            provider: &cloud.provider,
            instance_type: &cloud.instance.name,
            market: &market,
            price_hour: cloud.instance.price_hour,
            client_token_prefix: &self.installation,
            token_hash: &crate::auth::hash_token(&token),
            token_expires_at_us: expires,
        };
        let machine = match self.store.insert_machine(&new, now).await {
            Ok(machine) => machine,
            Err(e) => {
                tracing::error!(pool = pool_name, error = %e, "cannot record a cloud machine; not launching it");
                let detail = format!("the server could not record the machine: {e}");
                self.tell(News::ProvisionFailed {
                    pool: pool_name.into(),
                    nodes: 1,
                    failure: ProvisionFailure::Transient,
                    detail,
                });
                return;
            }
        };
        let join = ferry_api::tls::JoinString { token, ca: self.ca_pin }.to_string();
        let script = userdata::script(&self.server_url, &machine.node, pool_name, &join, &cloud.bootstrap);
        match self.launch(&pool, &machine, script).await {
            Ok(instance) => {
                tracing::info!(node = %machine.node, pool = pool_name, instance = %instance.id, zone = %instance.zone,
                    "cloud machine launched");
                if let Err(e) =
                    self.store.machine_launched(&machine.node, &instance.id, &instance.zone, self.clock.now_us()).await
                {
                    // Reconcile adopts it by its tag.
                    tracing::error!(node = %machine.node, error = %e, "cannot record a launched machine");
                }
            }
            Err((failure, detail)) => {
                tracing::warn!(node = %machine.node, pool = pool_name, failure = %failure, detail = %detail,
                    "cloud machine could not be launched");
                *pool.last_error.lock().expect("error lock") = Some(detail.clone());
                self.end_machine(&machine.node, &detail).await;
                self.tell(News::ProvisionFailed { pool: pool_name.into(), nodes: 1, failure, detail });
            }
        }
    }

    /// Launches `machine` in the first zone that takes it.
    async fn launch(
        &self,
        pool: &PoolFleet,
        machine: &CloudMachine,
        user_data: String,
    ) -> Result<Instance, (ProvisionFailure, String)> {
        let cloud = pool.cloud();
        let zones = pool.zones.lock().expect("zones lock").order(self.clock.now_us());
        if zones.is_empty() {
            let detail = format!(
                "every zone of pool {} refused for capacity a short while ago ({}); waiting out its retry_after",
                machine.pool,
                cloud.zones.join(", ")
            );
            return Err((ProvisionFailure::NoCapacity, detail));
        }
        let mut refusals = Vec::new();
        for zone in zones {
            let request = LaunchRequest {
                installation: self.installation.clone(),
                pool: machine.pool.clone(),
                node: machine.node.clone(),
                instance_type: cloud.instance.name.clone(),
                zone: zone.clone(),
                market: cloud.market(),
                user_data: user_data.clone(),
                client_token: Some(machine.client_token.clone()),
            };
            let mut tries = 0;
            let result = loop {
                pool.pace(self.clock.as_ref()).await;
                self.stats.lock().expect("stats lock").launches += 1;
                match pool.provider.launch(request.clone()).await {
                    Err(e) if e.is_transient() && tries + 1 < TRANSIENT_TRIES_MAX => {
                        tries += 1;
                        tracing::warn!(node = %machine.node, zone, error = %e, "launch failed for now; retrying");
                        tokio::time::sleep(backoff(tries)).await;
                    }
                    other => break other,
                }
            };
            match result {
                Ok(instance) => return Ok(instance),
                Err(ProviderError::NoCapacity(refusal)) => {
                    let why = refusal.to_string();
                    pool.zones.lock().expect("zones lock").cool(&zone, &why, self.clock.now_us());
                    refusals.push(format!("{zone}: {why}"));
                }
                Err(e) => {
                    let failure = match &e {
                        ProviderError::QuotaExceeded(_) => ProvisionFailure::QuotaExceeded,
                        ProviderError::Invalid(_) => ProvisionFailure::Invalid,
                        ProviderError::Unauthorized(_) => ProvisionFailure::Unauthorized,
                        _ => ProvisionFailure::Transient,
                    };
                    return Err((failure, e.to_string()));
                }
            }
        }
        let detail = format!("no zone had capacity for {}: {}", cloud.instance.name, refusals.join("; "));
        Err((ProvisionFailure::NoCapacity, detail))
    }

    /// Terminates the machine of `node` (if it was launched) and ends its record; the driver hears it is gone.
    async fn terminate(&self, node: &str, why: &str) {
        let machine = match self.store.machine(node).await {
            Ok(Some(machine)) if machine.live() => machine,
            // Already ended: the driver may still hold its node (its agent registered late).
            Ok(Some(m)) => {
                self.tell(News::Gone { node: node.to_string(), pool: m.pool, why: why.to_string() });
                return;
            }
            Ok(None) => {
                tracing::warn!(node, "asked to give back a node that no cloud machine of Ferry's is; left alone");
                return;
            }
            Err(e) => {
                tracing::error!(node, error = %e, "cannot read a cloud machine to terminate; reconcile will");
                return;
            }
        };
        let Some(pool) = self.pool(&machine.pool) else {
            tracing::warn!(node, pool = %machine.pool, "a machine of a pool that is no longer elastic; not terminated");
            return;
        };
        if let Err(e) = self.store.machine_terminating(node, why).await {
            tracing::error!(node, error = %e, "cannot record a termination; reconcile will finish it");
            return;
        }
        if let Some(id) = &machine.instance_id {
            if let Err(e) = self.terminate_ids(&pool, std::slice::from_ref(id)).await {
                // Still `terminating`: the next reconcile tries again.
                tracing::warn!(node, instance = %id, error = %e, "could not terminate a machine; will retry");
                let _ = self.store.machine_detail(node, &format!("terminating: {e}")).await;
                return;
            }
        }
        tracing::info!(node, pool = %machine.pool, why, "cloud machine terminated");
        self.machine_gone(node, &machine.pool, why.to_string()).await;
    }

    async fn terminate_ids(&self, pool: &PoolFleet, ids: &[String]) -> Result<(), ProviderError> {
        let mut tries = 0;
        loop {
            pool.pace(self.clock.as_ref()).await;
            self.stats.lock().expect("stats lock").terminates += 1;
            match pool.provider.terminate(ids).await {
                Err(e) if e.is_transient() && tries + 1 < TRANSIENT_TRIES_MAX => {
                    tries += 1;
                    tokio::time::sleep(backoff(tries)).await;
                }
                other => return other,
            }
        }
    }

    /// Ends a machine's record (its join token is revoked with it), and forgets cached tokens so that the revocation
    /// takes effect on the machine's agent's next request. A record that cannot be written is left to reconcile.
    async fn end_machine(&self, node: &str, why: &str) {
        if let Err(e) = self.store.machine_ended(node, why, self.clock.now_us()).await {
            tracing::error!(node, error = %e, "cannot record a cloud machine's end; reconcile will");
        }
        self.tokens.clear();
    }

    /// Ends a machine's record and tells the driver its node (if it joined) is gone.
    async fn machine_gone(&self, node: &str, pool: &str, why: String) {
        self.end_machine(node, &why).await;
        self.tell(News::Gone { node: node.to_string(), pool: pool.to_string(), why });
    }

    /// Lists every provider's machines of this installation and brings records and machines into agreement (see
    /// the module's documentation). Returns whether every provider answered. One pass at a time: a pass started while
    /// another runs returns at once.
    pub async fn reconcile_once(&self) -> bool {
        let Ok(_one_pass) = self.reconciling.try_lock() else { return true };
        let started_us = self.clock.now_us();
        let pools: Vec<(String, Arc<PoolFleet>)> =
            self.pools.read().expect("fleet pools lock").iter().map(|(n, p)| (n.clone(), p.clone())).collect();
        if pools.is_empty() {
            // No provider to ask (a server without elastic pools): nothing to match.
            return true;
        }
        // The listings first, then the records: every machine was recorded before it was launched, so each machine
        // listed has its record in what is read next, however long the listings took.
        let mut complete = true;
        let mut listings = Vec::new();
        for (name, pool) in &pools {
            pool.pace(self.clock.as_ref()).await;
            self.stats.lock().expect("stats lock").lists += 1;
            match pool.provider.list(&self.installation).await {
                Ok(instances) => listings.push((name.as_str(), pool, instances)),
                Err(e) => {
                    tracing::warn!(pool = %name, error = %e, "reconcile could not list the pool's machines");
                    *pool.last_error.lock().expect("error lock") = Some(e.to_string());
                    complete = false;
                }
            }
        }
        let records = match self.store.live_machines().await {
            Ok(records) => records,
            Err(e) => {
                tracing::error!(error = %e, "reconcile cannot read the cloud machines");
                return false;
            }
        };
        let mut by_node: HashMap<&str, &CloudMachine> = records.iter().map(|m| (m.node.as_str(), m)).collect();
        // Pools that share one provider account list the same machines: each machine is looked at once, by its own
        // pool, or by the first pool that lists it when its pool is no longer configured.
        let mut seen_ids = std::collections::HashSet::new();
        let configured = |pool: Option<&str>| pool.is_some_and(|p| pools.iter().any(|(n, _)| n == p));
        for (name, pool, instances) in &listings {
            let mut orphans = Vec::new();
            for instance in instances {
                let ours = instance.pool() == Some(*name);
                if (!ours && configured(instance.pool())) || !seen_ids.insert(instance.id.clone()) {
                    continue;
                }
                let alive = !matches!(instance.state, InstanceState::Terminated | InstanceState::Stopping);
                let owner = instance.node().and_then(|n| by_node.get(n).copied());
                match owner {
                    // The machine of a pool no longer configured: nothing will use or give it back.
                    Some(m) if !ours => {
                        if alive {
                            orphans.push(instance.id.clone());
                        }
                        let why = format!("pool {} is no longer configured", m.pool);
                        self.machine_gone(&m.node, &m.pool, why).await;
                        by_node.remove(m.node.as_str());
                    }
                    // Its launch was never recorded: the server stopped between the launch and its record.
                    Some(m) if m.instance_id.is_none() && alive => {
                        tracing::info!(node = %m.node, instance = %instance.id, "adopting a machine whose launch was not recorded");
                        let _ = self
                            .store
                            .machine_launched(&m.node, &instance.id, &instance.zone, self.clock.now_us())
                            .await;
                        by_node.remove(m.node.as_str());
                    }
                    Some(m) if m.instance_id.as_deref() == Some(instance.id.as_str()) => {
                        if !alive || instance.state == InstanceState::Stopped {
                            // Terminated or stopped by someone else: a spot reclaim, or a hand in the console.
                            if instance.state == InstanceState::Stopped {
                                orphans.push(instance.id.clone());
                            }
                            self.gone(pool, m, instance).await;
                        } else if m.state == MachineState::Terminating {
                            orphans.push(instance.id.clone());
                        }
                        by_node.remove(m.node.as_str());
                    }
                    // No live record, or a second machine for one node: nobody owns it.
                    _ if alive => orphans.push(instance.id.clone()),
                    _ => {}
                }
            }
            if !orphans.is_empty() {
                tracing::warn!(pool = %name, machines = ?orphans, "terminating machines no node owns");
                if let Err(e) = self.terminate_ids(pool, &orphans).await {
                    tracing::warn!(pool = %name, error = %e, "could not terminate machines no node owns; will retry");
                    complete = false;
                }
            }
        }
        // Records whose machine the provider no longer lists at all (a provider forgets terminated machines after a
        // while). A listing may lag a launch (EC2's is eventually consistent), so only machines launched well before
        // the pass began count as missing.
        let listed: Vec<&str> = listings.iter().map(|(name, _, _)| *name).collect();
        let settled_us = started_us.saturating_sub(LISTING_LAG_US);
        for m in by_node.into_values() {
            if !listed.contains(&m.pool.as_str()) {
                continue;
            }
            let launched_before = m.launched_at_us.is_some_and(|at| at < settled_us);
            match (&m.instance_id, m.state) {
                (None, MachineState::Terminating) | (Some(_), _)
                    if launched_before || m.state == MachineState::Terminating =>
                {
                    let why = if m.state == MachineState::Terminating {
                        m.detail.clone().unwrap_or_else(|| "terminated".into())
                    } else {
                        "the provider no longer has the machine".into()
                    };
                    self.machine_gone(&m.node, &m.pool, why).await;
                }
                // Recorded and not yet launched (its launch may be under way, or abandoned by the core later), or
                // launched too recently to be listed.
                _ => {}
            }
        }
        self.stats.lock().expect("stats lock").reconciles += 1;
        complete
    }

    /// The provider ended a machine that a node still owned: its record ends, its zone cools down (a reclaim says
    /// the zone is short of spot capacity), and the driver loses the node.
    async fn gone(&self, pool: &PoolFleet, m: &CloudMachine, instance: &Instance) {
        let why = match m.state {
            MachineState::Terminating => m.detail.clone().unwrap_or_else(|| "terminated".into()),
            _ if instance.market == ferry_cloud::Market::Spot => {
                format!("the provider reclaimed spot machine {} ({})", instance.id, instance.state)
            }
            _ => format!("the provider reports machine {} {}", instance.id, instance.state),
        };
        if m.state != MachineState::Terminating && instance.market == ferry_cloud::Market::Spot {
            pool.zones.lock().expect("zones lock").cool(&instance.zone, &why, self.clock.now_us());
        }
        tracing::warn!(node = %m.node, instance = %instance.id, why, "cloud machine gone");
        self.machine_gone(&m.node, &m.pool, why).await;
    }

    /// Before the driver starts: one reconcile, then the records of machines whose launch never reached a provider
    /// (recorded, no instance, and no machine carries their tag) are ended, so that the core does not wait for them.
    /// Returns the machines still starting, for the core (`Event::NodesStarting`).
    pub async fn recover(&self) -> Vec<CloudMachine> {
        let complete = self.reconcile_once().await;
        let Ok(live) = self.store.live_machines().await else { return Vec::new() };
        let mut starting = Vec::new();
        for m in live {
            match m.state {
                MachineState::Requested if complete && m.instance_id.is_none() => {
                    let why = "its launch did not reach the provider before the server stopped";
                    self.end_machine(&m.node, why).await;
                }
                MachineState::Requested | MachineState::Launched => starting.push(m),
                _ => {}
            }
        }
        starting
    }
}
