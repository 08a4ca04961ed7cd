//! Percentiles and the small formatting helpers the reports share.

use std::time::Duration;

/// A set of samples in milliseconds.
#[derive(Clone, Debug, Default)]
pub struct Samples {
    ms: Vec<f64>,
}

/// The summary of a [`Samples`]: nearest-rank percentiles.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub count: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Samples {
    pub fn push_ms(&mut self, ms: f64) {
        self.ms.push(ms);
    }

    pub fn push(&mut self, d: Duration) {
        self.push_ms(d.as_secs_f64() * 1000.0);
    }

    pub fn summary(&self) -> Option<Summary> {
        if self.ms.is_empty() {
            return None;
        }
        let mut sorted = self.ms.clone();
        sorted.sort_by(f64::total_cmp);
        Some(Summary {
            count: sorted.len(),
            p50: percentile(&sorted, 50.0),
            p90: percentile(&sorted, 90.0),
            p99: percentile(&sorted, 99.0),
            max: sorted[sorted.len() - 1],
        })
    }
}

/// The nearest-rank percentile of sorted, non-empty samples: the smallest sample with at least `p`% of all samples
/// at or below it.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl Summary {
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "count": self.count,
            "p50": round3(self.p50),
            "p90": round3(self.p90),
            "p99": round3(self.p99),
            "max": round3(self.max),
        })
    }
}

pub fn summary_json(summary: Option<Summary>) -> serde_json::Value {
    summary.map_or(serde_json::Value::Null, |s| s.json())
}

/// Rounds to three decimals, so the JSON line stays readable.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// `1234567` -> `"1.18 MiB"`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.2} {}", UNITS[unit])
    }
}

/// One row of a latency table: a label and p50/p90/p99/max in milliseconds.
pub fn latency_row(label: &str, summary: Option<Summary>) -> String {
    match summary {
        Some(s) => format!("{label:<30} {:>10.2} {:>10.2} {:>10.2} {:>10.2}", s.p50, s.p90, s.p99, s.max),
        None => format!("{label:<30} {:>10} {:>10} {:>10} {:>10}", "-", "-", "-", "-"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut s = Samples::default();
        for i in 1..=100 {
            s.push_ms(i as f64);
        }
        let sum = s.summary().unwrap();
        assert_eq!((sum.p50, sum.p90, sum.p99, sum.max), (50.0, 90.0, 99.0, 100.0));

        let mut one = Samples::default();
        one.push_ms(7.0);
        let sum = one.summary().unwrap();
        assert_eq!((sum.p50, sum.p99, sum.max), (7.0, 7.0, 7.0));
        assert!(Samples::default().summary().is_none());
    }

    #[test]
    fn byte_units() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.50 KiB");
        assert_eq!(bytes(3 * 1024 * 1024), "3.00 MiB");
    }
}
