//! Cloud machines: one row per node asked of an elastic pool's provider, from before its launch to its end, with the
//! join token its start-up script carries. The rows are also the bill: each machine costs its `price_hour` from
//! `requested_at_us` to `ended_at_us` (or now).

use std::fmt;

use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use crate::{Store, StoreError};

/// Where a machine is in its life, as Ferry knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MachineState {
    /// Recorded, and its launch is (or was about to be) asked of the provider; no instance id yet.
    Requested,
    /// The provider took the launch and named the instance; its agent has not joined yet.
    Launched,
    /// Its agent registered: it is a node of its pool.
    Joined,
    /// Being terminated (released, abandoned, or found without an owner).
    Terminating,
    /// Terminated, failed to launch, or gone (a spot reclaim): it costs nothing more.
    Ended,
}

impl MachineState {
    pub fn name(self) -> &'static str {
        match self {
            MachineState::Requested => "requested",
            MachineState::Launched => "launched",
            MachineState::Joined => "joined",
            MachineState::Terminating => "terminating",
            MachineState::Ended => "ended",
        }
    }

    fn parse(name: &str) -> Result<MachineState, StoreError> {
        Ok(match name {
            "requested" => MachineState::Requested,
            "launched" => MachineState::Launched,
            "joined" => MachineState::Joined,
            "terminating" => MachineState::Terminating,
            "ended" => MachineState::Ended,
            other => return Err(StoreError::Invalid(format!("column cloud_machines.state: unknown state `{other}`"))),
        })
    }
}

impl fmt::Display for MachineState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One machine asked of a provider.
#[derive(Clone, Debug, PartialEq)]
pub struct CloudMachine {
    pub node: String,
    pub pool: String,
    pub seq: i64,
    pub provider: String,
    pub instance_type: String,
    pub market: String,
    pub price_hour: f64,
    pub zone: Option<String>,
    pub instance_id: Option<String>,
    /// The launch's idempotency token: the same for every try of this machine's launch.
    pub client_token: String,
    pub token_id: Option<i64>,
    pub state: MachineState,
    pub requested_at_us: i64,
    pub launched_at_us: Option<i64>,
    pub joined_at_us: Option<i64>,
    pub ended_at_us: Option<i64>,
    pub detail: Option<String>,
}

impl CloudMachine {
    /// What the machine has cost up to `now_us`: its price from the launch request to its end.
    pub fn cost(&self, now_us: i64) -> f64 {
        let end = self.ended_at_us.unwrap_or(now_us).max(self.requested_at_us);
        self.price_hour * (end - self.requested_at_us) as f64 / 3_600_000_000.0
    }

    /// Whether the machine may still be running (or about to).
    pub fn live(&self) -> bool {
        self.state != MachineState::Ended
    }
}

/// A machine to record before it is launched, with its join token (stored hashed).
#[derive(Clone, Debug)]
pub struct NewMachine<'a> {
    pub pool: &'a str,
    pub provider: &'a str,
    pub instance_type: &'a str,
    pub market: &'a str,
    pub price_hour: f64,
    /// Prefixed to the node's name to make the launch's idempotency token (the installation's id).
    pub client_token_prefix: &'a str,
    /// The SHA-256 of the join token, as every token is stored.
    pub token_hash: &'a str,
    /// When the join token expires if no agent has joined with it.
    pub token_expires_at_us: i64,
}

const COLUMNS: &str = "node, pool, seq, provider, instance_type, market, price_hour, zone, instance_id, client_token, \
                       token_id, state, requested_at_us, launched_at_us, joined_at_us, ended_at_us, detail";

/// The longest idempotency token EC2 takes.
const CLIENT_TOKEN_CHARS_MAX: usize = 64;

fn machine(row: &SqliteRow) -> Result<CloudMachine, StoreError> {
    Ok(CloudMachine {
        node: row.get("node"),
        pool: row.get("pool"),
        seq: row.get("seq"),
        provider: row.get("provider"),
        instance_type: row.get("instance_type"),
        market: row.get("market"),
        price_hour: row.get("price_hour"),
        zone: row.get("zone"),
        instance_id: row.get("instance_id"),
        client_token: row.get("client_token"),
        token_id: row.get("token_id"),
        state: MachineState::parse(row.get("state"))?,
        requested_at_us: row.get("requested_at_us"),
        launched_at_us: row.get("launched_at_us"),
        joined_at_us: row.get("joined_at_us"),
        ended_at_us: row.get("ended_at_us"),
        detail: row.get("detail"),
    })
}

impl Store {
    /// This installation's id, which tags every machine it launches: made (from `fresh`) the first time it is asked
    /// for, the same ever after.
    pub async fn installation_id(&self, fresh: &str) -> Result<String, StoreError> {
        sqlx::query("INSERT INTO meta (key, value) VALUES ('installation', ?) ON CONFLICT (key) DO NOTHING")
            .bind(fresh)
            .execute(&self.pool)
            .await?;
        Ok(sqlx::query_scalar("SELECT value FROM meta WHERE key = 'installation'").fetch_one(&self.pool).await?)
    }

    /// Records a machine about to be launched for `pool`, named `<pool>-<n>` with the next number of the pool, with
    /// its join token: an agent token bound to that node alone, for one node, that expires unless an agent joins.
    pub async fn insert_machine(&self, new: &NewMachine<'_>, now_us: i64) -> Result<CloudMachine, StoreError> {
        let mut tx = self.write().await?;
        let seq: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) + 1 FROM cloud_machines WHERE pool = ?")
            .bind(new.pool)
            .fetch_one(&mut *tx)
            .await?;
        let node = format!("{}-{seq}", new.pool);
        let token_id = sqlx::query(
            "INSERT INTO tokens (name, role, hash, created_at_us, node, expires_at_us, created_by, max_nodes) \
             VALUES (?, 'agent', ?, ?, ?, ?, 'ferry', 1)",
        )
        .bind(format!("cloud:{node}"))
        .bind(new.token_hash)
        .bind(now_us)
        .bind(&node)
        .bind(new.token_expires_at_us)
        .execute(&mut *tx)
        .await?
        .last_insert_rowid();
        let mut client_token = format!("{}-{node}", new.client_token_prefix);
        client_token.truncate(CLIENT_TOKEN_CHARS_MAX);
        sqlx::query(
            "INSERT INTO cloud_machines (node, pool, seq, provider, instance_type, market, price_hour, client_token, \
             token_id, state, requested_at_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'requested', ?)",
        )
        .bind(&node)
        .bind(new.pool)
        .bind(seq)
        .bind(new.provider)
        .bind(new.instance_type)
        .bind(new.market)
        .bind(new.price_hour)
        .bind(&client_token)
        .bind(token_id)
        .bind(now_us)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.machine(&node)
            .await?
            .ok_or_else(|| StoreError::Invalid(format!("machine {node} vanished as it was written")))
    }

    pub async fn machine(&self, node: &str) -> Result<Option<CloudMachine>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM cloud_machines WHERE node = ?");
        sqlx::query(&sql).bind(node).fetch_optional(&self.pool).await?.as_ref().map(machine).transpose()
    }

    /// The machine whose start-up script carries join token `token_id`.
    pub async fn machine_of_token(&self, token_id: i64) -> Result<Option<CloudMachine>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM cloud_machines WHERE token_id = ?");
        sqlx::query(&sql).bind(token_id).fetch_optional(&self.pool).await?.as_ref().map(machine).transpose()
    }

    /// Every machine not yet ended, oldest request first.
    pub async fn live_machines(&self) -> Result<Vec<CloudMachine>, StoreError> {
        let sql =
            format!("SELECT {COLUMNS} FROM cloud_machines WHERE state != 'ended' ORDER BY requested_at_us, pool, seq");
        sqlx::query(&sql).fetch_all(&self.pool).await?.iter().map(machine).collect()
    }

    /// The machines that cost anything after `since_us` (live ones, and those that ended since), oldest first.
    pub async fn machines_since(&self, since_us: i64) -> Result<Vec<CloudMachine>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM cloud_machines WHERE ended_at_us IS NULL OR ended_at_us >= ? \
             ORDER BY requested_at_us, pool, seq"
        );
        sqlx::query(&sql).bind(since_us).fetch_all(&self.pool).await?.iter().map(machine).collect()
    }

    /// What each pool's machines have cost up to `now_us`, in all: each from its launch request to its end (or now).
    pub async fn cloud_spend(&self, now_us: i64) -> Result<Vec<(String, f64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT pool, SUM(price_hour * MAX(COALESCE(ended_at_us, ?) - requested_at_us, 0)) / 3600000000.0 AS spend \
             FROM cloud_machines GROUP BY pool ORDER BY pool",
        )
        .bind(now_us)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| (r.get("pool"), r.get::<Option<f64>, _>("spend").unwrap_or(0.0))).collect())
    }

    /// The provider took the launch: the instance's id and zone.
    pub async fn machine_launched(
        &self,
        node: &str,
        instance_id: &str,
        zone: &str,
        now_us: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE cloud_machines SET state = CASE WHEN state = 'requested' THEN 'launched' ELSE state END, \
             instance_id = ?, zone = ?, launched_at_us = COALESCE(launched_at_us, ?) WHERE node = ? AND state != 'ended'",
        )
        .bind(instance_id)
        .bind(zone)
        .bind(now_us)
        .bind(node)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The machine's agent registered with its join token: the machine is a node now, and the token no longer
    /// expires (it is the node's credential until the machine ends). Returns whether the machine was waiting to join.
    pub async fn machine_joined(&self, node: &str, now_us: i64) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        let token: Option<Option<i64>> = sqlx::query_scalar(
            "UPDATE cloud_machines SET state = 'joined', joined_at_us = ? \
             WHERE node = ? AND state IN ('requested', 'launched') RETURNING token_id",
        )
        .bind(now_us)
        .bind(node)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(Some(token_id)) = token {
            sqlx::query("UPDATE tokens SET expires_at_us = NULL WHERE id = ?").bind(token_id).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(token.is_some())
    }

    /// Trades the machine's join token (`token_id`) for a new agent token (stored as `new_hash`) bound to its node
    /// alone, for good: the join token is revoked, and the machine's record names the new one. Returns the machine,
    /// or `None` when `token_id` is no live machine's join token (already traded, or not a machine's at all).
    pub async fn exchange_machine_token(
        &self,
        token_id: i64,
        new_hash: &str,
        now_us: i64,
    ) -> Result<Option<CloudMachine>, StoreError> {
        let mut tx = self.write().await?;
        // Only a join token (named `cloud:<node>` when the machine was recorded) is traded; the machine's own token
        // (`cloud-node:<node>`) is not, so the trade happens once.
        let node: Option<String> = sqlx::query_scalar(
            "SELECT m.node FROM cloud_machines m JOIN tokens t ON t.id = m.token_id \
             WHERE m.token_id = ? AND m.state IN ('requested', 'launched') AND t.name = 'cloud:' || m.node",
        )
        .bind(token_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(node) = node else { return Ok(None) };
        let revoked = sqlx::query(
            "UPDATE tokens SET revoked_at_us = ? WHERE id = ? AND revoked_at_us IS NULL AND \
             (expires_at_us IS NULL OR expires_at_us > ?)",
        )
        .bind(now_us)
        .bind(token_id)
        .bind(now_us)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if revoked != 1 {
            return Ok(None);
        }
        let new_id = sqlx::query(
            "INSERT INTO tokens (name, role, hash, created_at_us, node, created_by, max_nodes) \
             VALUES (?, 'agent', ?, ?, ?, 'ferry', 1)",
        )
        .bind(format!("cloud-node:{node}"))
        .bind(new_hash)
        .bind(now_us)
        .bind(&node)
        .execute(&mut *tx)
        .await?
        .last_insert_rowid();
        sqlx::query("UPDATE cloud_machines SET token_id = ? WHERE node = ?")
            .bind(new_id)
            .bind(&node)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM node_tokens WHERE node = ? AND token_id = ?")
            .bind(&node)
            .bind(token_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.machine(&node).await
    }

    /// The machine is being terminated, for `why`.
    pub async fn machine_terminating(&self, node: &str, why: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE cloud_machines SET state = 'terminating', detail = ? WHERE node = ? AND state != 'ended'")
            .bind(why)
            .bind(node)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Notes what last went wrong with a machine, without changing its state.
    pub async fn machine_detail(&self, node: &str, detail: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE cloud_machines SET detail = ? WHERE node = ?")
            .bind(detail)
            .bind(node)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The machine ended (terminated, failed to launch, or gone), for `why`: it costs nothing more and its join token
    /// is revoked. Returns whether this call ended it.
    pub async fn machine_ended(&self, node: &str, why: &str, now_us: i64) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        let token: Option<Option<i64>> = sqlx::query_scalar(
            "UPDATE cloud_machines SET state = 'ended', ended_at_us = ?, detail = ? WHERE node = ? AND state != 'ended' \
             RETURNING token_id",
        )
        .bind(now_us)
        .bind(why)
        .bind(node)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(Some(token_id)) = token {
            sqlx::query("UPDATE tokens SET revoked_at_us = ? WHERE id = ? AND revoked_at_us IS NULL")
                .bind(now_us)
                .bind(token_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(token.is_some())
    }
}

/// One thing the scheduler asked of an elastic pool, or that came of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloudEvent {
    pub at_us: i64,
    pub pool: String,
    /// `provision`, `release`, `abandon`, `failed` or `gone`.
    pub kind: String,
    pub node: Option<String>,
    pub nodes: u32,
    pub detail: String,
}

/// The most events kept per pool; older ones are dropped as new ones come.
const EVENTS_PER_POOL_MAX: i64 = 10_000;

impl Store {
    /// The latest `limit` events of `pool`, oldest first.
    pub async fn cloud_events(&self, pool: &str, limit: u32) -> Result<Vec<CloudEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT at_us, pool, kind, node, nodes, detail FROM (SELECT * FROM cloud_events WHERE pool = ? \
             ORDER BY id DESC LIMIT ?) ORDER BY id",
        )
        .bind(pool)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| CloudEvent {
                at_us: r.get("at_us"),
                pool: r.get("pool"),
                kind: r.get("kind"),
                node: r.get("node"),
                nodes: r.get::<i64, _>("nodes").clamp(0, i64::from(u32::MAX)) as u32,
                detail: r.get("detail"),
            })
            .collect())
    }
}

/// A pool defined at run time: its name and the TOML of its `[[pool]]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimePool {
    pub name: String,
    pub definition: String,
    pub created_by: String,
    pub updated_at_us: i64,
}

impl Store {
    /// Every pool defined at run time, by name.
    pub async fn runtime_pools(&self) -> Result<Vec<RuntimePool>, StoreError> {
        let rows = sqlx::query("SELECT name, definition, created_by, updated_at_us FROM runtime_pools ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| RuntimePool {
                name: r.get("name"),
                definition: r.get("definition"),
                created_by: r.get("created_by"),
                updated_at_us: r.get("updated_at_us"),
            })
            .collect())
    }

    /// Adds a pool (`replace` false: only if none of that name is stored) or replaces one (`replace` true: only if
    /// it is stored). Returns whether it was written.
    pub async fn put_runtime_pool(&self, pool: &RuntimePool, replace: bool, now_us: i64) -> Result<bool, StoreError> {
        let written = if replace {
            sqlx::query("UPDATE runtime_pools SET definition = ?, updated_at_us = ? WHERE name = ?")
                .bind(&pool.definition)
                .bind(now_us)
                .bind(&pool.name)
                .execute(&self.pool)
                .await?
        } else {
            sqlx::query(
                "INSERT INTO runtime_pools (name, definition, created_by, created_at_us, updated_at_us) \
                 VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING",
            )
            .bind(&pool.name)
            .bind(&pool.definition)
            .bind(&pool.created_by)
            .bind(now_us)
            .bind(now_us)
            .execute(&self.pool)
            .await?
        };
        Ok(written.rows_affected() == 1)
    }

    /// Removes a pool defined at run time; returns whether there was one.
    pub async fn remove_runtime_pool(&self, name: &str) -> Result<bool, StoreError> {
        let removed = sqlx::query("DELETE FROM runtime_pools WHERE name = ?").bind(name).execute(&self.pool).await?;
        Ok(removed.rows_affected() == 1)
    }
}

impl crate::Tx {
    /// Records an event of an elastic pool, keeping the pool's latest `EVENTS_PER_POOL_MAX`.
    pub async fn cloud_event(&mut self, event: &CloudEvent) -> Result<(), StoreError> {
        let id =
            sqlx::query("INSERT INTO cloud_events (at_us, pool, kind, node, nodes, detail) VALUES (?, ?, ?, ?, ?, ?)")
                .bind(event.at_us)
                .bind(&event.pool)
                .bind(&event.kind)
                .bind(&event.node)
                .bind(i64::from(event.nodes))
                .bind(&event.detail)
                .execute(self.conn())
                .await?
                .last_insert_rowid();
        if id % 1000 == 0 {
            sqlx::query(
                "DELETE FROM cloud_events WHERE pool = ? AND id <= (SELECT id FROM cloud_events WHERE pool = ? \
                 ORDER BY id DESC LIMIT 1 OFFSET ?)",
            )
            .bind(&event.pool)
            .bind(&event.pool)
            .bind(EVENTS_PER_POOL_MAX)
            .execute(self.conn())
            .await?;
        }
        Ok(())
    }

    /// Forgets a node that is gone for good (an elastic pool's machine, terminated), and which token registered it.
    pub async fn remove_node(&mut self, name: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM nodes WHERE name = ?").bind(name).execute(self.conn()).await?;
        sqlx::query("DELETE FROM node_tokens WHERE node = ?").bind(name).execute(self.conn()).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("ferry.db")).await.unwrap();
        (dir, store)
    }

    fn new<'a>(pool: &'a str, hash: &'a str) -> NewMachine<'a> {
        NewMachine {
            pool,
            provider: "aws",
            instance_type: "g5.xlarge",
            market: "spot",
            price_hour: 0.5,
            client_token_prefix: "inst0123",
            token_hash: hash,
            token_expires_at_us: 600,
        }
    }

    #[tokio::test]
    async fn a_machine_goes_from_request_to_end_with_its_token_and_its_cost() {
        let (_dir, store) = store().await;
        assert_eq!(store.installation_id("abc").await.unwrap(), "abc");
        assert_eq!(store.installation_id("other").await.unwrap(), "abc", "made once, the same ever after");
        let first = store.insert_machine(&new("aws-spot", "h1"), 0).await.unwrap();
        let second = store.insert_machine(&new("aws-spot", "h2"), 0).await.unwrap();
        let other = store.insert_machine(&new("gcp", "h3"), 0).await.unwrap();
        assert_eq!(
            (first.node.as_str(), second.node.as_str(), other.node.as_str()),
            ("aws-spot-1", "aws-spot-2", "gcp-1")
        );
        assert_eq!((first.state, first.client_token.as_str()), (MachineState::Requested, "inst0123-aws-spot-1"));
        let token = store.token_by_hash("h1").await.unwrap().unwrap();
        assert_eq!(
            (token.node.as_deref(), token.max_nodes, token.expires_at_us),
            (Some("aws-spot-1"), Some(1), Some(600))
        );
        assert_eq!(store.machine_of_token(token.id).await.unwrap().unwrap().node, "aws-spot-1");

        store.machine_launched("aws-spot-1", "i-1", "us-east-1a", 10).await.unwrap();
        assert!(store.machine_joined("aws-spot-1", 20).await.unwrap());
        assert!(!store.machine_joined("aws-spot-1", 30).await.unwrap(), "joining twice is not a new join");
        let joined = store.machine("aws-spot-1").await.unwrap().unwrap();
        assert_eq!(
            (joined.state, joined.instance_id.as_deref(), joined.joined_at_us),
            (MachineState::Joined, Some("i-1"), Some(20))
        );
        assert_eq!(
            store.token_by_hash("h1").await.unwrap().unwrap().expires_at_us,
            None,
            "a joined node's token stays"
        );

        // Two hours at 0.5 an hour.
        assert!((joined.cost(7_200_000_000) - 1.0).abs() < 1e-9);
        assert!(store.machine_ended("aws-spot-1", "released after 10m idle", 3_600_000_000).await.unwrap());
        assert!(!store.machine_ended("aws-spot-1", "again", 7_200_000_000).await.unwrap());
        let ended = store.machine("aws-spot-1").await.unwrap().unwrap();
        assert!((ended.cost(7_200_000_000) - 0.5).abs() < 1e-9, "nothing accrues after the end");
        assert!(store.token_by_hash("h1").await.unwrap().is_none(), "the join token is revoked with its machine");
        let live: Vec<String> = store.live_machines().await.unwrap().into_iter().map(|m| m.node).collect();
        assert_eq!(live, ["aws-spot-2", "gcp-1"]);
        assert_eq!(store.machines_since(3_600_000_001).await.unwrap().len(), 2);
        assert_eq!(store.machines_since(0).await.unwrap().len(), 3);
        // The second machine trades its join token once, before it joins, for a token of its own.
        let join = store.token_by_hash("h2").await.unwrap().unwrap();
        let traded = store.exchange_machine_token(join.id, "own2", 5).await.unwrap().unwrap();
        assert_eq!(traded.node, "aws-spot-2");
        assert!(store.token_by_hash("h2").await.unwrap().is_none(), "the join token works no more");
        let own = store.token_by_hash("own2").await.unwrap().unwrap();
        assert_eq!((own.node.as_deref(), own.max_nodes, own.expires_at_us), (Some("aws-spot-2"), Some(1), None));
        assert_eq!(traded.token_id, Some(own.id));
        assert!(store.exchange_machine_token(join.id, "again", 6).await.unwrap().is_none(), "only once");
        assert!(store.exchange_machine_token(own.id, "again", 6).await.unwrap().is_none(), "not the own token either");
        let expired = store.token_by_hash("h3").await.unwrap().unwrap();
        assert!(store.exchange_machine_token(expired.id, "late", 601).await.unwrap().is_none(), "not once expired");
        // Numbers are never reused, even after an end.
        assert_eq!(store.insert_machine(&new("aws-spot", "h4"), 0).await.unwrap().node, "aws-spot-3");
    }
}
