//! The OpenAPI documents against the real server: both are served without a token, and Schemathesis (from PyPI, in
//! the venv that `scripts/schemathesis/install.sh` makes) fuzzes Ferry's API from its document once per role: an
//! installation admin, a team admin with an `admin` token, a team member with a `submit` token and a viewer with a
//! `read` token. Each run must find no
//! server error (5xx), no status code or content type the document does not list for the operation, and no body
//! that breaks the documented schema; afterwards the server's log must hold no panic.
//!
//! That every route of the table is in a document with the security of its rule is checked without a server, in
//! `ferry-server`'s `routes::openapi` unit tests.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::{Ferry, NodeSpec};
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The `schemathesis` command of the venv, or `None` (with a note) when the venv is missing outside CI. Under CI
/// (`CI` set) a missing venv fails the test: there the install script has run, so its absence is a fault.
fn schemathesis() -> Option<PathBuf> {
    let venv = std::env::var_os("FERRY_SCHEMATHESIS_VENV")
        .map_or_else(|| root().join("target/engines/schemathesis"), PathBuf::from);
    let command = venv.join("bin/schemathesis");
    if command.exists() {
        return Some(command);
    }
    let note = format!("schemathesis is not installed in {}; run scripts/schemathesis/install.sh", venv.display());
    assert!(std::env::var_os("CI").is_none(), "{note}");
    eprintln!("SKIPPED: {note}");
    None
}

/// What every response is checked for (Schemathesis' names).
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance";

/// Test cases per operation and phase: enough to reach each operation's boundaries and malformed inputs, few enough
/// that the three runs take about a minute on two cores.
const EXAMPLES_PER_OPERATION: &str = "15";

/// Operations the fuzzer must not call, because they would take away what the run itself stands on or hold it up;
/// all are covered by the access matrix (`tests/access.rs`) and their own tests instead.
const EXCLUDED_PATHS: [&str; 4] = [
    // Token ids are small integers, so the fuzzer would soon revoke the very tokens the runs authenticate with.
    "/api/v1/tokens/{id}/revoke",
    // Likewise, disabling users would lock out the users the runs speak for.
    "/api/v1/users/{name}/disable",
    // Long polls: on a job the fuzzer submitted, these hold the request open for up to a minute (`wait`) or until
    // the job ends (`logs?follow=true`), which without an agent is never; each call would spend the run's time.
    "/api/v1/jobs/{id}/wait",
    "/api/v1/jobs/{id}/logs",
];

fn get(f: &Ferry, path: &str) -> (u16, Value) {
    let response = reqwest::blocking::get(format!("{}{path}", f.url())).unwrap();
    (response.status().as_u16(), response.json().unwrap())
}

#[test]
fn both_documents_are_served_without_a_token() {
    let f = Ferry::start(NodeSpec::default());
    let (status, api) = get(&f, "/api/v1/openapi.json");
    assert_eq!(status, 200);
    assert_eq!(api["paths"]["/api/v1/health"]["get"]["security"], serde_json::json!([]));
    assert_eq!(api["paths"]["/api/v1/users"]["post"]["x-ferry-access"], "user:admin");
    let (status, mlflow) = get(&f, "/api/v1/openapi-mlflow.json");
    assert_eq!(status, 200);
    let run = &mlflow["paths"]["/api/2.0/mlflow/runs/get"]["get"];
    assert_eq!(run["security"], serde_json::json!([{ "user_token": ["read"] }, { "job_token": [] }]));
    assert!(run["responses"]["401"].is_object() && run["responses"]["403"].is_object(), "{run}");
}

#[test]
fn schemathesis_finds_nothing_for_any_role() {
    let Some(schemathesis) = schemathesis() else { return };
    // Schemathesis presents bad tokens on purpose; the per-source limit on failed checks would soon answer 429.
    let mut f = Ferry::start_with_server_env(NodeSpec::default(), &[("FERRY_AUTH_FAILURES_PER_MINUTE", "100000")]);
    for args in [
        &["team", "add", "vision"][..],
        &["user", "add", "ana", "--team", "vision"],
        &["user", "add", "vic", "--team", "vision:viewer"],
        &["user", "add", "lead", "--team", "vision:admin"],
    ] {
        f.ok(args);
    }
    let token = |user: &str, scope: &str| {
        f.ok(&["token", "create", "--for", user, "--scope", scope, "--name", "schemathesis"]).trim().to_string()
    };
    let roles = [
        ("installation admin", std::fs::read_to_string(f.home().join("admin.token")).unwrap().trim().to_string()),
        ("team admin (admin scope)", token("lead", "admin")),
        ("member (submit scope)", token("ana", "submit")),
        ("viewer (read scope)", token("vic", "read")),
    ];
    // The fuzzer submits jobs with generated commands; without an agent they stay queued and nothing runs them.
    f.kill_agent();
    let seed = std::env::var("FERRY_SCHEMATHESIS_SEED").unwrap_or_else(|_| "1".to_string());
    let document = format!("{}/api/v1/openapi.json", f.url());
    let mut failures = Vec::new();
    for (role, token) in &roles {
        let started = Instant::now();
        let mut command = Command::new(&schemathesis);
        command
            .args(["run", &document, "--checks", CHECKS, "--max-examples", EXAMPLES_PER_OPERATION])
            .args(["--seed", &seed, "--workers", "1", "--no-color"])
            .args(["-H", &format!("Authorization: Bearer {token}")])
            // Its example database and reports go to the test's own folder.
            .current_dir(f.root.path());
        for path in EXCLUDED_PATHS {
            command.args(["--exclude-path", path]);
        }
        let out = command.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        eprintln!("schemathesis as {role} (seed {seed}): {:?}, {:.0} s", out.status, started.elapsed().as_secs_f64());
        if !out.status.success() {
            failures.push(format!("--- as {role}:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
        }
    }
    assert!(failures.is_empty(), "schemathesis found problems (seed {seed}):\n{}", failures.join("\n"));
    let log = std::fs::read_to_string(f.root.path().join("server.log")).unwrap();
    assert!(!log.contains("panicked"), "the server panicked:\n{}", f.logs_for_failure());
}
