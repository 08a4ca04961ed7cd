//! Bad input gets a clear message and a documented exit code; the API answers 4xx with a JSON error.

mod common;

use std::process::Command;

use common::{ferry_bin, stderr, Ferry, NodeSpec};

fn check(f: &Ferry, args: &[&str], code: i32, message: &str) {
    let out = f.cli(args);
    assert_eq!(out.status.code(), Some(code), "ferry {args:?}: {}", stderr(&out));
    assert_eq!(stderr(&out).trim_end(), message, "ferry {args:?}");
}

#[test]
fn bad_job_requests_are_refused_with_a_reason() {
    let f = Ferry::start(NodeSpec { gpus: 2, ..NodeSpec::default() });
    check(
        &f,
        &["run", "--memory", "8XB", "--", "true"],
        64,
        "error: `8XB` is not a memory size; write a number and a unit, such as 8GiB, 512MiB or 1.5GB",
    );
    check(
        &f,
        &["run", "--cpus", "0", "--", "true"],
        64,
        "error: `0` is zero CPUs; every job needs some CPU, such as 0.1 or 1",
    );
    check(
        &f,
        &["run", "--cpus", "-1", "--", "true"],
        64,
        "error: `-1` is not a CPU count; write a positive number such as 2, 0.5 or 250m",
    );
    check(
        &f,
        &["run", "--memory", "0", "--", "true"],
        64,
        "error: `0` is zero; ask for a positive amount of memory, such as 512MiB",
    );
    check(&f, &["run", "--"], 64, "error: no command given; put it after `--`, as in `ferry run -- python train.py`");
    check(
        &f,
        &["run", "--gpus", "16", "--", "true"],
        64,
        "error: no node in any pool has 16 GPUs; the largest has 2; ask for less with --gpus, --cpus or --memory",
    );
    check(&f, &["run", "--memory", "1TiB", "--", "true"],
        64, "error: no node in any pool has 1TiB of memory; the largest has 8GiB; ask for less with --gpus, --cpus or --memory");
    check(
        &f,
        &["run", "--max-runtime", "2 hours", "--", "true"],
        64,
        "error: `2 hours` is not a duration; write a number and a unit, such as 90s, 30m, 2h or 1h30m",
    );
    check(
        &f,
        &["run", "--priority", "vip", "--", "true"],
        64,
        "error: `vip` is not a priority; use low, normal, high or urgent",
    );
    check(
        &f,
        &["run", "--env", "NOEQUALS", "--", "true"],
        64,
        "error: `NOEQUALS` is not NAME=VALUE; write --env NAME=VALUE",
    );
    let out = f.cli(&["run", "--gpus", "-1", "--", "true"]);
    assert_eq!(out.status.code(), Some(2), "clap rejects a negative GPU count: {}", stderr(&out));
    // Nothing above was accepted.
    assert_eq!(f.json(&["ps", "--all", "--json"])["jobs"], serde_json::json!([]));
}

#[test]
fn unknown_jobs_and_states_are_named() {
    let f = Ferry::start(NodeSpec::default());
    check(&f, &["show", "42"], 66, "error: no job 42; `ferry ps --all` lists jobs");
    check(&f, &["logs", "42"], 66, "error: no job 42; `ferry ps --all` lists jobs");
    check(&f, &["cancel", "42"], 66, "error: no job 42; `ferry ps --all` lists jobs");
    check(
        &f,
        &["cancel", "42", "43"],
        66,
        "error: no job 42; `ferry ps --all` lists jobs\nerror: no job 43; `ferry ps --all` lists jobs\n\
         error: some jobs were not cancelled (see above)",
    );
    check(&f, &["show", "abc"], 64, "error: `abc` is not a job id; job ids are numbers, as `ferry ps` shows them");
    check(&f, &["ps", "--state", "done"], 64,
        "error: `done` is not a job state; use one of queued, starting, running, succeeded, failed, cancelled, timed_out, lost");
}

#[test]
fn tokens_are_required_and_checked() {
    let f = Ferry::start(NodeSpec::default());
    let out = Command::new(ferry_bin())
        .args(["ps"])
        .env("FERRY_SERVER", f.url())
        .env("FERRY_TOKEN", "ferry_wrong")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(77));
    assert_eq!(stderr(&out).trim(), "error: the API token is not valid; check --token or FERRY_TOKEN");
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(ferry_bin())
        .args(["ps"])
        .env("FERRY_SERVER", f.url())
        .env("FERRY_HOME", empty.path())
        .env_remove("FERRY_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(77));
    assert!(stderr(&out).starts_with("error: no API token; pass one with --token or FERRY_TOKEN"), "{}", stderr(&out));
}

#[test]
fn with_no_server_and_no_token_the_missing_server_is_named() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(ferry_bin())
        .args(["ps"])
        .env("FERRY_SERVER", format!("http://127.0.0.1:{port}"))
        .env("FERRY_HOME", empty.path())
        .env("FERRY_CREDENTIALS", empty.path().join("credentials.json"))
        .env_remove("FERRY_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(69), "{}", stderr(&out));
    assert!(stderr(&out).contains("no Ferry server at"), "{}", stderr(&out));
}

#[test]
fn followed_jobs_say_why_they_ended_and_one_failed_cancel_says_it_once() {
    let f = Ferry::start(NodeSpec::default());
    let out = f.cli(&["run", "--max-runtime", "2s", "--follow", "--", "sleep", "10"]);
    assert_eq!(out.status.code(), Some(124), "{}", stderr(&out));
    assert!(stderr(&out).contains("was stopped at its maximum runtime (2s); exit code 124"), "{}", stderr(&out));
    let out = f.cli(&["run", "--follow", "--", "sh", "-c", "kill -9 $$"]);
    assert_eq!(out.status.code(), Some(137), "{}", stderr(&out));
    assert!(stderr(&out).contains("was killed by signal 9; exit code 137"), "{}", stderr(&out));
    let done = f.submit(&["--", "true"]);
    f.wait_state(done, "succeeded");
    let out = f.cli(&["cancel", &done.to_string()]);
    assert_eq!(out.status.code(), Some(65), "{}", stderr(&out));
    assert_eq!(stderr(&out).matches("error:").count(), 1, "{}", stderr(&out));
    assert!(!stderr(&out).contains("see above"), "{}", stderr(&out));
    // The server's log, written to a file, carries no terminal colour codes.
    let log = std::fs::read_to_string(f.root.path().join("server.log")).unwrap();
    assert!(!log.contains('\u{1b}'), "ANSI escapes in a redirected log");
}

#[test]
fn a_server_that_is_not_running_is_reported_with_the_fix() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = Command::new(ferry_bin())
        .args(["ps"])
        .env("FERRY_SERVER", format!("http://127.0.0.1:{port}"))
        .env("FERRY_TOKEN", "x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(69));
    assert_eq!(
        stderr(&out).trim(),
        format!("error: no Ferry server at http://127.0.0.1:{port}; start one with `ferry up`")
    );
}

fn server_in(dir: &std::path::Path) -> std::process::Output {
    Command::new(ferry_bin()).args(["server", "--listen", "127.0.0.1:0"]).env("FERRY_HOME", dir).output().unwrap()
}

#[test]
fn a_foreign_or_corrupt_data_directory_is_refused() {
    let foreign = tempfile::tempdir().unwrap();
    std::fs::write(foreign.path().join("thesis.tex"), "precious").unwrap();
    let out = server_in(foreign.path());
    assert_eq!(out.status.code(), Some(78));
    assert!(
        stderr(&out).contains("is not a Ferry data directory (it holds other files and no FERRY_DATA_DIR)"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_dir(foreign.path()).unwrap().count(), 1, "nothing was written into it");

    let corrupt = tempfile::tempdir().unwrap();
    std::fs::write(corrupt.path().join("FERRY_DATA_DIR"), "ferry data directory, layout 1\n").unwrap();
    std::fs::write(corrupt.path().join("ferry.db"), vec![0x42u8; 8192]).unwrap();
    let out = server_in(corrupt.path());
    assert_eq!(out.status.code(), Some(78));
    assert!(stderr(&out).contains("is damaged or unreadable"), "{}", stderr(&out));
}

#[test]
fn a_second_server_on_one_data_directory_is_refused() {
    let f = Ferry::start(NodeSpec::default());
    let out = server_in(&f.home());
    assert_eq!(out.status.code(), Some(78));
    assert!(stderr(&out).contains("another Ferry server (pid"), "{}", stderr(&out));
}

#[test]
fn the_api_answers_bad_requests_with_json_errors() {
    let f = Ferry::start(NodeSpec::default());
    let token = std::fs::read_to_string(f.home().join("admin.token")).unwrap();
    let curl = |args: &[&str]| -> (u16, serde_json::Value) {
        let out = Command::new("curl")
            .args(["-s", "-w", "\n%{http_code}", "-H", &format!("Authorization: Bearer {}", token.trim())])
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.parse().unwrap(), serde_json::from_str(body).unwrap_or(serde_json::Value::Null))
    };
    let url = |p: &str| format!("{}/api/v1{p}", f.url());
    let (code, body) = curl(&["-X", "POST", "-H", "content-type: application/json", "-d", "{not json", &url("/jobs")]);
    assert_eq!((code, body["code"].as_str()), (400, Some("invalid_request")), "{body}");
    let (code, body) = curl(&[
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "-d",
        r#"{"command":["true"],"workdir":"/","cpu_millis":-5}"#,
        &url("/jobs"),
    ]);
    assert_eq!(code, 400, "{body}");
    let (code, body) = curl(&[
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "-d",
        r#"{"command":["true"],"workdir":"relative"}"#,
        &url("/jobs"),
    ]);
    assert_eq!(
        (code, body["message"].as_str()),
        (400, Some("the working directory `relative` must be an absolute path"))
    );
    let (code, body) = curl(&[
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "-d",
        r#"{"command":[],"workdir":"/"}"#,
        &url("/jobs"),
    ]);
    assert_eq!((code, body["code"].as_str()), (400, Some("invalid_request")));
    let (code, body) = curl(&[&url("/jobs/99999999999999999999999")]);
    assert_eq!((code, body["code"].as_str()), (400, Some("invalid_request")));
    let (code, body) = curl(&[&url("/nowhere")]);
    assert_eq!((code, body["code"].as_str()), (404, Some("not_found")));
    let (code, body) = curl(&["-X", "DELETE", &url("/jobs")]);
    assert_eq!((code, body["code"].as_str()), (400, Some("invalid_request")), "{body}");
    let (code, doc) = curl(&[&url("/openapi.json")]);
    assert_eq!(code, 200);
    assert!(doc["paths"]["/api/v1/jobs"]["post"].is_object(), "the OpenAPI document lists job submission");
    // Nothing accepted so far, and the server is still healthy.
    assert_eq!(f.json(&["ps", "--all", "--json"])["jobs"], serde_json::json!([]));
}

#[test]
fn a_bad_configuration_file_is_named_with_its_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.toml");
    std::fs::write(&config, "[[pool]]\nname = \"local\"\nordr = 0\n").unwrap();
    let out = Command::new(ferry_bin())
        .args(["server", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .env("FERRY_HOME", dir.path().join("data"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let message = stderr(&out);
    assert!(
        message.starts_with(&format!("error: {}: TOML parse error at line 3, column 1", config.display())),
        "{message}"
    );
    assert!(message.contains("unknown field `ordr`"), "{message}");
}
