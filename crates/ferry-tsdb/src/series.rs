//! The series registry: every (metric, kind, id) seen is given a dense `u32` number that the data files use, and is
//! kept in `series.log`, an append-only file of checksummed records, so that numbers never change.
//!
//! Record: payload length u32, CRC-32 of the payload u32, then the payload: the lengths of metric, kind and id as u16
//! each, then their bytes. Numbers are positions in the file: the n-th record is series n.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::cell::u32_at;
use crate::error::TsdbError;
use crate::SeriesKey;

/// The longest metric, kind or id accepted, in bytes; longer ones are rejected at ingest.
pub(crate) const NAME_LEN_MAX: usize = 512;
/// The most series one store holds; past it, points of new series are rejected. At ~100 bytes of registry memory
/// each, 10 million series is ~1 GB: far beyond a cluster's nodes, GPUs and jobs, and a guard against a runaway id.
pub(crate) const SERIES_MAX: usize = 10_000_000;

const HEADER_LEN: usize = 8;

type Ids = HashMap<String, u32>;

pub(crate) struct Registry {
    path: PathBuf,
    file: File,
    /// Bytes of `series.log` that are known to be complete.
    file_len: u64,
    /// Every series by number, for writing out the ones not yet durable.
    keys: Vec<(String, String, String)>,
    by_name: HashMap<String, HashMap<String, Ids>>,
    /// Series numbers below this are in `series.log` on disk.
    durable: usize,
}

impl Registry {
    /// Opens `dir/series.log`, creating it, and reads it back, cutting a torn last record.
    pub fn open(dir: &Path) -> Result<Registry, TsdbError> {
        let path = dir.join("series.log");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(TsdbError::io("open", &path))?;
        let bytes = std::fs::read(&path).map_err(TsdbError::io("read", &path))?;
        let mut registry = Registry { path, file, file_len: 0, keys: Vec::new(), by_name: HashMap::new(), durable: 0 };
        let mut at = 0;
        while let Some((key, next)) = parse_record(&bytes, at) {
            let (metric, kind, id) = key;
            registry.insert(metric, kind, id);
            at = next;
        }
        if at < bytes.len() {
            tracing::warn!(path = %registry.path.display(), valid_bytes = at, dropped_bytes = bytes.len() - at,
                "cutting a torn or damaged tail off the series registry (a crash during a write)");
            registry.file.set_len(at as u64).map_err(TsdbError::io("truncate", &registry.path))?;
        }
        registry.file_len = at as u64;
        registry.durable = registry.keys.len();
        Ok(registry)
    }

    pub fn get(&self, metric: &str, kind: &str, id: &str) -> Option<u32> {
        self.by_name.get(metric)?.get(kind)?.get(id).copied()
    }

    /// The series' number, registering it if it is new; `None` when the registry is full.
    pub fn intern(&mut self, key: &SeriesKey<'_>) -> Option<u32> {
        if let Some(n) = self.get(key.metric, key.kind, key.id) {
            return Some(n);
        }
        if self.keys.len() >= SERIES_MAX {
            return None;
        }
        Some(self.insert(key.metric.to_owned(), key.kind.to_owned(), key.id.to_owned()))
    }

    fn insert(&mut self, metric: String, kind: String, id: String) -> u32 {
        let n = self.keys.len() as u32;
        let ids = self.by_name.entry(metric.clone()).or_default().entry(kind.clone()).or_default();
        ids.insert(id.clone(), n);
        self.keys.push((metric, kind, id));
        n
    }

    /// The ids of a (metric, kind) with their numbers, sorted by id.
    pub fn ids(&self, metric: &str, kind: &str) -> Vec<(String, u32)> {
        let mut ids: Vec<(String, u32)> = match self.by_name.get(metric).and_then(|kinds| kinds.get(kind)) {
            Some(ids) => ids.iter().map(|(id, n)| (id.clone(), *n)).collect(),
            None => Vec::new(),
        };
        ids.sort_unstable();
        ids
    }

    /// Writes the series registered since the last call and syncs them to disk. Data records refer to series by
    /// number, so this runs before any data is flushed.
    pub fn flush(&mut self) -> Result<(), TsdbError> {
        if self.durable == self.keys.len() {
            return Ok(());
        }
        let mut out = Vec::new();
        for (metric, kind, id) in &self.keys[self.durable..] {
            encode_record(metric, kind, id, &mut out);
        }
        // Written at the known end rather than appended, so that a failed write is simply written again next time.
        self.file.write_all_at(&out, self.file_len).map_err(TsdbError::io("write", &self.path))?;
        self.file.sync_data().map_err(TsdbError::io("sync", &self.path))?;
        self.file_len += out.len() as u64;
        self.durable = self.keys.len();
        Ok(())
    }
}

pub(crate) fn name_ok(name: &str) -> bool {
    !name.is_empty() && name.len() <= NAME_LEN_MAX
}

fn encode_record(metric: &str, kind: &str, id: &str, out: &mut Vec<u8>) {
    let mut payload = Vec::with_capacity(6 + metric.len() + kind.len() + id.len());
    for name in [metric, kind, id] {
        payload.extend_from_slice(&(name.len() as u16).to_le_bytes());
    }
    for name in [metric, kind, id] {
        payload.extend_from_slice(name.as_bytes());
    }
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
}

/// The record at `at` and where the next one starts, or `None` at the end or at a torn or damaged record.
fn parse_record(bytes: &[u8], at: usize) -> Option<((String, String, String), usize)> {
    let header = bytes.get(at..at + HEADER_LEN)?;
    let len = u32_at(header, 0) as usize;
    let payload = bytes.get(at + HEADER_LEN..at + HEADER_LEN + len)?;
    if len < 6 || crc32fast::hash(payload) != u32_at(header, 4) {
        return None;
    }
    let lens: Vec<usize> = (0..3).map(|i| u16::from_le_bytes([payload[2 * i], payload[2 * i + 1]]) as usize).collect();
    let mut names = Vec::with_capacity(3);
    let mut from = 6;
    for len in lens {
        names.push(String::from_utf8(payload.get(from..from + len)?.to_vec()).ok()?);
        from += len;
    }
    let id = names.pop()?;
    let kind = names.pop()?;
    let metric = names.pop()?;
    Some(((metric, kind, id), at + HEADER_LEN + len))
}

impl Registry {
    pub fn ids_len(&self) -> u32 {
        self.keys.len() as u32
    }
}
