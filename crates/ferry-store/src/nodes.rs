//! Nodes: what each agent registered, and what it last measured.

use std::collections::BTreeMap;

use ferry_api::nodes::{Gpu, NodeUsage};
use sqlx::Row;

use crate::jobs::Tx;
use crate::rows::{GpuRow, NodeUsageRow};
use crate::{from_json, to_json, Store, StoreError};

#[derive(Clone, Debug, PartialEq)]
pub struct NodeRecord {
    pub name: String,
    pub pool: String,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub gpus: Vec<Gpu>,
    pub labels: BTreeMap<String, String>,
    pub agent_version: String,
    pub limits: String,
    /// Where other nodes reach this one, as its agent says; `None` when it did not.
    pub address: Option<String>,
    pub ready: bool,
    pub usage: Option<NodeUsage>,
    pub last_seen_us: i64,
}

/// Node writes happen inside the driver's transaction: SQLite has one writer, and the driver is it.
impl Tx {
    /// Inserts or replaces a node's registration.
    pub async fn upsert_node(&mut self, node: &NodeRecord, now_us: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO nodes (name, pool, cpu_millis, memory_bytes, gpus, labels, agent_version, limits, ready, \
             usage, registered_at_us, last_seen_us, address) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (name) DO UPDATE SET pool = excluded.pool, cpu_millis = excluded.cpu_millis, \
             memory_bytes = excluded.memory_bytes, gpus = excluded.gpus, labels = excluded.labels, \
             agent_version = excluded.agent_version, limits = excluded.limits, ready = excluded.ready, \
             registered_at_us = excluded.registered_at_us, last_seen_us = excluded.last_seen_us, \
             address = excluded.address",
        )
        .bind(&node.name)
        .bind(&node.pool)
        .bind(node.cpu_millis as i64)
        .bind(node.memory_bytes as i64)
        .bind(to_json(&node.gpus.iter().map(GpuRow::from_wire).collect::<Vec<_>>()))
        .bind(to_json(&node.labels))
        .bind(&node.agent_version)
        .bind(&node.limits)
        .bind(node.ready)
        .bind(node.usage.as_ref().map(|u| to_json(&NodeUsageRow::from_wire(u))))
        .bind(now_us)
        .bind(node.last_seen_us)
        .bind(&node.address)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    pub async fn node_seen(&mut self, name: &str, usage: Option<&NodeUsage>, now_us: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE nodes SET last_seen_us = ?, ready = 1, usage = COALESCE(?, usage) WHERE name = ?")
            .bind(now_us)
            .bind(usage.map(|u| to_json(&NodeUsageRow::from_wire(u))))
            .bind(name)
            .execute(self.conn())
            .await?;
        Ok(())
    }

    pub async fn set_node_ready(&mut self, name: &str, ready: bool) -> Result<(), StoreError> {
        sqlx::query("UPDATE nodes SET ready = ? WHERE name = ?").bind(ready).bind(name).execute(self.conn()).await?;
        Ok(())
    }
}

impl Store {
    pub async fn node_exists(&self, name: &str) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT 1 FROM nodes WHERE name = ?").bind(name).fetch_optional(&self.pool).await?;
        Ok(row.is_some())
    }

    pub async fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, pool, cpu_millis, memory_bytes, gpus, labels, agent_version, limits, ready, usage, \
             last_seen_us, address FROM nodes ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let usage: Option<String> = r.get("usage");
                Ok(NodeRecord {
                    name: r.get("name"),
                    pool: r.get("pool"),
                    cpu_millis: r.get::<i64, _>("cpu_millis") as u64,
                    memory_bytes: r.get::<i64, _>("memory_bytes") as u64,
                    gpus: from_json::<Vec<GpuRow>>("gpus", r.get("gpus"))?.into_iter().map(GpuRow::into_wire).collect(),
                    labels: from_json("labels", r.get("labels"))?,
                    agent_version: r.get("agent_version"),
                    limits: r.get("limits"),
                    address: r.get("address"),
                    ready: r.get::<bool, _>("ready"),
                    usage: usage
                        .as_deref()
                        .map(|u| from_json::<NodeUsageRow>("usage", u).map(NodeUsageRow::into_wire))
                        .transpose()?,
                    last_seen_us: r.get("last_seen_us"),
                })
            })
            .collect()
    }
}
