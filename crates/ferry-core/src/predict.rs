//! How long a job will run, learned from the jobs like it that ran before.
//!
//! Data scientists rerun the same thing: the same script with the same resources, a sweep's trials, a nightly
//! job. So the best guess for a job without a runtime limit is how long the same user's runs of the same name,
//! command, project and resources took: a high quantile (the 90th percentile by default) of the most recent ones,
//! so that a forecast built on it is rarely too early. Where the exact kind has no history yet, runs of the same
//! user and name with any command or resources stand in once there are a few of them. Each prediction says what it
//! rests on (which match, and how many runs), so that the CLI can say so.
//!
//! Only runs that succeeded teach: a crash a minute in, or a run stopped at its limit, says nothing of how long the
//! work takes. Memory is bounded by the number of distinct kinds times `SAMPLES_MAX`.
//!
//! Pure: the server feeds it from the store (and from each job that ends), the simulator from its replay.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::resources::Resources;

/// How many recent runs of one kind are kept.
pub const SAMPLES_MAX: usize = 32;
/// How many runs of the same user and name (any command or resources) a fallback prediction needs.
pub const NAME_SAMPLES_MIN: usize = 3;
/// The quantile of past runtimes a prediction gives.
pub const QUANTILE: f64 = 0.9;

/// What makes two jobs alike for prediction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobKind<'a> {
    pub user: &'a str,
    /// The job's name (`ferry run --name`, a sweep's name); empty when it has none.
    pub name: &'a str,
    /// The command line as submitted.
    pub command: &'a str,
    pub project: &'a str,
    pub resources: Resources,
    pub gpu_share_milli: u32,
    /// Workers of a gang; 1 for a single-node job.
    pub nodes: u32,
}

impl JobKind<'_> {
    /// A stable 64-bit key of the whole kind (FNV-1a over the fields): the same on every machine and release, so it
    /// may be stored.
    pub fn key(&self) -> u64 {
        let mut h = Fnv::new();
        for text in [self.user, self.name, self.command, self.project] {
            h.text(text);
        }
        h.u64(self.resources.cpu_millis);
        h.u64(self.resources.memory_bytes);
        h.u64(u64::from(self.resources.gpus));
        h.u64(u64::from(self.gpu_share_milli));
        h.u64(u64::from(self.nodes.max(1)));
        h.0
    }

    /// The key of the fallback: the same user and name, anything else.
    pub fn name_key(&self) -> u64 {
        let mut h = Fnv::new();
        h.text(self.user);
        h.text(self.name);
        h.0
    }
}

/// FNV-1a, with each text's length written first so that ("ab", "c") and ("a", "bc") differ.
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn byte(&mut self, b: u8) {
        self.0 ^= u64::from(b);
        self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
    }

    fn u64(&mut self, v: u64) {
        for b in v.to_le_bytes() {
            self.byte(b);
        }
    }

    fn text(&mut self, text: &str) {
        self.u64(text.len() as u64);
        for b in text.bytes() {
            self.byte(b);
        }
    }
}

/// What a prediction rests on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Basis {
    /// Earlier runs of the same user, name, command, project and resources.
    SameKind,
    /// Earlier runs of the same user and name, with another command or other resources.
    SameName,
}

impl Basis {
    /// The name the store and the API write: `same_kind` or `same_name`.
    pub fn name(self) -> &'static str {
        match self {
            Basis::SameKind => "same_kind",
            Basis::SameName => "same_name",
        }
    }

    /// Reads `name`'s answer back.
    pub fn from_name(name: &str) -> Option<Basis> {
        [Basis::SameKind, Basis::SameName].into_iter().find(|b| b.name() == name)
    }

    /// How the CLI words it: "of 12 earlier runs *of the same command and resources*".
    pub fn describe(self) -> &'static str {
        match self {
            Basis::SameKind => "of the same name, command, project and resources",
            Basis::SameName => "with the same name (other commands or resources)",
        }
    }
}

/// A predicted runtime and what it rests on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prediction {
    pub runtime_s: u64,
    /// How many earlier runs it was computed from.
    pub samples: u32,
    pub basis: Basis,
}

/// Recent runtimes by kind.
#[derive(Clone, Debug, Default)]
pub struct Predictor {
    by_kind: HashMap<u64, VecDeque<u32>>,
    by_name: HashMap<u64, VecDeque<u32>>,
}

impl Predictor {
    pub fn new() -> Predictor {
        Predictor::default()
    }

    /// Learns that a run of `kind` succeeded after `runtime_s` seconds. Runs are recorded in the order they ended;
    /// only the most recent `SAMPLES_MAX` of each kind are kept.
    pub fn record(&mut self, kind: &JobKind<'_>, runtime_s: u64) {
        self.record_keys(kind.key(), kind.name_key(), runtime_s);
    }

    /// `record` by keys already computed (as stored beside each job).
    pub fn record_keys(&mut self, kind_key: u64, name_key: u64, runtime_s: u64) {
        let runtime = u32::try_from(runtime_s).unwrap_or(u32::MAX);
        for (map, key) in [(&mut self.by_kind, kind_key), (&mut self.by_name, name_key)] {
            let samples = map.entry(key).or_default();
            if samples.len() == SAMPLES_MAX {
                samples.pop_front();
            }
            samples.push_back(runtime);
        }
    }

    /// The predicted runtime of a job of `kind`, if there is history to predict it from.
    pub fn predict(&self, kind: &JobKind<'_>) -> Option<Prediction> {
        self.predict_keys(kind.key(), kind.name_key())
    }

    /// `predict` by keys already computed.
    pub fn predict_keys(&self, kind_key: u64, name_key: u64) -> Option<Prediction> {
        if let Some(samples) = self.by_kind.get(&kind_key).filter(|s| !s.is_empty()) {
            return Some(prediction(samples, Basis::SameKind));
        }
        let samples = self.by_name.get(&name_key).filter(|s| s.len() >= NAME_SAMPLES_MIN)?;
        Some(prediction(samples, Basis::SameName))
    }

    /// How many kinds have history.
    pub fn kinds(&self) -> usize {
        self.by_kind.len()
    }
}

fn prediction(samples: &VecDeque<u32>, basis: Basis) -> Prediction {
    let mut sorted: Vec<u32> = samples.iter().copied().collect();
    sorted.sort_unstable();
    Prediction { runtime_s: u64::from(quantile(&sorted, QUANTILE)), samples: sorted.len() as u32, basis }
}

/// The `q` quantile of sorted values (nearest rank); 0 for none.
fn quantile(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// How well predictions matched what the jobs then ran, over finished jobs that had one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Accuracy {
    /// Jobs with both a prediction and a measured runtime.
    pub jobs: u64,
    /// The median of |predicted - actual| / actual, in percent.
    pub median_error_pct: f64,
    /// The share of jobs whose prediction was within 25% of what they ran.
    pub within_25_pct: f64,
    /// The share within a factor of two either way.
    pub within_2x: f64,
    /// The share that ran longer than predicted (a high quantile keeps this low: forecasts rarely come too early).
    pub ran_longer: f64,
}

impl Accuracy {
    /// Computes the figures from (predicted, actual) runtimes in seconds; an actual of 0 counts as 1 s.
    pub fn of(pairs: impl IntoIterator<Item = (u64, u64)>) -> Accuracy {
        let mut errors = Vec::new();
        let (mut within_25, mut within_2x, mut longer) = (0u64, 0u64, 0u64);
        for (predicted, actual) in pairs {
            let (p, a) = (predicted as f64, actual.max(1) as f64);
            let error = (p - a).abs() / a;
            errors.push(error);
            within_25 += u64::from(error <= 0.25);
            within_2x += u64::from(p <= 2.0 * a && a <= 2.0 * p);
            longer += u64::from(actual > predicted);
        }
        let n = errors.len() as u64;
        if n == 0 {
            return Accuracy::default();
        }
        errors.sort_unstable_by(f64::total_cmp);
        let median = errors[(errors.len() - 1) / 2];
        let share = |k: u64| k as f64 / n as f64;
        Accuracy {
            jobs: n,
            median_error_pct: median * 100.0,
            within_25_pct: share(within_25),
            within_2x: share(within_2x),
            ran_longer: share(longer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind<'a>(user: &'a str, name: &'a str, command: &'a str, gpus: u32) -> JobKind<'a> {
        JobKind {
            user,
            name,
            command,
            project: "vision",
            resources: Resources::new(4000, 16 << 30, gpus),
            gpu_share_milli: 0,
            nodes: 1,
        }
    }

    #[test]
    fn the_same_kind_predicts_its_90th_percentile_with_the_count() {
        let mut p = Predictor::new();
        let k = kind("ana", "train", "python train.py", 1);
        assert_eq!(p.predict(&k), None, "no history, no prediction");
        for minutes in 1..=10 {
            p.record(&k, minutes * 60);
        }
        assert_eq!(p.predict(&k), Some(Prediction { runtime_s: 540, samples: 10, basis: Basis::SameKind }));
        // Another user's runs of the same thing teach nothing about ana's.
        assert_eq!(p.predict(&kind("ned", "train", "python train.py", 1)), None);
    }

    #[test]
    fn the_same_name_stands_in_after_a_few_runs_and_old_runs_are_forgotten() {
        let mut p = Predictor::new();
        let one_gpu = kind("ana", "train", "python train.py", 1);
        let two_gpus = kind("ana", "train", "python train.py", 2);
        p.record(&one_gpu, 100);
        p.record(&one_gpu, 200);
        assert_eq!(p.predict(&two_gpus), None, "two runs of the name are too few");
        p.record(&one_gpu, 300);
        assert_eq!(p.predict(&two_gpus), Some(Prediction { runtime_s: 300, samples: 3, basis: Basis::SameName }));
        for _ in 0..SAMPLES_MAX {
            p.record(&one_gpu, 50);
        }
        assert_eq!(p.predict(&one_gpu).unwrap().runtime_s, 50, "only the most recent runs count");
        assert_eq!(p.predict(&one_gpu).unwrap().samples as usize, SAMPLES_MAX);
    }

    #[test]
    fn keys_are_stable_and_separate_fields() {
        let a = JobKind { user: "ab", name: "c", ..JobKind::default() };
        let b = JobKind { user: "a", name: "bc", ..JobKind::default() };
        assert_ne!(a.key(), b.key());
        assert_ne!(a.name_key(), b.name_key());
        // A fixed value: a stored key must mean the same thing after an upgrade.
        assert_eq!(JobKind::default().name_key(), 9_808_874_869_469_701_221);
        let k = kind("ana", "train", "python train.py", 1);
        assert_eq!(k.key(), kind("ana", "train", "python train.py", 1).key());
        assert_ne!(k.key(), kind("ana", "train", "python train.py --lr 1", 1).key());
    }

    #[test]
    fn accuracy_counts_errors_and_late_runs() {
        let a = Accuracy::of([(100, 100), (100, 120), (100, 300), (100, 40)]);
        assert_eq!(a.jobs, 4);
        assert_eq!(a.within_25_pct, 0.5);
        assert_eq!(a.within_2x, 0.5);
        assert_eq!(a.ran_longer, 0.5);
        // Errors 0, 0.1667, 0.6667, 1.5: the lower median.
        assert!((a.median_error_pct - 16.67).abs() < 0.01, "{a:?}");
        assert_eq!(Accuracy::of([]), Accuracy::default());
    }
}
