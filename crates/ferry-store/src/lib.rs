//! Ferry's durable state: jobs and their timelines, nodes, and API tokens, in SQLite through sqlx.
//!
//! This is the only crate that speaks SQL. It stores what it is given and loads it back; it must never make a
//! scheduling decision, read the clock (callers pass times in) or know about HTTP. The SQL is kept to what
//! PostgreSQL also accepts, so a PostgreSQL backend can follow with the same migrations.

mod audit;
mod jobs;
mod keys;
mod models;
mod nodes;
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
pub use jobs::{JobCode, JobFilter, JobRecord, JobTracking, Native, NewJob, SweepLink, Tx, Visibility};
pub use keys::{KeyedJob, SubmissionKey};
pub use models::{LoggedModelRecord, RunModelDirection};
pub use nodes::NodeRecord;
pub use sessions::{GroupRule, NewSession, SessionRecord, StoredQuota};
pub use sweeps::{LoggedValue, MetricStats, SweepRecord, TrialRow};
pub use tokens::{NewToken, NewUser, TeamRecord, TokenListing, TokenRecord, UserRecord};
pub use tracking::{ExperimentRecord, MetricPoint, Ownership, ParamConflict, RunData, RunRecord};

/// The value of `meta.owner` in every Ferry database; anything else is a foreign database.
const OWNER: &str = "ferry";
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
    #[error("the database {path} is damaged or unreadable ({detail}); restore it from a backup, or move it aside to start afresh")]
    Corrupt { path: String, detail: String },
    #[error("the database {path} was written by a newer Ferry (schema {found}); upgrade this ferry binary")]
    TooNew { path: String, found: String },
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("stored value is invalid: {0}")]
    Invalid(String),
}

#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub async fn open(path: &Path) -> Result<Store, StoreError> {
        let shown = path.display().to_string();
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{shown}"))
            .map_err(|e| StoreError::Foreign { path: shown.clone(), detail: e.to_string() })?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL in WAL mode survives a crash of the process (kill -9) with no loss; only a power cut may lose
            // the last transactions, which is the trade every embedded deployment of SQLite makes.
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(POOL_CONNECTIONS_MAX)
            .connect_with(options)
            .await
            .map_err(|e| classify(&shown, e))?;
        let store = Store { pool };
        store.check_owner(&shown).await?;
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

    /// Refuses a database that holds tables but is not Ferry's.
    async fn check_owner(&self, shown: &str) -> Result<(), StoreError> {
        let tables: Vec<String> = sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| classify(shown, e))?;
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
