//! `agent-overhead`: what the node agent itself costs while it supervises jobs that do nothing.
//!
//! It starts its own `ferry server` and `ferry agent` on loopback with fresh data directories, submits `--runs`
//! jobs that only sleep, waits until all are running, and then reads the agent process's CPU time (utime + stime in
//! `/proc/PID/stat`) at the start and the end of `--seconds`, and its resident memory (`VmRSS`, `VmHWM` in
//! `/proc/PID/status`) at the end. The agent samples the node and every run once a second, spools each sample to
//! its disk and ships them to the server, so the figure covers telemetry, heartbeats and work polls. It prints a
//! table and one JSON line (only the JSON line with `--json`), and stops everything it started.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use ferry_api::jobs::{JobState, SubmitJob};
use ferry_client::Client;
use serde_json::json;

/// How long the server and the agent get to come up.
const START_WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);
const MIB: u64 = 1 << 20;

#[derive(Parser)]
#[command(name = "agent-overhead", about = "Measures the node agent's own CPU and memory while it supervises jobs")]
struct Args {
    /// How many sleeping jobs the agent supervises while it is measured.
    #[arg(long, default_value_t = 8)]
    runs: u32,
    /// How long the agent's CPU time is measured, in seconds.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// The `ferry` binary; by default the one next to this program (`target/release/ferry`).
    #[arg(long)]
    ferry: Option<PathBuf>,
    /// Print only the JSON line.
    #[arg(long)]
    json: bool,
}

/// The processes and the scratch directory this bench made; they go when it ends, however it ends. (The jobs'
/// supervisors live in sessions of their own: the bench cancels the jobs before this is dropped.)
struct Started {
    children: Vec<Child>,
    root: PathBuf,
}

impl Drop for Started {
    fn drop(&mut self) {
        for child in self.children.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let ferry = match &args.ferry {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("ferry"),
    };
    if !ferry.is_file() {
        bail!("no ferry binary at {}; build it (cargo build --release -p ferry) or pass --ferry", ferry.display());
    }
    let root = std::env::temp_dir().join(format!("ferry-agent-overhead-{}", std::process::id()));
    std::fs::create_dir_all(&root)?;
    let mut started = Started { children: Vec::new(), root: root.clone() };
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let url = format!("http://127.0.0.1:{port}");
    let home = root.join("home");
    let log = |name: &str| std::fs::File::create(root.join(name));
    let server_log = log("server.log")?;
    let server = Command::new(&ferry)
        .args(["server", "--listen", &format!("127.0.0.1:{port}")])
        .env("FERRY_HOME", &home)
        .stdout(server_log.try_clone()?)
        .stderr(server_log)
        .spawn()
        .context("cannot start ferry server")?;
    started.children.push(server);
    let token_file = home.join("admin.token");
    wait_until("the server's admin token", || token_file.exists()).await?;
    let token = std::fs::read_to_string(&token_file)?.trim().to_string();
    let client = Client::new(&url, Some(token));

    let config = root.join("agent.toml");
    std::fs::write(&config, "name = \"bench-node\"\ncpus = 64\nmemory = \"64GiB\"\n")?;
    let agent_log = log("agent.log")?;
    let agent = Command::new(&ferry)
        .args(["agent", "--server", &url, "--data-dir"])
        .arg(root.join("agent"))
        .arg("--token-file")
        .arg(&token_file)
        .arg("--config")
        .arg(&config)
        .stdout(agent_log.try_clone()?)
        .stderr(agent_log)
        .spawn()
        .context("cannot start ferry agent")?;
    let agent_pid = agent.id();
    started.children.push(agent);

    let mut ids = Vec::new();
    let deadline = Instant::now() + START_WAIT;
    for i in 0..args.runs {
        let job = SubmitJob {
            command: vec!["sleep".into(), "600".into()],
            workdir: "/tmp".into(),
            name: Some(format!("overhead-{i}")),
            cpu_millis: Some(100),
            memory_bytes: Some(64 * MIB),
            ..SubmitJob::default()
        };
        let submitted = loop {
            match client.submit(&job).await {
                Ok(submitted) => break submitted,
                Err(_) if Instant::now() < deadline => tokio::time::sleep(POLL).await,
                Err(e) => return Err(e).context("cannot submit the sleeping jobs"),
            }
        };
        ids.push(submitted.id);
    }
    for id in &ids {
        loop {
            let job = client.job(*id).await?;
            match job.state {
                JobState::Running => break,
                _ if Instant::now() > deadline => {
                    bail!("job {id} is {:?}, not running; see the agent's log", job.state)
                }
                _ => tokio::time::sleep(POLL).await,
            }
        }
    }
    // The first samples of new runs, the first reports and the first shipped batches settle before measuring.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let ticks_per_sec = clock_ticks_per_sec();
    let before = cpu_ticks(agent_pid)?;
    let begun = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let after = cpu_ticks(agent_pid)?;
    let elapsed_s = begun.elapsed().as_secs_f64();
    let (rss_bytes, hwm_bytes) = memory(agent_pid)?;
    let cpu_s = (after - before) as f64 / ticks_per_sec as f64;
    let percent_of_one_core = 100.0 * cpu_s / elapsed_s;
    let spool_bytes = dir_bytes(&root.join("agent/telemetry"));

    for id in &ids {
        let _ = client.cancel(*id).await;
    }
    for id in &ids {
        let _ = client.wait_job(*id, Duration::from_secs(30)).await;
    }
    drop(started);

    if !args.json {
        println!("agent overhead, {} sleeping runs, {elapsed_s:.1} s", args.runs);
        println!("  CPU                {cpu_s:.3} s = {percent_of_one_core:.3}% of one core");
        println!(
            "  resident memory    {:.1} MiB (peak {:.1} MiB)",
            rss_bytes as f64 / MIB as f64,
            hwm_bytes as f64 / MIB as f64
        );
        println!("  telemetry spool    {:.1} KiB on disk at the end", spool_bytes as f64 / 1024.0);
    }
    let line = json!({
        "bench": "agent-overhead",
        "runs": args.runs,
        "seconds": elapsed_s,
        "cpu_seconds": cpu_s,
        "cpu_percent_of_one_core": percent_of_one_core,
        "rss_bytes": rss_bytes,
        "rss_peak_bytes": hwm_bytes,
        "spool_bytes": spool_bytes,
    });
    println!("{line}");
    Ok(())
}

async fn wait_until(what: &str, mut ready: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + START_WAIT;
    while !ready() {
        if Instant::now() > deadline {
            bail!("gave up waiting for {what}");
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

/// utime + stime of a process, in clock ticks. Fields are counted after the command name's closing parenthesis.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).context("the agent is gone")?;
    let after_name = &stat[stat.rfind(')').context("malformed stat")? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // fields[0] is field 3 (state): utime is field 14, stime field 15.
    let field = |n: usize| -> Result<u64> { Ok(fields.get(n - 3).context("short stat")?.parse()?) };
    Ok(field(14)? + field(15)?)
}

fn clock_ticks_per_sec() -> u64 {
    let out = Command::new("getconf").arg("CLK_TCK").stderr(Stdio::null()).output();
    out.ok().and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok()).unwrap_or(100)
}

/// `VmRSS` and `VmHWM` of a process, in bytes.
fn memory(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |key: &str| -> u64 {
        let line = status.lines().find(|l| l.starts_with(key)).unwrap_or_default();
        line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0)
    };
    Ok((kib("VmRSS:") * 1024, kib("VmHWM:") * 1024))
}

fn dir_bytes(dir: &Path) -> u64 {
    let entries = std::fs::read_dir(dir).into_iter().flatten().flatten();
    entries.filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum()
}
