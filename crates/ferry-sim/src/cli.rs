//! The `ferry sim` command: flags, reading the input files, running the simulation and printing its report. The
//! binary only forwards to `run`; exit codes are 0 (done), 64 (bad input, named by file, line and field) and 70 (the
//! checker found a broken promise; the message gives the seed and a command that replays it).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use clap::{Args, ValueEnum};
use ferry_core::order::UNKNOWN_RUNTIME_S_DEFAULT;
use ferry_core::{GpuPlacement, QueueOrder};

use crate::cluster::{self, Cluster};
use crate::engine::{self, CheckConfig, Fault, ReplayConfig};
use crate::error::{InputError, SimError};
use crate::fgd;
use crate::predictions::Predictions;
use crate::report::{self, FgdReport, Inputs, OrderFigures, Report};
use crate::synth::{self, SynthSpec};
use crate::workload::{self, Workload};

/// The run finished and its report was printed.
pub const EXIT_OK: i32 = 0;
/// An input file or flag is wrong; the message names the file, line and field.
pub const EXIT_INPUT: i32 = 64;
/// The checker found a violation; the message gives the seed and step, and the command that replays them.
pub const EXIT_CHECKER: i32 = 70;

/// The largest input file read, so that a wrong path (a disk image, say) fails at once.
pub const INPUT_BYTES_MAX: u64 = 1 << 30;
/// The most seeds one command runs.
pub const SEEDS_MAX: u64 = 100_000;
/// How many seeds the FGD experiment runs when `--seeds` is not given: as many as the published results used.
pub const FGD_SEEDS_DEFAULT: u64 = 10;

/// How GPU jobs choose among the nodes that can hold them (the core's `GpuPlacement`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Placement {
    BestFit,
    Fgd,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Csv,
}

/// Replay a workload, or run the FGD experiment, through the scheduler core in virtual time.
#[derive(Args, Clone, Debug)]
pub struct SimArgs {
    /// The cluster: pools, teams with their projects, and nodes, in TOML (see crates/ferry-sim/README.md).
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present_any = ["trace_nodes", "synthetic"],
        conflicts_with_all = ["trace_nodes", "synthetic"]
    )]
    pub cluster: Option<PathBuf>,
    /// The cluster from a node list of the Alibaba GPU trace (sn,cpu_milli,memory_mib,gpu,model).
    #[arg(long, value_name = "FILE")]
    pub trace_nodes: Option<PathBuf>,
    /// The workload, in the simple CSV format
    /// (arrival_s,duration_s,gpus,cpus,memory,user,team[,gpu_type][,gpu_share][,priority][,nodes][,project]).
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present_any = ["trace_pods", "synthetic"],
        conflicts_with_all = ["trace_pods", "synthetic"]
    )]
    pub workload: Option<PathBuf>,
    /// The workload from a pod list of the Alibaba GPU trace.
    #[arg(long, value_name = "FILE", conflicts_with = "synthetic")]
    pub trace_pods: Option<PathBuf>,
    /// A seeded synthetic cluster and workload shaped like a public GPU trace, instead of files:
    /// `jobs=70000,nodes=350,load=4,seed=1` (any subset; alone, those defaults). See crates/ferry-sim/README.md.
    #[arg(long, value_name = "SPEC", num_args = 0..=1, default_missing_value = "", conflicts_with = "trace_nodes")]
    pub synthetic: Option<String>,
    /// Run the FGD experiment instead of a replay: tasks sampled from the workload arrive and never depart until
    /// they ask for all the cluster's GPUs; report the share of GPUs allocated.
    #[arg(long)]
    pub fgd: bool,
    /// The seed of the first run; every random choice comes from it, and the same seed replays the same run.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// How many runs, with seeds SEED, SEED+1, ... [default: 10 with --fgd, else 1]
    #[arg(long, value_name = "K")]
    pub seeds: Option<u64>,
    /// How GPU jobs choose among nodes, overriding the cluster file's gpu_placement [default: best-fit].
    #[arg(long, value_enum, value_name = "PLACEMENT")]
    pub gpu_placement: Option<Placement>,
    /// How the queue is ordered within a priority, overriding the cluster file's queue_order: fair-share, fifo,
    /// shortest-first or least-attained [default: fair-share].
    #[arg(long, value_name = "ORDER")]
    pub queue_order: Option<String>,
    /// The aging bound of shortest-first and least-attained: a job that has waited this long goes before every job
    /// that has not (`off` turns aging off) [default: the cluster file's queue_aging, else 1d].
    #[arg(long, value_name = "DURATION", value_parser = aging_ms)]
    pub queue_aging: Option<u64>,
    /// The lease of least-attained: a job that checkpoints (the workload's checkpoint_every_s) runs this long each
    /// time it starts before a job that had less GPU time may stop it (`off`: never stopped for that) [default: the
    /// cluster file's queue_lease, else 10m].
    #[arg(long, value_name = "DURATION", value_parser = lease_ms)]
    pub queue_lease: Option<u64>,
    /// How many blocked jobs, in queue order, hold resources back each cycle, overriding the cluster file's
    /// reserve_depth [default: 64]. Deeper protects more waiting jobs from being passed by smaller ones, at more cost
    /// a cycle.
    #[arg(long, value_name = "N", value_parser = reserve_depth_arg)]
    pub reserve_depth: Option<u32>,
    /// Replay the same workload also in plain FIFO order and in clairvoyant shortest-job-first order (true
    /// durations, no aging), and report their job completion times beside this replay's.
    #[arg(long, conflicts_with = "fgd")]
    pub compare_orders: bool,
    /// The report's format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// The interval of the GPU allocation series, such as 10m [default: one that gives at most 40 samples].
    #[arg(long, value_name = "DURATION", value_parser = duration_ms)]
    pub sample_every: Option<u64>,
    /// How long a job may wait while a node that could hold it sits idle before the checker calls it starved.
    #[arg(long, value_name = "DURATION", value_parser = duration_ms, default_value = "1h")]
    pub starvation_bound: u64,
    /// How long a preempted job keeps running (to save a checkpoint) before it stops and is queued again.
    #[arg(long, value_name = "DURATION", value_parser = duration_ms, default_value = "30s")]
    pub preempt_grace: u64,
    /// Every how many steps the core's own invariant check runs (it walks every running job, so every step makes
    /// long runs quadratic); 0 never. The simulator's outside checks run after every step regardless.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub core_check_every: u64,
    /// Plants a fault in the simulator's ledger at this step, to show the checker at work.
    #[arg(long, value_name = "STEP", hide = true)]
    pub fault_at_step: Option<u64>,
}

fn duration_ms(text: &str) -> Result<u64, String> {
    ferry_units::parse_duration_s(text).map(|s| s.saturating_mul(1000)).map_err(|e| e.0)
}

/// A reserve depth, as the server's configuration takes it: from 1 to `RESERVE_DEPTH_MAX`.
pub(crate) fn reserve_depth(n: i64) -> Result<u32, String> {
    match u32::try_from(n) {
        Ok(depth) if (1..=ferry_core::RESERVE_DEPTH_MAX).contains(&depth) => Ok(depth),
        _ => Err(format!(
            "a reserve depth of {n}: how many blocked jobs hold resources back each cycle must be from 1 to {} (the \
             default is {})",
            ferry_core::RESERVE_DEPTH_MAX,
            ferry_core::RESERVE_DEPTH_DEFAULT
        )),
    }
}

fn reserve_depth_arg(text: &str) -> Result<u32, String> {
    reserve_depth(text.parse().map_err(|_| format!("{text:?} is not a whole number"))?)
}

/// An aging bound: a duration, or `off` (0).
fn aging_ms(text: &str) -> Result<u64, String> {
    match text {
        "off" | "0" => Ok(0),
        _ => duration_ms(text).map_err(|e| format!("{e}, or off for no aging")),
    }
}

/// A lease: a duration, or `off` (0).
fn lease_ms(text: &str) -> Result<u64, String> {
    match text {
        "off" => Ok(0),
        _ => duration_ms(text).map_err(|e| format!("{e}, or off for no preemption")),
    }
}

/// Runs `ferry sim`, printing to stdout and stderr; returns the exit code.
pub fn run(args: &SimArgs) -> i32 {
    run_with(args, &mut std::io::stdout().lock(), &mut std::io::stderr().lock())
}

/// Runs `ferry sim`, printing the report to `out` and errors to `err`; returns the exit code.
pub fn run_with(args: &SimArgs, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let report = match simulate(args) {
        Ok(report) => report,
        Err(SimError::Checker(v)) => {
            let _ = writeln!(err, "error: {v}");
            let _ = writeln!(err, "replay it with: {}", command_line(args, v.seed));
            return EXIT_CHECKER;
        }
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return EXIT_INPUT;
        }
    };
    let text = match args.format {
        Format::Table => report::table(&report),
        Format::Json => serde_json::to_string_pretty(&report).unwrap_or_default() + "\n",
        Format::Csv => report::csv(&report),
    };
    match out.write_all(text.as_bytes()) {
        Ok(()) => EXIT_OK,
        // A closed pipe (`ferry sim ... | head`) is not the simulation's failure.
        Err(_) => EXIT_OK,
    }
}

/// Reads the inputs, runs every seed and builds the report.
pub fn simulate(args: &SimArgs) -> Result<Report, SimError> {
    let (mut cluster, cluster_name) = load_cluster(args)?;
    match args.gpu_placement {
        Some(Placement::BestFit) => cluster.gpu_placement = GpuPlacement::BestFit,
        Some(Placement::Fgd) => cluster.gpu_placement = GpuPlacement::Fgd,
        None => {}
    }
    if args.queue_order.is_some() || args.queue_aging.is_some() {
        let name = args.queue_order.clone().unwrap_or_else(|| cluster.queue_order.name().to_string());
        let mut order = QueueOrder::configure(&name, args.queue_aging.map(|ms| ms / 1000))
            .map_err(|e| SimError::Usage(format!("--queue-order/--queue-aging: {e}")))?;
        // Where the order stays least-attained, the cluster file's levels and lease stay with it.
        if let (
            QueueOrder::LeastAttained { levels_gpu_s: file_levels, lease_s: file_lease, .. },
            QueueOrder::LeastAttained { levels_gpu_s, lease_s, .. },
        ) = (&cluster.queue_order, &mut order)
        {
            levels_gpu_s.clone_from(file_levels);
            *lease_s = *file_lease;
        }
        cluster.queue_order = order;
    }
    if let Some(lease_ms) = args.queue_lease {
        let lease = (lease_ms > 0).then_some(lease_ms / 1000);
        cluster.queue_order = cluster
            .queue_order
            .clone()
            .with_lease(lease)
            .map_err(|e| SimError::Usage(format!("--queue-lease: {e}")))?;
    }
    if let Some(depth) = args.reserve_depth {
        cluster.reserve_depth = Some(depth);
    }
    let workload = load_workload(args)?;
    let count = args.seeds.unwrap_or(if args.fgd { FGD_SEEDS_DEFAULT } else { 1 });
    if count == 0 || count > SEEDS_MAX {
        return Err(SimError::Usage(format!("--seeds {count}: run 1 to {SEEDS_MAX} seeds")));
    }
    let seeds: Vec<u64> = (0..count).map(|k| args.seed.wrapping_add(k)).collect();
    let inputs = Inputs {
        cluster: cluster_name,
        workload: workload.file.clone(),
        nodes: cluster.nodes.len() as u64,
        gpus: cluster.gpus(),
        elastic_nodes_max: cluster.elastic_nodes_max(),
        gpu_placement: cluster.gpu_placement,
    };
    let check = CheckConfig {
        starvation_bound_ms: args.starvation_bound,
        core_check_every: args.core_check_every,
        fault: args.fault_at_step.map(|at_step| Fault::OverbookCpu { at_step }),
    };
    if args.fgd {
        fgd::check_inputs(&cluster, &workload.jobs)?;
        let runs = for_seeds(&seeds, |seed| Ok(fgd::run(&cluster, &workload.jobs, seed, &check)?))?;
        return Ok(Report::Fgd(FgdReport::new(inputs, workload.jobs.len() as u64, runs)));
    }
    workload::check_fits(&workload, &cluster)?;
    let has_failures = !cluster.failures.is_empty() || workload.has_lifecycle();
    let runs = for_seeds(&seeds, |seed| {
        let config =
            ReplayConfig { seed, preempt_grace_ms: args.preempt_grace, check, predictions: Predictions::Learned };
        let run = engine::replay(&cluster, &workload, &config)?;
        let mut report = report::replay_report(&run, &cluster, has_failures, args.sample_every)?;
        if args.compare_orders {
            let others = [
                ("fifo".to_string(), QueueOrder::Fifo, Predictions::Learned),
                (
                    "shortest-first (clairvoyant, no aging)".to_string(),
                    QueueOrder::ShortestFirst { aging_s: 0, unknown_runtime_s: UNKNOWN_RUNTIME_S_DEFAULT },
                    Predictions::Clairvoyant,
                ),
            ];
            for (name, order, predictions) in others {
                let cluster = Cluster { queue_order: order, ..cluster.clone() };
                let run = engine::replay(&cluster, &workload, &ReplayConfig { predictions, ..config })?;
                let other = report::replay_report(&run, &cluster, has_failures, args.sample_every)?;
                report.compared.push(OrderFigures::of(name, &other));
            }
        }
        Ok(report)
    })?;
    Ok(Report::Replay { inputs, runs })
}

/// Runs one simulation per seed, on as many threads as there are cores; seeds are independent, so the results are
/// the same as one after another. They come back in seed order, and the error of the first failing seed wins.
fn for_seeds<T: Send>(seeds: &[u64], run: impl Fn(u64) -> Result<T, SimError> + Sync) -> Result<Vec<T>, SimError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, seeds.len().max(1));
    let next = AtomicUsize::new(0);
    let mut results: Vec<(usize, Result<T, SimError>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&seed) = seeds.get(i) else { break done };
                        done.push((i, run(seed)));
                    }
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
    });
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

/// The synthetic spec, if the run asks for one.
fn synthetic_spec(args: &SimArgs) -> Result<Option<SynthSpec>, SimError> {
    let Some(text) = &args.synthetic else { return Ok(None) };
    SynthSpec::parse(text).map(Some).map_err(|e| SimError::Usage(format!("--synthetic {text:?}: {e}")))
}

fn load_cluster(args: &SimArgs) -> Result<(Cluster, String), SimError> {
    if let Some(spec) = synthetic_spec(args)? {
        return Ok((synth::cluster(&spec), format!("synthetic({})", spec.describe())));
    }
    match (&args.cluster, &args.trace_nodes) {
        (Some(path), _) => {
            let (name, text) = read(path)?;
            Ok((cluster::parse_cluster_toml(&name, &text)?, name))
        }
        (None, Some(path)) => {
            let (name, text) = read(path)?;
            Ok((cluster::parse_trace_nodes(&name, &text)?, name))
        }
        (None, None) => Err(SimError::Usage("give the cluster with --cluster FILE or --trace-nodes FILE".to_string())),
    }
}

fn load_workload(args: &SimArgs) -> Result<Workload, SimError> {
    if let Some(spec) = synthetic_spec(args)? {
        return Ok(synth::workload(&spec));
    }
    match (&args.workload, &args.trace_pods) {
        (Some(path), _) => {
            let (name, text) = read(path)?;
            Ok(workload::parse_workload_csv(&name, &text)?)
        }
        (None, Some(path)) => {
            let (name, text) = read(path)?;
            Ok(workload::parse_trace_pods(&name, &text)?)
        }
        (None, None) => Err(SimError::Usage("give the workload with --workload FILE or --trace-pods FILE".to_string())),
    }
}

/// Reads a whole input file as text; the name is the path as the user gave it.
fn read(path: &Path) -> Result<(String, String), SimError> {
    let name = path.display().to_string();
    let io = |source| SimError::Read { path: name.clone(), source };
    let size = std::fs::metadata(path).map_err(io)?.len();
    if size > INPUT_BYTES_MAX {
        return Err(SimError::Usage(format!(
            "{name} is {size} bytes, more than the {INPUT_BYTES_MAX} an input may have"
        )));
    }
    let bytes = std::fs::read(path).map_err(io)?;
    match String::from_utf8(bytes) {
        Ok(text) => Ok((name, text)),
        Err(e) => {
            let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let line = valid.iter().filter(|&&b| b == b'\n').count() as u64 + 1;
            Err(InputError::new(&name, line, None, "not valid UTF-8 text").into())
        }
    }
}

/// The command that replays one seed of this run.
pub fn command_line(args: &SimArgs, seed: u64) -> String {
    let mut words = vec!["ferry".to_string(), "sim".to_string()];
    let mut path = |flag: &str, value: &Option<PathBuf>| {
        if let Some(p) = value {
            words.push(flag.to_string());
            words.push(shell_quote(&p.display().to_string()));
        }
    };
    path("--cluster", &args.cluster);
    path("--trace-nodes", &args.trace_nodes);
    path("--workload", &args.workload);
    path("--trace-pods", &args.trace_pods);
    if let Some(spec) = &args.synthetic {
        words.push("--synthetic".to_string());
        if !spec.is_empty() {
            words.push(shell_quote(spec));
        }
    }
    if args.fgd {
        words.push("--fgd".to_string());
    }
    if let Some(placement) = args.gpu_placement {
        let name = placement.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default();
        words.extend(["--gpu-placement".to_string(), name]);
    }
    if let Some(order) = &args.queue_order {
        words.extend(["--queue-order".to_string(), shell_quote(order)]);
    }
    if let Some(aging) = args.queue_aging {
        let aging = if aging == 0 { "off".to_string() } else { format!("{}s", aging / 1000) };
        words.extend(["--queue-aging".to_string(), aging]);
    }
    if let Some(lease) = args.queue_lease {
        let lease = if lease == 0 { "off".to_string() } else { format!("{}s", lease / 1000) };
        words.extend(["--queue-lease".to_string(), lease]);
    }
    if let Some(depth) = args.reserve_depth {
        words.extend(["--reserve-depth".to_string(), depth.to_string()]);
    }
    if args.compare_orders {
        words.push("--compare-orders".to_string());
    }
    words.extend(["--seed".to_string(), seed.to_string(), "--seeds".to_string(), "1".to_string()]);
    words.extend(["--starvation-bound".to_string(), format!("{}s", args.starvation_bound / 1000)]);
    words.extend(["--preempt-grace".to_string(), format!("{}s", args.preempt_grace / 1000)]);
    words.extend(["--core-check-every".to_string(), args.core_check_every.to_string()]);
    if let Some(step) = args.fault_at_step {
        words.extend(["--fault-at-step".to_string(), step.to_string()]);
    }
    words.join(" ")
}

fn shell_quote(word: &str) -> String {
    if !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:@%+,".contains(c)) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}
