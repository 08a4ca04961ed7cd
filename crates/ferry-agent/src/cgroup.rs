//! Control groups: finding out whether this machine lets the agent enforce a run's CPU and memory limits, and
//! making, filling and removing one run's group.
//!
//! Ferry keeps its groups under a `ferry` group at the top of each hierarchy, apart from the agent's own group, so
//! that restarting the agent (or its service) never takes the runs down with it. This module must never decide
//! what to do when a limit cannot be set: it reports, and the shim carries on measuring only.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Where the cgroup filesystems are mounted.
pub(crate) const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The environment variable that forces a mode; `none` is the only value it knows.
pub(crate) const MODE_ENV: &str = "FERRY_CGROUP";
/// The group under which every run's group is made.
pub(crate) const FERRY_GROUP: &str = "ferry";
/// The CFS period the CPU quota is expressed in: 100 ms, the kernel's default.
const CFS_PERIOD_US: u64 = 100_000;
/// The smallest CFS quota the kernel accepts.
const CFS_QUOTA_US_MIN: u64 = 1_000;
/// How long removing a run's group waits for its last processes to leave after they were killed.
const REMOVE_WAIT_MS_MAX: u64 = 2_000;
/// How often removal looks again while it waits.
const REMOVE_POLL_MS: u64 = 20;

/// How this machine's limits are enforced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    V2,
    V1,
    /// Limits are not enforced; runs are only measured.
    None,
}

impl Mode {
    /// The name the node reports to the server.
    pub fn name(self) -> &'static str {
        match self {
            Mode::V2 => "cgroup-v2",
            Mode::V1 => "cgroup-v1",
            Mode::None => "none",
        }
    }
}

/// The outcome of looking at the machine: the mode, and why it is `None` when it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Detection {
    pub mode: Mode,
    pub why_none: Option<String>,
}

/// The limits one run's group gets; zero means no limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    pub memory_bytes: u64,
    pub cpu_millis: u64,
}

/// Looks at this machine's cgroup filesystems, honouring `FERRY_CGROUP=none`.
pub(crate) fn detect() -> Detection {
    let forced_none = std::env::var(MODE_ENV).is_ok_and(|v| v == "none");
    if forced_none {
        return Detection { mode: Mode::None, why_none: Some(format!("{MODE_ENV}=none is set")) };
    }
    detect_at(Path::new(CGROUP_ROOT))
}

/// Looks for cgroup v2 first (a unified hierarchy with the memory and cpu controllers at `root`), then v1 (separate
/// `memory` and `cpu` hierarchies), and makes the `ferry` group in each, since a mode is only usable if it can be.
pub(crate) fn detect_at(root: &Path) -> Detection {
    let v2 = match try_v2(root) {
        Ok(()) => return Detection { mode: Mode::V2, why_none: None },
        Err(why) => why,
    };
    match try_v1(root) {
        Ok(()) => Detection { mode: Mode::V1, why_none: None },
        Err(v1) => Detection { mode: Mode::None, why_none: Some(format!("{v2}; {v1}")) },
    }
}

fn try_v2(root: &Path) -> Result<(), String> {
    let controllers_file = root.join("cgroup.controllers");
    let controllers =
        fs::read_to_string(&controllers_file).map_err(|_| format!("no cgroup v2 hierarchy at {}", root.display()))?;
    let has = |name: &str| controllers.split_whitespace().any(|c| c == name);
    if !(has("memory") && has("cpu")) {
        return Err(format!("cgroup v2 at {} lacks the memory or cpu controller", root.display()));
    }
    let ferry = root.join(FERRY_GROUP);
    make_dir(&ferry).map_err(|e| format!("cannot create {}: {e}", ferry.display()))?;
    // Children only get a controller if every ancestor passes it down.
    for dir in [root, ferry.as_path()] {
        let file = dir.join("cgroup.subtree_control");
        let enabled = fs::read_to_string(&file).unwrap_or_default();
        let has_both = ["memory", "cpu"].iter().all(|c| enabled.split_whitespace().any(|e| e == *c));
        if !has_both {
            fs::write(&file, "+memory +cpu")
                .map_err(|e| format!("cannot enable memory and cpu in {}: {e}", file.display()))?;
        }
    }
    Ok(())
}

fn try_v1(root: &Path) -> Result<(), String> {
    for controller in ["memory", "cpu"] {
        let dir = root.join(controller);
        if !dir.is_dir() {
            return Err(format!("no cgroup v1 {controller} hierarchy at {}", dir.display()));
        }
        let ferry = dir.join(FERRY_GROUP);
        make_dir(&ferry).map_err(|e| format!("cannot create {}: {e}", ferry.display()))?;
    }
    Ok(())
}

fn make_dir(path: &Path) -> io::Result<()> {
    match fs::create_dir(path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}

/// The files to write for `limits`, relative to the group directory with the given controller (`None` for v2's
/// single directory), in the order the kernel needs them: the period before the quota.
pub(crate) fn limit_writes(mode: Mode, limits: Limits) -> Vec<(Option<&'static str>, &'static str, String)> {
    let mut writes = Vec::new();
    let quota_us = (limits.cpu_millis * CFS_PERIOD_US / 1000).max(CFS_QUOTA_US_MIN);
    match mode {
        Mode::V1 => {
            if limits.memory_bytes > 0 {
                writes.push((Some("memory"), "memory.limit_in_bytes", limits.memory_bytes.to_string()));
            }
            if limits.cpu_millis > 0 {
                writes.push((Some("cpu"), "cpu.cfs_period_us", CFS_PERIOD_US.to_string()));
                writes.push((Some("cpu"), "cpu.cfs_quota_us", quota_us.to_string()));
            }
        }
        Mode::V2 => {
            if limits.memory_bytes > 0 {
                writes.push((None, "memory.max", limits.memory_bytes.to_string()));
            }
            if limits.cpu_millis > 0 {
                writes.push((None, "cpu.max", format!("{quota_us} {CFS_PERIOD_US}")));
            }
        }
        Mode::None => {}
    }
    writes
}

/// One run's group: a directory per hierarchy (two under v1, one under v2).
#[derive(Debug)]
pub(crate) struct JobCgroup {
    mode: Mode,
    /// `(controller, directory)`; the controller is `None` under v2.
    dirs: Vec<(Option<&'static str>, PathBuf)>,
    /// The groups this process was in when it made this one, one per entry of `dirs`, to go back to at the end.
    origins: Vec<PathBuf>,
}

impl JobCgroup {
    /// Makes the group `ferry/<name>` in every hierarchy of `mode` and sets its limits. A group left behind by a
    /// supervisor that died is reused.
    pub fn create(root: &Path, mode: Mode, name: &str, limits: Limits) -> io::Result<JobCgroup> {
        let dirs: Vec<(Option<&'static str>, PathBuf)> = match mode {
            Mode::V1 => {
                ["memory", "cpu"].into_iter().map(|c| (Some(c), root.join(c).join(FERRY_GROUP).join(name))).collect()
            }
            Mode::V2 => vec![(None, root.join(FERRY_GROUP).join(name))],
            Mode::None => return Err(io::Error::other("limits are not enforced on this machine")),
        };
        let origins = dirs
            .iter()
            .map(|(controller, dir)| {
                let mount = mount_of(dir);
                match own_cgroup_path(*controller) {
                    Some(path) => mount.join(path.trim_start_matches('/')),
                    None => mount,
                }
            })
            .collect();
        let group = JobCgroup { mode, dirs, origins };
        let made = group.make_and_limit(limits);
        if let Err(e) = made {
            let _ = group.remove_dirs(Duration::ZERO);
            return Err(e);
        }
        Ok(group)
    }

    fn make_and_limit(&self, limits: Limits) -> io::Result<()> {
        for (_, dir) in &self.dirs {
            make_dir(dir).map_err(|e| with_path(e, dir))?;
        }
        for (controller, file, value) in limit_writes(self.mode, limits) {
            let path = self.dir(controller).join(file);
            fs::write(&path, &value).map_err(|e| with_path(e, &path))?;
        }
        Ok(())
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    fn dir(&self, controller: Option<&str>) -> &Path {
        let found = self.dirs.iter().find(|(c, _)| *c == controller);
        &found.expect("limit_writes names only this mode's controllers").1
    }

    /// Moves a process into the group; its children are born in it.
    pub fn add_process(&self, pid: u32) -> io::Result<()> {
        for (_, dir) in &self.dirs {
            let procs = dir.join("cgroup.procs");
            fs::write(&procs, pid.to_string()).map_err(|e| with_path(e, &procs))?;
        }
        Ok(())
    }

    /// How many times the kernel killed a process of this group for going over its memory limit.
    pub fn oom_kills(&self) -> u64 {
        let (file, key) = match self.mode {
            Mode::V1 => (self.dir(Some("memory")).join("memory.oom_control"), "oom_kill"),
            _ => (self.dir(None).join("memory.events"), "oom_kill"),
        };
        let text = fs::read_to_string(file).unwrap_or_default();
        text.lines()
            .filter_map(|line| line.split_once(' '))
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Takes this process back to the groups it came from, kills anything still in the group (a daemon the job
    /// left behind would otherwise hold its GPUs), and removes the group's directories.
    pub fn remove(self) -> io::Result<()> {
        self.leave();
        self.remove_dirs(Duration::from_millis(REMOVE_WAIT_MS_MAX))
    }

    /// Moves this process to the group it was in before, or to the top of the hierarchy if that is gone.
    fn leave(&self) {
        let me = std::process::id().to_string();
        for ((_, dir), origin) in self.dirs.iter().zip(&self.origins) {
            if fs::write(origin.join("cgroup.procs"), &me).is_err() {
                let _ = fs::write(mount_of(dir).join("cgroup.procs"), &me);
            }
        }
    }

    fn remove_dirs(&self, wait: Duration) -> io::Result<()> {
        let deadline = Instant::now() + wait;
        for (_, dir) in &self.dirs {
            loop {
                kill_members(dir);
                match fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e) if Instant::now() >= deadline => return Err(with_path(e, dir)),
                    // A killed process leaves its group a moment after the signal.
                    Err(_) => thread::sleep(Duration::from_millis(REMOVE_POLL_MS)),
                }
            }
        }
        Ok(())
    }
}

/// Removes what is left of the run group `name` in any hierarchy (after its supervisor died), killing whatever
/// still runs in it. A group that does not exist is not an error.
pub(crate) fn remove_leftover(name: &str) -> io::Result<()> {
    let root = Path::new(CGROUP_ROOT);
    let candidates = [root.join("memory"), root.join("cpu"), root.to_path_buf()];
    let dirs = candidates
        .iter()
        .map(|mount| (None, mount.join(FERRY_GROUP).join(name)))
        .filter(|(_, dir)| dir.is_dir())
        .collect();
    JobCgroup { mode: Mode::None, dirs, origins: Vec::new() }.remove_dirs(Duration::from_millis(REMOVE_WAIT_MS_MAX))
}

/// The top of the hierarchy a run's group `<mount>/ferry/<name>` lives in.
fn mount_of(dir: &Path) -> PathBuf {
    dir.parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_default()
}

/// SIGKILLs every process left in a group, except this one.
fn kill_members(dir: &Path) {
    let me = std::process::id();
    let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    for pid in procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()).filter(|p| *p != me) {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
}

/// This process's group in the hierarchy holding `controller` (`None`: the v2 hierarchy), from `/proc/self/cgroup`.
fn own_cgroup_path(controller: Option<&str>) -> Option<String> {
    let text = fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let matches = match controller {
            Some(name) => controllers.split(',').any(|c| c == name),
            None => controllers.is_empty(),
        };
        matches.then(|| path.to_string())
    })
}

fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { memory_bytes: 256 << 20, cpu_millis: 1500 };

    fn read(path: &Path) -> String {
        fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).trim().to_string()
    }

    #[test]
    fn limit_values_follow_the_kernel_conventions() {
        let v1 = limit_writes(Mode::V1, LIMITS);
        assert_eq!(
            v1,
            vec![
                (Some("memory"), "memory.limit_in_bytes", "268435456".to_string()),
                (Some("cpu"), "cpu.cfs_period_us", "100000".to_string()),
                (Some("cpu"), "cpu.cfs_quota_us", "150000".to_string()),
            ]
        );
        let v2 = limit_writes(Mode::V2, LIMITS);
        assert_eq!(
            v2,
            vec![(None, "memory.max", "268435456".to_string()), (None, "cpu.max", "150000 100000".to_string())]
        );
        // A tiny CPU share still gets the smallest quota the kernel takes; zero means no limit at all.
        let tiny = limit_writes(Mode::V1, Limits { memory_bytes: 0, cpu_millis: 1 });
        assert_eq!(tiny[1].2, "1000");
        assert!(limit_writes(Mode::V2, Limits { memory_bytes: 0, cpu_millis: 0 }).is_empty());
        assert!(limit_writes(Mode::None, LIMITS).is_empty());
    }

    #[test]
    fn detection_prefers_v2_then_v1_then_says_why_not() {
        let empty = tempfile::tempdir().unwrap();
        let none = detect_at(empty.path());
        assert_eq!(none.mode, Mode::None);
        let why = none.why_none.unwrap();
        assert!(why.contains("no cgroup v2 hierarchy") && why.contains("no cgroup v1 memory hierarchy"), "{why}");

        let v1 = tempfile::tempdir().unwrap();
        fs::create_dir(v1.path().join("memory")).unwrap();
        fs::create_dir(v1.path().join("cpu")).unwrap();
        assert_eq!(detect_at(v1.path()), Detection { mode: Mode::V1, why_none: None });
        assert!(v1.path().join("memory/ferry").is_dir() && v1.path().join("cpu/ferry").is_dir());

        let v2 = tempfile::tempdir().unwrap();
        fs::write(v2.path().join("cgroup.controllers"), "cpuset cpu io memory pids\n").unwrap();
        assert_eq!(detect_at(v2.path()), Detection { mode: Mode::V2, why_none: None });
        assert_eq!(read(&v2.path().join("ferry/cgroup.subtree_control")), "+memory +cpu");

        let v2_without_cpu = tempfile::tempdir().unwrap();
        fs::write(v2_without_cpu.path().join("cgroup.controllers"), "memory pids\n").unwrap();
        let why = detect_at(v2_without_cpu.path()).why_none.unwrap();
        assert!(why.contains("lacks the memory or cpu controller"), "{why}");
    }

    /// Makes a real group on whatever this machine offers and checks the limit files the kernel now holds.
    #[test]
    fn a_job_group_carries_its_limits_on_this_machine() {
        let detection = detect_at(Path::new(CGROUP_ROOT));
        let name = format!("job-unit-test-{}", std::process::id());
        let root = Path::new(CGROUP_ROOT);
        match detection.mode {
            Mode::V1 => {
                let group = JobCgroup::create(root, Mode::V1, &name, LIMITS).unwrap();
                let memory = root.join("memory/ferry").join(&name);
                let cpu = root.join("cpu/ferry").join(&name);
                assert_eq!(read(&memory.join("memory.limit_in_bytes")), "268435456");
                assert_eq!(read(&cpu.join("cpu.cfs_period_us")), "100000");
                assert_eq!(read(&cpu.join("cpu.cfs_quota_us")), "150000");
                assert_eq!(group.oom_kills(), 0);
                group.remove().unwrap();
                assert!(!memory.exists() && !cpu.exists());
            }
            Mode::V2 => {
                let group = JobCgroup::create(root, Mode::V2, &name, LIMITS).unwrap();
                let dir = root.join("ferry").join(&name);
                assert_eq!(read(&dir.join("memory.max")), "268435456");
                assert_eq!(read(&dir.join("cpu.max")), "150000 100000");
                group.remove().unwrap();
                assert!(!dir.exists());
            }
            Mode::None => {
                let why = detection.why_none.expect("a machine without limits says why");
                assert!(!why.is_empty());
                let refused = JobCgroup::create(root, Mode::None, &name, LIMITS).unwrap_err();
                assert!(refused.to_string().contains("not enforced"));
            }
        }
    }
}
