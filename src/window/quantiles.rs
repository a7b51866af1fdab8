//! Latency quantiles: exact for small windows, a DDSketch (<= 1% relative error) beyond.

use sketches_ddsketch::{Config, DDSketch};

/// Values kept exactly before switching to the sketch.
const EXACT_LIMIT: usize = 2048;
/// DDSketch relative accuracy: every reported quantile is within 1% of a true sample value.
const RELATIVE_ACCURACY: f64 = 0.01;

/// A latency distribution for one key in one window.
#[derive(Clone)]
pub enum Quantiles {
    /// All samples, while there are few.
    Exact(Vec<f64>),
    /// A bounded-memory sketch once there are many.
    Sketch(Box<DDSketch>),
}

impl std::fmt::Debug for Quantiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Quantiles::Exact(values) => write!(f, "Exact({} values)", values.len()),
            Quantiles::Sketch(sketch) => write!(f, "Sketch({} values)", sketch.count()),
        }
    }
}

impl Default for Quantiles {
    fn default() -> Self {
        Quantiles::Exact(Vec::new())
    }
}

impl Quantiles {
    /// Adds one sample (negative and non-finite samples are clamped to 0).
    pub fn add(&mut self, value: f64) {
        let value = if value.is_finite() && value > 0.0 {
            value
        } else {
            0.0
        };
        match self {
            Quantiles::Exact(values) => {
                values.push(value);
                if values.len() > EXACT_LIMIT {
                    let mut sketch = DDSketch::new(Config::new(RELATIVE_ACCURACY, 4096, 1e-9));
                    for v in values.iter() {
                        sketch.add(*v);
                    }
                    *self = Quantiles::Sketch(Box::new(sketch));
                }
            }
            Quantiles::Sketch(sketch) => sketch.add(value),
        }
    }

    /// Adds every sample of `other`: the same distribution as adding them one by
    /// one (a sketch's bins count samples, in any order; exact samples past
    /// the exact limit become a sketch of all of them, as `add` would make).
    pub fn merge(&mut self, other: &Quantiles) {
        match (&mut *self, other) {
            (Quantiles::Sketch(sketch), Quantiles::Sketch(theirs)) => {
                if sketch.merge(theirs).is_err() {
                    // Unreachable: every sketch has the same configuration.
                    debug_assert!(false, "sketches of different configurations");
                }
            }
            (Quantiles::Exact(_), Quantiles::Sketch(theirs)) => {
                let Quantiles::Exact(values) =
                    std::mem::replace(self, Quantiles::Sketch(theirs.clone()))
                else {
                    unreachable!("matched above")
                };
                for v in values {
                    self.add(v);
                }
            }
            (_, Quantiles::Exact(values)) => {
                for v in values {
                    self.add(*v);
                }
            }
        }
    }

    /// The nearest-rank quantile `q` in [0, 1] (exact mode), or the sketch's estimate.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        match self {
            Quantiles::Exact(values) if values.is_empty() => None,
            Quantiles::Exact(values) => {
                let mut sorted = values.clone();
                sorted.sort_unstable_by(f64::total_cmp);
                let rank = (q * sorted.len() as f64).ceil() as usize;
                Some(sorted[rank.clamp(1, sorted.len()) - 1])
            }
            Quantiles::Sketch(sketch) => sketch.quantile(q).ok().flatten(),
        }
    }

    /// Several quantiles at once (sorting once in exact mode).
    pub fn quantiles<const N: usize>(&self, qs: [f64; N]) -> [Option<f64>; N] {
        match self {
            Quantiles::Exact(values) if !values.is_empty() => {
                let mut sorted = values.clone();
                sorted.sort_unstable_by(f64::total_cmp);
                qs.map(|q| {
                    let rank = (q * sorted.len() as f64).ceil() as usize;
                    Some(sorted[rank.clamp(1, sorted.len()) - 1])
                })
            }
            _ => qs.map(|q| self.quantile(q)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_nearest_rank() {
        let mut q = Quantiles::default();
        for v in 1..=100 {
            q.add(v as f64);
        }
        assert_eq!(
            q.quantiles([0.5, 0.95, 0.99]),
            [Some(50.0), Some(95.0), Some(99.0)]
        );
    }

    #[test]
    fn merging_gives_what_adding_gives() {
        // Exact + exact within the limit, exact + exact past it, sketch + exact,
        // exact + sketch, sketch + sketch.
        for (left, right) in [
            (10, 20),
            (1500, 1500),
            (3000, 100),
            (100, 3000),
            (3000, 5000),
        ] {
            let samples = |n: usize, seed: usize| {
                (0..n).map(move |i| ((i * 7919 + seed) % 1000) as f64 / 3.0)
            };
            let mut merged = Quantiles::default();
            let mut theirs = Quantiles::default();
            let mut added = Quantiles::default();
            for v in samples(left, 1) {
                merged.add(v);
                added.add(v);
            }
            for v in samples(right, 2) {
                theirs.add(v);
                added.add(v);
            }
            merged.merge(&theirs);
            assert_eq!(
                matches!(merged, Quantiles::Sketch(_)),
                matches!(added, Quantiles::Sketch(_)),
                "{left} + {right}"
            );
            let qs = [0.0, 0.25, 0.5, 0.9, 0.99, 1.0];
            assert_eq!(
                merged.quantiles(qs),
                added.quantiles(qs),
                "{left} + {right}"
            );
        }
    }

    #[test]
    fn sketch_within_one_percent() {
        let mut q = Quantiles::default();
        for v in 1..=100_000 {
            q.add(v as f64 / 10.0);
        }
        assert!(matches!(q, Quantiles::Sketch(_)));
        for (quantile, truth) in [(0.5, 5000.0), (0.99, 9900.0)] {
            let got = q.quantile(quantile).expect("value");
            assert!(
                (got - truth).abs() / truth <= 0.011,
                "q{quantile}: {got} vs {truth}"
            );
        }
    }
}
