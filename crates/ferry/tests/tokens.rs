//! Join tokens: an admin creates one, an agent on another machine joins with it, and once revoked it is refused.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ferry_bin, stderr, Ferry, NodeSpec};

#[test]
fn an_agent_joins_with_a_join_token_and_stops_when_it_is_revoked() {
    let f = Ferry::start(NodeSpec::default());
    let out = f.cli(&["token", "create", "--agent", "--node", "node-b", "--name", "rack-b"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let token = String::from_utf8(out.stdout.clone()).unwrap().trim().to_string();
    assert!(token.starts_with("ferry_") && token.len() > 40, "{token}");
    assert!(stderr(&out).contains("it is shown only now"), "{}", stderr(&out));

    // The listing names the token but never shows it, nor anything derived from it.
    let listing = f.ok(&["token", "list", "--json"]);
    assert!(listing.contains("\"rack-b\"") && !listing.contains(&token[6..20]), "{listing}");
    let id = f.json(&["token", "list", "--json"])["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "rack-b")
        .unwrap()["id"]
        .as_i64()
        .unwrap();

    // An agent on "another machine" joins with it.
    let config = f.root.path().join("agent-b.toml");
    std::fs::write(&config, "name = \"node-b\"\ncpus = 2\nmemory = \"4GiB\"\n").unwrap();
    let mut agent = Command::new(ferry_bin())
        .args(["agent", "--server", &f.url(), "--join-token", &token, "--data-dir"])
        .arg(f.root.path().join("agent-b"))
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    f.wait_for("node-b to join", |f| {
        f.json(&["nodes", "--json"])["nodes"]
            .as_array()
            .is_some_and(|n| n.iter().any(|n| n["name"] == "node-b" && n["state"] == "ready"))
    });
    // A join token cannot be used for anything else.
    let out = f.cli(&["ps", "--token", &token]);
    assert_eq!(out.status.code(), Some(77), "{}", stderr(&out));
    assert!(stderr(&out).contains("an agent token may only be used by agents"), "{}", stderr(&out));
    let out = f.cli(&["token", "create", "--agent", "--node", "x", "--name", "x", "--token", &token]);
    assert_eq!(out.status.code(), Some(77), "{}", stderr(&out));

    // Revoked, it is refused at once: the agent's next report fails and the agent stops with a clear error.
    let out = f.cli(&["token", "revoke", &id.to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stderr(&out).trim(), format!("token {id} (rack-b) revoked"));
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = agent.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the agent kept running with a revoked token\n{}", f.logs_for_failure());
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(agent.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(77), "{err}");
    assert!(err.contains("API token is not valid"), "{err}");
    let listing = f.json(&["token", "list", "--json"]);
    let revoked = listing["tokens"].as_array().unwrap().iter().find(|t| t["id"] == id).unwrap().clone();
    assert!(revoked["revoked_at_us"].as_i64().is_some(), "{revoked}");
}

#[test]
fn token_commands_refuse_bad_input() {
    let f = Ferry::start(NodeSpec::default());
    let refused = |args: &[&str], code: i32, message: &str| {
        let out = f.cli(args);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(message), "{args:?}: {}", stderr(&out));
    };
    refused(&["token", "create", "--name", " "], 64, "a token needs a name");
    refused(&["token", "create", "--agent", "--node", "*", "--name", "x"], 64, "a bare `*` would speak for every node");
    refused(&["token", "create", "--agent", "--node", "a b", "--name", "x"], 64, "is not a node name or pattern");
    refused(&["token", "create", "--name", "x", "--expires", "0s"], 2, "`0s` is zero");
    refused(&["token", "create", "--name", "x", "--for", "nobody"], 66, "no user `nobody`");
    refused(&["token", "create", "--name", "x", "--scope", "root"], 2, "`root` is not a scope");
    refused(&["token", "revoke", "999"], 66, "no token 999");
    refused(&["token", "revoke", "abc"], 64, "`abc` is not a token id");
    let second = f.ok(&["token", "create", "--scope", "admin", "--name", "ops"]);
    assert!(second.trim().starts_with("ferry_"));
    let tokens = f.json(&["token", "list", "--json"]);
    let ops = tokens["tokens"].as_array().unwrap().iter().find(|t| t["name"] == "ops").unwrap().clone();
    assert_eq!(
        (ops["user"].as_str(), ops["scope"].as_str(), ops["kind"].as_str()),
        (Some("admin"), Some("admin"), Some("user"))
    );
    let id = ops["id"].as_i64().unwrap();
    f.ok(&["token", "revoke", &id.to_string()]);
    refused(&["token", "revoke", &id.to_string()], 65, "is already revoked");
}
