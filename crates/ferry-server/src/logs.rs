//! Job output on the server's disk: one file per run, appended at the offsets agents send, read from any offset.
//!
//! Appends are idempotent by offset: bytes the server already holds are skipped, so an agent may resend after any
//! failure. The file is the record; nothing of it is kept in memory.
//!
//! A run keeps at most `max_bytes` of output on the server (`[logs] max_bytes_per_run`, 1 GiB by default): past it
//! one line says where the output was cut, and the rest is acknowledged (so the agent ships on and reports the end)
//! but not written. A `.cut` file beside the log then holds how far the agent's output went, which is what `size`
//! answers from then on.

use std::path::{Path, PathBuf};

use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

/// The most output of one run the server keeps unless configured otherwise.
pub const RUN_BYTES_MAX_DEFAULT: u64 = 1 << 30;

pub struct LogStore {
    dir: PathBuf,
    /// Serialises appends, so two uploads for one run can never interleave.
    append: Mutex<()>,
    max_bytes: u64,
}

impl LogStore {
    pub fn new(dir: PathBuf, max_bytes: u64) -> LogStore {
        LogStore { dir, append: Mutex::new(()), max_bytes }
    }

    fn cut_path(path: &Path) -> PathBuf {
        let mut name = path.as_os_str().to_owned();
        name.push(".cut");
        PathBuf::from(name)
    }

    /// How many bytes the file holds, and how far the agent's output went if it was cut. Only a file past the limit
    /// (its kept output and the notice) can have been cut, so the usual upload costs one `stat`, no second file.
    async fn held(&self, path: &Path) -> (u64, Option<u64>) {
        let held = file_size(path).await;
        if held <= self.max_bytes {
            return (held, None);
        }
        let cut = tokio::fs::read_to_string(Self::cut_path(path)).await.ok().and_then(|t| t.trim().parse().ok());
        (held, cut)
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

    /// How many bytes of the run's output the server has taken: those it holds, or, once the output was cut, how far
    /// the agent's output went (the agent resumes from here).
    pub async fn size(&self, job: u64, attempt: u32, rank: u32) -> u64 {
        let (held, cut) = self.held(&self.path(job, attempt, rank)).await;
        cut.unwrap_or(held)
    }

    /// How many bytes of the run's output are in its file (the cut notice included), for readers.
    pub async fn stored_size(&self, job: u64, attempt: u32, rank: u32) -> u64 {
        file_size(&self.path(job, attempt, rank)).await
    }

    /// Removes all of a job's stored output (every attempt and worker, with their `.cut` files), for the retention
    /// sweep; `false` when there was none.
    pub async fn remove_job(&self, job: u64) -> std::io::Result<bool> {
        match tokio::fs::remove_dir_all(self.dir.join(job.to_string())).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Writes `bytes`, which start at byte `offset` of the run's output, and returns how many bytes are held after.
    /// An upload past the end (a gap) writes nothing: the answer tells the agent where to resume.
    pub async fn append(&self, job: u64, attempt: u32, rank: u32, offset: u64, bytes: &[u8]) -> std::io::Result<u64> {
        let _guard = self.append.lock().await;
        let path = self.path(job, attempt, rank);
        let end = offset + bytes.len() as u64;
        let (held, cut) = self.held(&path).await;
        if let Some(taken) = cut {
            // Cut already: take what follows on from where the agent was, write nothing.
            if offset > taken || end <= taken {
                return Ok(taken);
            }
            tokio::fs::write(Self::cut_path(&path), end.to_string()).await?;
            return Ok(end);
        }
        if offset > held || end <= held {
            return Ok(held);
        }
        let fresh = &bytes[(held - offset) as usize..];
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        let mut file = tokio::fs::OpenOptions::new().create(true).append(true).open(&path).await?;
        let room = self.max_bytes.saturating_sub(held);
        if fresh.len() as u64 <= room {
            file.write_all(fresh).await?;
            file.flush().await?;
            return Ok(held + fresh.len() as u64);
        }
        // Over the limit: keep what fits, say where it was cut, and remember how far the agent's output went.
        let kept = &fresh[..room as usize];
        file.write_all(kept).await?;
        let newline = if kept.last().is_some_and(|b| *b != b'\n') || (kept.is_empty() && held > 0) { "\n" } else { "" };
        let notice = format!(
            "{newline}ferry: output cut at {} ({} bytes): the server keeps at most that much of a run's output \
             ([logs] max_bytes_per_run); the rest was discarded while the job ran on\n",
            ferry_units::format_bytes(self.max_bytes),
            self.max_bytes
        );
        file.write_all(notice.as_bytes()).await?;
        file.flush().await?;
        tokio::fs::write(Self::cut_path(&path), end.to_string()).await?;
        Ok(end)
    }
}

async fn file_size(path: &Path) -> u64 {
    tokio::fs::metadata(path).await.map(|m| m.len()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn output_past_the_limit_is_cut_with_a_notice_and_still_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogStore::new(dir.path().to_path_buf(), 10);
        assert_eq!(logs.append(1, 0, 0, 0, b"hello\n").await.unwrap(), 6);
        // Crosses the limit: four bytes fit, the rest is acknowledged and dropped.
        assert_eq!(logs.append(1, 0, 0, 6, b"world, again\n").await.unwrap(), 19);
        let text = std::fs::read_to_string(logs.path(1, 0, 0)).unwrap();
        assert!(text.starts_with("hello\nworl\nferry: output cut at 10B (10 bytes)"), "{text:?}");
        assert_eq!(logs.size(1, 0, 0).await, 19, "the agent resumes where its output went");
        assert_eq!(logs.stored_size(1, 0, 0).await, text.len() as u64);
        // More output goes on being taken, idempotently, and never written.
        assert_eq!(logs.append(1, 0, 0, 19, b"more").await.unwrap(), 23);
        assert_eq!(logs.append(1, 0, 0, 0, b"hello\n").await.unwrap(), 23, "a resend changes nothing");
        assert_eq!(logs.append(1, 0, 0, 40, b"gap").await.unwrap(), 23, "a gap is refused with where to resume");
        assert_eq!(std::fs::read_to_string(logs.path(1, 0, 0)).unwrap(), text);
        // The retention sweep removes every run of the job, the cut file too, and nothing of another job.
        logs.append(2, 0, 0, 0, b"other\n").await.unwrap();
        assert!(logs.remove_job(1).await.unwrap());
        assert!(!logs.remove_job(1).await.unwrap(), "removing nothing is not an error");
        assert!(!logs.path(1, 0, 0).parent().unwrap().exists());
        assert_eq!(logs.stored_size(2, 0, 0).await, 6);
    }
}
