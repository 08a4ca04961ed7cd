//! A test harness that runs the real `ferry` binary: a server and an agent as separate processes on loopback, each
//! test in its own temporary data directories, and the CLI as a user would call it.
//!
//! Waiting is done by polling a condition with a deadline, never by sleeping a fixed time.

#![allow(dead_code)]

pub mod netns;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The longest any condition in these tests is waited for; generous for a loaded 2-core CI machine.
pub const WAIT: Duration = Duration::from_secs(60);

pub fn ferry_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ferry")
}

pub struct Ferry {
    pub root: tempfile::TempDir,
    pub port: u16,
    pub node_timeout: String,
    server: Option<Child>,
    agent: Option<Child>,
    /// More agents, each a node of its own, started with `start_extra_agent`.
    extra_agents: Vec<(Child, PathBuf)>,
    /// Extra arguments for `ferry server`, such as `--config FILE`.
    pub server_args: Vec<String>,
    /// Extra environment of `ferry server`.
    pub server_env: Vec<(String, String)>,
}

/// How the node of a test looks.
pub struct NodeSpec {
    pub gpus: u32,
    pub cpus: u32,
    pub memory: &'static str,
}

impl Default for NodeSpec {
    fn default() -> NodeSpec {
        NodeSpec { gpus: 2, cpus: 4, memory: "8GiB" }
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Ferry {
    /// A server and one agent with the given node shape, ready to take jobs.
    pub fn start(node: NodeSpec) -> Ferry {
        Ferry::start_with_timeout(node, "30s")
    }

    pub fn start_with_timeout(node: NodeSpec, node_timeout: &str) -> Ferry {
        Ferry::start_with_agent_config(node, "", node_timeout)
    }

    /// As `start_with_timeout`, with `extra` added to the agent's TOML configuration (top-level keys such as
    /// `nvml_library = "/path"`; `{root}` in it stands for the test's folder, resolved, which holds `work/`);
    /// `node.gpus` GPUs are declared in the configuration, so 0 declares none.
    pub fn start_with_agent_config(node: NodeSpec, extra: &str, node_timeout: &str) -> Ferry {
        Ferry::start_full(node, extra, node_timeout, None, &[])
    }

    /// A server started with these extra arguments (such as `--tls auto`), and one agent.
    pub fn start_with_server_args(node: NodeSpec, args: &[&str]) -> Ferry {
        Ferry::start_inner(free_port(), node, "", "30s", None, &[], args)
    }

    /// A server with these environment variables, and one agent.
    pub fn start_with_server_env(node: NodeSpec, env: &[(&str, &str)]) -> Ferry {
        Ferry::start_full(node, "", "30s", None, env)
    }

    /// A server started with `--config` holding `server_config`, and one agent.
    pub fn start_with_server_config(node: NodeSpec, agent_extra: &str, server_config: &str) -> Ferry {
        Ferry::start_full(node, agent_extra, "30s", Some(server_config), &[])
    }

    /// A server on `port` (chosen beforehand, for a test that must tell another service where Ferry will be), with
    /// `--config` holding `server_config` and these environment variables, and one agent.
    pub fn start_on_port(port: u16, node: NodeSpec, server_config: &str, env: &[(&str, &str)]) -> Ferry {
        Ferry::start_inner(port, node, "", "30s", Some(server_config), env, &[])
    }

    fn start_full(
        node: NodeSpec,
        extra: &str,
        node_timeout: &str,
        server_config: Option<&str>,
        env: &[(&str, &str)],
    ) -> Ferry {
        Ferry::start_inner(free_port(), node, extra, node_timeout, server_config, env, &[])
    }

    fn start_inner(
        port: u16,
        node: NodeSpec,
        extra: &str,
        node_timeout: &str,
        server_config: Option<&str>,
        env: &[(&str, &str)],
        server_args: &[&str],
    ) -> Ferry {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("work")).unwrap();
        // Jobs of an agent running as root run as the unprivileged `ferry-job`: the test's folders are open to it,
        // as a shared scratch folder would be (sticky, like /tmp).
        for dir in [root.path().to_path_buf(), root.path().join("work")] {
            std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
        }
        let gpus: Vec<String> = (0..node.gpus)
            .map(|i| format!("[[gpus]]\nindex = {i}\nmodel = \"Test GPU\"\nmemory = \"16GiB\"\n"))
            .collect();
        let extra = extra.replace("{root}", &root.path().canonicalize().unwrap().display().to_string());
        let config = format!(
            "name = \"node-a\"\ncpus = {}\nmemory = \"{}\"\n{extra}\n{}",
            node.cpus,
            node.memory,
            gpus.join("\n")
        );
        std::fs::write(root.path().join("agent.toml"), config).unwrap();
        let mut ferry = Ferry {
            root,
            port,
            node_timeout: node_timeout.to_string(),
            server: None,
            agent: None,
            extra_agents: Vec::new(),
            server_args: Vec::new(),
            server_env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        if let Some(text) = server_config {
            let path = ferry.root.path().join("ferry.toml");
            std::fs::write(&path, text).unwrap();
            ferry.server_args = vec!["--config".to_string(), path.display().to_string()];
        }
        ferry.server_args.extend(server_args.iter().map(|a| a.to_string()));
        ferry.start_server();
        ferry.start_agent();
        ferry.wait_for("the node to be ready", |f| {
            f.json(&["nodes", "--json"])["nodes"].as_array().is_some_and(|n| n.iter().any(|n| n["state"] == "ready"))
        });
        ferry
    }

    pub fn home(&self) -> PathBuf {
        self.root.path().join("home")
    }

    pub fn agent_dir(&self) -> PathBuf {
        self.root.path().join("agent")
    }

    pub fn workdir(&self) -> PathBuf {
        self.root.path().join("work")
    }

    /// The server's URL: https:// when it was started with TLS.
    pub fn url(&self) -> String {
        let tls = self.server_args.iter().any(|a| a == "--tls" || a == "--tls-cert");
        format!("{}://127.0.0.1:{}", if tls { "https" } else { "http" }, self.port)
    }

    fn log(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new().create(true).append(true).open(self.root.path().join(name)).unwrap()
    }

    pub fn start_server(&mut self) {
        let child = Command::new(ferry_bin())
            .args(["server", "--listen", &format!("127.0.0.1:{}", self.port), "--node-timeout", &self.node_timeout])
            .args(&self.server_args)
            .envs(self.server_env.iter().map(|(k, v)| (k, v)))
            .env("FERRY_HOME", self.home())
            .stdout(self.log("server.log"))
            .stderr(self.log("server.log"))
            .spawn()
            .unwrap();
        self.server = Some(child);
        self.wait_for("the server to answer", |f| {
            f.home().join("admin.token").exists() && f.cli(&["ps"]).status.success()
        });
    }

    /// A file with a join token bound to `node`, made with the admin token the first time and kept, so that an agent
    /// restarted by a test speaks with the token its node registered with.
    pub fn join_token_file(&self, node: &str) -> PathBuf {
        let path = self.root.path().join(format!("join-{node}.token"));
        if !path.exists() {
            let token =
                self.ok(&["token", "create", "--agent", "--node", node, "--name", &format!("test agent {node}")]);
            std::fs::write(&path, token.trim()).unwrap();
        }
        path
    }

    pub fn start_agent(&mut self) {
        let token = self.join_token_file("node-a");
        let child = Command::new(ferry_bin())
            .args(["agent", "--server", &self.url(), "--data-dir"])
            .arg(self.agent_dir())
            .arg("--token-file")
            .arg(token)
            .arg("--config")
            .arg(self.root.path().join("agent.toml"))
            .stdout(self.log("agent.log"))
            .stderr(self.log("agent.log"))
            .spawn()
            .unwrap();
        self.agent = Some(child);
    }

    /// Starts one more agent: a node named `name` in `pool` with `gpus` declared GPUs.
    pub fn start_extra_agent(&mut self, name: &str, pool: &str, gpus: u32) {
        let dir = self.root.path().join(format!("agent-{name}"));
        let gpu_tables: Vec<String> =
            (0..gpus).map(|i| format!("[[gpus]]\nindex = {i}\nmodel = \"Test GPU\"\nmemory = \"16GiB\"\n")).collect();
        let config =
            format!("name = \"{name}\"\npool = \"{pool}\"\ncpus = 4\nmemory = \"8GiB\"\n{}", gpu_tables.join("\n"));
        let config_path = self.root.path().join(format!("agent-{name}.toml"));
        std::fs::write(&config_path, config).unwrap();
        let token = self.join_token_file(name);
        let child = Command::new(ferry_bin())
            .args(["agent", "--server", &self.url(), "--data-dir"])
            .arg(&dir)
            .arg("--token-file")
            .arg(token)
            .arg("--config")
            .arg(&config_path)
            .stdout(self.log("agent.log"))
            .stderr(self.log("agent.log"))
            .spawn()
            .unwrap();
        self.extra_agents.push((child, dir));
        self.wait_for(&format!("node {name} to be ready"), |f| {
            f.json(&["nodes", "--json"])["nodes"]
                .as_array()
                .is_some_and(|n| n.iter().any(|n| n["name"] == name && n["state"] == "ready"))
        });
    }

    /// Kills the server with SIGKILL: no chance to clean up, as in a crash.
    pub fn kill_server(&mut self) {
        let mut child = self.server.take().expect("server running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// The agent's process id, to pause it (SIGSTOP) and resume it.
    pub fn agent_pid(&self) -> u32 {
        self.agent.as_ref().expect("agent running").id()
    }

    pub fn kill_agent(&mut self) {
        let mut child = self.agent.take().expect("agent running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Runs the CLI in the test's work directory against this server.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_in(&self.workdir(), args)
    }

    /// Runs the CLI in `dir`. Most tests' jobs read and write files in the test's own folder, so `ferry run` is given
    /// `--workdir` that folder unless the test says itself where the job runs; tests of code shipping use
    /// `cli_shipping_in`, which adds nothing.
    pub fn cli_in(&self, dir: &Path, args: &[&str]) -> Output {
        let flags = args.iter().take_while(|a| **a != "--");
        let chooses = flags.into_iter().any(|a| *a == "--workdir" || *a == "--no-code");
        if args.first() == Some(&"run") && !chooses {
            let workdir = dir.canonicalize().unwrap().display().to_string();
            let mut all = vec!["run", "--workdir", workdir.as_str()];
            all.extend_from_slice(&args[1..]);
            return self.cli_shipping_in(dir, &all);
        }
        self.cli_shipping_in(dir, args)
    }

    /// Runs the CLI in `dir` with exactly these arguments: `ferry run` ships `dir`.
    pub fn cli_shipping_in(&self, dir: &Path, args: &[&str]) -> Output {
        Command::new(ferry_bin())
            .args(args)
            .current_dir(dir)
            .env("FERRY_HOME", self.home())
            .env("FERRY_SERVER", self.url())
            .env_remove("FERRY_TOKEN")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Runs the CLI in the test's work directory as the holder of `token` (the admin's when `None`), with `input` on
    /// its standard input, and exactly these arguments.
    pub fn cli_as(&self, token: Option<&str>, args: &[&str], input: &str) -> Output {
        use std::io::Write;
        let mut command = Command::new(ferry_bin());
        command.args(args).current_dir(self.workdir()).env("FERRY_HOME", self.home()).env("FERRY_SERVER", self.url());
        match token {
            Some(token) => command.env("FERRY_TOKEN", token),
            None => command.env_remove("FERRY_TOKEN"),
        };
        let mut child = command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    }

    /// A personal token of `user` with `scope`, made with the admin's.
    pub fn token_for(&self, user: &str, scope: &str) -> String {
        self.ok(&["token", "create", "--for", user, "--scope", scope, "--name", "test"]).trim().to_string()
    }

    /// Runs the CLI and returns its stdout, failing the test with both streams if it did not succeed.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(out.status.success(), "ferry {args:?} failed: {}\n{}", stderr(&out), self.logs_for_failure());
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let out = self.cli(args);
        if !out.status.success() {
            return Value::Null;
        }
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    /// Submits a job and returns its id.
    pub fn submit(&self, args: &[&str]) -> u64 {
        let mut all = vec!["run"];
        all.extend_from_slice(args);
        self.ok(&all).trim().parse().unwrap()
    }

    pub fn job(&self, id: u64) -> Value {
        self.json(&["show", &id.to_string(), "--json"])
    }

    pub fn state(&self, id: u64) -> String {
        self.job(id)["state"].as_str().unwrap_or("?").to_string()
    }

    pub fn wait_state(&self, id: u64, state: &str) -> Value {
        self.wait_for(&format!("job {id} to be {state}"), |f| f.state(id) == state);
        self.job(id)
    }

    pub fn wait_for(&self, what: &str, mut condition: impl FnMut(&Ferry) -> bool) {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if condition(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("timed out waiting for {what}\n{}", self.logs_for_failure());
    }

    pub fn logs_for_failure(&self) -> String {
        let read = |n: &str| std::fs::read_to_string(self.root.path().join(n)).unwrap_or_default();
        format!("--- server.log\n{}\n--- agent.log\n{}", tail(&read("server.log")), tail(&read("agent.log")))
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// `ferry server` started with this configuration file's text in a fresh data directory, run until it stops (as
/// a server refusing its configuration does at once).
pub fn server_with_config(text: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.toml");
    std::fs::write(&config, text).unwrap();
    Command::new(ferry_bin())
        .args(["server", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .env("FERRY_HOME", dir.path().join("home"))
        .output()
        .unwrap()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

impl Drop for Ferry {
    fn drop(&mut self) {
        // Stop every run this test started, so no process outlives it: cancel through the API while the server is
        // up, then kill whatever supervisor is left.
        if self.server.is_some() {
            let running = self.json(&["ps", "--json"]);
            for job in running["jobs"].as_array().into_iter().flatten() {
                let _ = self.cli(&["cancel", &job["id"].to_string()]);
            }
        }
        for (mut child, dir) in self.extra_agents.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
            kill_runs(&dir);
        }
        for child in [self.agent.take(), self.server.take()].into_iter().flatten() {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
        kill_runs(&self.agent_dir());
    }
}

/// Kills the process group of every run under an agent directory.
fn kill_runs(agent_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(agent_dir.join("runs")) else { return };
    for entry in entries.flatten() {
        if let Ok(text) = std::fs::read_to_string(entry.path().join("started.json")) {
            if let Some(pid) = serde_json::from_str::<Value>(&text).ok().and_then(|v| v["pid"].as_i64()) {
                let _ =
                    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

/// Samples in the agent's spool that the server has not acknowledged: the end of the newest segment (its first
/// sample's number, from its name, plus its lines) less the cursor. `None` before the spool has any segment.
pub fn spool_pending(agent_dir: &Path) -> Option<u64> {
    let dir = agent_dir.join("telemetry");
    let end = std::fs::read_dir(&dir)
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let first: u64 = entry.file_name().to_str()?.strip_suffix(".jsonl")?.parse().ok()?;
            let lines = std::fs::read(entry.path()).ok()?.iter().filter(|b| **b == b'\n').count() as u64;
            Some(first + lines)
        })
        .max()?;
    let cursor = std::fs::read_to_string(dir.join("cursor")).unwrap_or_default();
    let acknowledged: u64 = cursor.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0);
    Some(end.saturating_sub(acknowledged))
}

/// Compiles the stand-in for NVIDIA's `libnvidia-ml.so` (`tests/fake_nvml/fakenvml.c`: two "Fake H100 80GB" GPUs, busy
/// 87% and 13%, 20 GiB used each) into `dir` with `cc`, passing `defines` (such as `-DFAKE_GPU1_PERCENT=5`), and
/// returns the library's path, named `libnvidia-ml.so.1` as the driver's is.
pub fn build_fake_nvml(dir: &Path, defines: &[&str]) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fake_nvml/fakenvml.c");
    let library = dir.join("libnvidia-ml.so.1");
    let out = Command::new("cc")
        .args(["-shared", "-fPIC"])
        .args(defines)
        .arg("-o")
        .arg(&library)
        .arg(&source)
        .output()
        .expect("a C compiler named `cc` (scripts/test installs one)");
    assert!(out.status.success(), "cc could not build the stand-in NVML library: {}", stderr(&out));
    library
}

/// The host's id of a live process one of whose arguments is exactly `arg`. Jobs run in a process namespace of
/// their own, so the ids they see of themselves (`$$`) mean nothing on the host: tests find them by an argument.
pub fn process_with_arg(arg: &str) -> Option<i32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let zombie = std::fs::read_to_string(entry.path().join("stat"))
            .is_ok_and(|s| s.rsplit(')').next().and_then(|r| r.split_whitespace().next()) == Some("Z"));
        if !zombie && cmdline.split(|b| *b == 0).any(|a| a == arg.as_bytes()) {
            return Some(pid);
        }
    }
    None
}
