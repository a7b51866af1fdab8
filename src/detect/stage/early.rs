//! Early looks (`window.early_look`): the open window's request and call
//! statistics so far, judged once before it closes, only to complete a run
//! the closed windows began.
//!
//! A deviation pattern needs `consecutive` windows in a row, so a failure that
//! began late in a window (its first, partial window not yet anomalous) was
//! confirmed only when the window after next closed. The part of the next
//! window already seen is a sample of its own, independent of the windows
//! before: when a run is one window short, that sample (its volume counted: a
//! half-window has half the requests, so its tail is weighed as such) can give
//! the evidence the closing window would, half a window sooner. A look is one
//! more test of the same window, though, and every extra test lets more
//! chance deviations through; so, as the interim analyses of a sequential
//! test are held to a stricter bound than the final one, a look must be
//! decisive ([`Candidate::decisive`](crate::detect::detectors::Candidate):
//! its tail alone as small as the whole run's at the bar), not merely over
//! the bar. A failure deviates that far within half a window; a burst of a
//! healthy service (half again its usual latency) seldom does. Only shares
//! and quantiles are judged (an error rate means the same over half a window;
//! a request count does not), nothing is learned, no run begins or ends here,
//! and the window is judged in full when it closes: an episode opened early
//! ends then if it does not hold.

use super::DetectStage;
use crate::detect::anomaly::AnomalyEvent;
use crate::detect::catalogue::Detector;
use crate::detect::detectors::{Eval, Learn, WindowContext};
use crate::detect::rows::{holds_early, patterns_for, rows};
use crate::detect::series::key_for;
use crate::window::WindowTables;

impl DetectStage {
    /// Judges the open window's rows so far (`tables`, from
    /// `Windows::early_look`) for the runs they would complete; returns the
    /// episodes opened (also applied to the anomaly log).
    pub fn on_early(&mut self, tables: &WindowTables) -> Vec<AnomalyEvent> {
        let t = tables.start_ms;
        if t < self.closed_through {
            return Vec::new();
        }
        let rows = rows(tables);
        let context = WindowContext::new(&rows);
        let patterns = self.patterns.clone();
        let mut matched = std::mem::take(&mut self.matched);
        let mut learn = Learn::new();
        let logs_warm = |_: &str| false;
        let mut events = Vec::new();
        for row in &rows {
            for &index in patterns_for(&mut matched, &patterns, row).iter() {
                let Some(pattern) = patterns.get(index) else {
                    continue;
                };
                if !matches!(pattern.detector, Detector::Deviation(_))
                    || !holds_early(&pattern.measure)
                {
                    continue;
                }
                let key = key_for(row, pattern);
                let Some(value) = row.measure(&pattern.measure) else {
                    continue;
                };
                if !self.episodes.pending(index, &key) {
                    continue;
                }
                let eval = Eval {
                    pattern,
                    row,
                    key: &key,
                    measure: &pattern.measure,
                    t,
                    value,
                    window: &context,
                    new_templates: &[],
                    logs_warm: &logs_warm,
                };
                let candidate = Self::judge(&mut self.series, &eval, &mut learn)
                    .flatten()
                    .filter(|c| c.decisive && self.tolerances.exceeds(&key, c));
                let Some(candidate) = candidate else {
                    continue;
                };
                let window_ms = self.params.window_ms;
                if let Some(mut event) =
                    self.episodes
                        .confirm_early((index, pattern), key, candidate, t, window_ms)
                {
                    self.blame_deployment(&mut event);
                    self.log.apply(&event);
                    events.push(event);
                }
            }
        }
        self.matched = matched;
        events
    }
}
