//! Shipped code on a node: fetching an archive once into a content-addressed cache, and unpacking it into a run's
//! working directory.
//!
//! The archive comes from the server, which checked only its digest, so every entry is checked here before it is
//! written: no absolute paths, no `..`, no symlink leading out of the folder, nothing but files, folders and
//! symlinks, nothing written through a symlink, and a total size and entry count under the limits. The first bad
//! entry stops the unpacking; nothing is ever written outside the destination. This module must never start a run.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use ferry_api::code::{link_stays_inside, CODE_ARCHIVE_BYTES_MAX, CODE_ENTRIES_MAX, CODE_UNPACKED_BYTES_MAX};
use ferry_client::{Client, ClientError};
use flate2::read::GzDecoder;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// The folder under the agent's data directory that caches archives, one file per SHA-256.
pub(crate) const CODE_DIR: &str = "code";
/// The folder inside a run directory that the job runs in when it has no working directory of its own.
pub(crate) const WORK_DIR: &str = "work";

/// Why an archive could not be fetched.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("the downloaded archive's SHA-256 is {actual}, not {expected}")]
    Digest { expected: String, actual: String },
    #[error("the archive is larger than the limit of {} MiB", CODE_ARCHIVE_BYTES_MAX >> 20)]
    TooLarge,
    #[error("cannot write the archive to {path}: {source}")]
    Io { path: String, source: io::Error },
}

/// Returns the cached archive for `sha256`, downloading it first if this node does not have it yet.
/// `node` is the node the run is assigned to: the server hands an archive only to a node one of whose runs needs it.
pub(crate) async fn fetch(client: &Client, node: &str, cache: &Path, sha256: &str) -> Result<PathBuf, FetchError> {
    let path = cache.join(format!("{sha256}.tar.gz"));
    if path.is_file() {
        return Ok(path);
    }
    let io_err = |path: &Path, source| FetchError::Io { path: path.display().to_string(), source };
    tokio::fs::create_dir_all(cache).await.map_err(|e| io_err(cache, e))?;
    // A name of its own, so two runs fetching the same archive at once never write one file.
    let temp = cache.join(format!(".download-{sha256}-{}", rand_suffix()));
    let result = download(client, node, &temp, sha256).await;
    match result {
        Ok(()) => tokio::fs::rename(&temp, &path).await.map_err(|e| io_err(&path, e))?,
        Err(e) => {
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(e);
        }
    }
    tracing::info!(sha256, "fetched code archive");
    Ok(path)
}

async fn download(client: &Client, node: &str, temp: &Path, sha256: &str) -> Result<(), FetchError> {
    let io_err = |source| FetchError::Io { path: temp.display().to_string(), source };
    let mut file = tokio::fs::File::create(temp).await.map_err(io_err)?;
    let mut stream = Box::pin(client.download_code(sha256, node).await?);
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ClientError::Transport {
            server: client.server().to_string(),
            detail: format!("the download broke off: {e}"),
        })?;
        size += chunk.len() as u64;
        if size > CODE_ARCHIVE_BYTES_MAX {
            return Err(FetchError::TooLarge);
        }
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(io_err)?;
    }
    file.sync_all().await.map_err(io_err)?;
    let actual = hex::encode(hasher.finalize());
    if actual != sha256 {
        return Err(FetchError::Digest { expected: sha256.to_string(), actual });
    }
    Ok(())
}

fn rand_suffix() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{}-{nanos}", std::process::id())
}

/// Unpacks `archive` into `dest`, which must not exist yet. Blocking: run it off the async threads.
pub fn unpack(archive: &Path, dest: &Path) -> Result<(), String> {
    fs::create_dir(dest).map_err(|e| format!("cannot create {}: {e}", dest.display()))?;
    let file = File::open(archive).map_err(|e| format!("cannot open {}: {e}", archive.display()))?;
    let mut tar = tar::Archive::new(GzDecoder::new(file));
    let mut unpacked_bytes = 0u64;
    let entries = tar.entries().map_err(|e| format!("the archive cannot be read: {e}"))?;
    for (count, entry) in entries.enumerate() {
        if count as u64 >= CODE_ENTRIES_MAX {
            return Err(format!("the archive holds more than {CODE_ENTRIES_MAX} entries"));
        }
        let mut entry = entry.map_err(|e| format!("the archive cannot be read: {e}"))?;
        let raw = entry.path().map_err(|e| format!("an entry's name cannot be read: {e}"))?.into_owned();
        let relative = checked_path(&raw)?;
        if relative.as_os_str().is_empty() {
            continue;
        }
        let target = dest.join(&relative);
        let kind = entry.header().entry_type();
        match kind {
            tar::EntryType::Directory => make_dirs(dest, &relative)?,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.header().size().map_err(|e| format!("entry `{}`: {e}", raw.display()))?;
                unpacked_bytes = unpacked_bytes.saturating_add(size);
                if unpacked_bytes > CODE_UNPACKED_BYTES_MAX {
                    return Err(format!(
                        "the archive unpacks to more than the limit of {} MiB",
                        CODE_UNPACKED_BYTES_MAX >> 20
                    ));
                }
                make_dirs(dest, relative.parent().unwrap_or(Path::new("")))?;
                let executable = entry.header().mode().map(|m| m & 0o111 != 0).unwrap_or(false);
                write_file(&target, &mut entry, size, executable)
                    .map_err(|e| format!("cannot write {}: {e}", target.display()))?;
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(|e| format!("entry `{}`: {e}", raw.display()))?
                    .ok_or_else(|| format!("symlink `{}` has no target", raw.display()))?
                    .into_owned();
                if !link_stays_inside(&relative, &link) {
                    return Err(format!(
                        "symlink `{}` points outside the folder (to `{}`)",
                        raw.display(),
                        link.display()
                    ));
                }
                make_dirs(dest, relative.parent().unwrap_or(Path::new("")))?;
                std::os::unix::fs::symlink(&link, &target)
                    .map_err(|e| format!("cannot make the symlink {}: {e}", target.display()))?;
            }
            other => {
                return Err(format!(
                    "entry `{}` is a {other:?}; code archives hold only files, folders and symlinks",
                    raw.display()
                ))
            }
        }
    }
    Ok(())
}

/// The entry's path relative to the destination, refusing absolute paths and `..`.
fn checked_path(raw: &Path) -> Result<PathBuf, String> {
    let mut relative = PathBuf::new();
    for component in raw.components() {
        match component {
            Component::Normal(part) => relative.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err(format!("entry `{}` leads out of the folder with `..`", raw.display())),
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("entry `{}` is an absolute path", raw.display()))
            }
        }
    }
    Ok(relative)
}

/// Makes every folder of `relative` under `dest`, refusing to pass through anything that is not a real folder (a
/// symlink made by an earlier entry, in particular), so nothing is ever written outside `dest`.
fn make_dirs(dest: &Path, relative: &Path) -> Result<(), String> {
    let mut at = dest.to_path_buf();
    for part in relative.components() {
        at.push(part);
        match fs::symlink_metadata(&at) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(format!("`{}` is in the way of a folder of the archive", at.display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&at).map_err(|e| format!("cannot create {}: {e}", at.display()))?
            }
            Err(e) => return Err(format!("cannot look at {}: {e}", at.display())),
        }
    }
    Ok(())
}

/// Writes one file, never through a symlink and never over an existing file.
fn write_file(target: &Path, entry: &mut impl Read, size: u64, executable: bool) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .mode(if executable { 0o755 } else { 0o644 })
        .open(target)?;
    io::copy(&mut entry.take(size), &mut file)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_paths_stay_inside() {
        assert_eq!(checked_path(Path::new("./a/b")).unwrap(), PathBuf::from("a/b"));
        assert!(checked_path(Path::new("a/../../b")).unwrap_err().contains("`..`"));
        assert!(checked_path(Path::new("/etc/passwd")).unwrap_err().contains("absolute"));
        assert!(link_stays_inside(Path::new("sub/a"), Path::new("../b")));
        assert!(!link_stays_inside(Path::new("a"), Path::new("../b")));
        assert!(!link_stays_inside(Path::new("a"), Path::new("/etc")));
    }
}
