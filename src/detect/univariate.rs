//! The univariate detector: one value per window in, an anomaly score in [0, 1]
//! out, using only the values before it.
//!
//! Five views of the series, each turned into a tail probability against its own
//! recent history ([`TailWindow`]):
//!
//! - **roughness**: the spread of the last `short` values: spikes, jumps and bursts
//!   of noise;
//! - **level**: the mean of the last `level_window` values, both tails: shifts and
//!   drifts too small for one point to show;
//! - **seasonal residual**: the value minus its time-of-day (or day-of-week and
//!   time-of-day) profile, both tails, once the profile has seen `season_min_days`
//!   days of that slot and explains at least `season_gain` of the variance:
//!   contextual anomalies, a value normal at noon but not at 3 am;
//! - **local**: the value's distance from the last `local_window` values in their
//!   own standard deviations: a spike in a quiet hour is as visible as one in a
//!   busy hour (the spread of many series follows the traffic);
//! - **change**: the mean of the last `change_window` values minus the mean of the
//!   `change_window` before them: a step to a level the history has seen before.
//!
//! The probabilities are combined by a weighted Bonferroni bound (`combine`): the
//! local and change views get small fixed shares of the false-alarm budget, the
//! others share the rest; the score is `1 - p`. After a score at or above `fire`
//! the detector rests (returns 0) for `rest` values or `rest_time` of event time,
//! whichever ends first: one alert per event, at any sampling interval.
//!
//! What the views learn is kept honest in three ways. The seasonal residual and
//! the profiles learn values clipped to the body of the residuals (`learn_clip`),
//! so an incident does not become part of the daily profile. The residuals of
//! the rest after an alert are held back and, when the excursion proves
//! transient, declustered (`release_held`): an incident does not widen the tail
//! the next like one is judged by. And the smallest step between values (1 for
//! counts) floors every fitted tail's scale, so a crash count one above its
//! record is one step, not a far outlier.
//!
//! Every parameter was chosen by cross-validation between two labelled corpora
//! (`benches/detection_cv.py`; README "Detection quality").

use std::collections::VecDeque;
use std::time::Duration;

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
    /// The rest also ends once this much event time has passed since the alert:
    /// at hourly sampling a rest of `rest` values alone would last days.
    #[serde(default = "default_rest_time", with = "humantime_serde")]
    pub rest_time: Duration,
    /// What the seasonal residual view and the profiles learn is clipped to the
    /// residuals' body (1/8 to 7/8 quantiles) stretched this many times about
    /// their median: an incident does not teach the profile or widen the history
    /// the next incident is judged by, while a lasting change is still learned,
    /// one clipped step at a time. 0 learns values as they are.
    #[serde(default)]
    pub learn_clip: f64,
    /// Values on each side of the change view: the mean of the last
    /// `change_window` values minus the mean of the `change_window` before them,
    /// so a step to a level seen before still stands out. 0 turns the view off.
    #[serde(default)]
    pub change_window: usize,
    /// Values in the local view: the value's distance from the mean of the last
    /// `local_window` values in their own standard deviations, so a spike in a
    /// quiet hour counts as much as one in a noisy hour. 0 turns the view off.
    #[serde(default)]
    pub local_window: usize,
    /// Share of the false-alarm budget (`1 - fire`) given to the local view; the
    /// other views share the rest alike (a weighted Bonferroni bound). Small: a
    /// value far outside its last hour is an alert only when it is very far
    /// outside, as bursty series are often locally surprising.
    #[serde(default)]
    pub local_weight: f64,
    /// Share of the false-alarm budget given to the change view (0: an equal
    /// share with the other views).
    #[serde(default)]
    pub change_weight: f64,
}

fn default_rest_time() -> Duration {
    Duration::from_secs(6 * 3600)
}

impl Default for UnivariateParams {
    /// The shipped parameters (the same as `[detect.univariate]` in the embedded
    /// defaults; a test holds the two equal).
    fn default() -> Self {
        Self {
            warmup: 60,
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
            rest_time: default_rest_time(),
            learn_clip: 10.0,
            change_window: 96,
            local_window: 50,
            local_weight: 0.03,
            change_weight: 0.04,
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
        if self.learn_clip.is_nan() || self.learn_clip < 0.0 {
            out.push(format!("{prefix}.learn_clip must not be negative"));
        }
        for (key, w) in [
            ("local_weight", self.local_weight),
            ("change_weight", self.change_weight),
        ] {
            if !(0.0..0.5).contains(&w) {
                out.push(format!("{prefix}.{key} must be in [0, 0.5)"));
            }
        }
        if self.season_gain.is_nan() || self.season_gain <= 0.0 {
            out.push(format!("{prefix}.season_gain must be positive"));
        }
        for (key, value) in [
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
            + 6 * self.tail_shape().bytes()
            + 8 * self.season_slots * slot
            + (Univariate::keep(self) + 1 + self.rest + 1) * std::mem::size_of::<f64>()
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

/// How far, in widths of the body of the residuals' history (1/8 to 7/8
/// quantiles, see [`TailWindow::body_range`]), a residual held during a
/// transient excursion may lie and still be learned. Four widths about the
/// median is 4.6 standard deviations of gaussian noise (a two-sided chance of
/// 4e-6, far below the alert budget `1 - fire`): what lies beyond is the
/// excursion, not noise.
const DECLUSTER_BODY: f64 = 4.0;

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
    /// The last values, as many as the longest view needs (`Self::keep`); every
    /// view reads its own suffix of them.
    recent: VecDeque<f64>,
    /// Daily and weekly profiles.
    profiles: [Profile; 2],
    /// Exponentially weighted squared deviation from the median.
    deviation: f64,
    /// The change and local views' histories.
    #[serde(default = "empty_tail")]
    change: TailWindow,
    #[serde(default = "empty_tail")]
    local: TailWindow,
    /// Event time (unix seconds) of the last alert.
    #[serde(default)]
    alert_secs: Option<i64>,
    /// The smallest non-zero step between two values so far.
    #[serde(default)]
    quantum: Option<f64>,
    /// Whether the seasonal residual view's learning is held back (in the rest
    /// after an alert), and the values held (see [`Self::release_held`]).
    #[serde(default)]
    holding: bool,
    #[serde(default)]
    held: Vec<f64>,
}

fn empty_tail() -> TailWindow {
    TailWindow::new(UnivariateParams::default().tail_shape())
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
            recent: VecDeque::with_capacity(Self::keep(&params) + 1),
            profiles: [Profile::new(slots), Profile::new(7 * slots)],
            deviation: 0.0,
            change: TailWindow::new(shape),
            local: TailWindow::new(shape),
            alert_secs: None,
            quantum: None,
            holding: false,
            held: Vec::new(),
            params,
        }
    }

    /// Values kept in `recent`: the local view's window and the value itself, the
    /// change view's two windows, the level and roughness views' windows.
    fn keep(params: &UnivariateParams) -> usize {
        [
            params.short,
            params.level_window,
            params.local_window + 1,
            2 * params.change_window,
        ]
        .into_iter()
        .max()
        .unwrap_or(1)
        .max(1)
    }

    /// The values from `back` before the newest to `upto` before it (`upto` 0:
    /// the newest included), oldest first; None while fewer are held.
    fn window(&self, back: usize, upto: usize) -> Option<impl Iterator<Item = f64> + Clone + '_> {
        let n = self.recent.len();
        (back > upto && n >= back).then(|| self.recent.range(n - back..n - upto).copied())
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
        if !value.is_finite() {
            return 0.0;
        }
        // The rest ends before this value is scored: what it held back is
        // learned first, so the value is judged against the whole history.
        let resting = self.resting(unix_secs);
        if self.holding && !resting {
            self.release_held();
        }
        let score = self.observe_raw(unix_secs, value);
        if self.seen <= self.params.warmup {
            return 0.0;
        }
        self.since_alert = self.since_alert.saturating_add(1);
        if resting {
            return 0.0;
        }
        if score >= self.params.fire {
            self.since_alert = 0;
            self.alert_secs = Some(unix_secs);
            self.holding = true;
        }
        score
    }

    /// Whether a value at `unix_secs` falls in the rest after the last alert:
    /// within `rest` values and `rest_time` of it.
    fn resting(&self, unix_secs: i64) -> bool {
        let rest_secs = i64::try_from(self.params.rest_time.as_secs()).unwrap_or(i64::MAX);
        self.since_alert.saturating_add(1) <= self.params.rest
            && self
                .alert_secs
                .is_some_and(|at| unix_secs.saturating_sub(at) < rest_secs)
    }

    /// Ends the hold on the seasonal residual view after an alert's rest. When
    /// the last residual held is back inside the body of the view's history,
    /// the excursion was transient and is declustered, as peaks over a
    /// threshold are before a tail is fitted: the alert's own value stands for
    /// it, and held residuals beyond the body stretched [`DECLUSTER_BODY`]-fold
    /// are dropped. So an incident does not widen the tail the next like one is
    /// judged by. When the last one is still outside, the series has moved and
    /// everything held is learned.
    fn release_held(&mut self) {
        self.holding = false;
        let held = std::mem::take(&mut self.held);
        let body = self.residual.body_range(DECLUSTER_BODY);
        let inside = |x: &f64| body.is_none_or(|(lo, hi)| *x >= lo && *x <= hi);
        let transient = held.last().is_some_and(inside);
        for x in held {
            if !transient || inside(&x) {
                self.residual.push(x);
            }
        }
    }

    /// Like [`Self::observe`] but without the rest after an alert (for callers
    /// that debounce themselves); still 0 during the warm-up.
    pub fn observe_raw(&mut self, unix_secs: i64, value: f64) -> f64 {
        if !value.is_finite() {
            return 0.0;
        }
        self.seen += 1;
        let last = self.recent.back().copied();
        self.recent.push_back(value);
        while self.recent.len() > Self::keep(&self.params) {
            self.recent.pop_front();
        }
        let clip = self.params.learn_clip;
        let residual = self.seasonal_residual(unix_secs, value, clip);
        let short = self.params.short.min(self.recent.len());
        let spread = (short > 0)
            .then(|| self.window(short, 0).map(|w| mean_and_spread(w).1))
            .flatten();
        let level = self
            .window(self.params.level_window, 0)
            .map(|w| mean_and_spread(w).0);
        let local = self.local_z(value);
        let change = self.change_step();

        let two_sided = [
            (&mut self.residual, residual),
            (&mut self.level, level),
            (&mut self.local, local),
            (&mut self.change, change),
        ];
        // (p, fixed weight) of each view present; see `combine`.
        let weights = [
            0.0,
            0.0,
            self.params.local_weight,
            self.params.change_weight,
        ];
        let mut ps: [(f64, f64); 5] = [(1.0, 0.0); 5];
        let mut views = 0;
        for (i, ((history, x), w)) in two_sided.iter().zip(weights).enumerate() {
            if let Some(x) = x {
                // The seasonal residual's excursions are declustered to one
                // value each (`release_held`): its tails are fitted trimmed.
                let p = if i == 0 {
                    history.p_two_sided_trimmed(*x)
                } else {
                    history.p_two_sided(*x)
                };
                ps[views] = (p, w);
                views += 1;
            }
        }
        if let Some(x) = spread {
            ps[views] = (self.rough.p_upper(x), 0.0);
            views += 1;
        }
        let p = combine(&ps[..views]);
        let score = (1.0 - p).clamp(0.0, 1.0);

        for (i, (history, x)) in two_sided.into_iter().enumerate() {
            if let Some(x) = x {
                // Only the seasonal residual is clipped (see `learn_clip`),
                // and held back after an alert (see `release_held`).
                if i > 0 {
                    history.push(x);
                } else if self.holding {
                    self.held.push(clipped(history, x, clip));
                } else {
                    history.push(clipped(history, x, clip));
                }
            }
        }
        if let Some(x) = spread {
            self.rough.push(x);
        }
        // After the score: a value's own step must not floor the tails it is
        // judged by (the first move of a series that never moved would be "one
        // step" by definition).
        self.learn_quantum(last, value);
        self.values.push(value);
        if self.seen <= self.params.warmup {
            return 0.0;
        }
        score
    }

    /// Tracks the smallest step between values (1 for counts) and floors each
    /// view's fitted tails by it, scaled to the view (a mean of m values moves in
    /// steps of 1/m; its noise shrinks like 1/sqrt(m)).
    fn learn_quantum(&mut self, last: Option<f64>, value: f64) {
        if let Some(last) = last {
            let step = (value - last).abs();
            if step > 0.0 && self.quantum.is_none_or(|q| step < q) {
                self.quantum = Some(step);
                let level = (self.params.level_window.max(1) as f64).sqrt();
                let change = (self.params.change_window.max(1) as f64 / 2.0).sqrt();
                self.rough.set_resolution(step);
                self.residual.set_resolution(step);
                self.level.set_resolution(step / level);
                self.change.set_resolution(step / change);
            }
        }
    }

    /// The local view's value: the distance of `value` from the mean of the last
    /// `local_window` values, in their standard deviations (floored by the
    /// values' resolution), once the window is full. One step of the resolution
    /// is the smallest move z can make, so it floors the view's fitted tails too:
    /// a count of 1 after a quiet hour of zeros is one step, not a far outlier.
    fn local_z(&mut self, value: f64) -> Option<f64> {
        let w = self.params.local_window;
        if w == 0 {
            return None;
        }
        let (mean, spread) = mean_and_spread(self.window(w + 1, 1)?);
        let quantum = self.quantum.unwrap_or(0.0);
        let sd = (spread / (w as f64).sqrt()).max(quantum / 2.0);
        let d = value - mean;
        if sd > 0.0 {
            self.local.set_resolution(quantum / sd);
            Some(d / sd)
        } else if d == 0.0 {
            Some(0.0)
        } else {
            // A first change after only constant values.
            Some(d.signum() * 1e6)
        }
    }

    /// The change view's value: the mean of the last `change_window` values minus
    /// the mean of the `change_window` before them, once both are full.
    fn change_step(&self) -> Option<f64> {
        let w = self.params.change_window;
        if w == 0 {
            return None;
        }
        let before = self.window(2 * w, w)?.sum::<f64>();
        let after = self.window(w, 0)?.sum::<f64>();
        Some((after - before) / w as f64)
    }

    /// The value's residual against the better-fitting seasonal profile, if one
    /// is ready and explains enough of the variance; learns the value into both
    /// (clipped like the residual view, once a slot is ready).
    fn seasonal_residual(&mut self, unix_secs: i64, value: f64, clip: f64) -> Option<f64> {
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
            let mut learned = value;
            if s.days >= self.params.season_min_days {
                let residual = value - s.level;
                profile.error =
                    ERROR_DECAY * profile.error + (1.0 - ERROR_DECAY) * residual * residual;
                let fits = profile.error < self.params.season_gain * self.deviation;
                if fits && best.is_none_or(|(error, _)| profile.error < error) {
                    best = Some((profile.error, residual));
                }
                learned = s.level + clipped(&self.residual, residual, clip);
            }
            let a = self.params.season_alpha;
            profile.slots[at] = Slot {
                level: if s.days == 0 {
                    value
                } else {
                    (1.0 - a) * s.level + a * learned
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

mod combine;
use combine::{clipped, combine, mean_and_spread};

#[cfg(test)]
mod tests;
