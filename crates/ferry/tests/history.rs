//! `ferry history export` end to end: real jobs (one succeeds, one fails with exit 3, one is cancelled while it
//! runs, a gang of two workers on two nodes, one still running and one still waiting at export) become a cluster
//! file and a workload that `ferry sim` replays with the same jobs; bad input, non-admins and an earlier export are
//! refused with messages that say what to do.

mod common;

use common::{stderr, Ferry, NodeSpec};

/// A pool, a half-life and a team with a project quota in the file; another team gets its quota through the API.
const CONFIG: &str = "fair_share_half_life = \"12h\"\nreserve_depth = 32\n\n[[pool]]\nname = \"local\"\norder = 5\n\n\
                      [[team]]\nname = \"vision\"\nquota = { gpus = 4 }\n\n\
                      [[team.project]]\nname = \"det\"\nquota = { gpus = 2 }\n";

fn two_nodes() -> Ferry {
    let mut f = Ferry::start_with_server_config(NodeSpec::default(), "", CONFIG);
    f.start_extra_agent("node-b", "local", 2);
    f.ok(&["team", "add", "nlp"]);
    f.ok(&["team", "quota", "nlp", "--gpus", "1", "--borrow-gpus", "0"]);
    f.ok(&["user", "add", "bo", "--team", "nlp"]);
    f
}

/// The workload's data lines (comments left out), each split into its fields by the header's column names.
fn rows(text: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    lines
        .filter(|l| !l.starts_with('#'))
        .map(|l| header.iter().map(|h| h.to_string()).zip(l.split(',').map(str::to_string)).collect())
        .collect()
}

#[test]
fn an_export_is_the_cluster_and_the_jobs_and_ferry_sim_replays_it() {
    let f = two_nodes();
    let bo = f.token_for("bo", "submit");
    let ok = f.submit(&[
        "--team",
        "vision",
        "--project",
        "det",
        "--gpus",
        "1",
        "--cpus",
        "0.5",
        "--memory",
        "1GiB",
        "--priority",
        "high",
        "--",
        "true",
    ]);
    f.wait_state(ok, "succeeded");
    let failed = f.submit(&["--cpus", "0.25", "--memory", "512MiB", "--", "sh", "-c", "sleep 1; exit 3"]);
    f.wait_state(failed, "failed");
    let cancelled = f.submit(&["--cpus", "0.5", "--max-runtime", "10m", "--", "sleep", "300"]);
    f.wait_state(cancelled, "running");
    f.ok(&["cancel", &cancelled.to_string()]);
    f.wait_state(cancelled, "cancelled");
    let gang = f.submit(&["--nodes", "2", "--gpus", "1", "--cpus", "0.5", "--", "true"]);
    f.wait_state(gang, "succeeded");
    // bo's team may hold one GPU: the first job runs through the export, the second waits behind it.
    let run = |args: &[&str]| -> u64 {
        let mut all = vec!["run", "--workdir", "/tmp", "--team", "nlp", "--gpus", "1", "--cpus", "0.5"];
        all.extend_from_slice(args);
        let out = f.cli_as(Some(&bo), &all, "");
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8(out.stdout).unwrap().trim().parse().unwrap()
    };
    let running = run(&["--", "sleep", "300"]);
    f.wait_state(running, "running");
    let waiting = run(&["--", "sleep", "300"]);
    f.wait_for("the second job to wait for its team's quota", |f| {
        f.job(waiting)["waiting"]["reason"]["kind"] == "over_team_limit"
    });

    let dir = f.root.path().join("export");
    let out_dir = dir.display().to_string();
    let out = f.cli(&["history", "export", "--since", "1h", "--out", &out_dir]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), f.logs_for_failure());
    let said = stderr(&out);
    assert!(said.contains("5 jobs, 1 of them still running, with their time so far"), "{said}");
    assert!(said.contains("left out 1 still waiting at export"), "{said}");
    assert!(said.contains("ferry sim --cluster"), "{said}");

    let cluster = std::fs::read_to_string(dir.join("cluster.toml")).unwrap();
    let parsed = ferry_sim::parse_cluster_toml("cluster.toml", &cluster).unwrap_or_else(|e| panic!("{e}\n{cluster}"));
    assert_eq!(parsed.fair_share_half_life_s, 12 * 3600, "{cluster}");
    assert_eq!(parsed.reserve_depth, Some(32), "{cluster}");
    let pools: Vec<(&str, i32)> = parsed.pools.iter().map(|p| (p.name.as_str(), p.order)).collect();
    assert_eq!(pools, [("local", 5)], "{cluster}");
    let nodes: Vec<(&str, &str, u32, Option<&str>)> = parsed
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), n.pool.as_str(), n.capacity.gpus, n.gpu_model.as_deref()))
        .collect();
    assert_eq!(nodes, [("node-a", "local", 2, Some("Test GPU")), ("node-b", "local", 2, Some("Test GPU"))]);
    assert!(parsed.nodes.iter().all(|n| n.capacity.cpu_millis == 4000 && n.capacity.memory_bytes == 8 << 30));
    let teams: Vec<(&str, u32, Option<u32>)> =
        parsed.teams.iter().map(|t| (t.name.as_str(), t.quota.gpus, t.borrow_limit.map(|b| b.gpus))).collect();
    assert_eq!(teams, [("nlp", 1, Some(0)), ("vision", 4, None)], "the file's quota and the API's: {cluster}");
    let projects: Vec<(&str, &str, u32)> =
        parsed.projects.iter().map(|p| (p.team.as_str(), p.name.as_str(), p.quota.gpus)).collect();
    assert_eq!(projects, [("vision", "det", 2)]);

    let jobs = std::fs::read_to_string(dir.join("jobs.csv")).unwrap();
    assert!(jobs.contains(&format!("# job {waiting} (queued) left out: still waiting at export")), "{jobs}");
    let rows = rows(&jobs);
    assert_eq!(rows.len(), 5, "{jobs}");
    let field = |i: usize, column: &str| rows[i][column].as_str();
    assert_eq!(field(0, "arrival_s"), "0");
    let outcomes: Vec<(&str, &str)> = (0..5).map(|i| (field(i, "outcome"), field(i, "exit_code"))).collect();
    assert_eq!(outcomes, [("succeeded", "0"), ("failed", "3"), ("cancelled", ""), ("succeeded", "0"), ("", "")]);
    let ok_row: Vec<&str> =
        ["gpus", "cpus", "memory", "team", "project", "priority", "user"].iter().map(|c| field(0, c)).collect();
    assert_eq!(ok_row, ["1", "500m", "1GiB", "vision", "det", "100", "admin"], "{jobs}");
    assert_eq!((field(1, "cpus"), field(1, "memory"), field(1, "team")), ("250m", "512MiB", "(none)"), "{jobs}");
    let failed_s: f64 = field(1, "duration_s").parse().unwrap();
    assert!(failed_s >= 1.0, "the failed job slept a second before it failed: {jobs}");
    assert_eq!(field(2, "max_runtime_s"), "600");
    assert_eq!((field(3, "nodes"), field(3, "gpus")), ("2", "1"));
    assert_eq!((field(4, "user"), field(4, "team")), ("bo", "nlp"));

    // The simulator reads both files as they are and replays every job to its end.
    let sim = f.cli(&[
        "sim",
        "--cluster",
        &format!("{out_dir}/cluster.toml"),
        "--workload",
        &format!("{out_dir}/jobs.csv"),
        "--format",
        "json",
    ]);
    assert!(sim.status.success(), "{}\n{cluster}\n{jobs}", stderr(&sim));
    let report: serde_json::Value = serde_json::from_slice(&sim.stdout).unwrap();
    let run = &report["runs"][0];
    assert_eq!((run["jobs"].as_u64(), run["completed"].as_u64()), (Some(5), Some(5)), "{report}");
    let teams: Vec<&str> = run["teams"].as_array().unwrap().iter().map(|t| t["team"].as_str().unwrap()).collect();
    assert!(teams.contains(&"vision") && teams.contains(&"nlp"), "{report}");

    // An earlier export is kept unless --force says to replace it.
    let again = f.cli(&["history", "export", "--since", "1h", "--out", &out_dir]);
    assert_eq!(again.status.code(), Some(65), "{}", stderr(&again));
    let said = stderr(&again);
    assert!(said.contains("cluster.toml already exists; pass --force to replace it"), "{said}");
    let forced = f.cli(&["history", "export", "--since", "1h", "--out", &out_dir, "--force"]);
    assert!(forced.status.success(), "{}", stderr(&forced));
    let leftovers: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n != "cluster.toml" && n != "jobs.csv")
        .collect();
    assert!(leftovers.is_empty(), "no temporary file stays behind: {leftovers:?}");
    f.ok(&["cancel", &running.to_string()]);
    f.ok(&["cancel", &waiting.to_string()]);
}

#[test]
fn an_export_refuses_a_bad_since_and_anyone_but_an_installation_admin() {
    let f = Ferry::start(NodeSpec::default());
    f.ok(&["team", "add", "vision"]);
    f.ok(&["user", "add", "lead", "--team", "vision:admin"]);
    let lead = f.token_for("lead", "admin");
    let dir = f.root.path().join("export");
    let out_dir = dir.display().to_string();

    let out = f.cli(&["history", "export", "--since", "banana", "--out", &out_dir]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    let said = stderr(&out);
    assert!(said.contains("--since banana: not a duration or a time"), "{said}");
    assert!(said.contains("30d") && said.contains("2025-05-01T00:00:00Z"), "{said}");

    let out = f.cli_as(Some(&lead), &["history", "export", "--since", "30d", "--out", &out_dir], "");
    assert_eq!(out.status.code(), Some(77), "{}", stderr(&out));
    let said = stderr(&out);
    assert!(said.contains("only an installation admin reads the installation's history"), "{said}");
    assert!(said.contains("ask an installation admin to run `ferry history export`"), "{said}");
    assert!(!dir.exists(), "nothing is written for a refused export");

    // A file where the directory should be is named as such.
    std::fs::write(&dir, "").unwrap();
    let out = f.cli(&["history", "export", "--out", &out_dir]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(stderr(&out).contains("a file, not a directory"), "{}", stderr(&out));
}
