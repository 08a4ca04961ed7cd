//! Compacted partition files (`<partition>.seg`): immutable, written whole to a temporary file and renamed into
//! place, so that a reader sees either the old file or the new one.
//!
//! Layout, little-endian:
//! - header (48 bytes): magic `FERRYSG1`, tier u32, series count u32, partition i64, absorbed log generation u64,
//!   index offset u64, CRC-32 of the header's first 40 bytes followed by the index, u32 padding;
//! - data: one block per series, either dense (one 20-byte cell per bucket from its first to its last non-empty
//!   bucket) or sparse (bucket u32 + cell per non-empty bucket), whichever is smaller;
//! - index at the end: per series, sorted by number: series u32, first bucket u32, length u32 (cells or entries),
//!   flags u32 (1 = sparse), data offset u64.
//!
//! A query reads the index once (at open) and then only the bytes of the series and buckets it needs. The data
//! blocks carry no checksum: the file was synced before it was renamed into place, and re-reading gigabytes at each
//! open to check them would cost more than it protects against.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::cell::{u32_at, u64_at, Cell, CELL_LEN};
use crate::error::TsdbError;
use crate::partition::Run;
use crate::tier::Tier;

const MAGIC: &[u8; 8] = b"FERRYSG1";
const HEADER_LEN: usize = 48;
const ENTRY_LEN: usize = 24;
const SPARSE_LEN: usize = 4 + CELL_LEN;
const FLAG_SPARSE: u32 = 1;

#[derive(Clone, Copy, Debug)]
struct Entry {
    series: u32,
    first: u32,
    len: u32,
    sparse: bool,
    offset: u64,
}

pub(crate) struct Segment {
    path: PathBuf,
    file: File,
    /// Log generations up to this one are folded into this file; their files, if still there, are stale.
    pub absorbed_gen: u64,
    index: Vec<Entry>,
    file_len: u64,
}

impl Segment {
    pub fn open(path: &Path, tier: Tier, partition: i64) -> Result<Segment, TsdbError> {
        let file = File::open(path).map_err(TsdbError::io("open", path))?;
        let file_len = file.metadata().map_err(TsdbError::io("stat", path))?.len();
        let corrupt = |reason: &str| TsdbError::corrupt(path, reason);
        if file_len < HEADER_LEN as u64 {
            return Err(corrupt("shorter than its header"));
        }
        let mut header = [0u8; HEADER_LEN];
        file.read_exact_at(&mut header, 0).map_err(TsdbError::io("read", path))?;
        if &header[..8] != MAGIC {
            return Err(corrupt("not a Ferry segment file (bad magic)"));
        }
        if u32_at(&header, 8) != tier.index() as u32 || u64_at(&header, 16) as i64 != partition {
            return Err(corrupt("its header names another tier or partition than its place in the directory"));
        }
        let count = u32_at(&header, 12) as u64;
        let index_offset = u64_at(&header, 32);
        if index_offset.checked_add(count * ENTRY_LEN as u64) != Some(file_len) {
            return Err(corrupt("its index does not end where the file ends"));
        }
        let mut raw = vec![0u8; (count as usize) * ENTRY_LEN];
        file.read_exact_at(&mut raw, index_offset).map_err(TsdbError::io("read", path))?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&header[..40]);
        crc.update(&raw);
        if crc.finalize() != u32_at(&header, 40) {
            return Err(corrupt("the checksum of its header and index does not match"));
        }
        let index: Vec<Entry> = raw
            .chunks_exact(ENTRY_LEN)
            .map(|e| Entry {
                series: u32_at(e, 0),
                first: u32_at(e, 4),
                len: u32_at(e, 8),
                sparse: u32_at(e, 12) & FLAG_SPARSE != 0,
                offset: u64_at(e, 16),
            })
            .collect();
        for e in &index {
            let past_partition = u64::from(e.first) + u64::from(e.len) > u64::from(tier.buckets_per_partition());
            if e.offset.checked_add(e.block_len()).is_none_or(|end| end > index_offset) || (past_partition && !e.sparse)
            {
                return Err(corrupt("an index entry points outside the data"));
            }
        }
        Ok(Segment { path: path.to_owned(), file, absorbed_gen: u64_at(&header, 24), index, file_len })
    }

    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    fn entry(&self, series: u32) -> Option<&Entry> {
        self.index.binary_search_by_key(&series, |e| e.series).ok().map(|i| &self.index[i])
    }

    pub fn series(&self) -> impl Iterator<Item = u32> + '_ {
        self.index.iter().map(|e| e.series)
    }

    /// Calls `f(bucket, cell)` for each non-empty bucket of `series` in `lo..hi`. `buf` is scratch space.
    pub fn read(
        &self,
        series: u32,
        lo: u32,
        hi: u32,
        buf: &mut Vec<u8>,
        mut f: impl FnMut(u32, &Cell),
    ) -> Result<(), TsdbError> {
        let Some(e) = self.entry(series) else { return Ok(()) };
        if e.sparse {
            buf.resize(e.block_len() as usize, 0);
            self.file.read_exact_at(buf, e.offset).map_err(TsdbError::io("read", &self.path))?;
            for entry in buf.chunks_exact(SPARSE_LEN) {
                let bucket = u32_at(entry, 0);
                if (lo..hi).contains(&bucket) {
                    f(bucket, &Cell::decode(&entry[4..]));
                }
            }
            return Ok(());
        }
        let (from, to) = (lo.max(e.first), hi.min(e.first + e.len));
        if from >= to {
            return Ok(());
        }
        buf.resize((to - from) as usize * CELL_LEN, 0);
        let at = e.offset + u64::from(from - e.first) * CELL_LEN as u64;
        self.file.read_exact_at(buf, at).map_err(TsdbError::io("read", &self.path))?;
        for (i, bytes) in buf.chunks_exact(CELL_LEN).enumerate() {
            let cell = Cell::decode(bytes);
            if !cell.is_empty() {
                f(from + i as u32, &cell);
            }
        }
        Ok(())
    }

    /// Writes the merge of `old` and `recent` to `path` (through `path.tmp`, synced, then renamed). The caller syncs
    /// the directory.
    pub fn write(
        path: &Path,
        tier: Tier,
        partition: i64,
        absorbed_gen: u64,
        old: Option<&Segment>,
        recent: &HashMap<u32, Run>,
    ) -> Result<(), TsdbError> {
        let tmp = path.with_extension("seg.tmp");
        let file = File::create(&tmp).map_err(TsdbError::io("create", &tmp))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let write_err = TsdbError::io("write", &tmp);
        let mut series: Vec<u32> = recent.keys().copied().chain(old.into_iter().flat_map(|s| s.series())).collect();
        series.sort_unstable();
        series.dedup();
        let mut index = Vec::with_capacity(series.len() * ENTRY_LEN);
        let mut offset = HEADER_LEN as u64;
        let (mut cells, mut buf, mut block) = (Vec::new(), Vec::new(), Vec::new());
        out.write_all(&[0u8; HEADER_LEN]).map_err(write_err)?;
        for n in series {
            cells.clear();
            cells.resize(tier.buckets_per_partition() as usize, Cell::EMPTY);
            if let Some(old) = old {
                old.read(n, 0, tier.buckets_per_partition(), &mut buf, |b, c| cells[b as usize].merge(c))?;
            }
            if let Some(run) = recent.get(&n) {
                for (i, c) in run.cells.iter().enumerate() {
                    cells[run.first as usize + i].merge(c);
                }
            }
            let Some(entry) = encode_block(n, &cells, offset, &mut block) else { continue };
            out.write_all(&block).map_err(TsdbError::io("write", &tmp))?;
            offset += block.len() as u64;
            index.extend_from_slice(&entry.series.to_le_bytes());
            index.extend_from_slice(&entry.first.to_le_bytes());
            index.extend_from_slice(&entry.len.to_le_bytes());
            index.extend_from_slice(&(if entry.sparse { FLAG_SPARSE } else { 0 }).to_le_bytes());
            index.extend_from_slice(&entry.offset.to_le_bytes());
        }
        out.write_all(&index).map_err(TsdbError::io("write", &tmp))?;
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&(tier.index() as u32).to_le_bytes());
        header.extend_from_slice(&((index.len() / ENTRY_LEN) as u32).to_le_bytes());
        header.extend_from_slice(&partition.to_le_bytes());
        header.extend_from_slice(&absorbed_gen.to_le_bytes());
        header.extend_from_slice(&offset.to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&header);
        crc.update(&index);
        header.extend_from_slice(&crc.finalize().to_le_bytes());
        header.extend_from_slice(&[0u8; 4]);
        let mut file = out.into_inner().map_err(|e| TsdbError::io("write", &tmp)(e.into_error()))?;
        file.seek(SeekFrom::Start(0)).map_err(TsdbError::io("seek", &tmp))?;
        file.write_all(&header).map_err(TsdbError::io("write", &tmp))?;
        file.sync_all().map_err(TsdbError::io("sync", &tmp))?;
        std::fs::rename(&tmp, path).map_err(TsdbError::io("rename into place", path))
    }
}

impl Entry {
    fn block_len(&self) -> u64 {
        u64::from(self.len) * if self.sparse { SPARSE_LEN } else { CELL_LEN } as u64
    }
}

/// Encodes one series' cells (a whole partition's worth) into `block`, dense or sparse, whichever is smaller; `None`
/// when the series has no data in this partition.
fn encode_block(series: u32, cells: &[Cell], offset: u64, block: &mut Vec<u8>) -> Option<Entry> {
    block.clear();
    let first = cells.iter().position(|c| !c.is_empty())?;
    let last = cells.iter().rposition(|c| !c.is_empty())?;
    let filled = cells[first..=last].iter().filter(|c| !c.is_empty()).count();
    let sparse = filled * SPARSE_LEN < (last + 1 - first) * CELL_LEN;
    if sparse {
        for (b, c) in cells.iter().enumerate().skip(first).take(last + 1 - first).filter(|(_, c)| !c.is_empty()) {
            block.extend_from_slice(&(b as u32).to_le_bytes());
            c.encode(block);
        }
    } else {
        cells[first..=last].iter().for_each(|c| c.encode(block));
    }
    let len = if sparse { filled } else { last + 1 - first } as u32;
    Some(Entry { series, first: first as u32, len, sparse, offset })
}
