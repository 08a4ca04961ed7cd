//! `ferry-bench tsdb`: the embedded time-series store alone, on files in a scratch directory. Builds 90 days of
//! history for 1,000 GPUs through `ingest` (with flush and maintain as simulated time advances), then times the
//! queries the web UI makes, then a sustained live ingest of 1,000 nodes x 8 GPUs x 3 metrics every second.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use clap::Args;
use ferry_tsdb::{Bucket, Config, Point, Query, SeriesData, SeriesKey, Tsdb};
use serde_json::json;

const S: i64 = 1_000_000;
const HOUR: i64 = 3600 * S;
const DAY: i64 = 24 * HOUR;
/// The end of the simulated history: 2026-01-01T00:00:00Z, fixed so that runs compare.
const HISTORY_END_US: i64 = 1_767_225_600 * S;
/// How many times each query is run; the median and the max are reported.
const QUERY_RUNS: usize = 20;
/// The live shape: GPUs per node and metrics per GPU.
const LIVE_GPUS_PER_NODE: usize = 8;
const LIVE_METRICS: [&str; 3] = ["gpu_utilization", "gpu_memory_used_bytes", "gpu_power_watts"];
/// Simulated seconds between flushes and between maintains in the live run, as the server does them.
const LIVE_FLUSH_EVERY_S: i64 = 5;
const LIVE_MAINTAIN_EVERY_S: i64 = 10;

#[derive(Args)]
pub struct TsdbArgs {
    /// GPUs in the history (`gpu_utilization`/`gpu`/`node-N/I`, 8 per node).
    #[arg(long, default_value_t = 1000)]
    gpus: usize,
    /// Days of history.
    #[arg(long, default_value_t = 90)]
    days: i64,
    /// Seconds between two samples of one GPU in the history, except in its last `--recent-hours`.
    #[arg(long, default_value_t = 600)]
    history_interval_s: i64,
    /// Hours at the end of the history sampled every 10 s (live rate, kept in the raw tier).
    #[arg(long, default_value_t = 24)]
    recent_hours: i64,
    /// Nodes in the live ingest run (8 GPUs, 3 metrics each); 0 skips it.
    #[arg(long, default_value_t = 1000)]
    live_nodes: usize,
    /// Simulated seconds of the live ingest run (one sample per series per second).
    #[arg(long, default_value_t = 900)]
    live_seconds: i64,
    /// Where the store's files go (a fresh directory under the system's temporary directory if not given); it is
    /// deleted at the end unless `--keep`.
    #[arg(long)]
    dir: Option<PathBuf>,
    #[arg(long)]
    keep: bool,
    /// Print only the JSON line.
    #[arg(long)]
    json: bool,
}

pub fn run(args: TsdbArgs) -> Result<usize> {
    let base = args
        .dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("ferry-bench-tsdb-{}", std::process::id())));
    ensure!(!base.join("history").exists(), "{} already holds a store; give an empty --dir", base.display());
    let history = build_history(&args, &base.join("history"))?;
    let built_rss = proc_status_bytes("VmRSS:");
    let queries = time_queries(&args, &history.db)?;
    let (disk, rss, hwm) = (dir_bytes(&base.join("history")), proc_status_bytes("VmRSS:"), proc_status_bytes("VmHWM:"));
    drop(history.db);
    let live = (args.live_nodes > 0).then(|| live_ingest(&args, &base.join("live"))).transpose()?;
    if !args.keep {
        std::fs::remove_dir_all(&base).with_context(|| format!("removing {}", base.display()))?;
    }
    if !args.json {
        println!(
            "time-series store: {} GPUs, {} days ({} points, every {} s; the last {} h every 10 s)",
            args.gpus, args.days, history.points, args.history_interval_s, args.recent_hours
        );
        println!(
            "  history ingest            {:>9.0} points/s  ({:.1} s, of which flush+maintain {:.1} s)",
            history.points as f64 / history.wall_s,
            history.wall_s,
            history.upkeep_s
        );
        println!("  disk                      {:>9.1} MiB", mib(disk));
        println!("  memory                    {:>9.1} MiB resident after the build, {:.1} MiB after the queries, {:.1} MiB peak",
            mib(built_rss), mib(rss), mib(hwm));
        for q in &queries {
            println!(
                "  {:<25} {:>9.1} ms median, {:.1} ms max  ({} tier, {} series x {} points)",
                q.name, q.median_ms, q.max_ms, q.tier, q.series, q.points
            );
            println!(
                "  {:<25} {:>9.1} ms median streamed (query_each_at); building such an answer alone: {:.1} ms",
                "", q.streamed_ms, q.alloc_ms
            );
        }
        if let Some(live) = &live {
            println!(
                "live ingest: {} series, one sample each per simulated second, flush every {LIVE_FLUSH_EVERY_S} s, \
                maintain every {LIVE_MAINTAIN_EVERY_S} s, {} s simulated",
                live.series, args.live_seconds
            );
            println!(
                "  sustained                 {:>9.0} points/s  ({:.1}x the {} points/s needed)",
                live.points_per_s,
                live.points_per_s / live.series as f64,
                live.series
            );
            println!("  slowest flush / maintain  {:>9.1} ms / {:.1} ms", live.flush_max_ms, live.maintain_max_ms);
            println!(
                "  memory                    {:>9.1} MiB resident at the end, {:.1} MiB peak of the process",
                mib(live.rss_bytes),
                mib(live.hwm_bytes)
            );
        }
    }
    let queries_json: Vec<_> = queries
        .iter()
        .map(|q| json!({"name": q.name, "median_ms": q.median_ms, "max_ms": q.max_ms, "tier": q.tier,
                        "series": q.series, "points": q.points, "answer_alloc_ms": q.alloc_ms, "streamed_median_ms": q.streamed_ms}))
        .collect();
    println!(
        "{}",
        json!({"bench": "tsdb", "gpus": args.gpus, "days": args.days, "history_points": history.points,
               "history_points_per_s": history.points as f64 / history.wall_s, "disk_bytes": disk,
               "built_rss_bytes": built_rss, "rss_bytes": rss, "hwm_bytes": hwm, "queries": queries_json,
               "live": live.as_ref().map(|l| json!({"series": l.series, "points_per_s": l.points_per_s,
                   "headroom": l.points_per_s / l.series as f64, "flush_max_ms": l.flush_max_ms,
                   "maintain_max_ms": l.maintain_max_ms, "rss_bytes": l.rss_bytes}))})
    );
    Ok(0)
}

struct History {
    db: Tsdb,
    points: u64,
    wall_s: f64,
    upkeep_s: f64,
}

/// One sample per GPU per `history_interval_s` (every 10 s at the end), each simulated hour's batches ingested with
/// that time as `now`, then a flush and a maintain, as the server would.
fn build_history(args: &TsdbArgs, dir: &Path) -> Result<History> {
    let db = Tsdb::open(Config::new(dir))?;
    let ids: Vec<String> = (0..args.gpus).map(|g| format!("node-{}/{}", g / 8, g % 8)).collect();
    let start = HISTORY_END_US - args.days * DAY;
    let recent_from = HISTORY_END_US - args.recent_hours * HOUR;
    let (mut points, mut upkeep) = (0u64, Duration::ZERO);
    let started = Instant::now();
    let mut batch = Vec::with_capacity(ids.len());
    let mut t = start;
    let mut next_upkeep = start + HOUR;
    while t < HISTORY_END_US {
        batch.clear();
        batch.extend(ids.iter().enumerate().map(|(g, id)| Point {
            key: SeriesKey { metric: "gpu_utilization", kind: "gpu", id },
            t_us: t,
            value: utilisation(g, t),
        }));
        points += db.ingest_at(&batch, t)?.stored;
        t += if t >= recent_from { 10 * S } else { args.history_interval_s * S };
        if t >= next_upkeep {
            let at = Instant::now();
            db.maintain(next_upkeep)?;
            upkeep += at.elapsed();
            next_upkeep += HOUR;
        }
    }
    let at = Instant::now();
    db.maintain(HISTORY_END_US)?;
    upkeep += at.elapsed();
    Ok(History { db, points, wall_s: started.elapsed().as_secs_f64(), upkeep_s: upkeep.as_secs_f64() })
}

/// A plausible utilisation in 0..=100: a per-GPU level that drifts over the day.
fn utilisation(gpu: usize, t_us: i64) -> f64 {
    let hour = (t_us / HOUR) as usize;
    ((gpu * 37 + hour * 11 + (t_us / (10 * S)) as usize % 7) % 101) as f64
}

struct QueryTiming {
    name: String,
    /// The median through `query_each_at`, which hands over each series instead of building the answer.
    streamed_ms: f64,
    median_ms: f64,
    max_ms: f64,
    tier: &'static str,
    series: usize,
    points: usize,
    /// The median time to allocate and fill an answer of the same shape, without the store: the floor that the
    /// memory allocator and the kernel's page faults set.
    alloc_ms: f64,
}

fn time_queries(args: &TsdbArgs, db: &Tsdb) -> Result<Vec<QueryTiming>> {
    let now = HISTORY_END_US;
    let q = |id: Option<&str>, span_us: i64, step_us: i64| Query {
        metric: "gpu_utilization".into(),
        kind: "gpu".into(),
        id: id.map(str::to_owned),
        start_us: now - span_us,
        end_us: now,
        step_us,
    };
    let days = args.days;
    let cases = [
        (format!("(a) all GPUs, {days} d, 1 h"), q(None, days * DAY, HOUR)),
        (format!("(b) one GPU, {days} d, 1 h"), q(Some("node-0/0"), days * DAY, HOUR)),
        ("(c) all GPUs, 1 d, 1 min".to_string(), q(None, DAY, 60 * S)),
        ("(d) all GPUs, 1 h, 10 s".to_string(), q(None, HOUR, 10 * S)),
    ];
    let mut timings = Vec::new();
    for (name, query) in cases {
        let mut times = Vec::with_capacity(QUERY_RUNS);
        let mut last = None;
        for _ in 0..QUERY_RUNS {
            let at = Instant::now();
            let answer = db.query_at(&query, now)?;
            times.push(at.elapsed().as_secs_f64() * 1e3);
            last = Some(answer);
        }
        let answer = last.expect("QUERY_RUNS > 0");
        let last_tier = answer.tier.name();
        let with_data = answer.series.iter().filter(|s| s.points.iter().any(|b| b.mean.is_some())).count();
        ensure!(with_data == answer.series.len() && with_data > 0, "{name}: some series came back without data");
        times.sort_by(f64::total_cmp);
        let (series, points) = (answer.series.len(), answer.series[0].points.len());
        drop(answer);
        let streamed_ms = streamed_median_ms(db, &query, now)?;
        timings.push(QueryTiming {
            name,
            streamed_ms,
            median_ms: times[times.len() / 2],
            max_ms: times[times.len() - 1],
            tier: last_tier,
            series,
            points,
            alloc_ms: answer_alloc_ms(series, points),
        });
    }
    Ok(timings)
}

fn streamed_median_ms(db: &Tsdb, query: &Query, now: i64) -> Result<f64> {
    let mut times = Vec::with_capacity(QUERY_RUNS);
    for _ in 0..QUERY_RUNS {
        let mut buckets_with_data = 0usize;
        let at = Instant::now();
        db.query_each_at(query, now, |_, points| {
            buckets_with_data += points.iter().filter(|b| b.mean.is_some()).count()
        })?;
        times.push(at.elapsed().as_secs_f64() * 1e3);
        ensure!(buckets_with_data > 0, "a streamed query found no data");
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// The median time to build (and drop) an answer of `series` x `points` buckets with no store behind it.
fn answer_alloc_ms(series: usize, points: usize) -> f64 {
    let mut times: Vec<f64> = (0..QUERY_RUNS)
        .map(|_| {
            let at = Instant::now();
            let answer: Vec<SeriesData> = (0..series)
                .map(|i| SeriesData {
                    id: i.to_string(),
                    points: (0..points)
                        .map(|k| Bucket { t_us: k as i64, mean: Some(1.0), max: Some(1.0), count: 1 })
                        .collect(),
                })
                .collect();
            std::hint::black_box(&answer);
            drop(answer);
            at.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

struct Live {
    series: usize,
    points_per_s: f64,
    flush_max_ms: f64,
    maintain_max_ms: f64,
    rss_bytes: u64,
    hwm_bytes: u64,
}

/// Every series gets one sample per simulated second, in one batch per second; flush and maintain on the server's
/// schedule. Starts 5 minutes before an hour so that a raw partition closes and is compacted during the run.
fn live_ingest(args: &TsdbArgs, dir: &Path) -> Result<Live> {
    let db = Tsdb::open(Config::new(dir))?;
    let mut keys = Vec::new();
    for node in 0..args.live_nodes {
        for gpu in 0..LIVE_GPUS_PER_NODE {
            let id = format!("node-{node}/{gpu}");
            keys.extend(LIVE_METRICS.iter().map(|m| (*m, id.clone())));
        }
    }
    let start = HISTORY_END_US + 10 * DAY - 5 * 60 * S;
    let (mut flush_max, mut maintain_max) = (Duration::ZERO, Duration::ZERO);
    let mut batch = Vec::with_capacity(keys.len());
    let mut stored = 0u64;
    let started = Instant::now();
    for s in 0..args.live_seconds {
        let t = start + s * S;
        batch.clear();
        batch.extend(keys.iter().enumerate().map(|(i, (metric, id))| Point {
            key: SeriesKey { metric, kind: "gpu", id },
            t_us: t,
            value: utilisation(i, t),
        }));
        stored += db.ingest_at(&batch, t)?.stored;
        if (s + 1) % LIVE_FLUSH_EVERY_S == 0 {
            let at = Instant::now();
            db.flush()?;
            flush_max = flush_max.max(at.elapsed());
        }
        if (s + 1) % LIVE_MAINTAIN_EVERY_S == 0 {
            let at = Instant::now();
            db.maintain(t)?;
            maintain_max = maintain_max.max(at.elapsed());
        }
    }
    let wall_s = started.elapsed().as_secs_f64();
    Ok(Live {
        series: keys.len(),
        points_per_s: stored as f64 / wall_s,
        flush_max_ms: flush_max.as_secs_f64() * 1e3,
        maintain_max_ms: maintain_max.as_secs_f64() * 1e3,
        rss_bytes: proc_status_bytes("VmRSS:"),
        hwm_bytes: proc_status_bytes("VmHWM:"),
    })
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// A figure from /proc/self/status, in bytes (0 where there is none).
fn proc_status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
    kib.unwrap_or(0) * 1024
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}
