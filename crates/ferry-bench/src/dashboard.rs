//! `dashboard`: how fast the data behind each page of the web dashboard loads, with 30 days of history for 1,000 GPUs
//! and 100,000 jobs.
//!
//! It makes a data directory (a release `ferry server` started once to create it), fills it through the crates the
//! server itself uses (`ferry-store` for 125 nodes of 8 GPUs and 100,000 jobs, `ferry-tsdb` for 30 days of series
//! sampled every 10 minutes), starts the server on it, and then, for each page, sends the requests that page's
//! script sends when it loads (at once, as the browser does) and times until the last answer has been read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Args;
use ferry_api::jobs::{JobState, PriorityClass};
use ferry_api::nodes::Gpu;
use ferry_core::Resources;
use ferry_store::{NewJob, NodeRecord, PlacedWorkerRecord, PlacementRecord, Store};
use ferry_tsdb::{Config, Point, SeriesKey, Tsdb};
use serde_json::json;

use crate::stats::Samples;

const S: i64 = 1_000_000;
const HOUR: i64 = 3600 * S;
const DAY: i64 = 24 * HOUR;
const GPUS_PER_NODE: usize = 8;
const POOLS: usize = 4;
const TEAMS: usize = 10;
const USERS: usize = 50;
/// Jobs inserted per transaction.
const JOBS_PER_TX: u64 = 5_000;

#[derive(Args)]
pub struct DashboardArgs {
    /// The `ferry` binary to run the server with.
    #[arg(long, default_value = "target/release/ferry")]
    ferry: PathBuf,
    #[arg(long, default_value_t = 1000)]
    gpus: usize,
    #[arg(long, default_value_t = 100_000)]
    jobs: u64,
    #[arg(long, default_value_t = 30)]
    days: i64,
    /// Seconds between two samples of a series in the history.
    #[arg(long, default_value_t = 600)]
    interval_s: i64,
    /// Loads of each page to time.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Keep the data directory (printed) instead of deleting it.
    #[arg(long)]
    keep: bool,
    /// Print only the JSON line.
    #[arg(long)]
    json: bool,
}

fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// A server process, stopped when dropped.
struct Server {
    child: Child,
    url: String,
    token: String,
}

impl Server {
    fn start(ferry: &Path, home: &Path) -> Result<Server> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log = std::fs::File::create(home.with_extension("log"))?;
        let child = Command::new(ferry)
            .args(["server", "--listen", &format!("127.0.0.1:{port}"), "--node-timeout", "1h"])
            .env("FERRY_HOME", home)
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {} (build it with cargo build --release -p ferry)", ferry.display()))?;
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut server = Server { child, url, token: String::new() };
        while Instant::now() < deadline {
            if let Ok(token) = std::fs::read_to_string(home.join("admin.token")) {
                let health = Command::new("curl").args(["-sf", &format!("{}/api/v1/health", server.url)]).output();
                if health.map(|o| o.status.success()).unwrap_or(false) {
                    server.token = token.trim().to_string();
                    return Ok(server);
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("the server did not answer within 60 s; see {}", home.with_extension("log").display())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

async fn seed_store(home: &Path, args: &DashboardArgs, end_us: i64) -> Result<u64> {
    let store = Store::open(&home.join("ferry.db")).await?;
    let mut tx = store.begin().await?;
    for n in 0..args.gpus.div_ceil(GPUS_PER_NODE) {
        let gpus = (0..GPUS_PER_NODE as u32)
            .map(|index| Gpu {
                index,
                model: "Bench H100".into(),
                memory_bytes: 80 << 30,
                uuid: None,
                source: "config".into(),
            })
            .collect();
        let node = NodeRecord {
            name: format!("node-{n}"),
            pool: format!("pool-{}", n % POOLS),
            cpu_millis: 64_000,
            memory_bytes: 512 << 30,
            gpus,
            labels: BTreeMap::new(),
            agent_version: "bench".into(),
            limits: "none".into(),
            address: None,
            ready: true,
            usage: None,
            last_seen_us: end_us,
        };
        tx.upsert_node(&node, end_us).await?;
    }
    tx.commit().await?;
    let span = args.days * DAY;
    let mut last = 0;
    for chunk in 0..args.jobs.div_ceil(JOBS_PER_TX) {
        let mut tx = store.begin().await?;
        for i in chunk * JOBS_PER_TX..((chunk + 1) * JOBS_PER_TX).min(args.jobs) {
            let submitted = end_us - span + (span / args.jobs as i64) * i as i64;
            let gpus = (i % 5) as u32;
            // The newest 1% are unfinished: half running, half queued asking for more than any node has.
            let unfinished = i >= args.jobs - args.jobs / 100;
            let queued = unfinished && i % 2 == 0;
            let job = NewJob {
                name: Some(format!("train-{i}")),
                project: Some(format!("project-{}", i as usize % (TEAMS * 2))),
                team: Some(format!("team-{}", i as usize % TEAMS)),
                owner: format!("user-{}", i as usize % USERS),
                command: vec!["python".into(), "train.py".into(), format!("--seed={i}")],
                workdir: String::new(),
                env: BTreeMap::new(),
                secrets: BTreeMap::new(),
                resources: Resources::new(4000, 32 << 30, if queued { 16 } else { gpus }),
                priority: PriorityClass::Normal,
                retries: 0,
                max_runtime_s: None,
                gpu_share_milli: 0,
                gpu_types: Vec::new(),
                selector: BTreeMap::new(),
                nodes: 1,
                code: None,
                pool: None,
                image: None,
                tracking: None,
                sweep: None,
                checkpoints: false,
            };
            let id = tx.insert_job(&job, submitted).await?;
            tx.event(id, submitted, JobState::Queued, "submitted").await?;
            last = id;
            if queued {
                continue;
            }
            let node_index = i as usize % args.gpus.div_ceil(GPUS_PER_NODE);
            let node = format!("node-{node_index}");
            let ids: Vec<u32> = (0..gpus).collect();
            // A timeline entry with its reason as data, as the driver writes it.
            let placement = PlacementRecord {
                pool: format!("pool-{}", node_index % POOLS),
                workers: vec![PlacedWorkerRecord { node: node.clone(), gpu_ids: ids.clone() }],
                cpu_millis: job.resources.cpu_millis,
                gpu_share_milli: 0,
                candidates: 1,
                gpus_free_after: GPUS_PER_NODE as u32 - gpus,
                cpu_millis_free_after: 0,
                backfilled_before: None,
                burst_waited_s: None,
                burst_past: Vec::new(),
            };
            tx.placed(id, &node, &ids, submitted + S, "placed by the benchmark", placement).await?;
            tx.running(id, submitted + 2 * S, "running").await?;
            if !unfinished {
                let state = if i % 10 == 0 { JobState::Failed } else { JobState::Succeeded };
                tx.finished(id, state, Some(i32::from(i % 10 == 0)), None, "exited", submitted + HOUR).await?;
            }
        }
        tx.commit().await?;
    }
    store.close().await;
    Ok(last)
}

/// 30 days of what the pages read: every GPU's utilisation and allocation, the installation's and each pool's
/// capacity, allocation and use, and each user's and team's allocation and use.
fn seed_series(dir: &Path, args: &DashboardArgs, end_us: i64) -> Result<u64> {
    let db = Tsdb::open(Config::new(dir))?;
    let mut keys: Vec<(&'static str, &'static str, String)> = Vec::new();
    for g in 0..args.gpus {
        let id = format!("node-{}/{}", g / GPUS_PER_NODE, g % GPUS_PER_NODE);
        keys.push(("gpu_utilization", "gpu", id.clone()));
        keys.push(("gpu_allocated", "gpu", id));
    }
    let places = std::iter::once(("all", "all".to_string())).chain((0..POOLS).map(|p| ("pool", format!("pool-{p}"))));
    for (kind, id) in places {
        for metric in ["gpu_capacity", "gpu_allocated", "gpu_used", "cpu_allocated", "cpu_used"] {
            keys.push((metric, kind, id.clone()));
        }
    }
    let owners =
        (0..USERS).map(|u| ("user", format!("user-{u}"))).chain((0..TEAMS).map(|t| ("team", format!("team-{t}"))));
    for (kind, id) in owners {
        for metric in ["gpu_allocated", "gpu_used", "cpu_allocated", "cpu_used"] {
            keys.push((metric, kind, id.clone()));
        }
    }
    let mut stored = 0;
    let mut t = end_us - args.days * DAY;
    let mut next_upkeep = t + HOUR;
    let mut batch = Vec::with_capacity(keys.len());
    while t < end_us {
        batch.clear();
        batch.extend(keys.iter().enumerate().map(|(k, (metric, kind, id))| Point {
            key: SeriesKey { metric, kind, id },
            t_us: t,
            value: ((k * 37 + (t / HOUR) as usize * 11) % 101) as f64,
        }));
        stored += db.ingest_at(&batch, t)?.stored;
        t += args.interval_s * S;
        if t >= next_upkeep {
            db.maintain(next_upkeep)?;
            next_upkeep += HOUR;
        }
    }
    db.maintain(end_us)?;
    db.flush()?;
    Ok(stored)
}

/// The requests each page sends when it loads (see `crates/ferry-server/ui/app.js`).
fn pages(last_job: u64) -> Vec<(&'static str, Vec<String>)> {
    let series = |metric: &str, by: &str, range: &str| format!("/api/v1/series?metric={metric}&by={by}&{range}");
    let month = "start=30d&step=1h";
    let mut overview = vec!["/api/v1/nodes".to_string(), "/api/v1/jobs?limit=2000".to_string()];
    for by in ["all", "pool"] {
        for metric in ["gpu_capacity", "gpu_allocated", "gpu_used"] {
            overview.push(series(metric, by, month));
        }
    }
    let job = last_job.to_string();
    let job_range = "start=2h&step=1m";
    vec![
        ("overview (30 days)", overview),
        (
            "nodes (24 h heatmap)",
            vec![
                "/api/v1/nodes".into(),
                "/api/v1/jobs?limit=2000".into(),
                series("gpu_utilization", "gpu", "start=24h&step=30m"),
            ],
        ),
        ("nodes (7 d heatmap)", vec![series("gpu_utilization", "gpu", "start=7d&step=3h")]),
        ("jobs (all, newest 100)", vec!["/api/v1/jobs?all=true&limit=100".into(), "/api/v1/nodes".into()]),
        ("jobs (a team, 30 d)", vec!["/api/v1/jobs?all=true&team=team-3&since=30d&limit=100".into()]),
        ("jobs (a user, a pool)", vec!["/api/v1/jobs?all=true&owner=user-7&pool=pool-1&limit=100".into()]),
        (
            "job",
            vec![
                format!("/api/v1/jobs/{job}"),
                format!("/api/v1/jobs/{job}/logs"),
                series("cpu_used", &format!("job&id={job}"), job_range),
                series("cpu_allocated", &format!("job&id={job}"), job_range),
                series("memory_used", &format!("job&id={job}"), job_range),
                series("memory_allocated", &format!("job&id={job}"), job_range),
                series("gpu_utilization", &format!("job&id={job}"), job_range),
            ],
        ),
        ("usage (users, 30 d)", vec!["/api/v1/usage?by=user&start=30d".into()]),
        ("usage (teams, 30 d, CSV)", vec!["/api/v1/usage?by=team&start=30d&format=csv".into()]),
    ]
}

struct PageTiming {
    name: &'static str,
    samples: Samples,
    bytes: usize,
}

async fn time_pages(server: &Server, runs: usize, last_job: u64) -> Result<Vec<PageTiming>> {
    let http = reqwest::Client::new();
    let mut out = Vec::new();
    for (name, paths) in pages(last_job) {
        let mut samples = Samples::default();
        let mut bytes = 0;
        // One load first to warm caches, as a returning user's would be; then the timed ones.
        for run in 0..=runs {
            let started = Instant::now();
            let loads = paths.iter().map(|path| {
                let request = http.get(format!("{}{path}", server.url)).bearer_auth(&server.token);
                async move {
                    let response = request.send().await.with_context(|| format!("GET {path}"))?;
                    if !response.status().is_success() {
                        bail!("GET {path}: HTTP {}", response.status());
                    }
                    Ok::<usize, anyhow::Error>(response.bytes().await?.len())
                }
            });
            let sizes = futures_util::future::try_join_all(loads).await?;
            if run > 0 {
                samples.push(started.elapsed());
            }
            bytes = sizes.iter().sum();
        }
        out.push(PageTiming { name, samples, bytes });
    }
    Ok(out)
}

pub async fn run(args: DashboardArgs) -> Result<usize> {
    let scratch = tempfile::Builder::new().prefix("ferry-dashboard-bench.").tempdir()?;
    let home = scratch.path().join("home");
    drop(Server::start(&args.ferry, &home)?);
    let end = now_us();
    let started = Instant::now();
    let last_job = seed_store(&home, &args, end).await?;
    let store_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let points = seed_series(&home.join("series"), &args, end)?;
    let series_s = started.elapsed().as_secs_f64();
    let server = Server::start(&args.ferry, &home)?;
    let timings = time_pages(&server, args.runs, last_job).await?;
    drop(server);
    if !args.json {
        println!(
            "dashboard data: {} GPUs, {} jobs ({:.0} s to insert), {} days of series ({points} samples, {:.0} s)",
            args.gpus, args.jobs, store_s, args.days, series_s
        );
        for t in &timings {
            let s = t.samples.summary().expect("at least one run");
            println!("  {:<26} {:>7.1} ms median  {:>7.1} ms max  {:>9} bytes", t.name, s.p50, s.max, t.bytes);
        }
    }
    let rows: Vec<_> = timings
        .iter()
        .map(|t| {
            let s = t.samples.summary().expect("at least one run");
            json!({ "page": t.name, "median_ms": s.p50, "max_ms": s.max, "bytes": t.bytes })
        })
        .collect();
    println!(
        "{}",
        json!({ "bench": "dashboard", "gpus": args.gpus, "jobs": args.jobs, "days": args.days, "pages": rows })
    );
    if args.keep {
        let kept = scratch.keep();
        eprintln!("kept {}", kept.display());
    }
    Ok(0)
}
