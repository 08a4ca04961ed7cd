//! Node failures in a replay: the ones a cluster file lists (`[[failure]]`: a node, when it fails, how long until it
//! is back) and the ones drawn at a rate per node (`node_failure_rate` a day, each back after `node_recovery`), from a
//! random stream of their own so that a cluster without failures replays exactly as before.
//!
//! Only the nodes the cluster file declares fail; the nodes elastic pools start come and go on their own terms.
//! This module only says when nodes fail and come back; what becomes of their jobs is the core's lifecycle, applied
//! by the engine.

use std::collections::HashMap;

use rand::Rng;
use serde::Deserialize;
use toml::Spanned;

use crate::engine::SimRng;
use crate::error::InputError;

/// The most failures a cluster file may list.
pub const FAILURES_MAX: usize = 100_000;
/// The highest failure rate, per node and day: one every ~15 minutes, already far beyond any real cluster.
pub const RATE_PER_DAY_MAX: f64 = 100.0;
/// The stream of the run's seed that node failures are drawn from, apart from the one that orders submissions.
pub const FAILURE_STREAM: u64 = 0x6661_696c;

/// One failure the cluster file lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFailure {
    pub node: String,
    pub at_ms: u64,
    pub recover_after_ms: u64,
}

/// The node failures of a cluster.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeFailures {
    /// In the order the file lists them.
    pub listed: Vec<NodeFailure>,
    /// How often each declared node fails on average, per day; 0 for never.
    pub rate_per_day: f64,
    /// How long a node that failed at that rate takes to come back.
    pub recovery_ms: u64,
}

impl NodeFailures {
    pub fn is_empty(&self) -> bool {
        self.listed.is_empty() && self.rate_per_day == 0.0
    }

    /// How long after `now_ms` the next drawn failure of a node comes: exponentially distributed with a mean of a day
    /// over the rate, in whole milliseconds and at least one.
    pub fn draw_gap_ms(&self, rng: &mut SimRng) -> u64 {
        let mean_ms = 86_400_000.0 / self.rate_per_day;
        let u: f64 = rng.random_range(f64::EPSILON..1.0f64);
        ((-u.ln() * mean_ms) as u64).max(1)
    }
}

/// A `[[failure]]` table of the cluster file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FailureSpec {
    node: Spanned<String>,
    at: Spanned<String>,
    recover_after: Spanned<String>,
}

/// When one listed failure begins and ends, and the span of its `at` in the file.
type Downtime = (u64, u64, std::ops::Range<usize>);

/// The failure settings of a cluster file, checked against its nodes: `file` and `line` locate each field.
pub(crate) struct FailureFields<'a> {
    pub listed: &'a [FailureSpec],
    pub rate: Option<&'a Spanned<f64>>,
    pub recovery: Option<&'a Spanned<String>>,
}

/// Reads the failure settings: every listed node is declared, its failures do not overlap (a node is back before it
/// fails again), a rate is within bounds and comes with a recovery time. `error` locates a field's value; `nodes`
/// holds the names of the declared nodes.
pub(crate) fn node_failures(
    fields: FailureFields<'_>,
    nodes: &[String],
    error: impl Fn(&str, std::ops::Range<usize>, String) -> InputError,
) -> Result<NodeFailures, InputError> {
    let duration = |field: &str, text: &Spanned<String>| {
        ferry_units::parse_duration_s(text.get_ref()).map(|s| s * 1000).map_err(|e| error(field, text.span(), e.0))
    };
    if fields.listed.len() > FAILURES_MAX {
        let spec = &fields.listed[FAILURES_MAX];
        return Err(error("node", spec.node.span(), format!("more than {FAILURES_MAX} failures")));
    }
    let mut listed = Vec::with_capacity(fields.listed.len());
    // For each node, when each of its failures begins and ends, and where the file says so.
    let mut by_node: HashMap<&str, Vec<Downtime>> = HashMap::new();
    for spec in fields.listed {
        let node = spec.node.get_ref().trim();
        if !nodes.iter().any(|n| n == node) {
            let message = format!(
                "no [[node]] is named \"{node}\"; a failure names one of the nodes the file declares (elastic pools' nodes do not fail)"
            );
            return Err(error("node", spec.node.span(), message));
        }
        let at_ms = duration("at", &spec.at)?;
        let recover_after_ms = duration("recover_after", &spec.recover_after)?;
        if recover_after_ms == 0 {
            let message = "a failed node takes some time to come back; write a duration above 0, such as 10m";
            return Err(error("recover_after", spec.recover_after.span(), message.to_string()));
        }
        by_node.entry(node).or_default().push((at_ms, at_ms + recover_after_ms, spec.at.span()));
        listed.push(NodeFailure { node: node.to_string(), at_ms, recover_after_ms });
    }
    for (node, spans) in &mut by_node {
        spans.sort_by_key(|(at, _, _)| *at);
        for pair in spans.windows(2) {
            let ((at, back, _), (next, _, span)) = (&pair[0], &pair[1]);
            if next < back {
                let message = format!(
                    "node {node} fails again before it is back from its failure at {}s (back at {}s); a node fails only while it is up",
                    at / 1000,
                    back / 1000
                );
                return Err(error("at", span.clone(), message));
            }
        }
    }
    let rate_per_day = match fields.rate {
        None => 0.0,
        Some(rate) => {
            let r = *rate.get_ref();
            if !(r.is_finite() && (0.0..=RATE_PER_DAY_MAX).contains(&r)) {
                let message = format!(
                    "{r} is not a failure rate; write how often each node fails a day on average, from 0 to {RATE_PER_DAY_MAX}, such as 0.1"
                );
                return Err(error("node_failure_rate", rate.span(), message));
            }
            r
        }
    };
    let recovery_ms = match (fields.recovery, fields.rate) {
        (Some(text), _) => match duration("node_recovery", text)? {
            0 => {
                let message = "a failed node takes some time to come back; write a duration above 0, such as 10m";
                return Err(error("node_recovery", text.span(), message.to_string()));
            }
            ms => ms,
        },
        (None, Some(rate)) if rate_per_day > 0.0 => {
            let message = "a failure rate needs the time a node takes to come back; add node_recovery = \"10m\", say";
            return Err(error("node_failure_rate", rate.span(), message.to_string()));
        }
        (None, _) => 0,
    };
    Ok(NodeFailures { listed, rate_per_day, recovery_ms })
}
