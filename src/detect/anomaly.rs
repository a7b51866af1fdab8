//! Anomalies: what the detectors report, and the bounded log the `anomalies` SQL
//! table reads.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, LazyLock, RwLock};

use arrow::array::{
    ArrayRef, Float64Builder, StringBuilder, TimestampMillisecondBuilder, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

/// What kind of failure an anomaly points at. The catalogue (`models/`) maps
/// patterns to these classes; later stages (incidents, playbooks) key on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    ErrorSpike,
    LatencyDegradation,
    Saturation,
    MemoryLeak,
    DependencyFailure,
    TrafficAnomaly,
    QueueBacklog,
    Deadlock,
    LogPattern,
    FaultyDeployment,
    Generic,
}

impl FailureClass {
    /// The snake_case name used in the catalogue, SQL and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::ErrorSpike => "error_spike",
            FailureClass::LatencyDegradation => "latency_degradation",
            FailureClass::Saturation => "saturation",
            FailureClass::MemoryLeak => "memory_leak",
            FailureClass::DependencyFailure => "dependency_failure",
            FailureClass::TrafficAnomaly => "traffic_anomaly",
            FailureClass::QueueBacklog => "queue_backlog",
            FailureClass::Deadlock => "deadlock",
            FailureClass::LogPattern => "log_pattern",
            FailureClass::FaultyDeployment => "faulty_deployment",
            FailureClass::Generic => "generic",
        }
    }
}

impl fmt::Display for FailureClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The identity of a series: whose, which signal, what, and its low-cardinality
/// attributes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SeriesKey {
    /// The service (for edges: the caller).
    pub service: String,
    /// `service`, `operation`, `edge`, `metric`, `log` or `log_template`.
    pub signal: String,
    /// The measure or metric name (for templates: the template text).
    pub name: String,
    /// The rest of the identity, `k=v` joined by `,` (operation, callee, metric
    /// attributes, severity), sorted; empty when none.
    pub attributes: String,
}

impl fmt::Display for SeriesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.service, self.signal, self.name)?;
        if !self.attributes.is_empty() {
            write!(f, "{{{}}}", self.attributes)?;
        }
        Ok(())
    }
}

/// One detected anomaly: an episode of a pattern on a series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Anomaly {
    /// The series.
    pub key: SeriesKey,
    /// The failure class.
    pub class: FailureClass,
    /// The catalogue pattern that fired.
    pub pattern: String,
    /// Start of the first window of the episode (ms since the epoch).
    pub onset_ms: i64,
    /// Start of the window in which the episode was confirmed (hysteresis met).
    pub detected_ms: i64,
    /// Start of the first window after the episode, once it has ended.
    pub ended_ms: Option<i64>,
    /// The value observed in the confirming window.
    pub observed: f64,
    /// What the baseline expected there.
    pub expected: f64,
    /// Strength in [0, 1].
    pub score: f64,
    /// Windows the episode has lasted so far.
    pub windows: u64,
    /// A short human-readable explanation.
    pub detail: String,
    /// Held decisively when confirmed ([`crate::detect::detectors::Candidate`]):
    /// as unlikely by chance as the pattern's whole run at its threshold; for
    /// a resource near its limit, its use left its own baseline as far. Such
    /// an anomaly needs no other to open an incident.
    #[serde(default)]
    pub decisive: bool,
}

/// How an anomaly episode changes, as detection emits it: the next stages
/// (incidents) consume these, and the [`AnomalyLog`] (the `anomalies` table) is
/// their read model. An episode is named by its series, pattern and onset.
#[derive(Debug, Clone, PartialEq)]
pub enum AnomalyEvent {
    /// A new episode.
    Opened(Anomaly),
    /// The episode still holds in the window starting at `at_ms`.
    Updated {
        key: SeriesKey,
        pattern: String,
        onset_ms: i64,
        at_ms: i64,
        /// Windows it has lasted.
        windows: u64,
    },
    /// The condition failed in the window starting at `ended_ms`.
    Ended {
        key: SeriesKey,
        pattern: String,
        onset_ms: i64,
        ended_ms: i64,
    },
}

impl Anomaly {
    /// Whether this is the episode of `pattern` on `key` that began at
    /// `onset_ms` (what updates and endings name it by).
    pub fn is_episode(&self, key: &SeriesKey, pattern: &str, onset_ms: i64) -> bool {
        self.onset_ms == onset_ms && self.pattern == pattern && &self.key == key
    }
}

impl AnomalyEvent {
    /// The episode an update or ending is of: (series, pattern, onset);
    /// `None` for an opening.
    pub fn episode(&self) -> Option<(&SeriesKey, &str, i64)> {
        match self {
            AnomalyEvent::Opened(_) => None,
            AnomalyEvent::Updated {
                key,
                pattern,
                onset_ms,
                ..
            }
            | AnomalyEvent::Ended {
                key,
                pattern,
                onset_ms,
                ..
            } => Some((key, pattern, *onset_ms)),
        }
    }

    /// The series the episode is on.
    pub fn key(&self) -> &SeriesKey {
        match self {
            AnomalyEvent::Opened(a) => &a.key,
            AnomalyEvent::Updated { key, .. } | AnomalyEvent::Ended { key, .. } => key,
        }
    }
}

impl crate::read_model::TableSource for AnomalyLog {
    fn name(&self) -> &str {
        "anomalies"
    }

    fn schema(&self) -> SchemaRef {
        schema()
    }

    fn batches(&self) -> Result<Vec<RecordBatch>, ArrowError> {
        Ok(vec![self.to_batch()?])
    }
}

/// The anomalies of the retained history, shared with the SQL layer.
#[derive(Debug, Clone)]
pub struct AnomalyLog {
    inner: Arc<RwLock<LogInner>>,
}

/// The default `detect.max_anomalies`.
const DEFAULT_CAPACITY: usize = 100_000;

impl Default for AnomalyLog {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

#[derive(Debug)]
struct LogInner {
    anomalies: VecDeque<Anomaly>,
    capacity: usize,
}

impl AnomalyLog {
    /// A log keeping at most `capacity` anomalies (oldest dropped first).
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Arc::new(RwLock::new(LogInner {
                anomalies: VecDeque::new(),
                capacity: capacity.max(1),
            })),
        }
    }

    /// Records a new anomaly.
    pub fn push(&self, anomaly: Anomaly) {
        if let Ok(mut inner) = self.inner.write() {
            inner.anomalies.push_back(anomaly);
            while inner.anomalies.len() > inner.capacity {
                inner.anomalies.pop_front();
            }
        }
    }

    /// Updates the open episode of `pattern` on `key` (its duration or its end).
    pub fn update(
        &self,
        key: &SeriesKey,
        pattern: &str,
        onset_ms: i64,
        f: impl FnOnce(&mut Anomaly),
    ) {
        if let Ok(mut inner) = self.inner.write()
            && let Some(a) = inner
                .anomalies
                .iter_mut()
                .rev()
                .find(|a| a.is_episode(key, pattern, onset_ms))
        {
            f(a);
        }
    }

    /// Applies an episode's change.
    pub fn apply(&self, event: &AnomalyEvent) {
        match event {
            AnomalyEvent::Opened(anomaly) => self.push(anomaly.clone()),
            AnomalyEvent::Updated {
                key,
                pattern,
                onset_ms,
                windows,
                ..
            } => self.update(key, pattern, *onset_ms, |a| a.windows = *windows),
            AnomalyEvent::Ended {
                key,
                pattern,
                onset_ms,
                ended_ms,
            } => self.update(key, pattern, *onset_ms, |a| a.ended_ms = Some(*ended_ms)),
        }
    }

    /// Drops anomalies that ended at or before `horizon_ms`.
    pub fn retain_after(&self, horizon_ms: i64) {
        if let Ok(mut inner) = self.inner.write() {
            inner
                .anomalies
                .retain(|a| a.ended_ms.is_none_or(|end| end > horizon_ms));
        }
    }

    /// A copy of every anomaly held, oldest first.
    pub fn snapshot(&self) -> Vec<Anomaly> {
        self.inner
            .read()
            .map(|i| i.anomalies.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Number held.
    pub fn len(&self) -> usize {
        self.inner.read().map(|i| i.anomalies.len()).unwrap_or(0)
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `anomalies` table.
    pub fn to_batch(&self) -> Result<RecordBatch, ArrowError> {
        to_batch(&self.snapshot())
    }
}

/// Schema of the `anomalies` SQL table.
pub fn schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        let ts = crate::read_model::timestamp_field;
        let utf8 = |name: &str| Field::new(name, DataType::Utf8, false);
        Arc::new(Schema::new(vec![
            ts("onset", false),
            ts("detected", false),
            ts("ended", true),
            utf8("class"),
            utf8("pattern"),
            utf8("service"),
            utf8("signal"),
            utf8("name"),
            utf8("attributes"),
            Field::new("observed", DataType::Float64, true),
            Field::new("expected", DataType::Float64, true),
            Field::new("score", DataType::Float64, false),
            Field::new("windows", DataType::UInt64, false),
            utf8("detail"),
        ]))
    });
    SCHEMA.clone()
}

fn to_batch(anomalies: &[Anomaly]) -> Result<RecordBatch, ArrowError> {
    let ts = || TimestampMillisecondBuilder::new().with_timezone("UTC");
    let (mut onset, mut detected, mut ended) = (ts(), ts(), ts());
    let mut strings: Vec<StringBuilder> = (0..6).map(|_| StringBuilder::new()).collect();
    let (mut observed, mut expected, mut score) = (
        Float64Builder::new(),
        Float64Builder::new(),
        Float64Builder::new(),
    );
    let mut windows = UInt64Builder::new();
    let mut detail = StringBuilder::new();
    for a in anomalies {
        onset.append_value(a.onset_ms);
        detected.append_value(a.detected_ms);
        ended.append_option(a.ended_ms);
        for (b, v) in strings.iter_mut().zip([
            a.class.as_str(),
            &a.pattern,
            &a.key.service,
            &a.key.signal,
            &a.key.name,
            &a.key.attributes,
        ]) {
            b.append_value(v);
        }
        observed.append_option(Some(a.observed).filter(|v| v.is_finite()));
        expected.append_option(Some(a.expected).filter(|v| v.is_finite()));
        score.append_value(a.score);
        windows.append_value(a.windows);
        detail.append_value(&a.detail);
    }
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(onset.finish()),
        Arc::new(detected.finish()),
        Arc::new(ended.finish()),
    ];
    columns.extend(strings.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
    columns.push(Arc::new(observed.finish()));
    columns.push(Arc::new(expected.finish()));
    columns.push(Arc::new(score.finish()));
    columns.push(Arc::new(windows.finish()));
    columns.push(Arc::new(detail.finish()));
    RecordBatch::try_new(schema(), columns)
}
