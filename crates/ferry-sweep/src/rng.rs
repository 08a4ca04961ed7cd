//! Seeded randomness: one ChaCha8 stream per (sweep seed, trial index), and the few distributions the
//! methods need, written here so that their values never change with a dependency upgrade. Nothing in this crate
//! draws a random number any other way.
//!
//! Keying the stream by trial index (instead of keeping one stream for the whole sweep) is what makes
//! [`crate::Sweep::restore`] exact without persisting RNG state: the draws for trial `i` depend only on the seed, `i`
//! and the model built from the trials that had finished when `i` was proposed.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub(crate) struct Rng(ChaCha8Rng);

impl Rng {
    /// The stream of trial `index` in the sweep with this seed. The key's last 16 bytes stay zero, free for other
    /// streams should a method ever need one.
    pub(crate) fn new(seed: u64, index: u64) -> Rng {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&seed.to_le_bytes());
        key[8..16].copy_from_slice(&index.to_le_bytes());
        Rng(ChaCha8Rng::from_seed(key))
    }

    /// Uniform in [0, 1), from the top 53 bits of one 64-bit draw.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.0.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in 0..n (n > 0); the modulo bias is below 2^-40 for any n this crate uses.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        debug_assert!(n > 0);
        (self.0.next_u64() % n as u64) as usize
    }

    /// Standard normal, by Box-Muller (one of the pair is discarded to keep the stream simple to reason about).
    pub(crate) fn normal(&mut self) -> f64 {
        // 1 - unit() is in (0, 1], so the logarithm is finite.
        let u1 = 1.0 - self.unit();
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_fixed_and_independent() {
        let a: Vec<u64> = (0..3).map(|_| Rng::new(42, 0).0.next_u64()).collect();
        assert!(a.iter().all(|&x| x == a[0]), "same key, same stream");
        let b = Rng::new(42, 1).0.next_u64();
        let c = Rng::new(43, 0).0.next_u64();
        assert_ne!(a[0], b);
        assert_ne!(a[0], c);
    }

    #[test]
    fn normal_has_unit_variance() {
        let mut rng = Rng::new(7, 0);
        let n = 20_000;
        let xs: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.03, "mean {mean}");
        assert!((var - 1.0).abs() < 0.05, "variance {var}");
    }
}
