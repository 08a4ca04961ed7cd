//! Quotas set at run time: installation admins set teams' quotas, team admins their projects' within them, the
//! scheduler runs with a change at once and keeps it across a restart, and quotas the configuration file sets stay
//! managed there.

mod common;

use common::{stderr, Ferry, NodeSpec};

const CONFIG: &str = "[[team]]\nname = \"cfg\"\nquota = { gpus = 1 }\n";

fn token_for(f: &Ferry, user: &str, scope: &str) -> String {
    f.ok(&["token", "create", "--for", user, "--scope", scope, "--name", &format!("{user}-{scope}")]).trim().to_string()
}

#[test]
fn admins_set_quotas_at_run_time_and_the_scheduler_follows() {
    let mut f = Ferry::start_with_server_config(NodeSpec { gpus: 2, ..NodeSpec::default() }, "", CONFIG);
    f.ok(&["team", "add", "vision"]);
    f.ok(&["team", "project", "vision", "det"]);
    f.ok(&["user", "add", "ana", "--team", "vision"]);
    f.ok(&["user", "add", "lead", "--team", "vision:admin"]);
    let ana = token_for(&f, "ana", "submit");
    let lead = token_for(&f, "lead", "admin");

    // One GPU for vision, nothing borrowed: ana's second one-GPU job waits although a GPU is free.
    f.ok(&["team", "quota", "vision", "--gpus", "1", "--borrow-gpus", "0"]);
    let first = f.submit(&["--token", &ana, "--gpus", "1", "--", "sleep", "300"]);
    f.wait_state(first, "running");
    let second = f.submit(&["--token", &ana, "--gpus", "1", "--", "sleep", "300"]);
    std::thread::sleep(std::time::Duration::from_secs(2));
    let waiting = f.job(second);
    assert_eq!(waiting["state"], "queued", "{waiting}");
    let shown = f.ok(&["show", &second.to_string()]);
    assert!(shown.to_lowercase().contains("quota"), "the reason it waits names the quota: {shown}");

    // Team admins set their projects' quotas, within the team's; not the team's own, and members neither.
    let out = f.cli(&["team", "quota", "vision", "--gpus", "2", "--token", &lead]);
    assert_eq!(out.status.code(), Some(77), "{}", stderr(&out));
    let out = f.cli(&["team", "quota", "vision", "--project", "det", "--gpus", "2", "--token", &lead]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(stderr(&out).contains("must fit within team vision's (1 GPUs)"), "{}", stderr(&out));
    f.ok(&["team", "quota", "vision", "--project", "det", "--gpus", "1", "--token", &lead]);
    let out = f.cli(&["team", "quota", "vision", "--project", "det", "--gpus", "1", "--token", &ana]);
    assert_eq!(out.status.code(), Some(77), "{}", stderr(&out));
    // A team's quota cannot drop below one of its projects'.
    let out = f.cli(&["team", "quota", "vision", "--gpus", "0"]);
    assert_eq!(out.status.code(), Some(65), "{}", stderr(&out));
    assert!(stderr(&out).contains("projects det do not fit"), "{}", stderr(&out));

    // Raised: the waiting job starts, with no restart.
    f.ok(&["team", "quota", "vision", "--gpus", "2", "--borrow-gpus", "0"]);
    f.wait_state(second, "running");

    // The configuration file's quotas are managed there.
    let out = f.cli(&["team", "quota", "cfg", "--gpus", "4"]);
    assert_eq!(out.status.code(), Some(65), "{}", stderr(&out));
    assert!(stderr(&out).contains("set in the server's configuration file"), "{}", stderr(&out));
    // Bad input is told apart.
    let out = f.cli(&["team", "quota", "vision"]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    let out = f.cli(&["team", "quota", "vision", "--gpus", "4000000000"]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(stderr(&out).contains("larger than any cluster"), "{}", stderr(&out));
    let out = f.cli(&["team", "quota", "nowhere", "--gpus", "1"]);
    assert_eq!(out.status.code(), Some(66), "{}", stderr(&out));

    // Listed, kept across a restart, and who changed it is in the audit log.
    let listed = f.ok(&["team", "list"]);
    assert!(listed.contains("2 GPUs (+0 GPUs borrowed at most)") && listed.contains("det (1 GPUs)"), "{listed}");
    f.kill_server();
    f.start_server();
    let teams = f.json(&["team", "list", "--json"]);
    let vision = teams["teams"].as_array().unwrap().iter().find(|t| t["name"] == "vision").unwrap().clone();
    assert_eq!(vision["quota"]["quota"]["gpus"], 2, "{vision}");
    assert_eq!(vision["project_quotas"]["det"]["quota"]["gpus"], 1, "{vision}");
    let cfg = teams["teams"].as_array().unwrap().iter().find(|t| t["name"] == "cfg").unwrap().clone();
    assert_eq!(cfg["quota"]["quota"]["gpus"], 1, "the file's quota is shown too: {cfg}");
    let audit = f.ok(&["audit", "--action", "quota", "--limit", "100"]);
    assert!(audit.contains("PUT /api/v1/teams/{team}/quota") && audit.contains("lead"), "{audit}");
    // What a project's quota leaves out is its team's (as in the configuration file): naming GPUs alone fits a team
    // that also limits CPUs and memory, and follows the team's when it changes.
    f.ok(&["team", "quota", "vision", "--gpus", "4", "--cpus", "8", "--memory", "16GiB"]);
    f.ok(&["team", "quota", "vision", "--project", "det", "--gpus", "2"]);
    f.ok(&["team", "quota", "vision", "--gpus", "4", "--cpus", "4", "--memory", "8GiB"]);
    let teams = f.json(&["team", "list", "--json"]);
    let vision = teams["teams"].as_array().unwrap().iter().find(|t| t["name"] == "vision").unwrap().clone();
    assert_eq!(vision["project_quotas"]["det"]["quota"]["cpu_millis"], 4000, "{vision}");
    // Removed: the team is limited by nothing but fair share again.
    f.ok(&["team", "quota", "vision", "--project", "det", "--clear"]);
    f.ok(&["team", "quota", "vision", "--clear"]);
    let teams = f.json(&["team", "list", "--json"]);
    let vision = teams["teams"].as_array().unwrap().iter().find(|t| t["name"] == "vision").unwrap().clone();
    assert!(vision.get("quota").is_none(), "{vision}");
}
