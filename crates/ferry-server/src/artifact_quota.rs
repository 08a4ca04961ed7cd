//! Per-project artifact quotas: how many bytes of artifacts each project keeps, against its limit.
//!
//! Artifacts count against the project of the job whose run logged them (`team/project`); a run no job made, or a
//! job without a project, counts against its team's own account (`team`), and a run of no team against the
//! installation's (``). A logged model counts as the run that produced it. The limit is `[[team.project]]
//! artifact_quota` (or `[[team]] artifact_quota` for a team's own account) where the configuration sets one, else
//! `[artifacts] quota_per_project` (100 GiB by default).
//!
//! Usage is counted once at start (one listing of the artifact store) and then kept in memory by every upload and
//! deletion: an upload reserves its bytes as they arrive and is refused at the first byte past the limit, so nothing
//! walks the store per request. Changes wait for the first count; files changed behind the server's back are
//! counted again at the next start. This module holds numbers only; it never touches the store or HTTP.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

/// How long an upload or deletion waits for the count made at start before it is answered "retry".
pub const COUNT_WAIT: Duration = Duration::from_secs(30);
/// How long the count waits after a failure before it tries again.
const COUNT_RETRY: Duration = Duration::from_secs(30);

/// The account an owner's artifacts count against: `team/project`, `team`, or `` for no team.
pub fn account(team: Option<&str>, project: Option<&str>) -> String {
    match (team, project) {
        (Some(team), Some(project)) => format!("{team}/{project}"),
        (Some(team), None) => team.to_string(),
        (None, _) => String::new(),
    }
}

/// An account in words, for errors.
fn describe(account: &str) -> String {
    match account.split_once('/') {
        Some(_) => format!("project {account}"),
        None if account.is_empty() => "runs of no team".to_string(),
        None => format!("team {account} (its runs outside projects)"),
    }
}

/// Where the limit of an account is set, for the fix an error names.
fn setting(account: &str) -> String {
    match account.split_once('/') {
        Some((team, project)) => format!(
            "`artifact_quota` of project {project} in team {team}'s [[team.project]] table, or [artifacts] \
             quota_per_project for every project"
        ),
        None if account.is_empty() => "[artifacts] quota_per_project".to_string(),
        None => format!("`artifact_quota` of team {account}'s [[team]] table, or [artifacts] quota_per_project"),
    }
}

/// An upload refused because its account would go past its limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exceeded {
    pub account: String,
    /// Bytes the account holds (and has on the way in other uploads).
    pub used_bytes: u64,
    pub limit_bytes: u64,
    /// Bytes of this upload that did not fit.
    pub wanted_bytes: u64,
}

impl Exceeded {
    pub fn message(&self) -> String {
        let bytes = ferry_units::format_bytes;
        format!(
            "this upload would take the artifacts of {} past their quota of {} ({} are stored); nothing of it was \
             kept. Delete artifacts no longer needed (DELETE /api/2.0/mlflow-artifacts/artifacts/<path>), or ask an \
             admin to raise {} in the server's configuration",
            describe(&self.account),
            bytes(self.limit_bytes),
            bytes(self.used_bytes),
            setting(&self.account)
        )
    }
}

pub struct ArtifactQuotas {
    /// The limit of accounts the configuration names none for; `None` for unlimited.
    default_bytes: Option<u64>,
    /// Limits the configuration sets, by account.
    overrides: BTreeMap<String, Option<u64>>,
    /// Bytes held per account, uploads under way included.
    used: Mutex<HashMap<String, u64>>,
    /// Whether the count made at start is in.
    counted: tokio::sync::watch::Sender<bool>,
}

impl ArtifactQuotas {
    pub fn new(default_bytes: Option<u64>, overrides: BTreeMap<String, Option<u64>>) -> ArtifactQuotas {
        let quotas = ArtifactQuotas {
            default_bytes,
            overrides,
            used: Mutex::new(HashMap::new()),
            counted: tokio::sync::watch::Sender::new(false),
        };
        // With no limit anywhere there is nothing to count.
        if !quotas.limited() {
            quotas.counted.send_replace(true);
        }
        quotas
    }

    /// Whether any account has a limit.
    pub fn limited(&self) -> bool {
        self.default_bytes.is_some() || self.overrides.values().any(Option::is_some)
    }

    pub fn limit(&self, account: &str) -> Option<u64> {
        self.overrides.get(account).copied().unwrap_or(self.default_bytes)
    }

    pub fn used(&self, account: &str) -> u64 {
        self.used.lock().expect("never poisoned: no panics inside").get(account).copied().unwrap_or(0)
    }

    /// Takes the count made at start: bytes per account.
    pub fn set_counted(&self, used: HashMap<String, u64>) {
        *self.used.lock().expect("never poisoned: no panics inside") = used;
        self.counted.send_replace(true);
    }

    /// Waits (at most `wait`) for the count made at start; `false` when it is not in yet.
    pub async fn wait_counted(&self, wait: Duration) -> bool {
        let mut counted = self.counted.subscribe();
        tokio::time::timeout(wait, counted.wait_for(|c| *c)).await.is_ok_and(|r| r.is_ok())
    }

    /// Whether `bytes` more would fit, without taking them.
    pub fn check(&self, account: &str, bytes: u64) -> Result<(), Exceeded> {
        let used = self.used(account);
        self.fits(account, used, bytes)
    }

    fn fits(&self, account: &str, used: u64, bytes: u64) -> Result<(), Exceeded> {
        match self.limit(account) {
            Some(limit) if used.saturating_add(bytes) > limit => Err(Exceeded {
                account: account.to_string(),
                used_bytes: used,
                limit_bytes: limit,
                wanted_bytes: bytes,
            }),
            _ => Ok(()),
        }
    }

    /// Takes `bytes` for an upload under way, if they fit.
    pub fn reserve(&self, account: &str, bytes: u64) -> Result<(), Exceeded> {
        let mut used = self.used.lock().expect("never poisoned: no panics inside");
        let held = used.entry(account.to_string()).or_insert(0);
        self.fits(account, *held, bytes)?;
        *held += bytes;
        Ok(())
    }

    /// Gives back bytes deleted, replaced, or reserved by an upload that failed.
    pub fn release(&self, account: &str, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let mut used = self.used.lock().expect("never poisoned: no panics inside");
        if let Some(held) = used.get_mut(account) {
            *held = held.saturating_sub(bytes);
        }
    }
}

/// The count made at start: every artifact's size, summed by account, handed to `quotas`. Retried until it works,
/// as uploads wait for it.
pub async fn count(
    artifacts: std::sync::Arc<crate::artifacts::ArtifactStore>,
    store: ferry_store::Store,
    quotas: std::sync::Arc<ArtifactQuotas>,
) {
    if !quotas.limited() {
        return;
    }
    loop {
        let started = std::time::Instant::now();
        match count_once(&artifacts, &store).await {
            Ok(used) => {
                let total: u64 = used.values().sum();
                tracing::info!(
                    accounts = used.len(),
                    bytes = total,
                    took_ms = started.elapsed().as_millis() as u64,
                    "counted the artifacts of every project"
                );
                quotas.set_counted(used);
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not count the artifacts for their quotas; uploads wait, retrying");
                tokio::time::sleep(COUNT_RETRY).await;
            }
        }
    }
}

async fn count_once(
    artifacts: &crate::artifacts::ArtifactStore,
    store: &ferry_store::Store,
) -> Result<HashMap<String, u64>, String> {
    let by_owner = artifacts.sizes_by_owner().await.map_err(|e| e.to_string())?;
    let accounts: HashMap<String, String> = store
        .artifact_accounts()
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|(id, (team, project))| (id, account(team.as_deref(), project.as_deref())))
        .collect();
    let mut used: HashMap<String, u64> = HashMap::new();
    for (owner, bytes) in by_owner {
        // Files of an owner the store does not know count against the installation's own account.
        let account = accounts.get(&owner).cloned().unwrap_or_default();
        *used.entry(account).or_insert(0) += bytes;
    }
    Ok(used)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn uploads_reserve_within_their_accounts_limit() {
        let overrides = BTreeMap::from([("v/big".to_string(), None), ("v".to_string(), Some(50))]);
        let quotas = ArtifactQuotas::new(Some(100), overrides);
        assert!(!quotas.wait_counted(Duration::from_millis(1)).await, "changes wait for the count");
        quotas.set_counted(HashMap::from([("v/det".to_string(), 90)]));
        assert!(quotas.wait_counted(Duration::from_millis(1)).await);
        quotas.reserve("v/det", 10).unwrap();
        let refused = quotas.reserve("v/det", 1).unwrap_err();
        assert_eq!(refused, Exceeded { account: "v/det".into(), used_bytes: 100, limit_bytes: 100, wanted_bytes: 1 });
        let message = refused.message();
        assert!(message.starts_with("this upload would take the artifacts of project v/det past their quota of 100B"));
        assert!(message.contains("`artifact_quota` of project det in team v's [[team.project]] table"), "{message}");
        quotas.release("v/det", 30);
        assert_eq!(quotas.used("v/det"), 70);
        quotas.reserve("v/big", 1 << 40).unwrap();
        assert!(quotas.check("v", 51).is_err() && quotas.check("v", 50).is_ok(), "the team's own limit");
        assert!(quotas.reserve("", 101).unwrap_err().message().contains("runs of no team"));
        quotas.release("nobody", 5);
        assert_eq!(quotas.used("nobody"), 0);
    }

    #[tokio::test]
    async fn nothing_is_counted_without_a_limit() {
        let quotas = ArtifactQuotas::new(None, BTreeMap::new());
        assert!(quotas.wait_counted(Duration::from_millis(1)).await);
        quotas.reserve("a/b", u64::MAX).unwrap();
    }

    #[test]
    fn accounts_are_projects_then_teams() {
        assert_eq!(account(Some("v"), Some("det")), "v/det");
        assert_eq!(account(Some("v"), None), "v");
        assert_eq!(account(None, Some("det")), "");
    }
}
