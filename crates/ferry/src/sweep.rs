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
    #[command(subcommand)]
    command: Option<SweepCommand>,
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
    match (args.command, args.file) {
        (Some(SweepCommand::Status { id, follow, top, json }), _) => status(&client, id, follow, top, json).await,
        (Some(SweepCommand::List { json }), _) => list(&client, json).await,
        (Some(SweepCommand::Cancel { id }), _) => {
            let s = client.cancel_sweep(id).await?;
            println!("sweep {id} cancelled; {} trials were running", s.counts.running);
            Ok(0)
        }
        (None, None) => Err(CliError::new(
            exit::INVALID,
            "give a sweep file (`ferry sweep sweep.toml`) or a command (`ferry sweep status ID`, `list`, `cancel ID`)",
        )),
        (None, Some(file)) => {
            let spec = std::fs::read_to_string(&file)
                .map_err(|e| CliError::new(exit::INVALID, format!("cannot read {}: {e}", file.display())))?;
            // The file is checked here too, so its errors come before any upload.
            let parsed = ferry_sweep::SweepSpec::parse(&spec)
                .map_err(|e| CliError::new(exit::INVALID, format!("{}: {e}", file.display())))?;
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
        (Some(t), Some(v)) => format!("{} = {v} (trial {t})", s.objective),
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
                Some(v) => v.to_string(),
                None => String::new(),
            }));
            row.push(t.value.map(|v| format!("{v:.6}")).unwrap_or_default());
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
    let number = |v: Option<f64>| v.map(|v| format!("{v}")).unwrap_or_else(|| "NaN".to_string());
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
