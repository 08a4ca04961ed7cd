//! `ferry sweep` (start a sweep from its file, show its progress, list, cancel) and `ferry metrics` (what a job
//! logged to its MLflow run).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use ferry_api::sweeps::{SubmitSweep, Sweep, SweepState, TrialState};

use crate::exit::{self, CliError};
use crate::format;
use crate::Global;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct SweepArgs {
    /// The sweep file (TOML): search space, objective, method, early stopping, limits and the trial's job.
    file: Option<PathBuf>,
    /// Do not ship the current folder: trials run in `[trial] workdir`, or an empty directory.
    #[arg(long)]
    no_code: bool,
    /// Print the id and return instead of following the sweep's progress.
    #[arg(long, short = 'd')]
    detach: bool,
    /// Without a file: a parameter, `NAME=uniform:LOW:HIGH`, `log_uniform:LOW:HIGH`, `int:LOW:HIGH` or
    /// `choice:A,B,C`; the command names it as `{NAME}`.
    #[arg(long, value_name = "NAME=SPACE", conflicts_with = "file")]
    param: Vec<String>,
    /// Without a file: the metric the trials log, to minimize (`--maximize` to maximize).
    #[arg(long, value_name = "METRIC", conflicts_with = "file")]
    objective: Option<String>,
    #[arg(long, conflicts_with = "file")]
    maximize: bool,
    /// Without a file: grid, random, tpe or gp.
    #[arg(long, default_value = "tpe", conflicts_with = "file")]
    method: String,
    /// Without a file: how many trials in all.
    #[arg(long, default_value_t = 20, conflicts_with = "file")]
    max_trials: u32,
    /// Without a file: how many trials at a time.
    #[arg(long, conflicts_with = "file")]
    max_parallel: Option<u32>,
    /// Without a file: stop poor trials early with asha, hyperband or median (needs --max-steps for asha and
    /// hyperband: the steps a full trial logs).
    #[arg(long, value_name = "RULE", conflicts_with = "file")]
    early_stopping: Option<String>,
    #[arg(long, value_name = "STEPS", conflicts_with = "file")]
    max_steps: Option<i64>,
    /// Without a file: each trial's GPUs, CPUs and memory, as for `ferry run`.
    #[arg(long, conflicts_with = "file")]
    gpus: Option<String>,
    #[arg(long, conflicts_with = "file")]
    cpus: Option<String>,
    #[arg(long, conflicts_with = "file")]
    memory: Option<String>,
    /// Without a file: the trial's command, after `--`, with `{NAME}` for each parameter.
    #[arg(last = true)]
    trial_command: Vec<String>,
    #[command(subcommand)]
    command: Option<SweepCommand>,
}

/// The sweep file the flags describe, so that flags and files are checked by the same parser.
fn file_from_flags(args: &SweepArgs) -> Result<String, CliError> {
    let invalid = |message: String| CliError::new(exit::INVALID, message);
    let objective = args.objective.clone().ok_or_else(|| {
        invalid("give a sweep file, or --objective METRIC with --param and the command after `--`".into())
    })?;
    if args.trial_command.is_empty() {
        return Err(invalid(
            "no trial command; put it after `--`, as in `ferry sweep ... -- python train.py --lr {lr}`".into(),
        ));
    }
    let mut params = toml::Table::new();
    for given in &args.param {
        let (name, space) = given
            .split_once('=')
            .ok_or_else(|| invalid(format!("--param `{given}`: write NAME=SPACE, such as lr=log_uniform:1e-5:0.1")))?;
        let (kind, rest) = space.split_once(':').unwrap_or((space, ""));
        let number = |text: &str| -> Result<toml::Value, CliError> {
            if let Ok(i) = text.parse::<i64>() {
                if kind == "int" {
                    return Ok(toml::Value::Integer(i));
                }
            }
            text.parse::<f64>()
                .map(toml::Value::Float)
                .map_err(|_| invalid(format!("--param {name}: `{text}` is not a number")))
        };
        let mut table = toml::Table::new();
        table.insert("distribution".into(), toml::Value::String(kind.to_string()));
        if kind == "choice" {
            let values = rest
                .split(',')
                .filter(|v| !v.is_empty())
                .map(|v| match (v.parse::<i64>(), v.parse::<f64>()) {
                    (Ok(i), _) => toml::Value::Integer(i),
                    (_, Ok(f)) => toml::Value::Float(f),
                    _ => toml::Value::String(v.to_string()),
                })
                .collect();
            table.insert("values".into(), toml::Value::Array(values));
        } else {
            let (low, high) = rest.split_once(':').ok_or_else(|| {
                invalid(format!("--param {name}: write {kind}:LOW:HIGH, such as {name}=log_uniform:1e-5:0.1"))
            })?;
            table.insert("low".into(), number(low)?);
            table.insert("high".into(), number(high)?);
        }
        params.insert(name.to_string(), toml::Value::Table(table));
    }
    let mut file = toml::Table::new();
    file.insert(
        "command".into(),
        args.trial_command.iter().cloned().map(toml::Value::String).collect::<Vec<_>>().into(),
    );
    file.insert("max_trials".into(), toml::Value::Integer(args.max_trials.into()));
    if let Some(p) = args.max_parallel {
        file.insert("max_parallel".into(), toml::Value::Integer(p.into()));
    }
    let mut goal = toml::Table::new();
    goal.insert("metric".into(), toml::Value::String(objective));
    goal.insert("goal".into(), toml::Value::String(if args.maximize { "maximize" } else { "minimize" }.into()));
    file.insert("objective".into(), toml::Value::Table(goal));
    let mut method = toml::Table::new();
    method.insert("name".into(), toml::Value::String(args.method.clone()));
    file.insert("method".into(), toml::Value::Table(method));
    if let Some(rule) = &args.early_stopping {
        let mut stopping = toml::Table::new();
        stopping.insert("rule".into(), toml::Value::String(rule.clone()));
        if let Some(steps) = args.max_steps {
            stopping.insert("max_steps".into(), toml::Value::Integer(steps));
        }
        file.insert("early_stopping".into(), toml::Value::Table(stopping));
    }
    file.insert("params".into(), toml::Value::Table(params));
    let mut trial = toml::Table::new();
    for (key, value) in [("gpus", &args.gpus), ("cpus", &args.cpus), ("memory", &args.memory)] {
        if let Some(value) = value {
            trial.insert(key.into(), toml::Value::String(value.clone()));
        }
    }
    file.insert("trial".into(), toml::Value::Table(trial));
    toml::to_string(&file).map_err(|e| CliError::new(exit::INTERNAL, format!("writing the sweep file: {e}")))
}

#[derive(Subcommand)]
enum SweepCommand {
    /// A sweep's progress, its best trial and its trials (the best first).
    Status {
        id: u64,
        /// Follow the progress until the sweep ends.
        #[arg(long, short = 'f')]
        follow: bool,
        /// How many trials to list (0 lists none).
        #[arg(long, default_value_t = 10)]
        top: usize,
        #[arg(long)]
        json: bool,
    },
    /// List sweeps, newest first.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Cancel a sweep: its running trials are stopped (their logs kept), no more are created.
    Cancel { id: u64 },
}

pub async fn sweep(g: &Global, args: SweepArgs) -> Result<i32, CliError> {
    let client = g.client()?;
    match (&args.command, args.file.clone()) {
        (Some(SweepCommand::Status { id, follow, top, json }), _) => status(&client, *id, *follow, *top, *json).await,
        (Some(SweepCommand::List { json }), _) => list(&client, *json).await,
        (Some(SweepCommand::Cancel { id }), _) => {
            let id = *id;
            let s = client.cancel_sweep(id).await?;
            println!("sweep {id} cancelled; {} trials were running", s.counts.running);
            Ok(0)
        }
        (None, file) => {
            let (spec, shown) = match &file {
                Some(file) => (
                    std::fs::read_to_string(file)
                        .map_err(|e| CliError::new(exit::INVALID, format!("cannot read {}: {e}", file.display())))?,
                    file.display().to_string(),
                ),
                None if args.objective.is_none() && args.param.is_empty() => {
                    return Err(CliError::new(
                        exit::INVALID,
                        "give a sweep file (`ferry sweep sweep.toml`), flags (`ferry sweep --objective loss --param \
                         lr=log_uniform:1e-5:0.1 -- python train.py --lr {lr}`) or a command (`ferry sweep status ID`, \
                         `list`, `cancel ID`)",
                    ))
                }
                None => (file_from_flags(&args)?, "the flags".to_string()),
            };
            // The file is checked here too, so its errors come before any upload.
            let parsed = ferry_sweep::SweepSpec::parse(&spec)
                .map_err(|e| CliError::new(exit::INVALID, format!("{shown}: {e}")))?;
            let in_workdir = parsed.trial.contains_key("workdir");
            let code = if args.no_code || in_workdir { None } else { Some(crate::commands::ship(&client).await?) };
            let submitted = client.submit_sweep(&SubmitSweep { spec, code }).await?;
            if args.detach {
                println!("{}", submitted.id);
                return Ok(0);
            }
            eprintln!(
                "sweep {} started: up to {} trials (`ferry sweep status {}`; Ctrl-C stops watching, not the sweep)",
                submitted.id, submitted.max_trials, submitted.id
            );
            status(&client, submitted.id, true, 10, false).await
        }
    }
}

async fn list(client: &ferry_client::Client, json: bool) -> Result<i32, CliError> {
    let list = client.sweeps().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list).expect("wire types serialize"));
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = list
        .sweeps
        .iter()
        .map(|s| {
            vec![
                s.id.to_string(),
                s.name.clone().unwrap_or_default(),
                s.owner.clone(),
                s.state.name().to_string(),
                format!("{}/{}", ended(s), s.max_trials),
                best(s),
                format::span(format::now_us() - s.created_at_us),
            ]
        })
        .collect();
    print!("{}", format::table(&["ID", "NAME", "OWNER", "STATE", "TRIALS", "BEST", "AGE"], &rows));
    Ok(0)
}

fn ended(s: &Sweep) -> u32 {
    s.counts.completed + s.counts.failed + s.counts.stopped
}

fn best(s: &Sweep) -> String {
    match (s.best_trial, s.best_value) {
        (Some(t), Some(v)) => format!("{} = {} (trial {t})", s.objective, format::number(v)),
        _ => "-".to_string(),
    }
}

/// `[#########-----------]  45/100`.
fn bar(done: u32, total: u32, width: usize) -> String {
    let filled = if total == 0 { 0 } else { (done as usize * width) / total as usize };
    format!("[{}{}] {done:>4}/{total}", "#".repeat(filled.min(width)), "-".repeat(width - filled.min(width)))
}

fn summary(s: &Sweep) -> String {
    let c = &s.counts;
    format!(
        "{} {} | running {} queued {} | completed {} stopped {} failed {} | best: {}",
        s.state.name(),
        bar(ended(s), s.max_trials, 30),
        c.running,
        c.queued,
        c.completed,
        c.stopped,
        c.failed,
        best(s)
    )
}

fn trial_state(state: TrialState) -> &'static str {
    match state {
        TrialState::Queued => "queued",
        TrialState::Running => "running",
        TrialState::Completed => "completed",
        TrialState::Failed => "failed",
        TrialState::Stopped => "stopped",
    }
}

fn print_details(s: &Sweep, top: usize) {
    println!(
        "Sweep {}{}: {} search{}, {} {} ({} trials at most, {} at a time), experiment {}",
        s.id,
        s.name.as_deref().map(|n| format!(" ({n})")).unwrap_or_default(),
        s.method,
        s.early_stopping.as_deref().map(|r| format!(" with {r} early stopping")).unwrap_or_default(),
        s.goal,
        s.objective,
        s.max_trials,
        s.max_parallel,
        s.experiment_id
    );
    println!("{}", summary(s));
    if let Some(message) = &s.message {
        println!("{message}");
    }
    if top == 0 || s.trials.is_empty() {
        return;
    }
    // Best first: trials with a value, ordered by the goal; the rest after, newest first.
    let mut trials: Vec<_> = s.trials.iter().collect();
    let sign = if s.goal == "maximize" { -1.0 } else { 1.0 };
    trials.sort_by(|a, b| match (a.value, b.value) {
        (Some(x), Some(y)) => (sign * x).total_cmp(&(sign * y)),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => b.index.cmp(&a.index),
    });
    let keys: Vec<String> = s.trials[0].params.keys().cloned().collect();
    let mut header = vec!["TRIAL", "JOB", "STATE"];
    header.extend(keys.iter().map(String::as_str));
    header.extend(["VALUE", "STEP", "RUNTIME", "NOTE"]);
    let rows: Vec<Vec<String>> = trials
        .iter()
        .take(top)
        .map(|t| {
            let mut row = vec![
                t.index.to_string(),
                t.job_id.map(|j| j.to_string()).unwrap_or_default(),
                trial_state(t.state).to_string(),
            ];
            row.extend(keys.iter().map(|k| match t.params.get(k) {
                Some(serde_json::Value::String(text)) => text.clone(),
                Some(serde_json::Value::Number(n)) if n.is_f64() => n.as_f64().map(format::number).unwrap_or_default(),
                Some(v) => v.to_string(),
                None => String::new(),
            }));
            row.push(t.value.map(format::number).unwrap_or_default());
            row.push(t.step.map(|v| v.to_string()).unwrap_or_default());
            row.push(t.runtime_s.map(|r| format::span((r * 1e6) as i64)).unwrap_or_default());
            row.push(t.stop_reason.clone().unwrap_or_default());
            row
        })
        .collect();
    print!("{}", format::table(&header, &rows));
}

async fn status(client: &ferry_client::Client, id: u64, follow: bool, top: usize, json: bool) -> Result<i32, CliError> {
    let mut s = client.sweep(id).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s).expect("wire types serialize"));
        return Ok(0);
    }
    if follow {
        let live = std::io::IsTerminal::is_terminal(&std::io::stderr());
        while s.state == SweepState::Running {
            let line = summary(&s);
            if live {
                eprint!("\r\x1b[2K{line}");
            } else {
                eprintln!("{line}");
            }
            let _ = std::io::stderr().flush();
            tokio::time::sleep(Duration::from_secs(if live { 1 } else { 10 })).await;
            s = client.sweep(id).await?;
        }
        if live {
            eprintln!();
        }
    }
    print_details(&s, top);
    Ok(match s.state {
        SweepState::Running | SweepState::Finished => 0,
        SweepState::Cancelled | SweepState::Failed => exit::JOB_DID_NOT_FINISH,
    })
}

#[derive(Args)]
pub struct MetricsArgs {
    /// The job.
    id: u64,
    /// Print every logged value of this metric (step, value, time).
    key: Option<String>,
    #[arg(long)]
    json: bool,
}

/// `ferry metrics ID [KEY]`: the job's params and metrics from its MLflow run.
pub async fn metrics(g: &Global, args: MetricsArgs) -> Result<i32, CliError> {
    let client = g.client()?;
    let m = client.job_metrics(args.id, args.key.as_deref()).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&m).expect("wire types serialize"));
        return Ok(0);
    }
    let number = |v: Option<f64>| v.map(format::number).unwrap_or_else(|| "NaN".to_string());
    if let Some(key) = &args.key {
        let rows: Vec<Vec<String>> = m
            .history
            .iter()
            .map(|p| vec![p.step.to_string(), number(p.value), format::timestamp(p.timestamp_ms * 1000)])
            .collect();
        println!("{key} of job {} (run {}):", m.job_id, m.run_id);
        print!("{}", format::table(&["STEP", "VALUE", "LOGGED"], &rows));
        return Ok(0);
    }
    println!("Job {}: MLflow run {} in experiment {}, {}", m.job_id, m.run_id, m.experiment_id, m.status);
    if !m.params.is_empty() {
        let rows: Vec<Vec<String>> = m.params.iter().map(|(k, v)| vec![k.clone(), v.clone()]).collect();
        print!("{}", format::table(&["PARAM", "VALUE"], &rows));
    }
    if m.metrics.is_empty() {
        println!("No metrics logged yet (log them with mlflow.log_metric inside the job).");
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = m
        .metrics
        .iter()
        .map(|s| {
            vec![s.key.clone(), number(s.last), s.step.to_string(), number(s.min), number(s.max), s.count.to_string()]
        })
        .collect();
    print!("{}", format::table(&["METRIC", "LAST", "STEP", "MIN", "MAX", "VALUES"], &rows));
    Ok(0)
}
