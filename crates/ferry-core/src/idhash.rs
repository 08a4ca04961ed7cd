//! A fast hasher for the core's maps keyed by small integers (job ids, interned ids), which a cycle looks up once or
//! more per queued job: SipHash, the standard library's default, made hashing a visible share of a cycle on deep
//! queues. The keys are handed out by the store or by the core itself, never chosen by a client, so the flooding
//! SipHash guards against does not apply; nothing iterates these maps where their order would decide anything.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Multiplies each word into the state (the Fx hash of rustc): two instructions per word, and the high bits that a
/// hash table picks buckets by are well mixed for sequential keys.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct IdHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl IdHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
}

/// A map keyed by integers, hashed with `IdHasher`.
pub(crate) type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;
