//! Jobs as history, for the simulator (`GET /api/v1/history/jobs`): only what scheduling saw of each job (resources,
//! constraints, owner and name, times and outcome), never its command, environment, code or output, read a page at a time in
//! id order (submission order, since the driver is the only writer).

use std::collections::BTreeMap;

use ferry_api::jobs::{JobState, PriorityClass};
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use crate::rows::{priority_from, state_from};
use crate::{from_json, Store, StoreError};

const HISTORY_COLUMNS: &str =
    "id, name, owner, team, project, state, exit_code, signal, submitted_at_us, started_at_us, \
     finished_at_us, attempt, cpu_millis, memory_bytes, gpus, gpu_share_milli, gpu_types, selector, nodes, priority, \
     pool, image IS NOT NULL AS has_image, max_runtime_s";

/// One job as history: what it asked for, when it ran and how it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryRecord {
    pub id: u64,
    pub name: Option<String>,
    pub owner: String,
    pub team: Option<String>,
    pub project: Option<String>,
    pub state: JobState,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub submitted_at_us: i64,
    pub started_at_us: Option<i64>,
    pub finished_at_us: Option<i64>,
    pub attempt: u32,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub gpus: u32,
    pub gpu_share_milli: u32,
    pub gpu_types: Vec<String>,
    pub selector: BTreeMap<String, String>,
    pub nodes: u32,
    pub priority: PriorityClass,
    pub pool: Option<String>,
    /// Whether it ran in a container image.
    pub image: bool,
    pub max_runtime_s: Option<u64>,
}

fn history_from_row(row: &SqliteRow) -> Result<HistoryRecord, StoreError> {
    Ok(HistoryRecord {
        id: row.get::<i64, _>("id") as u64,
        name: row.get("name"),
        owner: row.get("owner"),
        team: row.get("team"),
        project: row.get("project"),
        state: state_from(row.get("state"))?,
        exit_code: row.get::<Option<i64>, _>("exit_code").map(|v| v as i32),
        signal: row.get::<Option<i64>, _>("signal").map(|v| v as i32),
        submitted_at_us: row.get("submitted_at_us"),
        started_at_us: row.get("started_at_us"),
        finished_at_us: row.get("finished_at_us"),
        attempt: row.get::<i64, _>("attempt") as u32,
        cpu_millis: row.get::<i64, _>("cpu_millis") as u64,
        memory_bytes: row.get::<i64, _>("memory_bytes") as u64,
        gpus: row.get::<i64, _>("gpus") as u32,
        gpu_share_milli: row.get::<i64, _>("gpu_share_milli") as u32,
        gpu_types: from_json("gpu_types", row.get("gpu_types"))?,
        selector: from_json("selector", row.get("selector"))?,
        nodes: row.get::<i64, _>("nodes") as u32,
        priority: priority_from(row.get("priority"))?,
        pool: row.get("pool"),
        image: row.get::<bool, _>("has_image"),
        max_runtime_s: row.get::<Option<i64>, _>("max_runtime_s").map(|v| v as u64),
    })
}

impl Store {
    /// Jobs submitted at or after `since_us` with an id above `after_id`, oldest first, at most `limit`.
    pub async fn history_jobs(
        &self,
        since_us: i64,
        after_id: u64,
        limit: u32,
    ) -> Result<Vec<HistoryRecord>, StoreError> {
        let sql =
            format!("SELECT {HISTORY_COLUMNS} FROM jobs WHERE submitted_at_us >= ? AND id > ? ORDER BY id LIMIT ?");
        let rows =
            sqlx::query(&sql).bind(since_us).bind(after_id as i64).bind(i64::from(limit)).fetch_all(&self.pool).await?;
        rows.iter().map(history_from_row).collect()
    }
}
