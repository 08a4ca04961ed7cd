//! Secrets: stored sealed, handed to the job that names them, shown nowhere else; each user's and project's only to
//! those it belongs to.

mod common;

use common::{stderr, Ferry, NodeSpec};

fn logs(f: &Ferry, id: u64) -> String {
    f.ok(&["logs", &id.to_string()])
}

#[test]
fn a_secret_reaches_its_job_and_nothing_else_shows_it() {
    let f = Ferry::start(NodeSpec::default());
    let value = "hf_Zq9-s3cr3t value with 'quotes' $(and) spaces";
    let out = f.cli_as(None, &["secret", "set", "HF_TOKEN"], &format!("{value}\n"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("secret HF_TOKEN stored for user admin"), "{}", stderr(&out));

    let script = "printf 'got:%s\\n' \"$HF_TOKEN\"; printf 'as:%s\\n' \"$MY_TOKEN\"";
    let id = f.submit(&["--secret", "HF_TOKEN", "--secret", "MY_TOKEN=HF_TOKEN", "--", "sh", "-c", script]);
    f.wait_state(id, "succeeded");
    let output = logs(&f, id);
    assert!(output.contains(&format!("got:{value}")), "{output}");
    assert!(output.contains(&format!("as:{value}")), "{output}");

    // The job names its secrets, never their values: not in `ferry show`, the API's job, the listing, or any file of
    // the server's (its database, write-ahead log, audit log), but for the job's own output, which printed it.
    let text = f.ok(&["show", &id.to_string()]);
    assert!(text.contains("Secrets:      HF_TOKEN, MY_TOKEN (from HF_TOKEN)") && !text.contains("s3cr3t"), "{text}");
    let shown = f.ok(&["show", &id.to_string(), "--json"]);
    assert!(shown.contains("\"HF_TOKEN\"") && !shown.contains("s3cr3t"), "{shown}");
    let listed = f.ok(&["secret", "list", "--json"]);
    assert!(listed.contains("\"HF_TOKEN\"") && !listed.contains("s3cr3t"), "{listed}");
    let table = f.ok(&["secret", "list"]);
    assert!(table.contains("HF_TOKEN") && table.contains("user admin"), "{table}");
    for file in walk(&f.home()).into_iter().filter(|p| !p.components().any(|c| c.as_os_str() == "logs")) {
        let bytes = std::fs::read(&file).unwrap_or_default();
        assert!(!bytes.windows(6).any(|w| w == b"s3cr3t"), "{} holds the value in the clear", file.display());
    }
    let key = f.home().join("secrets.key");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the key is the server's alone");

    // Replaced, the next job gets the new value; removed, a job naming it is refused at submission.
    let out = f.cli_as(None, &["secret", "set", "HF_TOKEN"], "second-value");
    assert!(stderr(&out).contains("secret HF_TOKEN replaced"), "{}", stderr(&out));
    let id = f.submit(&["--secret", "HF_TOKEN", "--", "sh", "-c", "echo got:$HF_TOKEN"]);
    f.wait_state(id, "succeeded");
    assert!(logs(&f, id).contains("got:second-value"));
    let out = f.cli(&["secret", "rm", "HF_TOKEN"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = f.cli(&["run", "--secret", "HF_TOKEN", "--", "true"]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(stderr(&out).contains("admin has no secret `HF_TOKEN`"), "{}", stderr(&out));
    assert!(stderr(&out).contains("ferry secret set HF_TOKEN"), "{}", stderr(&out));
}

#[test]
fn a_secret_removed_while_its_job_waits_fails_the_job_with_the_reason() {
    let f = Ferry::start(NodeSpec::default());
    let out = f.cli_as(None, &["secret", "set", "DB_PASSWORD"], "pw-1234");
    assert!(out.status.success(), "{}", stderr(&out));
    let blocker = f.submit(&["--cpus", "4", "--", "sleep", "600"]);
    f.wait_state(blocker, "running");
    let waiting = f.submit(&["--cpus", "4", "--secret", "DB_PASSWORD", "--", "true"]);
    assert_eq!(f.state(waiting), "queued");
    f.ok(&["secret", "rm", "DB_PASSWORD"]);
    f.ok(&["cancel", &blocker.to_string()]);
    let job = f.wait_state(waiting, "failed");
    let message = job["message"].as_str().unwrap_or_default();
    assert!(message.contains("the secret `DB_PASSWORD` (for $DB_PASSWORD) no longer exists"), "{job}");
    assert!(message.contains("ferry secret set DB_PASSWORD"), "{job}");
}

#[test]
fn secrets_belong_to_their_user_and_project_and_bad_ones_are_refused() {
    let f = Ferry::start(NodeSpec::default());
    for args in [
        &["team", "add", "vision"][..],
        &["team", "add", "nlp"],
        &["team", "project", "vision", "det"],
        &["user", "add", "lead", "--team", "vision:admin"],
        &["user", "add", "ana", "--team", "vision"],
        &["user", "add", "ned", "--team", "nlp"],
    ] {
        f.ok(args);
    }
    let lead = f.token_for("lead", "admin");
    let ana = f.token_for("ana", "submit");
    let ned = f.token_for("ned", "admin");

    // A team admin sets the project's secret; a member may not, nor may another team's admin.
    let out = f.cli_as(Some(&lead), &["secret", "set", "WANDB_API_KEY", "--project", "det"], "wandb-key-1");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("for project vision/det"), "{}", stderr(&out));
    let out = f.cli_as(Some(&ana), &["secret", "set", "WANDB_API_KEY", "--project", "vision/det"], "mine");
    assert_eq!(out.status.code(), Some(77), "{}", stderr(&out));
    let out = f.cli_as(Some(&ned), &["secret", "set", "X", "--project", "vision/det"], "theirs");
    assert_eq!(out.status.code(), Some(66), "{}", stderr(&out));

    // Ana's job in the project reads it; her own secret of the same name would win.
    let id_text = String::from_utf8(
        f.cli_as(
            Some(&ana),
            &[
                "run",
                "--workdir",
                "/tmp",
                "--project",
                "det",
                "--secret",
                "WANDB_API_KEY",
                "--",
                "sh",
                "-c",
                "echo got:$WANDB_API_KEY",
            ],
            "",
        )
        .stdout,
    )
    .unwrap();
    let id: u64 = id_text.trim().parse().expect("ana's job was accepted");
    f.wait_state(id, "succeeded");
    assert!(logs(&f, id).contains("got:wandb-key-1"));

    // Ana's own secret is hers: ned cannot use it, list it or remove it.
    let out = f.cli_as(Some(&ana), &["secret", "set", "ANA_ONLY"], "ana-private-value");
    assert!(out.status.success(), "{}", stderr(&out));
    let out = f.cli_as(Some(&ned), &["run", "--workdir", "/tmp", "--secret", "ANA_ONLY", "--", "true"], "");
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    let listed = String::from_utf8(f.cli_as(Some(&ned), &["secret", "list", "--json"], "").stdout).unwrap();
    assert!(!listed.contains("ANA_ONLY") && !listed.contains("WANDB_API_KEY"), "{listed}");
    let out = f.cli_as(Some(&ned), &["secret", "rm", "ANA_ONLY"], "");
    assert_eq!(out.status.code(), Some(66), "ned removes only his own: {}", stderr(&out));
    let listed = String::from_utf8(f.cli_as(Some(&ana), &["secret", "list", "--json"], "").stdout).unwrap();
    assert!(listed.contains("ANA_ONLY") && listed.contains("WANDB_API_KEY") && !listed.contains("value"), "{listed}");

    // Bad names and values, with what to do.
    for (args, input, expect) in [
        (&["secret", "set", "BAD-NAME"][..], "v", "not a valid secret name"),
        (&["secret", "set", "1ST"], "v", "not a valid secret name"),
        (&["secret", "set", "EMPTY"], "\n", "is empty"),
        (&["run", "--secret", "FERRY_TOKEN=ANA_ONLY", "--", "true"], "", "Ferry's own"),
        (&["run", "--secret", "ANA_ONLY", "--env", "ANA_ONLY=x", "--", "true"], "", "both by --env and from a secret"),
        (&["run", "--secret", "A=B=C", "--", "true"], "", "not a valid secret name"),
    ] {
        let out = f.cli_as(Some(&ana), args, input);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(expect), "{args:?}: {}", stderr(&out));
    }
    let big = "x".repeat(64 * 1024 + 1);
    let out = f.cli_as(Some(&ana), &["secret", "set", "BIG"], &big);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    // Straight to the API: a NUL byte, a control character in the name.
    let client = reqwest::blocking::Client::new();
    let put = |path: &str, body: &str| {
        client
            .put(format!("{}/api/v1/secrets/{path}", f.url()))
            .bearer_auth(&ana)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .unwrap()
    };
    let answer = put("user/NUL", r#"{"value": "a\u0000b"}"#);
    assert_eq!(answer.status(), 400);
    assert!(answer.text().unwrap().contains("NUL"));
    assert_eq!(put("user/A%0AB", r#"{"value": "v"}"#).status(), 400);
    assert_eq!(put("user/A", r#"{"value": "v", "extra": 1}"#).status(), 400);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
