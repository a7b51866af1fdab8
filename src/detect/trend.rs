//! Trends through noise: a robust line through a few points ([`trend`]), and a
//! series' history at a coarser, time-based resolution ([`Coarse`]) so that a
//! slow climb (a leak of 2% an hour) is judged over hours whatever the window
//! size, where the per-window history of a 10 s window spans two minutes.
//!
//! Memory: a [`Coarse`] holds at most `buckets` (time, mean) pairs plus the bucket
//! being filled, about 16 bytes per bucket; only series watched by a growth
//! pattern with a `slow_horizon` get one.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// A robust line through a few points (see [`trend`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Trend {
    /// Kendall's tau of the values against their order, in [-1, 1].
    pub tau: f64,
    /// Theil-Sen slope per step: the median of the pairwise slopes.
    pub slope: f64,
    /// The line's value at the first point.
    pub intercept: f64,
    /// Standard deviation of the values about the line, from the median
    /// absolute residual (x 1.4826).
    pub scatter: f64,
}

/// Fits a [`Trend`] to `points` (equally spaced, oldest first). Rank-based, so it
/// shrugs off jitter and a few outliers, where "every step rises" fails on the
/// first dip. Written here on purpose: a dozen lines over at most a few dozen
/// points; statrs and ndarray offer least squares, not Kendall's tau or
/// Theil-Sen.
pub fn trend(points: &[(i64, f64)]) -> Trend {
    let n = points.len();
    let mut slopes = Vec::with_capacity(n * n.saturating_sub(1) / 2);
    let mut balance = 0i64;
    for i in 0..n {
        for j in i + 1..n {
            let d = points[j].1 - points[i].1;
            balance += i64::from(d > 0.0) - i64::from(d < 0.0);
            slopes.push(d / (j - i) as f64);
        }
    }
    if slopes.is_empty() {
        return Trend {
            tau: 0.0,
            slope: 0.0,
            intercept: points.first().map_or(0.0, |p| p.1),
            scatter: 0.0,
        };
    }
    let tau = balance as f64 / slopes.len() as f64;
    let slope = median(&mut slopes);
    let mut offsets: Vec<f64> = (0..n).map(|i| points[i].1 - slope * i as f64).collect();
    let intercept = median(&mut offsets);
    let mut residuals: Vec<f64> = (0..n)
        .map(|i| (points[i].1 - intercept - slope * i as f64).abs())
        .collect();
    Trend {
        tau,
        slope,
        intercept,
        scatter: 1.4826 * median(&mut residuals),
    }
}

/// The median of a non-empty slice (reorders it).
pub fn median(values: &mut [f64]) -> f64 {
    let mid = values.len() / 2;
    *values.select_nth_unstable_by(mid, f64::total_cmp).1
}

/// Fewest windows a bucket averages. Found by the three-week healthy-fleet test
/// (`tests/it/detection/seasons.rs`): with 10-minute windows in 15-minute buckets
/// (one or two values each), i.i.d. consumer-lag noise (sd 10% of its mean) made
/// two chance "trends" of 28-35% in three weeks.
pub const MIN_WINDOWS_PER_BUCKET: i64 = 6;

/// A series' values averaged into fixed buckets of event time: the last
/// `buckets` complete ones, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Coarse {
    bucket_ms: i64,
    buckets: usize,
    done: VecDeque<(i64, f64)>,
    /// The bucket being filled: its start, sum and count.
    open: Option<(i64, f64, u32)>,
}

impl Coarse {
    /// `buckets` buckets spanning `horizon_ms`, each averaging at least
    /// [`MIN_WINDOWS_PER_BUCKET`] windows of `window_ms` (so with coarse windows
    /// the horizon stretches: a bucket of one noisy value is no average).
    pub fn new(horizon_ms: i64, buckets: usize, window_ms: i64) -> Self {
        let buckets = buckets.max(2);
        Coarse {
            bucket_ms: (horizon_ms / buckets as i64)
                .max(window_ms.saturating_mul(MIN_WINDOWS_PER_BUCKET))
                .max(1),
            buckets,
            done: VecDeque::with_capacity(buckets),
            open: None,
        }
    }

    /// Adds the value of the window starting at `t` (in window order). A gap of
    /// missing buckets clears the history: a trend across a gap is no trend.
    pub fn push(&mut self, t: i64, value: f64) {
        if !value.is_finite() {
            return;
        }
        let start = t.div_euclid(self.bucket_ms) * self.bucket_ms;
        match self.open {
            Some((open, sum, n)) if open == start => {
                self.open = Some((open, sum + value, n + 1));
                return;
            }
            Some((open, _, _)) if start < open => return,
            Some((open, sum, n)) => {
                if start > open + self.bucket_ms {
                    self.done.clear();
                } else {
                    self.done.push_back((open, sum / f64::from(n)));
                    while self.done.len() > self.buckets {
                        self.done.pop_front();
                    }
                }
            }
            None => {}
        }
        self.open = Some((start, value, 1));
    }

    /// The complete buckets, once the whole horizon is covered.
    pub fn full(&self) -> Option<Vec<(i64, f64)>> {
        (self.done.len() >= self.buckets).then(|| self.done.iter().copied().collect())
    }

    /// The length of one bucket.
    pub fn bucket_ms(&self) -> i64 {
        self.bucket_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trend_of_a_clean_line_and_of_noise() {
        let line: Vec<(i64, f64)> = (0..12).map(|i| (i, 10.0 + 2.0 * i as f64)).collect();
        let fit = trend(&line);
        assert_eq!(fit.tau, 1.0);
        assert!((fit.slope - 2.0).abs() < 1e-12 && (fit.intercept - 10.0).abs() < 1e-12);
        assert!(fit.scatter < 1e-12);
        let flat: Vec<(i64, f64)> = (0..12)
            .map(|i| (i, if i % 2 == 0 { 1.0 } else { -1.0 }))
            .collect();
        assert!(trend(&flat).tau.abs() < 0.2);
    }

    #[test]
    fn buckets_average_and_roll() {
        let mut coarse = Coarse::new(60_000, 3, 3_000);
        assert_eq!(coarse.bucket_ms(), 20_000);
        for (t, v) in [(0, 1.0), (10_000, 3.0), (20_000, 5.0), (30_000, 5.0)] {
            coarse.push(t, v);
        }
        assert_eq!(coarse.full(), None);
        for t in (40_000..=60_000).step_by(10_000) {
            coarse.push(t, 7.0);
        }
        // Buckets 0 (mean 2), 20 000 (5), 40 000 (7) are complete; 60 000 is open.
        assert_eq!(
            coarse.full(),
            Some(vec![(0, 2.0), (20_000, 5.0), (40_000, 7.0)])
        );
        coarse.push(80_000, 9.0);
        assert_eq!(coarse.full().map(|b| b[0]), Some((20_000, 5.0)));
        // A late window is ignored; a gap clears the history.
        coarse.push(0, 100.0);
        coarse.push(500_000, 1.0);
        assert_eq!(coarse.full(), None);
    }

    #[test]
    fn a_bucket_averages_several_windows() {
        assert_eq!(
            Coarse::new(60_000, 12, 600_000).bucket_ms(),
            600_000 * MIN_WINDOWS_PER_BUCKET
        );
        assert_eq!(Coarse::new(3 * 3_600_000, 12, 10_000).bucket_ms(), 900_000);
    }
}
