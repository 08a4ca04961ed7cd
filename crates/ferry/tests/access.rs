//! The access matrix: every route of the server against every kind of caller, each with its expected answer.
//!
//! The route list comes from the server itself (`ferry_server::route_specs`, the table the router is built from), so
//! a route added without a row here fails `every_route_has_a_row`. The expectations are written by hand, per route,
//! in the callers' order of `CALLERS`:
//! `A` admitted (any answer but 401 and 403; a 4xx about the request itself counts), `N` hidden (404: the object
//! exists but is not the caller's to see), `F` forbidden (403), `U` unauthenticated (401).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Ferry, NodeSpec};
use serde_json::{json, Value};

/// The callers, in the order of each row's letters.
const CALLERS: [&str; 14] = [
    "installation admin",
    "team admin (vision, admin scope)",
    "member (vision, submit scope, owns the job)",
    "member of another team (nlp, admin scope)",
    "viewer (vision, read scope)",
    "service account (vision member, submit scope)",
    "agent of this node (node-a)",
    "agent of another node (node-z)",
    "job token of this job",
    "job token of another job",
    "expired token",
    "revoked token",
    "malformed token",
    "no token",
];

/// One route: its method and path as the server lists them, the concrete request (path with `<job>`, `<run>`,
/// `<exp>`, `<token>`, `<model>` filled in, and a JSON body), and the expected answer per caller.
struct Row {
    method: &'static str,
    route: &'static str,
    path: &'static str,
    body: Option<&'static str>,
    expect: &'static str,
}

const fn row(
    method: &'static str,
    route: &'static str,
    path: &'static str,
    body: Option<&'static str>,
    expect: &'static str,
) -> Row {
    Row { method, route, path, body, expect }
}

const EVERYONE: &str = "AAAAAAAAAAAAAA";
const USERS: &str = "AAAAAAFFFFUUUU";
const USERS_J1: &str = "AAANAAFFFFUUUU";
const SUBMITTERS: &str = "AAAAFAFFFFUUUU";
const INSTALLATION_ADMIN: &str = "AFFFFFFFFFUUUU";
const TEAM_ADMINS: &str = "AAFNFFFFFFUUUU";
const AGENTS: &str = "FFFFFFAAFFUUUU";
const THIS_NODE: &str = "FFFFFFAFFFUUUU";
const RUN_READERS: &str = "AAANAAFFANUUUU";
const RUN_WRITERS: &str = "AAANFFFFANUUUU";
const TRACKING_READERS: &str = "AAAAAAFFAAUUUU";
const TRACKING_CREATORS: &str = "AAAAFAFFFFUUUU";
const EXPERIMENT_WRITERS: &str = "AAANFFFFFNUUUU";
const RUN_CREATORS: &str = "AAANFAFFFFUUUU";

/// Every route, in the order the requests are made (destructive ones last within their kind).
const ROWS: &[Row] = &[
    // Public.
    row("GET", "/api/v1/health", "/api/v1/health", None, EVERYONE),
    row("GET", "/metrics", "/metrics", None, EVERYONE),
    row("GET", "/api/v1/openapi.json", "/api/v1/openapi.json", None, EVERYONE),
    row("GET", "/api/v1/openapi-mlflow.json", "/api/v1/openapi-mlflow.json", None, EVERYONE),
    row("GET", "/api/v1/tls/ca", "/api/v1/tls/ca", None, EVERYONE),
    row("GET", "/", "/", None, EVERYONE),
    row("GET", "/nodes", "/nodes", None, EVERYONE),
    row("GET", "/jobs", "/jobs", None, EVERYONE),
    row("GET", "/jobs/{id}", "/jobs/<job>", None, EVERYONE),
    row("GET", "/usage", "/usage", None, EVERYONE),
    row("GET", "/sweeps", "/sweeps", None, EVERYONE),
    row("GET", "/sweeps/{id}", "/sweeps/1", None, EVERYONE),
    row("GET", "/login", "/login", None, EVERYONE),
    // An empty sign-in form is refused with the form again; a sign-out must come from the dashboard's own page.
    row("POST", "/login", "/login", None, "UUUUUUUUUUUUUU"),
    row("POST", "/logout", "/logout", None, "FFFFFFFFFFFFFF"),
    row("GET", "/ui/{name}", "/ui/app.js", None, EVERYONE),
    // A wrong ticket: 404 to everyone (crates/ferry/tests/engines.rs fetches with a right one).
    row(
        "POST",
        "/api/v1/runs/{job}/{attempt}/secrets",
        "/api/v1/runs/<job>/0/secrets",
        Some(r#"{"ticket": "ab"}"#),
        EVERYONE,
    ),
    // Single sign-on is not configured here: these answer 404 to everyone (crates/ferry/tests/sso.rs covers them).
    row("GET", "/auth/login", "/auth/login", None, EVERYONE),
    row("GET", "/auth/callback", "/auth/callback?code=c&state=s", None, EVERYONE),
    row("POST", "/api/v1/auth/device", "/api/v1/auth/device", None, EVERYONE),
    row("POST", "/api/v1/auth/device/poll", "/api/v1/auth/device/poll", Some(r#"{"handle": "h"}"#), EVERYONE),
    row("GET", "/api/3.0/mlflow/server-info", "/api/3.0/mlflow/server-info", None, EVERYONE),
    row("*", "/api/2.0/mlflow-artifacts/mpu/{*rest}", "/api/2.0/mlflow-artifacts/mpu/x", None, EVERYONE),
    row("*", "/api/2.0/mlflow-artifacts/presigned/{*rest}", "/api/2.0/mlflow-artifacts/presigned/x", None, EVERYONE),
    row(
        "*",
        "/api/2.0/mlflow/artifacts/presigned-upload-url",
        "/api/2.0/mlflow/artifacts/presigned-upload-url",
        None,
        EVERYONE,
    ),
    row(
        "*",
        "/api/2.0/mlflow/artifacts/presigned-download-url",
        "/api/2.0/mlflow/artifacts/presigned-download-url",
        None,
        EVERYONE,
    ),
    row("*", "/api/2.0/mlflow/{*rest}", "/api/2.0/mlflow/registered-models/list", None, EVERYONE),
    row("*", "/api/2.0/mlflow-artifacts/{*rest}", "/api/2.0/mlflow-artifacts/other", None, EVERYONE),
    // Users reading.
    row("GET", "/api/v1/jobs", "/api/v1/jobs?all=true", None, USERS),
    row("GET", "/api/v1/jobs/{id}", "/api/v1/jobs/<job>", None, USERS_J1),
    row("GET", "/api/v1/jobs/{id}/wait", "/api/v1/jobs/<job>/wait?timeout_ms=1", None, USERS_J1),
    row("GET", "/api/v1/jobs/{id}/logs", "/api/v1/jobs/<job>/logs", None, USERS_J1),
    row("GET", "/api/v1/jobs/{id}/diff", "/api/v1/jobs/<job>/diff", None, USERS_J1),
    row("GET", "/api/v1/jobs/{id}/metrics", "/api/v1/jobs/<job>/metrics", None, USERS_J1),
    row("GET", "/api/v1/queue", "/api/v1/queue", None, USERS),
    row("GET", "/api/v1/sweeps", "/api/v1/sweeps", None, USERS),
    row("GET", "/api/v1/sweeps/{id}", "/api/v1/sweeps/999", None, USERS),
    row("HEAD", "/api/v1/code/{sha256}", "/api/v1/code/<sha>", None, USERS),
    row("GET", "/api/v1/code/{sha256}", "/api/v1/code/<sha>", None, USERS),
    row("GET", "/api/v1/nodes", "/api/v1/nodes", None, USERS),
    row("GET", "/api/v1/pools", "/api/v1/pools", None, USERS),
    row("GET", "/api/v1/series", "/api/v1/series?metric=gpu_allocated&by=all", None, USERS),
    row("GET", "/api/v1/series/metrics", "/api/v1/series/metrics", None, USERS),
    row("GET", "/api/v1/usage", "/api/v1/usage", None, USERS),
    row("GET", "/api/v1/predictions", "/api/v1/predictions?since=7d", None, USERS),
    row("GET", "/api/v1/whoami", "/api/v1/whoami", None, USERS),
    row("GET", "/api/v1/tokens", "/api/v1/tokens", None, USERS),
    row("GET", "/api/v1/secrets", "/api/v1/secrets", None, USERS),
    row("GET", "/api/v1/users", "/api/v1/users", None, USERS),
    row("GET", "/api/v1/teams", "/api/v1/teams", None, USERS),
    row("GET", "/api/v1/audit", "/api/v1/audit", None, USERS),
    // The whole installation's history: installation admins with a token of any scope (crates/ferry/tests/history.rs).
    row("GET", "/api/v1/history/cluster", "/api/v1/history/cluster", None, INSTALLATION_ADMIN),
    row("GET", "/api/v1/history/jobs", "/api/v1/history/jobs?since=1d", None, INSTALLATION_ADMIN),
    row("GET", "/api/v1/groups", "/api/v1/groups", None, USERS),
    // Ending one's sign-in session (an API token is told to revoke itself instead).
    row("POST", "/api/v1/auth/logout", "/api/v1/auth/logout", None, USERS),
    // Users submitting.
    row("POST", "/api/v1/jobs", "/api/v1/jobs", Some("{}"), SUBMITTERS),
    row("POST", "/api/v1/sweeps", "/api/v1/sweeps", Some("{}"), SUBMITTERS),
    row("POST", "/api/v1/sweeps/{id}/cancel", "/api/v1/sweeps/999/cancel", None, SUBMITTERS),
    row("PUT", "/api/v1/code/{sha256}", "/api/v1/code/<sha>", Some("\"not the archive\""), SUBMITTERS),
    row("POST", "/api/v1/tokens", "/api/v1/tokens", Some(r#"{"name": "matrix"}"#), SUBMITTERS),
    row("POST", "/api/v1/tokens/{id}/revoke", "/api/v1/tokens/<token>/revoke", None, "ANANFNFFFFUUUU"),
    row("PUT", "/api/v1/secrets/user/{name}", "/api/v1/secrets/user/MATRIX", Some(r#"{"value": "v"}"#), SUBMITTERS),
    row("DELETE", "/api/v1/secrets/user/{name}", "/api/v1/secrets/user/MATRIX", None, SUBMITTERS),
    row(
        "PUT",
        "/api/v1/secrets/projects/{team}/{project}/{name}",
        "/api/v1/secrets/projects/vision/det/MATRIX",
        Some(r#"{"value": "v"}"#),
        TEAM_ADMINS,
    ),
    row(
        "DELETE",
        "/api/v1/secrets/projects/{team}/{project}/{name}",
        "/api/v1/secrets/projects/vision/det/MATRIX",
        None,
        TEAM_ADMINS,
    ),
    // Administration.
    row("POST", "/api/v1/users", "/api/v1/users", Some("{}"), INSTALLATION_ADMIN),
    row("POST", "/api/v1/users/{name}/disable", "/api/v1/users/tmp/disable", None, INSTALLATION_ADMIN),
    row("POST", "/api/v1/users/{name}/enable", "/api/v1/users/tmp/enable", None, INSTALLATION_ADMIN),
    row("POST", "/api/v1/teams", "/api/v1/teams", Some("{}"), INSTALLATION_ADMIN),
    row("POST", "/api/v1/pools", "/api/v1/pools", Some(r#"{"definition": "name = 1"}"#), INSTALLATION_ADMIN),
    row("PUT", "/api/v1/pools/{name}", "/api/v1/pools/tmp", Some(r#"{"definition": "name = 1"}"#), INSTALLATION_ADMIN),
    row("DELETE", "/api/v1/pools/{name}", "/api/v1/pools/tmp", None, INSTALLATION_ADMIN),
    row(
        "PUT",
        "/api/v1/teams/{team}/members/{user}",
        "/api/v1/teams/vision/members/tmp",
        Some(r#"{"role": "viewer"}"#),
        TEAM_ADMINS,
    ),
    row("DELETE", "/api/v1/teams/{team}/members/{user}", "/api/v1/teams/vision/members/tmp", None, TEAM_ADMINS),
    row(
        "PUT",
        "/api/v1/teams/{team}/quota",
        "/api/v1/teams/vision/quota",
        Some(r#"{"quota": {}}"#),
        INSTALLATION_ADMIN,
    ),
    row("DELETE", "/api/v1/teams/{team}/quota", "/api/v1/teams/vision/quota", None, INSTALLATION_ADMIN),
    row(
        "PUT",
        "/api/v1/teams/{team}/projects/{project}/quota",
        "/api/v1/teams/vision/projects/p2/quota",
        Some(r#"{"quota": {}}"#),
        TEAM_ADMINS,
    ),
    row(
        "DELETE",
        "/api/v1/teams/{team}/projects/{project}/quota",
        "/api/v1/teams/vision/projects/p2/quota",
        None,
        TEAM_ADMINS,
    ),
    row(
        "PUT",
        "/api/v1/teams/{team}/groups",
        "/api/v1/teams/vision/groups",
        Some(r#"{"group": "ml-vision", "role": "member"}"#),
        TEAM_ADMINS,
    ),
    row("DELETE", "/api/v1/teams/{team}/groups", "/api/v1/teams/vision/groups?group=ml-vision", None, TEAM_ADMINS),
    row(
        "POST",
        "/api/v1/teams/{team}/projects",
        "/api/v1/teams/vision/projects",
        Some(r#"{"name": "p2"}"#),
        TEAM_ADMINS,
    ),
    // Agents.
    row("POST", "/api/v1/agent/exchange", "/api/v1/agent/exchange", None, AGENTS),
    row("POST", "/api/v1/agent/register", "/api/v1/agent/register", Some("{}"), AGENTS),
    row("POST", "/api/v1/agent/work", "/api/v1/agent/work", Some(r#"{"node": "node-a", "wait_ms": 0}"#), THIS_NODE),
    row(
        "POST",
        "/api/v1/agent/reports",
        "/api/v1/agent/reports",
        Some(r#"{"node": "node-a", "runs": [], "usage": null}"#),
        THIS_NODE,
    ),
    row(
        "POST",
        "/api/v1/agent/telemetry",
        "/api/v1/agent/telemetry",
        Some(r#"{"node": "node-a", "sent_at_us": 0, "samples": []}"#),
        THIS_NODE,
    ),
    row("POST", "/api/v1/agent/runs/{job}/{attempt}/logs", "/api/v1/agent/runs/<job>/0/logs?offset=0", None, THIS_NODE),
    row("GET", "/api/v1/agent/code/{sha256}", "/api/v1/agent/code/<sha>?node=node-a", None, "FFFFFFFFFFUUUU"),
    // MLflow.
    row(
        "GET",
        "/api/2.0/mlflow/experiments/get",
        "/api/2.0/mlflow/experiments/get?experiment_id=<exp>",
        None,
        RUN_READERS,
    ),
    row(
        "GET",
        "/api/2.0/mlflow/experiments/get-by-name",
        "/api/2.0/mlflow/experiments/get-by-name?experiment_name=det",
        None,
        RUN_READERS,
    ),
    row(
        "POST",
        "/api/2.0/mlflow/experiments/search",
        "/api/2.0/mlflow/experiments/search",
        Some("{}"),
        TRACKING_READERS,
    ),
    row(
        "POST",
        "/api/2.0/mlflow/experiments/create",
        "/api/2.0/mlflow/experiments/create",
        Some(r#"{"name": "matrix"}"#),
        TRACKING_CREATORS,
    ),
    row(
        "POST",
        "/api/2.0/mlflow/experiments/update",
        "/api/2.0/mlflow/experiments/update",
        Some(r#"{"experiment_id": "<exp>", "new_name": "det"}"#),
        EXPERIMENT_WRITERS,
    ),
    row(
        "POST",
        "/api/2.0/mlflow/experiments/set-experiment-tag",
        "/api/2.0/mlflow/experiments/set-experiment-tag",
        Some(r#"{"experiment_id": "<exp>", "key": "k", "value": "v"}"#),
        EXPERIMENT_WRITERS,
    ),
    row(
        "POST",
        "/api/2.0/mlflow/experiments/delete",
        "/api/2.0/mlflow/experiments/delete",
        Some(r#"{"experiment_id": "<exp>"}"#),
        EXPERIMENT_WRITERS,
    ),
    row(
        "POST",
        "/api/2.0/mlflow/experiments/restore",
        "/api/2.0/mlflow/experiments/restore",
        Some(r#"{"experiment_id": "<exp>"}"#),
        EXPERIMENT_WRITERS,
    ),
    row(
        "POST",
        "/api/2.0/mlflow/runs/create",
        "/api/2.0/mlflow/runs/create",
        Some(r#"{"experiment_id": "<exp>"}"#),
        RUN_CREATORS,
    ),
    row("GET", "/api/2.0/mlflow/runs/get", "/api/2.0/mlflow/runs/get?run_id=<run>", None, RUN_READERS),
    row(
        "GET",
        "/api/2.0/mlflow/metrics/get-history",
        "/api/2.0/mlflow/metrics/get-history?run_id=<run>&metric_key=loss",
        None,
        RUN_READERS,
    ),
    row(
        "POST",
        "/api/2.0/mlflow/runs/search",
        "/api/2.0/mlflow/runs/search",
        Some(r#"{"experiment_ids": ["<exp>"]}"#),
        TRACKING_READERS,
    ),
    row(
        "POST",
        "/api/2.0/mlflow/runs/update",
        "/api/2.0/mlflow/runs/update",
        Some(r#"{"run_id": "<run>", "status": "RUNNING"}"#),
        RUN_WRITERS,
    ),
    row(
        "POST",
        "/api/2.0/mlflow/runs/log-metric",
        "/api/2.0/mlflow/runs/log-metric",
        Some(r#"{"run_id": "<run>", "key": "loss", "value": 1.0, "timestamp": 1, "step": 0}"#),
        RUN_WRITERS,
    ),
    row(
        "POST",
        "/api/2.0/mlflow/runs/log-parameter",
        "/api/2.0/mlflow/runs/log-parameter",
        Some(r#"{"run_id": "<run>", "key": "p", "value": "1"}"#),
        RUN_WRITERS,
    ),
    row(
        "POST",
        "/api/2.0/mlflow/runs/log-batch",
        "/api/2.0/mlflow/runs/log-batch",
        Some(r#"{"run_id": "<run>"}"#),
        RUN_WRITERS,
    ),
    row(
        "POST",
        "/api/2.0/mlflow/runs/set-tag",
        "/api/2.0/mlflow/runs/set-tag",
        Some(r#"{"run_id": "<run>", "key": "k", "value": "v"}"#),
        RUN_WRITERS,
    ),
    row(
        "POST",
        "/api/2.0/mlflow/runs/delete-tag",
        "/api/2.0/mlflow/runs/delete-tag",
        Some(r#"{"run_id": "<run>", "key": "k"}"#),
        RUN_WRITERS,
    ),
    row(
        "POST",
        "/api/2.0/mlflow/runs/delete",
        "/api/2.0/mlflow/runs/delete",
        Some(r#"{"run_id": "<run>"}"#),
        RUN_WRITERS,
    ),
    row(
        "POST",
        "/api/2.0/mlflow/runs/restore",
        "/api/2.0/mlflow/runs/restore",
        Some(r#"{"run_id": "<run>"}"#),
        RUN_WRITERS,
    ),
    row(
        "GET",
        "/api/2.0/mlflow-artifacts/artifacts",
        "/api/2.0/mlflow-artifacts/artifacts?path=<exp>/<run>/artifacts",
        None,
        RUN_READERS,
    ),
    row(
        "GET",
        "/api/2.0/mlflow-artifacts/artifacts/{*path}",
        "/api/2.0/mlflow-artifacts/artifacts/<exp>/<run>/artifacts/x.txt",
        None,
        RUN_READERS,
    ),
    row(
        "PUT",
        "/api/2.0/mlflow-artifacts/artifacts/{*path}",
        "/api/2.0/mlflow-artifacts/artifacts/<exp>/<run>/artifacts/put.txt",
        Some("\"data\""),
        RUN_WRITERS,
    ),
    row(
        "DELETE",
        "/api/2.0/mlflow-artifacts/artifacts/{*path}",
        "/api/2.0/mlflow-artifacts/artifacts/<exp>/<run>/artifacts/put.txt",
        None,
        RUN_WRITERS,
    ),
    row("GET", "/api/2.0/mlflow/artifacts/list", "/api/2.0/mlflow/artifacts/list?run_id=<run>", None, RUN_READERS),
    row(
        "POST",
        "/api/2.0/mlflow/logged-models",
        "/api/2.0/mlflow/logged-models",
        Some(r#"{"experiment_id": "<exp>", "source_run_id": "<run>"}"#),
        RUN_WRITERS,
    ),
    row(
        "POST",
        "/api/2.0/mlflow/logged-models/search",
        "/api/2.0/mlflow/logged-models/search",
        Some(r#"{"experiment_ids": ["<exp>"]}"#),
        TRACKING_READERS,
    ),
    row("GET", "/api/2.0/mlflow/logged-models/{model_id}", "/api/2.0/mlflow/logged-models/<model>", None, RUN_READERS),
    row(
        "PATCH",
        "/api/2.0/mlflow/logged-models/{model_id}",
        "/api/2.0/mlflow/logged-models/<model>",
        Some(r#"{"model_id": "<model>", "status": "READY"}"#),
        RUN_WRITERS,
    ),
    row(
        "PATCH",
        "/api/2.0/mlflow/logged-models/{model_id}/tags",
        "/api/2.0/mlflow/logged-models/<model>/tags",
        Some(r#"{"tags": [{"key": "k", "value": "v"}]}"#),
        RUN_WRITERS,
    ),
    row(
        "DELETE",
        "/api/2.0/mlflow/logged-models/{model_id}/tags/{tag_key}",
        "/api/2.0/mlflow/logged-models/<model>/tags/k",
        None,
        RUN_WRITERS,
    ),
    row(
        "POST",
        "/api/2.0/mlflow/logged-models/{model_id}/params",
        "/api/2.0/mlflow/logged-models/<model>/params",
        Some(r#"{"params": [{"key": "p", "value": "1"}]}"#),
        RUN_WRITERS,
    ),
    row(
        "POST",
        "/api/2.0/mlflow/runs/outputs",
        "/api/2.0/mlflow/runs/outputs",
        Some(r#"{"run_id": "<run>", "models": [{"model_id": "<model>"}]}"#),
        RUN_WRITERS,
    ),
    row(
        "POST",
        "/api/2.0/mlflow/runs/log-inputs",
        "/api/2.0/mlflow/runs/log-inputs",
        Some(r#"{"run_id": "<run>"}"#),
        RUN_WRITERS,
    ),
    row(
        "POST",
        "/api/2.0/mlflow/runs/log-model",
        "/api/2.0/mlflow/runs/log-model",
        Some(r#"{"run_id": "<run>", "model_json": "{}"}"#),
        RUN_WRITERS,
    ),
    row(
        "DELETE",
        "/api/2.0/mlflow/logged-models/{model_id}",
        "/api/2.0/mlflow/logged-models/<model>",
        None,
        RUN_WRITERS,
    ),
    // Last: cancelling the member's job.
    row("POST", "/api/v1/jobs/{id}/cancel", "/api/v1/jobs/<job>/cancel", None, "AAANFFFFFFUUUU"),
];

fn key(method: &str, path: &str) -> String {
    format!("{method} {path}")
}

#[test]
fn every_route_has_a_row_and_every_row_a_route() {
    let routes: Vec<String> = ferry_server::route_specs()
        .into_iter()
        .map(|(method, path, _)| key(method.as_deref().unwrap_or("*"), path))
        .collect();
    let rows: Vec<String> = ROWS.iter().map(|r| key(r.method, r.route)).collect();
    let missing: Vec<&String> = routes.iter().filter(|r| !rows.contains(r)).collect();
    assert!(missing.is_empty(), "routes without a row in the access matrix (add one to ROWS): {missing:?}");
    let stale: Vec<&String> = rows.iter().filter(|r| !routes.contains(r)).collect();
    assert!(stale.is_empty(), "rows for routes the server no longer has: {stale:?}");
    for r in ROWS {
        assert_eq!(r.expect.len(), CALLERS.len(), "{} {}", r.method, r.route);
    }
}

struct World {
    tokens: Vec<Option<String>>,
    values: BTreeMap<&'static str, String>,
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn setup(f: &Ferry) -> World {
    let admin = std::fs::read_to_string(f.home().join("admin.token")).unwrap().trim().to_string();
    for args in [
        &["team", "add", "vision"][..],
        &["team", "add", "nlp"],
        &["team", "project", "vision", "det"],
        &["user", "add", "lead", "--team", "vision:admin"],
        &["user", "add", "ana", "--team", "vision"],
        &["user", "add", "ned", "--team", "nlp"],
        &["user", "add", "vic", "--team", "vision:viewer"],
        &["user", "add", "ci", "--service", "--team", "vision"],
        &["user", "add", "tmp"],
    ] {
        f.ok(args);
    }
    let token = |user: &str, scope: &str| {
        f.ok(&["token", "create", "--for", user, "--scope", scope, "--name", "matrix"]).trim().to_string()
    };
    let (lead, ana, ned, vic, ci) = (
        token("lead", "admin"),
        token("ana", "submit"),
        token("ned", "admin"),
        token("vic", "read"),
        token("ci", "submit"),
    );
    let node_a = std::fs::read_to_string(f.join_token_file("node-a")).unwrap().trim().to_string();
    let node_z = f.ok(&["token", "create", "--agent", "--node", "node-z", "--name", "z"]).trim().to_string();
    let job_token = |token: &str, project: &[&str], name: &str| {
        let script = format!("printf %s \"$MLFLOW_TRACKING_TOKEN\" > {name}; sleep 300");
        let mut args = vec!["run", "--token", token, "--cpus", "0.1"];
        args.extend_from_slice(project);
        args.extend_from_slice(&["--", "sh", "-c", &script]);
        let id: u64 = f.ok(&args).trim().parse().unwrap();
        let path = f.workdir().join(name);
        f.wait_for("the job's tracking token", |_| std::fs::read_to_string(&path).is_ok_and(|t| !t.is_empty()));
        (id, std::fs::read_to_string(&path).unwrap())
    };
    let (job, this_job) = job_token(&ana, &["--project", "det"], "a.tok");
    let (_, other_job) = job_token(&ned, &[], "n.tok");
    let shown = f.job(job);
    let run = shown["tracking"]["run_id"].as_str().unwrap().to_string();
    let exp = shown["tracking"]["experiment_id"].as_str().unwrap().to_string();
    let expired = f.ok(&["token", "create", "--for", "ana", "--expires", "1s", "--name", "short"]).trim().to_string();
    let revoked = token("ana", "submit");
    let _sacrifice = token("ana", "submit");
    let listed = f.json(&["token", "list", "--json"]);
    let id_of = |value: &str| {
        listed["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["user"] == "ana")
            .map(|t| t["id"].as_i64().unwrap())
            .collect::<Vec<_>>()[match value {
            "revoked" => 2,
            _ => 3,
        }]
    };
    f.ok(&["token", "revoke", &id_of("revoked").to_string()]);
    // An artifact and a logged model of the member's run, made by the member.
    let put = http()
        .put(format!("{}/api/2.0/mlflow-artifacts/artifacts/{exp}/{run}/artifacts/x.txt", f.url()))
        .bearer_auth(&ana)
        .body("x")
        .send()
        .unwrap();
    assert_eq!(put.status().as_u16(), 200);
    let model: Value = http()
        .post(format!("{}/api/2.0/mlflow/logged-models", f.url()))
        .bearer_auth(&ana)
        .json(&json!({"experiment_id": exp, "source_run_id": run}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let model = model["model"]["info"]["model_id"].as_str().unwrap().to_string();
    f.wait_for("the short token to expire", |f| {
        http().get(format!("{}/api/v1/whoami", f.url())).bearer_auth(&expired).send().unwrap().status() == 401
    });
    let values = BTreeMap::from([
        ("<job>", job.to_string()),
        ("<run>", run),
        ("<exp>", exp),
        ("<model>", model),
        ("<token>", id_of("sacrifice").to_string()),
        ("<sha>", "ab".repeat(32)),
    ]);
    let tokens = vec![
        Some(admin),
        Some(lead),
        Some(ana),
        Some(ned),
        Some(vic),
        Some(ci),
        Some(node_a),
        Some(node_z),
        Some(this_job),
        Some(other_job),
        Some(expired),
        Some(revoked),
        Some("ferry_not_a_token".to_string()),
        None,
    ];
    World { tokens, values }
}

fn fill(text: &str, values: &BTreeMap<&'static str, String>) -> String {
    values.iter().fold(text.to_string(), |text, (k, v)| text.replace(k, v))
}

fn verdict(expected: char, status: u16) -> bool {
    match expected {
        'A' => status != 401 && status != 403 && status != 500,
        'N' => status == 404,
        'F' => status == 403,
        'U' => status == 401,
        _ => false,
    }
}

#[test]
fn every_route_answers_every_kind_of_caller_as_its_rule_says() {
    // This test presents hundreds of bad tokens on purpose; the per-source limit is raised for it alone.
    let f = Ferry::start_with_server_env(NodeSpec::default(), &[("FERRY_AUTH_FAILURES_PER_MINUTE", "100000")]);
    let world = setup(&f);
    let client = http();
    let mut wrong = Vec::new();
    for r in ROWS {
        let path = fill(r.path, &world.values);
        let method = if r.method == "*" { "GET" } else { r.method };
        for (i, expected) in r.expect.chars().enumerate() {
            let mut request = client.request(method.parse().unwrap(), format!("{}{path}", f.url()));
            if let Some(token) = &world.tokens[i] {
                request = request.bearer_auth(token);
            }
            if let Some(body) = r.body {
                request = request.header("content-type", "application/json").body(fill(body, &world.values));
            }
            let response = request.send().unwrap();
            let status = response.status().as_u16();
            if !verdict(expected, status) {
                let text = response.text().unwrap_or_default();
                let text: String = text.chars().take(200).collect();
                wrong.push(format!("{} {path} as {}: expected {expected}, got {status} {text}", r.method, CALLERS[i]));
            }
        }
    }
    assert!(wrong.is_empty(), "{} answers broke the access rules:\n{}", wrong.len(), wrong.join("\n"));
    let log = std::fs::read_to_string(f.root.path().join("server.log")).unwrap_or_default();
    assert!(!log.contains("panicked"), "the server panicked:\n{log}");
}
