//! A private view of the node for each job (`ferry __isolate <run-dir>`): the program the shim starts in front of a
//! job's command (not for containers, which have their own), single-threaded, before any runtime.
//!
//! It gives the job a mount namespace of its own in which the agent's data directory (every run's folder, spec and
//! output, the agent's token) and the other paths the agent was told to hide (the server's data directory under
//! `ferry up`: the admin token, the job-token key, the database) are covered by empty, read-only file systems, with
//! only the job's own working folder mounted back where it was. Then it execs the job's command, which keeps this
//! process's id, group and output.
//!
//! An agent running as root makes the namespace directly. An agent running as an ordinary user (a personal
//! `ferry up`) first makes a user namespace in which the job keeps its own user and group ids, which needs the
//! kernel to allow unprivileged user namespaces (Debian, Ubuntu and Fedora do by default). Where that is refused the
//! run does not start, and says why: running it with the data in view would hand it every other job's secrets.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use ferry_api::agent::Assignment;
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::ForkResult;
use serde::{Deserialize, Serialize};

pub(crate) const ISOLATE_SUBCOMMAND: &str = "__isolate";
/// The file under the agent's data directory that tells `ferry __isolate` what to hide. The agent writes it when it
/// starts.
pub(crate) const SETTINGS_FILE: &str = "isolation.json";
/// The exit code of a run that could not be given its private view: the shell's "cannot execute".
const CANNOT_ISOLATE: i32 = 126;
/// The descriptor on which the shim hears why a run could not start (the write end of a pipe); closed by the exec.
pub(crate) const START_ERROR_FD: i32 = 3;

/// What `ferry __isolate` hides from jobs, what it leaves in view, and whom jobs run as.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Settings {
    /// Absolute, resolved paths covered in every job's view: the agent's data directory first.
    pub hide: Vec<PathBuf>,
    /// Files inside hidden folders that jobs still see, read-only: the server's certificate authority.
    #[serde(default)]
    pub expose: Vec<PathBuf>,
    /// The unprivileged account jobs run as when the agent runs as root.
    #[serde(default)]
    pub job_user: Option<JobUser>,
    /// Ferry users whose jobs run as an account of their own (`[job_users]`), looked up when the agent started.
    #[serde(default)]
    pub users: BTreeMap<String, JobUser>,
    /// Whether a Ferry user's jobs run as the node's ordinary account of the same name (`job_users_by_name`).
    #[serde(default)]
    pub users_by_name: bool,
}

/// The lowest user id an account of the same name as a Ferry user may have to run that user's jobs: below it are
/// the system's own accounts (a Ferry user named `postgres` or `daemon` must not run as that account).
const ORDINARY_UID_MIN: u32 = 1000;
/// `nobody`, shared by whatever runs unprivileged: never a Ferry user's own account.
const NOBODY_UID: u32 = 65534;

/// An unprivileged account jobs run as.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct JobUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl JobUser {
    /// The account `name` of this machine, which must not be root.
    pub fn look_up(name: &str) -> Result<JobUser, String> {
        let user = nix::unistd::User::from_name(name)
            .map_err(|e| format!("cannot look up the account `{name}`: {e}"))?
            .ok_or_else(|| {
                format!(
                    "the agent runs as root, so jobs run as the unprivileged account `{name}`, which this machine \
                     does not have: create it (`useradd --system --no-create-home --shell /usr/sbin/nologin {name}`) \
                     or name another with `job_user` in the agent's configuration"
                )
            })?;
        if user.uid.is_root() {
            return Err(format!("`job_user`: `{name}` is root; jobs never run as root, name an unprivileged account"));
        }
        Ok(JobUser { name: name.to_string(), uid: user.uid.as_raw(), gid: user.gid.as_raw() })
    }
}

impl Settings {
    /// The account a job of Ferry user `owner` runs as under a root agent: the one `[job_users]` maps it to, else
    /// (with `job_users_by_name`) the node's ordinary account of the same name, else `job_user`.
    pub fn account_for(&self, owner: &str) -> Option<JobUser> {
        if let Some(user) = self.users.get(owner) {
            return Some(user.clone());
        }
        if self.users_by_name && !owner.is_empty() {
            let found = nix::unistd::User::from_name(owner).ok().flatten();
            let ordinary = found.filter(|u| u.uid.as_raw() >= ORDINARY_UID_MIN && u.uid.as_raw() != NOBODY_UID);
            if let Some(user) = ordinary {
                return Some(JobUser { name: user.name, uid: user.uid.as_raw(), gid: user.gid.as_raw() });
            }
        }
        self.job_user.clone()
    }

    /// The agent's data directory and the configured paths, resolved (a symlink would otherwise name another
    /// place than the one mounted over), without duplicates.
    pub fn of(data_dir: &Path, also: &[PathBuf], expose: &[PathBuf], job_user: Option<JobUser>) -> Settings {
        let mut hide: Vec<PathBuf> = Vec::new();
        for path in std::iter::once(data_dir).chain(also.iter().map(PathBuf::as_path)) {
            let resolved = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
            if !hide.contains(&resolved) {
                hide.push(resolved);
            }
        }
        let expose = expose.iter().map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone())).collect();
        Settings { hide, expose, job_user, users: BTreeMap::new(), users_by_name: false }
    }

    pub fn write(&self, data_dir: &Path) -> std::io::Result<()> {
        crate::rundir::write_json_atomic(&data_dir.join(SETTINGS_FILE), self)
    }
}

/// The entry point. The job runs in a process namespace of its own too, so it sees (in `/proc`) and can signal
/// only its own processes: this process forks the namespace's first process, which mounts the namespace's
/// `/proc`, starts the job, reaps what the job leaves, and ends with it; this process waits and ends as the job
/// did (by the same signal, or with the same code), so the shim sees the job's own end.
pub fn main(run_dir: &Path) -> i32 {
    let reporting = claim_start_pipe();
    let prepared = match prepare(run_dir) {
        Ok(prepared) => prepared,
        Err(message) => {
            return report(reporting, &format!("cannot give the run a private view of the node: {message}"))
        }
    };
    let (status_read, status_write) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(pipe) => pipe,
        Err(e) => return report(reporting, &format!("cannot make a pipe: {e}")),
    };
    // A stop (SIGTERM from the shim to the whole group) is the job's to handle; this process waits for its end.
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, Signal::SIGQUIT] {
        // SAFETY: the handler does nothing; handlers go back to their defaults at the job's exec.
        let _ = unsafe {
            sigaction(signal, &SigAction::new(SigHandler::Handler(ignore), SaFlags::empty(), SigSet::empty()))
        };
    }
    // SAFETY: single-threaded (this entry point runs before any thread or runtime starts).
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Child) => {
            drop(status_read);
            let code = first_process(&prepared, reporting, status_write);
            // SAFETY: ends the child without running the parent's exit handlers twice.
            unsafe { nix::libc::_exit(code) }
        }
        Ok(ForkResult::Parent { child }) => {
            drop(status_write);
            // The first process reports start errors itself; this one says nothing on the pipe.
            close_start_pipe();
            mirror_end(child, status_read)
        }
        Err(e) => report(reporting, &format!("cannot start the run's first process: {e}")),
    }
}

extern "C" fn ignore(_: nix::libc::c_int) {}

/// Makes the shim's start-error pipe (fd 3) close-on-exec, so that it never reaches the job and a successful exec
/// closes it with nothing said; whether this process has the pipe at all (`ferry __isolate` or `ferry __container`
/// started by hand has none).
pub(crate) fn claim_start_pipe() -> bool {
    // SAFETY: plain fcntl calls on a descriptor number; one that is not open fails harmlessly.
    unsafe { nix::libc::fcntl(START_ERROR_FD, nix::libc::F_SETFD, nix::libc::FD_CLOEXEC) == 0 }
}

/// Tells the shim the run started: closes this process's copy of the start-error pipe with nothing said.
pub(crate) fn close_start_pipe() {
    // SAFETY: closes fd 3, a number this process owns (or not open at all, which fails harmlessly).
    let _ = unsafe { nix::libc::close(START_ERROR_FD) };
}

/// Says why the run did not start, on the shim's pipe (or the output when there is none), and gives the code.
pub(crate) fn report(reporting: bool, message: &str) -> i32 {
    if reporting {
        // SAFETY: fd 3 is the pipe's write end, open (checked at start); the file takes it over and closes it.
        let mut pipe = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(START_ERROR_FD) };
        let _ = std::io::Write::write_all(&mut pipe, message.as_bytes());
    } else {
        eprintln!("ferry: {message}");
    }
    CANNOT_ISOLATE
}

/// The namespace's first process: mounts its `/proc`, starts the job, reaps every process until the job's end,
/// and writes how the job ended (`exit N` or `signal N`) on `status`.
fn first_process(prepared: &Prepared, reporting: bool, status: std::os::fd::OwnedFd) -> i32 {
    let (program, argv) = (&prepared.program, &prepared.argv);
    let proc_flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if let Err(e) = mount(Some("proc"), "/proc", Some("proc"), proc_flags, None::<&str>) {
        return report(reporting, &format!("cannot give the run a private view of the node: cannot mount /proc: {e}"));
    }
    if let (Some(user), Some(folder)) = (&prepared.user, &prepared.own_folder) {
        if let Err(e) = hand_over(folder, user.uid, user.gid) {
            return report(reporting, &format!("cannot give the run's folder to `{}`: {e}", user.name));
        }
    }
    // The job's exec closes this pipe's write end; an exec error is written on it instead.
    let (exec_read, exec_write) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(pipe) => pipe,
        Err(e) => return report(reporting, &format!("cannot make a pipe: {e}")),
    };
    // SAFETY: this process is single-threaded.
    let job = match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Child) => {
            drop(exec_read);
            let dropped = match &prepared.user {
                Some(user) => become_user(user),
                None => Ok(()),
            };
            // `execvp` searches the job's own PATH, which the shim set.
            let error = match dropped.and_then(|()| {
                nix::unistd::execvp(program, argv).map_err(|e| {
                    crate::shim::describe_spawn_error(&program.to_string_lossy(), &std::io::Error::from(e))
                })
            }) {
                Err(e) => e,
                Ok(never) => match never {},
            };
            let _ = nix::unistd::write(&exec_write, error.as_bytes());
            // SAFETY: ends the failed child at once.
            unsafe { nix::libc::_exit(CANNOT_ISOLATE) }
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => return report(reporting, &format!("cannot start the job: {e}")),
    };
    drop(exec_write);
    let mut why = String::new();
    let _ = std::io::Read::read_to_string(&mut std::fs::File::from(exec_read), &mut why);
    if !why.is_empty() {
        return report(reporting, &why);
    }
    if reporting {
        // Started: the shim hears nothing more on its pipe.
        close_start_pipe();
    }
    let mut end = String::from("exit 0");
    loop {
        match waitpid(None, None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == job => end = format!("exit {code}"),
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == job => end = format!("signal {}", signal as i32),
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => {}
            // No child left: the job and everything it started are gone.
            Err(_) => break,
        }
    }
    let _ = nix::unistd::write(&status, end.as_bytes());
    0
}

/// Drops every privilege for the job's account: its group alone, then its user id.
fn become_user(user: &JobUser) -> Result<(), String> {
    let gid = nix::unistd::Gid::from_raw(user.gid);
    nix::unistd::setgroups(&[gid]).map_err(|e| format!("cannot set the groups of `{}`: {e}", user.name))?;
    nix::unistd::setgid(gid).map_err(|e| format!("cannot become group {}: {e}", user.gid))?;
    nix::unistd::setuid(nix::unistd::Uid::from_raw(user.uid)).map_err(|e| format!("cannot become `{}`: {e}", user.name))
}

/// Gives the run's own folder (unpacked by the root agent) to the job's account, never following a symlink.
pub(crate) fn hand_over(folder: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    let (uid, gid) = (Some(uid), Some(gid));
    std::os::unix::fs::lchown(folder, uid, gid)?;
    let mut pending = vec![folder.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            std::os::unix::fs::lchown(entry.path(), uid, gid)?;
            if entry.file_type()?.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    Ok(())
}

/// Waits for the first process and ends as the job did.
fn mirror_end(first: nix::unistd::Pid, status: std::os::fd::OwnedFd) -> i32 {
    while let Err(nix::errno::Errno::EINTR) = waitpid(first, None) {}
    let mut end = String::new();
    let _ = std::io::Read::read_to_string(&mut std::fs::File::from(status), &mut end);
    let (kind, number) = end.split_once(' ').unwrap_or(("exit", "126"));
    let number: i32 = number.trim().parse().unwrap_or(CANNOT_ISOLATE);
    if kind == "signal" {
        if let Ok(signal) = Signal::try_from(number) {
            // SAFETY: restores the default action, then dies by it as the job did.
            let _ =
                unsafe { sigaction(signal, &SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty())) };
            let _ = nix::sys::signal::raise(signal);
        }
        return 128 + number;
    }
    number
}

/// What `prepare` leaves for the first process: the job's command, and the user it runs as (root agents only).
struct Prepared {
    program: CString,
    argv: Vec<CString>,
    user: Option<JobUser>,
    /// The run's own folder, handed to the job's user (a shipped run's `work` is unpacked by root).
    own_folder: Option<PathBuf>,
}

/// Makes the namespaces and mounts; returns what the job runs.
fn prepare(run_dir: &Path) -> Result<Prepared, String> {
    let spec: Assignment = read_json(&run_dir.join(crate::rundir::SPEC_FILE))?;
    let data_dir = run_dir.parent().and_then(Path::parent).ok_or("the run directory has no agent directory")?;
    let settings: Settings = read_json(&data_dir.join(SETTINGS_FILE))?;
    let c = |text: &OsStr| CString::new(text.as_bytes()).map_err(|_| "a NUL byte in the command".to_string());
    let argv: Vec<CString> = spec.command.iter().map(|a| c(OsStr::new(a))).collect::<Result<_, _>>()?;
    let program = argv.first().cloned().ok_or("the run has no command")?;
    let workdir =
        std::fs::canonicalize(&spec.workdir).map_err(|e| format!("the working directory `{}`: {e}", spec.workdir))?;
    let root = nix::unistd::geteuid().is_root();
    let user =
        if root {
            Some(settings.account_for(&spec.owner).ok_or(
                "the agent runs as root but names no unprivileged account for jobs; restart it (it writes one)",
            )?)
        } else {
            None
        };

    enter_namespaces()?;
    // Nothing mounted here reaches the node, and nothing mounted on the node later reaches here.
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .map_err(|e| format!("cannot make the mounts private: {e}"))?;
    // Outermost first; a path inside one already covered is covered with it.
    let mut roots: Vec<&PathBuf> = settings.hide.iter().filter(|p| p.is_dir()).collect();
    roots.sort_by_key(|p| p.components().count());
    let mut covered: Vec<&Path> = Vec::new();
    for hidden in roots {
        if covered.iter().any(|c| hidden.starts_with(c)) {
            continue;
        }
        if workdir == *hidden {
            return Err(format!(
                "the working directory {} is a folder jobs must not see; choose another with --workdir",
                workdir.display()
            ));
        }
        covered.push(hidden);
    }
    // What stays in view inside a covered folder: the job's working folder and the files the agent exposes (the
    // server's certificate authority). Each is reached before anything is covered.
    let mut kept = Vec::new();
    for path in std::iter::once(&workdir).chain(settings.expose.iter()) {
        if !covered.iter().any(|c| path.starts_with(c)) {
            continue;
        }
        let fd = nix::fcntl::open(
            path.as_path(),
            nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        kept.push((path.clone(), path.is_dir(), fd));
    }
    for &hidden in &covered {
        mount(
            Some("ferry-hidden"),
            hidden,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("size=64k,mode=755"),
        )
        .map_err(|e| format!("cannot cover {}: {e}", hidden.display()))?;
    }
    for (path, is_dir, fd) in &kept {
        make_mount_point(&covered, path, *is_dir)?;
        let source = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(fd));
        mount(Some(source.as_str()), path, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
            .map_err(|e| format!("cannot mount {} back into view: {e}", path.display()))?;
    }
    // The covers are read-only once what stays in view is in place.
    for &hidden in &covered {
        remount_read_only(hidden)?;
    }
    drop(kept);
    std::env::set_current_dir(&workdir).map_err(|e| format!("cannot enter {}: {e}", workdir.display()))?;
    let own_folder = workdir.starts_with(data_dir).then(|| workdir.clone());
    Ok(Prepared { program, argv, user, own_folder })
}

/// Makes the folders (and the empty file) at `path` inside the cover that hides it, for a bind mount.
fn make_mount_point(covered: &[&Path], path: &Path, is_dir: bool) -> Result<(), String> {
    let hidden = covered.iter().find(|c| path.starts_with(c)).ok_or("not covered")?;
    let mut at = hidden.to_path_buf();
    let parts: Vec<_> = path.strip_prefix(hidden).unwrap_or(Path::new("")).components().collect();
    for (i, part) in parts.iter().enumerate() {
        let Component::Normal(part) = part else { continue };
        at.push(part);
        let last = i + 1 == parts.len();
        let made = if last && !is_dir {
            std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(&at).map(drop)
        } else {
            std::fs::create_dir(&at)
        };
        match made {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("cannot make {}: {e}", at.display())),
        }
    }
    Ok(())
}

fn remount_read_only(path: &Path) -> Result<(), String> {
    let flags = MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(None::<&str>, path, None::<&str>, flags, None::<&str>)
        .map_err(|e| format!("cannot make the cover of {} read-only: {e}", path.display()))
}

/// A mount namespace; for an ordinary user, inside a user namespace in which the job keeps its ids.
fn enter_namespaces() -> Result<(), String> {
    let namespaces = CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID;
    if nix::unistd::geteuid().is_root() {
        return unshare(namespaces).map_err(|e| format!("cannot make mount and process namespaces: {e}"));
    }
    let (uid, gid) = (nix::unistd::geteuid(), nix::unistd::getegid());
    unshare(CloneFlags::CLONE_NEWUSER | namespaces).map_err(|e| {
        format!(
            "cannot make a user namespace ({e}): this kernel does not let ordinary users make them; allow it \
             (`sysctl kernel.unprivileged_userns_clone=1`, or on Ubuntu `kernel.apparmor_restrict_unprivileged_userns=0`) \
             or run the agent as root"
        )
    })?;
    let write = |file: &str, text: String| {
        std::fs::write(format!("/proc/self/{file}"), text).map_err(|e| format!("cannot write /proc/self/{file}: {e}"))
    };
    write("setgroups", "deny".to_string())?;
    write("uid_map", format!("{uid} {uid} 1"))?;
    write("gid_map", format!("{gid} {gid} 1"))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_slice(&text).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_directory_comes_first_resolved_and_once() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let settings = Settings::of(&link, &[real.clone(), PathBuf::from("/nonexistent/x")], &[], None);
        let real = std::fs::canonicalize(real).unwrap();
        assert_eq!(settings.hide, vec![real, PathBuf::from("/nonexistent/x")]);
    }
}
