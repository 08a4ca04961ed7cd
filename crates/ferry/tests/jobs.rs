//! Running jobs on one machine, end to end: the real binary, real processes, real output.

mod common;

use common::{stderr, Ferry, NodeSpec};
use serde_json::json;

#[test]
fn follow_streams_output_and_exits_with_the_job_exit_code() {
    let f = Ferry::start(NodeSpec::default());
    let out = f.cli(&["run", "--follow", "--", "sh", "-c", "echo out; echo err >&2; pwd; exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    let expected = format!("out\nerr\n{}\n", f.workdir().canonicalize().unwrap().display());
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected);
    let job = f.job(1);
    assert_eq!(job["state"], "failed");
    assert_eq!(job["exit_code"], 7);
    let states: Vec<&str> = job["timeline"].as_array().unwrap().iter().map(|e| e["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["queued", "starting", "running", "failed"]);
}

#[test]
fn each_job_sees_exactly_its_gpus_and_a_waiting_job_says_who_holds_them() {
    let f = Ferry::start(NodeSpec { gpus: 2, ..NodeSpec::default() });
    let script = "echo \"gpus=$CUDA_VISIBLE_DEVICES job=$FERRY_JOB_ID\"; sleep 30";
    let a = f.submit(&["--gpus", "1", "--cpus", "0.1", "--", "sh", "-c", script]);
    let b = f.submit(&["--gpus", "1", "--cpus", "0.1", "--", "sh", "-c", script]);
    let c = f.submit(&["--gpus", "2", "--cpus", "0.1", "--", "true"]);
    let cpu_only = f.submit(&["--cpus", "0.1", "--", "sh", "-c", "echo gpus=[$CUDA_VISIBLE_DEVICES]"]);
    f.wait_state(a, "running");
    f.wait_state(b, "running");
    f.wait_state(cpu_only, "succeeded");
    f.wait_for("both GPU jobs to print", |f| {
        f.ok(&["logs", &a.to_string()]).contains("gpus=") && f.ok(&["logs", &b.to_string()]).contains("gpus=")
    });
    let mut seen = vec![f.ok(&["logs", &a.to_string()]), f.ok(&["logs", &b.to_string()])];
    seen.sort();
    assert_eq!(seen, [format!("gpus=0 job={a}\n"), format!("gpus=1 job={b}\n")]);
    assert_eq!(f.ok(&["logs", &cpu_only.to_string()]), "gpus=[]\n");
    let waiting = f.job(c);
    assert_eq!(waiting["state"], "queued");
    assert_eq!(
        waiting["waiting"]["message"],
        format!("needs 2 GPUs; node node-a has 0 free (2 held by jobs {a} and {b})")
    );
    // The same reason as data, typed on the wire and tagged by `kind` as before.
    let reason = json!({
        "kind": "insufficient", "resource": "gpus", "needed": 2, "more_nodes": 0,
        "shortfalls": [{ "node": "node-a", "resource": "gpus", "free": 0, "held": 2, "held_by": [a, b] }],
    });
    assert_eq!(waiting["waiting"]["reason"], reason);
    let shown = f.ok(&["show", &c.to_string()]);
    assert!(
        shown.contains(&format!("Waiting:      needs 2 GPUs; node node-a has 0 free (2 held by jobs {a} and {b})")),
        "{shown}"
    );
    f.ok(&["cancel", &a.to_string(), &b.to_string()]);
    f.wait_state(c, "succeeded");
}

#[test]
fn jobs_start_by_priority_then_submission_order_without_overcommitting() {
    let f = Ferry::start(NodeSpec { cpus: 1, ..NodeSpec::default() });
    let blocker = f.submit(&["--cpus", "1", "--", "sleep", "30"]);
    f.wait_state(blocker, "running");
    let low = f.submit(&["--cpus", "1", "--priority", "low", "--", "true"]);
    let normal1 = f.submit(&["--cpus", "1", "--", "true"]);
    let normal2 = f.submit(&["--cpus", "1", "--", "true"]);
    let high = f.submit(&["--cpus", "1", "--priority", "high", "--", "true"]);
    assert_eq!(f.state(low), "queued");
    f.ok(&["cancel", &blocker.to_string()]);
    for id in [low, normal1, normal2, high] {
        f.wait_state(id, "succeeded");
    }
    let started = |id: u64| f.job(id)["started_at_us"].as_i64().unwrap();
    let finished = |id: u64| f.job(id)["finished_at_us"].as_i64().unwrap();
    let order = [high, normal1, normal2, low];
    for pair in order.windows(2) {
        assert!(
            finished(pair[0]) <= started(pair[1]),
            "job {} must finish before {} starts on one CPU",
            pair[0],
            pair[1]
        );
    }
}

#[test]
fn logs_keep_every_byte_of_large_binary_and_unterminated_output() {
    let f = Ferry::start(NodeSpec::default());
    // 100 MB as fast as the job can write it, then bytes that are not UTF-8 and no final newline.
    let script = "head -c 100000000 /dev/zero | tr '\\0' 'x'; printf '\\377\\376 no newline'";
    let id = f.submit(&["--cpus", "0.5", "--", "sh", "-c", script]);
    f.wait_state(id, "succeeded");
    let out = f.cli(&["logs", &id.to_string()]);
    assert!(out.status.success());
    assert_eq!(out.stdout.len(), 100_000_000 + 13);
    assert!(out.stdout[..100_000_000].iter().all(|&b| b == b'x'));
    assert_eq!(&out.stdout[100_000_000..], b"\xff\xfe no newline");
    assert_eq!(f.job(id)["log_bytes"], 100_000_013);
}

#[test]
fn logs_follow_prints_output_while_the_job_runs() {
    let f = Ferry::start(NodeSpec::default());
    let marker = f.workdir().join("go");
    let script = format!("echo first; while [ ! -e {} ]; do sleep 0.05; done; echo second", marker.display());
    let id = f.submit(&["--cpus", "0.1", "--", "sh", "-c", &script]);
    let mut follower = std::process::Command::new(common::ferry_bin())
        .args(["logs", "-f", &id.to_string()])
        .env("FERRY_HOME", f.home())
        .env("FERRY_SERVER", f.url())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = follower.stdout.take().unwrap();
    let mut first = [0u8; 6];
    std::io::Read::read_exact(&mut stdout, &mut first).unwrap();
    assert_eq!(&first, b"first\n", "the follower printed output while the job was still running");
    std::fs::write(&marker, "").unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert_eq!(rest, "second\n");
    assert!(follower.wait().unwrap().success());
}

#[test]
fn cancel_stops_the_whole_process_group() {
    let f = Ferry::start(NodeSpec::default());
    // A grandchild found on the host by its argument (ids inside the job's process namespace differ).
    let id = f.submit(&["--cpus", "0.1", "--", "sh", "-c", "sleep 313.25 & wait"]);
    f.wait_for("the child to start", |_| common::process_with_arg("313.25").is_some());
    let out = f.ok(&["cancel", &id.to_string()]);
    assert!(out.contains("stopping"), "{out}");
    let job = f.wait_state(id, "cancelled");
    assert!(job["message"].as_str().unwrap().starts_with("cancelled by request"), "{job}");
    f.wait_for("the grandchild to be gone", |_| common::process_with_arg("313.25").is_none());
    // Cancelling again is a clear conflict, not a crash.
    let again = f.cli(&["cancel", &id.to_string()]);
    assert_eq!(again.status.code(), Some(65));
    assert!(
        stderr(&again).contains(&format!("job {id} already cancelled; there is nothing to cancel")),
        "{}",
        stderr(&again)
    );
}

#[test]
fn a_queued_job_is_cancelled_at_once() {
    let f = Ferry::start(NodeSpec { gpus: 1, ..NodeSpec::default() });
    let holder = f.submit(&["--gpus", "1", "--cpus", "0.1", "--", "sleep", "30"]);
    let queued = f.submit(&["--gpus", "1", "--cpus", "0.1", "--", "true"]);
    f.wait_state(holder, "running");
    assert_eq!(f.ok(&["cancel", &queued.to_string()]), format!("job {queued} cancelled\n"));
    assert_eq!(f.job(queued)["message"], "cancelled by admin before it started");
}

#[test]
fn max_runtime_is_enforced_and_reported() {
    let f = Ferry::start(NodeSpec::default());
    let out = f.cli(&["run", "--follow", "--max-runtime", "1s", "--cpus", "0.1", "--", "sleep", "60"]);
    assert_eq!(out.status.code(), Some(124), "{}", stderr(&out));
    let job = f.job(1);
    assert_eq!(job["state"], "timed_out");
    assert!(job["message"].as_str().unwrap().contains("maximum runtime"), "{job}");
}

#[test]
fn a_failing_job_is_retried_then_recorded_failed() {
    let f = Ferry::start(NodeSpec::default());
    let out = f.cli(&[
        "run",
        "--follow",
        "--retries",
        "2",
        "--cpus",
        "0.1",
        "--",
        "sh",
        "-c",
        "echo attempt $FERRY_ATTEMPT; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3));
    let job = f.job(1);
    assert_eq!(job["attempt"], 2);
    assert_eq!(job["state"], "failed");
    let timeline = job["timeline"].as_array().unwrap();
    let retries: Vec<usize> =
        (0..timeline.len()).filter(|i| timeline[*i]["message"].as_str().unwrap().contains("retrying")).collect();
    assert_eq!(retries.len(), 2);
    // Each retry waits longer than the one before (2 s, then 4 s) before it may start.
    for (n, (at, delay)) in retries.iter().zip([2, 4]).enumerate() {
        let message = timeline[*at]["message"].as_str().unwrap();
        assert!(message.ends_with(&format!("retrying in {delay}s (attempt {} of 3)", n + 2)), "{message}");
        // The same, as data.
        let reason = &timeline[*at]["reason"];
        assert_eq!(reason["kind"], "requeued", "{reason}");
        assert_eq!((&reason["cause"]["kind"], &reason["cause"]["delay_s"]), (&json!("failed"), &json!(delay)));
        assert_eq!((reason["attempt"].as_u64(), reason["attempts"].as_u64()), (Some(n as u64 + 2), Some(3)));
        let requeued = timeline[*at]["at_us"].as_i64().unwrap();
        let not_before_us = reason["not_before_us"].as_i64().unwrap();
        assert!((not_before_us - requeued - delay * 1_000_000).abs() < 1_000_000, "{reason} at {requeued}");
        let placed = timeline[at + 1..].iter().find(|e| e["state"] == "starting").unwrap()["at_us"].as_i64().unwrap();
        assert!(
            placed - requeued >= delay * 1_000_000,
            "attempt {} started {}us after its failure",
            n + 2,
            placed - requeued
        );
    }
    assert_eq!(f.ok(&["logs", "1"]), "attempt 2\n");
}

#[test]
fn environment_and_names_reach_the_job() {
    let f = Ferry::start(NodeSpec::default());
    let out = f.cli(&[
        "run",
        "--follow",
        "--name",
        "train",
        "--project",
        "vision",
        "--env",
        "ALPHA=1=2",
        "--cpus",
        "0.1",
        "--",
        "sh",
        "-c",
        "echo $ALPHA",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1=2\n");
    let ps = f.ok(&["ps", "--all"]);
    assert!(ps.lines().next().unwrap().starts_with("ID  NAME   STATE"), "{ps}");
    assert!(ps.contains("train") && ps.contains("succeeded"), "{ps}");
    let listed = f.json(&["ps", "--state", "succeeded", "--json"]);
    assert_eq!(listed["jobs"][0]["project"], "vision");
}

#[test]
fn nodes_show_capacity_allocation_and_measured_use() {
    let f = Ferry::start(NodeSpec { gpus: 2, cpus: 4, memory: "8GiB" });
    let id = f.submit(&["--gpus", "1", "--cpus", "1.5", "--memory", "1GiB", "--", "sleep", "30"]);
    f.wait_state(id, "running");
    f.wait_for("usage to be reported", |f| !f.json(&["nodes", "--json"])["nodes"][0]["usage"].is_null());
    let node = &f.json(&["nodes", "--json"])["nodes"][0];
    assert_eq!(node["cpu_millis"], 4000);
    assert_eq!(node["allocated_cpu_millis"], 1500);
    assert_eq!(node["allocated_gpus"], 1);
    assert_eq!(node["running_jobs"], serde_json::json!([id]));
    assert!(node["usage"]["memory_used_bytes"].as_u64().unwrap() > 0);
    let table = f.ok(&["nodes"]);
    assert!(table.contains("node-a") && table.contains("1.5/4") && table.contains("1/2"), "{table}");
}

#[test]
fn memory_limits_are_enforced_where_cgroups_allow() {
    let f = Ferry::start(NodeSpec::default());
    let limits = f.json(&["nodes", "--json"])["nodes"][0]["limits"].as_str().unwrap().to_string();
    let script = "x=$(head -c 200000000 /dev/zero | tr '\\0' 'y'); echo ${#x}";
    let out = f.cli(&["run", "--follow", "--memory", "64MiB", "--cpus", "0.5", "--", "sh", "-c", script]);
    if limits == "none" {
        // Measuring only: the job may use what it likes and completes.
        assert_eq!(out.status.code(), Some(0));
    } else {
        let job = f.job(1);
        assert_eq!(job["state"], "failed", "a job over its memory limit is killed ({limits}): {job}");
        assert_eq!(job["signal"], 9, "{job}");
        assert_eq!(out.status.code(), Some(137));
    }
}

#[test]
fn gpu_shares_models_and_selectors_decide_where_jobs_run() {
    let f =
        Ferry::start_with_agent_config(NodeSpec { gpus: 2, ..NodeSpec::default() }, "labels = { rack = \"a\" }", "30s");
    let script = "echo gpus=$CUDA_VISIBLE_DEVICES; sleep 30";
    let half_a = f.submit(&["--gpus", "0.5", "--cpus", "0.1", "--", "sh", "-c", script]);
    let half_b = f.submit(&["--gpus", "0.5", "--cpus", "0.1", "--selector", "rack=a", "--", "sh", "-c", script]);
    let whole = f.submit(&["--gpus", "1", "--cpus", "0.1", "--gpu-type", "test gpu", "--", "sh", "-c", script]);
    for id in [half_a, half_b, whole] {
        f.wait_for("its output", |f| f.ok(&["logs", &id.to_string()]).starts_with("gpus="));
    }
    assert_eq!(f.ok(&["logs", &half_a.to_string()]), "gpus=0\n", "two halves share one GPU");
    assert_eq!(f.ok(&["logs", &half_b.to_string()]), "gpus=0\n");
    assert_eq!(f.ok(&["logs", &whole.to_string()]), "gpus=1\n", "the whole GPU is the other one");
    assert_eq!(f.job(half_a)["gpu_share_milli"], 500);
    let shown = f.ok(&["show", &whole.to_string()]);
    assert!(shown.contains("Only on:      test gpu"), "{shown}");
    // A third half cannot start: one GPU is shared full, the other is held whole; it says by whom.
    let third = f.submit(&["--gpus", "0.5", "--cpus", "0.1", "--", "true"]);
    assert_eq!(
        f.job(third)["waiting"]["message"],
        format!("needs 1 GPU; node node-a has 0 free (2 held by jobs {half_a}, {half_b} and {whole})")
    );
    let refused = |args: &[&str], message: &str| {
        let out = f.cli(args);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {}", stderr(&out));
        assert_eq!(stderr(&out).trim_end(), message);
    };
    refused(
        &["run", "--gpu-type", "A100", "--gpus", "1", "--", "true"],
        "error: no node in any pool has GPU model A100; the GPU models known are Test GPU; change --gpu-type or --selector",
    );
    refused(
        &["run", "--selector", "rack=b", "--", "true"],
        "error: no node in any pool has labels rack=b; change --gpu-type or --selector",
    );
    refused(
        &["run", "--gpus", "1.5", "--", "true"],
        "error: `1.5` GPUs: ask for whole GPUs (1, 2, ...) or a share of one GPU between 0 and 1, such as 0.5",
    );
}

#[test]
fn owned_pools_fill_first_then_jobs_burst_in_the_configured_order() {
    let pools = "[[pool]]\nname = \"local\"\norder = 0\n\n[[pool]]\nname = \"cloud\"\norder = 10\nburst = true\n";
    let mut f = Ferry::start_with_server_config(NodeSpec { gpus: 1, ..NodeSpec::default() }, "pool = \"local\"", pools);
    f.start_extra_agent("cloud-1", "cloud", 4);
    let owned = f.submit(&["--gpus", "1", "--cpus", "0.1", "--", "sleep", "30"]);
    f.wait_state(owned, "running");
    assert_eq!(f.job(owned)["node"], "node-a", "owned capacity fills first although the cloud node is larger");
    let burst = f.submit(&["--gpus", "1", "--cpus", "0.1", "--", "true"]);
    let job = f.wait_state(burst, "succeeded");
    assert_eq!(job["node"], "cloud-1");
    let placed = job["timeline"].as_array().unwrap().iter().find(|e| e["state"] == "starting").unwrap().clone();
    assert!(placed["message"].as_str().unwrap().contains("burst to pool cloud"), "{placed}");
    // The same reason as data: the pool, the node and GPU, and that it burst.
    let reason = &placed["reason"];
    assert_eq!(reason["kind"], "placed", "{placed}");
    assert_eq!(reason["pool"], "cloud");
    assert_eq!(reason["workers"], json!([{ "node": "cloud-1", "gpu_ids": [0] }]));
    assert_eq!(reason["cpu_millis"], 100);
    assert!(reason["burst_waited_s"].is_u64(), "{placed}");
    assert!(reason.get("backfilled_before").is_none(), "{placed}");
    let shown = f.ok(&["show", &burst.to_string()]);
    assert!(shown.contains("Placed:       in pool cloud, of 1 candidate node; burst after waiting "), "{shown}");
}

#[test]
fn a_higher_priority_job_preempts_with_a_grace_period_and_the_victim_is_requeued() {
    let f = Ferry::start(NodeSpec { gpus: 1, ..NodeSpec::default() });
    let script =
        "trap 'echo checkpoint saved; exit 0' TERM; echo attempt $FERRY_ATTEMPT; while true; do sleep 0.05; done";
    let low = f.submit(&["--gpus", "1", "--cpus", "0.1", "--priority", "low", "--", "sh", "-c", script]);
    f.wait_for("the low job to run", |f| f.ok(&["logs", &low.to_string()]) == "attempt 0\n");
    let high = f.submit(&["--gpus", "1", "--cpus", "0.1", "--priority", "high", "--", "echo", "urgent work"]);
    f.wait_state(high, "succeeded");
    let job = f.job(low);
    let timeline: Vec<String> =
        job["timeline"].as_array().unwrap().iter().map(|e| e["message"].as_str().unwrap().to_string()).collect();
    assert!(
        timeline.iter().any(|m| m.starts_with(&format!("preempted for job {high}: a job of higher priority"))),
        "{timeline:?}"
    );
    assert!(timeline.iter().any(|m| m.contains("of work lost; requeued")), "{timeline:?}");
    // The same reason as data: for which job, by which rule, with what grace; the other entries have none.
    let reasons: Vec<serde_json::Value> =
        job["timeline"].as_array().unwrap().iter().filter_map(|e| e.get("reason").cloned()).collect();
    let preempted: Vec<&serde_json::Value> = reasons.iter().filter(|r| r["kind"] == "preempted").collect();
    let expected = json!({
        "kind": "preempted", "by": high, "grace_s": 10,
        "rule": { "kind": "priority", "victim_priority": -100, "preemptor_priority": 100 },
    });
    assert_eq!(preempted, [&expected], "{job}");
    // The requeue that follows says so as data too: preempted, its next attempt the second of two (a preemption
    // adds an attempt and uses no retry).
    let requeued: Vec<&serde_json::Value> = reasons.iter().filter(|r| r["kind"] == "requeued").collect();
    assert_eq!(requeued.len(), 1, "{reasons:?}");
    assert_eq!(requeued[0]["cause"]["kind"], "preempted", "{reasons:?}");
    assert!(requeued[0]["cause"]["ran_s"].as_u64().is_some(), "{reasons:?}");
    assert_eq!((requeued[0]["attempt"].as_u64(), requeued[0]["attempts"].as_u64()), (Some(2), Some(2)));
    assert!(reasons.iter().all(|r| ["placed", "preempted", "requeued"].contains(&r["kind"].as_str().unwrap())));
    // The victim checkpointed on SIGTERM, and runs again once the GPU is free.
    // SIGTERM reaches the whole process group: the shell's `sleep` dies of it too, which the shell reports.
    let first = f.ok(&["logs", &low.to_string(), "--attempt", "0"]);
    assert!(first.starts_with("attempt 0\n") && first.ends_with("checkpoint saved\n"), "{first}");
    f.wait_for("the requeued run", |f| f.ok(&["logs", &low.to_string()]) == "attempt 1\n");
    assert_eq!(f.job(low)["retries"], 0, "a preemption does not use up retries");
}

#[test]
fn under_least_attained_a_job_that_checkpoints_is_paused_for_one_that_had_less_gpu_time() {
    // Levels and lease in seconds, so the test runs in seconds: a job that had 2 GPU-seconds is in the second level.
    let config = "queue_order = \"least-attained\"\nqueue_lease = \"1s\"\nqueue_levels = [\"2s\"]\n";
    let f = Ferry::start_with_server_config(NodeSpec { gpus: 1, ..NodeSpec::default() }, "", config);
    let script = "trap 'echo checkpoint saved; exit 0' TERM; echo attempt $FERRY_ATTEMPT; \
                  if [ \"$FERRY_ATTEMPT\" != 0 ]; then echo resumed; exit 0; fi; while true; do sleep 0.05; done";
    let long = f.submit(&["--gpus", "1", "--cpus", "0.1", "--checkpoints", "--", "sh", "-c", script]);
    f.wait_for("the long job to run", |f| f.ok(&["logs", &long.to_string()]) == "attempt 0\n");
    std::thread::sleep(std::time::Duration::from_secs(3));
    let short = f.submit(&["--gpus", "1", "--cpus", "0.1", "--", "echo", "short work"]);
    f.wait_state(short, "succeeded");
    f.wait_state(long, "succeeded");
    // The pause is a preemption by the attained-service rule, with both jobs' GPU time, as data.
    let job = f.job(long);
    let preempted: Vec<&serde_json::Value> = job["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e.get("reason"))
        .filter(|r| r["kind"] == "preempted")
        .collect();
    assert_eq!(preempted.len(), 1, "{job}");
    assert_eq!((preempted[0]["by"].as_u64(), preempted[0]["rule"]["kind"].as_str()), (Some(short), Some("attained")));
    assert!(preempted[0]["rule"]["victim_gpu_s"].as_u64().unwrap() >= 2, "{job}");
    assert_eq!(preempted[0]["rule"]["preemptor_gpu_s"], 0, "{job}");
    assert_eq!((job["checkpoints"].as_bool(), job["preemptions"].as_u64()), (Some(true), Some(1)));
    assert!(job["attained_gpu_s"].as_u64().unwrap() >= 2, "{job}");
    let message = job["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .find(|m| m.starts_with(&format!("preempted for job {short}")));
    assert!(message.unwrap().contains("it resumes from its checkpoint (least-attained order)"), "{job}");
    // It saved its checkpoint on SIGTERM and resumed in its next attempt.
    assert!(f.ok(&["logs", &long.to_string(), "--attempt", "0"]).ends_with("checkpoint saved\n"));
    assert_eq!(f.ok(&["logs", &long.to_string()]), "attempt 1\nresumed\n");
    let shown = f.ok(&["show", &long.to_string()]);
    assert!(shown.contains("Checkpoints:") && shown.contains("preempted once"), "{shown}");

    // A job that does not checkpoint is never paused for attained service: the newcomer waits.
    let plain = f.submit(&["--gpus", "1", "--cpus", "0.1", "--", "sh", "-c", "while true; do sleep 0.05; done"]);
    f.wait_state(plain, "running");
    std::thread::sleep(std::time::Duration::from_secs(3));
    let waiting = f.submit(&["--gpus", "1", "--cpus", "0.1", "--", "true"]);
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!((f.job(plain)["state"].as_str(), f.job(waiting)["state"].as_str()), (Some("running"), Some("queued")));
    f.ok(&["cancel", &plain.to_string()]);
    f.wait_state(waiting, "succeeded");
}

#[test]
fn a_waiting_job_is_told_when_it_can_expect_to_start() {
    let f = Ferry::start(NodeSpec { gpus: 1, ..NodeSpec::default() });
    let holder = f.submit(&["--gpus", "1", "--cpus", "0.1", "--max-runtime", "1h", "--", "sleep", "30"]);
    f.wait_state(holder, "running");
    let waiting = f.submit(&["--gpus", "1", "--cpus", "0.1", "--max-runtime", "30m", "--", "true"]);
    let estimate = f.job(waiting)["waiting"]["estimated_start_us"].as_i64().expect("an estimate");
    let started = f.job(holder)["started_at_us"].as_i64().unwrap();
    assert!((estimate - (started + 3_600_000_000)).abs() < 5_000_000, "the holder's limit ends in an hour");
    // The job behind it waits for the holder and then for it: the queue ahead counts.
    let behind = f.submit(&["--gpus", "1", "--cpus", "0.1", "--", "true"]);
    let estimate = f.job(behind)["waiting"]["estimated_start_us"].as_i64().expect("an estimate");
    assert!((estimate - (started + 5_400_000_000)).abs() < 5_000_000, "an hour and a half: {estimate}");
    let shown = f.ok(&["show", &waiting.to_string()]);
    assert!(shown.contains("Starts:       in about 59m") || shown.contains("Starts:       in about 1h00m"), "{shown}");
    // Without a limit on the holder, Ferry says it cannot tell.
    let f2 = Ferry::start(NodeSpec { gpus: 1, ..NodeSpec::default() });
    let unlimited = f2.submit(&["--gpus", "1", "--cpus", "0.1", "--", "sleep", "30"]);
    f2.wait_state(unlimited, "running");
    let blind = f2.submit(&["--gpus", "1", "--cpus", "0.1", "--", "true"]);
    assert!(f2
        .ok(&["show", &blind.to_string()])
        .contains("Starts:       unknown: a job it waits for (running, or ahead in the queue) has no --max-runtime"));
}

#[test]
fn jobs_are_listed_by_owner_team_project_pool_and_time_and_bad_filters_are_named() {
    let f = Ferry::start(NodeSpec::default());
    for (team, project) in [("vision", "detector"), ("vision", "segmenter"), ("nlp", "parser")] {
        let _ = f.cli(&["team", "add", team]);
        f.ok(&["team", "project", team, project]);
    }
    let submit = |team: &str, project: &str| {
        let id = f.submit(&["--team", team, "--project", project, "--cpus", "0.1", "--", "true"]);
        f.wait_state(id, "succeeded");
        id
    };
    let (a, b, c) = (submit("vision", "detector"), submit("vision", "segmenter"), submit("nlp", "parser"));
    let ids = |args: &[&str]| -> Vec<u64> {
        let mut all = vec!["ps", "--all", "--json"];
        all.extend_from_slice(args);
        let list = f.json(&all);
        list["jobs"]
            .as_array()
            .unwrap_or_else(|| panic!("{args:?}: {list}"))
            .iter()
            .map(|j| j["id"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(ids(&["--team", "vision"]), [b, a]);
    assert_eq!(ids(&["--project", "parser"]), [c]);
    assert_eq!(ids(&["--team", "vision", "--project", "parser"]), Vec::<u64>::new());
    assert_eq!(ids(&["--pool", "local", "--since", "1h"]), [c, b, a]);
    assert_eq!(ids(&["--pool", "elsewhere"]), Vec::<u64>::new());
    let owner = f.job(a)["owner"].as_str().unwrap().to_string();
    assert_eq!(ids(&["--owner", &owner, "--limit", "2"]), [c, b]);
    assert_eq!(ids(&["--owner", &owner, "--limit", "2", "--before", &b.to_string()]), [a], "the next page");
    assert_eq!(ids(&["--owner", "nobody"]), Vec::<u64>::new());

    let out = f.cli(&["ps", "--since", "last tuesday"]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(stderr(&out).contains("`since=last tuesday` is neither a time"), "{}", stderr(&out));
}

#[test]
fn a_job_pinned_to_a_pool_runs_there_and_an_unknown_pool_is_refused_with_the_pools() {
    let mut f = Ferry::start(NodeSpec::default());
    f.start_extra_agent("node-b", "cloud", 2);
    f.wait_for("node-b to be ready", |f| {
        f.json(&["nodes", "--json"])["nodes"].as_array().is_some_and(|n| n.iter().any(|n| n["name"] == "node-b"))
    });
    let id = f.submit(&["--pool", "cloud", "--gpus", "1", "--cpus", "0.1", "--", "true"]);
    let job = f.wait_state(id, "succeeded");
    assert_eq!((job["node"].as_str(), job["pool"].as_str()), (Some("node-b"), Some("cloud")), "{job}");

    let out = f.cli(&["run", "--pool", "moon", "--", "true"]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(stderr(&out).contains("there is no pool `moon`; the pools are cloud, local"), "{}", stderr(&out));
    assert!(stderr(&out).contains("change --pool"), "{}", stderr(&out));

    // `ferry pools` shows what each pool's backend can do: pools of agents run images and gangs, measure and pin
    // GPUs, and have no engine's native view.
    let pools = f.json(&["pools", "--json"]);
    for pool in pools["pools"].as_array().unwrap() {
        let c = &pool["capabilities"];
        let got =
            ["images", "gangs", "gpus_measured", "native_view", "node_pinning", "gpu_pinning"].map(|k| c[k].as_bool());
        assert_eq!(got, [true, true, true, false, true, true].map(Some), "{pool}");
    }
    let table = f.ok(&["pools"]);
    assert!(
        table.contains("CAPABILITIES") && table.contains("images, gangs, GPUs measured, node pinning, GPU pinning"),
        "{table}"
    );
}

#[test]
fn a_job_cancelled_the_moment_it_is_placed_ends_cancelled() {
    // The stop can reach the node's mailbox before the node fetched the start (it then replaces it) or in the same
    // batch: the node never runs the job, and must still say it ended, or the job would stay `starting` for ever.
    let f = Ferry::start(NodeSpec::default());
    let token = std::fs::read_to_string(f.home().join("admin.token")).unwrap().trim().to_string();
    let client = reqwest::blocking::Client::new();
    let mut ids = Vec::new();
    // A paused agent fetches nothing: each stop replaces its start in the mailbox.
    let agent = f.agent_pid().to_string();
    assert!(std::process::Command::new("kill").args(["-STOP", &agent]).status().unwrap().success());
    for _ in 0..20 {
        let submitted: serde_json::Value = client
            .post(format!("{}/api/v1/jobs", f.url()))
            .bearer_auth(&token)
            .json(&serde_json::json!({ "command": ["sleep", "100"], "cpu_millis": 100, "workdir": "/" }))
            .send()
            .unwrap()
            .json()
            .unwrap();
        let id = submitted["id"].as_u64().unwrap();
        let cancelled = client.post(format!("{}/api/v1/jobs/{id}/cancel", f.url())).bearer_auth(&token).send().unwrap();
        assert!(cancelled.status().is_success(), "{}", cancelled.text().unwrap());
        ids.push(id);
    }
    assert!(std::process::Command::new("kill").args(["-CONT", &agent]).status().unwrap().success());
    for id in ids {
        f.wait_state(id, "cancelled");
    }
}
