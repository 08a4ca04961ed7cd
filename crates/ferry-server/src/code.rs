//! Shipped code on the server's disk: one file per archive, named by its SHA-256, so identical uploads are stored
//! once.
//!
//! An upload is streamed to a temporary file in the same folder, hashed while it is written and checked against
//! the digest it claims, then renamed into place: a reader never sees half an archive, and a wrong or oversized
//! upload leaves nothing behind. This module never looks inside an archive; agents check the entries as they
//! unpack.

use std::collections::HashSet;
use std::io;
use std::path::PathBuf;
use std::time::SystemTime;

use bytes::Bytes;
use ferry_api::code::CODE_ARCHIVE_BYTES_MAX;
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// Why an upload was not stored.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("the archive is larger than the limit of {} MiB", CODE_ARCHIVE_BYTES_MAX >> 20)]
    TooLarge,
    #[error("the archive's SHA-256 is {actual}, not the {claimed} it was uploaded as; upload it again")]
    DigestMismatch { claimed: String, actual: String },
    #[error("the upload broke off: {0}")]
    Body(String),
    #[error("cannot store the archive: {0}")]
    Io(#[from] io::Error),
}

pub struct CodeStore {
    dir: PathBuf,
}

impl CodeStore {
    pub fn new(dir: PathBuf) -> CodeStore {
        CodeStore { dir }
    }

    /// Where the archive with this digest lives; the digest must already be checked with `is_sha256`.
    pub fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}.tar.gz"))
    }

    /// The size of the stored archive, or `None` when the server does not hold it. Asking marks it used (its
    /// modification time), as the CLI asks before each submission: the retention sweep keeps what was used lately.
    pub async fn size(&self, sha256: &str) -> Option<u64> {
        let path = self.path(sha256);
        let size = tokio::fs::metadata(&path).await.ok().filter(|m| m.is_file()).map(|m| m.len())?;
        let _ = std::fs::File::options().write(true).open(&path).and_then(|f| f.set_modified(SystemTime::now()));
        Some(size)
    }

    /// Deletes the archives not used since `before` and not in `keep` (those of unfinished jobs); returns how many.
    pub fn sweep(&self, before: SystemTime, keep: &HashSet<String>) -> io::Result<u64> {
        let mut removed = 0;
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(sha256) = name.strip_suffix(".tar.gz") else { continue };
            if keep.contains(sha256) || entry.metadata()?.modified()? >= before {
                continue;
            }
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
        Ok(removed)
    }

    /// Streams an upload into place. Returns the stored size and whether it was new.
    pub async fn put<S, E>(&self, sha256: &str, body: S) -> Result<(u64, bool), UploadError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        if let Some(size) = self.size(sha256).await {
            return Ok((size, false));
        }
        let temp = tempfile::Builder::new().prefix(".upload-").tempfile_in(&self.dir).map_err(UploadError::Io)?;
        let (file, temp_path) = temp.into_parts();
        let mut file = tokio::fs::File::from_std(file);
        let written = write_hashed(&mut file, body).await;
        let (size, actual) = match written {
            Ok(done) => done,
            Err(e) => {
                drop(temp_path);
                return Err(e);
            }
        };
        if actual != sha256 {
            return Err(UploadError::DigestMismatch { claimed: sha256.to_string(), actual });
        }
        file.sync_all().await?;
        // Two identical uploads may race; either rename leaves the same bytes in place.
        temp_path.persist(self.path(sha256)).map_err(|e| UploadError::Io(e.error))?;
        tracing::info!(sha256, size_bytes = size, "stored code archive");
        Ok((size, true))
    }
}

/// Writes the body to the file, hashing it and enforcing the size limit as it comes.
async fn write_hashed<S, E>(file: &mut tokio::fs::File, mut body: S) -> Result<(u64, String), UploadError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| UploadError::Body(e.to_string()))?;
        size += chunk.len() as u64;
        if size > CODE_ARCHIVE_BYTES_MAX {
            return Err(UploadError::TooLarge);
        }
        hasher.update(&chunk);
        file.write_all(&chunk).await?;
    }
    Ok((size, hex::encode(hasher.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_keeps_what_was_used_lately_and_what_unfinished_jobs_need() {
        let dir = tempfile::tempdir().unwrap();
        let store = CodeStore::new(dir.path().to_path_buf());
        let old = SystemTime::now() - std::time::Duration::from_secs(40 * 86_400);
        for name in ["a", "b", "c"] {
            let file = std::fs::File::create(store.path(name)).unwrap();
            file.set_modified(if name == "c" { SystemTime::now() } else { old }).unwrap();
        }
        std::fs::write(dir.path().join(".upload-x"), "partial").unwrap();
        let keep = HashSet::from(["b".to_string()]);
        let before = SystemTime::now() - std::time::Duration::from_secs(30 * 86_400);
        assert_eq!(store.sweep(before, &keep).unwrap(), 1);
        assert!(!store.path("a").exists(), "old and unused: gone");
        assert!(store.path("b").exists() && store.path("c").exists() && dir.path().join(".upload-x").exists());
    }
}
