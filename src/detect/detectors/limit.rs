//! `kind = "limit"`: use of a bounded resource, now or soon.

use serde::Deserialize;

use super::{Candidate, Detect, Eval, Scope, WindowContext, resolution, short};
use crate::detect::baseline::Baseline;
use crate::detect::catalogue::SeriesKind;
use crate::detect::rows::Row;

/// The value over its limit (`limit`, or a sibling metric named by swapping a
/// suffix per `limit_pairs`, or 1 / 100 for utilization metrics with unit `1` /
/// `%`) reaches `threshold`, or reaches `forecast_from` while the linear trend of
/// the last `trend_windows` windows exhausts it within `horizon`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    #[serde(default)]
    pub limit: Option<f64>,
    #[serde(default)]
    pub limit_pairs: Vec<[String; 2]>,
    pub threshold: f64,
    pub forecast_from: f64,
    #[serde(with = "humantime_serde")]
    pub horizon: std::time::Duration,
    pub trend_windows: u32,
}

impl Detect for Limit {
    fn problems(&self, series: SeriesKind) -> Vec<String> {
        let mut out = Vec::new();
        if !(self.threshold > 0.0
            && self.forecast_from > 0.0
            && self.forecast_from <= self.threshold)
        {
            out.push("need 0 < forecast_from <= threshold".to_string());
        }
        if self.trend_windows < 2 {
            out.push("trend_windows must be at least 2".to_string());
        }
        if self.limit.is_some_and(|l| l <= 0.0) {
            out.push("limit must be positive".to_string());
        }
        if series != SeriesKind::Metric {
            out.push("kind `limit` needs series = \"metric\"".to_string());
        }
        out
    }

    fn history(&self) -> usize {
        self.trend_windows as usize
    }

    fn evaluate(&self, eval: &Eval<'_>, scope: &mut Scope<'_>) -> Option<Candidate> {
        let series = &mut *scope.series;
        let (t, value) = (eval.t, eval.value);
        let limit = self
            .limit
            .or_else(|| limit_for(eval.window, eval.row, &self.limit_pairs))?;
        if limit <= 0.0 {
            return None;
        }
        let fraction = value / limit;
        let mut points: Vec<(i64, f64)> = series
            .state(eval.key, eval.measure)
            .map(|s| {
                let k = (self.trend_windows as usize).saturating_sub(1);
                s.recent.iter().rev().take(k).rev().copied().collect()
            })
            .unwrap_or_default();
        points.push((t, value));
        let slope = slope_per_sec(&points) / limit;
        let tte = (slope > 0.0).then(|| (1.0 - fraction).max(0.0) / slope);
        let horizon = self.horizon.as_secs_f64();
        let forecast =
            tte.filter(|s| *s <= horizon && fraction >= self.forecast_from && points.len() >= 3);
        if fraction < self.threshold && forecast.is_none() {
            return None;
        }
        let score = fraction
            .max(tte.map_or(0.0, |s| 1.0 - s / horizon.max(1.0)))
            .clamp(0.0, 1.0);
        let departed = departed(eval, scope);
        let eta = tte
            .map(|s| {
                format!(
                    ", exhausted in ~{}",
                    humantime::format_duration(std::time::Duration::from_secs(s as u64))
                )
            })
            .unwrap_or_default();
        Some(Candidate {
            observed: value,
            expected: limit,
            score,
            onset: None,
            detail: format!(
                "{:.0}% of limit {}{eta}{}",
                fraction * 100.0,
                short(limit),
                if departed {
                    ", far above its own baseline"
                } else {
                    ""
                }
            ),
            decisive: departed,
        })
    }
}

/// The two-sided tail under its baseline at or below which a use has left
/// it: as unlikely as two windows in a row at the deviation patterns' bar
/// (0.9999), z >= 5.7.
const DEPARTED_TAIL: f64 = 1e-8;

/// Whether the value is far above the series' own baseline: a service that
/// idled at a few percent of its CPU now burns most of it. A service that
/// often runs near its limit (the commonest false alarm of this detector)
/// reaches it within its baseline's spread.
fn departed(eval: &Eval<'_>, scope: &mut Scope<'_>) -> bool {
    let volume = eval.row.volume_for(eval.measure);
    scope
        .series
        .ready(eval.key, eval.measure)
        .is_some_and(|state| left(&state.baseline, eval.t, eval.value, eval.measure, volume))
}

/// Whether `value` at `t` is far above `baseline` ([`DEPARTED_TAIL`]).
fn left(baseline: &Baseline, t: i64, value: f64, measure: &str, volume: f64) -> bool {
    let floor = resolution(measure, baseline.expected(t), volume);
    let d = baseline.deviation(t, value, floor);
    value > d.expected && 1.0 - d.score() <= DEPARTED_TAIL
}

/// The limit of a usage metric: a sibling named per `pairs`, or 1 / 100 for
/// utilization metrics.
fn limit_for(window: &WindowContext<'_>, row: &Row, pairs: &[[String; 2]]) -> Option<f64> {
    for [usage, limit] in pairs {
        if let Some(stem) = row.metric.strip_suffix(usage.as_str()) {
            let sibling = format!("{stem}{limit}");
            if let Some(v) = window.last(&row.service, &row.attributes, &sibling) {
                return Some(v);
            }
            // A limit reported without the usage's attributes (one per process).
            if let Some(v) = window.last(&row.service, "", &sibling) {
                return Some(v);
            }
        }
    }
    match row.unit.as_str() {
        "%" => Some(100.0),
        "1" => Some(1.0),
        _ if row.metric.contains("utilization") => {
            Some(if row.measure("last").unwrap_or(0.0) <= 1.0 {
                1.0
            } else {
                100.0
            })
        }
        _ => None,
    }
}

/// Least-squares slope of value per second.
fn slope_per_sec(points: &[(i64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mt = points.iter().map(|p| p.0 as f64 / 1000.0).sum::<f64>() / n;
    let mv = points.iter().map(|p| p.1).sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for (t, v) in points {
        let dt = *t as f64 / 1000.0 - mt;
        num += dt * (v - mv);
        den += dt * dt;
    }
    if den > 0.0 { num / den } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::baseline::BaselineParams;
    use crate::loadgen::fleet::Rng;

    const W: i64 = 10_000;

    /// A baseline of 300 windows of `level` plus `swing` times a normal draw.
    fn learned(level: f64, swing: f64) -> Baseline {
        let params = BaselineParams::default();
        let mut rng = Rng::new(7);
        let mut baseline = Baseline::new(0, level);
        for w in 1..300 {
            baseline.learn(
                w * W,
                (level + swing * rng.normal()).clamp(0.0, 100.0),
                &params,
            );
        }
        baseline
    }

    #[test]
    fn a_use_far_above_its_own_baseline_has_left_it_a_usual_high_has_not() {
        let t = 300 * W;
        // CPU idling at 3% of its limit, now at 90%.
        assert!(left(&learned(3.0, 1.0), t, 90.0, "last", 0.0));
        // A service that swings between about 40% and 90%: 88% is its usual.
        assert!(!left(&learned(65.0, 12.0), t, 88.0, "last", 0.0));
        // Far below is not a use that left its baseline upward.
        assert!(!left(&learned(60.0, 1.0), t, 3.0, "last", 0.0));
    }
}
