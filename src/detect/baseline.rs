//! Per-series baselines: what a series' next window value should be, and how far
//! from that is unusual.
//!
//! A baseline keeps a robust level and spread (exponentially weighted, each new
//! value clipped to `clip` spreads first, so a fault does not drag the baseline
//! along at once; when warm-up ends, both restart from the median of the last
//! values and their mean absolute deviation from it, so that the first windows,
//! often partial, do not set the spread for dozens of windows) and two seasonal profiles, hour-of-day and hour-of-week, as
//! offsets from the level. A profile is used once the series has `2` periods
//! behind it. The state is `learning` until `warmup` windows have been seen,
//! then `ready`.
//!
//! Memory: [`Baseline::BYTES`] per series (the key's strings aside), whatever the
//! stream: about 1.4 KB, of which the two profiles are 1,152 bytes.

use serde::{Deserialize, Serialize};

use super::excursion::Excursion;

/// Hour-of-day slots.
const DAY_SLOTS: usize = 24;
/// Hour-of-week slots.
const WEEK_SLOTS: usize = 7 * 24;
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
const WEEK_MS: i64 = 7 * DAY_MS;
/// Gaussian sigma per mean absolute deviation.
const SIGMA_PER_MAD: f64 = 1.2533;

/// Learning parameters shared by every baseline (`[detect.baseline]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaselineParams {
    /// Windows seen before the baseline is `ready`.
    pub warmup: u32,
    /// Weight of a new window in the level.
    pub level_alpha: f64,
    /// Weight of a new window in the spread.
    pub spread_alpha: f64,
    /// New values are clipped to this many spreads from the expectation before
    /// they are learned.
    pub clip: f64,
    /// Weight of a new value in its seasonal slot, once the slot has averaged its
    /// first values.
    pub season_alpha: f64,
    /// An excursion beyond `clip` spreads is learned (clipped) in its first
    /// window; its next windows, up to this many, are held out of the level and
    /// spread (see [`super::excursion`]): learned after all when it ends within
    /// [`BRIEF`](super::excursion::BRIEF) windows, dropped when longer, learned again beyond this many.
    /// 0 never holds.
    pub max_hold: u32,
}

impl BaselineParams {
    /// Every rule these parameters break, one line each.
    pub fn problems(&self, prefix: &str) -> Vec<String> {
        let mut out = Vec::new();
        if self.warmup == 0 {
            out.push(format!("{prefix}.warmup must be at least 1"));
        }
        for (key, value) in [
            ("level_alpha", self.level_alpha),
            ("spread_alpha", self.spread_alpha),
            ("season_alpha", self.season_alpha),
        ] {
            if !(value > 0.0 && value <= 1.0) {
                out.push(format!("{prefix}.{key} must be in (0, 1]"));
            }
        }
        if self.clip.is_nan() || self.clip <= 0.0 {
            out.push(format!("{prefix}.clip must be positive"));
        }
        out
    }
}

impl Default for BaselineParams {
    fn default() -> Self {
        Self {
            warmup: 30,
            level_alpha: 0.05,
            spread_alpha: 0.02,
            clip: 4.0,
            season_alpha: 0.02,
            max_hold: 30,
        }
    }
}

/// `learning` until `warmup` windows were seen, then `ready`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BaselineState {
    Learning,
    Ready,
}

/// A seasonal profile: the mean value per slot (the first values averaged, then
/// exponentially weighted), and their sum. A slot's offset is its value minus the
/// mean of the slots seen, so every slot is measured against the same reference:
/// against a reference that moves with the days (the mean of recent days, as
/// before), a weekly profile learned Sunday against a Saturday-lowered mean and
/// expected Sundays busier than they are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Profile {
    values: Vec<f32>,
    counts: Vec<u16>,
    sum: f64,
    seen: u32,
}

impl Profile {
    fn new(slots: usize) -> Self {
        Self {
            values: vec![0.0; slots],
            counts: vec![0; slots],
            sum: 0.0,
            seen: 0,
        }
    }

    fn learn(&mut self, slot: usize, value: f64, alpha: f64) {
        if let (Some(old), Some(count)) = (self.values.get_mut(slot), self.counts.get_mut(slot)) {
            if *count == 0 {
                self.seen += 1;
            }
            *count = count.saturating_add(1);
            let a = (1.0 / f64::from(*count)).max(alpha);
            let new = ((1.0 - a) * f64::from(*old) + a * value) as f32;
            self.sum += f64::from(new) - f64::from(*old);
            *old = new;
        }
    }

    fn offset(&self, slot: usize) -> f64 {
        match (self.values.get(slot), self.counts.get(slot)) {
            (Some(value), Some(count)) if *count > 0 && self.seen > 0 => {
                f64::from(*value) - self.sum / f64::from(self.seen)
            }
            _ => 0.0,
        }
    }
}

/// The baseline of one series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    windows: u32,
    level: f64,
    /// Mean absolute deviation from the expectation.
    spread: f64,
    first_ms: i64,
    last_ms: i64,
    daily: Profile,
    weekly: Profile,
    /// Values beyond the clip (see [`BaselineParams::max_hold`]).
    #[serde(default)]
    excursion: Excursion,
}

/// Where a value stands against its baseline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Deviation {
    /// The expected value.
    pub expected: f64,
    /// Expected spread (one sigma), floored.
    pub sigma: f64,
    /// (observed - expected) / sigma.
    pub z: f64,
}

impl Deviation {
    /// Two-sided Gaussian strength of the deviation, in [0, 1].
    pub fn score(&self) -> f64 {
        statrs::function::erf::erf(self.z.abs() / std::f64::consts::SQRT_2)
    }
}

impl Baseline {
    /// Approximate bytes per baseline (see the module docs).
    pub const BYTES: usize = std::mem::size_of::<Baseline>() + (DAY_SLOTS + WEEK_SLOTS) * 6;

    /// A baseline seeded with its first value.
    pub fn new(window_ms: i64, value: f64) -> Self {
        Self {
            windows: 1,
            level: value,
            spread: 0.0,
            first_ms: window_ms,
            last_ms: window_ms,
            daily: Profile::new(DAY_SLOTS),
            weekly: Profile::new(WEEK_SLOTS),
            excursion: Excursion::default(),
        }
    }

    pub fn state(&self, params: &BaselineParams) -> BaselineState {
        if self.windows >= params.warmup {
            BaselineState::Ready
        } else {
            BaselineState::Learning
        }
    }

    /// Windows learned.
    pub fn windows(&self) -> u32 {
        self.windows
    }

    /// The window start of the last value learned.
    pub fn last_ms(&self) -> i64 {
        self.last_ms
    }

    fn slots(window_ms: i64) -> (usize, usize) {
        let hour = window_ms.div_euclid(HOUR_MS);
        // 1970-01-01 was a Thursday: +3 days makes Monday 00:00 slot 0.
        (
            (hour.rem_euclid(24)) as usize,
            ((hour + 3 * 24).rem_euclid(7 * 24)) as usize,
        )
    }

    /// The seasonal offset at `window_ms`, from the longest period with two
    /// periods of history (0 before two days).
    pub fn seasonal(&self, window_ms: i64) -> f64 {
        let (day, week) = Self::slots(window_ms);
        let age = window_ms - self.first_ms;
        if age >= 2 * WEEK_MS {
            self.weekly.offset(week)
        } else if age >= 2 * DAY_MS {
            self.daily.offset(day)
        } else {
            0.0
        }
    }

    /// The expectation at `window_ms`.
    pub fn expected(&self, window_ms: i64) -> f64 {
        self.level + self.seasonal(window_ms)
    }

    /// How `value` at `window_ms` deviates; `floor` is the smallest sigma to use
    /// (a measure's resolution: a count's Poisson noise, a rate's granularity).
    pub fn deviation(&self, window_ms: i64, value: f64, floor: f64) -> Deviation {
        let expected = self.expected(window_ms);
        let sigma = (self.spread * SIGMA_PER_MAD)
            .max(floor)
            .max(f64::MIN_POSITIVE);
        Deviation {
            expected,
            sigma,
            z: (value - expected) / sigma,
        }
    }

    /// Restarts the level and spread from the median of `values` (the series'
    /// last values; three at least) and their mean absolute deviation from it.
    pub fn restart_from(&mut self, values: &[f64]) {
        let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        if finite.len() < 3 {
            return;
        }
        let median = median(finite.clone());
        // The mean absolute deviation, as the running spread learns it.
        let deviation =
            finite.iter().map(|v| (v - median).abs()).sum::<f64>() / finite.len() as f64;
        self.level = median;
        self.spread = deviation;
    }

    /// Learns `value` at `window_ms` (a window value, in window order).
    pub fn learn(&mut self, window_ms: i64, value: f64, params: &BaselineParams) {
        if !value.is_finite() {
            return;
        }
        let seasonal = self.seasonal(window_ms);
        let expected = self.level + seasonal;
        let sigma = self.spread * SIGMA_PER_MAD;
        // Clip only once the spread means something.
        let clipped = if self.windows >= params.warmup.min(10) && sigma > 0.0 {
            value.clamp(
                expected - params.clip * sigma,
                expected + params.clip * sigma,
            )
        } else {
            value
        };
        let within = clipped == value;
        self.last_ms = self.last_ms.max(window_ms);
        // A burst of the series' own that has ended is learned after all.
        for (c, s) in self.excursion.step(within, value > expected, value) {
            self.learn_level(c, s, params);
        }
        let ready = self.windows >= params.warmup;
        if self.excursion.holds(ready, params.max_hold) {
            // A sustained excursion: every clipped window would widen the
            // spread by a few percent and pull the level a fraction of a spread
            // along. The profiles still learn.
            self.excursion.hold(clipped, seasonal);
        } else {
            self.learn_level(clipped, seasonal, params);
        }
        self.learn_profiles(window_ms, value, params);
    }

    /// The highest value of the series' recent bursts upward (see
    /// [`super::excursion`]), if any.
    pub fn burst_peak(&self) -> Option<f64> {
        self.excursion.burst_peak()
    }

    /// Learns a (clipped) value into the level and spread.
    fn learn_level(&mut self, clipped: f64, seasonal: f64, params: &BaselineParams) {
        let error = clipped - (self.level + seasonal);
        self.spread = if self.windows <= 1 {
            error.abs()
        } else {
            (1.0 - params.spread_alpha) * self.spread + params.spread_alpha * error.abs()
        };
        let a = params
            .level_alpha
            .max(1.0 / f64::from(self.windows.saturating_add(1)));
        self.level += a * (clipped - seasonal - self.level);
        self.windows = self.windows.saturating_add(1);
        self.excursion.tick();
    }

    /// The profiles learn the value itself: a shape that repeats every day must
    /// be learnable even where it first looked like a jump.
    fn learn_profiles(&mut self, window_ms: i64, value: f64, params: &BaselineParams) {
        let (day, week) = Self::slots(window_ms);
        self.daily.learn(day, value, params.season_alpha);
        self.weekly.learn(week, value, params.season_alpha);
    }
}

/// The median of `values` (statrs).
pub(crate) fn median(values: Vec<f64>) -> f64 {
    use statrs::statistics::{Data, Median};
    Data::new(values).median()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadgen::fleet::Rng;

    #[test]
    fn learns_level_and_spread_then_flags_a_jump() {
        let params = BaselineParams::default();
        let mut rng = Rng::new(1);
        let mut b = Baseline::new(0, 100.0);
        for w in 1..200 {
            b.learn(w * 10_000, 100.0 + 5.0 * rng.normal(), &params);
        }
        assert_eq!(b.state(&params), BaselineState::Ready);
        assert!((b.expected(2_000_000) - 100.0).abs() < 3.0);
        let normal = b.deviation(2_000_000, 104.0, 0.0);
        assert!(normal.score() < 0.9, "{normal:?}");
        let jump = b.deviation(2_000_000, 150.0, 0.0);
        assert!(jump.score() > 0.9999, "{jump:?}");
    }

    #[test]
    fn a_wild_first_window_does_not_blind_the_warmed_up_baseline() {
        // A service's first window is often partial: 1 error in 3 requests.
        let params = BaselineParams::default();
        let mut b = Baseline::new(0, 0.33);
        let mut rng = Rng::new(3);
        // The series table drops a series' first window (see `series`); the
        // baseline's own learning still carries it.
        let mut recent = Vec::new();
        for w in 1..8 {
            let v = (0.01 + 0.01 * rng.normal()).max(0.0);
            b.learn(w * 10_000, v, &params);
            recent.push(v);
        }
        let blind = b.deviation(1_000_000, 0.15, 0.0);
        assert!(blind.score() < 0.9999, "{blind:?}");
        b.restart_from(&recent);
        // Errors from 1 % to 15 %, as a bad release gives, are far out.
        let jump = b.deviation(1_000_000, 0.15, 0.0);
        assert!(jump.score() > 0.9999, "{jump:?}");
    }

    #[test]
    fn a_fault_moves_the_baseline_only_slowly() {
        let params = BaselineParams::default();
        let mut b = Baseline::new(0, 10.0);
        let mut rng = Rng::new(2);
        for w in 1..300 {
            b.learn(w * 10_000, 10.0 + rng.normal(), &params);
        }
        for w in 300..305 {
            b.learn(w * 10_000, 1000.0, &params);
        }
        assert!(
            b.expected(3_050_000) < 13.0,
            "level {}",
            b.expected(3_050_000)
        );
    }

    /// Latency of a call at 7 ms +- 1: a three-minute fault at 3 s (18 windows
    /// of 10 s), six minutes of normal traffic, then a fault at 600 ms.
    fn after_a_fault(params: &BaselineParams) -> Baseline {
        let mut b = Baseline::new(0, 7.0);
        let mut rng = Rng::new(5);
        let mut w = 1;
        for (windows, level) in [(300, 7.0), (18, 3000.0), (36, 7.0)] {
            for _ in 0..windows {
                b.learn(w * 10_000, level * (1.0 + 0.15 * rng.normal()), params);
                w += 1;
            }
        }
        b
    }

    #[test]
    fn the_next_incident_is_judged_by_the_baseline_before_the_last_one() {
        let t = 400 * 10_000;
        let params = BaselineParams::default();
        let b = after_a_fault(&params);
        let next = b.deviation(t, 600.0, 0.0);
        assert!(next.score() > 0.9999, "{next:?}");
        assert!(b.expected(t) < 8.0, "level {}", b.expected(t));
        // Learning every window clipped, as before, the fault widened the
        // spread about threefold and moved the level by several spreads.
        let unheld = after_a_fault(&BaselineParams {
            max_hold: 0,
            ..params.clone()
        });
        assert!(
            unheld.deviation(t, 0.0, 0.0).sigma > 2.0 * next.sigma,
            "{:?} vs {next:?}",
            unheld.deviation(t, 0.0, 0.0)
        );
    }

    #[test]
    fn the_series_own_brief_bursts_are_learned_as_before() {
        // A service whose p95 jumps for two or three windows now and then (a
        // garbage collector): those bursts are its noise, learned as they were
        // without the hold.
        let run = |params: &BaselineParams| {
            let mut b = Baseline::new(0, 5.0);
            let mut rng = Rng::new(9);
            for w in 1..2000 {
                let burst = w % 97 < 2 + (w / 97) % 2;
                let v = if burst && w > 100 {
                    80.0
                } else {
                    5.0 + 0.3 * rng.normal()
                };
                b.learn(w * 10_000, v, params);
            }
            b.deviation(20_000_000, 80.0, 0.0)
        };
        let params = BaselineParams::default();
        let held = run(&params);
        let unheld = run(&BaselineParams {
            max_hold: 0,
            ..params
        });
        // (Not bit-equal: a held window is learned a window or two late.)
        assert!(
            (held.sigma - unheld.sigma).abs() < 0.01 * unheld.sigma,
            "{held:?} {unheld:?}"
        );
    }

    #[test]
    fn a_lasting_new_level_is_learned_after_the_hold() {
        let params = BaselineParams::default();
        let mut b = Baseline::new(0, 10.0);
        let mut rng = Rng::new(7);
        for w in 1..300 {
            b.learn(w * 10_000, 10.0 + rng.normal(), &params);
        }
        let held = 300 + i64::from(params.max_hold);
        for w in 300..held {
            b.learn(w * 10_000, 40.0 + rng.normal(), &params);
        }
        assert!(b.expected(held * 10_000) < 11.0);
        // After the hold, the level moves towards the new one again.
        for w in held..held + 200 {
            b.learn(w * 10_000, 40.0 + rng.normal(), &params);
        }
        let settled = b.deviation((held + 200) * 10_000, 40.0, 0.0);
        assert!(settled.score() < 0.9999, "{settled:?}");
    }

    #[test]
    fn daily_profile_predicts_the_hour_after_two_days() {
        let params = BaselineParams::default();
        let mut b = Baseline::new(0, 100.0);
        let minute = 60_000;
        // Three days at one value per minute: 200 from 12:00 to 13:00, else 100.
        for m in 1..(3 * 24 * 60) {
            let t = m * minute;
            let hour = (t / HOUR_MS) % 24;
            b.learn(t, if hour == 12 { 200.0 } else { 100.0 }, &params);
        }
        let noon = 3 * DAY_MS + 12 * HOUR_MS + 30 * minute;
        assert!(
            (b.expected(noon) - 200.0).abs() < 25.0,
            "noon expected {}",
            b.expected(noon)
        );
        assert!(b.deviation(noon, 200.0, 1.0).score() < 0.99);
    }

    /// Weekdays at 100 with a busy noon, weekends at 40: from the third week the
    /// weekly profile expects both Saturday and Sunday low (a profile learned
    /// against a moving daily mean expected Sunday too high) and weekdays high,
    /// and a weekday-level Saturday stands out.
    #[test]
    fn weekly_profile_predicts_weekends_after_two_weeks() {
        let params = BaselineParams::default();
        let mut rng = Rng::new(5);
        // 2024-03-04 00:00 UTC, a Monday; ten-minute values for three weeks.
        let monday = 1_709_510_400_000;
        let step = 600_000;
        let value = |t: i64, rng: &mut Rng| {
            let day = (t - monday).div_euclid(DAY_MS) % 7;
            let hour = (t - monday).rem_euclid(DAY_MS) / HOUR_MS;
            let level = if day >= 5 { 40.0 } else { 100.0 };
            let noon = if hour == 12 { 1.3 } else { 1.0 };
            level * noon * (1.0 + 0.02 * rng.normal())
        };
        let mut b = Baseline::new(monday, value(monday, &mut rng));
        let end = monday + 2 * WEEK_MS + 5 * DAY_MS;
        let mut t = monday + step;
        while t < end {
            b.learn(t, value(t, &mut rng), &params);
            t += step;
        }
        for (what, at, want) in [
            ("Saturday 09:00", end + 9 * HOUR_MS, 40.0),
            ("Sunday 15:00", end + DAY_MS + 15 * HOUR_MS, 40.0),
            ("Sunday noon", end + DAY_MS + 12 * HOUR_MS, 52.0),
            ("Monday 10:00", end + 2 * DAY_MS + 10 * HOUR_MS, 100.0),
        ] {
            let expected = b.expected(at);
            assert!(
                (expected - want).abs() < 0.1 * want,
                "{what}: expected {expected:.1}, want {want}"
            );
        }
        assert!(b.deviation(end + 9 * HOUR_MS, 100.0, 1.0).score() > 0.9999);
    }

    const _: () = assert!(Baseline::BYTES <= 1500);
}
