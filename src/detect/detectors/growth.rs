//! The growth detector (`kind = "growth"`): a clean staircase over the last few
//! windows, a trend through jitter over the last `trend_windows` windows, or, for
//! climbs too slow to see window by window (a leak of 2% an hour at 10 s
//! windows), a trend over `slow_horizon` of event time in `trend_windows`
//! buckets ([`Coarse`]).
//!
//! The fast paths also ask that the value end above its baseline (a rise out of a
//! dip, or the ramp of a garbage-collector sawtooth the baseline knows, is not
//! growth). The slow path cannot: over hours the baseline follows the climb. Its
//! buckets average a sawtooth away instead, and the values are taken net of the
//! baseline's seasonal profile, so a daily shape it has learned is no trend.

use std::collections::VecDeque;

use serde::Deserialize;

use super::{Candidate, Detect, Eval, Scope, short};
use crate::detect::baseline::Baseline;
use crate::detect::catalogue::SeriesKind;
use crate::detect::trend::{Coarse, trend};

/// Spreads above its baseline at which a rising value has left it.
const LEFT_BASELINE_Z: f64 = 2.0;

/// Sustained growth: each of the last `windows` steps rises (a clean staircase,
/// caught fast), or over the last `trend_windows` values the trend holds through
/// the noise (Kendall's tau at least `min_tau`; the rise is the Theil-Sen slope
/// over the span), as a jittery leak or a backlog behind a sawtooth does; or the
/// slow path over `slow_horizon`. The rise is at least `min_z` spreads of the
/// series and `min_growth` of the level where it started.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Growth {
    pub windows: u32,
    pub min_z: f64,
    pub min_growth: f64,
    #[serde(default = "default_trend_windows")]
    pub trend_windows: u32,
    #[serde(default = "default_min_tau")]
    pub min_tau: f64,
    /// Slow growth: the same trend test over this much event time, in
    /// `trend_windows` buckets of averaged values net of the baseline's seasonal
    /// profile (a leak of a few percent an hour); "0s" turns it off.
    #[serde(default = "default_slow_horizon", with = "humantime_serde")]
    pub slow_horizon: std::time::Duration,
}

fn default_trend_windows() -> u32 {
    12
}

fn default_min_tau() -> f64 {
    0.6
}

fn default_slow_horizon() -> std::time::Duration {
    std::time::Duration::from_secs(3 * 3600)
}

impl Detect for Growth {
    fn problems(&self, _series: SeriesKind) -> Vec<String> {
        let mut out = Vec::new();
        if self.windows < 2 {
            out.push("windows must be at least 2".to_string());
        }
        if self.trend_windows < 3 {
            out.push("trend_windows must be at least 3".to_string());
        }
        if !(self.min_tau > 0.0 && self.min_tau <= 1.0) {
            out.push("min_tau must be in (0, 1]".to_string());
        }
        out
    }

    fn history(&self) -> usize {
        self.windows.max(self.trend_windows) as usize
    }

    fn evaluate(&self, eval: &Eval<'_>, scope: &mut Scope<'_>) -> Option<Candidate> {
        let series = &mut *scope.series;
        let (t, value) = (eval.t, eval.value);
        let state = series.ready(eval.key, eval.measure)?;
        if let Some(found) = fast(self, &state.baseline, &state.recent, t, value) {
            return Some(found);
        }
        if self.slow_horizon.is_zero() {
            return None;
        }
        let horizon_ms = self.slow_horizon.as_millis().min(i64::MAX as u128) as i64;
        let (buckets, window_ms) = (self.trend_windows as usize, series.limits.window_ms);
        let state = series.state_mut(eval.key, eval.measure)?;
        let coarse = state
            .coarse
            .get_or_insert_with(|| Box::new(Coarse::new(horizon_ms, buckets, window_ms)));
        slow(self, &state.baseline, coarse, t, value)
    }
}

/// A rise (the points it spans, its size, the noise it is judged against).
type Rise = (Vec<(i64, f64)>, f64, f64);

/// How far over its bars a staircase one step shorter than `windows` must be
/// to count (rise, growth and distance above the baseline all doubled): a
/// queue that went from empty to dozens in two windows needs no third.
const SHORT_STAIRCASE_FACTOR: f64 = 2.0;

/// The staircase or the window-level trend, ending above the baseline; or a
/// staircase one step shorter that clears every bar
/// [`SHORT_STAIRCASE_FACTOR`] times over.
fn fast(
    rule: &Growth,
    baseline: &Baseline,
    recent: &VecDeque<(i64, f64)>,
    t: i64,
    value: f64,
) -> Option<Candidate> {
    let last = |k: usize| -> Option<Vec<(i64, f64)>> {
        (recent.len() >= k).then(|| {
            let mut points: Vec<(i64, f64)> = recent.iter().rev().take(k).rev().copied().collect();
            points.push((t, value));
            points
        })
    };
    let baseline_sigma = baseline.deviation(t, value, 0.0).sigma;
    let staircase = |k: usize| -> Option<Rise> {
        last(k)
            .filter(|p| p.windows(2).all(|w| w[1].1 > w[0].1))
            .map(|p| {
                let rise = value - p[0].1;
                (p, rise, baseline_sigma)
            })
    };
    // The trend's noise is its scatter about the fitted line: the baseline's
    // spread grows as it learns the leak it should report.
    let trending = || -> Option<Rise> {
        let points = last(rule.trend_windows as usize)?;
        let fit = trend(&points);
        if fit.tau < rule.min_tau {
            return None;
        }
        let span = (points.len() - 1) as f64;
        Some((points, fit.slope * span, fit.scatter))
    };
    let full = staircase(rule.windows as usize).or_else(trending);
    if let Some(found) = full.and_then(|r| judge(rule, baseline, t, r, 1.0)) {
        return Some(found);
    }
    let short = (rule.windows >= 3)
        .then(|| staircase(rule.windows as usize - 1))
        .flatten()?;
    judge(rule, baseline, t, short, SHORT_STAIRCASE_FACTOR)
}

/// The candidate a rise makes when it clears the rule's bars `factor` times over.
fn judge(
    rule: &Growth,
    baseline: &Baseline,
    t: i64,
    (points, rise, sigma): Rise,
    factor: f64,
) -> Option<Candidate> {
    let k = points.len() - 1;
    let value = points[k].1;
    let (start, end) = (value - rise, value);
    let sigma = sigma.max(1e-9 * start.abs());
    let relative = rise / start.abs().max(f64::MIN_POSITIVE);
    let above = baseline.deviation(t, value, 0.0).z;
    if rise < factor * rule.min_z * sigma
        || relative < factor * rule.min_growth
        || above < factor * rule.min_z / 2.0
    {
        return None;
    }
    Some(Candidate {
        observed: value,
        expected: start,
        score: score(rise, sigma, rule.min_z),
        onset: onset(baseline, &points),
        detail: format!(
            "rose {:.1}% in {k} windows ({} -> {})",
            relative * 100.0,
            short(start),
            short(end)
        ),
        decisive: false,
    })
}

/// The trend over the coarse buckets of the last `slow_horizon`; `value` (net of
/// the seasonal offset) must still stand above the middle of the climb, so a
/// restart that already dropped it does not fire.
fn slow(
    rule: &Growth,
    baseline: &Baseline,
    coarse: &Coarse,
    t: i64,
    value: f64,
) -> Option<Candidate> {
    let points = coarse.full()?;
    let fit = trend(&points);
    if fit.tau < rule.min_tau {
        return None;
    }
    let rise = fit.slope * (points.len() - 1) as f64;
    let start = fit.intercept;
    let sigma = fit.scatter.max(1e-9 * start.abs());
    let relative = rise / start.abs().max(f64::MIN_POSITIVE);
    let now = value - baseline.seasonal(t);
    if rise < rule.min_z * sigma || relative < rule.min_growth || now < start + rise / 2.0 {
        return None;
    }
    let span = std::time::Duration::from_millis((coarse.bucket_ms() * points.len() as i64) as u64);
    Some(Candidate {
        observed: value,
        expected: start + baseline.seasonal(t),
        score: score(rise, sigma, rule.min_z),
        onset: points
            .iter()
            .find(|(_, v)| *v - start >= LEFT_BASELINE_Z * sigma)
            .map(|p| p.0),
        detail: format!(
            "rose {:.1}% in {} ({} -> {}; {:.1}% per hour)",
            relative * 100.0,
            humantime::format_duration(span),
            short(start),
            short(start + rise),
            relative * 100.0 * 3_600_000.0 / span.as_millis().max(1) as f64
        ),
        decisive: false,
    })
}

fn score(rise: f64, sigma: f64, min_z: f64) -> f64 {
    (1.0 - (-(rise / sigma) / min_z).exp()).clamp(0.0, 1.0)
}

/// Where a rising run of `points` (oldest first, the first one before the rise)
/// began to matter: the first rising point that is `LEFT_BASELINE_Z` spreads above
/// the baseline. Chance rises inside the normal band before a real climb join the
/// run but do not move the onset earlier.
fn onset(baseline: &Baseline, points: &[(i64, f64)]) -> Option<i64> {
    let rising = points.get(1..)?;
    rising
        .iter()
        .find(|(t, v)| baseline.deviation(*t, *v, 0.0).z >= LEFT_BASELINE_Z)
        .or(rising.first())
        .map(|p| p.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::baseline::BaselineParams;

    const W: i64 = 10_000;

    fn rule() -> Growth {
        Growth {
            windows: 3,
            min_z: 8.0,
            min_growth: 0.2,
            trend_windows: 6,
            min_tau: 0.6,
            slow_horizon: std::time::Duration::ZERO,
        }
    }

    /// A baseline and recent values learned from `history` (one per window),
    /// then `rising` more values; the next window is `t`.
    fn judged(history: &[f64], rising: &[f64], value: f64) -> Option<Candidate> {
        let params = BaselineParams::default();
        let mut baseline = Baseline::new(0, history[0]);
        let mut recent = VecDeque::new();
        for (w, v) in history.iter().chain(rising).enumerate() {
            let t = w as i64 * W;
            if w > 0 {
                baseline.learn(t, *v, &params);
            }
            recent.push_back((t, *v));
        }
        let t = recent.len() as i64 * W;
        fast(&rule(), &baseline, &recent, t, value)
    }

    /// A steady queue of about 50 messages.
    fn steady() -> Vec<f64> {
        (0..40)
            .map(|w| 50.0 + [3.0, -4.0, 5.0, -2.0][w % 4])
            .collect()
    }

    #[test]
    fn a_flood_is_found_after_two_rising_windows() {
        let found = judged(&steady(), &[300.0], 900.0).expect("a flood");
        assert!(found.detail.contains("in 2 windows"), "{}", found.detail);
    }

    #[test]
    fn two_modest_rises_wait_for_the_third() {
        // Each step clears the full staircase's bars only once three of them
        // are in: two steps are not twice over.
        assert!(judged(&steady(), &[75.0], 112.0).is_none());
        let found = judged(&steady(), &[75.0, 112.0], 169.0).expect("a backlog");
        assert!(found.detail.contains("in 3 windows"), "{}", found.detail);
    }
}
