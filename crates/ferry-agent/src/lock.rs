//! The data directory's lock: two agents sharing one data directory would adopt, report and archive each other's
//! runs, so the second one refuses to start.
//!
//! The lock is an `flock` on `agent.lock`, which the kernel releases when the holder dies, however it dies; the file
//! also names the holder's pid for the error message. This module must never remove the file: a removed lock file
//! would let a second agent lock a new file while the first still holds the old one.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::AgentError;

pub(crate) const LOCK_FILE: &str = "agent.lock";

/// Held for the agent's lifetime; dropping it releases the lock.
#[derive(Debug)]
pub(crate) struct DataDirLock {
    _lock: Flock<File>,
}

impl DataDirLock {
    pub fn acquire(data_dir: &Path) -> Result<DataDirLock, AgentError> {
        let path = data_dir.join(LOCK_FILE);
        let io_error = |what: &str, source| AgentError::Io { what: format!("{what} {}", path.display()), source };
        // The file is opened with close-on-exec (Rust's default), so supervisors the agent starts do not inherit it.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io_error("cannot open the lock file", e))?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut file, Errno::EWOULDBLOCK)) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(AgentError::Locked { pid: text.trim().parse().ok(), data_dir: data_dir.to_path_buf() });
            }
            Err((_, errno)) => return Err(io_error("cannot lock", std::io::Error::from(errno))),
        };
        let written =
            lock.set_len(0).and_then(|()| lock.rewind()).and_then(|()| writeln!(lock, "{}", std::process::id()));
        written.map_err(|e| io_error("cannot write", e))?;
        Ok(DataDirLock { _lock: lock })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_agent_is_told_who_holds_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path()).unwrap();
        let error = DataDirLock::acquire(dir.path()).unwrap_err().to_string();
        let expected = format!("another agent (pid {}) is using {}", std::process::id(), dir.path().display());
        assert!(error.starts_with(&expected), "{error}");
        drop(first);
        DataDirLock::acquire(dir.path()).expect("a released lock can be taken again");
    }
}
