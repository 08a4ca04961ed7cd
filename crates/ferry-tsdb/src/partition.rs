//! One time partition of one tier: a compacted segment file, the log files of cells flushed since, and in memory the
//! sum of those logs (`recent`, so that a query never scans a log) plus the cells not yet flushed (`dirty`).
//!
//! Every sample is in exactly one of: the segment, `frozen` (the logs being compacted) or `recent` (the logs since,
//! plus `dirty`). Compaction runs in three steps so that only the first and the last hold the store's lock:
//! [`Partition::begin_compaction`] freezes `recent` and starts a new log generation; [`Compaction::run`] writes the
//! old segment and the frozen cells into a new segment that records the newest log generation it absorbed, and
//! renames it into place; [`Partition::finish_compaction`] installs it and only then deletes the absorbed logs.
//! Recovery ignores any log at or below the generation its segment absorbed, so a crash at any point never counts a
//! sample twice.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::cell::{decode_record, encode_record, Cell, RECORD_LEN};
use crate::error::TsdbError;
use crate::segment::Segment;
use crate::tier::Tier;

/// The cells of one series in one partition, dense from the first to the last bucket touched.
pub(crate) struct Run {
    pub first: u32,
    pub cells: Vec<Cell>,
}

impl Run {
    /// Merges `cell` into `bucket`, growing the run; returns how many cells it grew by.
    fn add(&mut self, bucket: u32, cell: &Cell) -> usize {
        let end = self.first + self.cells.len() as u32;
        let mut grown = 0;
        if self.cells.is_empty() {
            self.first = bucket;
            self.cells.push(Cell::EMPTY);
            grown = 1;
        } else if bucket < self.first {
            grown = (self.first - bucket) as usize;
            self.cells.splice(0..0, std::iter::repeat_n(Cell::EMPTY, grown));
            self.first = bucket;
        } else if bucket >= end {
            grown = (bucket + 1 - end) as usize;
            self.cells.resize(self.cells.len() + grown, Cell::EMPTY);
        }
        self.cells[(bucket - self.first) as usize].merge(cell);
        grown
    }
}

pub(crate) struct Partition {
    tier: Tier,
    number: i64,
    dir: PathBuf,
    seg: Option<Arc<Segment>>,
    /// Cells being folded into a new segment by a compaction in flight.
    frozen: Option<Arc<Frozen>>,
    /// The log generation that flushes append to; always above the segment's `absorbed_gen`.
    gen: u64,
    log: Option<File>,
    log_len: u64,
    /// Generations of log files on disk not yet folded into the segment, and their total size.
    log_gens: Vec<u64>,
    log_bytes: u64,
    recent: HashMap<u32, Run>,
    recent_cells: usize,
    /// When `recent` last went from empty to not empty (the ingest's `now`).
    recent_since_us: i64,
    dirty: HashMap<(u32, u32), Cell>,
}

impl Partition {
    pub fn new(dir: &Path, tier: Tier, number: i64) -> Partition {
        Partition {
            tier,
            number,
            dir: dir.to_owned(),
            seg: None,
            frozen: None,
            gen: 1,
            log: None,
            log_len: 0,
            log_gens: Vec::new(),
            log_bytes: 0,
            recent: HashMap::new(),
            recent_cells: 0,
            recent_since_us: i64::MIN,
            dirty: HashMap::new(),
        }
    }

    /// Reads back a partition from its files: the segment if there is one, then every log it has not absorbed.
    /// Logs it did absorb (left by a crash just after a compaction) are deleted; a torn tail is cut off.
    pub fn recover(
        dir: &Path,
        tier: Tier,
        number: i64,
        has_seg: bool,
        mut gens: Vec<u64>,
        series_count: u32,
    ) -> Result<Partition, TsdbError> {
        let mut p = Partition::new(dir, tier, number);
        if has_seg {
            p.seg = Some(Arc::new(Segment::open(&p.seg_path(), tier, number)?));
        }
        let absorbed = p.seg.as_ref().map_or(0, |s| s.absorbed_gen);
        gens.sort_unstable();
        for gen in gens {
            let path = p.log_path(gen);
            if gen <= absorbed {
                remove_if_there(&path)?;
                continue;
            }
            let len = p.replay_log(&path, series_count)?;
            p.log_gens.push(gen);
            p.log_bytes += len;
            p.gen = gen;
            p.log_len = len;
        }
        p.gen = p.gen.max(absorbed + 1);
        if p.log_gens.last() == Some(&p.gen) {
            let path = p.log_path(p.gen);
            p.log = Some(OpenOptions::new().write(true).open(&path).map_err(TsdbError::io("open", &path))?);
        } else {
            p.log_len = 0;
        }
        Ok(p)
    }

    /// Adds a log's records to `recent`; returns the length of its valid part, to which a torn tail is cut.
    fn replay_log(&mut self, path: &Path, series_count: u32) -> Result<u64, TsdbError> {
        let bytes = std::fs::read(path).map_err(TsdbError::io("read", path))?;
        let mut valid = 0;
        let mut unknown = 0u64;
        for record in bytes.chunks_exact(RECORD_LEN) {
            let Some((series, bucket, cell)) = decode_record(record) else { break };
            if bucket >= self.tier.buckets_per_partition() {
                return Err(TsdbError::corrupt(path, format!("a record names bucket {bucket}, past the partition")));
            }
            valid += RECORD_LEN;
            if series >= series_count {
                unknown += 1;
                continue;
            }
            self.add_recent(series, bucket, &cell, i64::MIN);
        }
        if unknown > 0 {
            tracing::warn!(path = %path.display(), records = unknown, "skipping log records of unregistered series");
        }
        if valid < bytes.len() {
            tracing::warn!(path = %path.display(), valid_bytes = valid, dropped_bytes = bytes.len() - valid,
                "cutting a torn or damaged tail off a data log (a crash during a flush)");
            let file = OpenOptions::new().write(true).open(path).map_err(TsdbError::io("open", path))?;
            file.set_len(valid as u64).map_err(TsdbError::io("truncate", path))?;
            file.sync_all().map_err(TsdbError::io("sync", path))?;
        }
        Ok(valid as u64)
    }

    pub fn start_us(&self) -> i64 {
        self.tier.partition_start_us(self.number)
    }

    pub fn end_us(&self) -> i64 {
        self.start_us() + self.tier.partition_us()
    }

    pub fn recent_cells(&self) -> usize {
        self.recent_cells
    }

    pub fn recent_since_us(&self) -> i64 {
        self.recent_since_us
    }

    pub fn log_bytes(&self) -> u64 {
        self.log_bytes
    }

    pub fn has_segment(&self) -> bool {
        self.seg.is_some()
    }

    /// Takes one sample (or an aggregate) into the partition; durable after the next [`Partition::flush`].
    pub fn add(&mut self, series: u32, bucket: u32, cell: &Cell, now_us: i64) {
        self.add_recent(series, bucket, cell, now_us);
        self.dirty.entry((series, bucket)).or_insert(Cell::EMPTY).merge(cell);
    }

    fn add_recent(&mut self, series: u32, bucket: u32, cell: &Cell, now_us: i64) {
        if self.recent_cells == 0 {
            self.recent_since_us = now_us;
        }
        let run = self.recent.entry(series).or_insert_with(|| Run { first: bucket, cells: Vec::new() });
        self.recent_cells += run.add(bucket, cell);
    }

    /// Appends the cells changed since the last flush to the current log and syncs it.
    pub fn flush(&mut self) -> Result<(), TsdbError> {
        if self.dirty.is_empty() {
            return Ok(());
        }
        let mut out = Vec::with_capacity(self.dirty.len() * RECORD_LEN);
        for (&(series, bucket), cell) in &self.dirty {
            encode_record(series, bucket, cell, &mut out);
        }
        let path = self.log_path(self.gen);
        if self.log.is_none() {
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(TsdbError::io("create", &path))?;
            sync_dir(&self.dir)?;
            self.log = Some(file);
            self.log_len = 0;
            self.log_gens.push(self.gen);
        }
        let log = self.log.as_ref().expect("opened above");
        // Written at the known end rather than appended, so that after a failed write the next flush writes the same
        // cells again over whatever part made it to the file.
        log.write_all_at(&out, self.log_len).map_err(TsdbError::io("write", &path))?;
        log.sync_data().map_err(TsdbError::io("sync", &path))?;
        self.log_len += out.len() as u64;
        self.log_bytes += out.len() as u64;
        // Dropped rather than cleared: a burst (a day of late samples) must not keep its capacity for good.
        self.dirty = HashMap::new();
        Ok(())
    }

    /// Freezes the cells flushed since the last compaction (the caller has flushed, so `recent` is exactly what the
    /// logs hold) and moves flushes to a new log generation. `None` when there is nothing to fold. A compaction that
    /// failed is retried on its frozen cells before anything new is frozen.
    pub fn begin_compaction(&mut self) -> Option<Compaction> {
        debug_assert!(self.dirty.is_empty(), "compaction of a partition with unflushed cells");
        if self.frozen.is_none() {
            if self.recent.is_empty() {
                return None;
            }
            let runs = std::mem::take(&mut self.recent);
            let frozen = Frozen { runs, gen: self.gen, log_gens: std::mem::take(&mut self.log_gens) };
            self.frozen = Some(Arc::new(frozen));
            self.recent_cells = 0;
            self.gen += 1;
            self.log = None;
            self.log_len = 0;
            self.log_bytes = 0;
        }
        Some(Compaction {
            tier: self.tier,
            number: self.number,
            dir: self.dir.clone(),
            path: self.seg_path(),
            old: self.seg.clone(),
            frozen: Arc::clone(self.frozen.as_ref().expect("set above")),
        })
    }

    /// Installs the segment a compaction wrote and deletes the logs it absorbed.
    pub fn finish_compaction(&mut self, seg: Segment) -> Result<(), TsdbError> {
        self.seg = Some(Arc::new(seg));
        if let Some(frozen) = self.frozen.take() {
            for gen in &frozen.log_gens {
                remove_if_there(&self.log_path(*gen))?;
            }
        }
        Ok(())
    }

    /// Whether cells are still frozen outside a `maintain`: its compaction failed, and the next one retries it.
    pub fn compaction_failed(&self) -> bool {
        self.frozen.is_some()
    }

    pub fn seg_bytes(&self) -> u64 {
        self.seg.as_ref().map_or(0, |s| s.file_len())
    }

    /// Deletes the partition's files (it is past retention).
    pub fn delete(self) -> Result<(), TsdbError> {
        remove_if_there(&self.seg_path())?;
        let frozen = self.frozen.iter().flat_map(|f| f.log_gens.iter());
        for gen in self.log_gens.iter().chain(frozen) {
            remove_if_there(&self.log_path(*gen))?;
        }
        Ok(())
    }

    /// Calls `f(bucket, cell)` for the data of `series` in buckets `lo..hi`; a bucket may be reported twice (once
    /// from the segment, once from memory), and the caller merges.
    pub fn read(
        &self,
        series: u32,
        lo: u32,
        hi: u32,
        buf: &mut Vec<u8>,
        mut f: impl FnMut(u32, &Cell),
    ) -> Result<(), TsdbError> {
        if let Some(seg) = &self.seg {
            seg.read(series, lo, hi, buf, &mut f)?;
        }
        let frozen = self.frozen.as_ref().and_then(|frozen| frozen.runs.get(&series));
        for run in frozen.into_iter().chain(self.recent.get(&series)) {
            let end = run.first + run.cells.len() as u32;
            for b in lo.max(run.first)..hi.min(end) {
                let cell = &run.cells[(b - run.first) as usize];
                if !cell.is_empty() {
                    f(b, cell);
                }
            }
        }
        Ok(())
    }

    fn seg_path(&self) -> PathBuf {
        self.dir.join(format!("{}.seg", self.number))
    }

    fn log_path(&self, gen: u64) -> PathBuf {
        self.dir.join(format!("{}_{gen}.log", self.number))
    }
}

/// The cells of a compaction in flight: what the logs up to generation `gen` hold.
pub(crate) struct Frozen {
    runs: HashMap<u32, Run>,
    gen: u64,
    log_gens: Vec<u64>,
}

/// A compaction's work, done without the store's lock: it reads only the old segment and the frozen cells, which
/// nothing changes meanwhile.
pub(crate) struct Compaction {
    tier: Tier,
    number: i64,
    dir: PathBuf,
    path: PathBuf,
    old: Option<Arc<Segment>>,
    frozen: Arc<Frozen>,
}

impl Compaction {
    pub fn tier(&self) -> Tier {
        self.tier
    }

    pub fn number(&self) -> i64 {
        self.number
    }

    pub fn run(&self) -> Result<Segment, TsdbError> {
        let frozen = &self.frozen;
        Segment::write(&self.path, self.tier, self.number, frozen.gen, self.old.as_deref(), &frozen.runs)?;
        sync_dir(&self.dir)?;
        Segment::open(&self.path, self.tier, self.number)
    }
}

/// What a file in a tier directory is, from its name.
pub(crate) enum FileName {
    Segment(i64),
    Log(i64, u64),
    Temporary,
}

pub(crate) fn parse_file_name(name: &str) -> Option<FileName> {
    if name.ends_with(".tmp") {
        return Some(FileName::Temporary);
    }
    if let Some(number) = name.strip_suffix(".seg") {
        return number.parse().ok().map(FileName::Segment);
    }
    let (number, gen) = name.strip_suffix(".log")?.split_once('_')?;
    Some(FileName::Log(number.parse().ok()?, gen.parse().ok()?))
}

pub(crate) fn remove_if_there(path: &Path) -> Result<(), TsdbError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(TsdbError::io("delete", path)(e)),
        _ => Ok(()),
    }
}

/// Makes a file's creation, rename or removal in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), TsdbError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(TsdbError::io("sync", dir))
}

impl Partition {
    pub fn number(&self) -> i64 {
        self.number
    }
}
