//! The real agent's telemetry end to end: a busy job's CPU use, sampled by the agent from the run's control group
//! (or `/proc`), goes through the agent's disk spool to the server, and samples taken while the server was down are
//! kept on the agent's disk, across an agent restart, and sent once the server is back.
//!
//! The spool is checked through its files (`<agent data dir>/telemetry/*.jsonl` and its `cursor`), the server's
//! copy through the job's `usage`, which the server computes from the latest samples, and through the job's
//! `cpu_used` time series, which must hold the samples taken during the outage at the time they were taken.

mod common;

use common::{spool_pending, Ferry, NodeSpec};

fn now_us() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64
}

/// The job's `cpu_used` series (cores) from `GET /api/v1/series` at the raw tier: (step start, mean) for each step
/// between `from_us` and now, the mean `None` where the step has no data.
fn cpu_series(f: &Ferry, id: u64, from_us: i64) -> Vec<(i64, Option<f64>)> {
    let token = std::fs::read_to_string(f.home().join("admin.token")).unwrap();
    let start =
        humantime::format_rfc3339_micros(std::time::UNIX_EPOCH + std::time::Duration::from_micros(from_us as u64));
    let url = format!("{}/api/v1/series?metric=cpu_used&by=job&id={id}&start={start}&step=10s", f.url());
    let out = std::process::Command::new("curl")
        .args(["-s", "-H", &format!("Authorization: Bearer {}", token.trim()), &url])
        .output()
        .unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let (start, step) = (answer["start_us"].as_i64().unwrap_or(0), answer["step_s"].as_i64().unwrap_or(0) * 1_000_000);
    let means = answer["series"][0]["mean"].as_array().cloned().unwrap_or_default();
    means.iter().enumerate().map(|(i, m)| (start + i as i64 * step, m.as_f64())).collect()
}

/// The CPU use of the job's current run as the server last heard it, in thousandths of a CPU.
fn cpu_millis_used(f: &Ferry, id: u64) -> Option<u64> {
    f.job(id)["usage"]["cpu_millis_used"].as_u64()
}

#[test]
fn a_busy_jobs_samples_reach_the_server_and_survive_an_outage_on_the_agents_disk() {
    let mut f = Ferry::start(NodeSpec::default());
    let id = f.submit(&["--cpus", "1", "--", "sh", "-c", "while :; do :; done"]);
    f.wait_state(id, "running");
    // A busy loop uses most of a CPU; a loaded test machine may give it less, but never next to nothing.
    f.wait_for("the job's CPU use to reach the server", |f| cpu_millis_used(f, id).is_some_and(|c| c >= 200));
    let usage = &f.job(id)["usage"];
    assert!(usage["memory_used_bytes"].as_u64().is_some_and(|b| b > 0), "{usage}");
    f.wait_for("the spool to drain", |f| spool_pending(&f.agent_dir()).is_some_and(|p| p <= 2));
    let started = f.job(id)["started_at_us"].as_i64().unwrap();
    f.wait_for("the job's CPU series", |f| {
        cpu_series(f, id, started).iter().any(|(_, cores)| cores.is_some_and(|c| c >= 0.2))
    });

    // The server goes away: samples pile up on the agent's disk, and stay there when the agent restarts too.
    let outage_from = now_us();
    f.kill_server();
    // Long enough that at least one whole 10 s step of the series falls inside the outage.
    f.wait_for("samples to pile up in the spool", |f| spool_pending(&f.agent_dir()).is_some_and(|p| p >= 22));
    f.kill_agent();
    let kept = spool_pending(&f.agent_dir()).unwrap();
    assert!(kept >= 22, "{kept}");

    f.start_server();
    let outage_to = now_us();
    f.start_agent();
    f.wait_for("the kept samples to be sent", |f| spool_pending(&f.agent_dir()).is_some_and(|p| p <= 2));
    // What was measured while the server was away is in the series at the time it was measured.
    let during: Vec<(i64, Option<f64>)> = cpu_series(&f, id, started)
        .into_iter()
        .filter(|(t, _)| *t >= outage_from && *t + 10_000_000 <= outage_to)
        .collect();
    assert!(
        !during.is_empty() && during.iter().all(|(_, cores)| cores.is_some_and(|c| c >= 0.2)),
        "{during:?}\n{}",
        f.logs_for_failure()
    );
    f.wait_for("the job's CPU use to reach the server again", |f| cpu_millis_used(f, id).is_some_and(|c| c >= 200));

    let log = std::fs::read_to_string(f.root.path().join("agent.log")).unwrap();
    let complaints: Vec<&str> = log
        .lines()
        .filter(|l| (l.contains("WARN") || l.contains("ERROR")) && (l.contains("telemetry") || l.contains("spool")))
        .collect();
    assert!(complaints.is_empty(), "{complaints:#?}\n{}", f.logs_for_failure());
    let server_log = std::fs::read_to_string(f.root.path().join("server.log")).unwrap();
    assert!(!server_log.contains("refused a telemetry batch"), "{}", f.logs_for_failure());
}
