//! A small seeded PRNG (SplitMix64) with the draws routers need. Plugins have no WASI randomness (the
//! engine denies it), so a router carries its generator in its saved state and seeds it from config.

use serde::{Deserialize, Serialize};

/// SplitMix64 (Steele, Lea, Flood 2014): 64 bits of state, passes BigCrush, trivially serialisable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), 53 bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `0..n` (`n > 0`; returns 0 for `n == 0`), by Lemire's multiply-shift (bias < n/2^64).
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// True with probability `p`.
    pub fn bernoulli(&mut self, p: f64) -> bool {
        self.next_f64() < p
    }

    /// A standard normal draw (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.next_f64(); // (0, 1]
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// A Gamma(shape, 1) draw (Marsaglia–Tsang; shape < 1 by the `U^(1/shape)` boost). `shape > 0`;
    /// NaN for a shape that is not a positive finite number (which would otherwise recurse or loop
    /// forever).
    pub fn gamma(&mut self, shape: f64) -> f64 {
        if !(shape > 0.0 && shape.is_finite()) {
            return f64::NAN;
        }
        if shape < 1.0 {
            let u = 1.0 - self.next_f64();
            return self.gamma(shape + 1.0) * u.powf(1.0 / shape);
        }
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let x = self.normal();
            let v = (1.0 + c * x).powi(3);
            if v <= 0.0 {
                continue;
            }
            let u = 1.0 - self.next_f64();
            if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
                return d * v;
            }
        }
    }

    /// A Beta(a, b) draw (`a, b > 0`) as `X / (X + Y)` with Gamma draws.
    pub fn beta(&mut self, a: f64, b: f64) -> f64 {
        let x = self.gamma(a);
        let y = self.gamma(b);
        if x + y == 0.0 { 0.5 } else { x / (x + y) }
    }

    /// An index drawn with probability proportional to `weights` (non-negative, finite, not all zero);
    /// `None` otherwise.
    pub fn weighted_index(&mut self, weights: &[f64]) -> Option<usize> {
        if weights.iter().any(|w| !w.is_finite() || *w < 0.0) {
            return None;
        }
        let total: f64 = weights.iter().sum();
        if total <= 0.0 {
            return None;
        }
        let mut u = self.next_f64() * total;
        let last = weights.iter().rposition(|&w| w > 0.0)?;
        for (i, &w) in weights.iter().enumerate() {
            if u < w {
                return Some(i);
            }
            u -= w;
        }
        Some(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gamma_of_a_bad_shape_is_nan_not_a_hang() {
        // A corrupt router state once gave shapes like these: negative recursed until the stack
        // overflowed, infinite and NaN looped forever.
        let mut r = SplitMix64::new(1);
        for shape in [0.0, -1.0, -1e308, f64::INFINITY, f64::NAN] {
            assert!(r.gamma(shape).is_nan(), "shape {shape}");
        }
        assert!(r.beta(-2.0, 1.0).is_nan());
    }

    #[test]
    fn splitmix_reference_values() {
        // Reference outputs of the published splitmix64.c for seed 0 and seed 1234567.
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        let mut r = SplitMix64::new(1234567);
        assert_eq!(r.next_u64(), 6457827717110365317);
        assert_eq!(r.next_u64(), 3203168211198807973);
    }

    fn mean_var(xs: &[f64]) -> (f64, f64) {
        let n = xs.len() as f64;
        let m = xs.iter().sum::<f64>() / n;
        (m, xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n)
    }

    #[test]
    fn draws_have_the_right_moments() {
        let mut r = SplitMix64::new(7);
        let n = 200_000;
        let u: Vec<f64> = (0..n).map(|_| r.next_f64()).collect();
        let (m, v) = mean_var(&u);
        assert!((m - 0.5).abs() < 0.005 && (v - 1.0 / 12.0).abs() < 0.002, "uniform {m} {v}");
        let z: Vec<f64> = (0..n).map(|_| r.normal()).collect();
        let (m, v) = mean_var(&z);
        assert!(m.abs() < 0.01 && (v - 1.0).abs() < 0.02, "normal {m} {v}");
        for (a, b) in [(2.0, 5.0), (0.5, 0.5), (1.0, 1.0), (30.0, 3.0)] {
            let x: Vec<f64> = (0..n).map(|_| r.beta(a, b)).collect();
            let (m, v) = mean_var(&x);
            let (em, ev) = (a / (a + b), a * b / ((a + b).powi(2) * (a + b + 1.0)));
            assert!(
                (m - em).abs() < 0.005 && (v - ev).abs() < 0.1 * ev,
                "beta({a},{b}): {m} {v} vs {em} {ev}"
            );
        }
        let g: Vec<f64> = (0..n).map(|_| r.gamma(0.3)).collect();
        let (m, v) = mean_var(&g);
        assert!((m - 0.3).abs() < 0.01 && (v - 0.3).abs() < 0.03, "gamma(0.3) {m} {v}");
    }

    #[test]
    fn below_and_weighted_index() {
        let mut r = SplitMix64::new(3);
        let mut counts = [0usize; 4];
        for _ in 0..40_000 {
            counts[r.weighted_index(&[1.0, 0.0, 2.0, 1.0]).unwrap()] += 1;
        }
        assert_eq!(counts[1], 0);
        for (c, p) in counts.iter().zip([0.25, 0.0, 0.5, 0.25]) {
            assert!((*c as f64 / 40_000.0 - p).abs() < 0.01, "{counts:?}");
        }
        assert!(r.weighted_index(&[0.0, 0.0]).is_none());
        assert!(r.weighted_index(&[1.0, f64::NAN]).is_none());
        assert!((0..1000).all(|_| r.below(3) < 3));
        assert_eq!(r.below(1), 0);
        let a = SplitMix64::new(9);
        let mut b = a.clone();
        let mut a = a;
        assert_eq!(a.next_u64(), b.next_u64());
    }
}
