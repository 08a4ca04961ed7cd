//! One bucket's aggregate (count, sum, max) and its fixed-size encodings on disk. Pure: no I/O.
//!
//! Cells are deltas that merge by adding counts and sums and taking the larger max, so merging the same sample twice
//! double counts: every layer above takes care that each sample is in exactly one place it is read from.

/// The aggregate of the samples in one bucket. `count == 0` means no data (then `max` is negative infinity).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Cell {
    pub count: u32,
    pub sum: f64,
    pub max: f64,
}

/// Bytes of one encoded cell: count u32, sum f64, max f64, little-endian.
pub(crate) const CELL_LEN: usize = 20;

impl Cell {
    pub const EMPTY: Cell = Cell { count: 0, sum: 0.0, max: f64::NEG_INFINITY };

    pub fn sample(value: f64) -> Cell {
        Cell { count: 1, sum: value, max: value }
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn merge(&mut self, other: &Cell) {
        self.count = self.count.saturating_add(other.count);
        self.sum += other.sum;
        if other.max > self.max {
            self.max = other.max;
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.count.to_le_bytes());
        out.extend_from_slice(&self.sum.to_le_bytes());
        out.extend_from_slice(&self.max.to_le_bytes());
    }

    /// Reads a cell from the first [`CELL_LEN`] bytes of `bytes`.
    pub fn decode(bytes: &[u8]) -> Cell {
        Cell {
            count: u32_at(bytes, 0),
            sum: f64::from_le_bytes(bytes[4..12].try_into().unwrap()),
            max: f64::from_le_bytes(bytes[12..20].try_into().unwrap()),
        }
    }
}

pub(crate) fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

pub(crate) fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

/// Bytes of one log record: series u32, bucket u32, a cell, and a CRC-32 of the 28 bytes before it.
pub(crate) const RECORD_LEN: usize = 8 + CELL_LEN + 4;

pub(crate) fn encode_record(series: u32, bucket: u32, cell: &Cell, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&series.to_le_bytes());
    out.extend_from_slice(&bucket.to_le_bytes());
    cell.encode(out);
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// Decodes one record, or `None` when its checksum does not match (a torn or never-completed write).
pub(crate) fn decode_record(bytes: &[u8]) -> Option<(u32, u32, Cell)> {
    let body = &bytes[..RECORD_LEN - 4];
    (crc32fast::hash(body) == u32_at(bytes, RECORD_LEN - 4))
        .then(|| (u32_at(body, 0), u32_at(body, 4), Cell::decode(&body[8..])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_detects_damage() {
        let mut out = Vec::new();
        let cell = Cell { count: 3, sum: 1.5, max: 0.75 };
        encode_record(7, 359, &cell, &mut out);
        assert_eq!(out.len(), RECORD_LEN);
        assert_eq!(decode_record(&out), Some((7, 359, cell)));
        out[5] ^= 1;
        assert_eq!(decode_record(&out), None);
    }
}
