//! Secrets on the wire: what a user stores (a value goes in, never comes out) and how a job asks for them.
//!
//! A secret belongs to a user (only that user's jobs may use it) or to a team's project (the jobs of that project
//! may). A job names the secrets it needs (`ferry run --secret NAME`, or `--secret VAR=NAME` to read it under
//! another variable name); the server resolves each at the job's start, the user's own first, then its project's,
//! and hands the value to the node or engine that runs it, never to anyone who reads the job.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The largest secret value, in bytes.
pub const SECRET_BYTES_MAX: usize = 64 * 1024;
/// The longest secret name.
pub const SECRET_NAME_CHARS_MAX: usize = 128;
/// The most secrets one job may use.
pub const SECRETS_PER_JOB_MAX: usize = 64;
/// The most secrets one user or one project may hold.
pub const SECRETS_PER_OWNER_MAX: usize = 1000;

/// Whose a secret is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SecretScope {
    /// A user's own: only its jobs may use it.
    User,
    /// A team's project: every job of the project may use it.
    Project,
}

/// A value to store under a name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetSecret {
    /// The value; at most 64 KiB of UTF-8 text.
    pub value: String,
}

/// A secret as listed: who holds it and when it changed, never its value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SecretInfo {
    pub name: String,
    pub scope: SecretScope,
    /// The user a user secret belongs to.
    #[serde(default)]
    pub user: Option<String>,
    /// The team and project a project secret belongs to.
    #[serde(default)]
    pub team: Option<String>,
    #[serde(default)]
    pub project: Option<String>,
    pub created_at_us: i64,
    pub updated_at_us: i64,
    /// Who set the current value.
    #[serde(default)]
    pub updated_by: Option<String>,
}

/// The secrets a caller may use or manage: its own, and its teams' projects'.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SecretList {
    pub secrets: Vec<SecretInfo>,
}

/// The answer to storing a secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SecretSet {
    pub secret: SecretInfo,
    /// True when the name was new, false when an older value was replaced.
    pub created: bool,
}

/// A run's request for its secrets, on an engine that has no secret store of its own (Ray): the one-time ticket
/// the engine's entrypoint carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FetchSecrets {
    pub ticket: String,
}

/// The run's secret values by environment variable name, answered once per run.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FetchedSecrets {
    pub env: std::collections::BTreeMap<String, String>,
}

impl std::fmt::Debug for FetchedSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.env.keys().map(|k| (k, "(hidden)"))).finish()
    }
}

/// Whether `name` may name a secret, and the environment variable a job reads it from: letters, digits and `_`, not
/// starting with a digit, at most 128 characters. `None` when it may; else what is wrong.
pub fn check_name(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("a secret name is empty; use letters, digits and `_`, such as HF_TOKEN".into());
    }
    if name.chars().count() > SECRET_NAME_CHARS_MAX {
        return Some(format!("a secret name is longer than {SECRET_NAME_CHARS_MAX} characters"));
    }
    if !crate::text::is_env_name(name) {
        return Some(format!(
            "`{}` is not a valid secret name: use letters, digits and `_`, not starting with a digit (it becomes an \
             environment variable name), such as HF_TOKEN",
            crate::text::bounded(name, 200)
        ));
    }
    None
}

/// Whether a job may set `var` from a secret: not one of the variables Ferry itself sets (`FERRY_*`, `MLFLOW_*`),
/// which a secret must not be able to replace. `None` when it may.
pub fn check_job_var(var: &str) -> Option<String> {
    let reserved = ["FERRY_", "MLFLOW_"].iter().find(|p| var.to_ascii_uppercase().starts_with(*p));
    reserved
        .map(|p| format!("`{var}`: variables starting with {p} are Ferry's own; read the secret under another name"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_environment_variable_names() {
        assert_eq!(check_name("HF_TOKEN"), None);
        assert_eq!(check_name("_x1"), None);
        for bad in ["", "1A", "A-B", "A B", "A\0", "Ä", "a=b", &"A".repeat(129)] {
            assert!(check_name(bad).is_some(), "{bad:?}");
        }
        assert!(check_job_var("FERRY_TOKEN").is_some());
        assert!(check_job_var("mlflow_tracking_token").is_some());
        assert_eq!(check_job_var("WANDB_API_KEY"), None);
    }
}
