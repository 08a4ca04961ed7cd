//! Bad actors against the real binary: a job using its tracking token where it does not belong, a machine speaking
//! for another node, a user at another team's work, and an installation that must never lock itself out. Each test
//! here is one finding of the security review (issue 14) that failed before identities existed.

mod common;

use std::time::Duration;

use common::{stderr, Ferry, NodeSpec};
use serde_json::{json, Value};

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

/// Calls the API: the status and the JSON body (Null when there is none).
fn call(f: &Ferry, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let mut request = http().request(method.parse().unwrap(), format!("{}{path}", f.url()));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().unwrap();
    let status = response.status().as_u16();
    (status, response.json().unwrap_or(Value::Null))
}

fn admin(f: &Ferry) -> String {
    std::fs::read_to_string(f.home().join("admin.token")).unwrap().trim().to_string()
}

/// Two teams: vision (ana a member, lead its admin, vic a viewer, with project det) and nlp (ned a member).
fn teams(f: &Ferry) {
    f.ok(&["team", "add", "vision"]);
    f.ok(&["team", "add", "nlp"]);
    f.ok(&["team", "project", "vision", "det"]);
    f.ok(&["user", "add", "ana", "--team", "vision"]);
    f.ok(&["user", "add", "lead", "--team", "vision:admin"]);
    f.ok(&["user", "add", "vic", "--team", "vision:viewer"]);
    f.ok(&["user", "add", "ned", "--team", "nlp"]);
}

fn token_for(f: &Ferry, user: &str, scope: &str) -> String {
    f.ok(&["token", "create", "--for", user, "--scope", scope, "--name", &format!("{user}-{scope}")]).trim().to_string()
}

/// Runs a job as `token`'s user that writes its tracking token to `name` in the work folder and then sleeps;
/// returns the job id and the token.
fn job_with_token(f: &Ferry, token: &str, name: &str) -> (u64, String) {
    let script = format!("printf %s \"$MLFLOW_TRACKING_TOKEN\" > {name}; sleep 120");
    let id = f.submit(&["--token", token, "--cpus", "0.1", "--", "sh", "-c", &script]);
    let path = f.workdir().join(name);
    f.wait_for("the job to write its tracking token", |_| std::fs::read_to_string(&path).is_ok_and(|t| !t.is_empty()));
    (id, std::fs::read_to_string(&path).unwrap())
}

#[test]
fn a_job_token_reaches_only_its_own_run() {
    let f = Ferry::start(NodeSpec::default());
    teams(&f);
    let ana = token_for(&f, "ana", "submit");
    let ned = token_for(&f, "ned", "submit");
    let (mine, job_token) = job_with_token(&f, &ana, "mine.tok");
    let (other, _) = job_with_token(&f, &ned, "other.tok");
    let run_of = |id: u64| f.job(id)["tracking"]["run_id"].as_str().unwrap().to_string();
    let experiment_of = |id: u64| f.job(id)["tracking"]["experiment_id"].as_str().unwrap().to_string();
    let (my_run, other_run) = (run_of(mine), run_of(other));

    // Finding: with a job's token, a job registered a fake node, read code and series.
    let node = json!({"name": "fake", "pool": "local", "cpu_millis": 1000, "memory_bytes": 1 << 30, "gpus": [],
        "agent_version": "x", "limits": "none", "now_us": 0});
    let (status, body) = call(&f, "POST", "/api/v1/agent/register", Some(&job_token), Some(node));
    assert_eq!(status, 403, "{body}");
    assert!(body["message"].as_str().unwrap().contains("may only be used with the MLflow tracking API"), "{body}");
    assert_eq!(call(&f, "GET", "/api/v1/series?metric=gpu_allocated&by=all", Some(&job_token), None).0, 403);
    assert_eq!(call(&f, "GET", "/api/v1/jobs", Some(&job_token), None).0, 403);

    // Its own run: logged to and read back.
    let metric = |run: &str| json!({"run_id": run, "key": "loss", "value": 1.0, "timestamp": 1, "step": 0});
    let (status, body) = call(&f, "POST", "/api/2.0/mlflow/runs/log-metric", Some(&job_token), Some(metric(&my_run)));
    assert_eq!(status, 200, "{body}");
    let (status, _) = call(&f, "GET", &format!("/api/2.0/mlflow/runs/get?run_id={my_run}"), Some(&job_token), None);
    assert_eq!(status, 200);
    let experiment = experiment_of(mine);
    let (status, _) =
        call(&f, "GET", &format!("/api/2.0/mlflow/experiments/get?experiment_id={experiment}"), Some(&job_token), None);
    assert_eq!(status, 200, "a job reads its own experiment");

    // Finding: a job's token logged to another job's run, uploaded into it, deleted it and deleted an experiment.
    let (status, body) =
        call(&f, "POST", "/api/2.0/mlflow/runs/log-metric", Some(&job_token), Some(metric(&other_run)));
    assert_eq!((status, body["error_code"].as_str()), (404, Some("RESOURCE_DOES_NOT_EXIST")), "{body}");
    let upload = http()
        .put(format!(
            "{}/api/2.0/mlflow-artifacts/artifacts/{}/{other_run}/artifacts/x.txt",
            f.url(),
            experiment_of(other)
        ))
        .bearer_auth(&job_token)
        .body("forged")
        .send()
        .unwrap();
    assert_eq!(upload.status().as_u16(), 404);
    let (status, _) =
        call(&f, "POST", "/api/2.0/mlflow/runs/delete", Some(&job_token), Some(json!({"run_id": other_run})));
    assert_eq!(status, 404);
    let (status, body) = call(
        &f,
        "POST",
        "/api/2.0/mlflow/experiments/delete",
        Some(&job_token),
        Some(json!({"experiment_id": experiment})),
    );
    assert_eq!((status, body["error_code"].as_str()), (403, Some("PERMISSION_DENIED")), "{body}");
    let (status, _) =
        call(&f, "POST", "/api/2.0/mlflow/runs/create", Some(&job_token), Some(json!({"experiment_id": experiment})));
    assert_eq!(status, 403, "a job token makes no runs of its own");
    let (status, body) = call(
        &f,
        "POST",
        "/api/2.0/mlflow/runs/search",
        Some(&job_token),
        Some(json!({"experiment_ids": ["0", experiment]})),
    );
    assert_eq!(status, 200);
    let found: Vec<&str> =
        body["runs"].as_array().into_iter().flatten().filter_map(|r| r["info"]["run_id"].as_str()).collect();
    assert_eq!(found, [my_run.as_str()], "a search shows the job its own run alone");
    // The other run is untouched and still ned's.
    let (status, body) = call(&f, "GET", &format!("/api/2.0/mlflow/runs/get?run_id={other_run}"), Some(&ned), None);
    assert_eq!(status, 200);
    assert_eq!(body["run"]["info"]["lifecycle_stage"], "active");
}

#[test]
fn a_machine_speaks_only_for_the_node_its_join_token_is_bound_to() {
    let f = Ferry::start(NodeSpec::default());
    let job = f.submit(&["--cpus", "0.1", "--", "sleep", "120"]);
    f.wait_state(job, "running");
    let other = f.ok(&["token", "create", "--agent", "--node", "node-z", "--name", "z"]).trim().to_string();
    let pattern = f.ok(&["token", "create", "--agent", "--node", "node-*", "--name", "rack", "--max-nodes", "2"]);
    let pattern = pattern.trim().to_string();
    let register = |name: &str, gpus: u32| {
        let gpus: Vec<Value> = (0..gpus)
            .map(|i| json!({"index": i, "model": "H100", "memory_bytes": 80u64 << 30, "source": "config"}))
            .collect();
        json!({"name": name, "pool": "local", "cpu_millis": 64000, "memory_bytes": 512u64 << 30, "gpus": gpus,
            "agent_version": "x", "limits": "none", "runs": [],
            "now_us": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64})
    };

    // Finding: any joined machine could speak for any other, and re-registering the real node marked its job lost.
    let (status, body) = call(&f, "POST", "/api/v1/agent/register", Some(&other), Some(register("node-a", 2)));
    assert_eq!(status, 403, "{body}");
    assert!(body["message"].as_str().unwrap().contains("speaks for `node-z`, not for node `node-a`"), "{body}");
    let (status, body) = call(&f, "POST", "/api/v1/agent/register", Some(&pattern), Some(register("node-a", 2)));
    assert_eq!(status, 403, "{body}");
    assert!(body["message"].as_str().unwrap().contains("joined with another join token"), "{body}");
    let reports = json!({"node": "node-a", "runs": [], "usage": null});
    assert_eq!(call(&f, "POST", "/api/v1/agent/reports", Some(&other), Some(reports)).0, 403);
    let work = json!({"node": "node-a", "wait_ms": 0});
    assert_eq!(call(&f, "POST", "/api/v1/agent/work", Some(&other), Some(work)).0, 403);
    f.wait_state(job, "running");
    assert_eq!(f.state(job), "running", "the job was not disturbed");

    // Finding: a fake node wrote a forged line into another node's job log.
    let forged = http()
        .post(format!("{}/api/v1/agent/runs/{job}/0/logs?offset=0", f.url()))
        .bearer_auth(&other)
        .body("forged\n")
        .send()
        .unwrap();
    assert_eq!(forged.status().as_u16(), 403);
    // Only a node one of whose runs needs it fetches a code archive.
    let node_a = std::fs::read_to_string(f.join_token_file("node-a")).unwrap();
    let (status, body) =
        call(&f, "GET", &format!("/api/v1/agent/code/{}?node=node-a", "0".repeat(64)), Some(&node_a), None);
    assert_eq!(status, 403, "{body}");
    assert!(body["message"].as_str().unwrap().contains("no run assigned to node node-a needs"), "{body}");

    // Finding: registrations were unlimited. A pattern token registers at most its limit of nodes.
    assert_eq!(call(&f, "POST", "/api/v1/agent/register", Some(&pattern), Some(register("node-p1", 0))).0, 200);
    assert_eq!(call(&f, "POST", "/api/v1/agent/register", Some(&pattern), Some(register("node-p2", 0))).0, 200);
    let (status, body) = call(&f, "POST", "/api/v1/agent/register", Some(&pattern), Some(register("node-p3", 0)));
    assert_eq!(status, 403, "{body}");
    assert!(body["message"].as_str().unwrap().contains("registered its limit of 2 nodes"), "{body}");
    // An agent token is no user token.
    let out = f.cli(&["ps", "--token", &other]);
    assert_eq!(out.status.code(), Some(77), "{}", stderr(&out));
}

#[test]
fn users_see_and_change_only_what_their_roles_allow() {
    let f = Ferry::start(NodeSpec::default());
    teams(&f);
    let (ana, lead, vic, ned) = (
        token_for(&f, "ana", "submit"),
        token_for(&f, "lead", "admin"),
        token_for(&f, "vic", "read"),
        token_for(&f, "ned", "submit"),
    );
    let job = f.submit(&[
        "--token",
        &ana,
        "--project",
        "det",
        "--env",
        "SECRET=hunter2",
        "--cpus",
        "0.1",
        "--",
        "sleep",
        "120",
    ]);
    let shown = f.job(job);
    assert_eq!((shown["owner"].as_str(), shown["team"].as_str()), (Some("ana"), Some("vision")), "{shown}");

    // Finding: a second user listed another's job environment and cancelled her job.
    let (status, body) = call(&f, "GET", &format!("/api/v1/jobs/{job}"), Some(&ned), None);
    assert_eq!(status, 404, "another team's job is not even confirmed: {body}");
    let (status, body) = call(&f, "GET", "/api/v1/jobs?all=true", Some(&ned), None);
    assert_eq!(status, 200);
    assert!(body["jobs"].as_array().unwrap().is_empty(), "{body}");
    let (status, body) = call(&f, "GET", &format!("/api/v1/jobs/{job}"), Some(&vic), None);
    assert_eq!(status, 200, "a viewer of the team sees the job");
    assert_eq!(body["env"]["SECRET"], "(hidden)", "but not its environment's values");
    let (_, body) = call(&f, "GET", &format!("/api/v1/jobs/{job}"), Some(&lead), None);
    assert_eq!(body["env"]["SECRET"], "hunter2", "the team's admin sees them");
    assert_eq!(call(&f, "POST", &format!("/api/v1/jobs/{job}/cancel"), Some(&ned), None).0, 404);
    assert_eq!(call(&f, "POST", &format!("/api/v1/jobs/{job}/cancel"), Some(&vic), None).0, 403, "read scope");
    let vic_submit = token_for(&f, "vic", "submit");
    let (status, body) = call(&f, "POST", &format!("/api/v1/jobs/{job}/cancel"), Some(&vic_submit), None);
    assert_eq!(status, 403, "a viewer never cancels: {body}");
    // The team's admin may, and the timeline says who did.
    assert_eq!(call(&f, "POST", &format!("/api/v1/jobs/{job}/cancel"), Some(&lead), None).0, 200);
    let done = f.wait_state(job, "cancelled");
    let timeline: Vec<&str> =
        done["timeline"].as_array().unwrap().iter().filter_map(|e| e["message"].as_str()).collect();
    assert!(timeline.iter().any(|m| m.contains("by lead")), "{timeline:?}");

    // Finding: another user revoked the bootstrap admin token.
    let tokens = f.json(&["token", "list", "--json"]);
    let bootstrap = tokens["tokens"][0]["id"].as_i64().unwrap();
    assert_eq!(call(&f, "POST", &format!("/api/v1/tokens/{bootstrap}/revoke"), Some(&ana), None).0, 404);
    let (_, listed) = call(&f, "GET", "/api/v1/tokens", Some(&ana), None);
    assert!(listed["tokens"].as_array().unwrap().iter().all(|t| t["user"] == "ana"), "{listed}");

    // Finding: a job's team and project were whatever the submitter declared.
    let refused = |args: &[&str], message: &str| {
        let mut all = vec!["run"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--", "true"]);
        let out = f.cli(&all);
        assert!(!out.status.success() && stderr(&out).contains(message), "{args:?}: {}", stderr(&out));
    };
    refused(&["--token", &ana, "--team", "ghosts"], "there is no team `ghosts`");
    refused(&["--token", &ana, "--team", "nlp"], "ana may not submit to team `nlp`");
    refused(&["--token", &ana, "--project", "secret-project"], "team vision has no project `secret-project`");
    refused(&["--token", &vic_submit], "vic is in no team it may submit to");
    f.ok(&["user", "add", "loner"]);
    let loner = token_for(&f, "loner", "submit");
    refused(&["--token", &loner], "loner is in no team it may submit to");
}

#[test]
fn tokens_expire_users_can_be_disabled_and_scopes_hold() {
    let f = Ferry::start(NodeSpec::default());
    teams(&f);
    let short = f.ok(&["token", "create", "--for", "ana", "--expires", "2s", "--name", "short"]).trim().to_string();
    let read = token_for(&f, "ana", "read");
    assert_eq!(call(&f, "GET", "/api/v1/whoami", Some(&short), None).0, 200);
    let (status, body) = call(&f, "POST", "/api/v1/jobs", Some(&read), Some(json!({"command": ["true"]})));
    assert_eq!(status, 403, "{body}");
    assert!(body["message"].as_str().unwrap().contains("scope is `read`"), "{body}");
    // A token that expires may only make tokens that expire no later.
    let (status, _) = call(&f, "POST", "/api/v1/tokens", Some(&short), Some(json!({"name": "forever"})));
    assert_eq!(status, 403);
    f.wait_for("the short token to expire", |f| call(f, "GET", "/api/v1/whoami", Some(&short), None).0 == 401);

    f.ok(&["user", "disable", "ana"]);
    let (status, body) = call(&f, "GET", "/api/v1/whoami", Some(&read), None);
    assert_eq!(status, 401, "{body}");
    assert!(body["message"].as_str().unwrap().contains("user ana is disabled"), "{body}");
    f.ok(&["user", "enable", "ana"]);
    assert_eq!(call(&f, "GET", "/api/v1/whoami", Some(&read), None).0, 200);
    // The last admin cannot be disabled.
    let out = f.cli(&["user", "disable", "admin"]);
    assert_eq!(out.status.code(), Some(65), "{}", stderr(&out));
    assert!(stderr(&out).contains("last installation admin"), "{}", stderr(&out));
}

#[test]
fn revoking_every_admin_token_is_healed_from_the_data_directory() {
    let f = Ferry::start(NodeSpec::default());
    let tokens = f.json(&["token", "list", "--json"]);
    let bootstrap = tokens["tokens"][0]["id"].as_i64().unwrap();
    // Finding: one revoke locked the installation out for good.
    f.ok(&["token", "revoke", &bootstrap.to_string()]);
    let out = f.cli(&["ps"]);
    assert_eq!(out.status.code(), Some(77), "{}", stderr(&out));
    let out = f.cli(&["admin", "restore"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("admin is an installation admin with a new admin token"), "{}", stderr(&out));
    f.ok(&["ps"]);
    // The node never used the admin token: it is still ready.
    let nodes = f.json(&["nodes", "--json"]);
    assert_eq!(nodes["nodes"][0]["state"], "ready", "{nodes}");
    // Restoring needs the data directory itself.
    let elsewhere = tempfile::tempdir().unwrap();
    let out = f.cli(&["admin", "restore", "--data-dir", elsewhere.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
    assert!(stderr(&out).contains("is not a Ferry data directory"), "{}", stderr(&out));
}

#[test]
fn guessing_tokens_is_rate_limited_per_source() {
    let f = Ferry::start(NodeSpec::default());
    let mut last = 0;
    for i in 0..40 {
        last = call(&f, "GET", "/api/v1/jobs", Some(&format!("ferry_{i:064}")), None).0;
        if last == 429 {
            break;
        }
    }
    assert_eq!(last, 429, "forty wrong tokens in a row were all answered");
    let (status, body) = call(&f, "GET", "/api/v1/jobs", Some(&admin(&f)), None);
    assert_eq!(status, 429, "the source is refused for a while, whatever it sends: {body}");
    assert_eq!(call(&f, "GET", "/api/v1/health", None, None).0, 200, "public routes stay open");
}

/// The audit log's entries matching `query` (as the admin), newest first: (actor, action, object, result).
fn audit(f: &Ferry, query: &str) -> Vec<(String, String, String, String)> {
    let (status, body) = call(f, "GET", &format!("/api/v1/audit?limit=1000&{query}"), Some(&admin(f)), None);
    assert_eq!(status, 200, "{body}");
    let text = |v: &Value| v.as_str().unwrap_or("-").to_string();
    body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (text(&e["actor"]), text(&e["action"]), text(&e["object"]), text(&e["result"])))
        .collect()
}

#[test]
fn every_change_and_refusal_is_in_the_audit_log_and_data_traffic_is_not() {
    let f = Ferry::start(NodeSpec::default());
    teams(&f);
    let ana = token_for(&f, "ana", "submit");
    let lead = token_for(&f, "lead", "admin");
    let (job, job_token) = job_with_token(&f, &ana, "audit.tok");
    let run = f.job(job)["tracking"]["run_id"].as_str().unwrap().to_string();
    let metric = json!({"run_id": run, "key": "loss", "value": 1.0, "timestamp": 1, "step": 0});
    assert_eq!(call(&f, "POST", "/api/2.0/mlflow/runs/log-metric", Some(&job_token), Some(metric)).0, 200);
    // A member reaching for an admin's power, and a token that is no token.
    assert_eq!(call(&f, "POST", "/api/v1/teams", Some(&ana), Some(json!({"name": "mine"}))).0, 403);
    assert_eq!(call(&f, "GET", "/api/v1/nodes", Some(&format!("ferry_{:064}", 7)), None).0, 401);
    // No credential at all guesses nothing, and is noise the log leaves out.
    assert_eq!(call(&f, "GET", "/api/v1/queue", None, None).0, 401);
    // The team admin cancels the member's job: the cancel is the lead's.
    f.ok(&["cancel", "--token", &lead, &job.to_string()]);
    f.ok(&["user", "disable", "vic"]);

    let submitted = audit(&f, "action=POST%20/api/v1/jobs");
    assert!(submitted.iter().any(|(who, action, object, result)| who == "ana"
        && action == "POST /api/v1/jobs"
        && object == "/api/v1/jobs"
        && result == "ok"));
    let cancel = audit(&f, &format!("object=/api/v1/jobs/{job}/cancel"));
    assert_eq!(cancel.len(), 1, "{cancel:?}");
    assert_eq!(cancel[0].0, "lead");
    assert_eq!(audit(&f, "actor=admin&action=disable")[0].2, "/api/v1/users/vic/disable");
    let denied = audit(&f, "result=denied");
    assert!(denied.iter().any(|(who, action, _, _)| who == "ana" && action == "POST /api/v1/teams"), "{denied:?}");
    assert!(denied.iter().any(|(who, _, object, _)| who == "-" && object == "/api/v1/nodes"), "{denied:?}");
    assert!(!denied.iter().any(|(_, _, object, _)| object == "/api/v1/queue"), "{denied:?}");
    // The admin's own setup is there (users and teams made with the CLI), attributed to the admin.
    assert!(audit(&f, "action=POST%20/api/v1/users").iter().filter(|e| e.0 == "admin").count() >= 4);
    // Data, not actions: a job's metrics and the agent's routine traffic are not logged; the agent's registration is.
    let everything = audit(&f, "");
    assert!(!everything.iter().any(|e| e.1.contains("log-metric")), "{everything:?}");
    assert!(!everything.iter().any(|e| e.1.contains("/agent/work") || e.1.contains("/agent/reports")));
    assert!(everything.iter().any(|e| e.0 == "agent:test agent node-a" && e.1 == "POST /api/v1/agent/register"));
    // Reads are not actions.
    assert!(!everything.iter().any(|e| e.1.starts_with("GET ") && e.3 == "ok"), "{everything:?}");

    // A member reads only their own entries, and may not ask for others'.
    let (status, mine) = call(&f, "GET", "/api/v1/audit", Some(&ana), None);
    assert_eq!(status, 200);
    let actors: Vec<&str> = mine["entries"].as_array().unwrap().iter().map(|e| e["actor"].as_str().unwrap()).collect();
    assert!(!actors.is_empty() && actors.iter().all(|a| *a == "ana"), "{actors:?}");
    assert_eq!(call(&f, "GET", "/api/v1/audit?actor=lead", Some(&ana), None).0, 403);
    // Bad filters are told apart from an empty answer.
    let (status, body) = call(&f, "GET", "/api/v1/audit?result=maybe", Some(&admin(&f)), None);
    assert_eq!(status, 400, "{body}");
    assert!(body["message"].as_str().unwrap().contains("use one of ok, denied, failed"), "{body}");
    assert_eq!(call(&f, "GET", "/api/v1/audit?since=yesterday-ish", Some(&admin(&f)), None).0, 400);
    assert_eq!(call(&f, "GET", "/api/v1/audit?limit=0", Some(&admin(&f)), None).0, 400);

    // The CLI: a table, and CSV for export with one line per entry.
    let table = f.ok(&["audit", "--actor", "lead"]);
    assert!(table.starts_with("TIME (UTC)"), "{table}");
    assert!(table.contains(&format!("/api/v1/jobs/{job}/cancel")), "{table}");
    let csv = f.ok(&["audit", "--csv", "--action", "cancel", "--limit", "1000"]);
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("id,time,actor,actor_kind,action,object,status,result,source,detail"));
    assert!(lines.any(|l| l.contains(",lead,user,POST /api/v1/jobs/{id}/cancel,") && l.contains(",200,ok,127.0.0.1,")));
    // A restore on the server's machine is logged too.
    f.ok(&["admin", "restore"]);
    assert_eq!(audit(&f, "action=admin%20restore").len(), 1);
}

#[test]
fn the_audit_retention_must_be_a_sensible_duration() {
    let dir = tempfile::tempdir().unwrap();
    for (text, expected) in [
        ("[audit]\nretention = \"1h\"\n", "is under a day"),
        ("[audit]\nretention = \"forever\"\n", "[audit] `retention`"),
        ("[audit]\nkeep = \"1d\"\n", "unknown field `keep`"),
    ] {
        let config = dir.path().join("ferry.toml");
        std::fs::write(&config, text).unwrap();
        let out = std::process::Command::new(common::ferry_bin())
            .args(["server", "--listen", "127.0.0.1:0", "--config", config.to_str().unwrap()])
            .env("FERRY_HOME", dir.path().join("home"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(78), "{text}: {}", stderr(&out));
        assert!(stderr(&out).contains(expected), "{text}: {}", stderr(&out));
    }
}

#[test]
fn a_dashboard_session_ends_with_the_token_it_was_signed_in_with_and_only_this_site_signs_in() {
    let f = Ferry::start(NodeSpec::default());
    teams(&f);
    let ana = token_for(&f, "ana", "submit");
    let browser = reqwest::blocking::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let sign_in = |origin: &str| {
        browser
            .post(format!("{}/login", f.url()))
            .header("origin", origin)
            .form(&[("token", ana.as_str())])
            .send()
            .unwrap()
    };
    // Another site's form would sign the victim in as ana (login CSRF).
    let forged = sign_in("http://evil.example");
    assert_eq!(forged.status(), 403);
    assert!(forged.headers().get("set-cookie").is_none());
    let signed = sign_in(&f.url());
    assert_eq!(signed.status(), 303);
    let cookie = signed.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    let whoami = || browser.get(format!("{}/api/v1/whoami", f.url())).header("cookie", &cookie).send().unwrap();
    assert_eq!(whoami().status(), 200);
    // The token leaked and is revoked: the session made with it ends too.
    let tokens = f.json(&["token", "list", "--json"]);
    let id = tokens["tokens"].as_array().unwrap().iter().find(|t| t["name"] == "ana-submit").unwrap()["id"].clone();
    f.ok(&["token", "revoke", &id.as_i64().unwrap().to_string()]);
    let after = whoami();
    assert_eq!(after.status(), 401);
    assert!(after.text().unwrap().contains("sign in again"));
}
