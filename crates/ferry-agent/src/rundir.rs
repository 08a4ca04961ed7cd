//! The on-disk layout of one run, shared by the agent and the run's supervisor (the shim): which file says what,
//! and how each is written so that a reader never sees half of it.
//!
//! A run directory `runs/<job>-<attempt>/` holds `spec.json` (the assignment, written by the agent), `shim.json`
//! (who supervises the run), `started.json` and `exit.json` (written by the shim), `output.log` (the job's own
//! output) and `shim.log` (the supervisor's notes). The files are the truth about a run: an agent that restarts
//! learns everything from them. This module must never start, signal or wait for a process.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use ferry_api::agent::{Assignment, RunEnd, RunRef};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The folder under the data directory that holds one directory per run.
pub(crate) const RUNS_DIR: &str = "runs";
/// The prefix of a run directory whose end the server has acknowledged.
pub(crate) const DONE_PREFIX: &str = ".done-";
pub(crate) const SPEC_FILE: &str = "spec.json";
pub(crate) const SHIM_FILE: &str = "shim.json";
pub(crate) const STARTED_FILE: &str = "started.json";
pub(crate) const EXIT_FILE: &str = "exit.json";
pub(crate) const OUTPUT_FILE: &str = "output.log";
pub(crate) const SHIM_LOG_FILE: &str = "shim.log";

/// Written by the shim right after the job's process started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Started {
    pub pid: u32,
    pub started_at_us: i64,
    /// How the run's limits are enforced (`cgroup-v1`, `cgroup-v2`, or `none`: measured only). It can differ from
    /// the node's mode when the run's group could not be made.
    #[serde(default)]
    pub limits: String,
}

/// Written by the shim once the job's whole process group is gone; the last file a run gets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Exit {
    pub end: RunEnd,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub finished_at_us: i64,
    pub message: Option<String>,
}

/// A process, named so that a reused pid is not mistaken for it: the pid, when it started (in clock ticks after
/// boot, from `/proc/<pid>/stat`) and which boot that was.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ProcessIdentity {
    pub pid: u32,
    pub start_ticks: u64,
    pub boot_id: String,
}

impl ProcessIdentity {
    /// The identity of a live process, or `None` when it is gone.
    pub fn of(pid: u32) -> Option<ProcessIdentity> {
        let stat = read_proc_stat(pid)?;
        Some(ProcessIdentity { pid, start_ticks: stat.start_ticks, boot_id: boot_id() })
    }

    /// Whether this very process still runs. A zombie counts as gone: it will never do anything again.
    pub fn is_alive(&self) -> bool {
        if self.boot_id != boot_id() {
            return false;
        }
        match read_proc_stat(self.pid) {
            Some(stat) => stat.start_ticks == self.start_ticks && stat.state != 'Z' && stat.state != 'X',
            None => false,
        }
    }
}

struct ProcStat {
    state: char,
    start_ticks: u64,
}

/// Reads the state and start time of a process. The command name (field 2) may hold spaces and parentheses, so the
/// fields are counted from the last `)`.
fn read_proc_stat(pid: u32) -> Option<ProcStat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command name come field 3 (state) onwards, so field N is at index N - 3.
    let state = fields.first()?.chars().next()?;
    let start_ticks = fields.get(22 - 3)?.parse().ok()?;
    Some(ProcStat { state, start_ticks })
}

/// The kernel's id of this boot; empty where the kernel does not say, which then matches any boot.
fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// The current time in microseconds since the Unix epoch, as the wire types carry it.
pub(crate) fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// The directory name of a run: `<job>-<attempt>`, and `<job>-<attempt>-r<rank>` for a gang's other workers.
pub(crate) fn dir_name(run: RunRef) -> String {
    match run.rank {
        0 => format!("{}-{}", run.job_id, run.attempt),
        rank => format!("{}-{}-r{rank}", run.job_id, run.attempt),
    }
}

/// Reads a run back from its directory name; `None` for anything else found in the runs folder.
pub(crate) fn parse_dir_name(name: &str) -> Option<RunRef> {
    fn number(text: &str) -> Option<&str> {
        (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())).then_some(text)
    }
    let (job, rest) = name.split_once('-')?;
    let (attempt, rank) = match rest.split_once("-r") {
        Some((attempt, rank)) => (attempt, number(rank)?.parse().ok()?),
        None => (rest, 0),
    };
    Some(RunRef { job_id: number(job)?.parse().ok()?, attempt: number(attempt)?.parse().ok()?, rank })
}

/// One run's directory.
#[derive(Clone, Debug)]
pub(crate) struct RunDir {
    path: PathBuf,
}

impl RunDir {
    pub fn new(path: impl Into<PathBuf>) -> RunDir {
        RunDir { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn read_spec(&self) -> io::Result<Assignment> {
        read_json(&self.file(SPEC_FILE))
    }

    /// `Ok(None)` while the file does not exist yet.
    pub fn read_started(&self) -> io::Result<Option<Started>> {
        read_json_if_exists(&self.file(STARTED_FILE))
    }

    /// The run's end, its message cut at the wire's limit (a failure can say more than a report may carry).
    pub fn read_exit(&self) -> io::Result<Option<Exit>> {
        let mut exit: Option<Exit> = read_json_if_exists(&self.file(EXIT_FILE))?;
        if let Some(Exit { message: Some(message), .. }) = &mut exit {
            *message = ferry_api::text::cut(message, ferry_api::agent::RUN_MESSAGE_CHARS_MAX);
        }
        Ok(exit)
    }

    pub fn read_shim(&self) -> io::Result<Option<ProcessIdentity>> {
        read_json_if_exists(&self.file(SHIM_FILE))
    }

    /// How many bytes of output the job has written so far.
    pub fn output_bytes(&self) -> u64 {
        fs::metadata(self.file(OUTPUT_FILE)).map(|m| m.len()).unwrap_or(0)
    }
}

fn read_json<T: DeserializeOwned>(path: &Path) -> io::Result<T> {
    let bytes = fs::read(path)?;
    serde_json::from_slice(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn read_json_if_exists<T: DeserializeOwned>(path: &Path) -> io::Result<Option<T>> {
    match read_json(path) {
        Ok(value) => Ok(Some(value)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes a JSON file in place, for files nobody reads until the write is done.
pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    fs::write(path, bytes)
}

/// Writes JSON to a temporary file and renames it into place, so a reader sees the whole file or none of it, even
/// if the writer dies halfway. It does not fsync: a power cut ends every run anyway, a file it leaves unreadable
/// reads as a supervisor that died, and a sync per file would cost more than starting the job.
pub(crate) fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    fs::File::create(&tmp)?.write_all(&bytes)?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_dir_names_round_trip_and_reject_strangers() {
        let run = RunRef::new(42, 3);
        assert_eq!(dir_name(run), "42-3");
        assert_eq!(parse_dir_name("42-3"), Some(run));
        let worker = RunRef { rank: 2, ..run };
        assert_eq!(dir_name(worker), "42-3-r2");
        assert_eq!(parse_dir_name("42-3-r2"), Some(worker));
        for name in
            [".done-42-3", "42", "42-", "-3", "a-3", "42-3.tmp", "42-+3", "+42-3", "42-3-r", "42-3-rx", "42-3-r-1"]
        {
            assert_eq!(parse_dir_name(name), None, "{name}");
        }
    }

    #[test]
    fn identity_tells_this_process_from_a_reused_pid() {
        let me = ProcessIdentity::of(std::process::id()).expect("this process exists");
        assert!(me.is_alive());
        let reused = ProcessIdentity { start_ticks: me.start_ticks + 1, ..me.clone() };
        assert!(!reused.is_alive());
        let other_boot = ProcessIdentity { boot_id: "another boot".into(), ..me };
        assert!(!other_boot.is_alive());
    }

    #[test]
    fn atomic_json_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STARTED_FILE);
        let started = Started { pid: 7, started_at_us: 1, limits: "none".into() };
        write_json_atomic(&path, &started).unwrap();
        let run = RunDir::new(dir.path());
        assert_eq!(run.read_started().unwrap(), Some(started));
        assert_eq!(run.read_exit().unwrap(), None);
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from(STARTED_FILE)]);
    }
}
