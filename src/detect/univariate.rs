//! The univariate detector: one value per window in, an anomaly score in [0, 1]
//! out, using only the values before it.
//!
//! Three views of the series, each turned into a tail probability against its own
//! recent history ([`TailWindow`]):
//!
//! - **roughness**: the spread of the last `short` values: spikes, jumps and bursts
//!   of noise;
//! - **level**: the mean of the last `level_window` values, both tails: shifts and
//!   drifts too small for one point to show;
//! - **seasonal residual**: the value minus its time-of-day (or day-of-week and
//!   time-of-day) profile, both tails, once the profile has seen `season_min_days`
//!   days of that slot and explains at least `season_gain` of the variance:
//!   contextual anomalies, a value normal at noon but not at 3 am.
//!
//! The smallest probability, Bonferroni-corrected for the number of views, gives
//! the score `1 - p`. After a score at or above `fire`, the detector rests for
//! `rest` values (returns 0): one alert per event, not one per point.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::tail::{TailShape, TailWindow};

/// Parameters of [`Univariate`]: one set for every series (`[detect.univariate]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnivariateParams {
    /// Values seen before any score is given.
    pub warmup: usize,
    /// Values to stay silent after a score >= `fire`.
    pub rest: usize,
    /// The score that counts as an alert (and starts the rest).
    pub fire: f64,
    /// Values in the roughness view.
    pub short: usize,
    /// Values averaged in the level view.
    pub level_window: usize,
    /// Values per block of the history each view is compared against.
    pub history_block: usize,
    /// Closed blocks of history kept: the history spans `history_blocks` to
    /// `history_blocks + 1` blocks.
    pub history_blocks: usize,
    /// Fraction of the history that forms each fitted tail.
    pub tail_fraction: f64,
    /// At least this many values form each fitted tail.
    pub min_tail: usize,
    /// Floor of a fitted tail's scale, relative to an exponential tail from the
    /// median (see [`TailShape::scale_floor`]).
    pub tail_scale_floor: f64,
    /// Slots per day of the seasonal profiles (a weekly profile has 7 times as many).
    pub season_slots: usize,
    /// Weight of a new value in its profile slot.
    pub season_alpha: f64,
    /// Days a slot must have seen before the profile is used.
    pub season_min_days: u32,
    /// The profile is used while its squared error is below this fraction of the
    /// squared deviation from the median.
    pub season_gain: f64,
}

impl Default for UnivariateParams {
    /// The shipped parameters (the same as `[detect.univariate]` in the embedded
    /// defaults; a test holds the two equal).
    fn default() -> Self {
        Self {
            warmup: 150,
            rest: 40,
            fire: 0.998,
            short: 4,
            level_window: 24,
            history_block: 500,
            history_blocks: 9,
            tail_fraction: 0.007,
            min_tail: 5,
            tail_scale_floor: 0.5,
            season_slots: 48,
            season_alpha: 0.2,
            season_min_days: 3,
            season_gain: 0.5,
        }
    }
}

impl UnivariateParams {
    fn tail_shape(&self) -> TailShape {
        TailShape {
            block_len: self.history_block.max(1),
            blocks: self.history_blocks.max(1),
            tail_q: self.tail_fraction,
            min_tail: self.min_tail.max(1),
            scale_floor: self.tail_scale_floor.max(0.0),
        }
    }

    /// Every rule these parameters break, one line each.
    pub fn problems(&self, prefix: &str) -> Vec<String> {
        let mut out = Vec::new();
        if !(self.fire > 0.0 && self.fire <= 1.0) {
            out.push(format!("{prefix}.fire must be in (0, 1]"));
        }
        if !(self.tail_fraction > 0.0 && self.tail_fraction < 0.5) {
            out.push(format!("{prefix}.tail_fraction must be in (0, 0.5)"));
        }
        if self.tail_scale_floor.is_nan() || self.tail_scale_floor < 0.0 {
            out.push(format!("{prefix}.tail_scale_floor must not be negative"));
        }
        if !(self.season_alpha > 0.0 && self.season_alpha <= 1.0) {
            out.push(format!("{prefix}.season_alpha must be in (0, 1]"));
        }
        if self.season_gain.is_nan() || self.season_gain <= 0.0 {
            out.push(format!("{prefix}.season_gain must be positive"));
        }
        for (key, value) in [
            ("short", self.short),
            ("level_window", self.level_window),
            ("history_block", self.history_block),
            ("history_blocks", self.history_blocks),
            ("min_tail", self.min_tail),
            ("season_slots", self.season_slots),
        ] {
            if value == 0 {
                out.push(format!("{prefix}.{key} must be positive"));
            }
        }
        if self.season_slots > 1440 {
            out.push(format!(
                "{prefix}.season_slots must be at most 1440 (one per minute)"
            ));
        }
        out
    }

    /// Upper bound of the bytes one detector holds with these parameters.
    pub fn bytes(&self) -> usize {
        let slot = std::mem::size_of::<Slot>();
        std::mem::size_of::<Univariate>()
            + 4 * self.tail_shape().bytes()
            + 8 * self.season_slots * slot
            + (self.short + self.level_window + 2) * std::mem::size_of::<f64>()
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct Slot {
    level: f64,
    days: u32,
    last_day: i64,
}

/// A seasonal profile: an exponentially weighted level per slot of the period.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Profile {
    slots: Vec<Slot>,
    /// Exponentially weighted squared error of the profile's prediction.
    error: f64,
}

impl Profile {
    fn new(slots: usize) -> Self {
        let empty = Slot {
            level: 0.0,
            days: 0,
            last_day: i64::MIN,
        };
        Self {
            slots: vec![empty; slots.max(1)],
            error: 0.0,
        }
    }
}

const ERROR_DECAY: f64 = 0.99;

/// The streaming univariate detector (see the module docs).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Univariate {
    params: UnivariateParams,
    seen: usize,
    since_alert: usize,
    values: TailWindow,
    rough: TailWindow,
    level: TailWindow,
    residual: TailWindow,
    recent: VecDeque<f64>,
    level_recent: VecDeque<f64>,
    /// Daily and weekly profiles.
    profiles: [Profile; 2],
    /// Exponentially weighted squared deviation from the median.
    deviation: f64,
}

const SECS_PER_DAY: i64 = 86_400;

impl Univariate {
    pub fn new(params: UnivariateParams) -> Self {
        let slots = params.season_slots.max(1);
        let shape = params.tail_shape();
        Self {
            seen: 0,
            since_alert: usize::MAX / 2,
            values: TailWindow::new(shape),
            rough: TailWindow::new(shape),
            level: TailWindow::new(shape),
            residual: TailWindow::new(shape),
            recent: VecDeque::with_capacity(params.short + 1),
            level_recent: VecDeque::with_capacity(params.level_window + 1),
            profiles: [Profile::new(slots), Profile::new(7 * slots)],
            deviation: 0.0,
            params,
        }
    }

    pub fn params(&self) -> &UnivariateParams {
        &self.params
    }

    /// Values observed so far.
    pub fn seen(&self) -> usize {
        self.seen
    }

    /// Scores `value` observed at `unix_secs` (event time), then learns it: 0
    /// during the warm-up and the rest after an alert. Non-finite values score 0
    /// and are not learned.
    pub fn observe(&mut self, unix_secs: i64, value: f64) -> f64 {
        let score = self.observe_raw(unix_secs, value);
        if !value.is_finite() || self.seen <= self.params.warmup {
            return 0.0;
        }
        self.since_alert = self.since_alert.saturating_add(1);
        if self.since_alert <= self.params.rest {
            return 0.0;
        }
        if score >= self.params.fire {
            self.since_alert = 0;
        }
        score
    }

    /// Like [`Self::observe`] but without the rest after an alert (for callers
    /// that debounce themselves); still 0 during the warm-up.
    pub fn observe_raw(&mut self, unix_secs: i64, value: f64) -> f64 {
        if !value.is_finite() {
            return 0.0;
        }
        self.seen += 1;
        let mut ps: [f64; 3] = [1.0; 3];
        let mut views = 0;

        if let Some(residual) = self.seasonal_residual(unix_secs, value) {
            ps[views] = self.residual.p_two_sided(residual);
            views += 1;
            self.residual.push(residual);
        }

        push_bounded(&mut self.recent, value, self.params.short);
        let (_, spread) = mean_and_spread(&self.recent);
        ps[views] = self.rough.p_upper(spread);
        views += 1;
        self.rough.push(spread);

        push_bounded(&mut self.level_recent, value, self.params.level_window);
        if self.level_recent.len() == self.params.level_window {
            let (level, _) = mean_and_spread(&self.level_recent);
            ps[views] = self.level.p_two_sided(level);
            views += 1;
            self.level.push(level);
        }
        self.values.push(value);

        let p = ps[..views].iter().copied().fold(1.0f64, f64::min) * views as f64;
        if self.seen <= self.params.warmup {
            return 0.0;
        }
        (1.0 - p).clamp(0.0, 1.0)
    }

    /// The value's residual against the better-fitting seasonal profile, if one
    /// is ready and explains enough of the variance; learns the value into both.
    fn seasonal_residual(&mut self, unix_secs: i64, value: f64) -> Option<f64> {
        let deviation = value - self.values.median();
        self.deviation = ERROR_DECAY * self.deviation + (1.0 - ERROR_DECAY) * deviation * deviation;
        let slots = self.params.season_slots.max(1) as i64;
        let day = unix_secs.div_euclid(SECS_PER_DAY);
        let slot = (unix_secs.rem_euclid(SECS_PER_DAY) * slots / SECS_PER_DAY) as usize;
        // 1970-01-01 was a Thursday: +3 makes Monday weekday 0.
        let weekday = (day + 3).rem_euclid(7) as usize;
        let index = [slot, weekday * slots as usize + slot];
        let mut best: Option<(f64, f64)> = None;
        for (profile, at) in self.profiles.iter_mut().zip(index) {
            let Some(s) = profile.slots.get(at).copied() else {
                continue;
            };
            if s.days >= self.params.season_min_days {
                let residual = value - s.level;
                profile.error =
                    ERROR_DECAY * profile.error + (1.0 - ERROR_DECAY) * residual * residual;
                let fits = profile.error < self.params.season_gain * self.deviation;
                if fits && best.is_none_or(|(error, _)| profile.error < error) {
                    best = Some((profile.error, residual));
                }
            }
            let a = self.params.season_alpha;
            profile.slots[at] = Slot {
                level: if s.days == 0 {
                    value
                } else {
                    (1.0 - a) * s.level + a * value
                },
                days: if s.last_day == day {
                    s.days
                } else {
                    s.days.saturating_add(1)
                },
                last_day: day,
            };
        }
        best.map(|(_, residual)| residual)
    }
}

fn push_bounded(q: &mut VecDeque<f64>, v: f64, cap: usize) {
    q.push_back(v);
    while q.len() > cap.max(1) {
        q.pop_front();
    }
}

/// Mean and root of the summed squared deviations.
fn mean_and_spread(q: &VecDeque<f64>) -> (f64, f64) {
    let n = q.len().max(1) as f64;
    let mean = q.iter().sum::<f64>() / n;
    let spread = q.iter().map(|v| (v - mean).powi(2)).sum::<f64>().sqrt();
    (mean, spread)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadgen::fleet::Rng;

    /// A day-seasonal series at 5-minute steps with gaussian noise.
    fn seasonal(rng: &mut Rng, rows: usize) -> Vec<(i64, f64)> {
        (0..rows)
            .map(|i| {
                let t = 1_400_000_000 + i as i64 * 300;
                let phase = (t % 86_400) as f64 / 86_400.0 * std::f64::consts::TAU;
                (t, 100.0 + 30.0 * phase.sin() + 2.0 * rng.normal())
            })
            .collect()
    }

    fn scores(params: &UnivariateParams, series: &[(i64, f64)]) -> Vec<f64> {
        let mut d = Univariate::new(params.clone());
        series.iter().map(|(t, v)| d.observe(*t, *v)).collect()
    }

    #[test]
    fn a_prefix_scores_the_same_as_the_whole_run() {
        let series = seasonal(&mut Rng::new(7), 3000);
        let params = UnivariateParams::default();
        let whole = scores(&params, &series);
        for cut in [1, 151, 999, 2500] {
            assert_eq!(
                scores(&params, &series[..cut]),
                whole[..cut],
                "prefix of {cut}"
            );
        }
    }

    #[test]
    fn steady_seasonal_noise_raises_few_alerts_and_a_spike_is_caught() {
        let params = UnivariateParams::default();
        let mut series = seasonal(&mut Rng::new(11), 4000);
        let clean = scores(&params, &series);
        let alerts = clean.iter().filter(|s| **s >= params.fire).count();
        // One row in a thousand may reach the threshold by chance per view.
        assert!(alerts <= 4, "{alerts} alerts on clean seasonal noise");
        series[3000].1 += 60.0;
        let spiked = scores(&params, &series);
        assert!(spiked[3000] >= params.fire, "spike scored {}", spiked[3000]);
    }

    #[test]
    fn a_value_normal_at_noon_is_anomalous_at_night() {
        let params = UnivariateParams::default();
        let mut series = seasonal(&mut Rng::new(3), 4000);
        // Row 3000's time-of-day sits at the trough; give it the crest's value.
        let (t, _) = series[3000];
        let trough = (t % 86_400) as f64 / 86_400.0;
        let i = (0..288).map(|k| 3000 + k).find(|&i| {
            let phase = (series[i].0 % 86_400) as f64 / 86_400.0;
            (phase - 0.75).abs() < 0.004
        });
        let Some(i) = i else {
            panic!("no trough near row 3000 ({trough})")
        };
        series[i].1 = 130.0;
        let s = scores(&params, &series);
        assert!(s[i] >= params.fire, "contextual anomaly scored {}", s[i]);
    }

    #[test]
    fn non_finite_values_are_ignored() {
        let mut d = Univariate::new(UnivariateParams::default());
        assert_eq!(d.observe(0, f64::NAN), 0.0);
        assert_eq!(d.observe(0, f64::INFINITY), 0.0);
        assert_eq!(d.seen(), 0);
    }

    #[test]
    fn defaults_match_the_embedded_configuration() {
        let config = crate::config::Config::from_toml_str("").expect("defaults load");
        assert_eq!(config.detect.univariate, UnivariateParams::default());
    }

    #[test]
    fn memory_is_bounded_by_the_parameters() {
        let params = UnivariateParams::default();
        let mut d = Univariate::new(params.clone());
        let mut rng = Rng::new(5);
        for i in 0..20_000 {
            d.observe(i * 60, rng.normal());
        }
        assert!(d.values.len() <= (params.history_blocks + 1) * params.history_block);
        assert!(params.bytes() < 256 * 1024, "{} bytes", params.bytes());
    }
}
