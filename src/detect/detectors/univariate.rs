//! `kind = "univariate"`: the generic detector (`detect/univariate.rs`) as a
//! pattern, for series no specific pattern claims.

use serde::Deserialize;

use super::{Candidate, Detect, Eval, Scope, resolution, short};
use crate::detect::catalogue::SeriesKind;

/// The univariate detector (`[detect.univariate]`): a generic anomaly score,
/// which must reach `min_score` (default: the detector's own `fire`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnivariateRule {
    #[serde(default)]
    pub min_score: Option<f64>,
    /// The value must also be this many spreads from its baseline (0: off).
    #[serde(default)]
    pub min_z: f64,
}

impl Detect for UnivariateRule {
    fn problems(&self, _series: SeriesKind) -> Vec<String> {
        if self.min_score.is_some_and(|s| !(0.0..=1.0).contains(&s)) {
            vec!["min_score must be in [0, 1]".to_string()]
        } else {
            Vec::new()
        }
    }

    fn evaluate(&self, eval: &Eval<'_>, scope: &mut Scope<'_>) -> Option<Candidate> {
        let series = &mut *scope.series;
        let (t, value, measure) = (eval.t, eval.value, eval.measure);
        let fire = series.limits.univariate.fire;
        let state = series.univariate(eval.key, measure)?;
        let deviation = state
            .baseline
            .deviation(t, value, resolution(measure, value, 0.0));
        let expected = deviation.expected;
        let detector = state.univariate.as_mut()?;
        // The pattern's hysteresis debounces; the detector's own rest is for
        // replay, so the raw score is used here.
        let score = detector.observe_raw(t.div_euclid(1000), value);
        (score >= self.min_score.unwrap_or(fire) && deviation.z.abs() >= self.min_z).then(|| {
            Candidate {
                observed: value,
                expected,
                score,
                onset: None,
                detail: format!(
                    "{measure} {} is unusual for this series (usually near {})",
                    short(value),
                    short(expected)
                ),
                decisive: false,
            }
        })
    }
}
