//! MLflow artifacts: files of runs and logged models, kept in an object store through the `object_store` crate,
//! under `<data_dir>/artifacts` by default or in an S3-compatible bucket by configuration (`[artifacts]`).
//!
//! Every path reaching the store is an `ArtifactPath`: relative, `/`-separated, with no `.`/`..`, empty segments,
//! backslashes or control characters, so nothing is ever written outside the artifact root. Uploads are streamed in
//! bounded pieces (never held whole) and checked against a size limit as they arrive; an upload that fails or grows
//! too large is aborted, so no partial file ever becomes visible. This module knows nothing of HTTP, runs or
//! MLflow's JSON: the handlers (`routes/artifacts.rs`) decide who may touch which path.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use serde::Deserialize;

/// The largest artifact file when the configuration does not say: 5 GiB, S3's limit for one plain upload.
pub const FILE_BYTES_MAX_DEFAULT: u64 = 5 << 30;
/// The bytes of artifacts one project may keep when the configuration does not say.
pub const QUOTA_PER_PROJECT_DEFAULT: u64 = 100 << 30;
/// The longest artifact path, in bytes: S3's limit on an object key, less room for a configured prefix.
pub const PATH_BYTES_MAX: usize = 900;
/// An upload that fits in this much is stored with one request; a larger one becomes a multipart upload of parts
/// this large (S3 wants parts of at least 5 MiB). It is also the most of an upload held in memory at once.
const PART_BYTES: usize = 8 << 20;
/// Parts of one multipart upload in flight at once.
const PARTS_IN_FLIGHT_MAX: usize = 2;
/// The most entries one listing answers: a bound on the memory and time of one request.
pub const LIST_ENTRIES_MAX: usize = 100_000;

/// The `[artifacts]` table of the configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawArtifacts {
    url: Option<String>,
    endpoint: Option<String>,
    region: Option<String>,
    allow_http: Option<bool>,
    max_file_bytes: Option<u64>,
    /// The bytes of artifacts one project may keep (`"100GiB"`, or `"unlimited"`).
    quota_per_project: Option<toml::Value>,
}

/// Where artifacts are kept, as configured. Credentials are never part of it: they come from the standard AWS
/// environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`).
#[derive(Clone, Debug, PartialEq)]
pub struct ArtifactsConfig {
    /// `None`: the local file system under the data directory.
    pub s3: Option<S3Config>,
    /// 0 means `FILE_BYTES_MAX_DEFAULT`.
    pub max_file_bytes: u64,
    /// The bytes of artifacts a project may keep unless the file sets its own; `None` for unlimited.
    pub quota_per_project_bytes: Option<u64>,
}

impl Default for ArtifactsConfig {
    fn default() -> ArtifactsConfig {
        ArtifactsConfig { s3: None, max_file_bytes: 0, quota_per_project_bytes: Some(QUOTA_PER_PROJECT_DEFAULT) }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct S3Config {
    pub bucket: String,
    /// Key prefix inside the bucket, without leading or trailing `/`; may be empty.
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub allow_http: bool,
}

impl RawArtifacts {
    /// Checks the table; errors name the field.
    pub fn check(self) -> Result<ArtifactsConfig, String> {
        let at = "[artifacts]";
        let max_file_bytes = match self.max_file_bytes {
            Some(0) => return Err(format!("{at}: `max_file_bytes` must be at least 1")),
            Some(n) => n,
            None => FILE_BYTES_MAX_DEFAULT,
        };
        let quota_per_project_bytes = match &self.quota_per_project {
            None => Some(QUOTA_PER_PROJECT_DEFAULT),
            Some(value) => crate::config::quota_bytes(&format!("{at}: `quota_per_project`"), value)?,
        };
        let Some(url) = self.url else {
            for (field, set) in [
                ("endpoint", self.endpoint.is_some()),
                ("region", self.region.is_some()),
                ("allow_http", self.allow_http.is_some()),
            ] {
                if set {
                    return Err(format!(
                        "{at}: `{field}` applies only to an S3 store; set `url = \"s3://BUCKET/PREFIX\"`"
                    ));
                }
            }
            return Ok(ArtifactsConfig { s3: None, max_file_bytes, quota_per_project_bytes });
        };
        let rest = url.strip_prefix("s3://").ok_or_else(|| {
            format!("{at}: `url` must be an S3 URL such as s3://bucket/prefix; it is `{url}` (leave it out for the local disk)")
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
        if !bucket_ok {
            return Err(format!(
                "{at}: `url` names the bucket `{bucket}`; a bucket name is 3 to 63 of a-z, 0-9, `-`, `.`"
            ));
        }
        let prefix = prefix.trim_matches('/');
        if !prefix.is_empty() && check_segments(prefix).is_err() {
            return Err(format!("{at}: `url` has the prefix `{prefix}`; write a plain relative key prefix"));
        }
        let allow_http = self.allow_http.unwrap_or(false);
        if let Some(endpoint) = &self.endpoint {
            let http = endpoint.starts_with("http://");
            if !http && !endpoint.starts_with("https://") {
                return Err(format!("{at}: `endpoint` must be an http:// or https:// URL; it is `{endpoint}`"));
            }
            if http && !allow_http {
                return Err(format!("{at}: `endpoint` is plain http; set `allow_http = true` to allow it"));
            }
        }
        if self.region.as_deref().is_some_and(|r| r.trim().is_empty()) {
            return Err(format!("{at}: `region` must not be empty"));
        }
        Ok(ArtifactsConfig {
            s3: Some(S3Config {
                bucket: bucket.to_string(),
                prefix: prefix.to_string(),
                endpoint: self.endpoint,
                region: self.region,
                allow_http,
            }),
            max_file_bytes,
            quota_per_project_bytes,
        })
    }
}

/// A checked artifact path, relative to the artifact root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArtifactPath(String);

impl ArtifactPath {
    /// Checks a path as a client sent it. A trailing `/` is allowed (a directory); nothing else that is not a plain
    /// relative path is.
    pub fn parse(text: &str) -> Result<ArtifactPath, String> {
        if text.len() > PATH_BYTES_MAX {
            return Err(format!("the artifact path is {} bytes long; the limit is {PATH_BYTES_MAX}", text.len()));
        }
        if text.starts_with('/') {
            return Err(format!("the artifact path `{text}` is absolute; artifact paths are relative"));
        }
        let trimmed = text.strip_suffix('/').unwrap_or(text);
        if trimmed.is_empty() {
            return Ok(ArtifactPath(String::new()));
        }
        check_segments(trimmed)?;
        Ok(ArtifactPath(trimmed.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/').filter(|s| !s.is_empty())
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or("")
    }

    fn store_path(&self) -> StorePath {
        // Checked in `parse`: every segment is one object_store accepts.
        StorePath::parse(&self.0).unwrap_or_default()
    }
}

fn check_segments(path: &str) -> Result<(), String> {
    for segment in path.split('/') {
        match segment {
            "" => return Err(format!("the artifact path `{path}` has an empty segment (`//`)")),
            "." | ".." => {
                return Err(format!("the artifact path `{path}` contains `{segment}`; write a plain relative path"))
            }
            _ => {}
        }
        if let Some(c) = segment.chars().find(|c| *c == '\\' || c.is_control()) {
            return Err(format!("the artifact path `{path}` contains the character {c:?}, which is not allowed"));
        }
        // object_store keeps names ending in `#<digits>` for the staging files of multipart uploads.
        if segment.rsplit_once('#').is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())) {
            return Err(format!("the artifact path `{path}` has a name ending in `#` and digits, which is reserved"));
        }
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("no artifact at {0}")]
    NotFound(String),
    #[error("the artifact is larger than the limit of {limit_bytes} bytes; nothing was stored")]
    TooLarge { limit_bytes: u64 },
    #[error("{0}")]
    Conflict(String),
    #[error("the upload was interrupted: {0}; nothing was stored")]
    Body(String),
    #[error("the artifact store failed: {0}")]
    Store(String),
}

impl From<object_store::Error> for ArtifactError {
    fn from(e: object_store::Error) -> ArtifactError {
        match e {
            object_store::Error::NotFound { path, .. } => ArtifactError::NotFound(path),
            other => ArtifactError::Store(other.to_string()),
        }
    }
}

/// An entry of a listing: a file with its size, or a folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The name within the listed folder.
    pub name: String,
    /// `None` for a folder.
    pub size_bytes: Option<u64>,
}

/// What a deletion removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Deleted {
    pub files: u64,
    pub bytes: u64,
}

/// The run or logged model whose folder an artifact path lies in: `<experiment>/<run>/...` or
/// `<experiment>/models/<model>/...`.
pub fn owner_of(path: &str) -> Option<&str> {
    let mut segments = path.split('/');
    let _experiment = segments.next()?;
    match segments.next()? {
        "models" => segments.next(),
        run => Some(run),
    }
    .filter(|owner| !owner.is_empty())
}

/// A file being read: its size and its bytes as they come.
pub struct Download {
    pub size_bytes: u64,
    pub body: BoxStream<'static, Result<Bytes, ArtifactError>>,
}

pub struct ArtifactStore {
    store: Arc<dyn ObjectStore>,
    /// Where it is, for logs and errors (never with credentials).
    pub describe: String,
    pub max_file_bytes: u64,
    /// On a file system a name is a file or a folder, never both (in S3 a key and a prefix may share a name).
    local: bool,
}

impl ArtifactStore {
    /// The store the configuration asks for; the local one under `local_root` by default.
    pub fn open(config: &ArtifactsConfig, local_root: &Path) -> Result<ArtifactStore, String> {
        let max_file_bytes = if config.max_file_bytes == 0 { FILE_BYTES_MAX_DEFAULT } else { config.max_file_bytes };
        let Some(s3) = &config.s3 else {
            std::fs::create_dir_all(local_root)
                .map_err(|e| format!("cannot create the artifact directory {}: {e}", local_root.display()))?;
            let local = LocalFileSystem::new_with_prefix(local_root)
                .map_err(|e| format!("cannot use {} for artifacts: {e}", local_root.display()))?
                .with_automatic_cleanup(true);
            return Ok(ArtifactStore {
                store: Arc::new(local),
                describe: local_root.display().to_string(),
                max_file_bytes,
                local: true,
            });
        };
        // The standard AWS variables give the credentials (and a region when the file names none).
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(&s3.bucket).with_allow_http(s3.allow_http);
        if let Some(endpoint) = &s3.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(region) = &s3.region {
            builder = builder.with_region(region);
        }
        let s3_store = builder.build().map_err(|e| format!("[artifacts]: cannot use s3://{}: {e}", s3.bucket))?;
        let describe = format!(
            "s3://{}/{}{}",
            s3.bucket,
            s3.prefix,
            s3.endpoint.as_deref().map(|e| format!(" at {e}")).unwrap_or_default()
        );
        let store: Arc<dyn ObjectStore> = if s3.prefix.is_empty() {
            Arc::new(s3_store)
        } else {
            Arc::new(PrefixStore::new(s3_store, StorePath::parse(&s3.prefix).unwrap_or_default()))
        };
        Ok(ArtifactStore { store, describe, max_file_bytes, local: false })
    }

    /// Stores `body` at `path`, replacing what was there only once all of it has arrived within the size limit.
    /// Returns the number of bytes stored.
    pub async fn put<E: std::fmt::Display>(
        &self,
        path: &ArtifactPath,
        body: impl Stream<Item = Result<Bytes, E>>,
    ) -> Result<u64, ArtifactError> {
        let location = path.store_path();
        if self.local {
            self.check_file_system_names(path).await?;
        }
        let mut body = std::pin::pin!(body);
        let mut first = Vec::new();
        let mut total: u64 = 0;
        // Up to one part is gathered first: most artifacts are small, and they are stored with one request.
        while first.len() < PART_BYTES {
            match body.next().await {
                None => {
                    self.store.put(&location, PutPayload::from(Bytes::from(first))).await?;
                    return Ok(total);
                }
                Some(Err(e)) => return Err(ArtifactError::Body(e.to_string())),
                Some(Ok(chunk)) => {
                    total += chunk.len() as u64;
                    self.check_size(total)?;
                    first.extend_from_slice(&chunk);
                }
            }
        }
        let upload = self.store.put_multipart(&location).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        writer.write(&first);
        drop(first);
        loop {
            let next = match body.next().await {
                None => break,
                Some(Err(e)) => Err(ArtifactError::Body(e.to_string())),
                Some(Ok(chunk)) => {
                    total += chunk.len() as u64;
                    self.check_size(total).map(|()| chunk)
                }
            };
            let written = match next {
                Ok(chunk) => {
                    writer.write(&chunk);
                    writer.wait_for_capacity(PARTS_IN_FLIGHT_MAX).await.map_err(ArtifactError::from)
                }
                Err(e) => Err(e),
            };
            if let Err(e) = written {
                if let Err(abort) = writer.abort().await {
                    tracing::warn!(path = path.as_str(), error = %abort, "could not abort a failed artifact upload");
                }
                return Err(e);
            }
        }
        writer.finish().await?;
        Ok(total)
    }

    /// On the local store, a file cannot take the name of a folder, nor sit below a file.
    async fn check_file_system_names(&self, path: &ArtifactPath) -> Result<(), ArtifactError> {
        let mut ancestor = String::new();
        let segments: Vec<&str> = path.segments().collect();
        for segment in &segments[..segments.len().saturating_sub(1)] {
            if !ancestor.is_empty() {
                ancestor.push('/');
            }
            ancestor.push_str(segment);
            if self.store.head(&StorePath::parse(&ancestor).unwrap_or_default()).await.is_ok() {
                return Err(ArtifactError::Conflict(format!("{ancestor} is a file; nothing can be stored below it")));
            }
        }
        let listed = self.store.list_with_delimiter(Some(&path.store_path())).await?;
        if !listed.objects.is_empty() || !listed.common_prefixes.is_empty() {
            return Err(ArtifactError::Conflict(format!(
                "{} is a folder of artifacts; a file cannot take its name",
                path.as_str()
            )));
        }
        Ok(())
    }

    fn check_size(&self, total: u64) -> Result<(), ArtifactError> {
        if total > self.max_file_bytes {
            return Err(ArtifactError::TooLarge { limit_bytes: self.max_file_bytes });
        }
        Ok(())
    }

    /// Opens a file for reading.
    pub async fn get(&self, path: &ArtifactPath) -> Result<Download, ArtifactError> {
        if path.is_root() {
            return Err(ArtifactError::NotFound(String::new()));
        }
        let found = self.store.get(&path.store_path()).await?;
        let size_bytes = found.meta.size;
        let body = found.into_stream().map_err(ArtifactError::from).boxed();
        Ok(Download { size_bytes, body })
    }

    /// The files and folders directly in the folder `dir`, sorted by name; empty when there is no such folder.
    pub async fn list(&self, dir: &ArtifactPath) -> Result<Vec<Entry>, ArtifactError> {
        let prefix = dir.store_path();
        let listed = self.store.list_with_delimiter((!dir.is_root()).then_some(&prefix)).await?;
        let name = |p: &StorePath| p.filename().unwrap_or_default().to_string();
        let mut entries: Vec<Entry> = listed
            .common_prefixes
            .iter()
            .map(|p| Entry { name: name(p), size_bytes: None })
            .chain(listed.objects.iter().map(|o| Entry { name: name(&o.location), size_bytes: Some(o.size) }))
            .filter(|e| !e.name.is_empty())
            .take(LIST_ENTRIES_MAX)
            .collect();
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    /// Deletes the file at `path`, or everything under it when it is a folder. Deleting nothing is not an error.
    /// Returns how many files and bytes were deleted.
    pub async fn delete(&self, path: &ArtifactPath) -> Result<Deleted, ArtifactError> {
        let location = path.store_path();
        let mut deleted = Deleted::default();
        // A folder is not an object (and the local store refuses to delete one as a file): only a file is deleted
        // by its own name.
        let file = if path.is_root() { None } else { self.store.head(&location).await.ok() };
        let under: Vec<(StorePath, u64)> = self
            .store
            .list((!path.is_root()).then_some(&location))
            .map_ok(|meta| (meta.location, meta.size))
            .try_collect()
            .await?;
        for (object, size) in file.map(|meta| (meta.location, meta.size)).into_iter().chain(under) {
            match self.store.delete(&object).await {
                Ok(()) => {
                    deleted.files += 1;
                    deleted.bytes += size;
                }
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(deleted)
    }

    /// The size of the file at `path`; `None` when there is none.
    pub async fn size(&self, path: &ArtifactPath) -> Option<u64> {
        if path.is_root() {
            return None;
        }
        self.store.head(&path.store_path()).await.ok().map(|meta| meta.size)
    }

    /// The bytes of every run's and logged model's artifacts, by run or model id: one listing of the whole store.
    pub async fn sizes_by_owner(&self) -> Result<std::collections::HashMap<String, u64>, ArtifactError> {
        let mut sizes = std::collections::HashMap::new();
        let mut listing = self.store.list(None);
        while let Some(meta) = listing.try_next().await? {
            let path = meta.location.as_ref();
            if let Some(owner) = owner_of(path) {
                *sizes.entry(owner.to_string()).or_insert(0) += meta.size;
            }
        }
        Ok(sizes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_checked() {
        for good in ["1/abc/artifacts/a.txt", "1/abc/artifacts/dir/", "0/x/artifacts/with space/é.json", ""] {
            assert!(ArtifactPath::parse(good).is_ok(), "{good}");
        }
        for bad in ["/etc/passwd", "1/../2", "a//b", "./a", "a\\b", "a\0b", "a/b#12", "a/.."] {
            let e = ArtifactPath::parse(bad).unwrap_err();
            assert!(e.contains("artifact path"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_table_is_checked() {
        let check =
            |text: &str| toml::from_str::<RawArtifacts>(text).map_err(|e| e.to_string()).and_then(|r| r.check());
        let s3 =
            check("url = \"s3://ferry-art/team/a\"\nendpoint = \"http://127.0.0.1:9000\"\nallow_http = true").unwrap();
        assert_eq!(s3.s3.as_ref().map(|s| (s.bucket.as_str(), s.prefix.as_str())), Some(("ferry-art", "team/a")));
        assert_eq!(s3.max_file_bytes, FILE_BYTES_MAX_DEFAULT);
        for (text, field) in [
            ("url = \"gs://b\"", "`url`"),
            ("url = \"s3://B\"", "`url`"),
            ("url = \"s3://bucket\"\nendpoint = \"http://x\"", "allow_http"),
            ("endpoint = \"http://x\"", "`endpoint`"),
            ("max_file_bytes = 0", "`max_file_bytes`"),
            ("url = \"s3://bucket/../x\"", "`url`"),
        ] {
            let e = check(text).unwrap_err();
            assert!(e.contains(field), "{text}: {e}");
        }
        assert!(check("secret_access_key = \"x\"").unwrap_err().contains("unknown field"));
        // Through the whole file: the table is optional, and its errors name it.
        assert_eq!(crate::config::FileConfig::parse("").unwrap().artifacts.s3, None);
        let e = crate::config::FileConfig::parse("[artifacts]\nurl = \"gs://b\"").unwrap_err();
        assert!(e.contains("[artifacts]") && e.contains("`url`"), "{e}");
    }

    #[tokio::test]
    async fn oversized_uploads_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let config = ArtifactsConfig { s3: None, max_file_bytes: 10, quota_per_project_bytes: None };
        let store = ArtifactStore::open(&config, dir.path()).unwrap();
        let path = ArtifactPath::parse("1/r/artifacts/big.bin").unwrap();
        let chunks = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(Bytes::from_static(b"0123456789abc"))]);
        assert!(matches!(store.put(&path, chunks).await, Err(ArtifactError::TooLarge { limit_bytes: 10 })));
        assert!(matches!(store.get(&path).await, Err(ArtifactError::NotFound(_))));
        let ok = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(Bytes::from_static(b"hello"))]);
        assert_eq!(store.put(&path, ok).await.unwrap(), 5);
        let listed = store.list(&ArtifactPath::parse("1/r/artifacts").unwrap()).await.unwrap();
        assert_eq!(listed, vec![Entry { name: "big.bin".into(), size_bytes: Some(5) }]);
        assert_eq!(store.list(&ArtifactPath::parse("1/r/nothing").unwrap()).await.unwrap(), vec![]);
        let below = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(Bytes::from_static(b"x"))]);
        let under_file = ArtifactPath::parse("1/r/artifacts/big.bin/x").unwrap();
        assert!(matches!(store.put(&under_file, below).await, Err(ArtifactError::Conflict(_))));
        let over = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(Bytes::from_static(b"x"))]);
        let folder = ArtifactPath::parse("1/r/artifacts").unwrap();
        assert!(matches!(store.put(&folder, over).await, Err(ArtifactError::Conflict(_))));
        let more = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(Bytes::from_static(b"model"))]);
        store.put(&ArtifactPath::parse("1/models/m-1/artifacts/MLmodel").unwrap(), more).await.unwrap();
        let sizes = store.sizes_by_owner().await.unwrap();
        assert_eq!(sizes, std::collections::HashMap::from([("r".to_string(), 5), ("m-1".to_string(), 5)]));
        assert_eq!(store.size(&path).await, Some(5));
        assert_eq!(store.delete(&ArtifactPath::parse("1/r").unwrap()).await.unwrap(), Deleted { files: 1, bytes: 5 });
        assert_eq!(store.size(&path).await, None);
        assert!(matches!(store.get(&path).await, Err(ArtifactError::NotFound(_))));
    }
}
