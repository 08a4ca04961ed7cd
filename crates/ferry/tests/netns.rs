//! Ferry across hosts: the server and each agent on a host of its own, made of a network namespace, so that
//! registration, gangs and network partitions go over a real network stack instead of loopback.
//!
//! Each test builds its own small network: a "switch" namespace holding a bridge, one namespace per host (a UTS
//! namespace too for agents, so each has its own hostname), each host linked to the bridge by a veth pair, and
//! addresses in a private /24. Nothing is created in the root namespace: each veth pair is born with its ends
//! already in the host's and the switch's namespace. A partition is the host's port on the switch set down. Drop
//! kills every process in the namespaces and deletes them, also when the test fails.
//!
//! These tests need root (CAP_NET_ADMIN and CAP_SYS_ADMIN), iproute2's `ip` and util-linux's `unshare`; without them
//! they fail and say what is missing. Waiting is done by polling a condition with a deadline, never by sleeping.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::netns::{Host, Network, NEEDS};
use common::{ferry_bin, spool_pending, stderr, WAIT};
use serde_json::Value;

/// The port the server listens on in its own namespace, which no other test can reach, so it may be fixed.
const SERVER_PORT: u16 = 7750;
/// The last byte of the server host's address; agent hosts take the bytes from `AGENT_HOST_FIRST` on.
const SERVER_HOST: u8 = 1;
const AGENT_HOST_FIRST: u8 = 11;
/// How often a condition is looked at again.
const POLL: Duration = Duration::from_millis(100);
/// How many lines of each log a failure shows.
const LOG_TAIL_LINES: usize = 40;

/// An agent host: its node's name is its hostname.
struct Agent {
    name: String,
    host: Host,
    dir: PathBuf,
    child: Option<Child>,
}

/// A server host and agent hosts on one network, with the CLI run on the server's host.
struct Cluster {
    server_host: Host,
    server: Option<Child>,
    agents: Vec<Agent>,
    /// Dropped after the processes are gone (field order), so nothing writes into a deleted folder.
    net: Network,
    root: tempfile::TempDir,
}

impl Cluster {
    /// A server with `node_timeout` and one agent host per name (`a` becomes host `host-a` with label `host=a`), each
    /// with 2 declared GPUs and `agent_env` in its environment, all ready.
    fn start(node_timeout: &str, agents: &[&str], agent_env: &[(&str, &str)]) -> Cluster {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("work")).unwrap();
        let mut net = Network::new();
        let server_host = net.add_host("srv", SERVER_HOST);
        let hosts: Vec<Host> =
            agents.iter().zip(AGENT_HOST_FIRST..).map(|(name, byte)| net.add_host(name, byte)).collect();
        let mut cluster = Cluster { server_host, server: None, agents: Vec::new(), net, root };
        cluster.start_server(node_timeout);
        let token =
            cluster.ok(&["token", "create", "--agent", "--node", "host-*", "--name", "netns-test"]).trim().to_string();
        for (name, host) in agents.iter().zip(hosts) {
            cluster.start_agent(name, host, &token, agent_env);
        }
        cluster.wait_for("every node to be ready", |c| {
            c.nodes().iter().filter(|n| n["state"] == "ready").count() == agents.len()
        });
        cluster
    }

    fn url(&self) -> String {
        format!("http://{}:{SERVER_PORT}", self.server_host.ip)
    }

    fn home(&self) -> PathBuf {
        self.root.path().join("home")
    }

    fn workdir(&self) -> PathBuf {
        self.root.path().join("work")
    }

    fn log(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new().create(true).append(true).open(self.root.path().join(name)).unwrap()
    }

    fn start_server(&mut self, node_timeout: &str) {
        let listen = format!("{}:{SERVER_PORT}", self.server_host.ip);
        let child = Command::new("ip")
            .args(["netns", "exec", &self.server_host.ns, ferry_bin()])
            // The hosts' bridge is the test's own network: plain HTTP there is the operator's choice to make.
            .args(["server", "--listen", &listen, "--insecure-http", "--node-timeout", node_timeout])
            .env("FERRY_HOME", self.home())
            .stdin(Stdio::null())
            .stdout(self.log("server.log"))
            .stderr(self.log("server.log"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the server with `ip netns exec`: {e}\n{NEEDS}"));
        self.server = Some(child);
        self.wait_for("the server to answer", |c| {
            c.home().join("admin.token").exists() && c.cli(&["ps"]).status.success()
        });
    }

    /// Starts `ferry agent` on `host` with a hostname of its own (through a UTS namespace), so the node is named as
    /// a real machine would be, and with its own address as the one other nodes reach it at.
    fn start_agent(&mut self, name: &str, host: Host, token: &str, env: &[(&str, &str)]) {
        let hostname = format!("host-{name}");
        let dir = self.root.path().join(format!("agent-{name}"));
        let gpus = (0..2).map(|i| format!("[[gpus]]\nindex = {i}\nmodel = \"Test GPU\"\nmemory = \"16GiB\"\n"));
        let config = format!(
            "address = \"{}\"\ncpus = 4\nmemory = \"8GiB\"\nlabels = {{ host = \"{name}\" }}\n{}",
            host.ip,
            gpus.collect::<Vec<_>>().join("\n")
        );
        let config_path = self.root.path().join(format!("agent-{name}.toml"));
        std::fs::write(&config_path, config).unwrap();
        // `ip netns exec`, `unshare` and `sh -c 'exec'` each replace themselves, so the child's PID is the agent's.
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &host.ns, "unshare", "--uts", "sh", "-c", r#"hostname "$0" && exec "$@""#])
            .arg(&hostname)
            .args([ferry_bin(), "agent", "--server", &self.url(), "--data-dir"])
            .arg(&dir)
            .arg("--config")
            .arg(&config_path)
            .env("FERRY_JOIN_TOKEN", token)
            .stdin(Stdio::null())
            .stdout(self.log(&format!("agent-{name}.log")))
            .stderr(self.log(&format!("agent-{name}.log")));
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().unwrap_or_else(|e| panic!("cannot start agent {name}: {e}\n{NEEDS}"));
        self.agents.push(Agent { name: hostname, host, dir, child: Some(child) });
    }

    fn agent(&self, node: &str) -> &Agent {
        self.agents.iter().find(|a| a.name == node).unwrap_or_else(|| panic!("no agent host is named {node}"))
    }

    /// Runs the CLI on the server's host, in the test's work folder; `ferry run` runs jobs in that folder (which
    /// every host sees: namespaces share the file system) unless the arguments say otherwise.
    fn cli(&self, args: &[&str]) -> Output {
        let workdir = self.workdir().display().to_string();
        let mut all: Vec<&str> = args.to_vec();
        if args.first() == Some(&"run") && !args.iter().take_while(|a| **a != "--").any(|a| *a == "--workdir") {
            all.splice(1..1, ["--workdir", workdir.as_str()]);
        }
        Command::new("ip")
            .args(["netns", "exec", &self.server_host.ns, ferry_bin()])
            .args(&all)
            .current_dir(self.workdir())
            .env("FERRY_HOME", self.home())
            .env("FERRY_SERVER", self.url())
            .env_remove("FERRY_TOKEN")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(out.status.success(), "ferry {args:?} failed: {}\n{}", stderr(&out), self.logs_for_failure());
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.cli(args);
        if !out.status.success() {
            return Value::Null;
        }
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    fn submit(&self, args: &[&str]) -> u64 {
        let mut all = vec!["run"];
        all.extend_from_slice(args);
        self.ok(&all).trim().parse().unwrap()
    }

    fn job(&self, id: u64) -> Value {
        self.json(&["show", &id.to_string(), "--json"])
    }

    fn wait_state(&self, id: u64, state: &str) -> Value {
        self.wait_for(&format!("job {id} to be {state}"), |c| c.job(id)["state"] == state);
        self.job(id)
    }

    fn nodes(&self) -> Vec<Value> {
        self.json(&["nodes", "--json"])["nodes"].as_array().cloned().unwrap_or_default()
    }

    fn node_state(&self, name: &str) -> String {
        let nodes = self.nodes();
        let node = nodes.iter().find(|n| n["name"] == name);
        node.and_then(|n| n["state"].as_str()).unwrap_or("?").to_string()
    }

    fn logs(&self, id: u64) -> String {
        self.ok(&["logs", &id.to_string()])
    }

    fn wait_for(&self, what: &str, mut condition: impl FnMut(&Cluster) -> bool) {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if condition(self) {
                return;
            }
            std::thread::sleep(POLL);
        }
        panic!("timed out waiting for {what}\n{}", self.logs_for_failure());
    }

    fn logs_for_failure(&self) -> String {
        let mut names = vec!["server.log".to_string()];
        names.extend(self.agents.iter().map(|a| format!("agent-{}.log", a.name.trim_start_matches("host-"))));
        let tails: Vec<String> = names
            .iter()
            .map(|name| {
                let text = std::fs::read_to_string(self.root.path().join(name)).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                format!("--- {name}\n{}", lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n"))
            })
            .collect();
        tails.join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The processes this test started are killed and reaped here; whatever they started (supervisors, jobs) is
        // killed with the namespaces when the network is dropped next.
        let children = self.agents.iter_mut().filter_map(|a| a.child.take()).chain(self.server.take());
        for mut child in children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A run's output as its node holds it on disk, before or without shipping.
fn local_output(agent: &Agent, job: u64, attempt: u32) -> String {
    std::fs::read_to_string(agent.dir.join("runs").join(format!("{job}-{attempt}")).join("output.log"))
        .unwrap_or_default()
}

/// Whether a process is gone for good (a zombie counts: it will never run again).
fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().next()) == Some("Z"),
        Err(_) => true,
    }
}

fn timeline(job: &Value) -> Vec<String> {
    job["timeline"].as_array().unwrap().iter().map(|e| e["message"].as_str().unwrap().to_string()).collect()
}

#[test]
fn agents_on_separate_hosts_register_and_run_jobs() {
    let c = Cluster::start("30s", &["a", "b"], &[]);
    // The server listens on its host's address only, not on every address.
    let listening = Command::new("ip").args(["netns", "exec", &c.server_host.ns, "ss", "-Hltn"]).output().unwrap();
    let listening = String::from_utf8_lossy(&listening.stdout);
    assert!(listening.contains(&format!("{}:{SERVER_PORT}", c.server_host.ip)), "{listening}");
    assert!(!listening.contains(&format!("0.0.0.0:{SERVER_PORT}")), "{listening}");
    // Each node registered under its own hostname, with its labels, and is ready.
    let nodes = c.nodes();
    let mut seen: Vec<(String, String, String)> = nodes
        .iter()
        .map(|n| (n["name"].as_str().unwrap().into(), n["state"].as_str().unwrap().into(), n["labels"].to_string()))
        .collect();
    seen.sort();
    let expected = [("host-a", "ready", r#"{"host":"a"}"#), ("host-b", "ready", r#"{"host":"b"}"#)];
    assert_eq!(seen, expected.map(|(n, s, l)| (n.to_string(), s.to_string(), l.to_string())));
    let table = c.ok(&["nodes"]);
    for name in ["host-a", "host-b"] {
        assert!(table.lines().any(|l| l.starts_with(name) && l.contains(" ready ")), "{table}");
    }
    // Two jobs that each take a whole node, held until the gate opens: both must run at once, one on each host.
    let gate = c.workdir().join("gate");
    let script = format!(
        "echo job $FERRY_JOB_ID on $(hostname) at $(hostname -I); while [ ! -e {} ]; do sleep 0.05; done",
        gate.display()
    );
    let ids = [0, 1].map(|_| c.submit(&["--gpus", "2", "--cpus", "0.1", "--", "sh", "-c", &script]));
    for id in ids {
        c.wait_state(id, "running");
    }
    let mut placed: Vec<String> = ids.iter().map(|id| c.job(*id)["node"].as_str().unwrap().to_string()).collect();
    placed.sort();
    assert_eq!(placed, ["host-a", "host-b"]);
    std::fs::write(&gate, "").unwrap();
    for id in ids {
        let job = c.wait_state(id, "succeeded");
        let node = job["node"].as_str().unwrap();
        // The output came back over the network from the host the job ran on, with that host's address.
        assert_eq!(c.logs(id), format!("job {id} on {node} at {}\n", c.agent(node).host.ip), "{job}");
    }
}

/// Rank 0 listens on MASTER_ADDR:MASTER_PORT, which it can bind only if that is its own host's address; rank 1
/// connects from another host and says hello, and rank 0 reports the address the connection came from.
const RENDEZVOUS: &str = r#"
import os, socket, time
rank = int(os.environ["FERRY_NODE_RANK"])
addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
host = socket.gethostname()
print(f"rank {rank} on {host} MASTER_ADDR={addr}", flush=True)
if rank == 0:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(1)
    s.settimeout(60)
    conn, (peer, _) = s.accept()
    print(f"rank 0 heard from {peer}: {conn.recv(100).decode()}")
else:
    deadline = time.time() + 60
    while True:
        try:
            conn = socket.create_connection((addr, port), timeout=5)
            break
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.05)
    conn.sendall(f"hello from {host}".encode())
    print(f"rank 1 connected from {conn.getsockname()[0]}")
"#;

#[test]
fn a_gang_spans_hosts_and_rank_one_reaches_rank_zero_over_the_network() {
    let c = Cluster::start("30s", &["a", "b"], &[]);
    std::fs::write(c.workdir().join("rendezvous.py"), RENDEZVOUS).unwrap();
    let id = c.submit(&["--nodes", "2", "--gpus", "1", "--cpus", "0.1", "--", "python3", "rendezvous.py"]);
    let job = c.wait_state(id, "succeeded");
    let workers = job["workers"].as_array().unwrap();
    let node_of = |rank: usize| workers[rank]["node"].as_str().unwrap().to_string();
    let (rank0, rank1) = (c.agent(&node_of(0)), c.agent(&node_of(1)));
    assert_ne!(rank0.name, rank1.name, "{job}");
    let (ip0, ip1) = (&rank0.host.ip, &rank1.host.ip);
    assert_eq!(
        c.logs(id),
        format!("rank 0 on {} MASTER_ADDR={ip0}\nrank 0 heard from {ip1}: hello from {}\n", rank0.name, rank1.name),
        "{job}"
    );
    assert_eq!(
        c.ok(&["logs", &id.to_string(), "--rank", "1"]),
        format!("rank 1 on {} MASTER_ADDR={ip0}\nrank 1 connected from {ip1}\n", rank1.name),
        "{job}"
    );
}

/// How many numbered lines the partition tests' job prints, one every `LINE_INTERVAL_S`.
const LINES: u32 = 100;
const LINE_INTERVAL_S: &str = "0.2";
/// How many lines the job prints on its host while the host is cut off: at 0.2 s a line, about 8 s, which is many
/// report intervals (0.5 s) and well inside the node timeout of 30 s.
const LINES_DURING_PARTITION: usize = 40;

#[test]
fn a_partition_shorter_than_the_node_timeout_loses_nothing() {
    let c = Cluster::start("30s", &["a", "b"], &[]);
    let script = format!("for i in $(seq 1 {LINES}); do echo line $i; sleep {LINE_INTERVAL_S}; done");
    let id = c.submit(&["--selector", "host=a", "--cpus", "0.1", "--", "sh", "-c", &script]);
    c.wait_for("the first lines to reach the server", |c| c.logs(id).lines().count() >= 5);
    let a = c.agent("host-a");
    c.net.cut(&a.host);
    // The job goes on printing into its node's disk; nothing of that reaches the server while the host is cut off.
    let local_lines = || local_output(a, id, 0).lines().count();
    let at_cut = local_lines();
    c.wait_for("the job to print on while cut off", |_| local_lines() >= at_cut + 2);
    let shipped_early = c.logs(id);
    c.wait_for("the partition to last", |_| local_lines() >= at_cut + LINES_DURING_PARTITION);
    assert_eq!(c.logs(id), shipped_early, "output arrived from a host that is cut off");
    assert_eq!(c.node_state("host-a"), "ready", "the partition is shorter than the node timeout");
    // The node's telemetry waits in its agent's spool meanwhile, and goes out once the link is back.
    c.wait_for("samples to wait in the cut-off agent's spool", |_| spool_pending(&a.dir).is_some_and(|p| p >= 5));
    c.net.restore(&a.host);
    c.wait_for("the spool to drain after the partition", |_| spool_pending(&a.dir).is_some_and(|p| p <= 2));
    let job = c.wait_state(id, "succeeded");
    let expected: String = (1..=LINES).map(|i| format!("line {i}\n")).collect();
    assert_eq!(c.logs(id), expected, "every line once and in order");
    assert_eq!(job["attempt"], 0, "the job ran once: {job}");
    assert_eq!(job["node"], "host-a", "{job}");
    assert!(!timeline(&job).iter().any(|m| m.contains("stopped reporting")), "{job}");
}

#[test]
fn a_partition_past_the_node_timeout_requeues_and_the_returning_agent_stops_its_copy() {
    let c = Cluster::start("5s", &["a", "b"], &[]);
    // Each attempt records its process id, says where it runs, and waits for a gate of its own, so the first copy
    // can only end by being stopped.
    let script = "echo attempt $FERRY_ATTEMPT on $(hostname); \
                  exec sh -c 'while [ ! -e gate-$FERRY_ATTEMPT ]; do sleep 0.05; done' attempt-marker-$FERRY_ATTEMPT";
    let id = c.submit(&["--retries", "1", "--gpus", "2", "--cpus", "0.1", "--", "sh", "-c", script]);
    let job = c.wait_state(id, "running");
    let first = c.agent(job["node"].as_str().unwrap());
    let other = c.agents.iter().find(|a| a.name != first.name).unwrap();
    // Found on the host by its argument: ids inside the job's process namespace differ.
    c.wait_for("attempt 0 to start", |_| common::process_with_arg("attempt-marker-0").is_some());
    let first_pid = common::process_with_arg("attempt-marker-0").unwrap();

    c.net.cut(&first.host);
    c.wait_for("the cut-off node to be marked not ready", |c| c.node_state(&first.name) == "not_ready");
    c.wait_for("the job to start again on the other node", |c| {
        let job = c.job(id);
        job["attempt"] == 1 && job["state"] == "running" && job["node"] == other.name.as_str()
    });
    // The first copy still runs on its host, which cannot hear the server.
    assert!(!process_gone(first_pid), "attempt 0 was stopped while its host was cut off");

    c.net.restore(&first.host);
    c.wait_for("the returning node to be ready", |c| c.node_state(&first.name) == "ready");
    std::fs::write(c.workdir().join("gate-1"), "").unwrap();
    let job = c.wait_state(id, "succeeded");
    assert_eq!((job["attempt"].as_u64(), job["node"].as_str()), (Some(1), Some(other.name.as_str())), "{job}");
    assert_eq!(c.logs(id), format!("attempt 1 on {}\n", other.name), "{job}");
    // From the server's point of view the job never ran twice at once: the first attempt was given up before the
    // second started, and nothing after that says it ran on the returning node again.
    let events = timeline(&job);
    let lost = events.iter().position(|m| m.contains("stopped reporting")).expect("the loss is recorded");
    let restarted = events.iter().rposition(|m| m.contains(&format!("on node {}", other.name)));
    assert!(restarted.is_some_and(|at| at > lost), "{events:?}");
    assert!(!events[lost..].iter().any(|m| m.contains(&format!("on node {}", first.name))), "{events:?}");
    // The returning agent is told to stop the copy the server gave up on.
    c.wait_for("the returning agent to stop its stale copy of attempt 0", |_| process_gone(first_pid));
}

#[test]
fn output_past_the_nodes_limit_is_cut_on_its_disk_during_a_partition_and_arrives_cut() {
    const LIMIT_BYTES: usize = 64 << 10;
    let c = Cluster::start("30s", &["a"], &[("FERRY_RUN_OUTPUT_BYTES_MAX", "64KiB")]);
    let gate = c.workdir().join("gate");
    // Once the gate opens the job prints a megabyte, far past the limit and more than a pipe holds, then ends.
    let script = format!(
        "echo ready; while [ ! -e {} ]; do sleep 0.05; done; head -c 1000000 /dev/zero | tr '\\0' x; echo; echo end",
        gate.display()
    );
    let id = c.submit(&["--cpus", "0.1", "--", "sh", "-c", &script]);
    c.wait_for("the job to start", |c| c.logs(id) == "ready\n");
    let a = c.agent("host-a");
    c.net.cut(&a.host);
    std::fs::write(&gate, "").unwrap();
    // The job ends while its host is cut off: the limit kept the node's copy small and the job never blocked.
    let exit = a.dir.join("runs").join(format!("{id}-0")).join("exit.json");
    c.wait_for("the job to end on its host", |_| exit.exists());
    let local = local_output(a, id, 0);
    c.net.restore(&a.host);
    let job = c.wait_state(id, "succeeded");
    let (kept, notice) = local.split_at(LIMIT_BYTES);
    assert_eq!(kept, format!("ready\n{}", "x".repeat(LIMIT_BYTES - 6)));
    assert!(notice.starts_with("\nferry: output cut at 65536 bytes (64KiB): "), "{notice}");
    assert_eq!(notice.lines().count(), 2, "{notice}");
    assert_eq!(c.logs(id), local, "the server got what the node kept: {job}");
}
