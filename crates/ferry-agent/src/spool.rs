//! The telemetry spool: every sample the agent takes, kept on its own disk until the server has acknowledged it, so
//! that a network partition or a server restart delays samples instead of losing them.
//!
//! The spool is a folder of segment files (`<first sample number>.jsonl`, one JSON sample a line, oldest first) and a
//! `cursor` file naming the first sample the server has not acknowledged. It is bounded: when a new sample would take
//! it past its limit, the oldest segment is deleted and its unsent samples are counted as dropped. A line torn by a
//! crash is cut off when the spool is opened. This module must never talk to the network: the shipper reads batches
//! from it and acknowledges them.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use ferry_api::telemetry::TelemetrySample;

/// The spool's folder under the agent's data directory.
pub(crate) const SPOOL_DIR: &str = "telemetry";
/// The default bound on the spool's size: at about 1 KiB a sample (a node with 8 runs), some 18 hours of samples.
pub(crate) const SPOOL_BYTES_DEFAULT: u64 = 64 << 20;
/// The smallest spool a configuration may ask for: a few minutes of samples.
pub(crate) const SPOOL_BYTES_MIN: u64 = 1 << 20;
/// How many samples a segment holds before the next one is started: ten minutes at one sample a second.
const SEGMENT_SAMPLES_MAX: u64 = 600;
/// A segment is also closed at this fraction of the limit, so that deleting the oldest frees at most this much.
const SEGMENTS_PER_LIMIT_MIN: u64 = 8;
const SEGMENT_SUFFIX: &str = ".jsonl";
const CURSOR_FILE: &str = "cursor";

/// A place in the spool: the number of a sample and the byte where its line starts in its segment (0 when the
/// sample is the first of its segment, whatever `offset` says).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub seq: u64,
    pub offset: u64,
}

/// Samples read from the spool, and where the next read starts once the server has acknowledged them.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub samples: Vec<TelemetrySample>,
    /// Lines between the cursor and `end` that do not parse (damaged on disk); lost once `end` is acknowledged.
    pub unreadable: u64,
    pub end: Cursor,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Segment {
    first_seq: u64,
    /// Complete lines in the file.
    samples: u64,
    /// The file's length: the end of its last complete line.
    bytes: u64,
}

impl Segment {
    fn end_seq(&self) -> u64 {
        self.first_seq + self.samples
    }
}

pub(crate) struct Spool {
    dir: PathBuf,
    limit_bytes: u64,
    /// Oldest first; the last one is the segment new samples go to.
    segments: VecDeque<Segment>,
    /// The last segment, open for appending; `None` until a sample needs it.
    active: Option<File>,
    /// The number the next sample gets.
    next_seq: u64,
    /// The first sample the server has not acknowledged.
    cursor: Cursor,
    /// Samples lost since this spool was opened: deleted for room, unreadable, or refused by the server.
    dropped: u64,
}

impl Spool {
    /// Opens the spool in `dir` (making it if needed), cutting off a line a crash left half-written and deleting
    /// segments that were wholly acknowledged.
    pub fn open(dir: &Path, limit_bytes: u64) -> io::Result<Spool> {
        fs::create_dir_all(dir)?;
        let mut segments = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(first_seq) = name.to_str().and_then(|n| n.strip_suffix(SEGMENT_SUFFIX)?.parse().ok()) else {
                continue;
            };
            segments.push(scan_segment(&entry.path(), first_seq)?);
        }
        segments.sort_by_key(|s| s.first_seq);
        let cursor = read_cursor(&dir.join(CURSOR_FILE));
        let mut spool = Spool {
            dir: dir.to_path_buf(),
            limit_bytes,
            next_seq: segments.last().map_or(cursor.seq, |s| s.end_seq().max(cursor.seq)),
            segments: segments.into(),
            active: None,
            cursor,
            dropped: 0,
        };
        spool.forget_acknowledged();
        Ok(spool)
    }

    /// Appends one sample, deleting the oldest segments first if the spool would go past its limit.
    pub fn append(&mut self, sample: &TelemetrySample) -> io::Result<()> {
        let mut line = serde_json::to_vec(sample).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        line.push(b'\n');
        let len = line.len() as u64;
        let segment_bytes_max = (self.limit_bytes / SEGMENTS_PER_LIMIT_MIN).max(1);
        let full = self
            .segments
            .back()
            .is_none_or(|s| s.samples >= SEGMENT_SAMPLES_MAX || (s.samples > 0 && s.bytes + len > segment_bytes_max));
        if full || self.active.is_none() {
            self.open_active(full)?;
        }
        while self.total_bytes() + len > self.limit_bytes && self.segments.len() > 1 {
            self.drop_oldest();
        }
        let segment = self.segments.back_mut().expect("open_active made a segment");
        let file = self.active.as_mut().expect("open_active opened it");
        if let Err(e) = file.write_all(&line) {
            // Whatever part of the line reached the file is cut off, so the next sample starts on a line of its own.
            let _ = file.set_len(segment.bytes);
            return Err(e);
        }
        segment.samples += 1;
        segment.bytes += len;
        self.next_seq += 1;
        Ok(())
    }

    /// Reads the oldest unacknowledged samples: at most `samples_max`, and no more lines than fit in `bytes_max`
    /// (at least one). Lines that do not parse are skipped and counted in the batch.
    pub fn read(&mut self, samples_max: usize, bytes_max: u64) -> io::Result<Batch> {
        let mut batch = Batch { samples: Vec::new(), unreadable: 0, end: self.cursor };
        let mut bytes = 0;
        let mut line = Vec::new();
        'segments: for segment in &self.segments {
            if segment.end_seq() <= batch.end.seq {
                continue;
            }
            if batch.end.seq <= segment.first_seq {
                batch.end = Cursor { seq: segment.first_seq, offset: 0 };
            }
            let mut file = File::open(segment_path(&self.dir, segment.first_seq))?;
            file.seek(SeekFrom::Start(batch.end.offset))?;
            let mut reader = BufReader::new(file.take(segment.bytes.saturating_sub(batch.end.offset)));
            while batch.end.seq < segment.end_seq() {
                if batch.samples.len() >= samples_max {
                    break 'segments;
                }
                line.clear();
                let len = reader.read_until(b'\n', &mut line)? as u64;
                if len == 0 {
                    break;
                }
                if bytes + len > bytes_max && !batch.samples.is_empty() {
                    break 'segments;
                }
                match serde_json::from_slice(&line) {
                    Ok(sample) => batch.samples.push(sample),
                    Err(_) => batch.unreadable += 1,
                }
                bytes += len;
                batch.end = Cursor { seq: batch.end.seq + 1, offset: batch.end.offset + len };
            }
        }
        Ok(batch)
    }

    /// Records that the server has everything before `end`, and deletes the segments that no longer hold anything
    /// unacknowledged.
    pub fn acknowledge(&mut self, end: Cursor) -> io::Result<()> {
        if end.seq <= self.cursor.seq {
            return Ok(());
        }
        self.cursor = end;
        self.forget_acknowledged();
        let path = self.dir.join(CURSOR_FILE);
        let tmp = self.dir.join(format!("{CURSOR_FILE}.tmp"));
        fs::write(&tmp, format!("{} {}\n", end.seq, end.offset))?;
        fs::rename(&tmp, &path)
    }

    /// Counts samples lost outside the spool: unreadable lines, a batch the server refused as malformed.
    pub fn count_dropped(&mut self, samples: u64) {
        self.dropped += samples;
    }

    /// Samples lost since the spool was opened.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Samples not yet acknowledged.
    pub fn pending(&self) -> u64 {
        self.next_seq.saturating_sub(self.cursor.seq)
    }

    fn total_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// Opens the last segment for appending, or starts a new one when `fresh` or there is none.
    fn open_active(&mut self, fresh: bool) -> io::Result<()> {
        if fresh || self.segments.is_empty() {
            self.segments.push_back(Segment { first_seq: self.next_seq, samples: 0, bytes: 0 });
        }
        let segment = self.segments.back().expect("just made sure there is one");
        let path = segment_path(&self.dir, segment.first_seq);
        let file = OpenOptions::new().create(true).append(true).open(&path);
        match file {
            Ok(file) => {
                self.active = Some(file);
                Ok(())
            }
            Err(e) => {
                if segment.samples == 0 {
                    self.segments.pop_back();
                }
                Err(e)
            }
        }
    }

    /// Deletes the oldest segment to make room, counting the samples in it that were never acknowledged.
    fn drop_oldest(&mut self) {
        let Some(oldest) = self.segments.pop_front() else { return };
        let unsent = oldest.end_seq().saturating_sub(self.cursor.seq.max(oldest.first_seq));
        self.dropped += unsent;
        if self.cursor.seq < oldest.end_seq() {
            self.cursor = Cursor { seq: oldest.end_seq(), offset: 0 };
        }
        let _ = fs::remove_file(segment_path(&self.dir, oldest.first_seq));
    }

    /// Deletes every segment, but the one being written, whose samples were all acknowledged; clamps a cursor that
    /// points past the end (a cursor file from another spool) to the end.
    fn forget_acknowledged(&mut self) {
        while self.segments.len() > 1 && self.segments[0].end_seq() <= self.cursor.seq {
            let gone = self.segments.pop_front().expect("checked above");
            let _ = fs::remove_file(segment_path(&self.dir, gone.first_seq));
        }
        if let Some(last) = self.segments.back() {
            if self.cursor.seq >= last.end_seq() {
                let offset = if last.samples == 0 { 0 } else { last.bytes };
                self.cursor = Cursor { seq: last.end_seq(), offset };
                self.next_seq = last.end_seq();
            }
        }
    }
}

fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}{SEGMENT_SUFFIX}"))
}

/// Counts a segment's complete lines and cuts off a torn last one.
fn scan_segment(path: &Path, first_seq: u64) -> io::Result<Segment> {
    let bytes = fs::read(path)?;
    let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    if complete < bytes.len() {
        OpenOptions::new().write(true).open(path)?.set_len(complete as u64)?;
    }
    let samples = bytes[..complete].iter().filter(|b| **b == b'\n').count() as u64;
    Ok(Segment { first_seq, samples, bytes: complete as u64 })
}

/// The persisted cursor; the start of the spool when there is none or it cannot be read.
fn read_cursor(path: &Path) -> Cursor {
    let text = fs::read_to_string(path).unwrap_or_default();
    let mut numbers = text.split_whitespace().map(str::parse::<u64>);
    match (numbers.next(), numbers.next()) {
        (Some(Ok(seq)), Some(Ok(offset))) => Cursor { seq, offset },
        _ => Cursor::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_api::nodes::NodeUsage;

    fn sample(at: i64) -> TelemetrySample {
        TelemetrySample { node: NodeUsage { sampled_at_us: at, ..NodeUsage::default() }, runs: Vec::new() }
    }

    fn times(batch: &Batch) -> Vec<i64> {
        batch.samples.iter().map(|s| s.node.sampled_at_us).collect()
    }

    fn segment_files(dir: &Path) -> usize {
        fs::read_dir(dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".jsonl"))
            .count()
    }

    #[test]
    fn samples_come_back_oldest_first_and_go_once_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), SPOOL_BYTES_DEFAULT).unwrap();
        for at in 1..=1500 {
            spool.append(&sample(at)).unwrap();
        }
        assert_eq!((spool.pending(), segment_files(dir.path())), (1500, 3));
        let first = spool.read(600, u64::MAX).unwrap();
        assert_eq!(times(&first), (1..=600).collect::<Vec<_>>());
        // Reading again without an acknowledgement gives the same samples.
        assert_eq!(times(&spool.read(600, u64::MAX).unwrap()), times(&first));
        spool.acknowledge(first.end).unwrap();
        assert_eq!(segment_files(dir.path()), 2);
        let second = spool.read(1000, u64::MAX).unwrap();
        assert_eq!(times(&second), (601..=1500).collect::<Vec<_>>(), "a batch crosses segments");
        spool.acknowledge(second.end).unwrap();
        assert_eq!((spool.pending(), segment_files(dir.path())), (0, 1));
        assert!(spool.read(600, u64::MAX).unwrap().samples.is_empty());
        spool.append(&sample(1501)).unwrap();
        assert_eq!(times(&spool.read(600, u64::MAX).unwrap()), [1501]);
        assert_eq!(spool.dropped(), 0);
    }

    #[test]
    fn a_batch_stops_at_its_byte_limit_but_always_carries_one_sample() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), SPOOL_BYTES_DEFAULT).unwrap();
        for at in 1..=10 {
            spool.append(&sample(at)).unwrap();
        }
        let line = serde_json::to_vec(&sample(1)).unwrap().len() as u64 + 1;
        assert_eq!(times(&spool.read(600, 3 * line).unwrap()), [1, 2, 3]);
        assert_eq!(times(&spool.read(600, 1).unwrap()), [1]);
    }

    #[test]
    fn a_full_spool_drops_its_oldest_segment_and_counts_what_was_unsent() {
        let dir = tempfile::tempdir().unwrap();
        let line = serde_json::to_vec(&sample(1_000_000)).unwrap().len() as u64 + 1;
        // Room for 80 samples; segments close at an eighth of that, 10 samples each.
        let mut spool = Spool::open(dir.path(), 80 * line).unwrap();
        for at in 1_000_001..=1_000_085 {
            spool.append(&sample(at)).unwrap();
        }
        assert_eq!(spool.dropped(), 10, "one segment of ten went to make room");
        let batch = spool.read(600, u64::MAX).unwrap();
        assert_eq!(times(&batch), (1_000_011..=1_000_085).collect::<Vec<_>>());
        assert!(
            fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum::<u64>() <= 81 * line
        );

        // Acknowledged samples are not counted when their segment goes.
        spool.acknowledge(batch.end).unwrap();
        for at in 1_000_086..=1_000_200 {
            spool.append(&sample(at)).unwrap();
        }
        // 80 samples fit; of the 115 new ones, the 35 that did not were never acknowledged.
        assert_eq!(spool.read(600, u64::MAX).unwrap().samples.len(), 80);
        assert_eq!(spool.dropped(), 10 + 35);
    }

    #[test]
    fn unacknowledged_samples_survive_reopening_and_a_torn_line_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), SPOOL_BYTES_DEFAULT).unwrap();
        for at in 1..=5 {
            spool.append(&sample(at)).unwrap();
        }
        let two = spool.read(2, u64::MAX).unwrap();
        spool.acknowledge(two.end).unwrap();
        drop(spool);
        // A crash in the middle of writing a sample.
        let segment = segment_path(dir.path(), 0);
        OpenOptions::new().append(true).open(&segment).unwrap().write_all(b"{\"node\":{\"sampled_at").unwrap();

        let mut spool = Spool::open(dir.path(), SPOOL_BYTES_DEFAULT).unwrap();
        assert_eq!(spool.pending(), 3);
        spool.append(&sample(6)).unwrap();
        let rest = spool.read(600, u64::MAX).unwrap();
        assert_eq!(times(&rest), [3, 4, 5, 6]);
        assert_eq!(spool.dropped(), 0);
        spool.acknowledge(rest.end).unwrap();
        drop(spool);
        let mut spool = Spool::open(dir.path(), SPOOL_BYTES_DEFAULT).unwrap();
        assert_eq!(spool.pending(), 0);
        assert!(spool.read(600, u64::MAX).unwrap().samples.is_empty());
        spool.append(&sample(7)).unwrap();
        assert_eq!(times(&spool.read(600, u64::MAX).unwrap()), [7]);
    }

    #[test]
    fn a_corrupt_line_is_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), SPOOL_BYTES_DEFAULT).unwrap();
        spool.append(&sample(1)).unwrap();
        drop(spool);
        let segment = segment_path(dir.path(), 0);
        OpenOptions::new().append(true).open(&segment).unwrap().write_all(b"not json\n").unwrap();
        let mut spool = Spool::open(dir.path(), SPOOL_BYTES_DEFAULT).unwrap();
        spool.append(&sample(3)).unwrap();
        let batch = spool.read(600, u64::MAX).unwrap();
        assert_eq!((times(&batch), batch.unreadable), (vec![1, 3], 1));
    }
}
