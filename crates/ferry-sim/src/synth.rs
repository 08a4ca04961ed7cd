//! A seeded synthetic cluster and workload shaped like a public deep-learning GPU trace, for measuring the core and
//! the checker where no such trace may be shipped.
//!
//! The shape follows what the published multi-tenant GPU traces (Microsoft Philly, SenseTime Helios, Alibaba PAI)
//! report: a few hundred 8-GPU nodes of two GPU models; most jobs ask for one GPU, fewer for 2, 4 or 8, and a few are
//! multi-node gangs of whole 8-GPU nodes; durations are heavy-tailed (log-normal, a median of minutes and a tail of
//! days); arrivals follow the day, and users submit hyper-parameter sweeps: tens to hundreds of identical jobs at
//! once. Work recurs, as those studies found: each user reruns a few programs of their own (a name, a shape and a
//! typical duration), so that how long a program ran before says much, not all, of how long it runs next; a
//! program's median is log-normal across programs and each run spreads around it, which together give the overall
//! spread above. A sweep is a new program whose trials share its name and shape. The load is set by the offered GPU demand: at `load` 1 the jobs ask, on average over the whole span, for a
//! quarter of the cluster's GPUs (such traces report average allocations well below capacity); `load` 4 compresses
//! the arrivals fourfold, which offers about the whole cluster on average and well beyond it at the daily peaks, so
//! that thousands of jobs wait then and the queue drains at night.
//!
//! The same spec always gives the same cluster and workload, byte for byte: every draw comes from one ChaCha8
//! generator seeded with `spec.seed`. Nothing here reads a file, the clock or the environment.

use std::f64::consts::PI;

use ferry_core::{GpuPlacement, NodeInfo, Resources};
use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::cluster::{Cluster, Pool};
use crate::workload::{JobSpec, Lifecycle, Workload, WorkloadFormat};

const GIB: u64 = 1 << 30;
/// The most jobs and nodes a spec may ask for: enough for any measurement, few enough to stay in memory.
pub const SYNTH_JOBS_MAX: u32 = 10_000_000;
pub const SYNTH_NODES_MAX: u32 = 100_000;
/// The share of the cluster's GPUs the workload asks for on average at `load` 1.
const BASE_UTILISATION: f64 = 0.25;
/// GPUs, CPUs and memory of every node.
const NODE_GPUS: u32 = 8;
const NODE_CPUS: u64 = 96;
const NODE_MEMORY_GIB: u64 = 768;
/// The two GPU models; the first three fifths of the nodes have the first.
const MODELS: [&str; 2] = ["V100", "A100"];
/// How much arrivals swing over the day: the rate is `1 ± DIURNAL_SWING` times the average.
const DIURNAL_SWING: f64 = 0.6;
const DAY_S: f64 = 86_400.0;
/// Durations: log-normal with this median and an overall spread of 1.5, clamped to [30 s, 3 days]: the spread of
/// programs' medians and that of one program's runs around its median (1.35² + 0.65² ≈ 1.5²).
const DURATION_MEDIAN_S: f64 = 1_200.0;
const PROGRAM_SIGMA: f64 = 1.35;
const RUN_SIGMA: f64 = 0.65;
/// The chance that a user's next submission is a program they have not run before.
const NEW_PROGRAM_CHANCE: f64 = 0.25;
const DURATION_MIN_S: f64 = 30.0;
const DURATION_MAX_S: f64 = 3.0 * DAY_S;
/// Users and teams jobs belong to; users are drawn with a skew, so a few submit most jobs.
const USERS: u32 = 200;
const TEAMS: u32 = 8;
/// The chance that an arrival is a sweep, and its size range.
const SWEEP_CHANCE: f64 = 0.003;
const SWEEP_JOBS: (u32, u32) = (10, 200);

/// What to generate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SynthSpec {
    pub jobs: u32,
    pub nodes: u32,
    /// How much the arrivals are compressed: 4 offers four times the GPU demand per hour of `load` 1.
    pub load: f64,
    pub seed: u64,
    /// Every job saves a checkpoint this often, in seconds (`checkpoint=10m`), so that a preempted job resumes from
    /// its latest and the least-attained order may stop it; 0 (the default) for jobs that start over.
    pub checkpoint_every_s: u64,
}

impl Default for SynthSpec {
    fn default() -> SynthSpec {
        SynthSpec { jobs: 70_000, nodes: 350, load: 4.0, seed: 1, checkpoint_every_s: 0 }
    }
}

impl SynthSpec {
    /// Reads `jobs=70000,nodes=350,load=4,seed=1,checkpoint=10m`, any subset in any order; an empty text gives the
    /// defaults.
    pub fn parse(text: &str) -> Result<SynthSpec, String> {
        let mut spec = SynthSpec::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part.split_once('=').ok_or_else(|| format!("{part:?} is not key=value"))?;
            let bad = |what: &str| format!("{key}={value:?}: {what}");
            match key.trim() {
                "jobs" => spec.jobs = value.trim().parse().map_err(|_| bad("not a whole number"))?,
                "nodes" => spec.nodes = value.trim().parse().map_err(|_| bad("not a whole number"))?,
                "load" => spec.load = value.trim().parse().map_err(|_| bad("not a number"))?,
                "seed" => spec.seed = value.trim().parse().map_err(|_| bad("not a whole number"))?,
                "checkpoint" => {
                    spec.checkpoint_every_s = match value.trim() {
                        "off" | "0" => 0,
                        t => ferry_units::parse_duration_s(t).map_err(|e| bad(&format!("{}, or off", e.0)))?,
                    }
                }
                other => {
                    return Err(format!("unknown key {other:?}; the keys are jobs, nodes, load, seed and checkpoint"))
                }
            }
        }
        if spec.jobs == 0 || spec.jobs > SYNTH_JOBS_MAX {
            return Err(format!("jobs={}: 1 to {SYNTH_JOBS_MAX}", spec.jobs));
        }
        if spec.nodes < 8 || spec.nodes > SYNTH_NODES_MAX {
            return Err(format!("nodes={}: 8 to {SYNTH_NODES_MAX} (gangs span up to 8 nodes)", spec.nodes));
        }
        if !(spec.load.is_finite() && spec.load > 0.0 && spec.load <= 1000.0) {
            return Err(format!("load={}: a number above 0 and at most 1000", spec.load));
        }
        Ok(spec)
    }

    /// How the spec is written back, for reports and replay commands.
    pub fn describe(&self) -> String {
        let checkpoint = match self.checkpoint_every_s {
            0 => String::new(),
            s => format!(",checkpoint={s}s"),
        };
        format!("jobs={},nodes={},load={},seed={}{checkpoint}", self.jobs, self.nodes, self.load, self.seed)
    }
}

/// The synthetic cluster: one pool of identical 8-GPU nodes, three fifths V100 and two fifths A100, no quotas.
pub fn cluster(spec: &SynthSpec) -> Cluster {
    let v100 = v100_nodes(spec);
    let nodes = (0..spec.nodes)
        .map(|i| NodeInfo {
            name: format!("n{i:05}"),
            pool: "synthetic".to_string(),
            capacity: Resources::new(NODE_CPUS * 1000, NODE_MEMORY_GIB * GIB, NODE_GPUS),
            gpu_indices: (0..NODE_GPUS).collect(),
            gpu_model: Some(MODELS[usize::from(i >= v100)].to_string()),
            ..NodeInfo::default()
        })
        .collect();
    let pool = Pool {
        name: "synthetic".to_string(),
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
    Cluster {
        pools: vec![pool],
        teams: Vec::new(),
        projects: Vec::new(),
        fair_share_half_life_s: 0,
        gpu_placement: GpuPlacement::BestFit,
        queue_order: Default::default(),
        reserve_depth: None,
        nodes,
        failures: Default::default(),
    }
}

/// How many nodes have the first model (V100); the rest have A100s.
fn v100_nodes(spec: &SynthSpec) -> u32 {
    (spec.nodes as u64 * 3 / 5) as u32
}

/// What one job asks for, before it is given an arrival time.
#[derive(Clone)]
struct Shape {
    gpus: u32,
    workers: u32,
    cpus: u64,
    memory_gib: u64,
    models: Vec<String>,
}

/// Draws a job's shape: 1 GPU (58%), 2 (12%), 4 (12%), 8 (10%), a gang of 2 to 8 whole nodes (4%), or CPUs only
/// (4%). A fifth of GPU jobs ask for A100s only, a tenth for V100s only; gangs ask for A100s half the time, where the
/// cluster has as many A100 nodes as the gang has workers (`a100_nodes`).
fn shape(rng: &mut ChaCha8Rng, a100_nodes: u32) -> Shape {
    let roll: f64 = rng.random();
    let (gpus, workers) = match roll {
        r if r < 0.58 => (1, 1),
        r if r < 0.70 => (2, 1),
        r if r < 0.82 => (4, 1),
        r if r < 0.92 => (8, 1),
        r if r < 0.96 => (8, [2, 2, 2, 4, 4, 8][rng.random_range(0..6)]),
        _ => (0, 1),
    };
    let models = match (gpus, workers, rng.random::<f64>()) {
        (0, _, _) => Vec::new(),
        (_, w, r) if w > 1 && r < 0.5 && w <= a100_nodes => vec![MODELS[1].to_string()],
        (_, 1, r) if r < 0.2 => vec![MODELS[1].to_string()],
        (_, 1, r) if r < 0.3 => vec![MODELS[0].to_string()],
        _ => Vec::new(),
    };
    let (cpus, memory_gib) = match gpus {
        0 => (rng.random_range(2..=16), rng.random_range(8..=64)),
        8 if workers > 1 => (80, 640),
        g => (u64::from(g) * rng.random_range(4..=10), u64::from(g) * rng.random_range(32..=80)),
    };
    Shape { gpus, workers, cpus, memory_gib, models }
}

/// A standard normal draw (Box-Muller).
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let (u1, u2): (f64, f64) = (rng.random_range(f64::EPSILON..1.0), rng.random());
    (-2.0 * u1.ln()).sqrt() * (2.0 * PI * u2).cos()
}

/// One run's duration in seconds: log-normal around its program's median, clamped.
fn duration_s(rng: &mut ChaCha8Rng, median_s: f64) -> f64 {
    (median_s * (RUN_SIGMA * normal(rng)).exp()).clamp(DURATION_MIN_S, DURATION_MAX_S)
}

/// A program a user reruns: its name, shape and median duration.
struct Program {
    name: String,
    shape: Shape,
    median_s: f64,
}

/// A user index skewed towards the first: the square of a uniform draw.
fn user(rng: &mut ChaCha8Rng) -> u32 {
    let u: f64 = rng.random();
    ((u * u) * f64::from(USERS)) as u32
}

/// The synthetic workload. Shapes and durations are drawn first; the average arrival rate is then the one that
/// offers `BASE_UTILISATION * load` of the cluster's GPUs, and arrivals follow it with the daily swing.
pub fn workload(spec: &SynthSpec) -> Workload {
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let a100_nodes = spec.nodes - v100_nodes(spec);
    // Each user's programs, in the order they first ran.
    let mut programs: Vec<Vec<Program>> = (0..USERS).map(|_| Vec::new()).collect();
    // Arrival groups: a single job, or a sweep of identical jobs submitted together: the user, the program's index
    // among theirs, and each job's duration.
    let mut groups: Vec<(u32, usize, Vec<f64>)> = Vec::new();
    let mut count = 0u32;
    while count < spec.jobs {
        let sweep = rng.random::<f64>() < SWEEP_CHANCE;
        let size = if sweep { rng.random_range(SWEEP_JOBS.0..=SWEEP_JOBS.1) } else { 1 };
        let size = size.min(spec.jobs - count);
        let u = user(&mut rng);
        let theirs = &mut programs[u as usize];
        let program = if sweep || theirs.is_empty() || rng.random::<f64>() < NEW_PROGRAM_CHANCE {
            let mut s = shape(&mut rng, a100_nodes);
            if sweep && s.workers > 1 {
                // Sweeps are of single-node jobs.
                (s.gpus, s.workers, s.cpus, s.memory_gib) = (1, 1, 8, 64);
            }
            let median_s = DURATION_MEDIAN_S * (PROGRAM_SIGMA * normal(&mut rng)).exp();
            let name = format!("{}{}", if sweep { "sweep" } else { "train" }, theirs.len() + 1);
            theirs.push(Program { name, shape: s, median_s });
            theirs.len() - 1
        } else {
            rng.random_range(0..theirs.len())
        };
        let median_s = theirs[program].median_s;
        let durations = (0..size).map(|_| duration_s(&mut rng, median_s)).collect();
        groups.push((u, program, durations));
        count += size;
    }
    let gpu_seconds: f64 = groups
        .iter()
        .map(|(u, p, durations)| {
            let s = &programs[*u as usize][*p].shape;
            f64::from(s.gpus * s.workers) * durations.iter().sum::<f64>()
        })
        .sum();
    let gpus = f64::from(spec.nodes * NODE_GPUS);
    let span_s = gpu_seconds / (gpus * BASE_UTILISATION * spec.load);
    let groups_per_s = groups.len() as f64 / span_s.max(1.0);
    let mut now_s = 0.0f64;
    let mut jobs = Vec::with_capacity(spec.jobs as usize);
    for (u, p, durations) in groups {
        let Program { name, shape: s, .. } = &programs[u as usize][p];
        let rate = groups_per_s * (1.0 + DIURNAL_SWING * (2.0 * PI * now_s / DAY_S).sin());
        let gap: f64 = -rng.random_range(f64::EPSILON..1.0f64).ln() / rate;
        now_s += gap;
        let arrival_ms = (now_s * 1000.0) as u64;
        for duration in durations {
            jobs.push(JobSpec {
                line: jobs.len() as u64 + 1,
                arrival_ms,
                duration_ms: (duration * 1000.0) as u64,
                resources: Resources::new(s.cpus * 1000, s.memory_gib * GIB, s.gpus),
                gpu_share_milli: 0,
                gpu_models: s.models.clone(),
                priority: 0,
                user: format!("u{u:03}"),
                name: name.clone(),
                team: format!("t{}", u % TEAMS),
                project: String::new(),
                nodes: s.workers,
                selector: Default::default(),
                pool: None,
                image: false,
                max_runtime_s: None,
                outcome: None,
                exit_code: None,
                lifecycle: Lifecycle {
                    checkpoint_every_ms: (spec.checkpoint_every_s > 0).then(|| spec.checkpoint_every_s * 1000),
                    ..Lifecycle::default()
                },
            });
        }
    }
    Workload { file: format!("synthetic({})", spec.describe()), format: WorkloadFormat::Csv, jobs }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_spec_gives_the_same_workload() {
        let spec = SynthSpec { jobs: 2_000, nodes: 40, ..SynthSpec::default() };
        assert_eq!(workload(&spec), workload(&spec));
        let other = SynthSpec { seed: 2, ..spec };
        assert_ne!(workload(&spec), workload(&other));
    }

    #[test]
    fn the_workload_has_the_stated_shape() {
        let spec = SynthSpec::default();
        let w = workload(&spec);
        assert_eq!(w.jobs.len(), 70_000);
        let count = |f: &dyn Fn(&JobSpec) -> bool| w.jobs.iter().filter(|j| f(j)).count();
        assert!(count(&|j| j.nodes > 1) > 1_000, "gangs");
        for g in [1, 2, 4, 8] {
            assert!(count(&|j| j.nodes == 1 && j.resources.gpus == g) > 3_000, "{g}-GPU jobs");
        }
        // Every job fits a node of its allowed model.
        let c = cluster(&spec);
        assert_eq!(c.gpus(), 2_800);
        crate::workload::check_fits(&w, &c).expect("every job fits");
        // The smallest cluster a spec may ask for too: its A100 nodes are fewer than the largest gang.
        let small = SynthSpec { jobs: 5_000, nodes: 8, ..SynthSpec::default() };
        crate::workload::check_fits(&workload(&small), &cluster(&small)).expect("every job fits 8 nodes");
    }

    #[test]
    fn specs_are_read_and_refused_clearly() {
        assert_eq!(SynthSpec::parse(""), Ok(SynthSpec::default()));
        let spec = SynthSpec::parse("load=2, jobs=10").unwrap();
        assert_eq!((spec.jobs, spec.load, spec.nodes), (10, 2.0, 350));
        assert!(SynthSpec::parse("jobs=0").unwrap_err().contains("jobs=0"));
        assert!(SynthSpec::parse("speed=3").unwrap_err().contains("unknown key"));
        assert!(SynthSpec::parse("load=x").unwrap_err().contains("not a number"));
    }
}
