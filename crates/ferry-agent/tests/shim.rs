//! The run supervisor, tested as the agent uses it: a real `__shim` process per run, real jobs, and the files they
//! leave in the run directory. Nothing here sleeps to wait: every wait polls with a bound.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_api::agent::{Assignment, RunRef};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

const SHIM: &str = env!("CARGO_BIN_EXE_ferry-agent-shim-test");
/// The longest any wait here may take before the test fails; far above what the runs need.
const WAIT_MAX: Duration = Duration::from_secs(30);
/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(10);
/// Job ids far above any a test server hands out, so these runs' control groups never meet an agent's.
const JOB_ID_BASE: u64 = 990_000;

/// A run laid out as the agent lays it out: `<agent dir>/runs/<run>/` with the job working in its `work/` folder,
/// and the agent directory holding the isolation settings the agent writes at start (nothing hidden here; under
/// root, jobs run as the unprivileged `ferry-job`, which `scripts/test` creates).
struct Run {
    agent_dir: tempfile::TempDir,
    spec: Assignment,
}

impl Run {
    fn new(job: u64, command: &[&str]) -> Run {
        let agent_dir = tempfile::tempdir().unwrap();
        fs::set_permissions(agent_dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let run_dir = agent_dir.path().join("runs").join("run");
        fs::create_dir_all(run_dir.join("work")).unwrap();
        let job_user = nix::unistd::geteuid().is_root().then(|| {
            let user = nix::unistd::User::from_name("ferry-job")
                .unwrap()
                .expect("tests run as root need the account ferry-job (scripts/test creates it)");
            json!({"name": "ferry-job", "uid": user.uid.as_raw(), "gid": user.gid.as_raw()})
        });
        let settings = json!({"hide": [], "expose": [], "job_user": job_user});
        fs::write(agent_dir.path().join("isolation.json"), settings.to_string()).unwrap();
        let spec = Assignment {
            run: RunRef::new(JOB_ID_BASE + job, 1),
            command: command.iter().map(|s| s.to_string()).collect(),
            workdir: run_dir.join("work").display().to_string(),
            code: None,
            env: BTreeMap::new(),
            secrets: Default::default(),
            owner: String::new(),
            cpu_millis: 1500,
            memory_bytes: 256 << 20,
            gpu_ids: Vec::new(),
            max_runtime_s: None,
            grace_s: 1,
            image: None,
        };
        Run { agent_dir, spec }
    }

    /// The run directory.
    fn path(&self) -> std::path::PathBuf {
        self.agent_dir.path().join("runs").join("run")
    }

    /// The job's working folder.
    fn work(&self) -> std::path::PathBuf {
        self.path().join("work")
    }

    /// Writes the spec and starts the supervisor, with the extra environment given (and limits off unless the
    /// test is about them).
    fn start(&self, env: &[(&str, &str)]) -> Child {
        fs::write(self.path().join("spec.json"), serde_json::to_vec(&self.spec).unwrap()).unwrap();
        let log = fs::File::create(self.path().join("shim.log")).unwrap();
        let mut command = Command::new(SHIM);
        command.arg("__shim").arg(self.path()).stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log);
        for (key, value) in env {
            command.env(key, value);
        }
        command.spawn().unwrap()
    }

    /// Runs to the end without limits and returns `exit.json`.
    fn run(&self) -> Value {
        self.run_with(&[("FERRY_CGROUP", "none")])
    }

    fn run_with(&self, env: &[(&str, &str)]) -> Value {
        let status = self.start(env).wait().unwrap();
        assert_eq!(status.code(), Some(0), "the shim failed; shim.log:\n{}", self.shim_log());
        self.json("exit.json").expect("the shim records the end before it exits")
    }

    fn json(&self, name: &str) -> Option<Value> {
        let bytes = fs::read(self.path().join(name)).ok()?;
        Some(serde_json::from_slice(&bytes).unwrap())
    }

    fn output(&self) -> Vec<u8> {
        fs::read(self.path().join("output.log")).unwrap()
    }

    fn output_text(&self) -> String {
        String::from_utf8(self.output()).unwrap()
    }

    fn shim_log(&self) -> String {
        fs::read_to_string(self.path().join("shim.log")).unwrap_or_default()
    }
}

/// Polls `probe` until it gives a value, failing the test after `WAIT_MAX`.
fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(POLL);
    }
}

/// Whether a process is gone for good (a zombie counts: it will never run again).
fn process_gone(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit(')').next().unwrap().split_whitespace().next() == Some("Z"),
        Err(_) => true,
    }
}

/// The exit record without its timestamp, which no test can know.
fn end_of(exit: &Value) -> Value {
    let mut exit = exit.clone();
    assert!(exit["finished_at_us"].as_i64().unwrap() > 0);
    exit.as_object_mut().unwrap().remove("finished_at_us");
    exit
}

#[test]
fn output_keeps_every_byte_in_order_from_both_streams() {
    let script = r"printf 'line one\n\377\376 not utf-8\n'; printf 'to stderr, no newline' >&2";
    let run = Run::new(1, &["/bin/sh", "-c", script]);
    let exit = run.run();
    assert_eq!(end_of(&exit), json!({"end": "exited", "exit_code": 0, "signal": null, "message": null}));
    assert_eq!(run.output(), b"line one\n\xff\xfe not utf-8\nto stderr, no newline");
    let started = run.json("started.json").unwrap();
    assert!(started["pid"].as_u64().unwrap() > 0 && started["started_at_us"].as_i64().unwrap() > 0);
    assert_eq!(started["limits"], "none");
    assert!(run.json("shim.json").unwrap()["pid"].as_u64().is_some());
}

#[test]
fn exit_codes_and_signals_are_recorded() {
    let run = Run::new(2, &["/bin/sh", "-c", "exit 3"]);
    assert_eq!(end_of(&run.run()), json!({"end": "exited", "exit_code": 3, "signal": null, "message": null}));

    let run = Run::new(3, &["/bin/sh", "-c", "kill -SEGV $$"]);
    assert_eq!(
        end_of(&run.run()),
        json!({"end": "exited", "exit_code": null, "signal": 11, "message": "killed by signal 11 (SIGSEGV)"})
    );
}

#[test]
fn the_job_sees_its_gpus_ids_env_and_workdir_but_not_the_agents_settings() {
    let script = r#"printf '%s|%s|%s|%s|%s|%s|%s' "$CUDA_VISIBLE_DEVICES" "$FERRY_JOB_ID" "$FERRY_ATTEMPT" "$GREETING" "${FERRY_TOKEN-unset}" "$CUDA_DEVICE_ORDER" "$(pwd)""#;
    let mut run = Run::new(4, &["/bin/sh", "-c", script]);
    run.spec.gpu_ids = vec![0, 2];
    run.spec.env.insert("GREETING".into(), "hi there".into());
    run.run_with(&[("FERRY_CGROUP", "none"), ("FERRY_TOKEN", "secret")]);
    let workdir = fs::canonicalize(run.work()).unwrap();
    let expected = format!("0,2|{}|1|hi there|unset|PCI_BUS_ID|{}", JOB_ID_BASE + 4, workdir.display());
    assert_eq!(run.output_text(), expected);

    let run =
        Run::new(5, &["/bin/sh", "-c", r#"printf '%s:%s' "${CUDA_VISIBLE_DEVICES+set}" "$CUDA_VISIBLE_DEVICES""#]);
    run.run();
    assert_eq!(run.output_text(), "set:", "a run without GPUs must see none, not all");
}

#[test]
fn a_run_past_its_maximum_runtime_is_stopped() {
    let mut run = Run::new(6, &["sleep", "30"]);
    run.spec.max_runtime_s = Some(1);
    run.spec.grace_s = 1;
    assert_eq!(
        end_of(&run.run()),
        json!({
            "end": "timed_out", "exit_code": null, "signal": 15,
            "message": "stopped after reaching its maximum runtime of 1s",
        })
    );
}

#[test]
fn a_program_that_cannot_start_says_why_in_its_output() {
    let run = Run::new(7, &["definitely-not-a-program-ferry"]);
    let message = "cannot start `definitely-not-a-program-ferry`: no such file or directory (is it on PATH?)";
    assert_eq!(
        end_of(&run.run()),
        json!({"end": "failed_to_start", "exit_code": null, "signal": null, "message": message})
    );
    assert_eq!(run.output_text(), format!("ferry: {message}\n"));
    assert!(run.json("started.json").is_none(), "a run that never started has no start");

    let mut run = Run::new(8, &["true"]);
    run.spec.workdir = "/nonexistent/ferry-workdir".into();
    let exit = run.run();
    assert_eq!(exit["end"], "failed_to_start");
    assert_eq!(
        exit["message"],
        "cannot start `true`: the working directory `/nonexistent/ferry-workdir` does not exist on this node"
    );
}

#[test]
fn sigterm_to_the_shim_stops_the_whole_process_group() {
    // The shell and its background child both ignore SIGTERM, so only the SIGKILL after the grace period ends them.
    // The background process is found by its argument: ids inside the job's process namespace differ.
    let script = r#"trap "" TERM; sleep 301.75 & wait"#;
    let run = Run::new(9, &["/bin/sh", "-c", script]);
    let mut shim = run.start(&[("FERRY_CGROUP", "none")]);
    let grandchild: i32 = wait_for("the job's background process", || process_with_arg("301.75"));
    // The job may run before the shim has recorded it: wait for the record too.
    let job = wait_for("started.json", || run.json("started.json").and_then(|s| s["pid"].as_i64())) as i32;
    kill(Pid::from_raw(shim.id() as i32), Signal::SIGTERM).unwrap();

    assert_eq!(shim.wait().unwrap().code(), Some(0), "shim.log:\n{}", run.shim_log());
    assert_eq!(
        end_of(&run.json("exit.json").unwrap()),
        json!({
            "end": "stopped", "exit_code": null, "signal": 9,
            "message": "stopped on request, and killed because it was still running 1s after SIGTERM",
        })
    );
    assert!(process_gone(job));
    wait_for("the background process to be killed too", || process_gone(grandchild).then_some(()));
}

#[test]
fn a_job_that_honours_sigterm_ends_within_its_grace_period() {
    let mut run = Run::new(10, &["/bin/sh", "-c", "echo ready; exec sleep 300"]);
    run.spec.grace_s = 300;
    let mut shim = run.start(&[("FERRY_CGROUP", "none")]);
    wait_for("the job to start", || run.json("started.json"));
    kill(Pid::from_raw(shim.id() as i32), Signal::SIGTERM).unwrap();
    // The grace period is five minutes, so ending within the wait bound shows SIGTERM itself ended the job.
    assert_eq!(shim.wait().unwrap().code(), Some(0));
    assert_eq!(
        end_of(&run.json("exit.json").unwrap()),
        json!({"end": "stopped", "exit_code": null, "signal": 15, "message": "stopped on request"})
    );
}

/// The job reports the control groups it is in and the limit files of the group Ferry made for it; what it must
/// see depends on the mode the shim found on this machine, which it records in `started.json`.
#[test]
fn the_job_runs_inside_its_limits_where_the_machine_allows() {
    let job = JOB_ID_BASE + 11;
    // The group's name carries a hash of the run directory, so the job reads where it is from /proc/self/cgroup.
    let group = format!("job-{job}-1-");
    let script = String::from(
        "cat /proc/self/cgroup; echo ---; \
         m=$(awk -F: '$2 ~ /(^|,)memory(,|$)/ {print $3}' /proc/self/cgroup); \
         c=$(awk -F: '$2 ~ /(^|,)cpu(,|$)/ {print $3}' /proc/self/cgroup); \
         u=$(awk -F: '$1 == 0 {print $3}' /proc/self/cgroup); \
         echo \"$(cat /sys/fs/cgroup/memory$m/memory.limit_in_bytes 2>/dev/null)\"; \
         echo \"$(cat /sys/fs/cgroup/cpu$c/cpu.cfs_period_us 2>/dev/null)\"; \
         echo \"$(cat /sys/fs/cgroup/cpu$c/cpu.cfs_quota_us 2>/dev/null)\"; \
         echo \"$(cat /sys/fs/cgroup$u/memory.max 2>/dev/null)\"; \
         echo \"$(cat /sys/fs/cgroup$u/cpu.max 2>/dev/null)\"; ",
    );
    let run = Run::new(11, &["/bin/sh", "-c", &script]);
    let exit = run.run_with(&[]);
    assert_eq!(exit["end"], "exited", "shim.log:\n{}", run.shim_log());

    let output = run.output_text();
    let (membership, values) = output.split_once("---\n").unwrap();
    let values: Vec<&str> = values.lines().collect();
    let in_group = |controller: &str| {
        membership.lines().any(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next(), parts.next().unwrap(), parts.next().unwrap());
            let named = if controller.is_empty() {
                controllers.is_empty()
            } else {
                controllers.split(',').any(|c| c == controller)
            };
            named && path.contains(&format!("/ferry/{group}"))
        })
    };
    let limits = run.json("started.json").unwrap()["limits"].as_str().unwrap().to_string();
    match limits.as_str() {
        "cgroup-v1" => {
            assert!(in_group("memory") && in_group("cpu"), "{membership}");
            assert_eq!(values[..3], ["268435456", "100000", "150000"]);
        }
        "cgroup-v2" => {
            assert!(in_group(""), "{membership}");
            assert_eq!(values[3..], ["268435456", "150000 100000"]);
        }
        "none" => {
            assert!(!membership.contains("/ferry/job-"), "{membership}");
            assert!(values.iter().all(|v| v.is_empty()), "{values:?}");
        }
        other => panic!("unknown limits mode {other}"),
    }
    // Whatever the mode, nothing of the run's group is left once the run has ended.
    for line in membership.lines().filter(|l| l.contains("/ferry/job-")) {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next().unwrap(), parts.next().unwrap());
        let controller = controllers.split(',').next().unwrap_or("");
        let dir = if controller.is_empty() {
            format!("/sys/fs/cgroup{path}")
        } else {
            format!("/sys/fs/cgroup/{controller}{path}")
        };
        assert!(!Path::new(&dir).exists(), "{dir} is left behind");
    }

    // A job that grows past its memory limit is killed by the kernel where the limit is enforced, and the record
    // says so; where it is not, the job simply finishes.
    let greedy = "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived";
    let mut run = Run::new(13, &["/bin/sh", "-c", greedy]);
    run.spec.memory_bytes = 32 << 20;
    let exit = run.run_with(&[]);
    if limits == "none" {
        assert_eq!(end_of(&exit), json!({"end": "exited", "exit_code": 0, "signal": null, "message": null}));
    } else {
        assert_eq!(
            end_of(&exit),
            json!({
                "end": "exited", "exit_code": null, "signal": 9,
                "message": "killed by the kernel for using more than its memory limit of 32MiB",
            })
        );
    }

    let forced = Run::new(12, &["cat", "/proc/self/cgroup"]);
    forced.run();
    assert_eq!(forced.json("started.json").unwrap()["limits"], "none");
    assert!(!forced.output_text().contains("/ferry/job-"));
}

/// The host's id of a live process one of whose arguments is exactly `arg`.
fn process_with_arg(arg: &str) -> Option<i32> {
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else { continue };
        if !process_gone(pid) && cmdline.split(|b| *b == 0).any(|a| a == arg.as_bytes()) {
            return Some(pid);
        }
    }
    None
}
