//! What a baseline does with values beyond its clip ([`super::baseline`]).
//!
//! An excursion's first window is learned (clipped), as every value is. Its
//! next windows, up to `max_hold`, are held out of the level and spread:
//!
//! - one that ends within [`BRIEF`] windows is a burst of the series' own (a
//!   garbage collector, a cache refresh): what was held is learned after all,
//!   and its highest value is remembered for [`EPOCH`] to [`EPOCH`] x 2
//!   learned windows as the series' recent burst peak;
//! - a longer one is an incident: what was held is dropped, so that a
//!   three-minute fault, which learned window by window would widen the spread
//!   about threefold, does not hide the next like it;
//! - one longer than `max_hold` windows is a new level, learned again.
//!
//! The deviation detector does not report a rise to no more than the recent
//! burst peak: a service whose p95 jumps from 3 to 80 ms for two windows now
//! and then (when more than 5% of a window's calls hit a slow path) does so
//! again without an incident, while a fault beyond that is seen as before.
//!
//! Memory: fixed, about 80 bytes per baseline.

use serde::{Deserialize, Serialize};

/// Windows beyond the clip that are still a burst of the series' own, not an
/// incident: a pattern firing after two windows in a row needs at least one
/// more to be an incident of some length.
pub const BRIEF: usize = 3;
/// Learned windows a burst peak is remembered for, at least (at most twice).
pub const EPOCH: u32 = 180;

/// The state of a baseline's current excursion and its recent bursts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Excursion {
    /// Windows in a row beyond the clip.
    beyond: u32,
    /// The clipped values held, with their seasonal offsets.
    held: [(f64, f64); BRIEF - 1],
    /// How many of `held` are in use.
    held_len: u8,
    /// The highest value of the current excursion, if it went up.
    high: Option<f64>,
    /// The highest burst of this epoch and of the last one.
    peaks: [Option<f64>; 2],
    /// Learned windows in this epoch.
    age: u32,
}

impl Excursion {
    /// Records a value: `within` the clip or beyond it, `up` when above the
    /// expectation. Returns the held values to learn now (a burst has ended;
    /// none otherwise), without allocating: this runs for every series and
    /// window.
    pub fn step(
        &mut self,
        within: bool,
        up: bool,
        value: f64,
    ) -> impl Iterator<Item = (f64, f64)> + use<> {
        let mut release = 0;
        if !within {
            self.beyond = self.beyond.saturating_add(1);
            if up {
                self.high = Some(self.high.map_or(value, |h| h.max(value)));
            }
        } else {
            let held = std::mem::take(&mut self.held_len) as usize;
            let high = self.high.take();
            if self.beyond as usize <= BRIEF {
                if let Some(high) = high {
                    self.peaks[0] = Some(self.peaks[0].map_or(high, |p| p.max(high)));
                }
                release = held;
            }
            self.beyond = 0;
        }
        self.held.into_iter().take(release)
    }

    /// Whether this window is held out of the level and spread: past the
    /// excursion's first window and within `max_hold` windows of it.
    pub fn holds(&self, ready: bool, max_hold: u32) -> bool {
        ready && self.beyond > 1 && self.beyond <= max_hold.saturating_add(1)
    }

    /// Keeps a held window's clipped value and seasonal offset (the first
    /// `BRIEF - 1`; a longer excursion is dropped anyway).
    pub fn hold(&mut self, clipped: f64, seasonal: f64) {
        if let Some(slot) = self.held.get_mut(self.held_len as usize) {
            *slot = (clipped, seasonal);
            self.held_len += 1;
        }
    }

    /// Counts a learned window; every [`EPOCH`] the older peak is forgotten.
    pub fn tick(&mut self) {
        self.age += 1;
        if self.age >= EPOCH {
            self.age = 0;
            self.peaks = [None, self.peaks[0]];
        }
    }

    /// The highest value of the series' recent bursts upward, if any.
    pub fn burst_peak(&self) -> Option<f64> {
        match self.peaks {
            [Some(a), Some(b)] => Some(a.max(b)),
            [a, b] => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_brief_burst_is_released_and_remembered_an_incident_is_dropped() {
        let mut e = Excursion::default();
        assert_eq!(e.step(false, true, 80.0).count(), 0);
        assert!(!e.holds(true, 30));
        assert_eq!(e.step(false, true, 90.0).count(), 0);
        assert!(e.holds(true, 30));
        e.hold(20.0, 0.0);
        assert_eq!(e.step(true, false, 5.0).collect::<Vec<_>>(), [(20.0, 0.0)]);
        assert_eq!(e.burst_peak(), Some(90.0));

        for _ in 0..10 {
            let _ = e.step(false, true, 600.0);
            e.hold(20.0, 0.0);
        }
        assert_eq!(e.step(true, false, 5.0).count(), 0);
        assert_eq!(e.burst_peak(), Some(90.0), "an incident is no burst");
        for _ in 0..2 * EPOCH {
            e.tick();
        }
        assert_eq!(e.burst_peak(), None);
    }

    /// A p95 at 3 ms +- 0.3 whose burst of two windows at 80 ms comes back every
    /// 50 windows, then a three-minute fault at 600 ms: the bursts set the burst
    /// peak near 80, the fault does not raise it.
    #[test]
    fn a_baseline_remembers_its_series_bursts_not_its_incidents() {
        use crate::detect::baseline::{Baseline, BaselineParams};
        use crate::loadgen::fleet::Rng;
        let params = BaselineParams::default();
        let mut b = Baseline::new(0, 3.0);
        let mut rng = Rng::new(11);
        let learn = |b: &mut Baseline, w: i64, v: f64| b.learn(w * 10_000, v, &params);
        for w in 1..400 {
            let burst = w > 100 && w % 50 < 2;
            learn(
                &mut b,
                w,
                if burst {
                    80.0
                } else {
                    3.0 + 0.3 * rng.normal()
                },
            );
        }
        assert_eq!(b.burst_peak(), Some(80.0));
        for w in 400..418 {
            learn(&mut b, w, 600.0);
        }
        learn(&mut b, 418, 3.0);
        assert_eq!(b.burst_peak(), Some(80.0));
        // The bursts widened the spread no more than clipped values do: the
        // level and spread still see 80 as far out (the detector's burst check
        // is what lets it pass).
        assert!(b.deviation(4_190_000, 80.0, 0.0).score() > 0.9999);
    }
}
