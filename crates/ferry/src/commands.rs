//! The client commands: each parses its flags, calls the API through `ferry-client`, and prints for people or,
//! with `--json`, for programs.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use clap::Args;
use ferry_api::code::CodeSpec;
use ferry_api::jobs::{Job, JobState, PriorityClass, SubmitJob};
use ferry_api::nodes::NodeState;
use ferry_api::reasons::TimelineReason;
use ferry_client::JobQuery;
use ferry_units::{parse_cpus, parse_duration_s, parse_gpus, parse_memory};
use futures_util::StreamExt;

use crate::exit::{self, CliError};
use crate::format;
use crate::pack;
use crate::Global;

/// Environment variables a job inherits from the shell that submits it, so that `ferry run python ...` finds the
/// same interpreter (a virtualenv or conda env) as the user's own shell. Everything else must be passed with --env,
/// so that secrets in the shell never reach the server by accident.
const INHERITED_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "VIRTUAL_ENV",
    "CONDA_PREFIX",
    "CONDA_DEFAULT_ENV",
    "PYTHONPATH",
    "LD_LIBRARY_PATH",
];
/// How long one wait request is held; a follow loops on it.
const WAIT_SLICE: Duration = Duration::from_secs(30);

#[derive(Args)]
pub struct RunArgs {
    /// GPUs for the job, such as 2; or a share of one GPU, such as 0.5. It sees exactly its GPUs through
    /// CUDA_VISIBLE_DEVICES.
    #[arg(long, default_value = "0")]
    gpus: String,
    /// Only on these GPU models (such as A100); repeat or separate with commas.
    #[arg(long = "gpu-type", value_delimiter = ',')]
    gpu_types: Vec<String>,
    /// Only on nodes with this label, NAME=VALUE; repeatable.
    #[arg(long = "selector", value_name = "NAME=VALUE")]
    selector: Vec<String>,
    /// Run only in this pool (as `ferry nodes` lists them); by default the scheduler chooses by the pools' order.
    #[arg(long, value_name = "NAME")]
    pool: Option<String>,
    /// Run on this many nodes at once: a gang of workers, each with the GPUs, CPUs and memory asked for, started all
    /// together or not at all. Each worker gets FERRY_NODE_RANK, FERRY_NUM_NODES, MASTER_ADDR, MASTER_PORT, the
    /// variables `torchrun` reads (PET_*) and TF_CONFIG.
    #[arg(long, default_value_t = 1)]
    nodes: u32,
    /// CPUs, such as 2, 0.5 or 250m (default 1).
    #[arg(long, allow_hyphen_values = true)]
    cpus: Option<String>,
    /// Memory, such as 8GiB or 512MiB (default 1GiB).
    #[arg(long, allow_hyphen_values = true)]
    memory: Option<String>,
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    project: Option<String>,
    /// The team whose quota the job counts against.
    #[arg(long)]
    team: Option<String>,
    /// low, normal, high or urgent.
    #[arg(long, default_value = "normal")]
    priority: String,
    /// Extra environment variables, NAME=VALUE; repeatable.
    #[arg(long = "env", value_name = "NAME=VALUE")]
    env: Vec<String>,
    /// A stored secret the job reads from its environment (`ferry secret set NAME` first): `--secret HF_TOKEN`, or
    /// `--secret VAR=NAME` to read secret NAME as $VAR; repeatable. Yours first, else the project's; the value is
    /// never shown.
    #[arg(long = "secret", value_name = "NAME")]
    secrets: Vec<String>,
    /// Run again this many times after a failure or a lost node.
    #[arg(long, default_value_t = 0)]
    retries: u32,
    /// Stop the job after this long, such as 30m or 2h.
    #[arg(long)]
    max_runtime: Option<String>,
    /// The job saves checkpoints and resumes from its latest when it starts again. Under the least-attained queue
    /// order, a job that has had less GPU time may then stop it (after its lease, ten minutes by default); it gets
    /// SIGTERM and its grace period to save one, and is queued again.
    #[arg(long)]
    checkpoints: bool,
    /// Stream the job's output and exit with its exit code.
    #[arg(long, short = 'f')]
    follow: bool,
    /// Ship nothing: run in this folder, which must exist on the node (an absolute path).
    #[arg(long, conflicts_with = "no_code")]
    workdir: Option<String>,
    /// Ship nothing: run in an empty folder of the job's own on the node.
    #[arg(long)]
    no_code: bool,
    /// Run the command in a container of this image, such as localhost/busybox:ferry, through the node's container
    /// engine (Podman or Docker). The job's GPUs, CPU and memory limits apply to the container, and its working
    /// directory (the shipped code) is mounted at the same path. The node must have the image or be able to pull it.
    #[arg(long, value_name = "IMAGE")]
    image: Option<String>,
    /// The MLflow experiment of the job's run (made if missing); by default the job's project, else `Default`.
    #[arg(long, value_name = "NAME")]
    experiment: Option<String>,
    /// The program and its arguments, after `--`.
    #[arg(last = true)]
    command: Vec<String>,
}

pub async fn run(g: &Global, args: RunArgs) -> Result<i32, CliError> {
    let invalid = |e: ferry_units::UnitError| CliError::new(exit::INVALID, e.0);
    let (gpus, gpu_share_milli) = parse_gpus(&args.gpus).map_err(invalid)?;
    let selector = pairs(&args.selector, "--selector")?;
    let mut spec = SubmitJob {
        command: args.command,
        workdir: String::new(),
        code: None,
        name: args.name,
        project: args.project,
        team: args.team,
        env: job_env(&args.env)?,
        secrets: job_secrets(&args.secrets)?,
        gpu_share_milli: (gpu_share_milli > 0).then_some(gpu_share_milli),
        gpu_types: args.gpu_types,
        selector,
        pool: args.pool,
        cpu_millis: args.cpus.as_deref().map(parse_cpus).transpose().map_err(invalid)?,
        memory_bytes: args.memory.as_deref().map(parse_memory).transpose().map_err(invalid)?,
        gpus: Some(gpus),
        priority: Some(PriorityClass::parse(&args.priority).ok_or_else(|| {
            CliError::new(
                exit::INVALID,
                format!("`{}` is not a priority; use low, normal, high or urgent", args.priority),
            )
        })?),
        retries: Some(args.retries),
        max_runtime_s: args.max_runtime.as_deref().map(parse_duration_s).transpose().map_err(invalid)?,
        nodes: (args.nodes != 1).then_some(args.nodes),
        image: args.image,
        experiment: args.experiment,
        checkpoints: args.checkpoints,
    };
    if spec.command.is_empty() {
        return Err(CliError::new(
            exit::INVALID,
            "no command given; put it after `--`, as in `ferry run -- python train.py`",
        ));
    }
    let client = g.client()?;
    match (args.workdir, args.no_code) {
        (Some(workdir), _) => {
            if !std::path::Path::new(&workdir).is_absolute() {
                return Err(CliError::new(
                    exit::INVALID,
                    format!("--workdir `{workdir}` must be an absolute path that exists on the node"),
                ));
            }
            spec.workdir = workdir;
        }
        (None, true) => {}
        (None, false) => spec.code = Some(ship(&client).await?),
    }
    let id = client.submit(&spec).await?.id;
    if !args.follow {
        println!("{id}");
        return Ok(0);
    }
    eprintln!("job {id} submitted");
    follow(&client, id).await
}

/// Packs the current folder, uploads it unless the server already holds the same bytes, and says on stderr what
/// was shipped.
pub(crate) async fn ship(client: &ferry_client::Client) -> Result<CodeSpec, CliError> {
    let root = std::env::current_dir()
        .map_err(|e| CliError::new(exit::INVALID, format!("cannot read the current directory: {e}")))?;
    let packing = tokio::task::spawn_blocking(move || pack::pack(&root).map(|packed| (packed, pack::git_state(&root))));
    let (packed, git) = packing
        .await
        .map_err(|e| CliError::new(exit::INTERNAL, format!("packing the folder failed: {e}")))?
        .map_err(|e| CliError::new(exit::INVALID, e.to_string()))?;
    if !packed.skipped_links.is_empty() {
        eprintln!("{}", pack::skipped_links_warning(&packed.skipped_links));
    }
    let size = packed.archive.len() as u64;
    let uploaded = if client.has_code(&packed.sha256).await? {
        false
    } else {
        client.upload_code(&packed.sha256, packed.archive).await?.created
    };
    let git_note = match &git {
        Some(git) if git.diff.is_some() => format!("git {} + uncommitted changes", short(&git.commit)),
        Some(git) => format!("git {}", short(&git.commit)),
        None => "not a git checkout".to_string(),
    };
    let stored = if uploaded { "" } else { "; already on the server" };
    eprintln!("shipped {} (sha256 {}, {git_note}{stored})", pack::human(size), short(&packed.sha256));
    Ok(CodeSpec {
        sha256: packed.sha256,
        git_commit: git.as_ref().map(|g| g.commit.clone()),
        git_diff: git.and_then(|g| g.diff),
    })
}

fn short(digest: &str) -> &str {
    &digest[..digest.len().min(12)]
}

fn job_env(given: &[String]) -> Result<BTreeMap<String, String>, CliError> {
    let mut env: BTreeMap<String, String> =
        INHERITED_ENV.iter().filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v))).collect();
    env.extend(pairs(given, "--env")?);
    Ok(env)
}

/// Parses repeated NAME=VALUE flags.
fn pairs(given: &[String], flag: &str) -> Result<BTreeMap<String, String>, CliError> {
    given
        .iter()
        .map(|pair| {
            let (k, v) = pair.split_once('=').filter(|(k, _)| !k.is_empty()).ok_or_else(|| {
                CliError::new(exit::INVALID, format!("`{pair}` is not NAME=VALUE; write {flag} NAME=VALUE"))
            })?;
            Ok((k.to_string(), v.to_string()))
        })
        .collect()
}

/// Streams a job's output until it ends, then returns the exit code `ferry run --follow` exits with.
async fn follow(client: &ferry_client::Client, id: u64) -> Result<i32, CliError> {
    let job = client.job(id).await?;
    if let Some(waiting) = &job.waiting {
        eprintln!("job {id} is waiting: {}", waiting.message);
    }
    stream_logs(client, id, true, None, 0).await?;
    let mut job = client.wait_job(id, WAIT_SLICE).await?;
    while !job.state.is_terminal() {
        job = client.wait_job(id, WAIT_SLICE).await?;
    }
    if let Some(why) = ending(&job) {
        eprintln!("job {id} {why}");
    }
    Ok(job_exit_code(&job))
}

/// Why a followed job ended without an exit code of its own, for the line `ferry run --follow` prints before it
/// exits with a code that says the same: a stop at its maximum runtime, a signal, a cancel, a lost node.
fn ending(job: &Job) -> Option<String> {
    match (job.state, job.exit_code, job.signal) {
        (JobState::TimedOut, _, _) => Some(match job.max_runtime_s {
            Some(s) => {
                format!("was stopped at its maximum runtime ({}); exit code 124", format::span(s as i64 * 1_000_000))
            }
            None => "was stopped at its maximum runtime; exit code 124".to_string(),
        }),
        (_, None, Some(signal)) => Some(format!("was killed by signal {signal}; exit code {}", 128 + signal)),
        (JobState::Cancelled, _, _) => Some(format!("was cancelled; exit code {}", exit::JOB_DID_NOT_FINISH)),
        (JobState::Lost, _, _) => Some(format!("was lost with its node; exit code {}", exit::JOB_DID_NOT_FINISH)),
        _ => None,
    }
}

/// The exit code that stands for a finished job: its own, 128 + signal, or Ferry's codes for jobs without one.
fn job_exit_code(job: &Job) -> i32 {
    match (job.state, job.exit_code, job.signal) {
        (JobState::TimedOut, _, _) => exit::TIMED_OUT,
        (_, Some(code), _) => code,
        (_, None, Some(signal)) => 128 + signal,
        (JobState::Succeeded, None, None) => 0,
        _ => exit::JOB_DID_NOT_FINISH,
    }
}

async fn stream_logs(
    client: &ferry_client::Client,
    id: u64,
    follow: bool,
    attempt: Option<u32>,
    rank: u32,
) -> Result<(), CliError> {
    let mut offset = 0u64;
    // A followed stream may break when the server restarts; pick up at the same byte.
    loop {
        let mut stream = client.logs(id, offset, follow, attempt, rank).await?;
        let mut stdout = std::io::stdout().lock();
        let mut broke = false;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => {
                    offset += bytes.len() as u64;
                    if stdout.write_all(&bytes).and_then(|()| stdout.flush()).is_err() {
                        // The reader went away (a closed pipe): nothing more to do.
                        return Ok(());
                    }
                }
                Err(_) => {
                    broke = true;
                    break;
                }
            }
        }
        if !broke || !follow {
            return Ok(());
        }
        drop(stdout);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[derive(Args)]
pub struct PsArgs {
    /// Include finished jobs.
    #[arg(long, short = 'a')]
    all: bool,
    /// Only jobs in this state (queued, starting, running, succeeded, failed, cancelled, timed_out, lost).
    #[arg(long)]
    state: Option<String>,
    /// The most jobs to list, newest first.
    #[arg(long, default_value_t = 500)]
    limit: u32,
    /// Only jobs of this user.
    #[arg(long)]
    owner: Option<String>,
    /// Only jobs of this team.
    #[arg(long)]
    team: Option<String>,
    /// Only jobs of this project.
    #[arg(long)]
    project: Option<String>,
    /// Only jobs placed in this pool.
    #[arg(long)]
    pool: Option<String>,
    /// Only jobs submitted within this long (`2h`, `7d`) or since this time (RFC 3339).
    #[arg(long)]
    since: Option<String>,
    /// Only jobs older than this job id: the next page after a listing that ended at it.
    #[arg(long, value_name = "ID")]
    before: Option<u64>,
    #[arg(long)]
    json: bool,
}

pub async fn ps(g: &Global, args: PsArgs) -> Result<i32, CliError> {
    if let Some(state) = &args.state {
        if JobState::parse(state).is_none() {
            let names: Vec<&str> = JobState::ALL.iter().map(|s| s.name()).collect();
            return Err(CliError::new(
                exit::INVALID,
                format!("`{state}` is not a job state; use one of {}", names.join(", ")),
            ));
        }
    }
    let query = JobQuery {
        state: args.state,
        all: args.all,
        limit: Some(args.limit),
        owner: args.owner,
        team: args.team,
        project: args.project,
        pool: args.pool,
        since: args.since,
        before: args.before,
    };
    let list = g.client()?.jobs(&query).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list).expect("wire types serialize"));
        return Ok(0);
    }
    let now = format::now_us();
    let rows: Vec<Vec<String>> = list
        .jobs
        .iter()
        .map(|j| {
            vec![
                j.id.to_string(),
                j.name.clone().unwrap_or_else(|| "-".into()),
                j.state.name().to_string(),
                j.node.clone().unwrap_or_else(|| "-".into()),
                j.gpus.to_string(),
                format::cpus(j.cpu_millis),
                format::bytes(j.memory_bytes),
                format::span(now - j.submitted_at_us),
                format::command(&j.command, 48),
            ]
        })
        .collect();
    print!("{}", format::table(&["ID", "NAME", "STATE", "NODE", "GPUS", "CPUS", "MEMORY", "AGE", "COMMAND"], &rows));
    Ok(0)
}

#[derive(Args)]
pub struct ShowArgs {
    id: String,
    #[arg(long)]
    json: bool,
    /// Print only the uncommitted changes (`git diff HEAD`) the job's code was shipped with.
    #[arg(long, conflicts_with = "json")]
    diff: bool,
    /// Print only what Ferry submitted to the job's engine: the Slurm batch script, the Ray submission, the
    /// `spark-submit` command line.
    #[arg(long, conflicts_with_all = ["json", "diff"])]
    native: bool,
}

fn parse_id(text: &str) -> Result<u64, CliError> {
    text.parse().map_err(|_| {
        CliError::new(exit::INVALID, format!("`{text}` is not a job id; job ids are numbers, as `ferry ps` shows them"))
    })
}

pub async fn show(g: &Global, args: ShowArgs) -> Result<i32, CliError> {
    let id = parse_id(&args.id)?;
    if args.diff {
        print!("{}", g.client()?.job_diff(id).await?);
        return Ok(0);
    }
    let job = g.client()?.job(id).await?;
    if args.native {
        let Some(native) = &job.native else {
            let place = job.node.as_deref().map(|n| format!(" (it ran on node {n})")).unwrap_or_default();
            return Err(CliError::new(
                exit::INVALID,
                format!(
                    "job {id} was not run by an engine{place}; --native applies to jobs on Slurm, Ray and Spark pools"
                ),
            ));
        };
        print!("{}", native.spec);
        if !native.spec.ends_with('\n') {
            println!();
        }
        return Ok(0);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&job).expect("wire types serialize"));
        return Ok(0);
    }
    let mut text = describe(&job);
    // A job on a cloud machine: when that machine was asked for and joined.
    if let Some(words) = cloud_words(g, &job).await {
        text = text.replacen("\nPlaced:       ", &format!("\nCloud node:   {words}\nPlaced:       "), 1);
    }
    print!("{text}");
    Ok(0)
}

/// For a job placed on a node of an elastic pool: which machine it is and how long ago it was asked for and joined.
async fn cloud_words(g: &Global, job: &Job) -> Option<String> {
    let node = job.node.as_deref()?;
    let pools = g.client().ok()?.pools().await.ok()?;
    let machine = pools
        .pools
        .iter()
        .filter_map(|p| p.elastic.as_ref())
        .find_map(|e| e.machines.iter().find(|m| m.node == node).map(|m| (e, m)));
    let (e, m) = machine?;
    let now = format::now_us();
    let joined = m.joined_at_us.map(|at| format!("started {} ago, ", format::span(now - at))).unwrap_or_default();
    let at = m.zone.as_deref().map(|z| format!(" in {z}")).unwrap_or_default();
    Some(format!(
        "{node}: {joined}asked for {} ago; {} {} {}{at} at {:.2}/h",
        format::span(now - m.requested_at_us),
        e.provider,
        e.market,
        e.instance_type,
        e.price_hour
    ))
}

fn describe(j: &Job) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<14}{v}\n"));
    line("Job:", format!("{}{}", j.id, j.name.as_ref().map(|n| format!(" ({n})")).unwrap_or_default()));
    line("State:", j.state.name().to_string());
    if let Some(w) = &j.waiting {
        line("Waiting:", w.message.clone());
        if let ferry_api::reasons::WaitReason::ElasticCoolingDown { pool, until_us, .. } = &w.reason {
            let left = format::span((until_us - format::now_us()).max(0));
            line("Cloud:", format!("pool {pool} is asked again in {left} (`ferry pools` shows why)"));
        }
        let estimate = match w.estimated_start_us {
            Some(at) if at <= format::now_us() => "now".to_string(),
            Some(at) => format!(
                "in about {} ({} UTC){}",
                format::span(at - format::now_us()),
                format::timestamp(at),
                if w.estimate_predicted {
                    ", if the jobs ahead without --max-runtime run as long as their earlier runs"
                } else {
                    ""
                }
            ),
            None => format!("unknown: {}", w.no_estimate.as_deref().unwrap_or("no forecast could be made")),
        };
        line("Starts:", estimate);
    }
    if let Some(m) = &j.message {
        line("Reason:", m.clone());
    }
    if let Some(p) = &j.predicted_runtime {
        let basis = match p.basis.as_str() {
            "same_kind" => "of the same name, command, project and resources",
            _ => "with the same name (other commands or resources)",
        };
        let runs = if p.samples == 1 { "run".to_string() } else { format!("{} runs", p.samples) };
        let mut text = format!(
            "about {} (90th percentile of the last {runs} {basis})",
            format::span(p.runtime_s as i64 * 1_000_000)
        );
        if let (Some(start), Some(end), JobState::Succeeded) = (j.started_at_us, j.finished_at_us, j.state) {
            text += &format!("; it ran {}", format::span(end - start));
        }
        line("Expected run:", text);
    }
    line("Command:", format::command(&j.command, 200));
    if let Some(image) = &j.image {
        line("Image:", image.clone());
    }
    let directory = match &j.code {
        Some(code) => {
            let git = match &code.git_commit {
                Some(commit) if code.git_dirty => format!(", git {} + uncommitted changes", short(commit)),
                Some(commit) => format!(", git {}", short(commit)),
                None => String::new(),
            };
            format!("shipped code, {} (sha256 {}{git})", pack::human(code.size_bytes), short(&code.sha256))
        }
        None if j.workdir.is_empty() => "an empty folder of its own on the node (--no-code)".to_string(),
        None => j.workdir.clone(),
    };
    line("Directory:", directory);
    line("Owner:", j.owner.clone());
    if let Some(p) = &j.project {
        line("Project:", p.clone());
    }
    if let Some(t) = &j.team {
        line("Team:", t.clone());
    }
    if !j.secrets.is_empty() {
        // Names only: the values never leave the server but for the job itself.
        let named: Vec<String> = j
            .secrets
            .iter()
            .map(|(var, name)| if var == name { var.clone() } else { format!("{var} (from {name})") })
            .collect();
        line("Secrets:", named.join(", "));
    }
    line("Priority:", j.priority.name().to_string());
    let gpus = if j.gpu_share_milli > 0 {
        format!("{} of a GPU", format::cpus(j.gpu_share_milli as u64))
    } else {
        format!("{} GPUs", j.gpus)
    };
    line("Requests:", format!("{gpus}, {} CPUs, {} memory", format::cpus(j.cpu_millis), format::bytes(j.memory_bytes)));
    if !j.gpu_types.is_empty() || !j.selector.is_empty() {
        let mut only = j.gpu_types.clone();
        only.extend(j.selector.iter().map(|(k, v)| format!("{k}={v}")));
        line("Only on:", only.join(", "));
    }
    if let Some(s) = j.max_runtime_s {
        line("Max runtime:", format::span(s as i64 * 1_000_000));
    }
    line("Attempt:", format!("{} of {}", j.attempt + 1, j.retries + 1));
    if j.checkpoints {
        line(
            "Checkpoints:",
            "resumes from its latest (least-attained may pause it for jobs that had less GPU time)".into(),
        );
    }
    if j.preemptions > 0 || j.attained_gpu_s > 0 {
        let hours = j.attained_gpu_s as f64 / 3600.0;
        let stops = match j.preemptions {
            0 => String::new(),
            1 => ", preempted once".to_string(),
            n => format!(", preempted {n} times"),
        };
        line("Earlier runs:", format!("{hours:.1} GPU-hours{stops}"));
    }
    let gpu_list = |ids: &[u32]| match ids {
        [] => "none".to_string(),
        ids => ids.iter().map(|g| g.to_string()).collect::<Vec<_>>().join(","),
    };
    if j.nodes > 1 {
        line("Nodes:", format!("{} workers, each with the requests above", j.nodes));
    }
    if j.workers.is_empty() {
        if let Some(node) = &j.node {
            line("Node:", format!("{node} (GPUs: {})", gpu_list(&j.gpu_ids)));
        }
    }
    // How the scheduler chose, from the latest placement's reason (entries older than stored reasons have none).
    let placed = j.timeline.iter().rev().find_map(|e| match &e.reason {
        Some(reason @ TimelineReason::Placed { .. }) => Some(reason),
        _ => None,
    });
    if let Some(words) = placed.and_then(placement_words) {
        line("Placed:", words);
    }
    for w in &j.workers {
        let state = match (&w.end, w.started_at_us) {
            (Some(end), _) => format!("ended: {}", end.message),
            (None, Some(_)) => "running".to_string(),
            (None, None) => "starting".to_string(),
        };
        line(&format!("Worker {}:", w.rank), format!("{} (GPUs: {}), {state}", w.node, gpu_list(&w.gpu_ids)));
    }
    if let Some(native) = &j.native {
        let state = native.state.as_deref().map(|s| format!(", {s}")).unwrap_or_default();
        line(
            "Engine:",
            format!(
                "{} job {}{state} (`ferry show {} --native` shows what was submitted)",
                native.kind, native.id, j.id
            ),
        );
    }
    if let Some(t) = &j.tracking {
        line(
            "MLflow run:",
            format!(
                "{} in experiment {} (`ferry metrics {id}`, `ferry artifacts {id}`)",
                t.run_id,
                t.experiment_id,
                id = j.id
            ),
        );
    }
    match (j.exit_code, j.signal) {
        (Some(code), _) => line("Exit code:", code.to_string()),
        (None, Some(sig)) => line("Signal:", sig.to_string()),
        _ => {}
    }
    match (j.output_removed_at_us, j.nodes) {
        (Some(at), _) => line("Output:", ferry_api::jobs::output_removed_words(j.finished_at_us, at)),
        (None, 1) => line("Output:", format!("{} bytes (`ferry logs {}`)", j.log_bytes, j.id)),
        (None, n) => {
            line("Output:", format!("rank 0: {} bytes (`ferry logs {} --rank 0..{}`)", j.log_bytes, j.id, n - 1))
        }
    }
    out.push_str("Timeline:\n");
    for e in &j.timeline {
        let since = format::precise(e.at_us - j.submitted_at_us);
        out.push_str(&format!("  {}  +{since:<7} {:<10} {}\n", format::timestamp(e.at_us), e.state.name(), e.message));
    }
    out
}

/// A placement's reason in a few words: "in pool onprem, of 3 candidate nodes; backfilled ahead of job 7".
fn placement_words(reason: &TimelineReason) -> Option<String> {
    let TimelineReason::Placed { pool, candidates, backfilled_before, burst_waited_s, burst_past, .. } = reason else {
        return None;
    };
    let mut words =
        format!("in pool {pool}, of {candidates} candidate node{}", if *candidates == 1 { "" } else { "s" });
    if let Some(job) = backfilled_before {
        words += &format!("; backfilled ahead of job {job}, ending by its runtime limit before that job can start");
    }
    if let Some(waited_s) = burst_waited_s {
        words += &format!("; burst after waiting {}", format::span(*waited_s as i64 * 1_000_000));
        if !burst_past.is_empty() {
            let verb = if burst_past.len() == 1 { "was" } else { "were" };
            words += &format!(": {} {verb} fully allocated for it", burst_past.join(", "));
        }
    }
    Some(words)
}

#[derive(Args)]
pub struct LogsArgs {
    id: String,
    /// Keep printing new output until the job ends.
    #[arg(long, short = 'f')]
    follow: bool,
    /// The output of an earlier attempt (0 is the first run); by default the latest.
    #[arg(long)]
    attempt: Option<u32>,
    /// For a multi-node job, the output of this worker (0 is the first); by default rank 0's.
    #[arg(long, default_value_t = 0)]
    rank: u32,
}

pub async fn logs(g: &Global, args: LogsArgs) -> Result<i32, CliError> {
    stream_logs(&g.client()?, parse_id(&args.id)?, args.follow, args.attempt, args.rank).await?;
    Ok(0)
}

#[derive(Args)]
pub struct CancelArgs {
    #[arg(required = true)]
    ids: Vec<String>,
}

pub async fn cancel(g: &Global, args: CancelArgs) -> Result<i32, CliError> {
    let client = g.client()?;
    let mut worst: Option<CliError> = None;
    for text in &args.ids {
        let result = match parse_id(text) {
            Ok(id) => client.cancel(id).await.map_err(CliError::from),
            Err(e) => Err(e),
        };
        match result {
            Ok(job) if job.state.is_terminal() => println!("job {} {}", job.id, job.state.name()),
            Ok(job) => println!("job {} is stopping (SIGTERM now, SIGKILL after the grace period)", job.id),
            Err(e) => {
                eprintln!("error: {}", e.message);
                worst = Some(e);
            }
        }
    }
    match worst {
        // One job: its error was the whole story.
        Some(e) if args.ids.len() == 1 => Err(CliError::new(e.code, String::new())),
        Some(e) => Err(CliError::new(e.code, "some jobs were not cancelled (see above)")),
        None => Ok(0),
    }
}

#[derive(Args)]
pub struct PredictionsArgs {
    /// The period: jobs that succeeded since this time (RFC 3339) or this long ago (`7d`).
    #[arg(long, default_value = "30d")]
    since: String,
    #[arg(long)]
    json: bool,
}

pub async fn predictions(g: &Global, args: PredictionsArgs) -> Result<i32, CliError> {
    let a = g.client()?.prediction_accuracy(&args.since).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&a).expect("wire types serialize"));
        return Ok(0);
    }
    let pct = |share: f64| format!("{:.0}%", share * 100.0);
    println!("Runtime predictions of the jobs that succeeded since {} UTC", format::timestamp(a.since_us));
    if a.jobs == 0 {
        println!("  no job that succeeded in the period had a prediction (a job has one once a run like it succeeded)");
        return Ok(0);
    }
    for (what, value) in [
        ("jobs with a prediction", a.jobs.to_string()),
        ("median error", format!("{:.0}%", a.median_error_pct)),
        ("within 25%", pct(a.within_25_pct)),
        ("within 2x", pct(a.within_2x)),
        ("ran longer than predicted", pct(a.ran_longer)),
    ] {
        println!("  {what:<27}{value}");
    }
    Ok(0)
}

#[derive(Args)]
pub struct NodesArgs {
    #[arg(long)]
    json: bool,
}

pub async fn nodes(g: &Global, args: NodesArgs) -> Result<i32, CliError> {
    let list = g.client()?.nodes().await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list).expect("wire types serialize"));
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = list
        .nodes
        .iter()
        .map(|n| {
            let usage = n.usage.as_ref();
            // The mean over the GPUs that were measured; "-" when none was ("no data", never 0%).
            let gpu_util = usage
                .map(|u| u.gpus.iter().filter_map(|g| g.utilization_percent).collect::<Vec<u32>>())
                .filter(|measured| !measured.is_empty())
                .map(|measured| format!("{}%", measured.iter().sum::<u32>() / measured.len() as u32))
                .unwrap_or_else(|| "-".into());
            vec![
                n.name.clone(),
                n.pool.clone(),
                match n.state {
                    NodeState::Ready => "ready".into(),
                    NodeState::NotReady => "not_ready".into(),
                },
                format!("{}/{}", format::cpus(n.allocated_cpu_millis), format::cpus(n.cpu_millis)),
                usage.map(|u| format::cpus(u.cpu_millis_used)).unwrap_or_else(|| "-".into()),
                format!("{}/{}", format::bytes(n.allocated_memory_bytes), format::bytes(n.memory_bytes)),
                usage.map(|u| format::bytes(u.memory_used_bytes)).unwrap_or_else(|| "-".into()),
                format!("{}/{}", n.allocated_gpus, n.gpus.len()),
                gpu_util,
                n.running_jobs.len().to_string(),
            ]
        })
        .collect();
    let header = [
        "NAME",
        "POOL",
        "STATE",
        "CPUS ALLOC",
        "CPU USED",
        "MEMORY ALLOC",
        "MEM USED",
        "GPUS ALLOC",
        "GPU UTIL",
        "JOBS",
    ];
    print!("{}", format::table(&header, &rows));
    Ok(0)
}

#[derive(Args)]
pub struct PoolsArgs {
    #[arg(long)]
    json: bool,
}

/// The pools in their order: kind, nodes ready, capacity, what its backend can do, and whether an engine pool's
/// engine answers.
pub async fn pools(g: &Global, args: PoolsArgs) -> Result<i32, CliError> {
    let list = g.client()?.pools().await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list).expect("wire types serialize"));
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = list
        .pools
        .iter()
        .map(|p| {
            let engine = match &p.engine {
                None => "-".to_string(),
                Some(h) => {
                    let since = h.since_us.map(|at| format!(" for {}", format::span(format::now_us() - at)));
                    match (h.answering, &h.error) {
                        (true, _) => format!("answering{}", since.unwrap_or_default()),
                        (false, Some(e)) => format!("not answering{}: {e}", since.unwrap_or_default()),
                        (false, None) => "not contacted yet".to_string(),
                    }
                }
            };
            vec![
                p.name.clone(),
                p.kind.clone(),
                p.order.map_or_else(|| "-".to_string(), |o| o.to_string()) + if p.burst { " (burst)" } else { "" },
                format!("{}/{}", p.nodes_ready, p.nodes),
                format::cpus(p.cpu_millis),
                format::bytes(p.memory_bytes),
                p.gpus.to_string(),
                p.capabilities.words().join(", "),
                engine,
            ]
        })
        .collect();
    let header = ["NAME", "KIND", "ORDER", "READY", "CPUS", "MEMORY", "GPUS", "CAPABILITIES", "ENGINE"];
    print!("{}", format::table(&header, &rows));
    for p in &list.pools {
        if let Some(e) = &p.elastic {
            print!("{}", elastic_lines(&p.name, e, format::now_us()));
        }
    }
    Ok(0)
}

#[derive(Args)]
pub struct PoolArgs {
    #[command(subcommand)]
    command: PoolCommand,
}

#[derive(clap::Subcommand)]
enum PoolCommand {
    /// Add a pool from FILE (`-` for standard input), checked as the configuration file's pools are.
    Add { file: std::path::PathBuf },
    /// Replace a pool added at run time with FILE's definition (the name says which).
    Update { file: std::path::PathBuf },
    /// Remove a pool added at run time; it must have no nodes or machines left.
    Remove { name: String },
}

/// `ferry pool add|update|remove`.
pub async fn pool(g: &Global, args: PoolArgs) -> Result<i32, CliError> {
    let read = |file: &std::path::PathBuf| -> Result<String, CliError> {
        let text = if file.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin())
        } else {
            std::fs::read_to_string(file)
        };
        text.map_err(|e| CliError::new(exit::INVALID, format!("cannot read {}: {e}", file.display())))
    };
    let client = g.client()?;
    match args.command {
        PoolCommand::Add { file } => {
            client.add_pool(&read(&file)?).await?;
            println!("pool added");
        }
        PoolCommand::Update { file } => {
            let text = read(&file)?;
            let name = pool_name(&text).ok_or_else(|| {
                CliError::new(exit::INVALID, format!("{}: no `name` of the pool found", file.display()))
            })?;
            client.update_pool(&name, &text).await?;
            println!("pool {name} updated");
        }
        PoolCommand::Remove { name } => {
            client.remove_pool(&name).await?;
            println!("pool {name} removed");
        }
    }
    Ok(0)
}

/// The `name` of the one pool a definition holds, for the path of an update (the server checks the rest).
fn pool_name(text: &str) -> Option<String> {
    let value: toml::Value = toml::from_str(text).ok()?;
    let table = match value.get("pool").and_then(|p| p.as_array()) {
        Some(pools) if pools.len() == 1 => pools[0].clone(),
        _ => value,
    };
    table.get("name")?.as_str().map(str::to_string)
}

/// How many of an elastic pool's latest burst decisions `ferry pools` prints.
const ELASTIC_EVENTS_SHOWN: usize = 5;

/// An elastic pool's cloud under the table: its machines by state, spend, and why it is skipped, if it is.
fn elastic_lines(name: &str, e: &ferry_api::nodes::ElasticPoolStatus, now_us: i64) -> String {
    let mut out = format!(
        "\n{name}: {} {} {} in {} ({}), {:.2}/h each, at most {} machines\n",
        e.provider,
        e.market,
        e.instance_type,
        e.region,
        e.zones.join(", "),
        e.price_hour,
        e.max_nodes
    );
    out.push_str(&format!(
        "  {} starting, {} busy, {} idle, {} releasing; spend so far {:.2} ({:.2}/h now)\n",
        e.starting, e.busy, e.idle, e.releasing, e.spend, e.spend_hour
    ));
    if let (Some(until), Some(reason)) = (e.cooldown_until_us, &e.cooldown_reason) {
        out.push_str(&format!("  skipped for {} more: {reason}\n", format::span(until - now_us)));
    }
    for z in &e.zones_cooling {
        out.push_str(&format!(
            "  zone {} skipped for {} more: {}\n",
            z.zone,
            format::span(z.until_us - now_us),
            z.reason
        ));
    }
    if let Some(error) = &e.last_error {
        out.push_str(&format!("  last error: {error}\n"));
    }
    // The latest burst decisions, newest last (the dashboard charts them all).
    let recent = e.events.len().saturating_sub(ELASTIC_EVENTS_SHOWN);
    for event in &e.events[recent..] {
        let node = event.node.as_deref().map(|n| format!(" {n}")).unwrap_or_default();
        let ago = format::span((now_us - event.at_us).max(0));
        out.push_str(&format!("  {ago} ago: {} {}{node}: {}\n", event.kind, event.nodes, event.detail));
    }
    for m in &e.machines {
        let since = format::span(now_us - m.joined_at_us.unwrap_or(m.requested_at_us));
        let at = match (&m.instance_id, &m.zone) {
            (Some(id), Some(zone)) => format!(" {id} in {zone}"),
            _ => String::new(),
        };
        out.push_str(&format!("  {} {}{at} for {since}, cost {:.2}\n", m.node, m.state, m.cost));
    }
    out
}

/// `--secret NAME` or `--secret VAR=NAME`, as the variable each secret is read into.
fn job_secrets(given: &[String]) -> Result<BTreeMap<String, String>, CliError> {
    let mut secrets = BTreeMap::new();
    for item in given {
        let (var, name) = item.split_once('=').unwrap_or((item.as_str(), item.as_str()));
        if let Some(problem) = ferry_api::secrets::check_name(name) {
            return Err(CliError::new(exit::INVALID, format!("--secret {item}: {problem}")));
        }
        if secrets.insert(var.to_string(), name.to_string()).is_some() {
            return Err(CliError::new(exit::INVALID, format!("--secret: ${var} is given twice")));
        }
    }
    Ok(secrets)
}

#[cfg(test)]
mod tests {
    use ferry_api::reasons::{PlacedWorker, TimelineReason};

    use super::placement_words;

    fn placed(candidates: u32, backfilled_before: Option<u64>, burst_waited_s: Option<u64>) -> TimelineReason {
        TimelineReason::Placed {
            pool: "onprem".into(),
            workers: vec![PlacedWorker { node: "gpu-1".into(), gpu_ids: vec![0] }],
            cpu_millis: 1000,
            gpu_share_milli: 0,
            candidates,
            gpus_free_after: 0,
            cpu_millis_free_after: 0,
            backfilled_before,
            burst_waited_s,
            burst_past: if burst_waited_s.is_some() { vec!["local".into()] } else { Vec::new() },
        }
    }

    #[test]
    fn an_elastic_pool_reads_as_its_cloud_machines_spend_and_latest_decisions() {
        use ferry_api::nodes::{CloudEvent, CloudMachine, ElasticPoolStatus};
        let s = 1_000_000;
        let event = |at: i64, kind: &str, node: Option<&str>, detail: &str| CloudEvent {
            at_us: at * s,
            kind: kind.into(),
            node: node.map(str::to_string),
            nodes: 1,
            detail: detail.into(),
        };
        let mut events: Vec<CloudEvent> = (0..6).map(|i| event(i, "provision", None, "job 7 needs a node")).collect();
        events.push(event(90, "release", Some("aws-1"), "idle for 10m"));
        let e = ElasticPoolStatus {
            provider: "aws".into(),
            region: "us-east-1".into(),
            zones: vec!["us-east-1a".into()],
            instance_type: "m5.large".into(),
            market: "spot".into(),
            price_hour: 0.04,
            max_nodes: 3,
            starting: 1,
            busy: 1,
            idle: 0,
            releasing: 1,
            spend: 0.5,
            spend_hour: 0.08,
            cooldown_until_us: None,
            cooldown_reason: None,
            zones_cooling: Vec::new(),
            last_error: Some("EC2 answered InsufficientInstanceCapacity".into()),
            machines: vec![CloudMachine {
                node: "aws-2".into(),
                state: "joined".into(),
                zone: Some("us-east-1a".into()),
                instance_id: Some("i-2".into()),
                requested_at_us: 40 * s,
                joined_at_us: Some(70 * s),
                cost: 0.01,
            }],
            events,
        };
        expect_test::expect![[r#"

            aws: aws spot m5.large in us-east-1 (us-east-1a), 0.04/h each, at most 3 machines
              1 starting, 1 busy, 0 idle, 1 releasing; spend so far 0.50 (0.08/h now)
              last error: EC2 answered InsufficientInstanceCapacity
              1m ago: provision 1: job 7 needs a node
              1m ago: provision 1: job 7 needs a node
              1m ago: provision 1: job 7 needs a node
              1m ago: provision 1: job 7 needs a node
              10s ago: release 1 aws-1: idle for 10m
              aws-2 joined i-2 in us-east-1a for 30s, cost 0.01
        "#]]
        .assert_eq(&super::elastic_lines("aws", &e, 100 * s));
    }

    #[test]
    fn a_placement_reads_in_a_few_words() {
        let check = |reason: TimelineReason, expected: Option<&str>| {
            assert_eq!(placement_words(&reason).as_deref(), expected);
        };
        check(placed(1, None, None), Some("in pool onprem, of 1 candidate node"));
        check(
            placed(3, Some(7), Some(300)),
            Some(
                "in pool onprem, of 3 candidate nodes; backfilled ahead of job 7, ending by its runtime limit before \
                 that job can start; burst after waiting 5m: local was fully allocated for it",
            ),
        );
        check(TimelineReason::Other, None);
    }
}
