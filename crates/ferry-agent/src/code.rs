//! Shipped code on a node: fetching an archive once into a content-addressed cache. The checked unpacker that
//! writes it into a run's working directory is `ferry-archive`'s, shared with the server. This module must never
//! start a run.

use std::io;
use std::path::{Path, PathBuf};

use ferry_api::code::CODE_ARCHIVE_BYTES_MAX;
use ferry_client::{Client, ClientError};
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
