//! `kind = "limit"`: use of a bounded resource, now or soon.

use serde::Deserialize;

use super::{Candidate, Detect, Eval, Scope, WindowContext, short};
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
            detail: format!("{:.0}% of limit {}{eta}", fraction * 100.0, short(limit)),
            decisive: false,
        })
    }
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
