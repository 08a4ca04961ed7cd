//! Nothing lost: the server or the agent killed with SIGKILL while jobs run, then restarted.

mod common;

use common::{Ferry, NodeSpec};

#[test]
fn a_server_killed_mid_run_loses_nothing() {
    let mut f = Ferry::start(NodeSpec { gpus: 1, ..NodeSpec::default() });
    let gate = f.workdir().join("gate");
    let script = format!("echo before; while [ ! -e {} ]; do sleep 0.05; done; echo after; exit 4", gate.display());
    let running = f.submit(&["--gpus", "1", "--cpus", "0.1", "--", "sh", "-c", &script]);
    let queued = f.submit(&["--gpus", "1", "--cpus", "0.1", "--", "echo", "queued-ran"]);
    f.wait_state(running, "running");
    f.wait_for("the first output to arrive", |f| f.ok(&["logs", &running.to_string()]) == "before\n");
    f.kill_server();
    // The job finishes while the server is down.
    std::fs::write(&gate, "").unwrap();
    f.wait_for("the run to end while the server is down", |f| {
        std::fs::read_dir(f.agent_dir().join("runs")).unwrap().flatten().any(|e| e.path().join("exit.json").exists())
    });
    f.start_server();
    let job = f.wait_state(running, "failed");
    assert_eq!(job["exit_code"], 4);
    assert_eq!(f.ok(&["logs", &running.to_string()]), "before\nafter\n");
    // The queued job was still queued after the restart, and ran once the GPU was free.
    f.wait_state(queued, "succeeded");
    assert_eq!(f.ok(&["logs", &queued.to_string()]), "queued-ran\n");
}

#[test]
fn an_agent_killed_and_restarted_adopts_its_running_jobs() {
    let mut f = Ferry::start(NodeSpec::default());
    let gate = f.workdir().join("gate");
    let script = format!("echo one; while [ ! -e {} ]; do sleep 0.05; done; echo two", gate.display());
    let id = f.submit(&["--cpus", "0.1", "--", "sh", "-c", &script]);
    f.wait_for("output", |f| f.ok(&["logs", &id.to_string()]) == "one\n");
    f.kill_agent();
    std::fs::write(&gate, "").unwrap();
    f.start_agent();
    let job = f.wait_state(id, "succeeded");
    assert_eq!(job["attempt"], 0, "the job ran once: {job}");
    assert_eq!(f.ok(&["logs", &id.to_string()]), "one\ntwo\n");
}

#[test]
fn jobs_of_a_dead_agent_are_lost_or_requeued_and_a_returning_agent_stops_stale_runs() {
    let mut f = Ferry::start_with_timeout(NodeSpec::default(), "2s");
    let lost = f.submit(&["--cpus", "0.1", "--", "sleep", "300.25"]);
    let retried =
        f.submit(&["--cpus", "0.1", "--retries", "1", "--", "sh", "-c", "echo attempt $FERRY_ATTEMPT; sleep 300"]);
    f.wait_state(lost, "running");
    f.wait_state(retried, "running");
    f.kill_agent();
    let job = f.wait_state(lost, "lost");
    assert!(job["message"].as_str().unwrap().contains("stopped reporting"), "{job}");
    // The same as data: which node, and that it stopped reporting for the node timeout.
    let node = job["node"].as_str().unwrap().to_string();
    let loss = job["timeline"].as_array().unwrap().iter().find_map(|e| e.get("reason").filter(|r| r["kind"] == "lost"));
    let expected = serde_json::json!({"kind": "lost", "node": node, "cause": {"kind": "node_silent", "timeout_s": 2}});
    assert_eq!(loss, Some(&expected), "{job}");
    f.wait_for("the retried job to be queued again", |f| f.job(retried)["attempt"] == 1);
    assert_eq!(f.state(retried), "queued");
    // Its timeline says why as data: its node was lost, and the retry is its second attempt of two.
    let requeued = f.job(retried)["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|e| e.get("reason").filter(|r| r["kind"] == "requeued").cloned())
        .expect("a requeued entry with its reason");
    let expected =
        serde_json::json!({"kind": "node_lost", "node": node, "cause": {"kind": "node_silent", "timeout_s": 2}});
    assert_eq!(requeued["cause"], expected, "{requeued}");
    assert_eq!((requeued["attempt"].as_u64(), requeued["attempts"].as_u64()), (Some(2), Some(2)), "{requeued}");
    let nodes = f.json(&["nodes", "--json"]);
    assert_eq!(nodes["nodes"][0]["state"], "not_ready");
    // The old runs still run: the agent died, not its supervisors. When it returns, the server tells it to stop
    // them, and the retried job starts a fresh attempt.
    assert!(common::process_with_arg("300.25").is_some());
    f.start_agent();
    f.wait_for("the stale run to be stopped", |_| common::process_with_arg("300.25").is_none());
    f.wait_state(retried, "running");
    f.wait_for("attempt 1 output", |f| f.ok(&["logs", &retried.to_string()]) == "attempt 1\n");
}
