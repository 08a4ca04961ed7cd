//! What the server forgets on its own, and what it refuses to keep: the retention sweep (run at start and hourly)
//! removes old jobs' output and then the jobs, never an unfinished one, and says so where the output was; a
//! project's artifacts stay within its quota.
//!
//! Time is not waited for: the tests stop the server, move the jobs' end back in its database (as if they had
//! finished days ago), and start it again, which runs the sweep.

mod common;

use std::path::Path;

use common::{stderr, Ferry, NodeSpec};
use reqwest::blocking::Client;
use serde_json::Value;

const DAY_US: i64 = 86_400_000_000;

/// Moves the end (and start and submission) of `job` back by `days`, in the stopped server's database.
fn backdate(f: &Ferry, job: u64, days: i64) {
    let db = f.home().join("ferry.db");
    let sql = format!(
        "UPDATE jobs SET finished_at_us = finished_at_us - {shift}, started_at_us = started_at_us - {shift}, \
         submitted_at_us = submitted_at_us - {shift} WHERE id = {job}",
        shift = days * DAY_US
    );
    let script = "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute(sys.argv[2]); c.commit()";
    let out = std::process::Command::new("python3").args(["-c", script]).arg(&db).arg(&sql).output().unwrap();
    assert!(out.status.success(), "backdating job {job}: {}", stderr(&out));
}

fn exists(path: &Path) -> bool {
    path.try_exists().unwrap()
}

#[test]
fn the_sweep_removes_old_output_then_old_jobs_and_says_so_never_touching_unfinished_ones() {
    let mut f =
        Ferry::start_with_server_config(NodeSpec::default(), "", "[retention]\nlogs = \"2d\"\njobs = \"10d\"\n");
    let old_output = f.submit(&["--", "sh", "-c", "echo output-of-the-old-job"]);
    let old_job = f.submit(&["--", "sh", "-c", "echo output-of-the-older-job"]);
    let recent = f.submit(&["--", "sh", "-c", "echo output-of-the-recent-job"]);
    for id in [old_output, old_job, recent] {
        f.wait_state(id, "succeeded");
    }
    let running = f.submit(&["--", "sleep", "600"]);
    f.wait_state(running, "running");
    assert!(f.ok(&["logs", &old_output.to_string()]).contains("output-of-the-old-job"));
    let logs_dir = f.home().join("logs");
    assert!(exists(&logs_dir.join(old_output.to_string())) && exists(&logs_dir.join(old_job.to_string())));

    f.kill_server();
    backdate(&f, old_output, 3);
    backdate(&f, old_job, 11);
    // A job still running is never forgotten, however long ago it was submitted.
    backdate(&f, running, 30);
    f.start_server();

    let id = old_output.to_string();
    f.wait_for("the sweep to remove the old job's output", |f| !f.cli(&["logs", &id]).status.success());
    let out = f.cli(&["logs", &id]);
    assert_eq!(out.status.code(), Some(66), "{}", stderr(&out));
    let said = stderr(&out);
    assert!(
        said.contains(&format!(
            "the output of job {id} was removed by the server's retention 3 days after the job finished"
        )) && said.contains("[retention] logs"),
        "{said}"
    );
    assert!(!exists(&logs_dir.join(&id)), "the files are gone");
    let shown = f.ok(&["show", &id]);
    assert!(shown.contains("removed by the server's retention 3 days after the job finished"), "{shown}");
    let job = f.job(old_output);
    assert_eq!(job["state"], "succeeded", "the job itself is kept: {job}");
    assert!(job["output_removed_at_us"].as_i64().is_some(), "{job}");

    // Through the API: 410 with the reason, not an empty answer.
    let token = std::fs::read_to_string(f.home().join("admin.token")).unwrap();
    let answer =
        Client::new().get(format!("{}/api/v1/jobs/{id}/logs", f.url())).bearer_auth(token.trim()).send().unwrap();
    assert_eq!(answer.status().as_u16(), 410);
    let body: Value = answer.json().unwrap();
    assert_eq!(body["code"], "gone", "{body}");

    // Past the jobs' retention the job goes, with its output and timeline.
    let gone = old_job.to_string();
    f.wait_for("the sweep to delete the older job", |f| f.cli(&["show", &gone]).status.code() == Some(66));
    assert!(!exists(&logs_dir.join(&gone)));
    let listed = f.json(&["ps", "--all", "--json"]);
    let ids: Vec<u64> = listed["jobs"].as_array().unwrap().iter().filter_map(|j| j["id"].as_u64()).collect();
    assert!(!ids.contains(&old_job) && ids.contains(&old_output) && ids.contains(&recent), "{ids:?}");

    // The recent job and the running one are untouched.
    assert!(f.ok(&["logs", &recent.to_string()]).contains("output-of-the-recent-job"));
    assert_eq!(f.state(running), "running");
    assert!(f.job(recent)["output_removed_at_us"].is_null());
}

#[test]
fn retention_periods_are_checked_when_the_server_starts() {
    let out = common::server_with_config("[retention]\nlogs = \"1h\"\n");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("[retention] `logs` = `1h` is under a day"), "{}", stderr(&out));
}

/// Calls an artifact endpoint with the admin token: the status and the JSON body.
fn artifact(f: &Ferry, method: reqwest::Method, rest: &str, body: Option<reqwest::blocking::Body>) -> (u16, Value) {
    let token = std::fs::read_to_string(f.home().join("admin.token")).unwrap();
    let url = format!("{}/api/2.0/mlflow-artifacts/artifacts/{rest}", f.url());
    let mut request = Client::new().request(method, url).bearer_auth(token.trim());
    if let Some(body) = body {
        request = request.body(body);
    }
    let response = request.send().unwrap();
    (response.status().as_u16(), response.json().unwrap_or(Value::Null))
}

#[test]
fn a_projects_artifacts_stay_within_its_quota_and_nothing_stored_is_lost() {
    let config = "[[team]]\nname = \"ml\"\nquota = { gpus = 8 }\n\n[[team.project]]\nname = \"vision\"\n\
                  quota = { gpus = 2 }\nartifact_quota = 1000\n";
    let mut f = Ferry::start_with_server_config(NodeSpec::default(), "", config);
    let id = f.submit(&["--team", "ml", "--project", "vision", "--", "true"]);
    let job = f.wait_state(id, "succeeded");
    let folder = format!(
        "{}/{}/artifacts",
        job["tracking"]["experiment_id"].as_str().unwrap(),
        job["tracking"]["run_id"].as_str().unwrap()
    );
    let put = |f: &Ferry, name: &str, bytes: usize| {
        artifact(f, reqwest::Method::PUT, &format!("{folder}/{name}"), Some(vec![7u8; bytes].into()))
    };
    let on_disk = |f: &Ferry, name: &str| {
        std::fs::metadata(f.home().join("artifacts").join(&folder).join(name)).ok().map(|m| m.len())
    };

    assert_eq!(put(&f, "a.bin", 600).0, 200);
    let (status, body) = put(&f, "b.bin", 600);
    assert_eq!((status, body["error_code"].as_str()), (507, Some("RESOURCE_EXHAUSTED")), "{body}");
    let message = body["message"].as_str().unwrap();
    for part in
        ["project ml/vision", "quota of 1000B", "600B are stored", "nothing of it was kept", "DELETE", "artifact_quota"]
    {
        assert!(message.contains(part), "{part}: {message}");
    }
    // Streamed without a length, it is refused at the first byte past the limit, and leaves nothing.
    let streamed = reqwest::blocking::Body::new(std::io::Read::take(std::io::repeat(1), 600));
    assert_eq!(artifact(&f, reqwest::Method::PUT, &format!("{folder}/c.bin"), Some(streamed)).0, 507);
    assert_eq!((on_disk(&f, "a.bin"), on_disk(&f, "b.bin"), on_disk(&f, "c.bin")), (Some(600), None, None));

    // Replacing a file counts only what it adds; deleting one makes room.
    assert_eq!(put(&f, "a.bin", 900).0, 200);
    assert_eq!(put(&f, "small.bin", 101).0, 507);
    assert_eq!(artifact(&f, reqwest::Method::DELETE, &format!("{folder}/a.bin"), None).0, 200);
    assert_eq!(put(&f, "b.bin", 600).0, 200);

    // After a restart the server counts what is stored again.
    f.kill_server();
    f.start_server();
    assert_eq!(put(&f, "c.bin", 600).0, 507);
    assert_eq!(put(&f, "c.bin", 400).0, 200);
    assert_eq!(on_disk(&f, "b.bin"), Some(600));
}
