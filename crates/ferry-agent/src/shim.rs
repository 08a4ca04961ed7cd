//! The per-run supervisor (`ferry __shim <run-dir>`): one small process per run that puts the job in its control
//! group, starts it with its output going through a pipe into a file of bounded size, enforces its maximum runtime,
//! stops it when asked (SIGTERM to the shim), and writes down how it ended.
//!
//! The shim runs in a session of its own, so the job outlives the agent: an agent that crashes, upgrades or is
//! stopped with Ctrl-C takes no job with it, and the next agent learns everything from the run directory. The shim
//! is synchronous on purpose (a few threads, no runtime) so it costs next to nothing while the job runs. It copies
//! the job's output to the file and never looks into it; it must never stop reading the pipe while the job runs (a
//! job blocked on a full pipe would hang), never talk to the server, and never exit before the job's whole process
//! group is gone.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, PipeReader, PipeWriter, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ferry_api::agent::{Assignment, RunEnd, RunRef};
use ferry_units::{format_bytes, parse_memory};
use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::Pid;

use crate::cgroup::{self, JobCgroup, Limits};
use crate::rundir::{self, Exit, ProcessIdentity, RunDir, Started};

/// The argument that makes the `ferry` binary run a job's command in a container.
pub(crate) const CONTAINER_SUBCOMMAND: &str = "__container";

/// Variables of the agent's own environment that start with this are the agent's settings (its token among them)
/// and are never passed on to jobs.
const AGENT_ENV_PREFIX: &str = "FERRY_";
/// The variable of the agent's environment naming, comma-separated, the variables of the node's own environment
/// that jobs get (`LD_LIBRARY_PATH`, a proxy, `NCCL_SOCKET_IFNAME`): node settings an admin chooses. Nothing else
/// of the agent's (or, under `ferry up`, the server's) environment reaches a job.
pub(crate) const JOB_ENV_FROM_NODE_ENV: &str = "FERRY_JOB_ENV_FROM_NODE";
/// The `PATH` of a job that declared none (a submission through the API rather than `ferry run`).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The most of a run's output the node keeps on its disk (in the run's output file) unless told otherwise. The
/// agent ships the file to the server as it grows, but while the server is out of reach (a network partition, a
/// server restart) the output stays here, so a job that prints without end must not fill the node's disk. Past the
/// limit one line says where the output was cut, the rest is discarded, and the job keeps running.
pub(crate) const RUN_OUTPUT_BYTES_MAX_DEFAULT: u64 = 8 << 30;
/// The variable of the agent's environment (which the shim inherits) that overrides the limit: a byte count or a
/// size such as `512MiB`.
pub(crate) const RUN_OUTPUT_BYTES_MAX_ENV: &str = "FERRY_RUN_OUTPUT_BYTES_MAX";
/// How much of the job's output is copied at once: the pipe's own default capacity on Linux.
const OUTPUT_COPY_CHUNK_BYTES: usize = 64 << 10;
/// How long the shim waits, once the job's process group is gone, for the rest of the output in the pipe. Only a
/// process that left the group (a daemon it started) can keep the pipe open longer; its later output is discarded,
/// so that the run's end is recorded after all the output that will ever be in the file.
const OUTPUT_DRAIN_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub(crate) enum ShimError {
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: io::Error },
    #[error("cannot handle signals: {0}")]
    Signals(io::Error),
    #[error("cannot wait for the job: {0}")]
    Wait(Errno),
}

/// What the supervisor's helper threads tell the thread that enforces stops and deadlines.
enum Control {
    /// SIGTERM or SIGINT reached the shim: the agent (or a person) wants the run stopped.
    Stop,
    /// The job's main process has exited.
    ChildExited,
}

/// How the controller ended the run, if it did.
#[derive(Default)]
struct Verdict {
    end: Option<RunEnd>,
    /// Whether the grace period ran out and the group got SIGKILL.
    killed: bool,
}

/// The shim's entry point: returns the process exit code (0 when the run's end was recorded, whatever it was).
pub(crate) fn main(run_dir: &Path) -> i32 {
    let dir = RunDir::new(run_dir);
    let _ = NOTES_FILE.set(dir.file(rundir::SHIM_LOG_FILE));
    std::panic::set_hook(Box::new(|info| note(&format!("the supervisor panicked: {info}"))));
    let output_bytes_max = output_bytes_max(std::env::var(RUN_OUTPUT_BYTES_MAX_ENV).ok().as_deref());
    match supervise(&dir, output_bytes_max) {
        // How the run ended is in exit.json; a run that went as planned leaves no notes, and so no file to create.
        Ok(_) => 0,
        Err(e) => {
            note(&e.to_string());
            1
        }
    }
}

/// The output limit `FERRY_RUN_OUTPUT_BYTES_MAX` sets, or the default where it is unset or unreadable (noted).
fn output_bytes_max(setting: Option<&str>) -> u64 {
    let Some(text) = setting else { return RUN_OUTPUT_BYTES_MAX_DEFAULT };
    parse_memory(text).unwrap_or_else(|e| {
        let default = format_bytes(RUN_OUTPUT_BYTES_MAX_DEFAULT);
        note(&format!("{RUN_OUTPUT_BYTES_MAX_ENV} is ignored, keeping at most {default} of output: {e}"));
        RUN_OUTPUT_BYTES_MAX_DEFAULT
    })
}

/// Supervises one run from start to end, keeping at most `output_bytes_max` of its output, and returns what it
/// wrote to `exit.json`.
pub(crate) fn supervise(dir: &RunDir, output_bytes_max: u64) -> Result<Exit, ShimError> {
    // The handler goes in before anything starts, so a stop that arrives early is queued, not lost.
    let (control_tx, control_rx) = mpsc::channel();
    listen_for_stop(control_tx.clone())?;
    // The agent sends SIGTERM only once this record exists, so it must come after the handler: before it, SIGTERM
    // would kill the shim outright and the run's end would go unrecorded.
    if let Some(identity) = ProcessIdentity::of(std::process::id()) {
        write(dir, rundir::SHIM_FILE, &identity)?;
    }

    let spec = match dir.read_spec() {
        Ok(spec) => spec,
        Err(e) => {
            let message = format!("cannot read the run's specification {}: {e}", dir.file(rundir::SPEC_FILE).display());
            return fail_to_start(dir, None, None, message);
        }
    };
    let cgroup = enter_cgroup(&spec, dir.path());
    let output_path = dir.file(rundir::OUTPUT_FILE);
    let output = match OpenOptions::new().create(true).append(true).open(&output_path) {
        Ok(file) => file,
        Err(e) => return fail_to_start(dir, None, cgroup, format!("cannot open {}: {e}", output_path.display())),
    };
    let (copier, pipe) = match OutputCopier::start(&output, output_bytes_max) {
        Ok(started) => started,
        Err(e) => {
            let message = format!("cannot start the run: cannot set up the pipe for its output: {e}");
            return fail_to_start(dir, Some(&output), cgroup, message);
        }
    };
    let child = match spawn(&spec, dir.path(), pipe) {
        Ok(child) => child,
        Err(message) => {
            // The pipe's write ends went with the command, so the copier has nothing more to read.
            copier.finish(OUTPUT_DRAIN_WAIT);
            return fail_to_start(dir, Some(&output), cgroup, message);
        }
    };
    let pid = child.id();
    let limits = cgroup.as_ref().map_or(cgroup::Mode::None, JobCgroup::mode).name().to_string();
    let started = Started { pid, started_at_us: rundir::now_us(), limits };
    if let Err(e) = write(dir, rundir::STARTED_FILE, &started) {
        // The run goes on: its end is still recorded, and the agent reports it then.
        note(&e.to_string());
    }

    let group = Pid::from_raw(pid as i32);
    let deadline = spec.max_runtime_s.map(|s| Instant::now() + Duration::from_secs(s));
    let grace = Duration::from_secs(spec.grace_s);
    let controller = thread::spawn(move || control(control_rx, group, deadline, grace));
    let (status, finished_at_us) = wait_for_group(child, group)?;
    let _ = control_tx.send(Control::ChildExited);
    let verdict = controller.join().unwrap_or_default();
    copier.finish(OUTPUT_DRAIN_WAIT);

    let oom_kills = cgroup.as_ref().map_or(0, JobCgroup::oom_kills);
    if let Some(cgroup) = cgroup {
        if let Err(e) = cgroup.remove() {
            note(&format!("cannot remove the run's control group: {e}"));
        }
    }
    let exit = Exit {
        end: verdict.end.unwrap_or(RunEnd::Exited),
        exit_code: status.code(),
        signal: status.signal(),
        finished_at_us,
        message: end_message(&spec, &verdict, status.signal(), oom_kills),
    };
    write(dir, rundir::EXIT_FILE, &exit)?;
    Ok(exit)
}

/// Waits until the job's main process has exited, kills whatever it left in its process group, then reaps it.
/// The main process stays a zombie until the sweep is done, so its pid (the group's id) cannot be reused meanwhile.
fn wait_for_group(mut child: Child, group: Pid) -> Result<(std::process::ExitStatus, i64), ShimError> {
    loop {
        match waitid(Id::Pid(group), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
            Ok(_) => break,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(ShimError::Wait(e)),
        }
    }
    let finished_at_us = rundir::now_us();
    let _ = killpg(group, Signal::SIGKILL);
    let status = child.wait().map_err(|e| ShimError::Wait(Errno::from_raw(e.raw_os_error().unwrap_or(0))))?;
    Ok((status, finished_at_us))
}

/// Enforces the deadline and stop requests: SIGTERM to the whole group, then SIGKILL once the grace period is over.
fn control(rx: Receiver<Control>, group: Pid, deadline: Option<Instant>, grace: Duration) -> Verdict {
    let first = match deadline {
        Some(at) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
        None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
    };
    let end = match first {
        Ok(Control::ChildExited) | Err(RecvTimeoutError::Disconnected) => return Verdict::default(),
        Ok(Control::Stop) => RunEnd::Stopped,
        Err(RecvTimeoutError::Timeout) => RunEnd::TimedOut,
    };
    note(&format!("stopping the run ({end:?}): SIGTERM to its process group, SIGKILL after {}s", grace.as_secs()));
    let _ = killpg(group, Signal::SIGTERM);
    let grace_end = Instant::now() + grace;
    loop {
        match rx.recv_timeout(grace_end.saturating_duration_since(Instant::now())) {
            Ok(Control::ChildExited) | Err(RecvTimeoutError::Disconnected) => {
                return Verdict { end: Some(end), killed: false }
            }
            // A second request changes nothing: the grace period already runs.
            Ok(Control::Stop) => continue,
            Err(RecvTimeoutError::Timeout) => break,
        }
    }
    let _ = killpg(group, Signal::SIGKILL);
    Verdict { end: Some(end), killed: true }
}

/// Turns SIGTERM and SIGINT into stop requests. A process-wide handler (rather than a blocked signal mask) works
/// whatever other threads the calling binary has started.
fn listen_for_stop(tx: Sender<Control>) -> Result<(), ShimError> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT]).map_err(ShimError::Signals)?;
    thread::spawn(move || {
        for _ in signals.forever() {
            if tx.send(Control::Stop).is_err() {
                break;
            }
        }
    });
    Ok(())
}

/// Puts the shim in the run's control group, so the job is born in it. Where that fails the run goes on, measured
/// but not limited, as the node's `limits` already told the server.
fn enter_cgroup(spec: &Assignment, run_dir: &Path) -> Option<JobCgroup> {
    let detection = cgroup::detect();
    if detection.mode == cgroup::Mode::None {
        return None;
    }
    let name = cgroup_name(spec.run, run_dir);
    let limits = Limits { memory_bytes: spec.memory_bytes, cpu_millis: spec.cpu_millis };
    let root = Path::new(cgroup::CGROUP_ROOT);
    let entered = JobCgroup::create(root, detection.mode, &name, limits)
        .and_then(|group| group.add_process(std::process::id()).map(|()| group));
    match entered {
        Ok(group) => Some(group),
        Err(e) => {
            note(&format!("limits not enforced for this run, measuring only: {e}"));
            None
        }
    }
}

/// The name of a run's control group. Job ids are only unique per server, and several agents (of several servers)
/// may share one machine, so the name also carries a hash of the run directory, which is unique on the machine.
pub(crate) fn cgroup_name(run: RunRef, run_dir: &Path) -> String {
    // FNV-1a: stable across builds and platforms, which the standard library's hasher does not promise.
    let hash = run_dir
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3));
    format!("job-{}-{:08x}", rundir::dir_name(run), hash as u32)
}

/// Starts the job: argv as given (no shell), output and errors both written to the one pipe (so they interleave as
/// the job wrote them), in a process group of its own so that stopping it reaches every process it started. A job
/// with an image is started as `ferry __container <run-dir>`, which runs its command in a container, and which the
/// shim supervises like any job (its stop, deadline and output).
fn spawn(spec: &Assignment, run_dir: &Path, pipe: PipeWriter) -> Result<Child, String> {
    // The command's arguments reach it through `ferry __isolate` (or the container), which reads the spec itself.
    let Some(program) = spec.command.first() else {
        return Err("cannot start the run: it has no command".to_string());
    };
    if !Path::new(&spec.workdir).is_dir() {
        return Err(format!(
            "cannot start `{program}`: the working directory `{}` does not exist on this node",
            spec.workdir
        ));
    }
    let stderr = match pipe.try_clone() {
        Ok(err) => err,
        Err(e) => return Err(format!("cannot start `{program}`: cannot share the output pipe: {e}")),
    };
    let mut command = match &spec.image {
        Some(image) => {
            let exe = std::env::current_exe()
                .map_err(|e| format!("cannot start `{program}` in {image}: cannot find the ferry program: {e}"))?;
            let mut command = Command::new(exe);
            command.arg(CONTAINER_SUBCOMMAND).arg(run_dir);
            command
        }
        None => {
            // The job starts through `ferry __isolate`, which gives it a private view of the node and then execs
            // its command; if that fails, it says why on the pipe at fd 3 (closed unread when the exec succeeds).
            let exe = std::env::current_exe()
                .map_err(|e| format!("cannot start `{program}`: cannot find the ferry program: {e}"))?;
            let mut command = Command::new(exe);
            command.arg(crate::isolate::ISOLATE_SUBCOMMAND).arg(run_dir);
            command
        }
    };
    // `ferry __isolate` and `ferry __container` both say on this pipe why a run could not start.
    let (mut start_errors, start_error_writer) =
        io::pipe().map_err(|e| format!("cannot start `{program}`: cannot make a pipe: {e}"))?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&start_error_writer);
    // SAFETY: between fork and exec the closure makes one async-signal-safe system call.
    unsafe {
        command.pre_exec(move || {
            // `dup2` clears close-on-exec on the copy, so the helper inherits it as fd 3.
            if nix::libc::dup2(fd, crate::isolate::START_ERROR_FD) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut env = job_env(std::env::vars_os(), spec);
    if spec.image.is_none() {
        // A job started without a shell still needs a PATH and a HOME; a container has the image's own.
        env.entry("PATH".into()).or_insert_with(|| DEFAULT_PATH.into());
        env.entry("HOME".into()).or_insert_with(|| spec.workdir.clone().into());
    }
    command
        .current_dir(&spec.workdir)
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(pipe)
        .stderr(stderr)
        .process_group(0);
    // The command, and with it the shim's copies of the pipe's write end, is dropped on return: from then on only
    // the job holds the pipe open, so the copier sees its end when the job's processes are gone.
    let mut child = command.spawn().map_err(|e| describe_spawn_error(program, &e))?;
    drop(command);
    drop(start_error_writer);
    let mut why = String::new();
    let _ = io::Read::read_to_string(&mut start_errors, &mut why);
    if !why.trim().is_empty() {
        let _ = child.wait();
        return Err(why.trim().to_string());
    }
    Ok(child)
}

/// Copies the job's output from its pipe to the run's output file on a thread of its own, up to the output limit.
struct OutputCopier {
    /// Whether the copier may still write to the file; cleared when the shim stops waiting for it.
    open: Arc<Mutex<bool>>,
    done: Receiver<()>,
}

impl OutputCopier {
    /// Starts copying into `output` (counting what it already holds against `limit_bytes`); returns the write end
    /// of the pipe for the job.
    fn start(output: &File, limit_bytes: u64) -> io::Result<(OutputCopier, PipeWriter)> {
        let (reader, writer) = io::pipe()?;
        let file = output.try_clone()?;
        let held_bytes = file.metadata()?.len();
        let open = Arc::new(Mutex::new(true));
        let (done_tx, done) = mpsc::channel();
        let copier_open = Arc::clone(&open);
        thread::Builder::new().name("output".into()).spawn(move || {
            copy_output(reader, file, OutputCap::new(limit_bytes, held_bytes), &copier_open);
            let _ = done_tx.send(());
        })?;
        Ok((OutputCopier { open, done }, writer))
    }

    /// Waits up to `wait` for the copier to reach the end of the pipe, then closes the file to it, so that nothing
    /// is written after the run's end is recorded.
    fn finish(self, wait: Duration) {
        if let Err(RecvTimeoutError::Timeout) = self.done.recv_timeout(wait) {
            note(&format!(
                "a process outside the job's process group still holds its output open {}s after the job ended; \
                 its further output is discarded",
                wait.as_secs()
            ));
        }
        *self.open.lock().unwrap_or_else(|e| e.into_inner()) = false;
    }
}

/// Reads the pipe until every writer has closed it, writing what `cap` admits while `open` allows. It keeps reading
/// whatever happens to the file (full disk, limit reached), so the job never blocks on its output.
fn copy_output(mut from: PipeReader, mut to: File, mut cap: OutputCap, open: &Mutex<bool>) {
    let mut buffer = vec![0u8; OUTPUT_COPY_CHUNK_BYTES];
    let mut failed = false;
    loop {
        let read = match from.read(&mut buffer) {
            Ok(0) => return,
            Ok(read) => read,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                note(&format!("cannot read the job's output: {e}"));
                return;
            }
        };
        let (kept, notice) = cap.admit(&buffer[..read]);
        if failed || (kept.is_empty() && notice.is_none()) {
            continue;
        }
        let open = open.lock().unwrap_or_else(|e| e.into_inner());
        if !*open {
            continue;
        }
        let written = to.write_all(kept).and_then(|()| to.write_all(notice.unwrap_or_default().as_bytes()));
        if let Err(e) = written {
            note(&format!("cannot write the job's output, discarding the rest of it: {e}"));
            failed = true;
        }
    }
}

/// The output limit's bookkeeping: how much of the job's output has been kept, and whether it was cut.
struct OutputCap {
    limit_bytes: u64,
    kept_bytes: u64,
    /// Whether the last byte kept ends a line (or nothing was kept), so the notice starts on a line of its own.
    at_line_start: bool,
    cut: bool,
}

impl OutputCap {
    fn new(limit_bytes: u64, held_bytes: u64) -> OutputCap {
        OutputCap { limit_bytes, kept_bytes: held_bytes, at_line_start: true, cut: false }
    }

    /// What of `chunk` goes to the file, and the notice to write after it when this chunk reaches the limit.
    fn admit<'a>(&mut self, chunk: &'a [u8]) -> (&'a [u8], Option<String>) {
        if self.cut {
            return (&[], None);
        }
        let room = self.limit_bytes.saturating_sub(self.kept_bytes);
        let kept = &chunk[..chunk.len().min(usize::try_from(room).unwrap_or(usize::MAX))];
        self.kept_bytes += kept.len() as u64;
        if let Some(last) = kept.last() {
            self.at_line_start = *last == b'\n';
        }
        if kept.len() == chunk.len() {
            return (kept, None);
        }
        self.cut = true;
        let notice = format!(
            "{}ferry: output cut at {} bytes ({}): the rest of this run's output is discarded while it keeps \
             running; set {RUN_OUTPUT_BYTES_MAX_ENV} in the agent's environment to keep more\n",
            if self.at_line_start { "" } else { "\n" },
            self.limit_bytes,
            format_bytes(self.limit_bytes),
        );
        (kept, Some(notice))
    }
}

/// The job's environment: exactly the variables it was submitted with (`ferry run` sends a documented few of the
/// submitting shell's and the `--env` ones), the node variables the admin named in `FERRY_JOB_ENV_FROM_NODE`, and
/// the variables that tell the job what it was given, which the job cannot override. `inherited` is the agent's
/// environment, which holds the agent's token and, under `ferry up`, the server's secrets: only the named variables
/// are taken from it.
pub(crate) fn job_env(
    inherited: impl Iterator<Item = (OsString, OsString)>,
    spec: &Assignment,
) -> BTreeMap<OsString, OsString> {
    let inherited: BTreeMap<OsString, OsString> = inherited.collect();
    let named = inherited.get(std::ffi::OsStr::new(JOB_ENV_FROM_NODE_ENV)).map(|v| v.to_string_lossy().into_owned());
    let mut env: BTreeMap<OsString, OsString> = named
        .iter()
        .flat_map(|list| list.split(',').map(str::trim).filter(|n| !n.is_empty()))
        .filter(|name| !name.starts_with(AGENT_ENV_PREFIX))
        .filter_map(|name| inherited.get(std::ffi::OsStr::new(name)).map(|v| (OsString::from(name), v.clone())))
        .collect();
    // CUDA numbers devices fastest first unless told otherwise, while NVML (and so Ferry) numbers them by PCI bus:
    // without this, `CUDA_VISIBLE_DEVICES=1` could name another job's GPU.
    env.insert("CUDA_DEVICE_ORDER".into(), "PCI_BUS_ID".into());
    env.extend(spec.env.iter().map(|(k, v)| (OsString::from(k), OsString::from(v))));
    env.extend(spec.secrets.0.iter().map(|(k, v)| (OsString::from(k), OsString::from(v))));
    let gpus: Vec<String> = spec.gpu_ids.iter().map(u32::to_string).collect();
    env.insert("CUDA_VISIBLE_DEVICES".into(), gpus.join(",").into());
    env.insert("FERRY_JOB_ID".into(), spec.run.job_id.to_string().into());
    env.insert("FERRY_ATTEMPT".into(), spec.run.attempt.to_string().into());
    env
}

/// Says why a program could not be started, in words a user can act on.
pub(crate) fn describe_spawn_error(program: &str, e: &io::Error) -> String {
    const ENOEXEC: i32 = Errno::ENOEXEC as i32;
    let has_path = Path::new(program).components().count() > 1;
    let detail = match (e.kind(), e.raw_os_error()) {
        (io::ErrorKind::NotFound, _) if has_path => "no such file or directory".to_string(),
        (io::ErrorKind::NotFound, _) => "no such file or directory (is it on PATH?)".to_string(),
        (io::ErrorKind::PermissionDenied, _) => "permission denied (is it executable?)".to_string(),
        (_, Some(ENOEXEC)) => "not a program this machine can run (does a script lack its #! line?)".to_string(),
        _ => e.to_string(),
    };
    format!("cannot start `{program}`: {detail}")
}

/// Records a run that never started: the reason goes to the job's output (where `ferry logs` shows it) and to
/// `exit.json`.
fn fail_to_start(
    dir: &RunDir,
    output: Option<&File>,
    cgroup: Option<JobCgroup>,
    message: String,
) -> Result<Exit, ShimError> {
    note(&message);
    let output = match output {
        Some(file) => file.try_clone().ok(),
        None => OpenOptions::new().create(true).append(true).open(dir.file(rundir::OUTPUT_FILE)).ok(),
    };
    if let Some(mut file) = output {
        let _ = file.write_all(format!("ferry: {message}\n").as_bytes());
    }
    if let Some(cgroup) = cgroup {
        let _ = cgroup.remove();
    }
    let exit = Exit {
        end: RunEnd::FailedToStart,
        exit_code: None,
        signal: None,
        finished_at_us: rundir::now_us(),
        message: Some(message),
    };
    write(dir, rundir::EXIT_FILE, &exit)?;
    Ok(exit)
}

/// The human account of how a run ended, where there is more to say than the exit code.
fn end_message(spec: &Assignment, verdict: &Verdict, signal: Option<i32>, oom_kills: u64) -> Option<String> {
    let after_grace = if verdict.killed {
        format!(", and killed because it was still running {}s after SIGTERM", spec.grace_s)
    } else {
        String::new()
    };
    match verdict.end {
        Some(RunEnd::TimedOut) => {
            let limit_s = spec.max_runtime_s.unwrap_or_default();
            return Some(format!("stopped after reaching its maximum runtime of {limit_s}s{after_grace}"));
        }
        Some(RunEnd::Stopped) => return Some(format!("stopped on request{after_grace}")),
        _ => {}
    }
    let signal = signal?;
    if signal == Signal::SIGKILL as i32 && oom_kills > 0 {
        return Some(format!(
            "killed by the kernel for using more than its memory limit of {}",
            format_bytes(spec.memory_bytes)
        ));
    }
    let name = Signal::try_from(signal).map(|s| s.as_str()).unwrap_or("an unknown signal");
    Some(format!("killed by signal {signal} ({name})"))
}

/// Writes one of the run's records. `exit.json` is the final word on the run and is renamed into place whole; the
/// records written while the run starts are written in place, because their readers take a file they cannot parse
/// as not written yet, and every file avoided is an inode the file system need not find, which is much of what
/// starting a run costs.
fn write<T: serde::Serialize>(dir: &RunDir, name: &str, value: &T) -> Result<(), ShimError> {
    let path = dir.file(name);
    let written = if name == rundir::EXIT_FILE {
        rundir::write_json_atomic(&path, value)
    } else {
        rundir::write_json(&path, value)
    };
    written.map_err(|source| ShimError::Write { path: path.display().to_string(), source })
}

/// Where the notes of this supervisor go: `shim.log` in its run directory, set once at start.
static NOTES_FILE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// One line in `shim.log`, which is created only when there is something to say: creating files is a large part of
/// what starting a run costs. The shim writes the file directly rather than through `tracing`, because it is its only
/// record and must be written whether or not the caller installed a subscriber; with no run directory known yet,
/// the line goes to stderr.
fn note(message: &str) {
    use std::io::Write as _;
    let now_us = rundir::now_us();
    let line =
        format!("{}.{:06} ferry-shim[{}]: {message}\n", now_us / 1_000_000, now_us % 1_000_000, std::process::id());
    let file = NOTES_FILE.get().and_then(|p| std::fs::OpenOptions::new().create(true).append(true).open(p).ok());
    let _ = match file {
        Some(mut file) => file.write_all(line.as_bytes()),
        None => std::io::stderr().write_all(line.as_bytes()),
    };
}

#[cfg(test)]
mod tests {
    use ferry_api::agent::SecretEnv;

    use super::*;

    fn spec() -> Assignment {
        Assignment {
            run: RunRef::new(7, 2),
            command: vec!["true".into()],
            workdir: "/".into(),
            code: None,
            env: BTreeMap::from([("CUDA_VISIBLE_DEVICES".into(), "9".into()), ("X".into(), "y".into())]),
            secrets: SecretEnv(BTreeMap::from([("HF_TOKEN".into(), "hf_x".into())])),
            owner: String::new(),
            cpu_millis: 1000,
            memory_bytes: 1 << 30,
            gpu_ids: vec![0, 3],
            max_runtime_s: Some(60),
            grace_s: 10,
            image: None,
        }
    }

    #[test]
    fn the_job_env_is_what_was_declared_and_named_and_cannot_lie_about_its_gpus() {
        let inherited = [
            ("PATH", "/bin"),
            ("FERRY_TOKEN", "secret"),
            ("AWS_SECRET_ACCESS_KEY", "server secret"),
            ("LD_LIBRARY_PATH", "/usr/local/cuda/lib64"),
            ("CUDA_DEVICE_ORDER", "FASTEST_FIRST"),
            (JOB_ENV_FROM_NODE_ENV, "LD_LIBRARY_PATH, FERRY_TOKEN,NOT_SET"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let env = job_env(inherited.into_iter(), &spec());
        let shown: Vec<String> =
            env.iter().map(|(k, v)| format!("{}={}", k.to_string_lossy(), v.to_string_lossy())).collect();
        assert_eq!(
            shown,
            [
                "CUDA_DEVICE_ORDER=PCI_BUS_ID",
                "CUDA_VISIBLE_DEVICES=0,3",
                "FERRY_ATTEMPT=2",
                "FERRY_JOB_ID=7",
                "HF_TOKEN=hf_x",
                "LD_LIBRARY_PATH=/usr/local/cuda/lib64",
                "X=y"
            ]
        );
    }

    #[test]
    fn the_output_cap_keeps_up_to_the_limit_then_says_where_it_cut() {
        let mut cap = OutputCap::new(10, 4);
        assert_eq!(cap.admit(b"abc\n"), (&b"abc\n"[..], None));
        let (kept, notice) = cap.admit(b"defgh");
        assert_eq!(kept, b"de");
        let notice = notice.unwrap();
        assert!(notice.starts_with("\nferry: output cut at 10 bytes (10B): the rest"), "{notice}");
        assert!(notice.ends_with("set FERRY_RUN_OUTPUT_BYTES_MAX in the agent's environment to keep more\n"));
        assert_eq!(cap.admit(b"more"), (&b""[..], None), "nothing more once cut");
        // A cut at the end of a line needs no extra line break, and reaching the limit exactly is not a cut.
        let mut cap = OutputCap::new(4, 0);
        assert_eq!(cap.admit(b"abc\n"), (&b"abc\n"[..], None));
        assert!(cap.admit(b"x").1.unwrap().starts_with("ferry: output cut at 4 bytes"));
    }

    #[test]
    fn the_output_limit_is_read_from_the_environment_with_units() {
        assert_eq!(output_bytes_max(None), RUN_OUTPUT_BYTES_MAX_DEFAULT);
        assert_eq!(output_bytes_max(Some("4096")), 4096);
        assert_eq!(output_bytes_max(Some("2MiB")), 2 << 20);
        assert_eq!(output_bytes_max(Some("lots")), RUN_OUTPUT_BYTES_MAX_DEFAULT);
    }

    /// A real job through a real pipe: both streams interleave in order, the job is never blocked by output past
    /// the limit, and its exit status is its own.
    #[test]
    fn a_job_printing_past_the_cap_runs_to_its_end_with_its_output_cut() {
        let dir = tempfile::tempdir().unwrap();
        let output = OpenOptions::new().create(true).append(true).open(dir.path().join("output.log")).unwrap();
        let (copier, pipe) = OutputCopier::start(&output, 1000).unwrap();
        // Four megabytes past a limit of a thousand bytes: far more than a pipe holds, so a copier that stopped
        // reading would block the job for ever.
        let script = "echo first; echo second >&2; head -c 4000000 /dev/zero | tr '\\0' x; echo; echo done >&2; exit 5";
        let stderr = pipe.try_clone().unwrap();
        let mut child = Command::new("/bin/sh")
            .args(["-c", script])
            .stdin(Stdio::null())
            .stdout(pipe)
            .stderr(stderr)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the job blocked on its output");
            }
            thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(status.code(), Some(5));
        copier.finish(OUTPUT_DRAIN_WAIT);
        let text = std::fs::read_to_string(dir.path().join("output.log")).unwrap();
        let (kept, notice) = text.split_at(1000);
        assert_eq!(kept, format!("first\nsecond\n{}", "x".repeat(1000 - 13)));
        assert!(notice.starts_with("\nferry: output cut at 1000 bytes (1000B): "), "{notice}");
        assert_eq!(notice.lines().count(), 2, "one line says where it was cut, and nothing follows: {notice}");
    }

    #[test]
    fn spawn_errors_say_what_to_check() {
        let not_found = io::Error::from(io::ErrorKind::NotFound);
        assert_eq!(
            describe_spawn_error("trian.py", &not_found),
            "cannot start `trian.py`: no such file or directory (is it on PATH?)"
        );
        assert_eq!(describe_spawn_error("./x", &not_found), "cannot start `./x`: no such file or directory");
        let denied = io::Error::from(io::ErrorKind::PermissionDenied);
        assert_eq!(
            describe_spawn_error("/tmp/x", &denied),
            "cannot start `/tmp/x`: permission denied (is it executable?)"
        );
        let noexec = io::Error::from_raw_os_error(Errno::ENOEXEC as i32);
        assert!(describe_spawn_error("./s", &noexec).contains("#! line"));
    }

    #[test]
    fn end_messages_explain_stops_and_signals() {
        let spec = spec();
        let stopped = Verdict { end: Some(RunEnd::Stopped), killed: true };
        assert_eq!(
            end_message(&spec, &stopped, Some(9), 0).unwrap(),
            "stopped on request, and killed because it was still running 10s after SIGTERM"
        );
        let timed_out = Verdict { end: Some(RunEnd::TimedOut), killed: false };
        assert_eq!(
            end_message(&spec, &timed_out, Some(15), 0).unwrap(),
            "stopped after reaching its maximum runtime of 60s"
        );
        assert_eq!(end_message(&spec, &Verdict::default(), None, 0), None);
        assert_eq!(end_message(&spec, &Verdict::default(), Some(11), 0).unwrap(), "killed by signal 11 (SIGSEGV)");
        assert_eq!(
            end_message(&spec, &Verdict::default(), Some(9), 1).unwrap(),
            "killed by the kernel for using more than its memory limit of 1GiB"
        );
    }
}
