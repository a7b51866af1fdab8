//! `kind = "stall"`: throughput near zero while latency or in-flight work climbs
//! (a deadlock, an exhausted pool).

use serde::Deserialize;

use super::{Candidate, Detect, Eval, Learn, Scope, resolution, short};
use crate::detect::anomaly::SeriesKey;
use crate::detect::catalogue::{SeriesKind, glob_match};
use crate::detect::series::{SeriesTable, metric_key};

/// Throughput at most `max_throughput_ratio` of its baseline (from at least
/// `min_expected`) while latency is at least `latency_ratio` times its baseline or
/// an in-flight metric (`inflight_metrics` globs) rises.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stall {
    pub max_throughput_ratio: f64,
    pub min_expected: f64,
    pub latency_ratio: f64,
    #[serde(default)]
    pub inflight_metrics: Vec<String>,
}

impl Detect for Stall {
    fn problems(&self, series: SeriesKind) -> Vec<String> {
        let mut out = Vec::new();
        if series != SeriesKind::Service {
            out.push("kind `stall` needs series = \"service\"".to_string());
        }
        if !(0.0..=1.0).contains(&self.max_throughput_ratio) {
            out.push("max_throughput_ratio must be in [0, 1]".to_string());
        }
        out
    }

    fn evaluate(&self, eval: &Eval<'_>, scope: &mut Scope<'_>) -> Option<Candidate> {
        let series = &mut *scope.series;
        let learn = &mut *scope.learn;
        let (t, requests) = (eval.t, eval.value);
        let inflight = self.inflight(eval, series, learn);
        let key = eval.key;
        let state = series.ready(key, &eval.pattern.measure)?;
        let expected = state.baseline.expected(t);
        if expected < self.min_expected || requests > self.max_throughput_ratio * expected {
            return None;
        }
        let latency = eval.row.measure("p99_ms").and_then(|p99| {
            let latency_key = SeriesKey {
                name: "p99_ms".to_string(),
                ..key.clone()
            };
            learn.insert((latency_key.clone(), "p99_ms".to_string()), p99);
            let e = series.ready(&latency_key, "p99_ms")?.baseline.expected(t);
            (p99 >= self.latency_ratio * e.max(0.001)).then_some((p99, e))
        });
        let detail = match (&latency, &inflight) {
            (Some((p99, e)), _) => format!(
                "throughput {} (expected {}) while p99 latency is {} ms (expected {})",
                short(requests),
                short(expected),
                short(*p99),
                short(*e)
            ),
            (None, Some((name, v, e))) => format!(
                "throughput {} (expected {}) while {name} climbs to {} (expected {})",
                short(requests),
                short(expected),
                short(*v),
                short(*e)
            ),
            (None, None) => return None,
        };
        Some(Candidate {
            observed: requests,
            expected,
            score: (1.0 - requests / expected.max(f64::MIN_POSITIVE)).clamp(0.0, 1.0),
            onset: None,
            detail,
            decisive: false,
        })
    }
}

impl Stall {
    /// An in-flight metric of the row's service well above its baseline: (name,
    /// value, expected). In-flight metrics learn whether or not this window stalls.
    fn inflight(
        &self,
        eval: &Eval<'_>,
        series: &SeriesTable,
        learn: &mut Learn,
    ) -> Option<(String, f64, f64)> {
        let mut found = None;
        for metric in eval.window.metrics_of(&eval.row.service) {
            if !self
                .inflight_metrics
                .iter()
                .any(|g| glob_match(g, &metric.metric))
            {
                continue;
            }
            let Some(value) = metric.measure("last") else {
                continue;
            };
            let key = metric_key(metric);
            if let Some(state) = series.ready(&key, "last") {
                let d = state
                    .baseline
                    .deviation(eval.t, value, resolution("last", value, 0.0));
                if d.z >= 4.0 && value >= 1.5 * d.expected.max(1.0) {
                    found = Some((metric.metric.clone(), value, d.expected));
                }
            }
            learn.insert((key, "last".to_string()), value);
        }
        found
    }
}
