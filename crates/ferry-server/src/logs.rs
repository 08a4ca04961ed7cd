//! Job output on the server's disk: one file per run, appended at the offsets agents send, read from any offset.
//!
//! Appends are idempotent by offset: bytes the server already holds are skipped, so an agent may resend after any
//! failure. The file is the record; nothing of it is kept in memory.

use std::path::{Path, PathBuf};

use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

pub struct LogStore {
    dir: PathBuf,
    /// Serialises appends, so two uploads for one run can never interleave.
    append: Mutex<()>,
}

impl LogStore {
    pub fn new(dir: PathBuf) -> LogStore {
        LogStore { dir, append: Mutex::new(()) }
    }

    /// The file of one run's output: `<job>/<attempt>.log`, and `<job>/<attempt>.rank<r>.log` for the other workers
    /// of a gang.
    pub fn path(&self, job: u64, attempt: u32, rank: u32) -> PathBuf {
        let name = match rank {
            0 => format!("{attempt}.log"),
            r => format!("{attempt}.rank{r}.log"),
        };
        self.dir.join(job.to_string()).join(name)
    }

    /// How many bytes of the run's output the server holds.
    pub async fn size(&self, job: u64, attempt: u32, rank: u32) -> u64 {
        file_size(&self.path(job, attempt, rank)).await
    }

    /// Writes `bytes`, which start at byte `offset` of the run's output, and returns how many bytes are held after.
    /// An upload past the end (a gap) writes nothing: the answer tells the agent where to resume.
    pub async fn append(&self, job: u64, attempt: u32, rank: u32, offset: u64, bytes: &[u8]) -> std::io::Result<u64> {
        let _guard = self.append.lock().await;
        let path = self.path(job, attempt, rank);
        let held = file_size(&path).await;
        if offset > held || offset + bytes.len() as u64 <= held {
            return Ok(held);
        }
        let fresh = &bytes[(held - offset) as usize..];
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        let mut file = tokio::fs::OpenOptions::new().create(true).append(true).open(&path).await?;
        file.write_all(fresh).await?;
        file.flush().await?;
        Ok(held + fresh.len() as u64)
    }
}

async fn file_size(path: &Path) -> u64 {
    tokio::fs::metadata(path).await.map(|m| m.len()).unwrap_or(0)
}
