//! The simulated cluster: pools in an admin-set order, with burst settings, optional prices and optional elastic
//! capacity (nodes started on demand from a template), teams with quotas and projects with quotas within them, and
//! nodes. Read from a TOML file (documented in the README; its pools, teams and projects are written as in the
//! server's configuration file) or from the node list of the Alibaba GPU trace.

// The core's structs are built with `..Default::default()` even where every field is named today, so that fields it
// adds later take their defaults instead of breaking the simulator.
#![allow(clippy::needless_update)]

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use ferry_core::{
    ElasticPool, GpuPlacement, NodeInfo, NodeTemplate, PoolInfo, ProjectInfo, QueueOrder, ResourceKind, Resources,
    TeamInfo,
};
use serde::Deserialize;
use toml::Spanned;

use crate::csvin::{self, Columns};
use crate::error::InputError;
use crate::failures::{node_failures, FailureFields, FailureSpec, NodeFailures};

/// The most nodes a cluster may have; ten times the largest cluster the scheduler is built for.
pub const NODES_MAX: usize = 100_000;
/// The most GPUs one node may have.
pub const GPUS_PER_NODE_MAX: u64 = 64;
/// The most CPUs one node may have.
pub const CPUS_PER_NODE_MAX: f64 = 100_000.0;
/// The pool that the nodes of a trace's node list belong to.
pub const TRACE_POOL: &str = "trace";
/// The most pools or teams a cluster may define.
pub const POOLS_MAX: usize = 256;
/// The longest start-up delay or idle time before release of an elastic pool: a week is already far beyond any cloud.
pub const ELASTIC_DELAY_S_MAX: u64 = 7 * 86_400;
/// The most teams a cluster may define.
pub const TEAMS_MAX: usize = 10_000;
/// The most projects a cluster may define, all teams together.
pub const PROJECTS_MAX: usize = 10_000;

/// A set of nodes with a place in the burst order and optional prices.
#[derive(Clone, Debug, PartialEq)]
pub struct Pool {
    pub name: String,
    /// Lower comes first: owned capacity before burst capacity.
    pub order: i32,
    /// Whether the pool is (elastic, paid) burst capacity, used only when the pools before it are full for what a
    /// job needs, or once the job has waited `burst_after_s`.
    pub burst: bool,
    pub burst_after_s: Option<u64>,
    pub price_gpu_hour: f64,
    pub price_cpu_hour: f64,
    /// What one node of an elastic pool costs an hour, as its cloud bills the machine (the server's `[pool.cloud]`
    /// price); without it, the node's GPUs and CPUs at the pool's prices.
    pub price_node_hour: Option<f64>,
    /// Set for a burst pool whose nodes start on demand from a template; it has no nodes of its own.
    pub elastic: Option<ElasticPool>,
    /// The chance that a node asked of the elastic pool fails to start (the provider has no capacity): the core hears
    /// `ProvisionFailed` and the pool cools down for its `retry_after_s`.
    pub start_failure_rate: f64,
    /// The chance that a node asked of the elastic pool starts but never joins (a machine that hangs at boot): the core
    /// gives up on it after the pool's `startup_timeout_s`, which such a pool must have.
    pub join_failure_rate: f64,
    /// Whether the pool's backend runs jobs in container images, and gangs (a Slurm pool runs no images, a Ray pool
    /// neither): only such pools take such jobs.
    pub images: bool,
    pub gangs: bool,
}

impl Pool {
    /// What the scheduler core is told of the pool.
    pub fn info(&self) -> PoolInfo {
        PoolInfo {
            name: self.name.clone(),
            order: self.order,
            burst: self.burst,
            burst_after_s: self.burst_after_s,
            elastic: self.elastic.clone(),
            images: self.images,
            gangs: self.gangs,
        }
    }

    /// What one node of the pool costs an hour: its GPUs and CPUs at the pool's prices.
    pub fn node_price_hour(&self, capacity: &Resources) -> f64 {
        if let Some(price) = self.price_node_hour {
            return price;
        }
        f64::from(capacity.gpus) * self.price_gpu_hour + capacity.cpu_millis as f64 / 1000.0 * self.price_cpu_hour
    }

    /// The name of the `n`th node elastic pool `pool` starts (from 1): the pool's name, a dash and the number.
    pub fn elastic_node_name(pool: &str, n: u64) -> String {
        format!("{pool}-{n}")
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Cluster {
    /// Sorted by `order`, then name.
    pub pools: Vec<Pool>,
    pub teams: Vec<TeamInfo>,
    /// Projects with quotas of their own within their teams, in the order they are declared.
    pub projects: Vec<ProjectInfo>,
    /// How long past usage weighs in fair share between users; 0 leaves the core's default.
    pub fair_share_half_life_s: u64,
    /// How GPU jobs choose among the nodes that can hold them.
    pub gpu_placement: GpuPlacement,
    /// How the queue is ordered within a priority.
    pub queue_order: QueueOrder,
    /// How many blocked jobs a cycle reserves for; `None`: the core's default.
    pub reserve_depth: Option<u32>,
    pub nodes: Vec<NodeInfo>,
    /// When nodes fail and how long they take to come back.
    pub failures: NodeFailures,
}

impl Cluster {
    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.iter().find(|p| p.name == name)
    }

    /// The most nodes the elastic pools may start, all together.
    pub fn elastic_nodes_max(&self) -> u64 {
        self.pools.iter().filter_map(|p| p.elastic.as_ref()).map(|e| u64::from(e.max_nodes)).sum()
    }

    pub fn gpus(&self) -> u64 {
        self.nodes.iter().map(|n| u64::from(n.capacity.gpus)).sum()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterFile {
    #[serde(default)]
    pool: Vec<PoolSpec>,
    #[serde(default)]
    team: Vec<TeamSpec>,
    fair_share_half_life: Option<Spanned<String>>,
    #[serde(default)]
    gpu_placement: GpuPlacement,
    queue_order: Option<Spanned<String>>,
    queue_aging: Option<Spanned<String>>,
    queue_lease: Option<Spanned<String>>,
    queue_levels: Option<Spanned<Vec<String>>>,
    reserve_depth: Option<Spanned<i64>>,
    #[serde(default)]
    node: Vec<Spanned<NodeSpec>>,
    node_failure_rate: Option<Spanned<f64>>,
    node_recovery: Option<Spanned<String>>,
    #[serde(default)]
    failure: Vec<FailureSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolSpec {
    name: Spanned<String>,
    order: i32,
    #[serde(default)]
    burst: bool,
    burst_after: Option<Spanned<String>>,
    price_gpu_hour: Option<Spanned<f64>>,
    price_cpu_hour: Option<Spanned<f64>>,
    price_node_hour: Option<Spanned<f64>>,
    max_nodes: Option<Spanned<i64>>,
    startup: Option<Spanned<String>>,
    idle_release: Option<Spanned<String>>,
    startup_timeout: Option<Spanned<String>>,
    retry_after: Option<Spanned<String>>,
    start_failure_rate: Option<Spanned<f64>>,
    join_failure_rate: Option<Spanned<f64>>,
    node: Option<Spanned<TemplateSpec>>,
    #[serde(default = "yes")]
    images: bool,
    #[serde(default = "yes")]
    gangs: bool,
}

fn yes() -> bool {
    true
}

/// The node an elastic pool starts, as `node = { ... }` in its `[[pool]]` table: a `[[node]]` without a name or pool.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateSpec {
    cpus: Spanned<f64>,
    memory: Spanned<String>,
    gpus: Option<Spanned<i64>>,
    gpu_model: Option<Spanned<String>>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TeamSpec {
    name: Spanned<String>,
    quota: Spanned<AmountSpec>,
    borrow_limit: Option<Spanned<AmountSpec>>,
    /// The `[[team.project]]` tables that follow the team's.
    #[serde(default)]
    project: Vec<ProjectSpec>,
}

/// A project within a team, as a `[[team.project]]` table: its share of the team's quota, and how much of its sibling
/// projects' idle quota it may borrow.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProjectSpec {
    name: Spanned<String>,
    quota: Spanned<AmountSpec>,
    borrow_limit: Option<Spanned<AmountSpec>>,
}

/// An amount of resources; what is left out is unlimited, in a quota and in a borrowing limit.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AmountSpec {
    gpus: Option<u32>,
    cpus: Option<f64>,
    memory: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeSpec {
    name: Option<Spanned<String>>,
    name_prefix: Option<Spanned<String>>,
    count: Option<Spanned<i64>>,
    pool: Spanned<String>,
    cpus: Spanned<f64>,
    memory: Spanned<String>,
    gpus: Option<Spanned<i64>>,
    gpu_model: Option<Spanned<String>>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// Locates byte offsets of one TOML file as lines.
struct Source<'a> {
    file: &'a str,
    text: &'a str,
}

impl Source<'_> {
    fn line(&self, span: &Range<usize>) -> u64 {
        let end = span.start.min(self.text.len());
        self.text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() as u64 + 1
    }

    fn error<T>(&self, field: &str, value: &Spanned<T>, message: impl Into<String>) -> InputError {
        InputError::new(self.file, self.line(&value.span()), Some(format!("field {field}")), message)
    }

    /// Turns a TOML syntax or shape error into a located message, naming the key when the error is about a value.
    fn toml_error(&self, e: &toml::de::Error) -> InputError {
        let span = e.span().unwrap_or(0..0);
        let line = self.line(&span);
        let message = e.message().trim().to_string();
        let text_line = self.text.lines().nth(line as usize - 1).unwrap_or("");
        let key = text_line.split_once('=').map(|(k, _)| k.trim().trim_matches('"').to_string());
        let names_field = message.contains("field `");
        let field = key.filter(|k| !k.is_empty() && !k.starts_with('[') && !names_field).map(|k| format!("field {k}"));
        let message = match table_hint(text_line) {
            Some(hint) if message.starts_with("invalid type: map, expected a sequence") => format!("{message}; {hint}"),
            _ => message,
        };
        InputError::new(self.file, line, field, message)
    }
}

/// What to do about a table header found where a list of tables is expected: `[team]` written for `[[team]]`, or a
/// `[[team.project]]` with no `[[team]]` before it.
fn table_hint(text_line: &str) -> Option<String> {
    let header = text_line.trim();
    if let Some(name) = header.strip_prefix("[[").and_then(|h| h.strip_suffix("]]")) {
        let name = name.trim();
        let (parent, _) = name.rsplit_once('.')?;
        return Some(format!("a [[{name}]] table belongs to the [[{parent}]] table before it; declare that first"));
    }
    let name = header.strip_prefix('[')?.strip_suffix(']')?.trim();
    Some(format!("write [[{name}]], with double brackets, as each table of a list is written"))
}

/// Parses a cluster file. `file` is the name errors use.
pub fn parse_cluster_toml(file: &str, text: &str) -> Result<Cluster, InputError> {
    let src = Source { file, text };
    let spec: ClusterFile = toml::from_str(text).map_err(|e| src.toml_error(&e))?;
    let pools = pools(&src, spec.pool)?;
    let (teams, projects) = teams(&src, spec.team)?;
    let fair_share_half_life_s = match &spec.fair_share_half_life {
        Some(t) => duration_s(&src, "fair_share_half_life", t)?,
        None => 0,
    };
    let queue_order = queue_order(&src, &spec.queue_order, &spec.queue_aging)?;
    let queue_order = match &spec.queue_lease {
        None => queue_order,
        Some(t) => {
            let lease = if t.get_ref() == "off" { None } else { Some(duration_s(&src, "queue_lease", t)?) };
            queue_order.with_lease(lease).map_err(|e| src.error("queue_lease", t, e))?
        }
    };
    let queue_order = match &spec.queue_levels {
        None => queue_order,
        Some(levels) => {
            let gpu_s = levels
                .get_ref()
                .iter()
                .map(|t| ferry_units::parse_duration_s(t).map_err(|e| src.error("queue_levels", levels, e.0)))
                .collect::<Result<Vec<u64>, InputError>>()?;
            queue_order.with_levels(gpu_s).map_err(|e| src.error("queue_levels", levels, e))?
        }
    };
    let reserve_depth = match &spec.reserve_depth {
        None => None,
        Some(n) => Some(crate::cli::reserve_depth(*n.get_ref()).map_err(|message| {
            InputError::new(file, src.line(&n.span()), Some("field reserve_depth".to_string()), message)
        })?),
    };
    let mut nodes = Vec::new();
    let mut seen: HashMap<String, u64> = HashMap::new();
    let elastic_max: usize = pools.iter().filter_map(|p| p.elastic.as_ref()).map(|e| e.max_nodes as usize).sum();
    for node in &spec.node {
        let line = src.line(&node.span());
        for info in expand_node(&src, node.get_ref(), &pools)? {
            let field = || Some("field name".to_string());
            if let Some(first) = seen.insert(info.name.clone(), line) {
                let message = format!("node \"{}\" is already declared on line {first}", info.name);
                return Err(InputError::new(file, line, field(), message));
            }
            if let Some(pool) = pools.iter().find(|p| p.elastic.is_some() && is_elastic_name(p, &info.name)) {
                let message = format!(
                    "node name \"{}\" is kept for the nodes elastic pool {} starts; choose another",
                    info.name, pool.name
                );
                return Err(InputError::new(file, line, field(), message));
            }
            nodes.push(info);
            if nodes.len() + elastic_max > NODES_MAX {
                let message = match elastic_max {
                    0 => format!("more than {NODES_MAX} nodes"),
                    n => format!("more than {NODES_MAX} nodes, counting the {n} the elastic pools may start"),
                };
                return Err(InputError::new(file, line, None, message));
            }
        }
    }
    if nodes.is_empty() && elastic_max == 0 {
        let message =
            "no [[node]] is declared; a cluster needs at least one node, or an elastic pool that starts nodes";
        return Err(InputError::new(file, 1, None, message));
    }
    let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    let fields = FailureFields {
        listed: &spec.failure,
        rate: spec.node_failure_rate.as_ref(),
        recovery: spec.node_recovery.as_ref(),
    };
    let failures = node_failures(fields, &names, |field, span, message| {
        InputError::new(file, src.line(&span), Some(format!("field {field}")), message)
    })?;
    let gpu_placement = spec.gpu_placement;
    Ok(Cluster {
        pools,
        teams,
        projects,
        fair_share_half_life_s,
        gpu_placement,
        queue_order,
        reserve_depth,
        nodes,
        failures,
    })
}

/// `queue_order = "shortest-first"` and `queue_aging = "1d"` (or `"off"`), as the server's configuration writes them.
fn queue_order(
    src: &Source<'_>,
    name: &Option<Spanned<String>>,
    aging: &Option<Spanned<String>>,
) -> Result<QueueOrder, InputError> {
    let aging_s = match aging {
        Some(t) if t.get_ref() == "off" => Some(0),
        Some(t) => Some(duration_s(src, "queue_aging", t)?),
        None => None,
    };
    match (name, aging) {
        (Some(name), _) => {
            QueueOrder::configure(name.get_ref(), aging_s).map_err(|e| src.error("queue_order", name, e))
        }
        (None, Some(aging)) => Err(src.error(
            "queue_aging",
            aging,
            "an aging bound goes with queue_order = \"shortest-first\" or \"least-attained\"; set one".to_string(),
        )),
        (None, None) => Ok(QueueOrder::default()),
    }
}

fn duration_s(src: &Source<'_>, field: &str, text: &Spanned<String>) -> Result<u64, InputError> {
    ferry_units::parse_duration_s(text.get_ref()).map_err(|e| src.error(field, text, e.0))
}

/// Whether `name` is one that elastic pool `pool` gives the nodes it starts (see `Pool::elastic_node_name`).
fn is_elastic_name(pool: &Pool, name: &str) -> bool {
    name.strip_prefix(pool.name.as_str())
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The teams and, in the order they are declared, their projects.
fn teams(src: &Source<'_>, specs: Vec<TeamSpec>) -> Result<(Vec<TeamInfo>, Vec<ProjectInfo>), InputError> {
    let mut teams = Vec::new();
    let mut projects = Vec::new();
    let mut lines: HashMap<String, u64> = HashMap::new();
    for spec in specs {
        let name = spec.name.get_ref().trim().to_string();
        if name.is_empty() {
            return Err(src.error("name", &spec.name, "a team needs a name"));
        }
        if let Some(first) = lines.insert(name.clone(), src.line(&spec.name.span())) {
            return Err(src.error("name", &spec.name, format!("team \"{name}\" is already declared on line {first}")));
        }
        if teams.len() == TEAMS_MAX {
            return Err(src.error("name", &spec.name, format!("more than {TEAMS_MAX} teams")));
        }
        // What a quota or a borrowing limit leaves out is not limited (a quota of GPUs alone leaves CPUs and memory
        // free for all).
        let unlimited = Resources::UNLIMITED;
        let quota = amount(src, "quota", &spec.quota, unlimited)?;
        let borrow_limit = spec.borrow_limit.as_ref().map(|b| amount(src, "borrow_limit", b, unlimited)).transpose()?;
        team_projects(src, &name, &quota, spec.project, &mut projects)?;
        teams.push(TeamInfo { name, quota, borrow_limit, ..TeamInfo::default() });
    }
    Ok((teams, projects))
}

/// Reads the projects of team `team`, whose quota is `team_quota`, onto `projects`: names unique within the team, a
/// quota where what is left out is the team's and which may not exceed the team's, and a borrowing limit where what
/// is left out is unlimited.
fn team_projects(
    src: &Source<'_>,
    team: &str,
    team_quota: &Resources,
    specs: Vec<ProjectSpec>,
    projects: &mut Vec<ProjectInfo>,
) -> Result<(), InputError> {
    let mut lines: HashMap<String, u64> = HashMap::new();
    for spec in specs {
        let name = spec.name.get_ref().trim().to_string();
        if name.is_empty() {
            return Err(src.error("name", &spec.name, format!("a project of team \"{team}\" needs a name")));
        }
        if let Some(first) = lines.insert(name.clone(), src.line(&spec.name.span())) {
            let message = format!("project \"{name}\" of team \"{team}\" is already declared on line {first}");
            return Err(src.error("name", &spec.name, message));
        }
        if projects.len() == PROJECTS_MAX {
            return Err(src.error("name", &spec.name, format!("more than {PROJECTS_MAX} projects")));
        }
        let quota = amount(src, "quota", &spec.quota, *team_quota)?;
        if let Some((kind, asked, team_has)) = first_over(&quota, team_quota) {
            let message = format!(
                "the project's quota is larger than its team's: {} where team \"{team}\" has {}; a project's quota is its share of the team's",
                kind.amount(asked),
                kind.amount(team_has)
            );
            return Err(src.error("quota", &spec.quota, message));
        }
        let unlimited = Resources::UNLIMITED;
        let borrow_limit = spec.borrow_limit.as_ref().map(|b| amount(src, "borrow_limit", b, unlimited)).transpose()?;
        projects.push(ProjectInfo { team: team.to_string(), name, quota, borrow_limit, ..ProjectInfo::default() });
    }
    Ok(())
}

/// The first resource, GPUs then CPUs then memory, of which `amount` holds more than `limit`: which one, and both
/// amounts of it.
pub(crate) fn first_over(amount: &Resources, limit: &Resources) -> Option<(ResourceKind, u64, u64)> {
    let of = |r: &Resources, kind| match kind {
        ResourceKind::Gpus => u64::from(r.gpus),
        ResourceKind::Cpus => r.cpu_millis,
        ResourceKind::Memory => r.memory_bytes,
    };
    [ResourceKind::Gpus, ResourceKind::Cpus, ResourceKind::Memory]
        .into_iter()
        .find(|&kind| of(amount, kind) > of(limit, kind))
        .map(|kind| (kind, of(amount, kind), of(limit, kind)))
}

fn amount(
    src: &Source<'_>,
    field: &str,
    spec: &Spanned<AmountSpec>,
    missing: Resources,
) -> Result<Resources, InputError> {
    let a = spec.get_ref();
    let cpu_millis = match a.cpus {
        Some(c) if c.is_finite() && (0.0..=CPUS_PER_NODE_MAX * NODES_MAX as f64).contains(&c) => {
            (c * 1000.0).round() as u64
        }
        Some(c) => return Err(src.error(field, spec, format!("cpus {c} is not a CPU count; write zero or more"))),
        None => missing.cpu_millis,
    };
    let memory_bytes = match &a.memory {
        Some(m) => ferry_units::parse_memory(m).map_err(|e| src.error(field, spec, format!("memory: {}", e.0)))?,
        None => missing.memory_bytes,
    };
    Ok(Resources { cpu_millis, memory_bytes, gpus: a.gpus.unwrap_or(missing.gpus) })
}

fn pools(src: &Source<'_>, specs: Vec<PoolSpec>) -> Result<Vec<Pool>, InputError> {
    let mut pools: Vec<Pool> = Vec::new();
    // How many nodes the elastic pools so far may start together.
    let mut elastic_total = 0;
    let mut lines: HashMap<String, u64> = HashMap::new();
    for spec in specs {
        let name = spec.name.get_ref().trim().to_string();
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(src.error(
                "name",
                &spec.name,
                "a pool's name must be a non-empty word, such as local or aws-spot",
            ));
        }
        if pools.len() == POOLS_MAX {
            return Err(src.error("name", &spec.name, format!("more than {POOLS_MAX} pools")));
        }
        if let Some(first) = lines.insert(name.clone(), src.line(&spec.name.span())) {
            return Err(src.error("name", &spec.name, format!("pool \"{name}\" is already declared on line {first}")));
        }
        let price = |field: &str, value: &Option<Spanned<f64>>| match value {
            None => Ok(0.0),
            Some(v) if v.get_ref().is_finite() && *v.get_ref() >= 0.0 => Ok(*v.get_ref()),
            Some(v) => {
                Err(src.error(field, v, format!("{} is not a price; write zero or more, such as 2.5", v.get_ref())))
            }
        };
        let price_gpu_hour = price("price_gpu_hour", &spec.price_gpu_hour)?;
        let price_cpu_hour = price("price_cpu_hour", &spec.price_cpu_hour)?;
        let price_node_hour = match &spec.price_node_hour {
            None => None,
            Some(v) if spec.max_nodes.is_none() => {
                return Err(src.error(
                    "price_node_hour",
                    v,
                    "price_node_hour applies only to an elastic pool; set max_nodes too",
                ))
            }
            Some(_) => Some(price("price_node_hour", &spec.price_node_hour)?),
        };
        let burst_after_s = match &spec.burst_after {
            Some(t) if !spec.burst => {
                return Err(src.error("burst_after", t, "burst_after applies only to a pool with burst = true"));
            }
            Some(t) => Some(duration_s(src, "burst_after", t)?),
            None => None,
        };
        let elastic = elastic(src, &spec, &mut elastic_total)?;
        let chance = |field: &str, value: &Option<Spanned<f64>>| match value {
            None => Ok(0.0),
            Some(r) if (0.0..=1.0).contains(r.get_ref()) => Ok(*r.get_ref()),
            Some(r) => Err(src.error(field, r, format!("{} is not a chance; write 0 to 1, such as 0.1", r.get_ref()))),
        };
        let start_failure_rate = chance("start_failure_rate", &spec.start_failure_rate)?;
        let join_failure_rate = chance("join_failure_rate", &spec.join_failure_rate)?;
        if let (Some(rate), Some(0) | None) = (&spec.join_failure_rate, elastic.as_ref().map(|e| e.startup_timeout_s)) {
            if *rate.get_ref() > 0.0 {
                let message = "nodes that never join are given up on only after a startup_timeout; set one, such as startup_timeout = \"15m\"";
                return Err(src.error("join_failure_rate", rate, message));
            }
        }
        let (order, burst) = (spec.order, spec.burst);
        pools.push(Pool {
            name,
            order,
            burst,
            burst_after_s,
            price_gpu_hour,
            price_cpu_hour,
            price_node_hour,
            elastic,
            start_failure_rate,
            join_failure_rate,
            images: spec.images,
            gangs: spec.gangs,
        });
    }
    pools.sort_by(|a, b| (a.order, &a.name).cmp(&(b.order, &b.name)));
    Ok(pools)
}

/// The elastic capacity of a pool: `max_nodes` makes a burst pool elastic, and then `startup`, `idle_release` and
/// the template `node` are required; without it, none of them may be given. `elastic_total` adds up the pools'
/// `max_nodes`, which may not exceed `NODES_MAX` together.
fn elastic(src: &Source<'_>, spec: &PoolSpec, elastic_total: &mut usize) -> Result<Option<ElasticPool>, InputError> {
    let Some(max_nodes) = &spec.max_nodes else {
        let stray = [
            ("startup", spec.startup.as_ref().map(|v| v.span())),
            ("idle_release", spec.idle_release.as_ref().map(|v| v.span())),
            ("startup_timeout", spec.startup_timeout.as_ref().map(|v| v.span())),
            ("retry_after", spec.retry_after.as_ref().map(|v| v.span())),
            ("start_failure_rate", spec.start_failure_rate.as_ref().map(|v| v.span())),
            ("join_failure_rate", spec.join_failure_rate.as_ref().map(|v| v.span())),
            ("node", spec.node.as_ref().map(|v| v.span())),
        ];
        if let Some((field, Some(span))) = stray.into_iter().find(|(_, span)| span.is_some()) {
            let message = format!("{field} applies only to an elastic pool; set max_nodes too");
            return Err(InputError::new(src.file, src.line(&span), Some(format!("field {field}")), message));
        }
        return Ok(None);
    };
    if !spec.burst {
        return Err(src.error("max_nodes", max_nodes, "an elastic pool is burst capacity; set burst = true"));
    }
    let n = *max_nodes.get_ref();
    if !(1..=NODES_MAX as i64).contains(&n) {
        return Err(src.error("max_nodes", max_nodes, format!("{n} is not a node count; write 1 to {NODES_MAX}")));
    }
    *elastic_total += n as usize;
    if *elastic_total > NODES_MAX {
        let message = format!("the elastic pools may start more than {NODES_MAX} nodes together");
        return Err(src.error("max_nodes", max_nodes, message));
    }
    let needs = |what: &str| src.error("max_nodes", max_nodes, format!("an elastic pool needs {what}"));
    let startup = spec
        .startup
        .as_ref()
        .ok_or_else(|| needs("startup, how long a new node takes to start, such as startup = \"3m\""))?;
    let idle_release = spec.idle_release.as_ref().ok_or_else(|| {
        needs("idle_release, how long a node may hold no job before it is given back, such as idle_release = \"10m\"")
    })?;
    let node = spec
        .node
        .as_ref()
        .ok_or_else(|| needs("node, the node it starts, such as node = { cpus = 96, memory = \"768GiB\", gpus = 8 }"))?
        .get_ref();
    let delay = |field: &str, text: &Spanned<String>| {
        let s = duration_s(src, field, text)?;
        if s > ELASTIC_DELAY_S_MAX {
            return Err(src.error(
                field,
                text,
                format!("{} is longer than a week; is the unit right?", text.get_ref()),
            ));
        }
        Ok(s)
    };
    let (startup_s, idle_release_s) = (delay("startup", startup)?, delay("idle_release", idle_release)?);
    let optional = |field: &str, text: &Option<Spanned<String>>| text.as_ref().map_or(Ok(0), |t| delay(field, t));
    let startup_timeout_s = optional("startup_timeout", &spec.startup_timeout)?;
    let retry_after_s = optional("retry_after", &spec.retry_after)?;
    if let (Some(text), true) = (&spec.startup_timeout, startup_timeout_s <= startup_s) {
        let message = format!(
            "{} is not longer than startup ({}s): no node could ever join in time; make it longer",
            text.get_ref(),
            startup_s
        );
        return Err(src.error("startup_timeout", text, message));
    }
    let (capacity, gpu_model) =
        capacity(src, "node.", &node.cpus, &node.memory, node.gpus.as_ref(), node.gpu_model.as_ref())?;
    let node = NodeTemplate { capacity, gpu_model, labels: node.labels.clone() };
    Ok(Some(ElasticPool { node, max_nodes: n as u32, startup_s, idle_release_s, startup_timeout_s, retry_after_s }))
}

/// A node's capacity and GPU model, checked; `prefix` goes before the field names in errors.
fn capacity(
    src: &Source<'_>,
    prefix: &str,
    cpus: &Spanned<f64>,
    memory: &Spanned<String>,
    gpus: Option<&Spanned<i64>>,
    gpu_model: Option<&Spanned<String>>,
) -> Result<(Resources, Option<String>), InputError> {
    let field = |name: &str| format!("{prefix}{name}");
    let cpu_count = *cpus.get_ref();
    if !cpu_count.is_finite() || cpu_count <= 0.0 || cpu_count > CPUS_PER_NODE_MAX {
        let message = format!("{cpu_count} is not a CPU count; write a positive number up to {CPUS_PER_NODE_MAX}");
        return Err(src.error(&field("cpus"), cpus, message));
    }
    let memory_bytes =
        ferry_units::parse_memory(memory.get_ref()).map_err(|e| src.error(&field("memory"), memory, e.0))?;
    let gpu_count = match gpus {
        None => 0,
        Some(g) if (0..=GPUS_PER_NODE_MAX as i64).contains(g.get_ref()) => *g.get_ref() as u32,
        Some(g) => {
            let message = format!("{} is not a GPU count; write 0 to {GPUS_PER_NODE_MAX}", g.get_ref());
            return Err(src.error(&field("gpus"), g, message));
        }
    };
    let model = match gpu_model {
        Some(m) if m.get_ref().trim().is_empty() => {
            return Err(src.error(&field("gpu_model"), m, "an empty GPU model; leave the field out instead"));
        }
        Some(m) => Some(m.get_ref().trim().to_string()),
        None => None,
    };
    Ok((Resources::new((cpu_count * 1000.0).round() as u64, memory_bytes, gpu_count), model))
}

/// The nodes one `[[node]]` table declares: one named node, or `count` identical ones named `name_prefix` and an
/// index padded to the same width (`gpu-00` to `gpu-11`), so that they sort in order.
fn expand_node(src: &Source<'_>, spec: &NodeSpec, pools: &[Pool]) -> Result<Vec<NodeInfo>, InputError> {
    let pool = spec.pool.get_ref().trim();
    if !pools.iter().any(|p| p.name == pool) {
        let declared: Vec<&str> = pools.iter().map(|p| p.name.as_str()).collect();
        let message = match declared.as_slice() {
            [] => format!("pool \"{pool}\" is not declared; add a [[pool]] table with name = \"{pool}\""),
            _ => format!("pool \"{pool}\" is not declared; the pools are {}", declared.join(", ")),
        };
        return Err(src.error("pool", &spec.pool, message));
    }
    if pools.iter().any(|p| p.name == pool && p.elastic.is_some()) {
        let message = format!(
            "pool \"{pool}\" is elastic: it starts its nodes on demand from its node template; declare fixed nodes in another pool"
        );
        return Err(src.error("pool", &spec.pool, message));
    }
    let (capacity, gpu_model) =
        capacity(src, "", &spec.cpus, &spec.memory, spec.gpus.as_ref(), spec.gpu_model.as_ref())?;
    let template = NodeInfo {
        name: String::new(),
        pool: pool.to_string(),
        capacity,
        gpu_indices: (0..capacity.gpus).collect(),
        gpu_model,
        labels: spec.labels.clone(),
        ..NodeInfo::default()
    };
    let names = node_names(src, spec)?;
    Ok(names.into_iter().map(|name| NodeInfo { name, ..template.clone() }).collect())
}

fn node_names(src: &Source<'_>, spec: &NodeSpec) -> Result<Vec<String>, InputError> {
    match (&spec.name, &spec.name_prefix, &spec.count) {
        (Some(name), None, None) if !name.get_ref().trim().is_empty() => Ok(vec![name.get_ref().trim().to_string()]),
        (Some(name), None, None) => Err(src.error("name", name, "a node needs a name")),
        (None, Some(prefix), Some(count)) => {
            let n = *count.get_ref();
            if !(1..=NODES_MAX as i64).contains(&n) {
                return Err(src.error("count", count, format!("{n} is not a node count; write 1 to {NODES_MAX}")));
            }
            let width = (n - 1).to_string().len();
            Ok((0..n).map(|i| format!("{}{i:0width$}", prefix.get_ref().trim())).collect())
        }
        (Some(name), _, _) => Err(src.error("name", name, "give either name, or name_prefix and count, not both")),
        (None, Some(prefix), None) => Err(src.error("name_prefix", prefix, "name_prefix needs a count")),
        (None, None, Some(count)) => Err(src.error("count", count, "count needs a name_prefix")),
        (None, None, None) => Err(src.error("pool", &spec.pool, "a node needs a name, or a name_prefix and a count")),
    }
}

/// Parses the node list of the Alibaba GPU trace (`sn,cpu_milli,memory_mib,gpu,model`) into one pool named
/// `trace`. Extra columns are ignored.
pub fn parse_trace_nodes(file: &str, text: &str) -> Result<Cluster, InputError> {
    let columns =
        Columns { required: &["sn", "cpu_milli", "memory_mib", "gpu"], optional: &["model"], allow_unknown: true };
    let mut seen: HashMap<String, u64> = HashMap::new();
    let nodes = csvin::read_rows(file, text, &columns, |row| {
        let name = row.req("sn").to_string();
        if name.is_empty() {
            return Err(row.error("sn", "a node needs a name"));
        }
        if let Some(first) = seen.insert(name.clone(), row.line) {
            return Err(row.error("sn", format!("node \"{name}\" is already listed on line {first}")));
        }
        let cpu_millis = row.parse("cpu_milli", |t| positive(t, (CPUS_PER_NODE_MAX * 1000.0) as u64, "CPU"))?;
        let memory_mib = row.parse("memory_mib", |t| positive(t, 1 << 40, "memory"))?;
        let gpus = row.parse("gpu", |t| csvin::whole(t, GPUS_PER_NODE_MAX, "GPUs"))? as u32;
        let model = row.get("model").filter(|m| !m.is_empty()).map(str::to_string);
        if seen.len() > NODES_MAX {
            return Err(InputError::new(file, row.line, None, format!("more than {NODES_MAX} nodes")));
        }
        Ok(NodeInfo {
            name,
            pool: TRACE_POOL.to_string(),
            capacity: Resources::new(cpu_millis, memory_mib << 20, gpus),
            gpu_indices: (0..gpus).collect(),
            gpu_model: model,
            ..NodeInfo::default()
        })
    })?;
    if nodes.is_empty() {
        return Err(InputError::new(file, 1, None, "no nodes are listed after the header"));
    }
    let pool = Pool {
        name: TRACE_POOL.to_string(),
        order: 0,
        burst: false,
        burst_after_s: None,
        price_gpu_hour: 0.0,
        price_cpu_hour: 0.0,
        price_node_hour: None,
        elastic: None,
        start_failure_rate: 0.0,
        join_failure_rate: 0.0,
        images: true,
        gangs: true,
    };
    let gpu_placement = GpuPlacement::default();
    Ok(Cluster {
        pools: vec![pool],
        teams: Vec::new(),
        projects: Vec::new(),
        fair_share_half_life_s: 0,
        gpu_placement,
        queue_order: QueueOrder::default(),
        reserve_depth: None,
        nodes,
        failures: NodeFailures::default(),
    })
}

/// A whole number from 1 to `max`.
pub(crate) fn positive(text: &str, max: u64, what: &str) -> Result<u64, String> {
    match csvin::whole(text, max, what)? {
        0 => Err(format!("0 is not allowed; a node or job needs some {what}")),
        v => Ok(v),
    }
}
