//! The store's one error type. Every message says what is wrong and what to do about it.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TsdbError {
    /// A file operation failed; nothing half-done is left behind that recovery cannot handle.
    #[error(
        "could not {action} {path}: {source}; check that the directory exists, is writable and the disk is not full"
    )]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A file the store wrote does not read back as written (not a torn tail, which recovery repairs itself).
    #[error(
        "{path} is corrupt: {reason}; stop the server and move that file out of the directory (the data it held is \
         lost) or restore the directory from a backup"
    )]
    Corrupt { path: PathBuf, reason: String },
    /// The query would return more points per series than [`crate::MAX_POINTS_PER_SERIES`].
    #[error(
        "the query asks for {points} points per series, more than the limit of {limit}; ask for a step of at least \
         {suggested_step_us} us ({} s) or a shorter time range",
        suggested_step_us / 1_000_000
    )]
    TooManyPoints { points: u64, limit: u64, suggested_step_us: i64 },
    /// The query itself makes no sense (an empty range, a step that is not positive, no metric).
    #[error("bad query: {reason}")]
    BadQuery { reason: String },
}

impl TsdbError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> TsdbError {
        let path = path.into();
        move |source| TsdbError::Io { action, path, source }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, reason: impl Into<String>) -> TsdbError {
        TsdbError::Corrupt { path: path.into(), reason: reason.into() }
    }
}
