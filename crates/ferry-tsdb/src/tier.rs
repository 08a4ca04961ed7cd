//! The three rollup tiers and the arithmetic that maps a time to its partition and bucket. Pure: no I/O.

const SECOND_US: i64 = 1_000_000;
const HOUR_US: i64 = 3600 * SECOND_US;
const DAY_US: i64 = 24 * HOUR_US;

/// A resolution at which every sample is kept, as count, sum and max per bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    /// 10 s buckets, kept for [`crate::Retention::raw`].
    Raw,
    /// 1 min buckets, kept for [`crate::Retention::minute`].
    Minute,
    /// 1 h buckets, kept for [`crate::Retention::hour`].
    Hour,
}

impl Tier {
    /// Finest first: the order in which a query looks for a tier that fits.
    pub const ALL: [Tier; 3] = [Tier::Raw, Tier::Minute, Tier::Hour];

    /// The width of one bucket.
    pub fn step_us(self) -> i64 {
        match self {
            Tier::Raw => 10 * SECOND_US,
            Tier::Minute => 60 * SECOND_US,
            Tier::Hour => HOUR_US,
        }
    }

    /// The name used in file paths and in answers: "raw", "1m" or "1h".
    pub fn name(self) -> &'static str {
        match self {
            Tier::Raw => "raw",
            Tier::Minute => "1m",
            Tier::Hour => "1h",
        }
    }

    /// The time one partition (one set of files) covers: an hour of raw buckets, a day of minutes, 30 days of hours,
    /// so that a partition holds a few hundred to a few thousand buckets per series and a 5-year query opens ~60 files.
    pub(crate) fn partition_us(self) -> i64 {
        match self {
            Tier::Raw => HOUR_US,
            Tier::Minute => DAY_US,
            Tier::Hour => 30 * DAY_US,
        }
    }

    pub(crate) fn buckets_per_partition(self) -> u32 {
        (self.partition_us() / self.step_us()) as u32
    }

    /// The partition number and the bucket index inside it of the bucket holding `t_us`.
    pub(crate) fn locate(self, t_us: i64) -> (i64, u32) {
        let partition = t_us.div_euclid(self.partition_us());
        let bucket = (t_us - partition * self.partition_us()) / self.step_us();
        (partition, bucket as u32)
    }

    pub(crate) fn partition_start_us(self, partition: i64) -> i64 {
        partition * self.partition_us()
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_handles_boundaries_and_negative_times() {
        assert_eq!(Tier::Raw.locate(0), (0, 0));
        assert_eq!(Tier::Raw.locate(HOUR_US - 1), (0, 359));
        assert_eq!(Tier::Raw.locate(HOUR_US), (1, 0));
        assert_eq!(Tier::Raw.locate(-1), (-1, 359));
        assert_eq!(Tier::Minute.locate(DAY_US + 61 * SECOND_US), (1, 1));
        assert_eq!(Tier::Hour.buckets_per_partition(), 720);
    }
}
