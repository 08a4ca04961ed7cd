//! Jobs cannot see the control plane's data or each other's (issue 15): under `ferry up`, run by root and by an
//! ordinary user, a probe job tries to read the admin token, the job-token key, another running job's spec and
//! environment (on disk and through `/proc`) and the server's own environment, and finds none of them.
//!
//! These tests need root (to make the data directory of an ordinary user and start `ferry up` as that user) and
//! util-linux's `setpriv`.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::ferry_bin;

/// The user an ordinary-user `ferry up` runs as.
const NOBODY: u32 = 65534;

struct Up {
    child: std::process::Child,
    data: std::path::PathBuf,
    url: String,
    root: tempfile::TempDir,
}

impl Up {
    fn start(as_user: Option<u32>) -> Up {
        let root = tempfile::tempdir().unwrap();
        std::fs::set_permissions(root.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let data = root.path().join("data");
        if let Some(uid) = as_user {
            std::fs::create_dir(&data).unwrap();
            std::os::unix::fs::chown(&data, Some(uid), Some(uid)).unwrap();
        }
        let port = common::free_port();
        let log = std::fs::File::create(root.path().join("up.log")).unwrap();
        let mut command = match as_user {
            Some(uid) => {
                let mut c = Command::new("setpriv");
                c.args([&format!("--reuid={uid}"), &format!("--regid={uid}"), "--clear-groups", ferry_bin()]);
                c
            }
            None => Command::new(ferry_bin()),
        };
        let child = command
            .args(["up", "--listen", &format!("127.0.0.1:{port}")])
            .env("FERRY_HOME", &data)
            .env("HOME", root.path())
            // Secrets of the server's own environment, which no job may see.
            .env("AWS_SECRET_ACCESS_KEY", "server-secret-aws")
            .env("SLURM_JWT", "server-secret-jwt")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("these tests need util-linux's setpriv");
        let up = Up { child, data, url: format!("http://127.0.0.1:{port}"), root };
        let deadline = Instant::now() + common::WAIT;
        loop {
            let nodes: serde_json::Value =
                serde_json::from_slice(&up.cli(Path::new("/"), &["nodes", "--json"]).stdout).unwrap_or_default();
            if nodes["nodes"][0]["state"] == "ready" {
                break up;
            }
            assert!(Instant::now() < deadline, "ferry up did not start:\n{}", up.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn cli(&self, dir: &Path, args: &[&str]) -> Output {
        Command::new(ferry_bin())
            .args(args)
            .current_dir(dir)
            .env("FERRY_HOME", &self.data)
            .env("FERRY_SERVER", &self.url)
            .env_remove("FERRY_TOKEN")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.root.path().join("up.log")).unwrap_or_default()
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

fn probe(as_user: Option<u32>) {
    let up = Up::start(as_user);
    let data = up.data.display().to_string();
    let admin_token = std::fs::read_to_string(up.data.join("admin.token")).unwrap().trim().to_string();
    // A folder to ship, readable by the job's user.
    let folder = up.root.path().join("project");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("train.py"), "print('hi')\n").unwrap();
    // Another user's job, with a secret in its environment, running while the probe looks.
    let other = up.cli(&folder, &["run", "--env", "OTHER_SECRET=other-job-secret", "--", "sleep", "120.5"]);
    assert!(other.status.success(), "{}", common::stderr(&other));
    let deadline = Instant::now() + common::WAIT;
    while common::process_with_arg("120.5").is_none() {
        assert!(Instant::now() < deadline, "the other job did not start:\n{}", up.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let script = format!(
        "cat {data}/admin.token {data}/job-token.key {data}/agent.token; \
         cat {data}/agent/runs/*/spec.json; ls -la {data} {data}/agent {data}/agent/runs; \
         umount {data} 2>&1; cat {data}/admin.token; \
         for f in /proc/[0-9]*/environ; do tr '\\0' '\\n' < $f; done; env; ps ax 2>/dev/null || ls /proc; \
         echo; echo own-folder: $(cat train.py)"
    );
    let out = up.cli(&folder, &["run", "--follow", "--", "sh", "-c", &script]);
    let seen = format!("{}{}", String::from_utf8_lossy(&out.stdout), common::stderr(&out));
    assert!(seen.contains("own-folder: print('hi')"), "the job works in its own folder:\n{seen}\n{}", up.log());
    // The other job is job 1: its tracking token starts so; the probe's own (job 2) is its to see.
    for secret in [admin_token.as_str(), "other-job-secret", "server-secret-aws", "server-secret-jwt", "ferry_job_1_"] {
        assert!(!seen.contains(secret), "the job saw `{secret}`:\n{seen}");
    }
    assert!(!seen.contains("120.5"), "the job saw another job's process:\n{seen}");
}

#[test]
fn a_job_under_a_root_ferry_up_sees_no_data_secrets_or_other_jobs() {
    probe(None);
}

#[test]
fn a_job_under_an_ordinary_users_ferry_up_sees_no_data_secrets_or_other_jobs() {
    probe(Some(NOBODY));
}

/// Makes an ordinary account (uid 1000 or above) for a test, once.
fn ensure_account(name: &str) {
    if nix::unistd::User::from_name(name).ok().flatten().is_some() {
        return;
    }
    let out =
        Command::new("useradd").args(["--no-create-home", "--shell", "/usr/sbin/nologin", name]).output().unwrap();
    assert!(out.status.success(), "useradd {name}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_root_agent_runs_each_users_jobs_as_the_account_the_admin_maps_them_to() {
    use common::{stderr, Ferry, NodeSpec};
    assert!(nix::unistd::geteuid().is_root(), "this test makes accounts and a root agent: it needs root");
    ensure_account("ferry-test-ana");
    ensure_account("ferry-test-bo");
    let config = "job_users = { ana = \"ferry-test-ana\" }\njob_users_by_name = true";
    let f = Ferry::start_with_agent_config(NodeSpec::default(), config, "30s");
    for args in [
        &["team", "add", "ml"][..],
        &["user", "add", "ana", "--team", "ml"],
        &["user", "add", "ferry-test-bo", "--team", "ml"],
        &["user", "add", "daemon", "--team", "ml"],
    ] {
        f.ok(args);
    }
    let whoami = |token: Option<&str>| {
        let out = f.cli_as(token, &["run", "--workdir", "/tmp", "--follow", "--", "id", "-un"], "");
        assert!(out.status.success(), "{}\n{}", stderr(&out), f.logs_for_failure());
        String::from_utf8(out.stdout).unwrap().lines().last().unwrap_or_default().to_string()
    };
    // Mapped explicitly; by the same name (an ordinary account); a system account's name is not enough; the
    // admin's jobs (not mapped) run as job_user.
    assert_eq!(whoami(Some(&f.token_for("ana", "submit"))), "ferry-test-ana");
    assert_eq!(whoami(Some(&f.token_for("ferry-test-bo", "submit"))), "ferry-test-bo");
    assert_eq!(whoami(Some(&f.token_for("daemon", "submit"))), "ferry-job");
    assert_eq!(whoami(None), "ferry-job");
}
