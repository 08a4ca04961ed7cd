//! Jobs in containers, end to end: the real binary, and Podman's Docker-compatible API service started for the test
//! by scripts/podman/start.sh (which installs Podman when missing and builds `localhost/busybox:ferry` from the
//! node's busybox, with no registry). GPU passthrough is not tested: the machines these tests run on have no GPU.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{stderr, Ferry, NodeSpec};

const IMAGE: &str = "localhost/busybox:ferry";

/// Podman's API service for one test, in a folder of its own; stopped (with every container Ferry left) on drop.
struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    fn start() -> Podman {
        // The guard first: a start that fails halfway is stopped too.
        let podman = Podman { dir: tempfile::tempdir().unwrap() };
        let out = Command::new(script("start.sh")).arg(podman.dir.path()).output().unwrap();
        assert!(out.status.success(), "scripts/podman/start.sh failed: {}", stderr(&out));
        let printed = String::from_utf8_lossy(&out.stdout);
        assert!(printed.trim_end().ends_with(&format!("export CONTAINER_HOST=unix://{}", self_socket(&podman.dir))));
        podman
    }

    fn socket(&self) -> String {
        self_socket(&self.dir)
    }

    /// The agent configuration that points it at this service and lets containers mount the test's `work` folder,
    /// where most tests' jobs run.
    fn agent_config(&self) -> String {
        format!("container_socket = \"unix://{}\"\ncontainer_mounts = [\"{{root}}/work\"]", self.socket())
    }

    /// The names of the containers the engine has, running or not, that mount `dir` (the engine's storage is the
    /// machine's, shared by tests running at once, whose job ids are the same).
    fn containers(&self, dir: &Path) -> Vec<String> {
        let dir = dir.canonicalize().unwrap().display().to_string();
        let out = Command::new("curl")
            .args(["-sf", "--unix-socket", &self.socket(), "http://d/v1.41/containers/json?all=true"])
            .output()
            .unwrap();
        assert!(out.status.success(), "cannot list containers: {}", stderr(&out));
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        list.as_array()
            .unwrap()
            .iter()
            .filter(|c| c["Mounts"].as_array().into_iter().flatten().any(|m| m["Source"] == dir.as_str()))
            .flat_map(|c| c["Names"].as_array().cloned().unwrap_or_default())
            .filter_map(|n| n.as_str().map(|n| n.trim_start_matches('/').to_string()))
            .collect()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = Command::new(script("stop.sh")).arg(self.dir.path()).output();
    }
}

fn self_socket(dir: &tempfile::TempDir) -> String {
    format!("{}/podman.sock", dir.path().canonicalize().unwrap().display())
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/podman").join(name)
}

/// `ferry run --follow --image IMAGE ...` with the given flags and command; returns (exit code, stdout, stderr).
fn follow(f: &Ferry, image: &str, flags: &[&str], command: &[&str]) -> (Option<i32>, String, String) {
    let mut args = vec!["run", "--follow", "--image", image, "--cpus", "0.5"];
    args.extend_from_slice(flags);
    args.push("--");
    args.extend_from_slice(command);
    let out = f.cli(&args);
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), stderr(&out))
}

#[test]
fn a_job_runs_in_its_image_with_its_arguments_environment_directory_and_exit_code() {
    let podman = Podman::start();
    let f = Ferry::start_with_agent_config(NodeSpec::default(), &podman.agent_config(), "30s");
    let tricky = ["a b", "$(echo no); `x` | & > <", "line1\nline2", "quo\"te's", ""];
    // In the image (busybox, and not the node's tools), with every argument and variable as given, in the job's
    // working directory, which is the node's folder mounted.
    let script = concat!(
        "test -e /bin/busybox && ! test -e \"$HOST_FILE\" && echo inside; printf '[%s]' \"$@\"; echo; ",
        "printf '%s|%s|' \"$TRICKY\" \"$CUDA_VISIBLE_DEVICES\"; pwd; echo written > from-container.txt; exit 3",
    );
    let mut command = vec!["sh", "-c", script, "sh"];
    command.extend_from_slice(&tricky);
    // The ferry binary is on the node, and not in the image.
    let host_file = format!("HOST_FILE={}", common::ferry_bin());
    let (code, out, err) = follow(&f, IMAGE, &["--env", "TRICKY=x'\"$HOME\n;y", "--env", &host_file], &command);
    assert_eq!(code, Some(3), "{err}\n{out}");
    let workdir = f.workdir().canonicalize().unwrap();
    let expected = format!(
        "inside\n[a b][$(echo no); `x` | & > <][line1\nline2][quo\"te's][]\nx'\"$HOME\n;y||{}\n",
        workdir.display()
    );
    assert_eq!(out, expected);
    assert_eq!(std::fs::read_to_string(workdir.join("from-container.txt")).unwrap(), "written\n");
    let job = f.job(1);
    assert_eq!((job["state"].as_str(), job["exit_code"].as_i64()), (Some("failed"), Some(3)), "{job}");
    assert_eq!(job["image"], IMAGE);
    assert!(f.ok(&["show", "1"]).contains(&format!("Image:        {IMAGE}\n")));
    let containers = podman.containers(&f.workdir());
    assert!(containers.iter().all(|c| !c.starts_with("ferry-1-0-")), "removed once done: {containers:?}");

    // Shipped code is the working directory, mounted at the same path.
    let code = tempfile::tempdir().unwrap();
    // The run's own folder is handed to the unprivileged account the container runs as, which may write in it.
    std::fs::write(code.path().join("job.sh"), "echo \"shipped $(cat data.txt)\" | tee out.txt\n").unwrap();
    std::fs::write(code.path().join("data.txt"), "data").unwrap();
    let out =
        f.cli_shipping_in(code.path(), &["run", "--follow", "--image", IMAGE, "--cpus", "0.5", "--", "sh", "job.sh"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "shipped data\n");

    // A reference that cannot be one is refused at submission, saying what is wrong.
    let out = f.cli(&["run", "--image", "Busy Box", "--", "true"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("`Busy Box` is not a container image reference: it holds whitespace"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("localhost/busybox:ferry"), "{}", stderr(&out));
}

#[test]
fn memory_limits_cancel_and_max_runtime_reach_the_container() {
    let podman = Podman::start();
    let f = Ferry::start_with_agent_config(NodeSpec::default(), &podman.agent_config(), "30s");

    let (code, out, err) =
        follow(&f, IMAGE, &["--memory", "32MiB"], &["dd", "if=/dev/zero", "of=/dev/null", "bs=100M", "count=1"]);
    assert_eq!(code, Some(137), "{err}\n{out}");
    assert!(out.contains("ferry: the container was OOM-killed: it reached its memory limit of 32MiB"), "{out}");
    assert_eq!(f.job(1)["state"], "failed");

    // A job that stops on SIGTERM, as a well-behaved one does (the container's first process has no default
    // handlers, so a plain `sleep` would only go at the end of the grace period).
    let patient = ["sh", "-c", "trap 'echo got TERM; exit 143' TERM; echo started; sleep 300 & wait"];
    let mut args = vec!["run", "--image", IMAGE, "--cpus", "0.5", "--"];
    args.extend_from_slice(&patient);
    let out = f.ok(&args);
    let id: u64 = out.trim().parse().unwrap();
    let prefix = format!("ferry-{id}-0-");
    let of_job = |podman: &Podman, prefix: &str| podman.containers(&f.workdir()).iter().any(|c| c.starts_with(prefix));
    f.wait_for("the container to print", |f| f.ok(&["logs", &id.to_string()]).contains("started"));
    assert!(of_job(&podman, &prefix), "{:?}", podman.containers(&f.workdir()));
    f.ok(&["cancel", &id.to_string()]);
    let job = f.wait_state(id, "cancelled");
    assert!(job["message"].as_str().unwrap_or_default().starts_with("cancelled by request"), "{job}");
    let logs = f.ok(&["logs", &id.to_string()]);
    assert!(logs.contains("got TERM"), "{logs}\n{job}");
    f.wait_for("the container to be removed", |_| !of_job(&podman, &prefix));

    let (code, _, err) = follow(&f, IMAGE, &["--max-runtime", "2s"], &patient);
    assert_eq!(code, Some(124), "{err}");
    let job = f.job(id + 1);
    assert_eq!(job["state"], "timed_out", "{job}");
    f.wait_for("the timed-out container to be removed", |_| !of_job(&podman, &format!("ferry-{}-0-", id + 1)));
}

#[test]
fn a_missing_image_or_an_unreachable_engine_fails_the_job_with_a_clear_message() {
    let podman = Podman::start();
    let f = Ferry::start_with_agent_config(NodeSpec::default(), &podman.agent_config(), "30s");
    let (code, out, err) = follow(&f, "localhost/ferry-missing:1", &[], &["true"]);
    assert_eq!(code, Some(125), "{err}\n{out}");
    assert!(
        out.contains("ferry: image localhost/ferry-missing:1 is not on this node and could not be pulled: "),
        "{out}"
    );
    drop(f);

    let nowhere = podman.dir.path().join("nowhere.sock");
    let config = format!("container_socket = \"unix://{}\"\ncontainer_mounts = [\"{{root}}/work\"]", nowhere.display());
    let f = Ferry::start_with_agent_config(NodeSpec::default(), &config, "30s");
    let (code, out, err) = follow(&f, IMAGE, &[], &["true"]);
    assert_eq!(code, Some(125), "{err}\n{out}");
    let expected = format!("ferry: cannot reach the container engine at unix://{}: ", nowhere.display());
    assert!(out.starts_with(&expected), "{out}");
    assert!(out.contains("podman system service --time=0 unix:///run/podman/podman.sock"), "{out}");
    assert_eq!(f.job(1)["state"], "failed");
}

/// The ids the agent's containers run as: `ferry-job`'s under an agent running as root, else the agent's own.
fn unprivileged_ids() -> (u32, u32) {
    let id = |flag: &str| {
        let mut command = Command::new("id");
        command.arg(flag);
        let root = Command::new("id").arg("-u").output().unwrap().stdout == b"0\n";
        if root {
            command.arg("ferry-job");
        }
        String::from_utf8(command.output().unwrap().stdout).unwrap().trim().parse::<u32>().unwrap()
    };
    (id("-u"), id("-g"))
}

/// What a job prints of its identity, capabilities and privileges, then whether it reaches `port` on the node's
/// loopback (busybox's `nc` connects and ends at once with nothing to send).
fn probe(port: u16) -> String {
    format!(
        "id -u; id -g; grep -E '^(CapEff|CapBnd|NoNewPrivs):' /proc/self/status; \
         if nc -w 3 127.0.0.1 {port} </dev/null 2>/dev/null; then echo reached; else echo unreachable; fi; \
         echo written > probe.txt"
    )
}

/// The job `id` ended without starting, with a message that has `expected`; no container was ever made for it.
fn assert_refused(f: &Ferry, podman: &Podman, id: u64, expected: &str) {
    let job = f.wait_state(id, "failed");
    let message = job["message"].as_str().unwrap_or_default();
    assert!(message.contains(expected), "{message}\n{job}");
    assert_eq!(job["exit_code"], serde_json::Value::Null, "{job}");
    let logs = f.ok(&["logs", &id.to_string()]);
    assert!(logs.starts_with("ferry: the working directory ") && logs.contains(expected), "{logs}");
    let prefix = format!("ferry-{id}-0-");
    let made = podman.containers(Path::new("/etc"));
    assert!(!made.iter().any(|c| c.starts_with(&prefix)), "{made:?}");
}

#[test]
fn a_container_mounts_no_host_path_outside_the_run_and_the_allowed_prefixes() {
    let podman = Podman::start();
    let f = Ferry::start_with_agent_config(NodeSpec::default(), &podman.agent_config(), "30s");
    let work = f.workdir().canonicalize().unwrap();
    let allowed = work.join("team");
    std::fs::create_dir(&allowed).unwrap();
    std::fs::set_permissions(&allowed, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    std::os::unix::fs::symlink("/etc", work.join("etc-link")).unwrap();
    let refusal = "is not under a host path the agent lets containers mount; an admin can allow its prefix with \
                   `container_mounts` in the agent's configuration";
    let submit = |workdir: &str| f.submit(&["--image", IMAGE, "--cpus", "0.5", "--workdir", workdir, "--", "true"]);

    // Any host folder, as the attacker's `--workdir /etc` asked for.
    assert_refused(&f, &podman, submit("/etc"), &format!("the working directory /etc {refusal}"));
    // A symlink inside the allowed prefix that leads out of it.
    let link = work.join("etc-link").display().to_string();
    assert_refused(&f, &podman, submit(&link), &format!("the working directory {link} (which is /etc) {refusal}"));
    // `..` past the prefix.
    let up = format!("{}/{}etc", work.display(), "../".repeat(work.components().count()));
    assert_refused(&f, &podman, submit(&up), &format!("the working directory {up} (which is /etc) {refusal}"));
    // The agent's own folder (its token, every run's files), even under an allowed prefix.
    let agent = f.agent_dir().canonicalize().unwrap().display().to_string();
    assert_refused(&f, &podman, submit(&agent), "which jobs must not see; choose another with --workdir");

    // Inside the allowed prefix the job runs, and writes there as its unprivileged account.
    let allowed_dir = allowed.display().to_string();
    let (code, out, err) = follow(&f, IMAGE, &["--workdir", &allowed_dir], &["sh", "-c", "pwd; echo ok > out.txt"]);
    assert_eq!(code, Some(0), "{err}\n{out}");
    assert_eq!(out, format!("{allowed_dir}\n"));
    let written = std::fs::metadata(allowed.join("out.txt")).unwrap();
    assert_eq!((written.uid(), written.gid()), unprivileged_ids());
}

#[test]
fn a_container_runs_unprivileged_without_capabilities_or_new_privileges() {
    let podman = Podman::start();
    let f = Ferry::start_with_agent_config(NodeSpec::default(), &podman.agent_config(), "30s");
    let port = f.url().rsplit(':').next().unwrap().parse::<u16>().unwrap();
    let (code, out, err) = follow(&f, IMAGE, &[], &["sh", "-c", &probe(port)]);
    assert_eq!(code, Some(0), "{err}\n{out}");
    let (uid, gid) = unprivileged_ids();
    assert_ne!(uid, 0);
    // The default network is the node's (a job reaches a server on its loopback, as under `ferry up`).
    let expected =
        format!("{uid}\n{gid}\nCapEff:\t0000000000000000\nCapBnd:\t0000000000000000\nNoNewPrivs:\t1\nreached\n");
    assert_eq!(out, expected);
    let written = std::fs::metadata(f.workdir().join("probe.txt")).unwrap();
    assert_eq!((written.uid(), written.gid()), (uid, gid));
}

#[test]
fn an_admin_chooses_the_network_the_user_and_capabilities_given_back() {
    let podman = Podman::start();
    let config = format!(
        "{}\ncontainer_network = \"none\"\ncontainer_user = \"image\"\ncontainer_capabilities = [\"CHOWN\"]",
        podman.agent_config()
    );
    let f = Ferry::start_with_agent_config(NodeSpec::default(), &config, "30s");
    let port = f.url().rsplit(':').next().unwrap().parse::<u16>().unwrap();
    let (code, out, err) = follow(&f, IMAGE, &[], &["sh", "-c", &probe(port)]);
    assert_eq!(code, Some(0), "{err}\n{out}");
    // The image's own user (root in busybox), with only CAP_CHOWN (bit 0), still without new privileges, and no
    // way to the server's port.
    let expected = "0\n0\nCapEff:\t0000000000000001\nCapBnd:\t0000000000000001\nNoNewPrivs:\t1\nunreachable\n";
    assert_eq!(out, expected);
}

#[test]
fn a_private_network_has_an_address_of_its_own_but_not_the_nodes_loopback() {
    let podman = Podman::start();
    let config = format!("{}\ncontainer_network = \"private\"", podman.agent_config());
    let f = Ferry::start_with_agent_config(NodeSpec::default(), &config, "30s");
    let port = f.url().rsplit(':').next().unwrap().parse::<u16>().unwrap();
    let script = format!("ls /sys/class/net | grep -vx lo | wc -l; {}", probe(port));
    let (code, out, err) = follow(&f, IMAGE, &[], &["sh", "-c", &script]);
    assert_eq!(code, Some(0), "{err}\n{out}");
    let (uid, gid) = unprivileged_ids();
    let expected =
        format!("1\n{uid}\n{gid}\nCapEff:\t0000000000000000\nCapBnd:\t0000000000000000\nNoNewPrivs:\t1\nunreachable\n");
    assert_eq!(out, expected);
}
