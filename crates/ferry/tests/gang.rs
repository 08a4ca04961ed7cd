//! Multi-node jobs end to end: a gang of workers on two agents, started together, wired to find each other, and
//! ended together.

mod common;

use common::{stderr, Ferry, NodeSpec};

/// A server, node-a (the first agent, reachable at 127.0.0.1) and node-b, each with two GPUs.
fn two_nodes() -> Ferry {
    let mut f = Ferry::start_with_agent_config(NodeSpec::default(), "address = \"127.0.0.1\"", "30s");
    f.start_extra_agent("node-b", "local", 2);
    f
}

fn timeline(job: &serde_json::Value) -> Vec<String> {
    job["timeline"].as_array().unwrap().iter().map(|e| e["message"].as_str().unwrap().to_string()).collect()
}

/// Rank 0 listens on MASTER_ADDR:MASTER_PORT and rank 1 connects and says hello: the wiring a distributed training
/// framework's rendezvous relies on.
const RENDEZVOUS: &str = r#"
import os, socket, time
rank = int(os.environ["FERRY_NODE_RANK"])
addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
print(f"rank {rank} of {os.environ['FERRY_NUM_NODES']} torchrun={os.environ['PET_NNODES']}/{os.environ['PET_NODE_RANK']} gpus={os.environ['CUDA_VISIBLE_DEVICES']}")
print("tf", os.environ["TF_CONFIG"])
if rank == 0:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(1)
    conn, _ = s.accept()
    print("rank 0 heard:", conn.recv(100).decode())
else:
    for _ in range(200):
        try:
            conn = socket.create_connection((addr, port))
            break
        except OSError:
            time.sleep(0.05)
    conn.sendall(b"hello from rank 1")
    print("rank 1 said hello")
"#;

#[test]
fn a_gang_runs_one_worker_per_node_and_the_workers_find_each_other() {
    let f = two_nodes();
    std::fs::write(f.workdir().join("rendezvous.py"), RENDEZVOUS).unwrap();
    let id = f.submit(&["--nodes", "2", "--gpus", "2", "--cpus", "0.5", "--", "python3", "rendezvous.py"]);
    let job = f.wait_state(id, "succeeded");
    let workers = job["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2, "{job}");
    assert_eq!(workers[0]["node"], "node-a");
    assert_eq!(workers[1]["node"], "node-b");
    assert!(timeline(&job).iter().any(|m| m.starts_with("all 2 workers running, on nodes node-a, node-b")), "{job}");
    // The placement's reason names every worker's node and GPUs, rank 0 first.
    let placed = job["timeline"].as_array().unwrap().iter().find(|e| e["state"] == "starting").unwrap();
    assert_eq!(placed["reason"]["kind"], "placed", "{placed}");
    let nodes: Vec<&str> =
        placed["reason"]["workers"].as_array().unwrap().iter().map(|w| w["node"].as_str().unwrap()).collect();
    assert_eq!(nodes, ["node-a", "node-b"], "{placed}");
    assert_eq!(placed["reason"]["workers"][0]["gpu_ids"], workers[0]["gpu_ids"], "{placed}");
    let port = 29_500 + id % 1000;
    let rank0 = f.ok(&["logs", &id.to_string()]);
    assert!(rank0.starts_with("rank 0 of 2 torchrun=2/0 gpus=0,1\n"), "{rank0}");
    assert!(rank0.contains(&format!(r#""worker":["127.0.0.1:{port}","node-b:{port}"]"#)), "{rank0}");
    assert!(rank0.ends_with("rank 0 heard: hello from rank 1\n"), "{rank0}");
    let rank1 = f.ok(&["logs", &id.to_string(), "--rank", "1"]);
    assert!(rank1.starts_with("rank 1 of 2 torchrun=2/1 gpus=0,1\n"), "{rank1}");
    assert!(rank1.ends_with("rank 1 said hello\n"), "{rank1}");
    let shown = f.ok(&["show", &id.to_string()]);
    assert!(shown.contains("Worker 1:     node-b (GPUs: 0,1), ended: exited with code 0"), "{shown}");
    // Asking for a rank the job does not have is a clear error.
    let out = f.cli(&["logs", &id.to_string(), "--rank", "2"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("has 2 workers, ranks 0 to 1; there is no rank 2"), "{}", stderr(&out));
}

#[test]
fn a_gang_waits_holding_nothing_until_every_worker_fits() {
    let f = two_nodes();
    let blocker = f.submit(&["--gpus", "1", "--cpus", "0.1", "--", "sleep", "60"]);
    f.wait_state(blocker, "running");
    let gang = f.submit(&["--nodes", "2", "--gpus", "2", "--cpus", "0.1", "--", "echo", "together"]);
    f.wait_for("the gang to be explained", |f| f.job(gang)["waiting"]["reason"]["kind"] == "gang_waiting");
    let job = f.job(gang);
    assert_eq!(job["state"], "queued");
    assert_eq!(
        job["waiting"]["message"],
        "a gang of 2 workers starts only when 2 nodes in one pool have room at once; 1 node in pool local has room now (node-b)"
    );
    // Nothing of the gang holds GPUs while it waits: node-b stays wholly free.
    let nodes = f.json(&["nodes", "--json"]);
    let node_b = nodes["nodes"].as_array().unwrap().iter().find(|n| n["name"] == "node-b").unwrap().clone();
    assert_eq!(node_b["allocated_gpus"], 0, "{node_b}");
    f.ok(&["cancel", &blocker.to_string()]);
    let job = f.wait_state(gang, "succeeded");
    assert_eq!(f.ok(&["logs", &gang.to_string(), "--rank", "1"]), "together\n", "{job}");
}

#[test]
fn the_first_worker_to_fail_stops_the_others_and_fails_the_job() {
    let f = two_nodes();
    let script = "if [ \"$FERRY_NODE_RANK\" = 1 ]; then echo giving up; exit 3; fi; sleep 60";
    let id = f.submit(&["--nodes", "2", "--gpus", "1", "--cpus", "0.1", "--", "sh", "-c", script]);
    let job = f.wait_state(id, "failed");
    assert_eq!(job["exit_code"], 3, "{job}");
    assert_eq!(job["message"], "worker 1 failed: exit code 3; the other workers were stopped", "{job}");
    assert_eq!(job["workers"][0]["end"]["state"], "cancelled", "{job}");
    assert_eq!(f.ok(&["logs", &id.to_string(), "--rank", "1"]), "giving up\n");
    // `ferry run --follow` exits with the job's code for a gang too.
    let out = f.cli(&["run", "--nodes", "2", "--cpus", "0.1", "--follow", "--", "sh", "-c", script]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
}

#[test]
fn a_gang_whose_program_cannot_start_fails_at_once_without_retries() {
    // Every worker fails to start; whichever reports last, the gang ends as the first did: not retried, as a
    // single-node job that cannot start is not (another try would fail the same way).
    let f = two_nodes();
    let id = f.submit(&["--nodes", "2", "--cpus", "0.1", "--retries", "2", "--", "/no/such/program"]);
    let job = f.wait_state(id, "failed");
    assert_eq!(job["attempt"], 0, "{job}");
    let ends: Vec<&serde_json::Value> = job["workers"].as_array().unwrap().iter().map(|w| &w["end"]).collect();
    assert!(ends.iter().any(|e| e["failed_to_start"] == true), "{job}");
}

#[test]
fn a_gang_survives_a_server_restart_and_ends_once() {
    let mut f = two_nodes();
    let script = "echo started $FERRY_NODE_RANK; sleep $((1 + 2 * FERRY_NODE_RANK)); echo done $FERRY_NODE_RANK";
    let id = f.submit(&["--nodes", "2", "--gpus", "1", "--cpus", "0.1", "--", "sh", "-c", script]);
    f.wait_state(id, "running");
    f.kill_server();
    // Rank 0 ends while the server is down; rank 1 after it is back.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    f.start_server();
    let job = f.wait_state(id, "succeeded");
    assert_eq!(f.ok(&["logs", &id.to_string()]), "started 0\ndone 0\n", "{job}");
    assert_eq!(f.ok(&["logs", &id.to_string(), "--rank", "1"]), "started 1\ndone 1\n", "{job}");
    let ended = timeline(&job).iter().filter(|m| m.starts_with("worker ") && m.contains(" ended: ")).count();
    assert_eq!(ended, 2, "{:?}", timeline(&job));
}

#[test]
fn impossible_gangs_are_refused_with_the_reason() {
    let f = two_nodes();
    let refused = |args: &[&str], message: &str| {
        let out = f.cli(args);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {}", stderr(&out));
        assert_eq!(stderr(&out).trim_end(), message, "{args:?}");
    };
    refused(
        &["run", "--nodes", "3", "--gpus", "1", "--", "true"],
        "error: a gang of 3 workers needs 3 nodes in one pool that can each hold a worker; at most 2 can; ask for fewer --nodes, or fewer resources per node",
    );
    refused(
        &["run", "--nodes", "2", "--gpus", "0.5", "--", "true"],
        "error: a multi-node job takes whole GPUs on each node; use --gpus 1 or more with --nodes, not a share",
    );
    refused(
        &["run", "--nodes", "0", "--", "true"],
        "error: nodes is 0; a job runs on 1 to 1024 nodes, such as --nodes 4 for a gang of four workers",
    );
    assert_eq!(f.json(&["ps", "--all", "--json"])["jobs"].as_array().map(Vec::len), Some(0), "nothing was queued");
}
