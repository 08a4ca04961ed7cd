//! The server's data directory: its database, job output, the admin token, and the lock that keeps a second
//! server out.
//!
//! A directory is taken as Ferry's only if it is empty or carries Ferry's marker file, so pointing `--data-dir` at
//! the wrong folder never writes into it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ferry_store::Store;

use crate::auth::{hash_token, new_token};
use crate::ServerError;

/// The marker file every Ferry data directory holds, and its content.
const MARKER_FILE: &str = "FERRY_DATA_DIR";
const MARKER_CONTENT: &str = "ferry data directory, layout 1\n";
/// The file, readable by its owner only, where the first start writes the admin token.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// The key that signs jobs' tracking tokens.
const JOB_TOKEN_KEY_FILE: &str = "job-token.key";
const LOCK_FILE: &str = "server.lock";

pub struct DataDir {
    root: PathBuf,
    /// Held for the server's lifetime; the lock is released when the file closes.
    _lock: nix::fcntl::Flock<File>,
}

impl DataDir {
    pub fn prepare(root: &Path) -> Result<DataDir, ServerError> {
        let err = |what: String| ServerError::DataDir(what);
        std::fs::create_dir_all(root)
            .map_err(|e| err(format!("cannot create the data directory {}: {e}", root.display())))?;
        let marker = root.join(MARKER_FILE);
        match std::fs::read_to_string(&marker) {
            Ok(content) if content == MARKER_CONTENT => {}
            Ok(_) => {
                return Err(err(format!(
                    "{} holds a Ferry marker of another layout; it was written by another Ferry version",
                    root.display()
                )))
            }
            Err(_) => {
                let entries = std::fs::read_dir(root)
                    .map_err(|e| err(format!("cannot read the data directory {}: {e}", root.display())))?
                    .count();
                if entries > 0 {
                    return Err(err(format!(
                        "{} is not a Ferry data directory (it holds other files and no {MARKER_FILE}); \
                         point --data-dir or FERRY_HOME at an empty or new directory",
                        root.display()
                    )));
                }
                std::fs::write(&marker, MARKER_CONTENT)
                    .map_err(|e| err(format!("cannot write {}: {e}", marker.display())))?;
                let _ = std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700));
            }
        }
        let lock_path = root.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&lock_path)
            .map_err(|e| err(format!("cannot open {}: {e}", lock_path.display())))?;
        let lock = match nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(locked) => locked,
            Err((_, _)) => {
                let pid = std::fs::read_to_string(&lock_path).unwrap_or_default();
                return Err(err(format!(
                    "another Ferry server (pid {}) is using {}; stop it first or choose another --data-dir",
                    pid.trim(),
                    root.display()
                )));
            }
        };
        let mut lock = lock;
        let _ = lock.set_len(0);
        let _ = write!(*lock, "{}", std::process::id());
        std::fs::create_dir_all(root.join("logs"))
            .map_err(|e| err(format!("cannot create the logs directory: {e}")))?;
        std::fs::create_dir_all(root.join("code"))
            .map_err(|e| err(format!("cannot create the code directory: {e}")))?;
        Ok(DataDir { root: root.to_path_buf(), _lock: lock })
    }

    pub fn database(&self) -> PathBuf {
        self.root.join("ferry.db")
    }

    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }

    /// Shipped code archives, one file per SHA-256.
    /// The time series of capacity, allocation and measured use (`ferry-tsdb`'s directory).
    pub fn series(&self) -> PathBuf {
        self.root.join("series")
    }

    pub fn code(&self) -> PathBuf {
        self.root.join("code")
    }

    /// MLflow artifacts of runs and logged models, when no other artifact store is configured.
    pub fn artifacts(&self) -> PathBuf {
        self.root.join("artifacts")
    }

    /// On the first start, creates the admin token: its hash goes to the store, the token itself to a file only
    /// its owner can read.
    /// The key that signs jobs' tracking tokens (`auth::job_token`): 32 random bytes in `job-token.key`, made on
    /// the first start and kept, so the tokens of running jobs stay valid across restarts. Readable by the server's
    /// user alone.
    pub fn job_token_key(&self) -> Result<Vec<u8>, ServerError> {
        let path = self.root.join(JOB_TOKEN_KEY_FILE);
        let failed = |e: std::io::Error| ServerError::DataDir(format!("cannot use {}: {e}", path.display()));
        match std::fs::read(&path) {
            Ok(key) if key.len() == 32 => return Ok(key),
            Ok(_) => {
                return Err(ServerError::DataDir(format!(
                    "{} is not 32 bytes long; remove it to make a new key (the tracking tokens of running jobs \
                     then stop working)",
                    path.display()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(failed(e)),
        }
        let mut key = vec![0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut key);
        let temporary = path.with_extension("tmp");
        let mut file =
            OpenOptions::new().create(true).truncate(true).write(true).mode(0o600).open(&temporary).map_err(failed)?;
        file.write_all(&key).and_then(|_| file.sync_all()).map_err(failed)?;
        std::fs::rename(&temporary, &path).map_err(failed)?;
        Ok(key)
    }

    pub async fn ensure_admin_token(&self, store: &Store) -> Result<(), ServerError> {
        if store.token_count().await? > 0 {
            return Ok(());
        }
        let token = new_token();
        let path = self.root.join(ADMIN_TOKEN_FILE);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| ServerError::DataDir(format!("cannot write {}: {e}", path.display())))?;
        file.write_all(format!("{token}\n").as_bytes())
            .map_err(|e| ServerError::DataDir(format!("cannot write {}: {e}", path.display())))?;
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        store.insert_token("admin", "admin", &hash_token(&token), now_us).await?;
        tracing::info!(path = %path.display(), "created the admin API token");
        Ok(())
    }
}
