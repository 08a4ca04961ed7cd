//! Query planning: which tier answers, at what step, over which buckets. Pure: the clock is passed in.

use crate::error::TsdbError;
use crate::tier::Tier;
use crate::{Query, Retention, MAX_POINTS_PER_SERIES};

/// The widest step accepted (about 100 years); wider ones are certainly a mistake and would overflow the arithmetic.
const STEP_US_MAX: i64 = 100 * 366 * 86_400 * 1_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    pub tier: Tier,
    /// The requested step rounded up to a multiple of the tier's step.
    pub step_us: i64,
    /// The query's start rounded down to a multiple of `step_us`, where the first output bucket starts.
    pub start_us: i64,
    pub end_us: i64,
    /// Output buckets per series.
    pub points: u64,
}

pub(crate) fn plan(query: &Query, retention: &Retention, now_us: i64) -> Result<Plan, TsdbError> {
    let bad = |reason: &str| Err(TsdbError::BadQuery { reason: reason.to_owned() });
    if query.metric.is_empty() || query.kind.is_empty() {
        return bad("name a metric and a kind (such as gpu_utilization and gpu)");
    }
    if query.step_us <= 0 || query.step_us > STEP_US_MAX {
        return bad("the step must be positive and at most 100 years");
    }
    let Some(span_us) = query.end_us.checked_sub(query.start_us).filter(|span| *span > 0) else {
        return bad("the end must come after the start");
    };
    let plan = plan_step(query.start_us, query.end_us, query.step_us, retention, now_us);
    if plan.points > MAX_POINTS_PER_SERIES {
        return Err(TsdbError::TooManyPoints {
            points: plan.points,
            limit: MAX_POINTS_PER_SERIES,
            suggested_step_us: suggest_step(query.start_us, query.end_us, span_us, retention, now_us),
        });
    }
    Ok(plan)
}

/// The tier that answers: among the tiers whose retention still covers the start, the coarsest whose step divides
/// the requested step, else the coarsest whose step is at most the requested step, else the finest of them (the step
/// is then rounded up); the hour tier when none covers the start. Coarsest, because a 90-day query at 1 h must read
/// 2,160 hour buckets per series, not 129,600 minute buckets; dividing first, so that a step of 90 s over the last
/// hour stays 90 s. A step finer than the raw tier's is the raw tier's.
fn plan_step(start_us: i64, end_us: i64, step_us: i64, retention: &Retention, now_us: i64) -> Plan {
    let step_us = step_us.max(Tier::Raw.step_us());
    let covering = Tier::ALL.into_iter().filter(|t| start_us >= now_us.saturating_sub(retention.of_us(*t)));
    let fitting = covering.clone().filter(|t| t.step_us() <= step_us);
    let tier = (fitting.clone().rfind(|t| step_us % t.step_us() == 0))
        .or_else(|| fitting.clone().next_back())
        .or_else(|| covering.clone().next())
        .unwrap_or(Tier::Hour);
    let step_us = ceil_div(step_us, tier.step_us()) * tier.step_us();
    let aligned_us = start_us.div_euclid(step_us) * step_us;
    Plan { tier, step_us, start_us: aligned_us, end_us, points: ceil_div(end_us - aligned_us, step_us) as u64 }
}

/// The smallest step (a multiple of 10 s) at which the range fits in the limit.
fn suggest_step(start_us: i64, end_us: i64, span_us: i64, retention: &Retention, now_us: i64) -> i64 {
    let raw = Tier::Raw.step_us();
    let mut step_us = ceil_div(ceil_div(span_us, MAX_POINTS_PER_SERIES as i64), raw) * raw;
    loop {
        let plan = plan_step(start_us, end_us, step_us, retention, now_us);
        if plan.points <= MAX_POINTS_PER_SERIES {
            return plan.step_us;
        }
        step_us += raw;
    }
}

fn ceil_div(a: i64, b: i64) -> i64 {
    (a + b - 1) / b
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN_US: i64 = 60_000_000;
    const DAY_US: i64 = 1440 * MIN_US;

    fn check(start_us: i64, end_us: i64, step_us: i64, now_us: i64, expected: (Tier, i64, i64, u64)) {
        let q = Query { metric: "m".into(), kind: "k".into(), id: None, start_us, end_us, step_us };
        let p = plan(&q, &Retention::default(), now_us).unwrap();
        assert_eq!((p.tier, p.step_us, p.start_us, p.points), expected);
    }

    #[test]
    fn picks_the_coarsest_tier_that_fits_and_rounds_the_step_up() {
        let now = 100 * DAY_US;
        // Recent data at 10 s: raw; a finer step is the raw tier's.
        check(now - 3600e6 as i64, now, 1, now, (Tier::Raw, 10_000_000, now - 3_600_000_000, 360));
        check(now - 3600e6 as i64, now, 10_000_000, now, (Tier::Raw, 10_000_000, now - 3_600_000_000, 360));
        // 15 s rounds up to 20 s on the raw tier.
        check(now - 3600e6 as i64, now, 15_000_000, now, (Tier::Raw, 20_000_000, now - 3_600_000_000, 180));
        // Two days back is past raw retention: the minute tier, even for a 10 s step.
        check(now - 2 * DAY_US, now, 10_000_000, now, (Tier::Minute, MIN_US, now - 2 * DAY_US, 2880));
        // 90 s on the minute tier rounds to 2 min.
        check(now - DAY_US / 2, now, 90_000_000, now, (Tier::Raw, 90_000_000, now - DAY_US / 2, 480));
        check(now - 2 * DAY_US, now, 90_000_000, now, (Tier::Minute, 2 * MIN_US, now - 2 * DAY_US, 1440));
        // A whole number of minutes over two days: the coarser minute tier, not raw.
        check(now - DAY_US / 2, now, 5 * MIN_US, now, (Tier::Minute, 5 * MIN_US, now - DAY_US / 2, 144));
        // A start past the minute tier's retention: hours.
        check(now - 91 * DAY_US, now, MIN_US, now, (Tier::Hour, 60 * MIN_US, now - 91 * DAY_US, 91 * 24));
        // An unaligned start is rounded down to the step; whole hours come from the hour tier.
        check(now - DAY_US + 7_000_000, now, 3600e6 as i64, now, (Tier::Hour, 3_600_000_000, now - DAY_US, 24));
    }

    #[test]
    fn too_many_points_names_a_step_that_works() {
        let now = 100 * DAY_US;
        let start_us = now - 90 * DAY_US;
        let q = Query { metric: "m".into(), kind: "k".into(), id: None, start_us, end_us: now, step_us: MIN_US };
        let Err(TsdbError::TooManyPoints { points, suggested_step_us, .. }) = plan(&q, &Retention::default(), now)
        else {
            panic!("expected TooManyPoints")
        };
        assert_eq!((points, suggested_step_us), (129_600, 12 * MIN_US));
        let q = Query { step_us: suggested_step_us, ..q };
        assert_eq!(plan(&q, &Retention::default(), now).unwrap().points, 10_800);
    }
}
