//! Resource vectors: what a node has and what a job asks for.

use serde::{Deserialize, Serialize};

/// An amount of each schedulable resource. CPUs are in thousandths of a core so that fractional requests
/// (`--cpus 0.5`) stay exact integers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub gpus: u32,
}

impl Resources {
    pub const ZERO: Resources = Resources { cpu_millis: 0, memory_bytes: 0, gpus: 0 };
    /// More than any cluster has, for limits that leave a resource out; a quarter of each range, so sums of a few
    /// of them cannot overflow.
    pub const UNLIMITED: Resources =
        Resources { cpu_millis: u64::MAX / 4, memory_bytes: u64::MAX / 4, gpus: u32::MAX / 4 };

    pub fn new(cpu_millis: u64, memory_bytes: u64, gpus: u32) -> Resources {
        Resources { cpu_millis, memory_bytes, gpus }
    }

    /// Whether every dimension of `self` is at most the same dimension of `available`.
    pub fn fits_in(&self, available: &Resources) -> bool {
        self.cpu_millis <= available.cpu_millis
            && self.memory_bytes <= available.memory_bytes
            && self.gpus <= available.gpus
    }

    pub fn saturating_sub(&self, other: &Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_sub(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_sub(other.memory_bytes),
            gpus: self.gpus.saturating_sub(other.gpus),
        }
    }

    pub fn checked_add(&self, other: &Resources) -> Option<Resources> {
        Some(Resources {
            cpu_millis: self.cpu_millis.checked_add(other.cpu_millis)?,
            memory_bytes: self.memory_bytes.checked_add(other.memory_bytes)?,
            gpus: self.gpus.checked_add(other.gpus)?,
        })
    }

    /// The component-wise maximum, used to describe the largest node of a set.
    pub fn max(&self, other: &Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.max(other.cpu_millis),
            memory_bytes: self.memory_bytes.max(other.memory_bytes),
            gpus: self.gpus.max(other.gpus),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_and_subtracts_per_dimension() {
        let node = Resources::new(2000, 8 << 30, 2);
        assert!(Resources::new(2000, 8 << 30, 2).fits_in(&node));
        assert!(!Resources::new(1000, 1, 3).fits_in(&node));
        assert_eq!(node.saturating_sub(&Resources::new(3000, 1 << 30, 1)), Resources::new(0, 7 << 30, 1));
    }
}
