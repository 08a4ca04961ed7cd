//! `ferry top`, end to end: one plain frame (`--once`, or stdout not a terminal) from a real server and agent shows
//! the nodes with every GPU, who holds it and what it measured, and the running jobs; a server that is not there is
//! an error with the CLI's usual exit code.

mod common;

use std::process::Command;

use common::{build_fake_nvml, ferry_bin, stderr, Ferry, NodeSpec};

/// The line of `frame` whose first word is `first`.
fn row<'a>(frame: &'a str, first: &str) -> &'a str {
    frame
        .lines()
        .find(|l| l.split_whitespace().next() == Some(first))
        .unwrap_or_else(|| panic!("no line starting with {first:?} in:\n{frame}"))
}

/// The cells of a row: its columns are at least two spaces apart.
fn cells(line: &str) -> Vec<&str> {
    line.split("  ").map(str::trim).filter(|c| !c.is_empty()).collect()
}

fn top(f: &Ferry) -> String {
    let out = f.cli(&["top", "--once"]);
    assert!(out.status.success(), "ferry top --once failed: {}\n{}", stderr(&out), f.logs_for_failure());
    let frame = String::from_utf8(out.stdout).unwrap();
    assert!(!frame.contains('\x1b'), "a plain frame has no escapes:\n{frame:?}");
    frame
}

#[test]
fn one_frame_shows_each_gpu_its_holder_and_no_data_where_nothing_was_measured() {
    // GPUs declared in the agent's configuration have no telemetry: they must show "no data", never 0%.
    let f = Ferry::start(NodeSpec { gpus: 2, ..NodeSpec::default() });
    let id =
        f.submit(&["--gpus", "1", "--cpus", "0.5", "--memory", "512MiB", "--name", "trainer", "--", "sleep", "300"]);
    let job = f.wait_state(id, "running");
    let gpu = job["gpu_ids"][0].as_u64().unwrap();
    let other = 1 - gpu;
    f.wait_for("the node to show the job's allocation", |f| top(f).contains("GPUs 1/2 allocated"));

    let frame = top(&f);
    println!("{frame}");
    assert!(frame.starts_with(&format!("ferry top  {}  ", f.url())), "{frame}");
    assert!(frame.contains("Nodes 1/1 ready   GPUs 1/2 allocated, util no data"), "{frame}");
    assert!(frame.contains("Jobs 1 running, 0 queued"), "{frame}");

    let node = row(&frame, "node-a");
    assert_eq!(cells(node)[..4], ["node-a", "local", "ready", "0.5/4"], "{frame}");
    assert!(node.contains(&format!("{gpu}:alloc no data")), "{frame}");
    assert!(node.contains(&format!("{other}:free  no data")), "{frame}");
    assert!(!node.contains("0%"), "no telemetry is not 0%:\n{frame}");

    let job_row = cells(row(&frame, &id.to_string()));
    let owner = job["owner"].as_str().unwrap();
    assert_eq!(job_row[1..5], [owner, "-", "1", &format!("node-a:{gpu}")][..], "{frame}");
    assert_eq!(job_row[5], "-", "the job's GPU has no telemetry:\n{frame}");
    assert!(job_row[6].ends_with("/0.5") && job_row[7].ends_with("/512MiB"), "{frame}");
    assert_eq!(job_row.last(), Some(&"trainer"), "{frame}");
}

#[test]
fn measured_gpus_show_their_utilisation_on_the_node_and_on_the_job() {
    let library_dir = tempfile::tempdir().unwrap();
    let library = build_fake_nvml(library_dir.path(), &[]);
    let f = Ferry::start_with_agent_config(
        NodeSpec { gpus: 0, ..NodeSpec::default() },
        &format!("nvml_library = '{}'", library.display()),
        "30s",
    );
    let id = f.submit(&["--gpus", "2", "--cpus", "0.5", "--", "sleep", "300"]);
    f.wait_state(id, "running");
    f.wait_for("GPU telemetry and the allocation", |f| {
        let frame = top(f);
        frame.contains("GPUs 2/2 allocated, util 50%") && frame.contains("0:alloc [")
    });

    let frame = top(&f);
    println!("{frame}");
    let node = row(&frame, "node-a");
    assert!(node.contains("0:alloc [#########.]  87%    20GiB"), "{frame}");
    assert!(node.contains("1:alloc [##........]  13%    20GiB"), "{frame}");
    let job_row = cells(row(&frame, &id.to_string()));
    assert_eq!(job_row[3..5], ["2", "node-a:0,1"], "{frame}");
    // The job's own measurement when the agent reports one; else the mean of its GPUs, 87% and 13%.
    let expected = match f.job(id)["usage"]["gpu_utilization_percent"].as_f64() {
        Some(u) if u < 10.0 => format!("{}% IDLE", u.round()),
        Some(u) => format!("{}%", u.round()),
        None => "50%".to_string(),
    };
    assert_eq!(job_row[5], expected, "{frame}");
}

#[test]
fn a_server_that_is_not_there_is_an_error_with_the_usual_exit_code() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    // `--once`, and a pipe for stdout without it: both print one frame, or fail.
    for args in [&["top", "--once"][..], &["top"][..]] {
        let out = Command::new(ferry_bin())
            .args(args)
            .env("FERRY_SERVER", format!("http://127.0.0.1:{port}"))
            .env("FERRY_TOKEN", "x")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(69), "ferry {args:?}: {}", stderr(&out));
        assert_eq!(
            stderr(&out).trim(),
            format!("error: no Ferry server at http://127.0.0.1:{port}; start one with `ferry up`")
        );
        assert!(out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stdout));
    }
}
