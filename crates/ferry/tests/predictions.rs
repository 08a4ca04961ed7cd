//! Runtime predictions: learned from a user's successful runs of the same kind, shown by `ferry show`, used for
//! start estimates where a job has no `--max-runtime`, kept across a server restart, and measured against what the
//! jobs then ran (`ferry predictions`), for the caller's own jobs only.

mod common;

use common::{stderr, Ferry, NodeSpec};

fn run_to_success(f: &Ferry, args: &[&str]) -> u64 {
    let id = f.submit(args);
    f.wait_state(id, "succeeded");
    id
}

#[test]
fn runs_like_earlier_ones_are_predicted_shown_and_measured() {
    let mut f = Ferry::start(NodeSpec { gpus: 1, ..NodeSpec::default() });
    let train = ["--name", "train", "--cpus", "0.1", "--", "sleep", "2"];
    // No history yet: no prediction.
    let first = run_to_success(&f, &train);
    assert!(f.job(first)["predicted_runtime"].is_null(), "{}", f.job(first));
    for _ in 0..2 {
        run_to_success(&f, &train);
    }
    // The fourth run of the same kind is expected to take what the earlier three did (2 s, the 90th percentile).
    let fourth = run_to_success(&f, &train);
    let predicted = &f.job(fourth)["predicted_runtime"];
    assert_eq!(predicted["basis"], "same_kind", "{predicted}");
    assert_eq!(predicted["samples"], 3, "{predicted}");
    let seconds = predicted["runtime_s"].as_u64().unwrap();
    assert!((2..=3).contains(&seconds), "{predicted}");
    let shown = f.ok(&["show", &fourth.to_string()]);
    assert!(
        shown.contains("Expected run: about 2s (90th percentile of the last 3 runs of the same name, command"),
        "{shown}"
    );
    assert!(shown.contains("; it ran 2s") || shown.contains("; it ran 3s"), "{shown}");
    // Another command under the same name: the name's runs stand in, and say so.
    let other = f.submit(&["--name", "train", "--cpus", "0.1", "--", "sleep", "1"]);
    assert_eq!(f.job(other)["predicted_runtime"]["basis"], "same_name");
    f.wait_state(other, "succeeded");

    // A job without a limit but with a prediction gives the queue behind it an estimate, marked as predicted.
    let holder = f.submit(&["--name", "train", "--gpus", "1", "--cpus", "0.1", "--", "sleep", "2"]);
    f.wait_state(holder, "running");
    let waiting = f.submit(&["--gpus", "1", "--cpus", "0.1", "--", "true"]);
    let w = &f.job(waiting)["waiting"];
    assert_eq!(w["estimate_predicted"], true, "{w}");
    assert!(w["estimated_start_us"].as_i64().is_some(), "{w}");
    let shown = f.ok(&["show", &waiting.to_string()]);
    assert!(shown.contains("if the jobs ahead without --max-runtime run as long as their earlier runs"), "{shown}");
    f.wait_state(waiting, "succeeded");

    // The accuracy over the jobs that had a prediction: the second to fourth runs, the other command's and the
    // holder (the waiting job had no history).
    let accuracy = f.json(&["predictions", "--since", "1h", "--json"]);
    assert_eq!(accuracy["jobs"], 5, "{accuracy}");
    let text = f.ok(&["predictions", "--since", "1h"]);
    assert!(text.contains("jobs with a prediction     5"), "{text}");
    let out = f.cli(&["predictions", "--since", "yesterday-ish"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("neither a time like"), "{}", stderr(&out));

    // A restart learns again from the store: the next run of the kind is predicted as before.
    f.kill_server();
    f.start_server();
    let after = f.submit(&train);
    let predicted = &f.job(after)["predicted_runtime"];
    assert_eq!(predicted["basis"], "same_kind", "{predicted}");
    assert_eq!(predicted["samples"], 4, "the four runs of the kind (the holder asked for a GPU): {predicted}");
}

#[test]
fn another_team_learns_nothing_of_your_jobs_from_the_accuracy_report() {
    let f = Ferry::start(NodeSpec::default());
    for args in [
        &["team", "add", "vision"][..],
        &["team", "add", "nlp"],
        &["user", "add", "ana", "--team", "vision"],
        &["user", "add", "ned", "--team", "nlp"],
    ] {
        f.ok(args);
    }
    let ana = f.token_for("ana", "submit");
    let ned = f.token_for("ned", "submit");
    for _ in 0..2 {
        let out = f.cli_as(Some(&ana), &["run", "--name", "etl", "--cpus", "0.1", "--", "true"], "");
        assert!(out.status.success(), "{}", stderr(&out));
        let id: u64 = String::from_utf8(out.stdout).unwrap().trim().parse().unwrap();
        f.wait_state(id, "succeeded");
    }
    let count = |token: &str| {
        let out = f.cli_as(Some(token), &["predictions", "--since", "1h", "--json"], "");
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["jobs"].as_u64().unwrap()
    };
    assert_eq!(count(&ana), 1, "ana's second run had a prediction");
    assert_eq!(count(&ned), 0, "ned sees nothing of vision's jobs");
}
