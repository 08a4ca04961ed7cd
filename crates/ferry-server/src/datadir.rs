//! The server's data directory: its database, job output, the admin token, and the lock that keeps a second
//! server out.
//!
//! A directory is taken as Ferry's only if it is empty or carries Ferry's marker file, so pointing `--data-dir` at
//! the wrong folder never writes into it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ferry_store::{NewToken, NewUser, Store};

use crate::auth::{hash_token, new_token};
use crate::driver::now_us;
use crate::ServerError;

/// The marker file every Ferry data directory holds, and its content.
const MARKER_FILE: &str = "FERRY_DATA_DIR";
const MARKER_CONTENT: &str = "ferry data directory, layout 1\n";
/// The file, readable by its owner only, where the first start writes the admin token.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// The file, readable by its owner only, with the agent token of `ferry up`'s local agent.
pub const AGENT_TOKEN_FILE: &str = "agent.token";
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

    /// The key that signs jobs' tracking tokens (`auth::job_token`): 32 random bytes in `job-token.key`, made on
    /// the first start and kept, so the tokens of running jobs stay valid across restarts. Readable by the server's
    /// user alone.
    pub fn job_token_key(&self) -> Result<Vec<u8>, ServerError> {
        self.key(JOB_TOKEN_KEY_FILE, "the tracking tokens of running jobs then stop working")
    }

    /// The key that seals stored secrets (`secrets.rs`), made on the first start like the tracking token key.
    pub fn secrets_key(&self) -> Result<Vec<u8>, ServerError> {
        self.key(crate::secrets::KEY_FILE, "every stored secret is then lost and must be set again")
    }

    /// 32 random bytes kept in `name`, made when it does not exist; `loss` says what removing it costs.
    fn key(&self, name: &str, loss: &str) -> Result<Vec<u8>, ServerError> {
        let path = self.root.join(name);
        let failed = |e: std::io::Error| ServerError::DataDir(format!("cannot use {}: {e}", path.display()));
        match std::fs::read(&path) {
            Ok(key) if key.len() == 32 => return Ok(key),
            Ok(_) => {
                return Err(ServerError::DataDir(format!(
                    "{} is not 32 bytes long; remove it to make a new key ({loss})",
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

    /// On the first start, creates the installation admin `admin` and a personal admin token for it: the hash goes
    /// to the store, the token itself to `admin.token`, which only the server's user can read. Later starts leave
    /// identities alone; `ferry admin restore` (which needs this directory) mints a new admin token when every one
    /// was lost or revoked.
    pub async fn ensure_admin(&self, store: &Store) -> Result<(), ServerError> {
        if !store.users().await?.is_empty() {
            return Ok(());
        }
        let user = NewUser { name: BOOTSTRAP_ADMIN, kind: "user", admin: true, default_team: None, created_by: None };
        store.create_user(&user, now_us()).await?;
        mint_admin_token(&self.root, store, BOOTSTRAP_ADMIN, "admin (first start)").await?;
        tracing::info!(path = %self.root.join(ADMIN_TOKEN_FILE).display(), "created the admin user and its token");
        Ok(())
    }

    /// The local agent of `ferry up`: an agent token bound to `node` alone, written to `agent.token` (readable by
    /// the server's user only), replacing the one of the last start, so the installation's own agent never needs
    /// the admin token and a revoked one heals at the next start.
    pub async fn local_agent_token(&self, store: &Store, node: &str) -> Result<(), ServerError> {
        store.revoke_agent_tokens(LOCAL_AGENT_TOKEN_NAME, node, now_us()).await?;
        let token = new_token();
        let record = NewToken {
            name: LOCAL_AGENT_TOKEN_NAME,
            kind: "agent",
            user_id: None,
            scope: None,
            node: Some(node),
            max_nodes: Some(1),
            expires_at_us: None,
            created_by: Some("ferry up"),
            hash: &hash_token(&token),
        };
        store.insert_token(&record, now_us()).await?;
        write_secret(&self.root.join(AGENT_TOKEN_FILE), &token)
    }
}

/// The name of the admin user made on the first start.
pub const BOOTSTRAP_ADMIN: &str = "admin";
/// The name of the local agent's token.
const LOCAL_AGENT_TOKEN_NAME: &str = "local agent";

/// Writes a secret to a file only its owner can read, whole or not at all.
fn write_secret(path: &Path, secret: &str) -> Result<(), ServerError> {
    let failed = |e: std::io::Error| ServerError::DataDir(format!("cannot write {}: {e}", path.display()));
    let temporary = path.with_extension("tmp");
    let mut file =
        OpenOptions::new().create(true).truncate(true).write(true).mode(0o600).open(&temporary).map_err(failed)?;
    file.write_all(format!("{secret}\n").as_bytes()).and_then(|_| file.sync_all()).map_err(failed)?;
    std::fs::rename(&temporary, path).map_err(failed)
}

/// Creates a personal admin-scope token for `user` and writes it to `admin.token`.
async fn mint_admin_token(root: &Path, store: &Store, user: &str, name: &str) -> Result<(), ServerError> {
    let record =
        store.user_by_name(user).await?.ok_or_else(|| ServerError::DataDir(format!("there is no user `{user}`")))?;
    let token = new_token();
    let new = NewToken {
        name,
        kind: "user",
        user_id: Some(record.id),
        scope: Some("admin"),
        node: None,
        max_nodes: None,
        expires_at_us: None,
        created_by: Some("the server's data directory"),
        hash: &hash_token(&token),
    };
    store.insert_token(&new, now_us()).await?;
    write_secret(&root.join(ADMIN_TOKEN_FILE), &token)
}

/// Restores admin access from the server's own machine: makes `user` an enabled installation admin (creating it if
/// need be), mints a new admin token and writes it to `admin.token`. Whoever can read and write the data directory
/// could rewrite the database anyway, so holding it is the proof of authority. Safe while the server runs.
pub async fn restore_admin(root: &Path, user: &str) -> Result<PathBuf, ServerError> {
    if let Some(problem) = ferry_api::tokens::identity_name_problem(user) {
        return Err(ServerError::DataDir(problem));
    }
    let marker = root.join(MARKER_FILE);
    if std::fs::read_to_string(&marker).ok().as_deref() != Some(MARKER_CONTENT) {
        return Err(ServerError::DataDir(format!(
            "{} is not a Ferry data directory; pass the server's --data-dir (or FERRY_HOME)",
            root.display()
        )));
    }
    let store = Store::open(&root.join("ferry.db")).await?;
    let existing = store.user_by_name(user).await?;
    let id = match existing {
        Some(found) => found.id,
        None => {
            let new = NewUser { name: user, kind: "user", admin: true, default_team: None, created_by: None };
            store
                .create_user(&new, now_us())
                .await?
                .ok_or_else(|| ServerError::DataDir("the user appeared meanwhile; retry".into()))?
        }
    };
    store.set_user_admin(id, true).await?;
    store.set_user_disabled(id, None).await?;
    mint_admin_token(root, &store, user, "admin (restored)").await?;
    let entry = ferry_store::NewAudit {
        actor: std::env::var("USER").ok().map(|u| format!("local:{u}")),
        actor_kind: "local".to_string(),
        action: "admin restore".to_string(),
        object: Some(format!("user {user}")),
        detail: Some("admin access restored on the server's machine with `ferry admin restore`".to_string()),
        status: 200,
        result: "ok".to_string(),
        source: None,
    };
    store.append_audit(&entry, now_us()).await?;
    store.close().await;
    Ok(root.join(ADMIN_TOKEN_FILE))
}
