//! Chaos (issue 15): submissions in flight, with the CLI's retries, while the server is killed with SIGKILL at
//! random moments and started again. Every submission the CLI acknowledged must exist exactly once and run exactly
//! once; one it did not acknowledge may exist at most once.
//!
//! The suite runs a bounded quick mode; `scripts/chaos` runs many more rounds (`FERRY_CHAOS_ROUNDS`), and
//! `FERRY_CHAOS_SEED` replays a run's kill times.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{ferry_bin, Ferry, NodeSpec, WAIT};

/// A small deterministic generator (xorshift), so a seed replays the same kill times.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[test]
fn acknowledged_submissions_exist_once_and_run_once_through_server_crashes() {
    let rounds = env_number("FERRY_CHAOS_ROUNDS", 5);
    let seed = env_number("FERRY_CHAOS_SEED", std::process::id() as u64 * 7919 + 1);
    println!("chaos: {rounds} rounds, seed {seed} (FERRY_CHAOS_SEED={seed} replays it)");
    let mut rng = Rng(seed.max(1));
    let mut f = Ferry::start(NodeSpec { gpus: 0, cpus: 8, memory: "8GiB" });
    let runs = f.root.path().join("runs.txt");
    let (home, url, workdir) = (f.home(), f.url(), f.workdir());
    let submitters = 4;
    // Submitters keep submitting until the last restart is done, so submissions are in flight at every kill.
    let chaos_over = AtomicBool::new(false);
    let submit = |marker: &str| -> Option<u64> {
        let script = format!("echo {marker} >> {}", runs.display());
        let out = Command::new(ferry_bin())
            .args(["run", "--workdir"])
            .arg(&workdir)
            .args(["--cpus", "0.1", "--name", marker, "--", "sh", "-c", &script])
            .env("FERRY_HOME", &home)
            .env("FERRY_SERVER", &url)
            .env_remove("FERRY_TOKEN")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        if !out.status.success() {
            println!("{marker}: not acknowledged: {}", String::from_utf8_lossy(&out.stderr).trim());
            return None;
        }
        Some(String::from_utf8(out.stdout).unwrap().trim().parse().expect("ferry run prints the job's id"))
    };
    let acknowledged: BTreeMap<String, Option<u64>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..submitters)
            .map(|s| {
                let (submit, chaos_over) = (&submit, &chaos_over);
                scope.spawn(move || {
                    let mut made = Vec::new();
                    for i in 0.. {
                        let over = chaos_over.load(Ordering::SeqCst);
                        let marker = format!("chaos-{s}-{i}");
                        let id = submit(&marker);
                        // Once the server stays up, every submission gets through.
                        assert!(!over || id.is_some(), "{marker} failed after the last restart");
                        made.push((marker, id));
                        if over {
                            break;
                        }
                    }
                    made
                })
            })
            .collect();
        for round in 0..rounds {
            std::thread::sleep(Duration::from_millis(100 + rng.below(600)));
            println!("round {round}: killing the server");
            f.kill_server();
            std::thread::sleep(Duration::from_millis(rng.below(500)));
            f.start_server();
        }
        chaos_over.store(true, Ordering::SeqCst);
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let acked = acknowledged.values().filter(|id| id.is_some()).count();
    println!("{acked} of {} submissions acknowledged", acknowledged.len());

    // Every job ends; then each name appears once among the jobs, and each acknowledged one ran once.
    let deadline = Instant::now() + WAIT * 2;
    let jobs = loop {
        let list = f.json(&["ps", "--all", "--json", "--limit", "1000"]);
        let jobs = list["jobs"].as_array().cloned().unwrap_or_default();
        let settled = jobs.iter().all(|j| matches!(j["state"].as_str(), Some("succeeded" | "failed" | "lost")));
        if settled && !jobs.is_empty() {
            break jobs;
        }
        assert!(Instant::now() < deadline, "jobs did not finish: {list}\n{}", f.logs_for_failure());
        std::thread::sleep(Duration::from_millis(300));
    };
    let mut by_name: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for job in &jobs {
        by_name.entry(job["name"].as_str().unwrap_or("").to_string()).or_default().push(job["id"].as_u64().unwrap());
    }
    let ran = std::fs::read_to_string(&runs).unwrap_or_default();
    let mut ran_count: BTreeMap<&str, usize> = BTreeMap::new();
    for line in ran.lines() {
        *ran_count.entry(line.trim()).or_default() += 1;
    }
    for (marker, id) in &acknowledged {
        let made = by_name.get(marker).cloned().unwrap_or_default();
        assert!(made.len() <= 1, "{marker} made {} jobs: {made:?}", made.len());
        if let Some(id) = id {
            assert_eq!(made, vec![*id], "{marker} was acknowledged as job {id}");
            let state = jobs.iter().find(|j| j["id"] == *id).unwrap()["state"].clone();
            assert_eq!(state, "succeeded", "{marker} (job {id})\n{}", f.logs_for_failure());
        }
        let times = ran_count.get(marker.as_str()).copied().unwrap_or(0);
        assert!(times == made.len(), "{marker} ran {times} times for {} jobs", made.len());
    }
}
