//! `sweep-bench`: does Bayesian search with early stopping reach a good objective in fewer trial-seconds than
//! random search? A simulation, no jobs run:
//! `cargo run --release -p ferry-sweep --bin sweep-bench [SEEDS] [TARGET_GAP]`.
//!
//! # The synthetic objective (documented in the crate README)
//!
//! Four parameters: `x1` uniform in [-5, 10], `x2` uniform in [0, 15], `lr` log-uniform in [1e-4, 1] and
//! `optimizer` in {sgd, adam, rmsprop}. A trial's *asymptote* is
//!
//! ```text
//! A = branin(x1, x2) + 0.5 * (log10(lr) + 2)^2 + {sgd: 1.0, adam: 0.0, rmsprop: 0.3}[optimizer]
//! ```
//!
//! with its minimum `A* = 0.397887` at (x1, x2) in {(-pi, 12.275), (pi, 2.275), (9.42478, 2.475)}, lr = 0.01,
//! adam. A trial trains for up to [`STEPS`] steps of one simulated second each and reports its loss at every step:
//!
//! ```text
//! loss(t) = A + 10 * exp(-t * speed / 81) + N(0, 0.1^2),   speed = 2 + (log10(lr) + 4)
//! ```
//!
//! so a larger learning rate converges sooner (and curves cross). The target is `A <= A* + gap` (gap 1.0 unless
//! given) for a trial that completed its full budget; the measure is the trial-seconds (steps run by all trials
//! together, stopped ones included) spent when the first such trial completes. Trials run 4 at a time in an event-driven loop (a min-heap
//! of next-report times), so reports of concurrent trials interleave as they would on the server.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use ferry_sweep::{ParamValue, Sweep, SweepSpec, TrialOutcome};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Steps of a full trial.
const STEPS: i64 = 81;
/// Trials per sweep, for every method: the budget.
const MAX_TRIALS: u32 = 300;
const MAX_PARALLEL: u32 = 4;
const SEEDS_DEFAULT: u64 = 20;
const OPTIMUM: f64 = 0.397_887;
/// How close to the optimum counts as reaching it: random search reaches it in most seeds within its budget.
const TARGET_GAP_DEFAULT: f64 = 1.0;
const NOISE_SD: f64 = 0.1;

const PARAMS: &str = r#"
[params.x1]
distribution = "uniform"
low = -5
high = 10
[params.x2]
distribution = "uniform"
low = 0
high = 15
[params.lr]
distribution = "log_uniform"
low = 1e-4
high = 1
[params.optimizer]
distribution = "choice"
values = ["sgd", "adam", "rmsprop"]
"#;

struct Config {
    label: &'static str,
    method: &'static str,
    early_stopping: &'static str,
}

const CONFIGS: [Config; 6] = [
    Config { label: "random", method: r#"name = "random""#, early_stopping: "" },
    Config {
        label: "random + ASHA",
        method: r#"name = "random""#,
        early_stopping: r#"rule = "asha"
min_steps = 3
max_steps = 81
reduction_factor = 3"#,
    },
    Config { label: "TPE", method: r#"name = "tpe""#, early_stopping: "" },
    Config {
        label: "TPE + ASHA",
        method: r#"name = "tpe""#,
        early_stopping: r#"rule = "asha"
min_steps = 3
max_steps = 81
reduction_factor = 3"#,
    },
    Config {
        label: "TPE + median",
        method: r#"name = "tpe""#,
        early_stopping: r#"rule = "median"
min_steps = 10
min_trials = 5"#,
    },
    Config {
        label: "GP + ASHA",
        method: r#"name = "gp""#,
        early_stopping: r#"rule = "asha"
min_steps = 3
max_steps = 81
reduction_factor = 3"#,
    },
];

fn spec(config: &Config, seed: u64) -> SweepSpec {
    let early_stopping = if config.early_stopping.is_empty() {
        String::new()
    } else {
        format!("[early_stopping]\n{}", config.early_stopping)
    };
    let text = format!(
        r#"
command = ["train", "{{x1}}", "{{x2}}", "{{lr}}", "{{optimizer}}"]
max_trials = {MAX_TRIALS}
max_parallel = {MAX_PARALLEL}
seed = {seed}
[objective]
metric = "loss"
goal = "minimize"
[method]
{}
{early_stopping}
{PARAMS}"#,
        config.method
    );
    SweepSpec::parse(&text).expect("the bench's own sweep files are valid")
}

fn number(params: &BTreeMap<String, ParamValue>, name: &str) -> f64 {
    match &params[name] {
        ParamValue::Float(x) => *x,
        ParamValue::Int(i) => *i as f64,
        other => panic!("{name} = {other:?}"),
    }
}

fn branin(x1: f64, x2: f64) -> f64 {
    use std::f64::consts::PI;
    let b = 5.1 / (4.0 * PI * PI);
    let c = 5.0 / PI;
    let t = 1.0 / (8.0 * PI);
    (x2 - b * x1 * x1 + c * x1 - 6.0).powi(2) + 10.0 * (1.0 - t) * x1.cos() + 10.0
}

/// The loss a trial converges to.
fn asymptote(params: &BTreeMap<String, ParamValue>) -> f64 {
    let optimizer = match &params["optimizer"] {
        ParamValue::Text(s) if s == "sgd" => 1.0,
        ParamValue::Text(s) if s == "rmsprop" => 0.3,
        _ => 0.0,
    };
    branin(number(params, "x1"), number(params, "x2")) + 0.5 * (number(params, "lr").log10() + 2.0).powi(2) + optimizer
}

fn speed(params: &BTreeMap<String, ParamValue>) -> f64 {
    2.0 + (number(params, "lr").log10() + 4.0).clamp(0.0, 4.0)
}

struct Trial {
    asymptote: f64,
    speed: f64,
    step: i64,
    noise: ChaCha8Rng,
}

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let unit = |rng: &mut ChaCha8Rng| (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    let u1 = 1.0 - unit(rng);
    let u2 = unit(rng);
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

struct Outcome {
    /// Trial-seconds when the target was first reached.
    reached_s: Option<u64>,
    trials: usize,
}

/// The simulated cluster: the running trials and the min-heap of their next reports.
struct Sim {
    seed: u64,
    trials: BTreeMap<u32, Trial>,
    /// (time of the trial's next report, sequence number, trial): ties go in scheduling order.
    events: BinaryHeap<Reverse<(u64, u64, u32)>>,
    seq: u64,
}

impl Sim {
    fn schedule(&mut self, time: u64, index: u32) {
        self.events.push(Reverse((time, self.seq, index)));
        self.seq += 1;
    }

    fn launch(&mut self, sweep: &mut Sweep, now: u64) {
        for p in sweep.propose() {
            let noise = ChaCha8Rng::seed_from_u64(self.seed.wrapping_mul(1_000_003) ^ (u64::from(p.index) << 32));
            let trial = Trial { asymptote: asymptote(&p.params), speed: speed(&p.params), step: 0, noise };
            self.trials.insert(p.index, trial);
            self.schedule(now + 1, p.index);
        }
    }
}

/// Runs one sweep until the target is reached or the sweep is done.
fn run(config: &Config, seed: u64, target: f64) -> Outcome {
    let mut sweep = Sweep::new(spec(config, seed));
    let mut sim = Sim { seed, trials: BTreeMap::new(), events: BinaryHeap::new(), seq: 0 };
    let mut total_s = 0u64;
    sim.launch(&mut sweep, 0);
    while let Some(Reverse((now, _, index))) = sim.events.pop() {
        let Some(trial) = sim.trials.get_mut(&index) else { continue };
        trial.step += 1;
        total_s += 1;
        let t = trial.step as f64;
        let loss =
            trial.asymptote + 10.0 * (-t * trial.speed / STEPS as f64).exp() + NOISE_SD * normal(&mut trial.noise);
        let (step, asymptote) = (trial.step, trial.asymptote);
        let mut stopped = false;
        for decision in sweep.report(index, step, loss) {
            sweep.finish(decision.index, TrialOutcome::Stopped);
            sim.trials.remove(&decision.index);
            stopped |= decision.index == index;
        }
        if !stopped {
            if step == STEPS {
                sweep.finish(index, TrialOutcome::Completed);
                sim.trials.remove(&index);
                if asymptote <= target {
                    return Outcome { reached_s: Some(total_s), trials: sweep.trials().len() };
                }
            } else {
                sim.schedule(now + 1, index);
            }
        }
        sim.launch(&mut sweep, now);
    }
    assert!(sweep.is_done());
    Outcome { reached_s: None, trials: sweep.trials().len() }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

fn main() {
    let usage = "usage: sweep-bench [SEEDS] [TARGET_GAP]";
    let args: Vec<String> = std::env::args().skip(1).collect();
    let seeds: u64 = args.first().map_or(SEEDS_DEFAULT, |s| s.parse().expect(usage));
    let gap: f64 = args.get(1).map_or(TARGET_GAP_DEFAULT, |s| s.parse().expect(usage));
    let target = OPTIMUM + gap;
    println!(
        "target: a completed trial with asymptote <= {target:.3} (optimum {OPTIMUM} + {gap}); {seeds} seeds; \
         {MAX_TRIALS} trials of up to {STEPS} s, {MAX_PARALLEL} at a time"
    );
    println!(
        "{:<14} {:>8} {:>16} {:>14} {:>14} {:>16}",
        "method", "reached", "median trial-s", "random/this", "median trials", "wall (ms/seed)"
    );
    let mut random_median = None;
    for config in &CONFIGS {
        let started = std::time::Instant::now();
        let outcomes: Vec<Outcome> = (0..seeds).map(|seed| run(config, seed, target)).collect();
        let wall_ms = started.elapsed().as_secs_f64() * 1e3 / seeds as f64;
        let reached = outcomes.iter().filter(|o| o.reached_s.is_some()).count();
        // A seed that never reached the target counts as infinitely slow, so the median is honest about misses.
        let med = median(outcomes.iter().map(|o| o.reached_s.map_or(f64::INFINITY, |s| s as f64)).collect());
        let trials = median(outcomes.iter().map(|o| o.trials as f64).collect());
        let random = *random_median.get_or_insert(med);
        let ratio = if med.is_finite() && random.is_finite() { format!("{:.2}", random / med) } else { "-".into() };
        let med = if med.is_finite() { format!("{med:.0}") } else { "not reached".into() };
        println!("{:<14} {:>5}/{seeds:<2} {med:>16} {ratio:>14} {trials:>14} {wall_ms:>16.1}", config.label, reached);
    }
}
