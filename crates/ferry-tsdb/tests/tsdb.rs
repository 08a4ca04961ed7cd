//! The store end to end, on real files in a temporary directory: what goes in comes out, in every tier, across
//! flushes, crashes, compactions and retention.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use ferry_tsdb::{Answer, Config, Point, Query, SeriesKey, Tier, Tsdb, TsdbError};

const S: i64 = 1_000_000;
const MIN: i64 = 60 * S;
const HOUR: i64 = 3600 * S;
const DAY: i64 = 24 * HOUR;
/// A time well after the epoch and aligned to every partition (30 days), so that tests read in round numbers.
const T0: i64 = 30 * DAY * 700;
const METRIC: &str = "gpu_utilization";

fn open(dir: &Path) -> Tsdb {
    Tsdb::open(Config::new(dir)).unwrap()
}

fn point(id: &str, t_us: i64, value: f64) -> Point<'_> {
    Point { key: SeriesKey { metric: METRIC, kind: "gpu", id }, t_us, value }
}

fn query(id: Option<&str>, start_us: i64, end_us: i64, step_us: i64) -> Query {
    Query { metric: METRIC.into(), kind: "gpu".into(), id: id.map(str::to_owned), start_us, end_us, step_us }
}

/// Per series, the buckets that hold data as (offset from the answer's start in seconds, mean, max).
type Step = (i64, f64, f64);
type Data = Vec<(String, Vec<Step>)>;

fn data(answer: &Answer) -> Data {
    answer
        .series
        .iter()
        .map(|s| {
            let points = s
                .points
                .iter()
                .filter_map(|b| {
                    assert_eq!(b.mean.is_some(), b.max.is_some(), "mean and max disagree on whether there is data");
                    Some(((b.t_us - answer.start_us) / S, b.mean?, b.max?))
                })
                .collect();
            (s.id.clone(), points)
        })
        .collect()
}

fn check(db: &Tsdb, q: &Query, now_us: i64, tier: Tier, expected: &[(&str, &[Step])]) {
    let answer = db.query_at(q, now_us).unwrap();
    assert_eq!(answer.tier, tier, "tier for {q:?}");
    let expected: Data = expected.iter().map(|(id, points)| (id.to_string(), points.to_vec())).collect();
    assert_eq!(data(&answer), expected, "answer to {q:?}");
}

/// What a query must return, computed from the samples themselves: mean and max per output step.
fn model(points: &[(String, i64, f64)], answer: &Answer, q: &Query) -> Data {
    let mut by_series: BTreeMap<String, BTreeMap<i64, (u32, f64, f64)>> = BTreeMap::new();
    let wanted = |id: &String| q.id.as_ref().is_none_or(|q| q == id);
    for (id, t, v) in points.iter().filter(|(id, t, _)| *t >= answer.start_us && *t < q.end_us && wanted(id)) {
        let k = (t - answer.start_us) / answer.step_us * answer.step_us / S;
        let e = by_series.entry(id.clone()).or_default().entry(k).or_insert((0, 0.0, f64::NEG_INFINITY));
        *e = (e.0 + 1, e.1 + v, e.2.max(*v));
    }
    by_series
        .into_iter()
        .map(|(id, b)| (id, b.into_iter().map(|(k, (n, sum, max))| (k, sum / f64::from(n), max)).collect()))
        .collect()
}

/// Deterministic pseudo-random samples: `n` of them over `ids` series in `[from_us, from_us + span_us)`, integer
/// values so that sums are exact in any order.
fn samples(n: usize, ids: usize, from_us: i64, span_us: i64, seed: u64) -> Vec<(String, i64, f64)> {
    let mut x = seed;
    let mut next = move || {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        x >> 33
    };
    (0..n)
        .map(|_| {
            let id = format!("node-{}/{}", next() % ids as u64, 0);
            let t_us = from_us + ((next() << 31 | next()) as i64 % span_us);
            (id, t_us, (next() % 101) as f64)
        })
        .collect()
}

fn ingest_all(db: &Tsdb, points: &[(String, i64, f64)], now_us: i64) {
    let batch: Vec<Point<'_>> = points.iter().map(|(id, t, v)| point(id, *t, *v)).collect();
    let stats = db.ingest_at(&batch, now_us).unwrap();
    assert_eq!((stats.stored, stats.too_old, stats.rejected), (points.len() as u64, 0, 0));
}

#[test]
fn each_tier_keeps_mean_and_max_and_reports_empty_steps_as_none() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let now = T0 + 2 * HOUR;
    db.ingest_at(&[point("a", T0 + 5 * S, 1.0), point("a", T0 + 7 * S, 3.0), point("a", T0 + 65 * S, 10.0)], now)
        .unwrap();
    let q = query(Some("a"), T0, T0 + 2 * MIN, 10 * S);
    check(&db, &q, now, Tier::Raw, &[("a", &[(0, 2.0, 3.0), (60, 10.0, 10.0)])]);
    assert_eq!(db.query_at(&q, now).unwrap().series[0].points.len(), 12, "empty steps are present, as None");
    // Two days later the raw tier no longer covers the start: minutes.
    check(&db, &q, T0 + 2 * DAY, Tier::Minute, &[("a", &[(0, 2.0, 3.0), (60, 10.0, 10.0)])]);
    // A hundred days later only hours do.
    check(&db, &q, T0 + 100 * DAY, Tier::Hour, &[("a", &[(0, 14.0 / 3.0, 10.0)])]);
    // The same from the files alone.
    db.flush().unwrap();
    drop(db);
    let db = open(dir.path());
    check(&db, &q, now, Tier::Raw, &[("a", &[(0, 2.0, 3.0), (60, 10.0, 10.0)])]);
    check(&db, &q, T0 + 2 * DAY, Tier::Minute, &[("a", &[(0, 2.0, 3.0), (60, 10.0, 10.0)])]);
    check(&db, &q, T0 + 100 * DAY, Tier::Hour, &[("a", &[(0, 14.0 / 3.0, 10.0)])]);
}

#[test]
fn tier_choice_and_step_rounding() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let now = T0 + 100 * DAY;
    let cases = [
        // (start, step asked) -> (tier, step used, first bucket)
        ((now - HOUR, 1), (Tier::Raw, 10 * S, now - HOUR)),
        ((now - HOUR + 3 * S, 25 * S), (Tier::Raw, 30 * S, now - HOUR)),
        ((now - 2 * DAY, 10 * S), (Tier::Minute, MIN, now - 2 * DAY)),
        ((now - 2 * DAY, 90 * S), (Tier::Minute, 2 * MIN, now - 2 * DAY)),
        ((now - 2 * DAY, HOUR), (Tier::Hour, HOUR, now - 2 * DAY)),
        ((now - 30 * DAY, 5 * MIN), (Tier::Minute, 5 * MIN, now - 30 * DAY)),
        ((now - HOUR, 90 * S), (Tier::Raw, 90 * S, now - HOUR)),
        ((now - 90 * DAY, HOUR), (Tier::Hour, HOUR, now - 90 * DAY)),
        ((now - 91 * DAY, MIN), (Tier::Hour, HOUR, now - 91 * DAY)),
        ((now - 91 * DAY, 90 * MIN), (Tier::Hour, 2 * HOUR, now - 91 * DAY)),
    ];
    for ((start, step), (tier, step_used, first)) in cases {
        let answer = db.query_at(&query(None, start, now, step), now).unwrap();
        assert_eq!(
            (answer.tier, answer.step_us, answer.start_us),
            (tier, step_used, first),
            "start {start}, step {step}"
        );
        assert!(answer.series.is_empty());
    }
}

#[test]
fn too_many_points_is_refused_with_a_step_that_works() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let now = T0 + 100 * DAY;
    let err = db.query_at(&query(None, now - 90 * DAY, now, MIN), now).unwrap_err();
    let TsdbError::TooManyPoints { points, limit, suggested_step_us } = &err else { panic!("{err}") };
    assert_eq!((*points, *limit, *suggested_step_us), (129_600, 11_000, 12 * MIN));
    assert!(err.to_string().contains("at least 720000000 us (720 s)"), "{err}");
    db.query_at(&query(None, now - 90 * DAY, now, *suggested_step_us), now).unwrap();
    let err = db.query_at(&query(None, now, now - 1, MIN), now).unwrap_err();
    assert!(matches!(err, TsdbError::BadQuery { .. }), "{err}");
}

#[test]
fn out_of_order_and_late_points_land_in_the_right_bucket_of_every_tier() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    // Three hours of samples from 20 GPUs, delivered in reverse time order over three batches, with the last batch
    // a day late (an agent back from a partition) after the earlier partitions were compacted.
    let mut points = samples(6000, 20, T0, 3 * HOUR, 7);
    points.sort_by_key(|p| std::cmp::Reverse(p.1));
    let now = T0 + 23 * HOUR;
    for chunk in points.chunks(2000) {
        ingest_all(&db, chunk, now);
        db.maintain(now).unwrap();
    }
    let late = samples(500, 20, T0, 3 * HOUR, 8);
    ingest_all(&db, &late, now);
    points.extend(late);
    for (start, step, now, tier) in [
        (T0, 10 * S, now, Tier::Raw),
        (T0, 70 * S, now, Tier::Raw),
        (T0, 10 * S, T0 + 3 * DAY, Tier::Minute),
        (T0, 5 * MIN, T0 + 3 * DAY, Tier::Minute),
        (T0, HOUR, T0 + 100 * DAY, Tier::Hour),
    ] {
        let q = query(None, start, T0 + 3 * HOUR, step);
        let answer = db.query_at(&q, now).unwrap();
        assert_eq!(answer.tier, tier);
        assert_eq!(data(&answer), model(&points, &answer, &q), "step {step}");
    }
}

#[test]
fn unknown_ids_answer_empty_and_ids_are_listed_sorted() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let now = T0;
    db.ingest_at(&[point("b", now, 1.0), point("a", now, 2.0), point("c", now, f64::NAN)], now).unwrap();
    assert_eq!(db.kinds_and_ids(METRIC, "gpu"), ["a", "b"]);
    assert!(db.kinds_and_ids(METRIC, "node").is_empty());
    let answer = db.query_at(&query(Some("zz"), now, now + MIN, MIN), now).unwrap();
    assert!(answer.series.is_empty());
    let answer = db.query_at(&query(None, now, now + MIN, MIN), now).unwrap();
    assert_eq!(answer.series.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
}

#[test]
fn too_old_and_invalid_points_are_counted_and_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let now = T0 + 2 * DAY;
    let stats = db
        .ingest_at(
            &[
                point("a", now - DAY - 1, 1.0),
                point("a", now - DAY + 1, 2.0),
                point("a", now, f64::INFINITY),
                point("", now, 1.0),
                point("a", now + 2 * DAY, 1.0),
            ],
            now,
        )
        .unwrap();
    assert_eq!((stats.stored, stats.too_old, stats.rejected), (1, 1, 3));
    assert_eq!(db.kinds_and_ids(METRIC, "gpu"), ["a"]);
}

#[test]
fn flushed_points_survive_a_crash_and_unflushed_ones_are_the_only_loss() {
    let dir = tempfile::tempdir().unwrap();
    let now = T0 + HOUR;
    let db = open(dir.path());
    db.ingest_at(&[point("a", T0, 1.0), point("b", T0 + 10 * S, 2.0)], now).unwrap();
    db.flush().unwrap();
    db.ingest_at(&[point("a", T0 + 20 * S, 3.0), point("new", T0, 4.0)], now).unwrap();
    // A killed process: nothing runs on the way out.
    std::mem::forget(db);
    let db = open(dir.path());
    let q = query(None, T0, T0 + MIN, 10 * S);
    check(&db, &q, now, Tier::Raw, &[("a", &[(0, 1.0, 1.0)]), ("b", &[(10, 2.0, 2.0)])]);
    // Closing normally flushes.
    db.ingest_at(&[point("a", T0 + 20 * S, 3.0)], now).unwrap();
    drop(db);
    let db = open(dir.path());
    check(&db, &q, now, Tier::Raw, &[("a", &[(0, 1.0, 1.0), (20, 3.0, 3.0)]), ("b", &[(10, 2.0, 2.0)])]);
}

#[test]
fn a_torn_last_record_is_cut_off_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let now = T0 + HOUR;
    let db = open(dir.path());
    db.ingest_at(&[point("a", T0, 1.0), point("b", T0, 2.0)], now).unwrap();
    db.flush().unwrap();
    drop(db);
    // A crash in the middle of the next flush: half a registry record and half a data record in every log.
    let append = |path: &Path, bytes: &[u8]| {
        use std::io::Write;
        std::fs::OpenOptions::new().append(true).open(path).unwrap().write_all(bytes).unwrap();
    };
    let series_len = std::fs::metadata(dir.path().join("series.log")).unwrap().len();
    append(&dir.path().join("series.log"), &[9, 0, 0, 0, 1, 2]);
    let mut logs = Vec::new();
    for tier in ["raw", "1m", "1h"] {
        for entry in std::fs::read_dir(dir.path().join(tier)).unwrap() {
            let path = entry.unwrap().path();
            append(&path, &[7; 17]);
            logs.push(path);
        }
    }
    assert_eq!(logs.len(), 3);
    let db = open(dir.path());
    let q = query(None, T0, T0 + MIN, 10 * S);
    check(&db, &q, now, Tier::Raw, &[("a", &[(0, 1.0, 1.0)]), ("b", &[(0, 2.0, 2.0)])]);
    assert_eq!(std::fs::metadata(dir.path().join("series.log")).unwrap().len(), series_len);
    for path in &logs {
        assert_eq!(std::fs::metadata(path).unwrap().len() % 32, 0, "{} still torn", path.display());
    }
    // And the store writes on after the cut.
    db.ingest_at(&[point("c", T0, 3.0)], now).unwrap();
    drop(db);
    let db = open(dir.path());
    check(&db, &q, now, Tier::Raw, &[("a", &[(0, 1.0, 1.0)]), ("b", &[(0, 2.0, 2.0)]), ("c", &[(0, 3.0, 3.0)])]);
}

#[test]
fn maintain_deletes_partitions_past_retention() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    db.ingest_at(&[point("a", T0, 1.0)], T0).unwrap();
    db.maintain(T0 + 2 * HOUR).unwrap();
    let files = |tier: &str| std::fs::read_dir(dir.path().join(tier)).unwrap().count();
    assert_eq!((files("raw"), files("1m"), files("1h")), (1, 1, 1));
    db.maintain(T0 + DAY + 2 * HOUR).unwrap();
    assert_eq!((files("raw"), files("1m"), files("1h")), (0, 1, 1));
    db.maintain(T0 + 92 * DAY).unwrap();
    assert_eq!((files("raw"), files("1m"), files("1h")), (0, 0, 1));
    let q = query(Some("a"), T0, T0 + HOUR, 10 * S);
    // Asked as if it were still the first hour, the raw tier has nothing any more.
    check(&db, &q, T0, Tier::Raw, &[("a", &[])]);
    check(&db, &q, T0 + 92 * DAY, Tier::Hour, &[("a", &[(0, 1.0, 1.0)])]);
    db.maintain(T0 + 1900 * DAY).unwrap();
    assert_eq!(files("1h"), 0);
}

#[test]
fn compaction_and_reopening_preserve_every_answer() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let now = T0 + 20 * HOUR;
    // Sparse series (a sample every few minutes: sparse blocks in the segments) and one with a sample every 10 s
    // (dense blocks).
    let mut points = samples(20_000, 50, T0, 20 * HOUR, 11);
    points.extend((0..7200).map(|i| ("dense/0".to_string(), T0 + i * 10 * S, (i % 97) as f64)));
    ingest_all(&db, &points, now);
    let queries = [
        (query(None, T0, T0 + 20 * HOUR, 10 * S), now),
        (query(Some("node-3/0"), T0 + 7 * S, T0 + 20 * HOUR, 130 * S), now),
        (query(Some("dense/0"), T0 + 7 * S, T0 + 20 * HOUR, 130 * S), now),
        (query(None, T0, T0 + 20 * HOUR, MIN), T0 + 3 * DAY),
        (query(None, T0, T0 + 20 * HOUR, HOUR), T0 + 200 * DAY),
    ];
    let answers = |db: &Tsdb| queries.iter().map(|(q, now)| db.query_at(q, *now).unwrap()).collect::<Vec<_>>();
    let before = answers(&db);
    for (answer, (q, _)) in before.iter().zip(&queries) {
        assert_eq!(data(answer), model(&points, answer, q));
    }
    db.maintain(T0 + 21 * HOUR).unwrap();
    let segments = std::fs::read_dir(dir.path().join("raw"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "seg"));
    assert_eq!(segments.count(), 20, "every closed raw hour is compacted");
    assert_eq!(answers(&db), before);
    // Late points into compacted partitions, then everything compacted again and read back from disk alone.
    let late = samples(3000, 50, T0, 20 * HOUR, 12);
    ingest_all(&db, &late, now);
    db.maintain(T0 + 22 * HOUR).unwrap();
    db.maintain(T0 + 40 * DAY).unwrap();
    drop(db);
    let db = open(dir.path());
    let all: Vec<_> = points.iter().chain(&late).cloned().collect();
    for (q, now) in &queries[1..] {
        let answer = db.query_at(q, *now + 40 * DAY).unwrap();
        assert_ne!(answer.tier, Tier::Raw);
        assert_eq!(data(&answer), model(&all, &answer, q));
    }
}

#[test]
fn a_crash_between_compaction_and_deleting_the_logs_counts_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    db.ingest_at(&[point("a", T0, 1.0), point("a", T0 + 10 * S, 3.0)], T0).unwrap();
    db.flush().unwrap();
    let log = dir.path().join("raw").join(format!("{}_1.log", T0 / HOUR));
    let saved = std::fs::read(&log).unwrap();
    db.maintain(T0 + 2 * HOUR).unwrap();
    assert!(!log.exists(), "compaction deletes the logs it absorbed");
    drop(db);
    std::fs::write(&log, saved).unwrap();
    let db = open(dir.path());
    check(&db, &query(None, T0, T0 + MIN, 10 * S), T0, Tier::Raw, &[("a", &[(0, 1.0, 1.0), (10, 3.0, 3.0)])]);
    check(&db, &query(None, T0, T0 + MIN, MIN), T0, Tier::Minute, &[("a", &[(0, 2.0, 3.0)])]);
    assert!(!log.exists(), "recovery deletes logs the segment already holds");
}

#[test]
fn ingest_compact_and_query_from_two_threads() {
    fn shared_between_threads<T: Send + Sync>() {}
    shared_between_threads::<Tsdb>();
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(open(dir.path()));
    let now = T0 + HOUR;
    let writer = {
        let db = Arc::clone(&db);
        std::thread::spawn(move || {
            for i in 0..200 {
                let ids: Vec<String> = (0..10).map(|g| format!("node-{i}/{g}")).collect();
                let batch: Vec<Point<'_>> = ids.iter().map(|id| point(id, T0 + i * S, 1.0)).collect();
                db.ingest_at(&batch, now).unwrap();
                if i % 50 == 0 {
                    db.flush().unwrap();
                }
                // Every hour of these samples is closed by then: each maintain compacts while the reader reads.
                if i % 20 == 0 {
                    db.maintain(T0 + 2 * HOUR).unwrap();
                }
            }
        })
    };
    let mut seen = 0;
    while seen < 2000 {
        let answer = db.query_at(&query(None, T0, T0 + HOUR, HOUR), now).unwrap();
        let count = answer.series.iter().filter(|s| s.points[0].mean == Some(1.0)).count();
        assert!(count >= seen, "a query saw fewer series than an earlier one");
        seen = count;
    }
    writer.join().unwrap();
    assert_eq!(db.kinds_and_ids(METRIC, "gpu").len(), 2000);
}
