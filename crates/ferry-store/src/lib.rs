//! Ferry's durable state: jobs and their timelines, nodes, and API tokens, in SQLite through sqlx.
//!
//! This is the only crate that speaks SQL. It stores what it is given and loads it back; it must never make a
//! scheduling decision, read the clock (callers pass times in) or know about HTTP. The SQL is kept to what
//! PostgreSQL also accepts, so a PostgreSQL backend can follow with the same migrations.

mod audit;
mod cloud;
mod history;
mod jobs;
mod keys;
mod models;
mod nodes;
mod retention;
mod rows;
mod secrets;
mod sessions;
mod sweeps;
mod tokens;
mod tracking;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

pub use audit::{AuditFilter, AuditRecord, NewAudit};
pub use cloud::{CloudEvent, CloudMachine, MachineState, NewMachine, RuntimePool};
pub use history::HistoryRecord;
pub use jobs::{JobCode, JobFilter, JobRecord, JobTracking, Native, NewJob, Requeue, SweepLink, Tx, Visibility};
pub use keys::{KeyedJob, SubmissionKey};
pub use models::{LoggedModelRecord, RunModelDirection};
pub use nodes::NodeRecord;
pub use rows::{
    AmountRecord, EventReason, EventRecord, LossCauseRecord, LossRecord, PlacedWorkerRecord, PlacementRecord,
    PreemptRuleRecord, PreemptionRecord, QuotaRecord, RequeueCauseRecord, RequeueRecord,
};
pub use secrets::{Sealed, SecretOwner, SecretRecord};
pub use sessions::{GroupRule, NewSession, SessionRecord, StoredQuota};
pub use sweeps::{LoggedValue, MetricStats, SweepCode, SweepRecord, TrialRow};
pub use tokens::{NewToken, NewUser, TeamRecord, TokenListing, TokenRecord, UserRecord};
pub use tracking::{ExperimentRecord, MetricPoint, Ownership, ParamConflict, RunData, RunRecord};

/// The value of `meta.owner` in every Ferry database; anything else is a foreign database.
const OWNER: &str = "ferry";
/// The page cache of each pooled connection, in KiB.
const PAGE_CACHE_KIB: u32 = 512;
/// How long a writer waits for SQLite's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections in the pool: SQLite has one writer, the rest serve reads of listings and logs.
const POOL_CONNECTIONS_MAX: u32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "{path} is not a Ferry database ({detail}); point --data-dir at an empty directory or a Ferry data directory"
    )]
    Foreign { path: String, detail: String },
    #[error(
        "the database {path} is empty, but a Ferry database never is: it was truncated or replaced. Restore it from a \
         backup (`ferry admin restore`), or, to start a new installation there, remove the file"
    )]
    Empty { path: String },
    #[error("the database {path} is damaged or unreadable ({detail}); restore it from a backup, or move it aside to start afresh")]
    Corrupt { path: String, detail: String },
    #[error("the database {path} was written by a newer Ferry (schema {found}); upgrade this ferry binary")]
    TooNew { path: String, found: String },
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("stored value is invalid: {0}")]
    Invalid(String),
}

impl StoreError {
    /// Whether the database could not write because its disk is full (SQLite's `SQLITE_FULL`).
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::Sql(sqlx::Error::Database(e)) => e.code().as_deref() == Some("13"),
            StoreError::Sql(sqlx::Error::Io(e)) => e.kind() == std::io::ErrorKind::StorageFull,
            _ => false,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub async fn open(path: &Path) -> Result<Store, StoreError> {
        let shown = path.display().to_string();
        // A new installation has no database file yet. One that is there was written by Ferry and is never empty (its
        // writes may all still be in the write-ahead log beside it after a crash), so an empty one was truncated or
        // replaced: starting afresh on it would silently lose the installation.
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let wal_bytes = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        let existed = match std::fs::metadata(path) {
            Ok(meta) if meta.len() == 0 && wal_bytes == 0 => {
                return Err(StoreError::Empty { path: shown });
            }
            Ok(_) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(StoreError::Corrupt { path: shown, detail: e.to_string() }),
        };
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{shown}"))
            .map_err(|e| StoreError::Foreign { path: shown.clone(), detail: e.to_string() })?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL in WAL mode survives a crash of the process (kill -9) with no loss; only a power cut may lose
            // the last transactions, which is the trade every embedded deployment of SQLite makes.
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT)
            // Each pooled connection keeps its own page cache, 2 MB by default; eight of them were a sixth of the
            // server's memory with 100,000 jobs queued (crates/ferry-bench/README.md, "Queue memory"). The
            // operating system caches the file anyway, so a smaller cache costs little.
            .pragma("cache_size", format!("-{}", PAGE_CACHE_KIB));
        let pool = SqlitePoolOptions::new()
            .max_connections(POOL_CONNECTIONS_MAX)
            // A write that failed on a full disk can leave its connection inside a transaction, holding an old
            // snapshot: every later write on it fails ("database is locked") even once there is room again. Such a
            // connection is closed when it comes back to the pool instead of being handed out again.
            .after_release(|conn, _| Box::pin(async move { Ok(healthy(conn).await) }))
            .connect_with(options)
            .await
            .map_err(|e| classify(&shown, e))?;
        let store = Store { pool };
        store.check_owner(&shown, existed).await?;
        sqlx::migrate!("./migrations").run(&store.pool).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::VersionMissing(v) => {
                StoreError::TooNew { path: shown.clone(), found: v.to_string() }
            }
            other => StoreError::Corrupt { path: shown.clone(), detail: other.to_string() },
        })?;
        sqlx::query("INSERT INTO meta (key, value) VALUES ('owner', ?) ON CONFLICT (key) DO NOTHING")
            .bind(OWNER)
            .execute(&store.pool)
            .await?;
        Ok(store)
    }

    /// Refuses a database that is not Ferry's: one with tables of others, or a file that was there with no tables.
    async fn check_owner(&self, shown: &str, existed: bool) -> Result<(), StoreError> {
        let tables: Vec<String> = sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| classify(shown, e))?;
        if tables.is_empty() && existed {
            return Err(StoreError::Empty { path: shown.to_string() });
        }
        if tables.is_empty() {
            return Ok(());
        }
        if !tables.iter().any(|t| t == "meta") {
            let detail = format!("it holds tables {} but no Ferry metadata", tables.join(", "));
            return Err(StoreError::Foreign { path: shown.to_string(), detail });
        }
        let owner: Option<String> = sqlx::query_scalar("SELECT value FROM meta WHERE key = 'owner'")
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| classify(shown, e))?;
        match owner.as_deref() {
            Some(OWNER) | None => Ok(()),
            Some(other) => {
                Err(StoreError::Foreign { path: shown.to_string(), detail: format!("its owner is `{other}`") })
            }
        }
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Begins a transaction that writes, holding SQLite's write lock from its first statement (`BEGIN IMMEDIATE`).
    ///
    /// A plain (deferred) transaction that reads before it writes has to upgrade its read lock, and in WAL mode an
    /// upgrade fails at once with `SQLITE_BUSY` (no busy timeout applies) when another connection wrote in between.
    /// The driver's batches read first, and runs are written beside them by request handlers, so under load every
    /// such collision failed a whole batch and made the driver rebuild the scheduler from the store, work
    /// proportional to the queue. Taking the lock up front makes a writer wait its turn (`BUSY_TIMEOUT`) instead.
    pub(crate) async fn write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }
}

/// Whether a connection coming back to the pool is idle as a pooled connection must be: outside any transaction and
/// with no statement still stepping (which would hold a read snapshot open).
async fn healthy(conn: &mut sqlx::SqliteConnection) -> bool {
    // A COMMIT that failed on a full disk is rolled back by SQLite, but sqlx still counts the transaction as open:
    // every later transaction on the connection would fail ("begin_with at non-zero transaction depth").
    if sqlx::Connection::is_in_transaction(conn) {
        tracing::warn!("closing a database connection whose failed write left a transaction open");
        return false;
    }
    let Ok(mut handle) = conn.lock_handle().await else { return false };
    let raw = handle.as_raw_handle().as_ptr();
    // SAFETY: `raw` is the live connection handle, locked for this call; both functions only read its state.
    let (autocommit, busy) = unsafe {
        let autocommit = libsqlite3_sys::sqlite3_get_autocommit(raw) != 0;
        let mut busy = false;
        let mut statement = libsqlite3_sys::sqlite3_next_stmt(raw, std::ptr::null_mut());
        while !statement.is_null() {
            busy |= libsqlite3_sys::sqlite3_stmt_busy(statement) != 0;
            statement = libsqlite3_sys::sqlite3_next_stmt(raw, statement);
        }
        (autocommit, busy)
    };
    if !autocommit || busy {
        tracing::warn!(
            in_transaction = !autocommit,
            statement_open = busy,
            "closing a database connection left busy by a failed write"
        );
    }
    autocommit && !busy
}

fn classify(path: &str, e: sqlx::Error) -> StoreError {
    let text = e.to_string();
    if text.contains("not a database") || text.contains("malformed") || text.contains("corrupt") {
        StoreError::Corrupt { path: path.to_string(), detail: text }
    } else {
        StoreError::Sql(e)
    }
}

/// Decodes a JSON column, naming the column when it does not parse.
fn from_json<T: serde::de::DeserializeOwned>(column: &str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Invalid(format!("column {column}: {e}")))
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("plain data always serializes")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The driver's batch reads, then writes; a handler's write landing in between (here, an experiment made on
    /// another connection) must wait for the batch instead of failing it with `SQLITE_BUSY`.
    #[tokio::test]
    async fn a_batch_that_reads_first_is_not_failed_by_a_write_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("ferry.db")).await.unwrap();
        let mut tx = store.begin().await.unwrap();
        assert!(tx.job(1).await.unwrap().is_none());
        let other = store.clone();
        let beside = tokio::spawn(async move {
            other.create_experiment("beside", None, &[], Ownership::default(), 1).await.unwrap().unwrap()
        });
        // Long enough for the write beside to commit, were it allowed to before the batch ends.
        tokio::time::sleep(Duration::from_millis(300)).await;
        tx.set_node_ready("n", true).await.expect("the batch writes after its read");
        tx.commit().await.unwrap();
        let id = beside.await.unwrap();
        assert_eq!(store.experiment(id).await.unwrap().unwrap().name, "beside");
    }
}
