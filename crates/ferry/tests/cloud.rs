//! Cloud bursting end to end: a real server whose elastic pool rents machines from EC2 (moto's EC2 server, behind
//! `scripts/moto/hypervisor.py`), and cloud machines that boot for real. The harness plays the cloud's hypervisor:
//! for each instance moto says was launched it makes a host (a network namespace) and runs the instance's user data
//! there, which starts `ferry agent` with the machine's join token; for each instance that ends it kills everything
//! on that host.
//!
//! The server, moto and the hypervisor share one host; the local pool's agent and each cloud machine are hosts of
//! their own on the test's network (see `common::netns`). These tests need root, `ip`, and moto
//! (`scripts/moto/install.sh`); without them they fail and say what is missing. Waiting is done by polling a condition
//! with a deadline, never by sleeping.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::netns::{kill_everything_in, Host, Network, NEEDS};
use common::{ferry_bin, stderr, WAIT};
use serde_json::{json, Value};

const SERVER_PORT: u16 = 7750;
const POLL: Duration = Duration::from_millis(200);
const LOG_TAIL_LINES: usize = 80;

fn root_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn venv() -> PathBuf {
    std::env::var_os("FERRY_MOTO_VENV").map_or_else(|| root_dir().join("target/engines/moto-venv"), PathBuf::from)
}

/// A cloud machine the harness booted: its node, its host, and whether it is still up.
struct Machine {
    node: String,
    zone: String,
    host: Host,
    up: bool,
    /// Its boot (the user data's shell, which became its agent), reaped when the machine ends.
    boot: Option<Child>,
    /// Its user data, as the cloud would serve it to anything on the machine that asks.
    user_data: String,
}

/// The cloud and the installation: moto, the hypervisor, the server, the local pool's agent, and the machines.
struct Cloud {
    srv: Host,
    server: Option<Child>,
    local: Option<Child>,
    hypervisor: Option<Child>,
    commands: Option<ChildStdin>,
    events: mpsc::Receiver<Value>,
    answers: mpsc::Receiver<Value>,
    proxy: String,
    /// Instances the hypervisor reported, by id.
    machines: BTreeMap<String, Machine>,
    /// Pools whose machines never boot (their launch succeeds, their agent never starts).
    dead_pools: BTreeSet<String>,
    next_byte: u8,
    config: String,
    aws_key: String,
    net: Network,
    root: tempfile::TempDir,
}

impl Cloud {
    /// Moto and the hypervisor on the server's host, the local agent (2 CPUs) on its own. `config` is the server's
    /// configuration after its top-level keys, with `{proxy}` for the EC2 endpoint; the server is not started yet.
    fn new(config: &str) -> Cloud {
        assert!(
            venv().join("bin/moto_server").exists(),
            "moto is not installed in {}: run scripts/moto/install.sh first",
            venv().display()
        );
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("work")).unwrap();
        let mut net = Network::new();
        let srv = net.add_host("srv", 1);
        // moto, on the server host's loopback: the cloud's API as the server sees it.
        let moto_run = root.path().join("moto");
        let out = Command::new("ip")
            .args(["netns", "exec", &srv.ns])
            .arg(root_dir().join("scripts/moto/start.sh"))
            .arg(&moto_run)
            .output()
            .unwrap_or_else(|e| panic!("cannot start moto with `ip netns exec`: {e}\n{NEEDS}"));
        assert!(out.status.success(), "moto did not start: {}", stderr(&out));
        let moto = String::from_utf8(out.stdout).unwrap().lines().last().unwrap().trim().to_string();
        let mut hypervisor = Command::new("ip")
            .args(["netns", "exec", &srv.ns])
            .arg(venv().join("bin/python3"))
            .arg(root_dir().join("scripts/moto/hypervisor.py"))
            .args(["--moto", &moto, "--client-token-idempotency"])
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log_file(root.path(), "hypervisor.log"))
            .spawn()
            .unwrap();
        let commands = hypervisor.stdin.take();
        let stdout = hypervisor.stdout.take().unwrap();
        let (event_tx, events) = mpsc::channel();
        let (answer_tx, answers) = mpsc::channel();
        let (ready_tx, ready) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let Ok(event) = serde_json::from_str::<Value>(&line) else { continue };
                let _ = match event["event"].as_str() {
                    Some("ready") => ready_tx.send(event),
                    Some("launched" | "terminated") => event_tx.send(event),
                    _ => answer_tx.send(event),
                };
            }
        });
        let ready = ready.recv_timeout(WAIT).expect("the hypervisor did not start (see hypervisor.log)");
        let proxy = ready["proxy"].as_str().unwrap().to_string();
        let mut cloud = Cloud {
            srv,
            server: None,
            local: None,
            hypervisor: Some(hypervisor),
            commands,
            events,
            answers,
            proxy,
            machines: BTreeMap::new(),
            dead_pools: BTreeSet::new(),
            next_byte: 20,
            config: String::new(),
            aws_key: "testing".into(),
            net,
            root,
        };
        cloud.config = format!(
            "public_url = \"{}\"\ncloud_reconcile = \"1s\"\n[[pool]]\nname = \"local\"\norder = 0\n\n{}",
            cloud.url(),
            config.replace("{proxy}", &cloud.proxy)
        );
        std::fs::write(cloud.root.path().join("server.toml"), &cloud.config).unwrap();
        cloud
    }

    fn url(&self) -> String {
        format!("http://{}:{SERVER_PORT}", self.srv.ip)
    }

    fn home(&self) -> PathBuf {
        self.root.path().join("home")
    }

    fn log(&self, name: &str) -> std::fs::File {
        log_file(self.root.path(), name)
    }

    fn start_server(&mut self) {
        let listen = format!("{}:{SERVER_PORT}", self.srv.ip);
        let child = Command::new("ip")
            .args(["netns", "exec", &self.srv.ns, ferry_bin()])
            .args(["server", "--listen", &listen, "--insecure-http", "--node-timeout", "5s", "--config"])
            .arg(self.root.path().join("server.toml"))
            .env("FERRY_HOME", self.home())
            .env("AWS_ACCESS_KEY_ID", &self.aws_key)
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env_remove("AWS_PROFILE")
            .env("HOME", self.root.path())
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

    /// Kills the server at once, as a crash would.
    fn kill_server(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
    }

    /// The local pool's agent, on a host of its own, offering 2 CPUs.
    fn start_local_agent(&mut self) {
        let host = self.net.add_host("local", 11);
        let token = self.ok(&["token", "create", "--agent", "--node", "local-1", "--name", "local"]).trim().to_string();
        let config = self.root.path().join("local.toml");
        std::fs::write(
            &config,
            format!("name = \"local-1\"\npool = \"local\"\ncpus = 2\nmemory = \"4GiB\"\naddress = \"{}\"\n", host.ip),
        )
        .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &host.ns, "unshare", "--uts", "sh", "-c", r#"hostname local-1 && exec "$@""#, "-"])
            .args([ferry_bin(), "agent", "--server", &self.url(), "--data-dir"])
            .arg(self.root.path().join("agent-local"))
            .arg("--config")
            .arg(&config)
            .env("FERRY_JOIN_TOKEN", token)
            .stdin(Stdio::null())
            .stdout(self.log("agent-local.log"))
            .stderr(self.log("agent-local.log"))
            .spawn()
            .unwrap();
        self.local = Some(child);
        self.wait_for("the local node to be ready", |c| c.node_state("local-1") == "ready");
    }

    /// Sends the hypervisor a command and returns its answer.
    fn hypervisor(&mut self, command: Value) -> Value {
        let stdin = self.commands.as_mut().unwrap();
        writeln!(stdin, "{command}").unwrap();
        stdin.flush().unwrap();
        let answer = self.answers.recv_timeout(WAIT).expect("the hypervisor did not answer");
        assert_ne!(answer["event"], "error", "{command}: {answer}");
        answer
    }

    /// RunInstances calls the cloud received (refused ones included).
    fn launches(&mut self) -> u64 {
        self.hypervisor(json!({"cmd": "calls"}))["counts"]["RunInstances"].as_u64().unwrap_or(0)
    }

    /// The installation's instances in moto that are not terminated.
    fn running_instances(&mut self) -> Vec<Value> {
        let all = self.hypervisor(json!({"cmd": "instances"}))["instances"].as_array().cloned().unwrap_or_default();
        all.into_iter().filter(|i| !matches!(i["state"].as_str(), Some("terminated" | "shutting-down"))).collect()
    }

    /// Plays the hypervisor: boots what was launched (running its user data on a new host) and shuts down what ended.
    fn pump(&mut self) {
        while let Ok(event) = self.events.try_recv() {
            let id = event["id"].as_str().unwrap().to_string();
            match event["event"].as_str() {
                Some("launched") => {
                    let node = event["node"].as_str().unwrap().to_string();
                    let pool = event["pool"].as_str().unwrap().to_string();
                    let host = self.net.add_host(&format!("m{}", self.next_byte), self.next_byte);
                    self.next_byte += 1;
                    let up = !self.dead_pools.contains(&pool);
                    let user_data = event["user_data"].as_str().unwrap().to_string();
                    let boot = up.then(|| self.boot(&node, &host, &user_data));
                    let zone = event["zone"].as_str().unwrap_or_default().to_string();
                    self.machines.insert(id, Machine { node, zone, host, up, boot, user_data });
                }
                Some("terminated") => {
                    if let Some(machine) = self.machines.get_mut(&id) {
                        kill_everything_in(&machine.host.ns);
                        machine.up = false;
                        if let Some(mut boot) = machine.boot.take() {
                            let _ = boot.wait();
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// Runs a machine's user data on its host, as its first boot would: `ferry` is on the PATH, and each machine has
    /// a disk of its own (FERRY_HOME).
    fn boot(&self, node: &str, host: &Host, user_data: &str) -> Child {
        let bin_dir = Path::new(ferry_bin()).parent().unwrap();
        // A machine has a hostname of its own (a UTS namespace), as the node it was launched to be.
        Command::new("ip")
            .args(["netns", "exec", &host.ns, "unshare", "--uts", "sh", "-c", r#"hostname "$0" && exec sh -c "$1""#])
            .args([node, user_data])
            .env("PATH", format!("{}:/usr/bin:/bin", bin_dir.display()))
            .env("FERRY_HOME", self.root.path().join(format!("machine-{node}")))
            .env_remove("FERRY_TOKEN")
            .env_remove("FERRY_SERVER")
            .stdin(Stdio::null())
            .stdout(self.log(&format!("machine-{node}.log")))
            .stderr(self.log(&format!("machine-{node}.log")))
            .spawn()
            .unwrap()
    }

    fn cli(&self, args: &[&str]) -> Output {
        let workdir = self.root.path().join("work").display().to_string();
        let mut all: Vec<&str> = args.to_vec();
        if args.first() == Some(&"run") {
            all.splice(1..1, ["--workdir", workdir.as_str()]);
        }
        Command::new("ip")
            .args(["netns", "exec", &self.srv.ns, ferry_bin()])
            .args(&all)
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

    fn node_state(&self, name: &str) -> String {
        let nodes = self.json(&["nodes", "--json"])["nodes"].as_array().cloned().unwrap_or_default();
        let node = nodes.iter().find(|n| n["name"] == name);
        node.and_then(|n| n["state"].as_str()).unwrap_or("-").to_string()
    }

    fn node_names(&self) -> Vec<String> {
        let nodes = self.json(&["nodes", "--json"])["nodes"].as_array().cloned().unwrap_or_default();
        nodes.iter().filter_map(|n| n["name"].as_str().map(str::to_string)).collect()
    }

    /// An elastic pool as `ferry pools --json` shows it.
    fn elastic(&self, pool: &str) -> Value {
        let pools = self.json(&["pools", "--json"])["pools"].as_array().cloned().unwrap_or_default();
        pools.into_iter().find(|p| p["name"] == pool).map(|p| p["elastic"].clone()).unwrap_or(Value::Null)
    }

    /// Polls `condition`, playing the hypervisor meanwhile.
    fn wait_for(&mut self, what: &str, mut condition: impl FnMut(&mut Cloud) -> bool) {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            self.pump();
            if condition(self) {
                return;
            }
            std::thread::sleep(POLL);
        }
        panic!("timed out waiting for {what}\n{}", self.logs_for_failure());
    }

    fn wait_state(&mut self, id: u64, state: &str) -> Value {
        self.wait_for(&format!("job {id} to be {state}"), |c| c.job(id)["state"] == state);
        self.job(id)
    }

    fn logs_for_failure(&self) -> String {
        let mut names: Vec<String> = ["server.log", "hypervisor.log", "agent-local.log"].map(String::from).to_vec();
        names.extend(self.machines.values().map(|m| format!("machine-{}.log", m.node)));
        names
            .iter()
            .map(|name| {
                let text = std::fs::read_to_string(self.root.path().join(name)).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                format!("--- {name}\n{}", lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn server_log(&self) -> String {
        std::fs::read_to_string(self.root.path().join("server.log")).unwrap_or_default()
    }

    /// A job that prints where it ran, then waits for `gate` to exist.
    fn gated(&self, gate: &str, extra: &[&str]) -> u64 {
        let gate = self.root.path().join("work").join(gate);
        let script = format!(
            "echo ran on $(hostname) attempt $FERRY_ATTEMPT; while [ ! -e {} ]; do sleep 0.1; done",
            gate.display()
        );
        let mut args: Vec<&str> = vec!["--cpus", "2", "--memory", "1GiB"];
        args.extend_from_slice(extra);
        args.extend(["--", "sh", "-c", &script]);
        self.submit(&args)
    }

    /// Runs `ferry agent` on the server's host with `token` as its join token, as a job that read a machine's user
    /// data would; returns what it said when the server refused it.
    fn impostor(&self, token: &str, node: &str, pool: &str) -> String {
        let dir = self.root.path().join(format!("impostor-{node}-{pool}"));
        let out = Command::new("ip")
            .args(["netns", "exec", &self.srv.ns, "timeout", "30", ferry_bin(), "agent", "--server", &self.url()])
            .args(["--name", node, "--pool", pool, "--data-dir"])
            .arg(&dir)
            .env("FERRY_JOIN_TOKEN", token)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "the server took an impostor as node {node} of pool {pool}");
        stderr(&out)
    }

    fn open(&self, gate: &str) {
        std::fs::write(self.root.path().join("work").join(gate), "").unwrap();
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        // Closing the hypervisor's input stops it; everything else dies with the network's namespaces.
        self.commands.take();
        let boots = self.machines.values_mut().filter_map(|m| m.boot.take());
        for mut child in
            [self.server.take(), self.local.take(), self.hypervisor.take()].into_iter().flatten().chain(boots)
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn log_file(dir: &Path, name: &str) -> std::fs::File {
    std::fs::OpenOptions::new().create(true).append(true).open(dir.join(name)).unwrap()
}

/// An on-demand pool `aws` of up to 3 two-CPU machines in two zones, released after 10 s idle.
const ON_DEMAND: &str = "[[pool]]\nname = \"aws\"\norder = 10\nburst = true\nmax_nodes = 3\nstartup = \"5s\"\n\
     startup_timeout = \"60s\"\nidle_release = \"10s\"\nretry_after = \"30s\"\n[pool.cloud]\nprovider = \"aws\"\n\
     region = \"us-east-1\"\nzones = [\"us-east-1a\", \"us-east-1b\"]\ninstance_type = \"m5.large\"\n\
     image = \"ami-12c6146b\"\nendpoint = \"{proxy}\"\n";

#[test]
fn jobs_that_outgrow_the_local_pool_burst_to_cloud_machines_which_are_terminated_once_idle() {
    let mut c = Cloud::new(ON_DEMAND);
    // The first zone has no capacity: every machine comes from the second.
    c.hypervisor(json!({"cmd": "full_zones", "zones": ["us-east-1a"]}));
    c.start_server();
    c.start_local_agent();
    let ids: Vec<u64> = (0..3).map(|_| c.gated("gate", &[])).collect();
    for id in &ids {
        c.wait_state(*id, "running");
    }
    let mut nodes: Vec<String> = ids.iter().map(|id| c.job(*id)["node"].as_str().unwrap().to_string()).collect();
    nodes.sort();
    assert_eq!(nodes, ["aws-1", "aws-2", "local-1"], "one job local, two burst");
    let zones: BTreeSet<&str> = c.machines.values().map(|m| m.zone.as_str()).collect();
    assert_eq!(zones, BTreeSet::from(["us-east-1b"]), "the full zone was skipped");
    let launches = c.launches();
    assert!((3..=4).contains(&launches), "two machines, after one or two refusals in the full zone: {launches} calls");
    // `ferry show` says why the job burst and which machine it runs on.
    let burst = ids.iter().copied().find(|id| c.job(*id)["node"] == "aws-1").unwrap();
    let shown = c.ok(&["show", &burst.to_string()]);
    assert!(shown.contains("burst after waiting") && shown.contains(": local was fully allocated for it"), "{shown}");
    assert!(
        shown.contains("Cloud node:   aws-1: started ") && shown.contains("aws on-demand m5.large in us-east-1b"),
        "{shown}"
    );
    // A machine's join token, which its metadata service keeps serving, was traded for the machine's own at its first
    // start: it works no more. The machine's own token joins that node of that pool only.
    let user_data = c.machines.values().find(|m| m.node == "aws-1").unwrap().user_data.clone();
    let join = user_data.split("FERRY_JOIN_TOKEN='").nth(1).and_then(|t| t.split('\'').next()).unwrap().to_string();
    assert!(c.impostor(&join, "aws-1", "aws").contains("refused the agent"), "the join token is single-use");
    let own = std::fs::read_to_string(c.root.path().join("machine-aws-1").join("node.token")).unwrap();
    assert!(c.impostor(&own, "aws-9", "aws").contains("this join token speaks for `aws-1`, not for node `aws-9`"));
    assert!(c.impostor(&own, "aws-1", "local").contains("node `aws-1` was launched for pool `aws`"));
    let admin_token = c.ok(&["token", "create", "--agent", "--node", "sneaky", "--name", "sneaky"]).trim().to_string();
    assert!(c.impostor(&admin_token, "sneaky", "aws").contains("pool `aws` is elastic"));
    // `ferry pools` shows the pool's machines, busy, and what they cost so far.
    let e = c.elastic("aws");
    assert_eq!(
        (e["busy"].as_u64(), e["starting"].as_u64(), e["market"].as_str()),
        (Some(2), Some(0), Some("on-demand")),
        "{e}"
    );
    assert!(e["spend"].as_f64().unwrap() > 0.0 && e["price_hour"].as_f64().unwrap() > 0.0, "{e}");
    assert_eq!(e["machines"].as_array().unwrap().len(), 2, "{e}");
    assert!(e["zones_cooling"][0]["reason"].as_str().unwrap().contains("InsufficientInstanceCapacity"), "{e}");
    let table = c.ok(&["pools"]);
    assert!(
        table.contains("aws: aws on-demand m5.large in us-east-1") && table.contains("0 starting, 2 busy, 0 idle"),
        "{table}"
    );
    c.open("gate");
    for id in &ids {
        let job = c.wait_state(*id, "succeeded");
        let node = job["node"].as_str().unwrap().to_string();
        assert_eq!(c.ok(&["logs", &id.to_string()]), format!("ran on {node} attempt 0\n"));
    }
    // Idle for 10 s, the cloud nodes are given back: their machines end, the nodes go, nothing runs in the cloud.
    c.wait_for("the cloud machines to be terminated", |c| c.running_instances().is_empty());
    c.wait_for("the cloud nodes to be removed", |c| c.node_names() == ["local-1"]);
    let e = c.elastic("aws");
    assert_eq!(
        (e["busy"].as_u64(), e["idle"].as_u64(), e["machines"].as_array().map(Vec::len)),
        (Some(0), Some(0), Some(0)),
        "{e}"
    );
    assert_eq!(e["spend_hour"].as_f64(), Some(0.0), "{e}");
    // The pool's history: machines asked for, given back once idle, and gone.
    let kinds: BTreeSet<&str> = e["events"].as_array().unwrap().iter().filter_map(|e| e["kind"].as_str()).collect();
    assert_eq!(kinds, BTreeSet::from(["provision", "release", "gone"]), "{e}");
    c.wait_for("every machine to be shut down", |c| c.machines.values().all(|m| !m.up));
    // The ended machine's own token is revoked with it.
    assert!(c.impostor(&own, "aws-1", "aws").contains("refused the agent"), "a revoked token is refused");
    assert_eq!(c.launches(), launches, "no more launches once the queue was empty");
}

#[test]
fn a_reclaimed_spot_machines_job_is_requeued_and_finishes_on_another_machine() {
    let spot = ON_DEMAND
        .replace("instance_type = \"m5.large\"", "instance_type = \"m5.large\"\nmarket = \"spot\"\nprice_hour = 0.04");
    let mut c = Cloud::new(&spot);
    c.start_server();
    c.start_local_agent();
    let local = c.gated("local-gate", &[]);
    c.wait_state(local, "running");
    // No retries: a reclaim is not the job's failure, and uses none up.
    let job = c.gated("gate", &[]);
    c.wait_state(job, "running");
    let (first_id, first_zone) = {
        let m = c.machines.iter().find(|(_, m)| m.up).expect("a machine is up");
        (m.0.clone(), m.1.zone.clone())
    };
    assert_eq!(first_zone, "us-east-1a");
    // The cloud takes the machine back mid-job.
    c.hypervisor(json!({"cmd": "reclaim", "id": first_id}));
    c.wait_for("the job to run again", |c| {
        let j = c.job(job);
        j["state"] == "running" && j["attempt"] == 1
    });
    let j = c.job(job);
    assert_eq!(j["node"], "aws-2", "{j}");
    let second = c.machines.values().find(|m| m.node == "aws-2").unwrap();
    assert_eq!(second.zone, "us-east-1b", "the zone that lost a spot machine is skipped a while");
    let timeline = j["timeline"].to_string();
    assert!(timeline.contains("node aws-1 is gone: the provider reclaimed spot machine"), "{timeline}");
    assert!(timeline.contains("requeued without using a retry"), "{timeline}");
    c.open("gate");
    c.open("local-gate");
    c.wait_state(job, "succeeded");
    // What the first attempt printed went down with its machine before it was shipped.
    assert!(c.ok(&["logs", &job.to_string()]).ends_with("ran on aws-2 attempt 1\n"));
    c.wait_for("the cloud machines to be terminated", |c| c.running_instances().is_empty());
}

#[test]
fn machines_that_never_join_are_terminated_and_the_next_pool_is_asked() {
    let two = format!(
        "{}\n{}",
        ON_DEMAND
            .replace("name = \"aws\"", "name = \"slow\"")
            .replace("startup_timeout = \"60s\"", "startup_timeout = \"10s\""),
        ON_DEMAND.replace("order = 10", "order = 20")
    );
    let mut c = Cloud::new(&two);
    c.dead_pools.insert("slow".into());
    c.start_server();
    c.start_local_agent();
    let local = c.gated("gate", &[]);
    c.wait_state(local, "running");
    let job = c.gated("gate", &[]);
    c.wait_state(job, "running");
    assert_eq!(c.job(job)["node"], "aws-1", "the job ran in the next pool");
    let slow = c.elastic("slow");
    assert!(slow["cooldown_reason"].as_str().unwrap().starts_with("start-up timed out"), "{slow}");
    c.wait_for("the machine that never joined to be terminated", |c| {
        c.running_instances().iter().all(|i| i["pool"] != "slow")
    });
    c.open("gate");
    c.wait_state(job, "succeeded");
    c.wait_for("the cloud machines to be terminated", |c| c.running_instances().is_empty());
}

#[test]
fn a_server_killed_between_launch_and_record_neither_launches_twice_nor_leaks_a_machine() {
    let mut c = Cloud::new(ON_DEMAND);
    c.start_server();
    c.start_local_agent();
    let local = c.gated("gate", &[]);
    c.wait_state(local, "running");
    // The machine is launched, but the server dies before it hears back (the proxy holds the answer until then).
    c.hypervisor(json!({"cmd": "hold_launches", "on": true}));
    let job = c.gated("gate", &[]);
    c.wait_for("the launch to reach the cloud", |c| !c.machines.is_empty());
    c.kill_server();
    c.hypervisor(json!({"cmd": "hold_launches", "on": false}));
    c.start_server();
    c.wait_state(job, "running");
    assert_eq!(c.job(job)["node"], "aws-1", "the machine launched before the crash was adopted");
    assert_eq!(c.launches(), 1, "one launch in all");
    assert!(c.server_log().contains("adopting a machine whose launch was not recorded"), "{}", c.logs_for_failure());
    c.open("gate");
    c.wait_state(job, "succeeded");
    c.wait_for("the cloud machines to be terminated", |c| c.running_instances().is_empty());
}

#[test]
fn refused_credentials_are_shown_in_ferry_pools_and_the_logs_and_are_not_retried_in_a_loop() {
    let mut c = Cloud::new(ON_DEMAND);
    c.hypervisor(json!({"cmd": "access_keys", "keys": ["testing"]}));
    c.aws_key = "AKIAWRONGWRONGWRONG0".into();
    c.start_server();
    c.start_local_agent();
    let local = c.gated("gate", &[]);
    c.wait_state(local, "running");
    let job = c.gated("gate", &[]);
    c.wait_for("the pool to show the refusal", |c| c.elastic("aws")["last_error"].is_string());
    let e = c.elastic("aws");
    let error = e["last_error"].as_str().unwrap();
    assert!(error.contains("AuthFailure") && error.contains("the credentials were refused"), "{e}");
    assert!(e["cooldown_reason"].as_str().unwrap().starts_with("credentials refused"), "{e}");
    assert!(!c.server_log().contains("AKIAWRONG"), "the access key id is not logged");
    // The job says why it waits, and when the pool is asked again.
    let shown = c.ok(&["show", &job.to_string()]);
    assert!(shown.contains("elastic pool aws, which could start one, is skipped for a while"), "{shown}");
    assert!(shown.contains("Cloud:        pool aws is asked again in "), "{shown}");
    // The pool cools down for its retry_after (30 s): a few seconds later, still one launch, and the server runs.
    let launches = c.launches();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(c.launches(), launches, "no launch while the pool cools down");
    assert_eq!(c.job(job)["state"], "queued");
    assert!(c.server.as_mut().unwrap().try_wait().unwrap().is_none(), "the server is still running");
    c.open("gate");
}

#[test]
fn the_simulator_bills_a_workload_as_the_server_did() {
    // The harness boots a machine in about a second: the simulator is told so, as an admin would tell it theirs.
    let mut c = Cloud::new(&ON_DEMAND.replace("startup = \"5s\"", "startup = \"1s\""));
    c.start_server();
    c.start_local_agent();
    // Three jobs of 8 s that each take a whole node: one runs locally, two burst.
    let ids: Vec<u64> = (0..3).map(|_| c.submit(&["--cpus", "2", "--memory", "1GiB", "--", "sleep", "8"])).collect();
    for id in &ids {
        c.wait_state(*id, "succeeded");
    }
    c.wait_for("the cloud machines to be given back", |c| {
        let e = c.elastic("aws");
        e["machines"].as_array().is_some_and(Vec::is_empty) && e["spend_hour"].as_f64() == Some(0.0)
    });
    let e = c.elastic("aws");
    let server_bill = e["spend"].as_f64().unwrap();
    let provisioned = e["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "provision")
        .map(|e| e["nodes"].as_u64().unwrap())
        .sum::<u64>();
    assert_eq!(provisioned, 2, "{e}");
    // The same workload, exported, through the simulator: the same machines, billed alike.
    let dir = c.root.path().join("export");
    let out_dir = dir.display().to_string();
    c.ok(&["history", "export", "--since", "1h", "--out", &out_dir]);
    let cluster = format!("{out_dir}/cluster.toml");
    let workload = format!("{out_dir}/jobs.csv");
    let sim = c.ok(&["sim", "--cluster", &cluster, "--workload", &workload, "--format", "json"]);
    let report: Value = serde_json::from_str(&sim).unwrap();
    let elastic = &report["runs"][0]["elastic"];
    assert_eq!(elastic["nodes_provisioned"].as_u64(), Some(2), "{report}");
    let sim_bill = elastic["cost"].as_f64().unwrap();
    // Each machine lived about 19 s (1 s to boot, 8 s of job, 10 s idle); the server's also waited for its launch
    // call, its agent and the termination, a second or so in all.
    let ratio = sim_bill / server_bill;
    eprintln!("bill: server {server_bill:.6}, simulator {sim_bill:.6}, ratio {ratio:.3}");
    assert!((0.8..=1.2).contains(&ratio), "simulated {sim_bill:.6} against {server_bill:.6} billed (ratio {ratio:.3})");
}
