//! `ferry-bench fleet`: the server's cloud fleet against an in-memory provider that answers each call after a cloud
//! API's latency. Two figures:
//!
//! - **Provision**: one `Order::Provision` for 100 nodes (what the core decides for a queue that needs 100 new nodes:
//!   one decision, not one per job), timed until the provider has been asked for every machine and until the store
//!   records every instance, with the provider calls it took. The fleet paces its calls to a provider (a burst, then
//!   a steady rate), so the time is mostly that pacing.
//! - **Reconcile**: one pass of the reconcile loop over 1,000 cloud nodes (records in the store, machines in the
//!   provider, a few orphans), with no latency (Ferry's own cost) and with the provider's latency.
//!
//! Everything runs in this process with a temporary data directory; no server, agent or cloud is involved.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use ferry_cloud::memory::{Calls, MemoryProvider};
use ferry_cloud::{InstanceState, LaunchRequest, Market, Provider};
use ferry_server::fleet::{Fleet, FleetSettings, News, Order};
use ferry_server::{Clock, FileConfig, SystemClock, TokenCache};
use ferry_store::{MachineState, NewMachine, Store};
use serde_json::json;
use tokio::sync::mpsc;

use crate::stats::round3;

/// The pool every machine belongs to.
const POOL: &str = "aws";
/// How machines would reach the server; nothing listens there, since no machine boots.
const PUBLIC_URL: &str = "http://10.0.0.1:7750";
/// The zone the reconcile benchmark's machines are in.
const ZONE: &str = "us-east-1a";
/// The most nodes an elastic pool may have (the configuration's limit).
const POOL_NODES_MAX: u32 = 1000;
/// How often the provision benchmark looks at the provider's counter: the resolution of its times.
const POLL: Duration = Duration::from_millis(1);
/// The burst of provider calls the fleet allows at once (`CALLS_BURST` in `ferry_server::fleet`, private there):
/// the provision benchmark notes when that many launches were asked for.
const FLEET_CALLS_BURST: u64 = 50;
/// Every this many reconciled machines, one has launched and not joined yet; the others have joined.
const NOT_JOINED_EVERY: u32 = 20;

#[derive(Args)]
pub struct FleetArgs {
    /// How long the in-memory provider takes to answer each call, in milliseconds (EC2 takes tens to hundreds).
    #[arg(long, default_value_t = 100)]
    latency_ms: u64,
    /// Nodes asked for in the provision benchmark.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=i64::from(POOL_NODES_MAX)))]
    nodes: u32,
    /// Cloud nodes (records and machines) in the reconcile benchmark.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=i64::from(POOL_NODES_MAX)))]
    machines: u32,
    /// Machines tagged for nodes that have no record, which the first reconcile pass terminates.
    #[arg(long, default_value_t = 5)]
    orphans: u32,
    /// Timed reconcile passes after the first, for each latency. At most 40, so that the passes' calls stay within
    /// the fleet's burst of provider calls and no pass waits on its pacing.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=40))]
    runs: u32,
    /// Print only the JSON line.
    #[arg(long)]
    json: bool,
}

/// One elastic pool of `max_nodes`, on demand in two zones, as a configuration file writes it.
fn config(max_nodes: u32) -> Result<FileConfig> {
    let text = format!(
        "public_url = \"{PUBLIC_URL}\"\n\
         [[pool]]\nname = \"{POOL}\"\norder = 10\nmax_nodes = {max_nodes}\n\
         [pool.cloud]\nprovider = \"aws\"\nregion = \"us-east-1\"\nzones = [\"us-east-1a\", \"us-east-1b\"]\n\
         instance_type = \"g5.12xlarge\"\nimage = \"ami-12345678\"\n"
    );
    FileConfig::parse(&text).map_err(anyhow::Error::msg).context("the benchmark's pool configuration")
}

/// A fleet of the one pool over `store`, renting from `provider`; its timer never fires during a run.
async fn fleet(store: &Store, provider: &Arc<MemoryProvider>, max_nodes: u32) -> Result<Arc<Fleet>> {
    let settings = FleetSettings {
        server_url: PUBLIC_URL.into(),
        ca_pin: None,
        reconcile: Duration::from_secs(3600),
        tokens: Arc::new(TokenCache::default()),
    };
    let providers = BTreeMap::from([(POOL.to_string(), provider.clone() as Arc<dyn Provider>)]);
    Fleet::with_providers(store.clone(), Arc::new(SystemClock), &config(max_nodes)?.pools, settings, providers)
        .await
        .map_err(anyhow::Error::msg)?
        .context("the configuration has no elastic pool")
}

async fn open_store(dir: &tempfile::TempDir) -> Result<Store> {
    Store::open(&dir.path().join("ferry.db")).await.context("opening the benchmark's store")
}

pub async fn run(args: FleetArgs) -> Result<usize> {
    let latency = Duration::from_millis(args.latency_ms);
    let provision = provision(&args, latency).await?;
    let reconcile = reconcile(&args, latency).await?;
    let failed = provision.problems.len() + reconcile.problems.len();
    if !args.json {
        provision.print(&args);
        reconcile.print(&args);
        for problem in provision.problems.iter().chain(&reconcile.problems) {
            println!("  FAILED: {problem}");
        }
    }
    println!(
        "{}",
        json!({
            "bench": "fleet",
            "latency_ms": args.latency_ms,
            "provision": provision.json(&args),
            "reconcile": reconcile.json(&args),
            "failed": failed,
        })
    );
    Ok(failed)
}

/// What one order for `nodes` machines gave.
struct Provisioned {
    /// Order sent -> the provider asked for the burst's last machine, for every machine, and every instance recorded.
    burst_s: Option<f64>,
    calls_s: f64,
    recorded_s: f64,
    calls: Calls,
    problems: Vec<String>,
}

async fn provision(args: &FleetArgs, latency: Duration) -> Result<Provisioned> {
    let dir = tempfile::tempdir()?;
    let store = open_store(&dir).await?;
    let provider = Arc::new(MemoryProvider::new().with_latency(latency));
    let fleet = fleet(&store, &provider, args.nodes).await?;
    let (news_tx, mut news) = mpsc::unbounded_channel();
    let (handle, _task) = fleet.start(news_tx);
    // Past this the provision counts as stuck: the pacing's own time for the nodes, plus a minute.
    let deadline = Duration::from_secs(60 + u64::from(args.nodes) / 10);

    let began = Instant::now();
    handle.order(Order::Provision { pool: POOL.into(), nodes: args.nodes });
    let mut burst_s = None;
    let calls_s = loop {
        let launches = provider.calls().launches;
        // Only an order larger than the burst has a burst to note; a smaller one goes out whole at once.
        if u64::from(args.nodes) > FLEET_CALLS_BURST && launches >= FLEET_CALLS_BURST && burst_s.is_none() {
            burst_s = Some(began.elapsed().as_secs_f64());
        }
        if launches >= u64::from(args.nodes) {
            break began.elapsed().as_secs_f64();
        }
        if began.elapsed() > deadline {
            bail!("only {launches} of {} launches were asked for within {deadline:?}", args.nodes);
        }
        tokio::time::sleep(POLL).await;
    };
    let recorded_s = loop {
        let machines = store.live_machines().await?;
        if machines.iter().filter(|m| m.instance_id.is_some()).count() >= args.nodes as usize {
            break began.elapsed().as_secs_f64();
        }
        if began.elapsed() > deadline {
            bail!("the launched machines were not all recorded within {deadline:?}");
        }
        tokio::time::sleep(POLL * 10).await;
    };

    let calls = provider.calls();
    let mut problems = Vec::new();
    if calls != (Calls { launches: u64::from(args.nodes), lists: 0, terminates: 0 }) {
        problems
            .push(format!("expected exactly {} launches and no other call; the provider saw {calls:?}", args.nodes));
    }
    let fleet_calls = fleet.stats.lock().expect("stats lock").clone();
    if fleet_calls.launches != calls.launches {
        problems.push(format!("the fleet counted {} launches, the provider {}", fleet_calls.launches, calls.launches));
    }
    while let Ok(item) = news.try_recv() {
        if let News::ProvisionFailed { detail, .. } = item {
            problems.push(format!("a launch failed: {detail}"));
        }
    }
    let running = provider.instances().iter().filter(|i| i.state == InstanceState::Running).count();
    if running != args.nodes as usize {
        problems.push(format!("{running} machines run, not {}", args.nodes));
    }
    Ok(Provisioned { burst_s, calls_s, recorded_s, calls, problems })
}

impl Provisioned {
    fn print(&self, args: &FleetArgs) {
        let c = &self.calls;
        println!("cloud fleet: provision {} nodes in one order, provider latency {} ms", args.nodes, args.latency_ms);
        if let Some(burst_s) = self.burst_s {
            let label = format!("the first {FLEET_CALLS_BURST} asked for");
            println!("  {label:<26} {burst_s:>9.3} s   (the rate limit's burst)");
        }
        println!("  every launch asked for     {:>9.3} s", self.calls_s);
        println!("  every instance recorded    {:>9.3} s", self.recorded_s);
        println!(
            "  provider calls             {:>9}   launches, {} lists, {} terminates",
            c.launches, c.lists, c.terminates
        );
    }

    fn json(&self, args: &FleetArgs) -> serde_json::Value {
        json!({
            "nodes": args.nodes,
            "burst_s": self.burst_s.map(round3),
            "launch_calls_s": round3(self.calls_s),
            "recorded_s": round3(self.recorded_s),
            "launches": self.calls.launches,
            "lists": self.calls.lists,
            "terminates": self.calls.terminates,
        })
    }
}

/// Reconcile passes at one latency: the first (which finds the orphans), then the steady ones.
struct Passes {
    latency_ms: u64,
    first_ms: f64,
    /// The steady passes' times, sorted.
    steady_ms: Vec<f64>,
}

impl Passes {
    fn median_ms(&self) -> f64 {
        self.steady_ms[self.steady_ms.len() / 2]
    }

    fn max_ms(&self) -> f64 {
        self.steady_ms.last().copied().unwrap_or(0.0)
    }
}

struct Reconciled {
    passes: Vec<Passes>,
    /// Reading the live records alone (the pass's first step), median over the runs.
    read_median_ms: f64,
    fill_s: f64,
    problems: Vec<String>,
}

async fn reconcile(args: &FleetArgs, latency: Duration) -> Result<Reconciled> {
    let dir = tempfile::tempdir()?;
    let store = open_store(&dir).await?;
    let provider = Arc::new(MemoryProvider::new());
    let fill = Instant::now();
    let installation = fill_machines(&store, &provider, args).await?;
    let fill_s = fill.elapsed().as_secs_f64();
    let mut problems = Vec::new();

    let mut passes = Vec::new();
    for (round, latency) in [Duration::ZERO, latency].into_iter().enumerate() {
        provider.set_latency(latency);
        // A fleet per latency, so that each starts with a full burst of calls and no pass waits on the pacing.
        let fleet = fleet(&store, &provider, args.machines).await?;
        let template = request(&installation, "");
        let orphans: Vec<String> = (0..args.orphans).map(|i| format!("{POOL}-orphan-{round}-{i}")).collect();
        let orphan_ids: Vec<String> = provider.populate(&template, &orphans).into_iter().map(|i| i.id).collect();
        let terminates_before = provider.calls().terminates;

        let first = Instant::now();
        let complete = fleet.reconcile_once().await;
        let first_ms = first.elapsed().as_secs_f64() * 1e3;
        let mut steady_ms = Vec::new();
        for _ in 0..args.runs {
            let pass = Instant::now();
            let complete_again = fleet.reconcile_once().await;
            steady_ms.push(pass.elapsed().as_secs_f64() * 1e3);
            if !complete || !complete_again {
                problems.push("a reconcile pass could not list the provider's machines".into());
            }
        }
        steady_ms.sort_by(f64::total_cmp);
        passes.push(Passes { latency_ms: u64::try_from(latency.as_millis()).unwrap_or(u64::MAX), first_ms, steady_ms });

        let left =
            orphan_ids.iter().filter(|id| provider.instance(id).is_some_and(|i| i.state != InstanceState::Terminated));
        if left.count() > 0 {
            problems.push("an orphan was left running".into());
        }
        let terminates = provider.calls().terminates - terminates_before;
        let expected = u64::from(args.orphans > 0);
        if terminates != expected {
            problems.push(format!("{terminates} terminate calls for the orphans, expected {expected}"));
        }
    }

    let live = store.live_machines().await?;
    let owned = live.iter().filter(|m| matches!(m.state, MachineState::Joined | MachineState::Launched)).count();
    if owned != args.machines as usize {
        problems.push(format!("{owned} of {} machines still owned after the passes", args.machines));
    }
    let mut reads = Vec::new();
    for _ in 0..args.runs {
        let read = Instant::now();
        store.live_machines().await?;
        reads.push(read.elapsed().as_secs_f64() * 1e3);
    }
    reads.sort_by(f64::total_cmp);
    Ok(Reconciled { passes, read_median_ms: reads[reads.len() / 2], fill_s, problems })
}

/// What the fleet asks of the provider for `node` of this installation.
fn request(installation: &str, node: &str) -> LaunchRequest {
    LaunchRequest {
        installation: installation.into(),
        pool: POOL.into(),
        node: node.into(),
        instance_type: "g5.12xlarge".into(),
        zone: ZONE.into(),
        market: Market::OnDemand,
        user_data: String::new(),
        client_token: None,
    }
}

/// Records `machines` launched machines (all but one in `NOT_JOINED_EVERY` joined) and puts a running machine in the
/// provider for each, as a fleet that launched them would have. Returns the installation's id, which tags them.
async fn fill_machines(store: &Store, provider: &MemoryProvider, args: &FleetArgs) -> Result<String> {
    // The fleet makes the installation's id on first use; a throwaway one makes it here, and later ones read it.
    let installation = fleet(store, &Arc::new(MemoryProvider::new()), args.machines).await?.installation().to_string();
    let template = NewMachine {
        pool: POOL,
        provider: "aws",
        instance_type: "g5.12xlarge",
        market: "on-demand",
        price_hour: 5.672,
        client_token_prefix: &installation,
        token_hash: "",
        token_expires_at_us: i64::MAX,
    };
    let now = SystemClock.now_us();
    let mut nodes = Vec::with_capacity(args.machines as usize);
    for _ in 0..args.machines {
        // Every machine has a join token of its own, and the store keeps their hashes unique.
        let hash = ferry_server::hash_token(&ferry_server::new_token());
        let new = NewMachine { token_hash: &hash, ..template.clone() };
        nodes.push(store.insert_machine(&new, now).await?.node);
    }
    let instances = provider.populate(&request(&installation, ""), &nodes);
    for (i, (node, instance)) in nodes.iter().zip(&instances).enumerate() {
        store.machine_launched(node, &instance.id, &instance.zone, now).await?;
        if i as u32 % NOT_JOINED_EVERY != 0 {
            store.machine_joined(node, now).await?;
        }
    }
    Ok(installation)
}

impl Reconciled {
    fn print(&self, args: &FleetArgs) {
        println!(
            "cloud fleet: reconcile {} machines ({} not joined) and {} orphans; {} timed passes after the first",
            args.machines,
            args.machines.div_ceil(NOT_JOINED_EVERY),
            args.orphans,
            args.runs
        );
        println!("  filling the store          {:>9.3} s", self.fill_s);
        for p in &self.passes {
            println!(
                "  latency {:>4} ms: first pass {:>7.1} ms (ends the orphans), then median {:>7.1} ms, max {:>7.1} ms",
                p.latency_ms,
                p.first_ms,
                p.median_ms(),
                p.max_ms()
            );
        }
        println!("  reading the live records   {:>9.1} ms   (median; part of every pass)", self.read_median_ms);
    }

    fn json(&self, args: &FleetArgs) -> serde_json::Value {
        let passes: Vec<_> = self
            .passes
            .iter()
            .map(|p| {
                json!({"latency_ms": p.latency_ms, "first_ms": round3(p.first_ms), "median_ms": round3(p.median_ms()),
                       "max_ms": round3(p.max_ms())})
            })
            .collect();
        json!({
            "machines": args.machines,
            "orphans": args.orphans,
            "runs": args.runs,
            "passes": passes,
            "read_records_median_ms": round3(self.read_median_ms),
            "fill_s": round3(self.fill_s),
        })
    }
}
