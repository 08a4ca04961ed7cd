//! Hosts made of network namespaces for tests that run Ferry across machines: a "switch" namespace holding a bridge,
//! one namespace per host linked to it by a veth pair, and addresses in a private /24. Nothing is created in the root
//! namespace: each veth pair is born with its ends already in the host's and the switch's namespace. Dropping the
//! network kills every process in its namespaces and deletes them, also when the test fails.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::stderr;

/// How long teardown waits for the processes of a namespace to die after SIGKILL.
const TEARDOWN_WAIT: Duration = Duration::from_secs(10);

/// Networks made by this process so far, so that two in one process (as under `cargo test`) get distinct names.
static NETWORKS: AtomicU32 = AtomicU32::new(0);

/// What a test says when the machine cannot make hosts.
pub const NEEDS: &str = "these tests run the server and the agents as hosts in network namespaces, which needs root \
                     (CAP_NET_ADMIN and CAP_SYS_ADMIN), iproute2's `ip` and util-linux's `unshare`";

/// Runs `ip` with `args`, failing the test with what it said.
pub fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).stdin(Stdio::null()).output();
    match out {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
        Ok(out) => panic!("`ip {}` failed: {}\n{NEEDS}", args.join(" "), stderr(&out).trim()),
        Err(e) => panic!("cannot run `ip {}`: {e}\n{NEEDS}", args.join(" ")),
    }
}

/// One host: a network namespace with `eth0` linked to the switch's port `port`.
#[derive(Clone)]
pub struct Host {
    pub ns: String,
    pub ip: String,
    pub port: String,
}

/// The namespaces of one test and the bridge between them; deleted on drop with everything running in them.
pub struct Network {
    /// The start of every namespace name: this process's id and the network's number in it.
    tag: String,
    /// The third byte of this network's 10.201.X.0/24, derived from the process id.
    subnet: u8,
    switch: String,
    /// Every namespace made so far, so that a network left half-built by a failure is torn down too.
    namespaces: Vec<String>,
}

impl Network {
    pub fn new() -> Network {
        let pid = std::process::id();
        let number = NETWORKS.fetch_add(1, Ordering::Relaxed);
        let tag = format!("ferry{pid}-{number}");
        let subnet = ((pid + number) % 250 + 1) as u8;
        let switch = format!("{tag}-sw");
        let mut net = Network { tag, subnet, switch: switch.clone(), namespaces: Vec::new() };
        net.add_namespace(&switch);
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &switch, "link", "set", "br0", "up"]);
        net
    }

    pub fn add_namespace(&mut self, ns: &str) {
        ip(&["netns", "add", ns]);
        self.namespaces.push(ns.to_string());
        ip(&["-n", ns, "link", "set", "lo", "up"]);
    }

    /// Adds a host whose address ends in `byte`, linked to the bridge.
    pub fn add_host(&mut self, name: &str, byte: u8) -> Host {
        let host = Host {
            ns: format!("{}-{name}", self.tag),
            ip: format!("10.201.{}.{byte}", self.subnet),
            port: format!("p{byte}"),
        };
        self.add_namespace(&host.ns);
        let sw = self.switch.as_str();
        ip(&["link", "add", "eth0", "netns", &host.ns, "type", "veth", "peer", "name", &host.port, "netns", sw]);
        ip(&["-n", sw, "link", "set", &host.port, "master", "br0"]);
        ip(&["-n", sw, "link", "set", &host.port, "up"]);
        ip(&["-n", &host.ns, "addr", "add", &format!("{}/24", host.ip), "dev", "eth0"]);
        ip(&["-n", &host.ns, "link", "set", "eth0", "up"]);
        host
    }

    /// Cuts `host` off the network: its port on the switch goes down, as if its cable were pulled.
    pub fn cut(&self, host: &Host) {
        ip(&["-n", &self.switch, "link", "set", &host.port, "down"]);
    }

    pub fn restore(&self, host: &Host) {
        ip(&["-n", &self.switch, "link", "set", &host.port, "up"]);
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            kill_everything_in(ns);
            let _ = Command::new("ip").args(["netns", "del", ns]).stderr(Stdio::null()).status();
        }
    }
}

/// SIGKILLs every process in `ns` (servers, agents, supervisors and jobs alike) until none is left or
/// `TEARDOWN_WAIT` is over. The namespace's own list is the truth: a PID recorded at start could belong to a wrapper.
pub fn kill_everything_in(ns: &str) {
    let deadline = Instant::now() + TEARDOWN_WAIT;
    loop {
        let listed = Command::new("ip").args(["netns", "pids", ns]).stderr(Stdio::null()).output();
        let pids: Vec<i32> = listed
            .map(|out| String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect())
            .unwrap_or_default();
        if pids.is_empty() || Instant::now() > deadline {
            return;
        }
        for pid in pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
