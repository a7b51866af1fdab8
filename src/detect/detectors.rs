//! The detectors a pattern can use, one file each behind the trait `Detect`:
//! [`deviation`], [`limit`], [`growth`], [`stall`], [`new_template`] and
//! [`univariate`]. A detector reads one row's value in one closed window against
//! the series' state as it stood before the window, and says whether its
//! condition holds ([`Candidate`]); the stage does the hysteresis
//! (`episodes.rs`) and the learning.

pub mod deviation;
pub mod growth;
pub mod limit;
pub mod new_template;
pub mod stall;
pub mod univariate;

use std::collections::{HashMap, HashSet};

use super::anomaly::SeriesKey;
use super::catalogue::{Pattern, SeriesKind};
use super::rows::Row;
use super::series::SeriesTable;

/// A condition that holds in this window.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub observed: f64,
    pub expected: f64,
    pub score: f64,
    /// Where the episode really began, when the detector knows better than "now".
    pub onset: Option<i64>,
    pub detail: String,
    /// Held so strongly that this window alone is as unlikely by chance as the
    /// pattern's `consecutive` windows in a row at its threshold: new evidence,
    /// not the last episode flapping, so it may open an episode during the
    /// cooldown (see `episodes.rs`).
    pub decisive: bool,
}

/// Values a window teaches, learned once every pattern has evaluated it.
pub(crate) type Learn = HashMap<(SeriesKey, String), f64>;

/// What a detector may change: the series (its own per-series state) and the
/// values to learn.
pub(crate) struct Scope<'a> {
    pub(crate) series: &'a mut SeriesTable,
    pub(crate) learn: &'a mut Learn,
}

/// One row's value in one window, and what else a detector may read.
pub(crate) struct Eval<'a> {
    pub(crate) pattern: &'a Pattern,
    pub(crate) row: &'a Row,
    pub(crate) key: &'a SeriesKey,
    pub(crate) measure: &'a str,
    /// The window's start.
    pub(crate) t: i64,
    pub(crate) value: f64,
    pub(crate) window: &'a WindowContext<'a>,
    /// Log templates created in this window: (service, id, severity).
    pub(crate) new_templates: &'a [(String, u32, String)],
    /// Whether a service's logs have been mined long enough for a new template
    /// to mean something.
    pub(crate) logs_warm: &'a dyn Fn(&str) -> bool,
}

/// A detector: its parameters' problems, the history it reads, its condition.
pub(crate) trait Detect {
    /// Every problem with the parameters for a pattern on `series`, one line each.
    fn problems(&self, series: SeriesKind) -> Vec<String>;

    /// Values of history (windows) the detector reads from a series.
    fn history(&self) -> usize {
        1
    }

    /// Whether `eval`'s window holds enough to judge (calls enough, for a
    /// measure over calls). A window that does not is neither one where the
    /// condition holds nor one where it fails: it extends no run and breaks
    /// none, and ends no episode, as a window without the series does not.
    fn judges(&self, _eval: &Eval<'_>) -> bool {
        true
    }

    /// Whether the condition holds for `eval`; values it reads from other series
    /// go into `scope.learn`.
    fn evaluate(&self, eval: &Eval<'_>, scope: &mut Scope<'_>) -> Option<Candidate>;
}

/// The smallest meaningful sigma for a measure: Poisson noise for counts,
/// binomial noise for rates and shares, 2% for latencies, 0.1% for other metrics.
pub(crate) fn resolution(measure: &str, expected: f64, volume: f64) -> f64 {
    match measure {
        "requests" | "calls" | "errors" | "count" | "hist_count" => expected.abs().max(1.0).sqrt(),
        "error_rate" | super::rows::LAST_CALL_SHARE => {
            let p = expected.clamp(0.01, 0.99);
            (p * (1.0 - p) / volume.max(1.0)).sqrt()
        }
        m if m.ends_with("_ms") => 0.02 * expected.abs() + 0.1,
        // Calls per request counted over `volume` requests: Poisson counting
        // error of the calls expected, per request.
        super::rows::CALLS_PER_REQUEST => (expected.abs() / volume.max(1.0)).sqrt(),
        _ => 0.001 * expected.abs() + 1e-9,
    }
}

/// A number for a detail line: whole above 100 (or when whole), else 3 decimals.
pub(crate) fn short(v: f64) -> String {
    if v.abs() >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

/// What one window holds beyond single rows: metric rows by service and the
/// last values by metric name (limits), and which services were seen.
pub(crate) struct WindowContext<'a> {
    metrics: HashMap<&'a str, Vec<&'a Row>>,
    last: HashMap<(&'a str, &'a str, &'a str), f64>,
    with_spans: HashSet<&'a str>,
    seen: HashSet<&'a str>,
}

impl<'a> WindowContext<'a> {
    pub(crate) fn new(rows: &'a [Row]) -> Self {
        let mut context = Self {
            metrics: HashMap::new(),
            last: HashMap::new(),
            with_spans: HashSet::new(),
            seen: HashSet::new(),
        };
        for row in rows {
            context.seen.insert(&row.service);
            match row.kind {
                SeriesKind::Metric => {
                    context.metrics.entry(&row.service).or_default().push(row);
                    if let Some(v) = row.measure("last") {
                        context
                            .last
                            .insert((&row.service, &row.attributes, &row.metric), v);
                    }
                }
                SeriesKind::Service => {
                    context.with_spans.insert(&row.service);
                }
                _ => {}
            }
        }
        context
    }

    pub(crate) fn metrics_of(&self, service: &str) -> impl Iterator<Item = &&'a Row> {
        self.metrics.get(service).into_iter().flatten()
    }

    /// Services with telemetry in this window but no spans.
    pub(crate) fn silent_services(&self) -> Vec<String> {
        self.seen
            .iter()
            .filter(|s| !self.with_spans.contains(*s))
            .map(|s| s.to_string())
            .collect()
    }

    /// The last value of `metric` with `attributes` on `service` in this window.
    pub(crate) fn last(&self, service: &str, attributes: &str, metric: &str) -> Option<f64> {
        self.last.get(&(service, attributes, metric)).copied()
    }
}
