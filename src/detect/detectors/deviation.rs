//! `kind = "deviation"`: the value against its baseline.

use serde::Deserialize;

use super::{Candidate, Detect, Eval, Scope, resolution, short};
use crate::detect::catalogue::{Direction, SeriesKind};

/// Fires when the deviation's score reaches `min_score` in `direction`, the
/// change is at least `min_delta` (absolute) and `min_ratio` (observed /
/// expected, or its inverse going down), the window's volume (requests or
/// calls; for `calls_per_request`, the caller's requests) is at least
/// `min_volume` and the expectation at least `min_expected`; a rise must also
/// go beyond the series' own recent bursts (`detect::excursion`).
///
/// It is decisive when its two-sided tail, `1 - score`, is at most
/// `(1 - min_score)^consecutive`: this window alone is as unlikely under the
/// baseline as the pattern's whole run at the threshold (z >= 5.7 for 0.9999
/// and two windows).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deviation {
    pub direction: Direction,
    pub min_score: f64,
    #[serde(default)]
    pub min_delta: f64,
    #[serde(default)]
    pub min_ratio: f64,
    #[serde(default)]
    pub min_volume: f64,
    #[serde(default)]
    pub min_expected: f64,
}

impl Detect for Deviation {
    fn problems(&self, _series: SeriesKind) -> Vec<String> {
        let mut out = Vec::new();
        if !(0.0..=1.0).contains(&self.min_score) {
            out.push("min_score must be in [0, 1]".to_string());
        }
        if self.min_ratio < 0.0 {
            out.push("min_ratio must not be negative".to_string());
        }
        out
    }

    fn evaluate(&self, eval: &Eval<'_>, scope: &mut Scope<'_>) -> Option<Candidate> {
        let series = &mut *scope.series;
        let (row, t, value, measure) = (eval.row, eval.t, eval.value, eval.measure);
        let state = series.ready(eval.key, measure)?;
        let volume = row.volume_for(measure);
        if !matches!(
            row.kind,
            SeriesKind::Metric | SeriesKind::Log | SeriesKind::LogTemplate
        ) && volume < self.min_volume
        {
            return None;
        }
        let expected = state.baseline.expected(t);
        let floor = resolution(measure, expected, volume);
        let d = state.baseline.deviation(t, value, floor);
        let up = value > d.expected;
        let ok_direction = match self.direction {
            Direction::Up => up,
            Direction::Down => !up,
            Direction::Both => true,
        };
        let ratio_ok = self.min_ratio <= 0.0
            || if up {
                value >= d.expected.max(0.0) * self.min_ratio
            } else {
                value * self.min_ratio <= d.expected
            };
        // A rise no higher than the series' own recent bursts is one more of
        // them (see `detect::excursion`).
        let usual_burst = up && state.baseline.burst_peak().is_some_and(|p| value <= p);
        let score = d.score();
        let run = i32::try_from(eval.pattern.consecutive.max(1)).unwrap_or(i32::MAX);
        let decisive = 1.0 - score <= (1.0 - self.min_score).powi(run);
        (ok_direction
            && !usual_burst
            && score >= self.min_score
            && (value - d.expected).abs() >= self.min_delta
            && ratio_ok
            && d.expected.abs() >= self.min_expected)
            .then(|| Candidate {
                observed: value,
                expected: d.expected,
                score,
                onset: None,
                detail: format!(
                    "{measure} {} to {} (expected {}, z {:.1})",
                    if up { "up" } else { "down" },
                    short(value),
                    short(d.expected),
                    d.z
                ),
                decisive,
            })
    }
}
