//! `ferry-bench`: Ferry's speed, measured end to end through the HTTP API against a running server and agent.
//!
//! - `latency`: jobs one after another on an idle node; submit-to-start percentiles.
//! - `throughput`: many trivial jobs at once; the time until all have finished.
//! - `queue-memory`: the server's resident memory with many jobs queued.
//! - `cycle`: one cycle of the scheduler core alone, in memory.
//! - `replay`: the simulator's replay with its checker, on a synthetic trace-shaped workload or the Alibaba trace.
//! - `tsdb`: the embedded time-series store alone: history ingest, query latency, sustained live ingest.
//! - `ingest`: simulated agents (8 GPUs each) sending telemetry every second to a running server.
//! - `dashboard`: the requests behind each page of the web dashboard, on a server with 100,000 jobs and 30 days of
//!   series for 1,000 GPUs.
//! - `fleet`: the server's cloud fleet against an in-memory provider: one order for 100 nodes, and the reconcile
//!   loop over 1,000 cloud nodes.
//!
//! Each prints a human table, then one JSON line (only the JSON line with `--json`). `scripts/bench` runs them all
//! and compares with a local Slurm; see this crate's README.

mod stats;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use ferry_api::jobs::{Job, JobState, PriorityClass, SubmitJob};
use ferry_api::nodes::NodeState;
use ferry_api::ErrorCode;
use ferry_client::{Client, ClientError};
use serde_json::json;
mod cycle;
mod dashboard;
mod fleet;
mod ingest;
mod replay;
mod tsdb;
use stats::{bytes, latency_row, round3, summary_json, Samples};
use tokio::task::JoinSet;

const MIB: u64 = 1024 * 1024;
/// The longest single long-poll on a job; the wait is repeated until the job's own deadline.
const WAIT_SLICE: Duration = Duration::from_secs(30);
/// How often an overloaded server (HTTP 503) is asked again before a submission counts as failed.
const UNAVAILABLE_RETRIES: u32 = 100;

#[derive(Parser)]
#[command(name = "ferry-bench", version, about = "Measures Ferry's latency, throughput and queue memory")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Submits trivial jobs one at a time, each after the previous one finished, and reports submit-to-start.
    Latency(LatencyArgs),
    /// Submits trivial jobs all at once and reports the time until every one has finished.
    Throughput(ThroughputArgs),
    /// Fills the queue with jobs that cannot start yet and reports the server's resident memory.
    QueueMemory(QueueMemoryArgs),
    /// Times one cycle of the scheduler core alone on a large cluster with a deep queue.
    Cycle(cycle::CycleArgs),
    /// Times the simulator's replay, the checker on, on a synthetic trace-shaped workload or the Alibaba trace.
    Replay(replay::ReplayArgs),
    /// Times the embedded time-series store: 90 days of 1,000 GPUs, the UI's queries, live ingest headroom.
    Tsdb(tsdb::TsdbArgs),
    /// Simulated agents sending telemetry each second to a running server: the most it sustains, its CPU and memory.
    Ingest(ingest::IngestArgs),
    /// The data behind each dashboard page, timed with 30 days of history for 1,000 GPUs and 100,000 jobs.
    Dashboard(dashboard::DashboardArgs),
    /// The cloud fleet against an in-memory provider: provisioning 100 nodes, reconciling 1,000.
    Fleet(fleet::FleetArgs),
}

#[derive(Args, Clone)]
struct Common {
    /// The server's base URL.
    #[arg(long, env = "FERRY_SERVER", default_value = "http://127.0.0.1:7750")]
    server: String,
    /// An API token.
    #[arg(long, env = "FERRY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding the API token (such as the server's DATA_DIR/admin.token); wins over --token and FERRY_TOKEN.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// The directory the jobs run in, on the node.
    #[arg(long, default_value = "/tmp")]
    workdir: String,
    /// The program each job runs (without a shell).
    #[arg(long = "job-command", default_value = "true", num_args = 1.., value_delimiter = ' ')]
    job_command: Vec<String>,
    /// Pin every job to this pool (e.g. an engine pool, to time Ferry into Slurm or Ray).
    #[arg(long)]
    pool: Option<String>,
    /// Print only the JSON line.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct LatencyArgs {
    #[command(flatten)]
    common: Common,
    /// How many jobs to measure.
    #[arg(long, default_value_t = 1000)]
    jobs: usize,
    /// Jobs run first and not measured (connection set-up, caches).
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// How long one job may take from submission to its end.
    #[arg(long, default_value = "60", value_parser = parse_secs)]
    job_timeout: Duration,
}

#[derive(Args)]
struct ThroughputArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value_t = 1000)]
    jobs: usize,
    /// The most submissions (and waits) in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// How long the whole run may take.
    #[arg(long, default_value = "900", value_parser = parse_secs)]
    timeout: Duration,
}

#[derive(Args)]
struct QueueMemoryArgs {
    #[command(flatten)]
    common: Common,
    /// How many jobs to queue.
    #[arg(long, default_value_t = 100_000)]
    jobs: usize,
    /// The server's process id, whose /proc/PID/status is read.
    #[arg(long)]
    server_pid: u32,
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Leave the queued jobs and the blockers in place (e.g. when the server is thrown away next).
    #[arg(long)]
    no_cleanup: bool,
}

/// Seconds, as a plain number.
fn parse_secs(text: &str) -> Result<Duration, String> {
    text.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("'{text}' is not a positive number of seconds"))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Latency(args) => latency(args).await,
        Command::Throughput(args) => throughput(args).await,
        Command::QueueMemory(args) => queue_memory(args).await,
        Command::Cycle(args) => cycle::run(args),
        Command::Replay(args) => replay::run(args),
        Command::Tsdb(args) => tsdb::run(args),
        Command::Ingest(args) => ingest::run(args).await,
        Command::Dashboard(args) => dashboard::run(args).await,
        Command::Fleet(args) => fleet::run(args).await,
    };
    match result {
        Ok(0) => ExitCode::SUCCESS,
        Ok(failed) => {
            eprintln!("ferry-bench: {failed} job(s) did not succeed; the figures above are not valid");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("ferry-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

impl Common {
    fn client(&self) -> Result<Client> {
        let token = match (&self.token_file, &self.token) {
            (Some(path), _) => std::fs::read_to_string(path)
                .with_context(|| format!("reading the token file {}", path.display()))?
                .trim()
                .to_string(),
            (None, Some(token)) => token.clone(),
            (None, None) => bail!("give an API token with --token, --token-file or FERRY_TOKEN"),
        };
        Ok(Client::new(&self.server, Some(token)))
    }

    fn job(&self, name: &str) -> SubmitJob {
        SubmitJob {
            command: self.job_command.clone(),
            workdir: self.workdir.clone(),
            name: Some(name.to_string()),
            cpu_millis: Some(100),
            memory_bytes: Some(64 * MIB),
            pool: self.pool.clone(),
            ..SubmitJob::default()
        }
    }

    /// Prints the human table (unless `--json`) and then the JSON line.
    fn report(&self, table: &str, line: serde_json::Value) {
        if !self.json {
            println!("{table}");
        }
        println!("{line}");
    }
}

/// Submits, asking again while the server says it is overloaded (503). Returns the id and how many retries it took.
async fn submit(client: &Client, job: &SubmitJob) -> Result<(u64, u32), ClientError> {
    let mut retries = 0;
    loop {
        match client.submit(job).await {
            Ok(submitted) => return Ok((submitted.id, retries)),
            Err(e) if e.code() == Some(ErrorCode::Unavailable) && retries < UNAVAILABLE_RETRIES => {
                retries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Waits until the job is in a final state or `timeout` has passed; returns the job as last seen.
async fn wait_terminal(client: &Client, id: u64, timeout: Duration) -> Result<Job, ClientError> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let job = client.wait_job(id, left.min(WAIT_SLICE)).await?;
        if job.state.is_terminal() || left.is_zero() {
            return Ok(job);
        }
    }
}

fn us_to_ms(us: i64) -> f64 {
    us as f64 / 1000.0
}

async fn latency(args: LatencyArgs) -> Result<usize> {
    let client = args.common.client()?;
    client.health().await.context("the server is not healthy")?;
    let job = args.common.job("bench-latency");

    let mut start = Samples::default(); // server: submitted_at -> started_at
    let mut server_total = Samples::default(); // server: submitted_at -> finished_at
    let mut rtt = Samples::default(); // client: the submit request
    let mut finished = Samples::default(); // client: submit sent -> wait answered with a final state
    let mut failed = Vec::new();
    let total = args.warmup + args.jobs;
    let began = Instant::now();
    for i in 0..total {
        let measured = i >= args.warmup;
        let t0 = Instant::now();
        let (id, _) = submit(&client, &job).await.context("submitting a job")?;
        let t_submitted = t0.elapsed();
        let done =
            wait_terminal(&client, id, args.job_timeout).await.with_context(|| format!("waiting for job {id}"))?;
        let t_finished = t0.elapsed();
        if !done.state.is_terminal() {
            bail!("job {id} is still {} after {:?}; is an agent running?", done.state.name(), args.job_timeout);
        }
        if done.state != JobState::Succeeded {
            eprintln!("job {id} ended {}: {}", done.state.name(), done.message.as_deref().unwrap_or("(no message)"));
            if measured {
                failed.push(id);
            }
        }
        if !measured {
            continue;
        }
        rtt.push(t_submitted);
        finished.push(t_finished);
        if let Some(started) = done.started_at_us {
            start.push_ms(us_to_ms(started - done.submitted_at_us));
        }
        if let Some(end) = done.finished_at_us {
            server_total.push_ms(us_to_ms(end - done.submitted_at_us));
        }
        let n = i + 1 - args.warmup;
        if !args.common.json && n % 100 == 0 {
            eprintln!("latency: {n}/{} jobs", args.jobs);
        }
    }
    let elapsed = began.elapsed().as_secs_f64();

    let table = [
        format!(
            "latency: {} jobs one after another ({} warm-up), {elapsed:.1} s, {} failed",
            args.jobs,
            args.warmup,
            failed.len()
        ),
        format!("{:<30} {:>10} {:>10} {:>10} {:>10}", "ms", "p50", "p90", "p99", "max"),
        latency_row("submit -> start (server)", start.summary()),
        latency_row("submit -> finished (server)", server_total.summary()),
        latency_row("submit round trip (client)", rtt.summary()),
        latency_row("submit -> finished (client)", finished.summary()),
    ]
    .join("\n");
    let line = json!({
        "bench": "latency",
        "jobs": args.jobs,
        "failed": failed.len(),
        "elapsed_s": round3(elapsed),
        // The headline figures again, flat, for scripts.
        "start_p50_ms": start.summary().map(|s| round3(s.p50)),
        "start_p99_ms": start.summary().map(|s| round3(s.p99)),
        "submit_to_start_ms": summary_json(start.summary()),
        "submit_to_finished_server_ms": summary_json(server_total.summary()),
        "submit_rtt_ms": summary_json(rtt.summary()),
        "submit_to_finished_client_ms": summary_json(finished.summary()),
    });
    args.common.report(&table, line);
    Ok(failed.len())
}

/// What submitting many jobs at once gave.
struct Submitted {
    /// The ids of the jobs that were accepted, in ascending order.
    ids: Vec<u64>,
    failed: usize,
    retries: u64,
    elapsed: Duration,
    /// The rates of the first and the last tenth of the requests.
    tenths: Tenths,
}

/// When each tenth of a run of `n` requests was done, to compare the rate at its start with the rate at its end (a
/// server whose cost per request grows with what it holds slows down as the queue fills).
struct Tenths {
    n: usize,
    began: Instant,
    done: AtomicUsize,
    /// The time since `began` when the i-th tenth completed (index 0 is the first tenth).
    marks: std::sync::Mutex<[Option<Duration>; 10]>,
}

impl Tenths {
    fn new(n: usize) -> Tenths {
        Tenths { n, began: Instant::now(), done: AtomicUsize::new(0), marks: std::sync::Mutex::new([None; 10]) }
    }

    /// Counts one more request done (accepted or not).
    fn tick(&self) {
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        let tenth = self.n.div_ceil(10).max(1);
        if done % tenth == 0 || done == self.n {
            let index = (done.div_ceil(tenth) - 1).min(9);
            let mut marks = self.marks.lock().expect("no holder panics");
            marks[index].get_or_insert(self.began.elapsed());
        }
    }

    /// Requests per second over the first and over the last tenth; `None` where too few requests ran to tell.
    fn rates(&self) -> (Option<f64>, Option<f64>) {
        let marks = *self.marks.lock().expect("no holder panics");
        let tenth = self.n.div_ceil(10) as f64;
        if self.n < 20 {
            return (None, None);
        }
        let first = marks[0].map(|t| tenth / t.as_secs_f64().max(1e-9));
        let last = match (marks[8], marks[9]) {
            (Some(a), Some(b)) => Some((self.n as f64 - 9.0 * tenth) / (b - a).as_secs_f64().max(1e-9)),
            _ => None,
        };
        (first, last)
    }
}

/// Submits `n` copies of `job` with up to `concurrency` requests in flight.
async fn submit_many(client: &Client, job: &SubmitJob, n: usize, concurrency: usize, quiet: bool) -> Submitted {
    let next = Arc::new(AtomicUsize::new(0));
    let began = Instant::now();
    let tenths = Arc::new(Tenths::new(n));
    let mut workers = JoinSet::new();
    for _ in 0..concurrency.clamp(1, n.max(1)) {
        let (client, job, next, tenths) = (client.clone(), job.clone(), next.clone(), tenths.clone());
        workers.spawn(async move {
            let (mut ids, mut failed, mut retries, mut first_error) = (Vec::new(), 0usize, 0u64, None);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                if !quiet && i > 0 && i % 10_000 == 0 {
                    eprintln!("submitted {i}/{n}");
                }
                let submitted = submit(&client, &job).await;
                tenths.tick();
                match submitted {
                    Ok((id, r)) => {
                        ids.push(id);
                        retries += u64::from(r);
                    }
                    Err(e) => {
                        failed += 1;
                        first_error.get_or_insert(e.to_string());
                    }
                }
            }
            (ids, failed, retries, first_error)
        });
    }
    let mut out = Submitted {
        ids: Vec::with_capacity(n),
        failed: 0,
        retries: 0,
        elapsed: Duration::ZERO,
        tenths: Tenths::new(n),
    };
    while let Some(joined) = workers.join_next().await {
        let (ids, failed, retries, first_error) = joined.expect("a submit worker panicked");
        out.ids.extend(ids);
        out.failed += failed;
        out.retries += retries;
        if let Some(e) = first_error {
            eprintln!("a submission failed: {e}");
        }
    }
    out.elapsed = began.elapsed();
    out.ids.sort_unstable();
    out.tenths = Arc::into_inner(tenths).expect("every worker has ended");
    out
}

async fn throughput(args: ThroughputArgs) -> Result<usize> {
    let client = args.common.client()?;
    client.health().await.context("the server is not healthy")?;
    let job = args.common.job("bench-throughput");
    let began = Instant::now();
    let deadline = began + args.timeout;

    let submitted = submit_many(&client, &job, args.jobs, args.concurrency, args.common.json).await;
    if submitted.ids.is_empty() {
        bail!("no submission succeeded");
    }

    // Wait on every job, `concurrency` long-polls at a time.
    let next = Arc::new(AtomicUsize::new(0));
    let ids = Arc::new(submitted.ids.clone());
    let mut waiters = JoinSet::new();
    for _ in 0..args.concurrency.clamp(1, ids.len()) {
        let (client, ids, next) = (client.clone(), ids.clone(), next.clone());
        waiters.spawn(async move {
            let mut jobs = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&id) = ids.get(i) else { break };
                let left = deadline.saturating_duration_since(Instant::now());
                jobs.push(wait_terminal(&client, id, left).await.map_err(|e| format!("waiting for job {id}: {e}"))?);
            }
            Ok::<_, String>(jobs)
        });
    }
    let mut jobs = Vec::with_capacity(ids.len());
    while let Some(joined) = waiters.join_next().await {
        jobs.extend(joined.expect("a wait worker panicked").map_err(anyhow::Error::msg)?);
    }
    let total = began.elapsed();

    let unfinished = jobs.iter().filter(|j| !j.state.is_terminal()).count();
    let not_succeeded = jobs.iter().filter(|j| j.state != JobState::Succeeded).count();
    let failed = submitted.failed + not_succeeded;
    if let Some(j) = jobs.iter().find(|j| j.state.is_terminal() && j.state != JobState::Succeeded) {
        eprintln!("e.g. job {} ended {}: {}", j.id, j.state.name(), j.message.as_deref().unwrap_or("(no message)"));
    }
    // The server's own view: first submission to last finish.
    let first_submit = jobs.iter().map(|j| j.submitted_at_us).min();
    let last_finish = jobs.iter().filter_map(|j| j.finished_at_us).max();
    let server_span_s = match (first_submit, last_finish) {
        (Some(a), Some(b)) if b >= a => Some((b - a) as f64 / 1e6),
        _ => None,
    };
    let total_s = total.as_secs_f64();
    let submit_s = submitted.elapsed.as_secs_f64();
    let finished_ok = jobs.len() - not_succeeded;
    let jobs_per_s = finished_ok as f64 / total_s;

    let mut table = vec![
        format!("throughput: {} jobs, up to {} requests in flight", args.jobs, args.concurrency),
        format!("  submit all            {submit_s:>9.3} s   ({:.0} submissions/s)", args.jobs as f64 / submit_s),
        format!("  all finished          {total_s:>9.3} s"),
        format!("  throughput            {jobs_per_s:>9.1} jobs/s"),
        format!("  failed                {failed:>9}   ({} submissions, {} jobs)", submitted.failed, not_succeeded),
    ];
    if unfinished > 0 {
        table.push(format!("  UNFINISHED            {unfinished:>9}   (still running after {:?})", args.timeout));
    }
    if let Some(span) = server_span_s {
        table.push(format!("  server span           {span:>9.3} s   (first submitted -> last finished)"));
    }
    if submitted.retries > 0 {
        table.push(format!("  503 retries           {:>9}", submitted.retries));
    }
    let line = json!({
        "bench": "throughput",
        "jobs": args.jobs,
        "concurrency": args.concurrency,
        "submit_s": round3(submit_s),
        "total_s": round3(total_s),
        "jobs_per_s": round3(jobs_per_s),
        "failed": failed,
        "unfinished": unfinished,
        "server_span_s": server_span_s.map(round3),
        "retries_503": submitted.retries,
    });
    args.common.report(&table.join("\n"), line);
    Ok(failed)
}

/// VmRSS and VmHWM of a process, in bytes.
fn memory_of(pid: u32) -> Result<(u64, u64)> {
    let path = format!("/proc/{pid}/status");
    let status =
        std::fs::read_to_string(&path).with_context(|| format!("reading {path}; is the server's pid right?"))?;
    let field = |name: &str| -> Result<u64> {
        let line = status.lines().find(|l| l.starts_with(name)).with_context(|| format!("no {name} in {path}"))?;
        let kib: u64 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .with_context(|| format!("cannot read '{line}' in {path}"))?;
        Ok(kib * 1024)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

async fn queue_memory(args: QueueMemoryArgs) -> Result<usize> {
    let client = args.common.client()?;
    client.health().await.context("the server is not healthy")?;
    let (rss_before, _) = memory_of(args.server_pid)?;

    // 1. Fill every ready node with a blocker that holds all its CPUs.
    let mut nodes: Vec<_> = client.nodes().await?.nodes.into_iter().filter(|n| n.state == NodeState::Ready).collect();
    if nodes.is_empty() {
        bail!("no ready node; start an agent first");
    }
    nodes.sort_by_key(|n| std::cmp::Reverse(n.cpu_millis));
    let largest = nodes[0].cpu_millis;
    let mut blockers = Vec::new();
    for node in &nodes {
        let blocker = SubmitJob {
            command: vec!["sleep".into(), "3600".into()],
            workdir: args.common.workdir.clone(),
            name: Some("bench-blocker".into()),
            cpu_millis: Some(node.cpu_millis),
            memory_bytes: Some(64 * MIB),
            priority: Some(PriorityClass::Urgent),
            max_runtime_s: Some(3600),
            ..SubmitJob::default()
        };
        blockers.push(submit(&client, &blocker).await.context("submitting a blocker job")?.0);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for &id in &blockers {
        loop {
            let job = client.job(id).await?;
            match job.state {
                JobState::Running => break,
                s if s.is_terminal() => bail!(
                    "the blocker job {id} ended {} before the queue was filled: {}",
                    s.name(),
                    job.message.as_deref().unwrap_or("(no message)")
                ),
                _ if Instant::now() > deadline => bail!("the blocker job {id} did not start within 60 s"),
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    // 2. Queue jobs that fit the largest node but cannot start while the blockers run.
    let queued_job =
        SubmitJob { cpu_millis: Some(largest), priority: Some(PriorityClass::Low), ..args.common.job("bench-queued") };
    let submitted = submit_many(&client, &queued_job, args.jobs, args.concurrency, args.common.json).await;
    // Give the scheduler a moment to look at the whole queue once, then measure.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss, hwm) = memory_of(args.server_pid)?;
    let queued = submitted.ids.len();
    let per_job = rss.saturating_sub(rss_before) / (queued.max(1) as u64);
    // Spot check: the last one is really still queued.
    let mut not_queued = 0;
    if let Some(&last) = submitted.ids.last() {
        let state = client.job(last).await?.state;
        if state != JobState::Queued {
            eprintln!("job {last} is {} instead of queued: the blockers do not hold the node", state.name());
            not_queued = 1;
        }
    }

    // 3. Clean up: the queued jobs first (else each would run alone on the node), then the blockers.
    let mut cancel_s = None;
    let mut cancel_rates = (None, None);
    if !args.no_cleanup {
        let began = Instant::now();
        let next = Arc::new(AtomicUsize::new(0));
        let ids = Arc::new(submitted.ids.clone());
        let tenths = Arc::new(Tenths::new(ids.len()));
        let mut workers = JoinSet::new();
        for _ in 0..args.concurrency.clamp(1, ids.len().max(1)) {
            let (client, ids, next, tenths) = (client.clone(), ids.clone(), next.clone(), tenths.clone());
            workers.spawn(async move {
                let mut errors = 0usize;
                while let Some(&id) = ids.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let cancelled = client.cancel(id).await;
                    tenths.tick();
                    if let Err(e) = cancelled {
                        if e.code() != Some(ErrorCode::Conflict) {
                            errors += 1;
                        }
                    }
                }
                errors
            });
        }
        let mut errors = 0;
        while let Some(joined) = workers.join_next().await {
            errors += joined.expect("a cancel worker panicked");
        }
        cancel_s = Some(began.elapsed().as_secs_f64());
        cancel_rates = tenths.rates();
        for &id in &blockers {
            client.cancel(id).await.with_context(|| format!("cancelling the blocker job {id}"))?;
        }
        if errors > 0 {
            eprintln!("{errors} cancellations failed");
        }
    }

    let submit_s = submitted.elapsed.as_secs_f64();
    let submit_rates = submitted.tenths.rates();
    let per_s = |rate: Option<f64>| rate.map_or("-".to_string(), |r| format!("{r:.0}/s"));
    let mut table = vec![
        format!("queue memory: {queued} jobs queued behind {} blocker(s)", blockers.len()),
        format!("  submit all            {submit_s:>9.3} s   ({:.0} submissions/s)", queued as f64 / submit_s),
        format!("  submit rate           first 10% {}, last 10% {}", per_s(submit_rates.0), per_s(submit_rates.1)),
        format!("  server RSS before     {:>12}", bytes(rss_before)),
        format!("  server RSS queued     {:>12}", bytes(rss)),
        format!("  server RSS peak       {:>12}   (VmHWM)", bytes(hwm)),
        format!("  per queued job        {:>12}", bytes(per_job)),
    ];
    if let Some(s) = cancel_s {
        table.push(format!("  cancel all            {s:>9.3} s   ({:.0} cancellations/s)", queued as f64 / s));
        table.push(format!(
            "  cancel rate           first 10% {}, last 10% {}",
            per_s(cancel_rates.0),
            per_s(cancel_rates.1)
        ));
    }
    let failed = submitted.failed + not_queued;
    if failed > 0 {
        table.push(format!("  failed                {failed:>9}"));
    }
    let line = json!({
        "bench": "queue_memory",
        "jobs": args.jobs,
        "queued": queued,
        "failed": failed,
        "submit_s": round3(submit_s),
        "rss_before_bytes": rss_before,
        "rss_bytes": rss,
        "hwm_bytes": hwm,
        "bytes_per_queued_job": per_job,
        "cancel_s": cancel_s.map(round3),
        "submit_first_tenth_per_s": submit_rates.0.map(round3),
        "submit_last_tenth_per_s": submit_rates.1.map(round3),
        "cancel_first_tenth_per_s": cancel_rates.0.map(round3),
        "cancel_last_tenth_per_s": cancel_rates.1.map(round3),
    });
    args.common.report(&table.join("\n"), line);
    Ok(failed)
}
