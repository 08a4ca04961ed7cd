//! `ferry-tsdb`: the server's embedded time-series store. Capacity, allocation and measured utilisation per node,
//! GPU, job, user, project, team and pool go in as samples and come out as evenly stepped buckets of mean and max,
//! from rollup tiers fine enough for the last hour and coarse enough that 90 days of 1,000 GPUs answer in well under
//! 100 ms. Files in one directory, no external service, no SQL; it never reads the wall clock where a caller can pass
//! the time in (`*_at` methods) and never spawns a thread: the server calls [`Tsdb::flush`] and [`Tsdb::maintain`].
//!
//! # Model
//!
//! A series is (metric, kind, id), such as `("gpu_utilization", "gpu", "node-a/0")`. Every sample updates the bucket
//! holding it in each of three tiers directly (no cascading): [`Tier::Raw`] (10 s buckets), [`Tier::Minute`] and
//! [`Tier::Hour`]. A bucket keeps the count, the sum and the max of its samples, so the mean of an hour is the mean of
//! every sample in it, and a sample that arrives late or out of order lands in the right bucket of every tier. A query
//! picks, among the tiers whose retention covers its start, the coarsest whose step fits the requested step (one that
//! divides it first), rounds the step up to a multiple of that tier's, and aggregates the tier's buckets into steps;
//! a step without samples is `None`, never 0. [`Tsdb::query_each_at`] hands over one series at a time for callers
//! that serialise as they go: for 1,000 series over 90 days, building the whole [`Answer`] costs more than the query.
//!
//! # Files
//!
//! ```text
//! DIR/series.log          series registry: (metric, kind, id) -> u32, append-only, checksummed records
//! DIR/{raw,1m,1h}/P.seg   compacted partition P: per series a dense (or sparse) array of cells, with an index
//! DIR/{raw,1m,1h}/P_G.log cells flushed into partition P since its segment was written (generation G)
//! ```
//!
//! A tier is cut into time partitions (raw: an hour, 1m: a day, 1h: 30 days). Each partition is a segment (immutable,
//! sorted by series, indexed, read with `pread` for only the series and buckets a query needs) plus logs of
//! fixed-size checksummed records (series, bucket, count, sum, max) appended at each flush: the cells changed since
//! the previous flush, as deltas. The sum of a partition's logs is kept in memory (dense per series), so a query
//! never scans a log and ingest is a few hash lookups. [`Tsdb::maintain`] folds a partition's logs into a new
//! segment when its window has closed, or while open once its memory or logs grow past a limit (see the constants),
//! and deletes partitions past retention. Late samples for a compacted partition simply start new logs, merged on
//! read and folded in at a later `maintain`.
//!
//! # Durability
//!
//! When [`Tsdb::flush`] returns, every sample ingested before it is on disk (written and `fdatasync`ed, new files'
//! directories synced): a crash, even a killed process or a power cut, loses none of it. Samples ingested since the
//! last flush live only in memory and are lost in a crash; the server flushes every few seconds, which bounds that
//! loss. Dropping a [`Tsdb`] flushes it (errors are logged). Opening a store replays the logs and cuts a torn last
//! record (a crash during a flush) with a `tracing` warning; a segment is replaced only by renaming a synced new
//! file over it, and its logs are deleted only after that, with the segment recording which logs it absorbed, so a
//! crash during compaction neither loses nor double-counts a sample.
//!
//! # Memory
//!
//! Resident memory is the registry (~100 bytes per series), each segment's index (24 bytes per series per
//! partition on disk), and the not yet compacted cells (24 bytes each, bounded per partition by
//! [`OPEN_FOLD_CELLS`]); segments' data stay on disk (in the page cache when hot). It is bounded as long as
//! `maintain` runs.
//!
//! # Concurrency
//!
//! One reader-writer lock: queries share it; ingest and flush take it alone, and so does `maintain` to flush, expire,
//! freeze the cells to compact and install a new segment, but not while it writes the segment, so a large
//! compaction does not stall ingest or queries.

mod cell;
mod error;
mod partition;
mod query;
mod segment;
mod series;
mod tier;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};

use crate::cell::Cell;
pub use crate::error::TsdbError;
use crate::partition::{parse_file_name, FileName, Partition};
use crate::series::{name_ok, Registry};
pub use crate::tier::Tier;

/// The most output buckets per series a query may ask for: 90 days at 1 h is 2,160; a week at 1 min is 10,080.
pub const MAX_POINTS_PER_SERIES: u64 = 11_000;
/// A partition counts as closed (no more live samples expected) this long after its window ends.
pub const CLOSE_GRACE_US: i64 = 10 * 60 * 1_000_000;
/// Late samples in a closed partition are folded into its segment once this many cells are waiting...
pub const LATE_FOLD_CELLS: usize = 1 << 16;
/// ...or once the first of them has waited this long, so that a day of late samples arriving in many small batches
/// rewrites each segment a few times, not at every `maintain`.
pub const LATE_FOLD_AGE_US: i64 = 30 * 60 * 1_000_000;
/// An open partition is folded into its segment once it holds this many cells in memory (12 MiB at 24 bytes)...
pub const OPEN_FOLD_CELLS: usize = 1 << 19;
/// ...or once its logs reach this size and the size of its segment: each flush logs every active series' current
/// bucket again, so the logs of a 30-day hour partition grow far faster than its data.
pub const OPEN_FOLD_LOG_BYTES: u64 = 64 << 20;
/// Samples further than this ahead of the clock are rejected: a node's clock that far off would otherwise create
/// partitions that never close.
pub const FUTURE_MAX_US: i64 = 24 * 3600 * 1_000_000;

/// Where the store lives and how long each tier is kept.
#[derive(Clone, Debug)]
pub struct Config {
    pub dir: PathBuf,
    pub retention: Retention,
}

impl Config {
    pub fn new(dir: impl Into<PathBuf>) -> Config {
        Config { dir: dir.into(), retention: Retention::default() }
    }
}

/// How long each tier keeps its buckets, counted back from now. Samples older than `raw` are not taken at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    pub raw: Duration,
    pub minute: Duration,
    pub hour: Duration,
}

impl Default for Retention {
    fn default() -> Retention {
        const DAY: Duration = Duration::from_secs(86_400);
        Retention { raw: DAY, minute: DAY * 90, hour: DAY * 1825 }
    }
}

impl Retention {
    pub fn of(&self, tier: Tier) -> Duration {
        match tier {
            Tier::Raw => self.raw,
            Tier::Minute => self.minute,
            Tier::Hour => self.hour,
        }
    }

    pub(crate) fn of_us(&self, tier: Tier) -> i64 {
        i64::try_from(self.of(tier).as_micros()).unwrap_or(i64::MAX)
    }
}

/// Names one series, such as `("gpu_utilization", "gpu", "node-a/0")`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SeriesKey<'a> {
    pub metric: &'a str,
    pub kind: &'a str,
    pub id: &'a str,
}

/// One sample.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point<'a> {
    pub key: SeriesKey<'a>,
    pub t_us: i64,
    pub value: f64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IngestStats {
    pub stored: u64,
    /// Older than the raw tier's retention: dropped.
    pub too_old: u64,
    /// Not a finite value, an empty or over-long (512 bytes) name, more than [`FUTURE_MAX_US`] ahead of the clock,
    /// or a new series past the store's limit of 10 million: dropped.
    pub rejected: u64,
}

/// Buckets `[start_us, end_us)` of `step_us` of one (metric, kind): one series (`id`) or all of them (`None`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    pub metric: String,
    pub kind: String,
    pub id: Option<String>,
    pub start_us: i64,
    pub end_us: i64,
    pub step_us: i64,
}

/// One output step `[t_us, t_us + step)`; `None` where no sample fell in it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bucket {
    pub t_us: i64,
    pub mean: Option<f64>,
    pub max: Option<f64>,
    /// How many samples the step holds (0 where it has no data): with `mean`, their sum, for a caller that knows
    /// how much time each sample stands for.
    pub count: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SeriesData {
    pub id: String,
    pub points: Vec<Bucket>,
}

/// The answer to a [`Query`]: the tier used, the step after rounding up to a multiple of the tier's, the start of
/// the first bucket (the query's start rounded down to a multiple of the step), and the series sorted by id.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    pub tier: Tier,
    pub step_us: i64,
    pub start_us: i64,
    pub series: Vec<SeriesData>,
}

/// What [`Tsdb::query_each_at`] answered with, besides the series: the fields of an [`Answer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AnswerShape {
    pub tier: Tier,
    pub step_us: i64,
    pub start_us: i64,
    /// Buckets per series.
    pub points: usize,
}

/// The store. `Send + Sync`: share it behind an `Arc`.
pub struct Tsdb {
    config: Config,
    state: RwLock<State>,
    /// Held through a whole `maintain`, so that two never compact the same partition.
    maintaining: Mutex<()>,
}

struct State {
    registry: Registry,
    /// Per tier (by [`Tier::index`]), the partitions by number.
    tiers: [BTreeMap<i64, Partition>; 3],
}

impl Tsdb {
    /// Opens the store in `config.dir`, creating the directory, and recovers what is on disk.
    pub fn open(config: Config) -> Result<Tsdb, TsdbError> {
        std::fs::create_dir_all(&config.dir).map_err(TsdbError::io("create", &config.dir))?;
        let registry = Registry::open(&config.dir)?;
        let series_count = registry.ids_len();
        let mut tiers: [BTreeMap<i64, Partition>; 3] = Default::default();
        for tier in Tier::ALL {
            tiers[tier.index()] = recover_tier(&config.dir.join(tier.name()), tier, series_count)?;
        }
        // The registry and the tier directories may have just been created: make their names durable.
        partition::sync_dir(&config.dir)?;
        let partitions: usize = tiers.iter().map(BTreeMap::len).sum();
        tracing::info!(dir = %config.dir.display(), series = series_count, partitions, "opened the time-series store");
        Ok(Tsdb { config, state: RwLock::new(State { registry, tiers }), maintaining: Mutex::new(()) })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Takes samples, timed by the wall clock: see [`Tsdb::ingest_at`].
    pub fn ingest(&self, points: &[Point<'_>]) -> Result<IngestStats, TsdbError> {
        self.ingest_at(points, wall_clock_us())
    }

    /// Takes samples in any order; those older than `now_us` minus the raw retention are counted `too_old` and
    /// dropped. They are visible to queries at once and durable after the next [`Tsdb::flush`].
    pub fn ingest_at(&self, points: &[Point<'_>], now_us: i64) -> Result<IngestStats, TsdbError> {
        let oldest_us = now_us.saturating_sub(self.config.retention.of_us(Tier::Raw));
        let newest_us = now_us.saturating_add(FUTURE_MAX_US);
        let mut stats = IngestStats::default();
        let mut state = self.state.write();
        let State { registry, tiers } = &mut *state;
        for point in points {
            if point.t_us < oldest_us {
                stats.too_old += 1;
                continue;
            }
            let key = &point.key;
            let valid = point.value.is_finite()
                && point.t_us <= newest_us
                && name_ok(key.metric)
                && name_ok(key.kind)
                && name_ok(key.id);
            let Some(series) = valid.then(|| registry.intern(key)).flatten() else {
                stats.rejected += 1;
                continue;
            };
            let cell = Cell::sample(point.value);
            for tier in Tier::ALL {
                let (number, bucket) = tier.locate(point.t_us);
                let dir = &self.config.dir;
                let partition = tiers[tier.index()]
                    .entry(number)
                    .or_insert_with(|| Partition::new(&dir.join(tier.name()), tier, number));
                partition.add(series, bucket, &cell, now_us);
            }
            stats.stored += 1;
        }
        Ok(stats)
    }

    /// Makes everything ingested so far durable (see the crate documentation).
    pub fn flush(&self) -> Result<(), TsdbError> {
        self.state.write().flush()
    }

    /// Expires partitions past each tier's retention and folds logs into segments where due (see the constants);
    /// flushes first. The server calls it every ~10 s from a blocking thread. Segments are written without holding
    /// the lock that ingest and queries take: only freezing the cells to fold and installing the result do.
    pub fn maintain(&self, now_us: i64) -> Result<(), TsdbError> {
        let _one_at_a_time = self.maintaining.lock();
        let jobs = {
            let mut state = self.state.write();
            state.flush()?;
            let mut jobs = Vec::new();
            for tier in Tier::ALL {
                let keep_from_us = now_us.saturating_sub(self.config.retention.of_us(tier));
                let partitions = &mut state.tiers[tier.index()];
                let expired: Vec<i64> =
                    partitions.values().filter(|p| p.end_us() <= keep_from_us).map(|p| p.number()).collect();
                for number in expired {
                    let partition = partitions.remove(&number).expect("listed above");
                    tracing::info!(tier = tier.name(), partition = number, "deleting a partition past retention");
                    partition.delete()?;
                }
                jobs.extend(
                    partitions.values_mut().filter(|p| compaction_due(p, now_us)).filter_map(|p| p.begin_compaction()),
                );
            }
            jobs
        };
        for job in jobs {
            let started = std::time::Instant::now();
            let seg = job.run()?;
            let (tier, number) = (job.tier(), job.number());
            drop(job);
            let mut state = self.state.write();
            let partition = state.tiers[tier.index()].get_mut(&number).expect("only maintain removes partitions");
            partition.finish_compaction(seg)?;
            tracing::debug!(
                tier = tier.name(),
                partition = number,
                ms = started.elapsed().as_millis() as u64,
                "compacted a partition"
            );
        }
        Ok(())
    }

    /// Answers a query as of the wall clock: see [`Tsdb::query_at`].
    pub fn query(&self, query: &Query) -> Result<Answer, TsdbError> {
        self.query_at(query, wall_clock_us())
    }

    /// Answers a query; `now_us` decides which tiers' retention still covers the start. Includes samples not yet
    /// flushed.
    pub fn query_at(&self, query: &Query, now_us: i64) -> Result<Answer, TsdbError> {
        let mut series = Vec::new();
        let shape = self.query_each_at(query, now_us, |id, points| {
            series.push(SeriesData { id: id.to_owned(), points: points.to_vec() })
        })?;
        Ok(Answer { tier: shape.tier, step_us: shape.step_us, start_us: shape.start_us, series })
    }

    /// [`Tsdb::query_each_at`] as of the wall clock.
    pub fn query_each(&self, query: &Query, f: impl FnMut(&str, &[Bucket])) -> Result<AnswerShape, TsdbError> {
        self.query_each_at(query, wall_clock_us(), f)
    }

    /// Like [`Tsdb::query_at`], but hands each series to `f` (in id order) instead of building an [`Answer`]: 1,000
    /// series over 90 days at 1 h is 86 MB of buckets, and allocating them costs more than the query itself, so a
    /// caller that serialises as it goes should use this. `f` runs under the store's read lock: it must not call
    /// back into the store.
    pub fn query_each_at(
        &self,
        query: &Query,
        now_us: i64,
        mut f: impl FnMut(&str, &[Bucket]),
    ) -> Result<AnswerShape, TsdbError> {
        let plan = query::plan(query, &self.config.retention, now_us)?;
        let state = self.state.read();
        let series: Vec<(String, u32)> = match &query.id {
            None => state.registry.ids(&query.metric, &query.kind),
            Some(id) => {
                state.registry.get(&query.metric, &query.kind, id).map(|n| vec![(id.clone(), n)]).unwrap_or_default()
            }
        };
        let (tier, tier_step_us) = (plan.tier, plan.tier.step_us());
        let first = tier.locate(plan.start_us).0;
        let last = tier.locate(plan.end_us - 1).0;
        // Per partition, the range of its tier buckets that start inside [plan.start_us, plan.end_us); output steps
        // are whole tier buckets, so each tier bucket falls in exactly one step.
        let partitions: Vec<(&Partition, u32, u32)> = state.tiers[tier.index()]
            .range(first..=last)
            .map(|(_, p)| {
                let start_us = p.start_us();
                let lo = (plan.start_us.max(start_us) - start_us) / tier_step_us;
                let hi = (plan.end_us.min(p.end_us()) - start_us + tier_step_us - 1) / tier_step_us;
                (p, lo as u32, hi as u32)
            })
            .collect();
        // One series at a time through reused rows: nothing here grows with the number of series.
        let mut row = vec![Cell::EMPTY; plan.points as usize];
        let ratio = plan.step_us / tier_step_us;
        let mut buckets = Vec::with_capacity(plan.points as usize);
        let mut buf = Vec::new();
        for (id, n) in &series {
            row.fill(Cell::EMPTY);
            for (partition, lo, hi) in &partitions {
                // The output step of a tier bucket, in tier steps from the first output bucket; no division in the
                // common case where the output step is the tier's.
                let offset = (partition.start_us() - plan.start_us) / tier_step_us;
                partition.read(*n, *lo, *hi, &mut buf, |bucket, cell| {
                    let k = offset + i64::from(bucket);
                    row[if ratio == 1 { k } else { k / ratio } as usize].merge(cell);
                })?;
            }
            buckets.clear();
            buckets.extend(to_buckets(&row, plan.start_us, plan.step_us));
            f(id, &buckets);
        }
        Ok(AnswerShape { tier, step_us: plan.step_us, start_us: plan.start_us, points: plan.points as usize })
    }

    /// The ids known for a (metric, kind), sorted.
    pub fn kinds_and_ids(&self, metric: &str, kind: &str) -> Vec<String> {
        self.state.read().registry.ids(metric, kind).into_iter().map(|(id, _)| id).collect()
    }
}

impl Drop for Tsdb {
    fn drop(&mut self) {
        if let Err(error) = self.state.get_mut().flush() {
            tracing::error!(%error, "could not flush the time-series store on close; recent samples are lost");
        }
    }
}

impl State {
    /// The registry first: logs refer to series by number.
    fn flush(&mut self) -> Result<(), TsdbError> {
        self.registry.flush()?;
        for partition in self.tiers.iter_mut().flat_map(|t| t.values_mut()) {
            partition.flush()?;
        }
        Ok(())
    }
}

/// Whether `maintain` should fold a partition's logs into its segment now.
fn compaction_due(p: &Partition, now_us: i64) -> bool {
    if p.compaction_failed() {
        return true;
    }
    if p.recent_cells() == 0 {
        return false;
    }
    // Logs as large as the segment: rewriting it now at most doubles what was written.
    let logs_due = p.log_bytes() >= OPEN_FOLD_LOG_BYTES.max(p.seg_bytes());
    let closed = p.end_us().saturating_add(CLOSE_GRACE_US) <= now_us;
    let late_due = !p.has_segment()
        || p.recent_cells() >= LATE_FOLD_CELLS
        || now_us.saturating_sub(p.recent_since_us()) >= LATE_FOLD_AGE_US;
    (closed && late_due) || p.recent_cells() >= OPEN_FOLD_CELLS || logs_due
}

fn to_buckets(row: &[Cell], start_us: i64, step_us: i64) -> impl Iterator<Item = Bucket> + '_ {
    row.iter().enumerate().map(move |(k, c)| {
        let has = !c.is_empty();
        Bucket {
            t_us: start_us + k as i64 * step_us,
            mean: has.then(|| c.sum / f64::from(c.count)),
            max: has.then_some(c.max),
            count: c.count,
        }
    })
}

/// Reads a tier's directory back into partitions, creating it if needed and deleting half-written temporary files.
fn recover_tier(dir: &Path, tier: Tier, series_count: u32) -> Result<BTreeMap<i64, Partition>, TsdbError> {
    std::fs::create_dir_all(dir).map_err(TsdbError::io("create", dir))?;
    let mut found: HashMap<i64, (bool, Vec<u64>)> = HashMap::new();
    for entry in std::fs::read_dir(dir).map_err(TsdbError::io("list", dir))? {
        let entry = entry.map_err(TsdbError::io("list", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        match parse_file_name(&name) {
            Some(FileName::Segment(n)) => found.entry(n).or_default().0 = true,
            Some(FileName::Log(n, gen)) => found.entry(n).or_default().1.push(gen),
            Some(FileName::Temporary) => partition::remove_if_there(&entry.path())?,
            None => tracing::warn!(path = %entry.path().display(), "ignoring a file the store did not write"),
        }
    }
    let mut partitions = BTreeMap::new();
    for (number, (has_seg, gens)) in found {
        partitions.insert(number, Partition::recover(dir, tier, number, has_seg, gens, series_count)?);
    }
    Ok(partitions)
}

fn wall_clock_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}
