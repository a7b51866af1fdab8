//! Per-series metric accumulation within a window, and the cumulative -> delta state
//! carried from window to window (counter resets handled).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::columnar::metrics::TEMPORALITY_CUMULATIVE;

/// Kinds of metric points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    /// Gauge.
    Gauge,
    /// Sum (counter or up-down counter).
    Sum,
    /// Explicit-bucket histogram.
    Histogram,
    /// Exponential histogram (converted to explicit buckets).
    ExponentialHistogram,
    /// Summary.
    Summary,
}

impl MetricType {
    /// Parses the `metric_type` column.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "gauge" => MetricType::Gauge,
            "sum" => MetricType::Sum,
            "histogram" => MetricType::Histogram,
            "exponential_histogram" => MetricType::ExponentialHistogram,
            "summary" => MetricType::Summary,
            _ => return None,
        })
    }

    /// The `metric_type` column value.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricType::Gauge => "gauge",
            MetricType::Sum => "sum",
            MetricType::Histogram => "histogram",
            MetricType::ExponentialHistogram => "exponential_histogram",
            MetricType::Summary => "summary",
        }
    }

    fn is_distribution(self) -> bool {
        matches!(
            self,
            MetricType::Histogram | MetricType::ExponentialHistogram | MetricType::Summary
        )
    }
}

/// One data point as accumulated.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PointValue {
    /// Point start time (0 when unknown).
    pub start_ns: u64,
    /// Point time.
    pub time_ns: u64,
    /// Gauge / sum value.
    pub value: f64,
    /// Histogram / summary count.
    pub count: u64,
    /// Histogram / summary sum.
    pub sum: f64,
    /// Histogram upper bounds.
    pub bounds: Vec<f64>,
    /// Histogram bucket counts.
    pub counts: Vec<u64>,
    /// Summary p99.
    pub p99: Option<f64>,
    /// Histogram min, when recorded.
    pub min: Option<f64>,
    /// Histogram max, when recorded.
    pub max: Option<f64>,
}

/// The last cumulative point of each series, as of the closed windows.
pub type CumulativeState = HashMap<String, PointValue>;

/// Accumulates one series in one window.
#[derive(Debug, Clone)]
pub struct SeriesAccumulator {
    metric_type: MetricType,
    cumulative: bool,
    monotonic: bool,
    points: u64,
    min: f64,
    max: f64,
    total: f64,
    last: (u64, f64),
    /// Delta-temporality contributions, summed directly.
    delta: DeltaSum,
    /// Cumulative points, turned into deltas when the window closes (in time order).
    raw: Vec<PointValue>,
}

#[derive(Debug, Clone, Default)]
struct DeltaSum {
    value: f64,
    count: u64,
    sum: f64,
    bounds: Vec<f64>,
    counts: Vec<u64>,
    p99: Option<(u64, f64)>,
    min: Option<f64>,
    max: Option<f64>,
    any: bool,
}

impl DeltaSum {
    fn add(&mut self, metric_type: MetricType, point: &PointValue) {
        self.any = true;
        self.value += point.value;
        self.count += point.count;
        self.sum += point.sum;
        if !point.counts.is_empty() {
            if self.counts.is_empty() || self.bounds != point.bounds {
                // Differing layouts cannot be merged; keep the newest layout.
                if !self.counts.is_empty() && self.bounds != point.bounds {
                    self.counts.iter_mut().for_each(|c| *c = 0);
                }
                self.bounds = point.bounds.clone();
                self.counts = point.counts.clone();
            } else {
                for (acc, c) in self.counts.iter_mut().zip(&point.counts) {
                    *acc += c;
                }
            }
        }
        if metric_type == MetricType::Summary
            && let Some(p99) = point.p99
            && self.p99.is_none_or(|(t, _)| point.time_ns >= t)
        {
            self.p99 = Some((point.time_ns, p99));
        }
        self.min = min_opt(self.min, point.min);
        self.max = max_opt(self.max, point.max);
    }
}

fn min_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn max_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// The finished row of one series in one window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SeriesRow {
    /// Data points seen.
    pub points: u64,
    /// Smallest value (gauge/sum) or recorded histogram min.
    pub min: Option<f64>,
    /// Largest value (gauge/sum) or recorded histogram max.
    pub max: Option<f64>,
    /// Mean value (gauge/sum), or sum / count of the window's observations.
    pub mean: Option<f64>,
    /// Latest value (gauge/sum).
    pub last: Option<f64>,
    /// Increase within the window (sums).
    pub delta: Option<f64>,
    /// `delta` per second (sums).
    pub rate: Option<f64>,
    /// Observations within the window (histograms, summaries).
    pub hist_count: Option<u64>,
    /// Sum of observations within the window.
    pub hist_sum: Option<f64>,
    /// Estimated p99 of observations within the window.
    pub hist_p99: Option<f64>,
}

impl SeriesAccumulator {
    /// A new accumulator for a series of this type.
    pub fn new(metric_type: MetricType, temporality: i32, monotonic: bool) -> Self {
        SeriesAccumulator {
            metric_type,
            cumulative: temporality == TEMPORALITY_CUMULATIVE && metric_type != MetricType::Gauge,
            monotonic: monotonic || metric_type.is_distribution(),
            points: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            total: 0.0,
            last: (0, f64::NAN),
            delta: DeltaSum::default(),
            raw: Vec::new(),
        }
    }

    /// The type of the series.
    pub fn metric_type(&self) -> MetricType {
        self.metric_type
    }

    /// Whether points need the cumulative state at close.
    pub fn is_cumulative(&self) -> bool {
        self.cumulative
    }

    /// Adds one point.
    pub fn add(&mut self, point: PointValue) {
        self.points += 1;
        if !self.metric_type.is_distribution() {
            self.min = self.min.min(point.value);
            self.max = self.max.max(point.value);
            self.total += point.value;
            if point.time_ns >= self.last.0 {
                self.last = (point.time_ns, point.value);
            }
        }
        if self.cumulative {
            self.raw.push(point);
        } else {
            self.delta.add(self.metric_type, &point);
        }
    }

    /// Finishes the window: cumulative points become deltas against `previous`,
    /// which is updated to the last point; `window_secs` turns deltas into rates.
    pub fn finish(
        mut self,
        previous: Option<&mut PointValue>,
        window_secs: f64,
    ) -> (SeriesRow, Option<PointValue>) {
        let mut new_state = None;
        if self.cumulative {
            self.raw.sort_by_key(|p| p.time_ns);
            let mut prev: Option<PointValue> = previous.map(|p| p.clone());
            let window_ns = (window_secs * 1e9) as u64;
            for point in std::mem::take(&mut self.raw) {
                let delta = match &prev {
                    None => {
                        // A series seen for the first time counts from its start only when
                        // it started recently; otherwise this point is the baseline.
                        if point.start_ns != 0
                            && point.time_ns.saturating_sub(point.start_ns) <= window_ns
                        {
                            Some(point.clone())
                        } else {
                            None
                        }
                    }
                    Some(p) if point.time_ns <= p.time_ns => continue,
                    Some(p) => Some(difference(p, &point, self.monotonic)),
                };
                if let Some(delta) = delta {
                    self.delta.add(self.metric_type, &delta);
                } else {
                    self.delta.any = true;
                }
                prev = Some(point);
            }
            new_state = prev;
        }
        let points = self.points;
        let mut row = SeriesRow {
            points,
            ..Default::default()
        };
        if !self.metric_type.is_distribution() && points > 0 {
            row.min = Some(self.min);
            row.max = Some(self.max);
            row.mean = Some(self.total / points as f64);
            row.last = Some(self.last.1);
        }
        match self.metric_type {
            MetricType::Gauge => {}
            MetricType::Sum => {
                row.delta = Some(self.delta.value);
                row.rate = Some(self.delta.value / window_secs);
            }
            MetricType::Histogram | MetricType::ExponentialHistogram | MetricType::Summary => {
                row.hist_count = Some(self.delta.count);
                row.hist_sum = Some(self.delta.sum);
                row.min = self.delta.min;
                row.max = self.delta.max;
                if self.delta.count > 0 {
                    row.mean = Some(self.delta.sum / self.delta.count as f64);
                }
                row.hist_p99 = if self.metric_type == MetricType::Summary {
                    self.delta.p99.map(|(_, v)| v)
                } else {
                    bucket_quantile(
                        &self.delta.bounds,
                        &self.delta.counts,
                        0.99,
                        self.delta.min,
                        self.delta.max,
                    )
                };
            }
        }
        (row, new_state)
    }
}

/// `current - previous` for cumulative points; a reset (value or count going down,
/// a new start time, or a new bucket layout) makes the current point the delta.
fn difference(previous: &PointValue, current: &PointValue, monotonic: bool) -> PointValue {
    let restarted =
        previous.start_ns != 0 && current.start_ns != 0 && current.start_ns != previous.start_ns;
    let went_down = monotonic && (current.value < previous.value || current.count < previous.count);
    let relayout =
        current.bounds != previous.bounds || current.counts.len() != previous.counts.len();
    if restarted || went_down || (relayout && !current.counts.is_empty()) {
        return current.clone();
    }
    PointValue {
        start_ns: current.start_ns,
        time_ns: current.time_ns,
        value: current.value - previous.value,
        count: current.count - previous.count,
        sum: current.sum - previous.sum,
        bounds: current.bounds.clone(),
        counts: current
            .counts
            .iter()
            .zip(&previous.counts)
            .map(|(c, p)| c.saturating_sub(*p))
            .collect(),
        p99: current.p99,
        min: None,
        max: None,
    }
}

/// Estimates quantile `q` from explicit buckets by linear interpolation within the
/// bucket holding the rank; the open-ended buckets use the recorded min/max when known.
pub fn bucket_quantile(
    bounds: &[f64],
    counts: &[u64],
    q: f64,
    min: Option<f64>,
    max: Option<f64>,
) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 || counts.len() != bounds.len() + 1 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).max(1);
    let mut before = 0u64;
    for (i, count) in counts.iter().enumerate() {
        if before + count >= rank && *count > 0 {
            let lower = if i == 0 {
                min.unwrap_or_else(|| bounds.first().copied().unwrap_or(0.0).min(0.0))
            } else {
                bounds[i - 1]
            };
            let upper = if i == bounds.len() {
                max.unwrap_or_else(|| bounds.last().copied().unwrap_or(0.0))
            } else {
                bounds[i]
            };
            let upper = upper.max(lower);
            let fraction = (rank - before) as f64 / *count as f64;
            return Some(lower + (upper - lower) * fraction);
        }
        before += count;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum_point(time_ns: u64, start_ns: u64, value: f64) -> PointValue {
        PointValue {
            time_ns,
            start_ns,
            value,
            ..Default::default()
        }
    }

    #[test]
    fn cumulative_sums_become_deltas_with_resets() {
        let mut acc = SeriesAccumulator::new(MetricType::Sum, TEMPORALITY_CUMULATIVE, true);
        // out of order inside the window: sorted at close
        acc.add(sum_point(30, 1, 25.0));
        acc.add(sum_point(20, 1, 15.0));
        let mut state = sum_point(10, 1, 10.0);
        let (row, next) = acc.finish(Some(&mut state), 10.0);
        assert_eq!(row.delta, Some(15.0));
        assert_eq!(row.rate, Some(1.5));
        assert_eq!(row.last, Some(25.0));
        let mut state = next.expect("state");
        let mut acc = SeriesAccumulator::new(MetricType::Sum, TEMPORALITY_CUMULATIVE, true);
        acc.add(sum_point(40, 1, 3.0)); // counter reset
        let (row, _) = acc.finish(Some(&mut state), 10.0);
        assert_eq!(row.delta, Some(3.0));
    }

    #[test]
    fn first_point_of_an_old_series_is_a_baseline() {
        let mut acc = SeriesAccumulator::new(MetricType::Sum, TEMPORALITY_CUMULATIVE, true);
        acc.add(sum_point(100_000_000_000, 1, 500.0));
        let (row, state) = acc.finish(None, 10.0);
        assert_eq!(row.delta, Some(0.0));
        assert!(state.is_some());
    }

    #[test]
    fn bucket_quantile_interpolates() {
        let p = bucket_quantile(&[10.0, 20.0], &[0, 100, 0], 0.99, None, None).expect("p99");
        assert!((p - 19.9).abs() < 1e-9, "{p}");
        assert_eq!(bucket_quantile(&[], &[], 0.99, None, None), None);
    }
}
