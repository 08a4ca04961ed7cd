//! `ferry up`: the server and a supervised local agent in one command, stopped cleanly by Ctrl-C.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::ferry_bin;

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + common::WAIT;
    while Instant::now() < deadline {
        if condition() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn up_runs_jobs_restarts_a_dead_agent_and_stops_on_ctrl_c() {
    let home = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let server = format!("http://127.0.0.1:{port}");
    let log = std::fs::File::create(home.path().join("up.log")).unwrap();
    let mut up = Command::new(ferry_bin())
        .args(["up", "--listen", &format!("127.0.0.1:{port}")])
        .env("FERRY_HOME", home.path().join("data"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let cli = |args: &[&str]| {
        Command::new(ferry_bin())
            .args(args)
            .env("FERRY_HOME", home.path().join("data"))
            .env("FERRY_SERVER", &server)
            .env_remove("FERRY_TOKEN")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let nodes = || serde_json::from_slice::<serde_json::Value>(&cli(&["nodes", "--json"]).stdout).unwrap_or_default();
    wait_until("the local node", || nodes()["nodes"][0]["state"] == "ready");
    let node = nodes();
    assert_eq!(node["nodes"][0]["pool"], "local");
    assert!(node["nodes"][0]["cpu_millis"].as_u64().unwrap() >= 1000, "the real CPU count is registered: {node}");
    let token = home.path().join("data/admin.token");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&token).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the admin token is readable by its owner only");

    let out = cli(&["run", "--follow", "--cpus", "0.1", "--", "echo", "hello from up"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from up\n");

    // Kill the agent: `ferry up` starts another, which takes the node back.
    let agent_pid = std::fs::read_to_string(home.path().join("data/agent/agent.lock")).unwrap_or_default();
    let agent_pid: i32 = agent_pid.trim().parse().expect("the agent writes its pid into its lock file");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent_pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    wait_until("a new agent", || {
        std::fs::read_to_string(home.path().join("data/agent/agent.lock"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
            .is_some_and(|p| p != agent_pid)
    });
    let out = cli(&["run", "--follow", "--cpus", "0.1", "--", "echo", "again"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "again\n");

    // Ctrl-C: the server and its agent stop, and `ferry up` exits 0.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(up.id() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    let status = up.wait().unwrap();
    assert!(status.success(), "ferry up exits cleanly: {status}");
    let new_agent: i32 =
        std::fs::read_to_string(home.path().join("data/agent/agent.lock")).unwrap().trim().parse().unwrap();
    wait_until("the agent to stop", || {
        !std::path::Path::new(&format!("/proc/{new_agent}")).exists()
            || std::fs::read_to_string(format!("/proc/{new_agent}/stat")).is_ok_and(|s| s.contains(") Z "))
    });
    let out = cli(&["ps"]);
    assert_eq!(out.status.code(), Some(69), "no server answers after Ctrl-C");
}

fn gone(pid: i32) -> bool {
    !std::path::Path::new(&format!("/proc/{pid}")).exists()
        || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
}

fn lock_holder(data: &std::path::Path) -> Option<i32> {
    std::fs::read_to_string(data.join("agent/agent.lock")).ok()?.trim().parse().ok()
}

#[test]
fn a_killed_up_leaves_no_agent_behind_and_a_leftover_one_is_stopped() {
    let home = tempfile::tempdir().unwrap();
    let data = home.path().join("data");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let server = format!("http://127.0.0.1:{port}");
    let up = || {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(home.path().join("up.log")).unwrap();
        Command::new(ferry_bin())
            .args(["up", "--listen", &format!("127.0.0.1:{port}")])
            .env("FERRY_HOME", &data)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap()
    };
    let cli = |args: &[&str]| {
        Command::new(ferry_bin())
            .args(args)
            .env("FERRY_HOME", &data)
            .env("FERRY_SERVER", &server)
            .env_remove("FERRY_TOKEN")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let ready = || {
        serde_json::from_slice::<serde_json::Value>(&cli(&["nodes", "--json"]).stdout).unwrap_or_default()["nodes"][0]
            ["state"]
            == "ready"
    };
    let mut first = up();
    wait_until("the local node", || lock_holder(&data).is_some() && ready());
    let agent = lock_holder(&data).unwrap();
    // `ferry up` killed outright: its agent learns of it from the kernel and stops.
    first.kill().unwrap();
    first.wait().unwrap();
    wait_until("the agent of the killed ferry up to stop", || gone(agent));

    // An agent left running by some earlier start (as one from before this change would be), holding the directory.
    let log = std::fs::File::create(home.path().join("leftover.log")).unwrap();
    let mut leftover = Command::new(ferry_bin())
        .args(["agent", "--server", &server, "--token-file"])
        .arg(data.join("agent.token"))
        .arg("--data-dir")
        .arg(data.join("agent"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let leftover_pid = leftover.id() as i32;
    wait_until("the leftover agent to hold its directory", || lock_holder(&data) == Some(leftover_pid));
    let mut second = up();
    wait_until("the leftover agent to be stopped", || leftover.try_wait().unwrap().is_some());
    wait_until("a new agent", || lock_holder(&data).is_some_and(|p| p != leftover_pid) && ready());
    let out = cli(&["run", "--follow", "--cpus", "0.1", "--", "echo", "after the leftover"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "after the leftover\n");
    let log = std::fs::read_to_string(home.path().join("up.log")).unwrap();
    assert!(log.contains("stopping the agent an earlier ferry up left running"), "{log}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(second.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(second.wait().unwrap().success());
}

#[test]
fn up_as_root_makes_the_account_jobs_run_as_and_jobs_never_run_as_root() {
    assert!(nix::unistd::geteuid().is_root(), "this test makes a system account: it needs root");
    let account = format!("ferrytest{}", std::process::id() % 100_000);
    let home = tempfile::tempdir().unwrap();
    std::fs::set_permissions(home.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let config = home.path().join("agent.toml");
    std::fs::write(&config, format!("job_user = \"{account}\"\n")).unwrap();
    let data = home.path().join("data");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let log = std::fs::File::create(home.path().join("up.log")).unwrap();
    let mut up = Command::new(ferry_bin())
        .args(["up", "--listen", &format!("127.0.0.1:{port}"), "--agent-config"])
        .arg(&config)
        .env("FERRY_HOME", &data)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let cli = |args: &[&str]| {
        Command::new(ferry_bin())
            .args(args)
            .current_dir(home.path())
            .env("FERRY_HOME", &data)
            .env("FERRY_SERVER", format!("http://127.0.0.1:{port}"))
            .env_remove("FERRY_TOKEN")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    wait_until("the local node", || {
        serde_json::from_slice::<serde_json::Value>(&cli(&["nodes", "--json"]).stdout).unwrap_or_default()["nodes"][0]
            ["state"]
            == "ready"
    });
    let out = cli(&["run", "--no-code", "--follow", "--", "id", "-un"]);
    let _ = Command::new("userdel").arg(&account).status();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(up.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    up.wait().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{account}\n"), "{}", common::stderr(&out));
}
