//! Event-time tumbling windows: watermarks, lateness, de-duplication and the
//! per-window aggregates (`service_stats`, `operation_stats`, `edge_stats`,
//! `metric_stats`, `log_stats`).
//!
//! [`Windows`] is a pure state machine: batches in, closed [`WindowTables`] out.
//! It reads no clock of its own (the caller passes processing time where needed), so
//! a replay of recorded telemetry gives the same windows as living through it.
//!
//! - A record belongs to the window holding its event time (span end, data point
//!   time, log time).
//! - Each input (the OTLP receivers together; each Kafka topic-partition) has its
//!   own watermark = newest event time it delivered - `allowed_lateness`. The window
//!   watermark is the smallest watermark of the inputs that delivered data within
//!   `idle_timeout` of processing time, so a fast partition cannot make a slower
//!   one's records late, and a silent one cannot hold windows open. A window closes
//!   when its end is at or before the watermark. Records for closed windows are
//!   late: counted and dropped.
//! - Requests (`service_stats`, `operation_stats`) are SERVER and CONSUMER spans, plus
//!   spans without a kind that are roots or whose parent is in another service.
//! - Within an open window a record is counted once: spans by (trace_id, span_id),
//!   metric points by (series, time), logs by their whole content.

pub mod config;
pub mod deployments;
pub mod metric_series;
pub mod pairing;
pub mod quantiles;
pub mod tables;

mod open_window;

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    Array, AsArray, BooleanArray, FixedSizeBinaryArray, Float64Array, Int32Array, ListArray,
    StringArray, UInt64Array,
};
use arrow::datatypes::{Float64Type, UInt64Type};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

use crate::columnar::spans::{STATUS_ERROR, kind};
use crate::columnar::{Decoded, Signal};
pub use config::WindowConfig;
use metric_series::{CumulativeState, MetricType, PointValue};
use open_window::OpenWindow;
use pairing::{EdgeObservation, EntryKey, PairSpan, PairingStore};
pub use tables::{TABLE_NAMES, WindowTables};

const NANOS_PER_MS: i64 = 1_000_000;

/// What the window stage counted while ingesting (monotonic totals).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WindowCounts {
    /// Records accepted into an open window.
    pub accepted: u64,
    /// Records for windows already closed, dropped.
    pub late: u64,
    /// Records already counted in their window (redeliveries), dropped.
    pub duplicates: u64,
    /// Records stamped too far in the future, dropped.
    pub future: u64,
    /// Records dropped because their table hit `max_series` in the window.
    pub series_overflow: u64,
    /// Records counted without de-duplication because the identity set was full.
    pub dedup_overflow: u64,
    /// Edges completed after their window closed.
    pub late_edges: u64,
    /// Windows closed.
    pub windows_closed: u64,
}

/// The newest event time one input delivered, and when it last delivered anything.
#[derive(Debug, Clone, Copy)]
struct InputClock {
    max_event_ms: i64,
    last_seen_ns: u64,
}

/// What must survive a restart for the windows to continue exactly.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Every window ending at or before this (ms) is closed.
    pub closed_through_ms: i64,
    /// Newest event time seen when the checkpoint was taken (ms).
    pub max_event_ms: i64,
    /// Last cumulative point per metric series.
    pub cumulative: Vec<(String, PointValue)>,
}

/// The window state machine.
#[derive(Debug)]
pub struct Windows {
    size_ms: i64,
    lateness_ms: i64,
    ttl_ns: u64,
    max_series: usize,
    max_dedup: usize,
    max_future_ns: u64,
    open: BTreeMap<i64, OpenWindow>,
    closed_through_ms: i64,
    max_event_ms: i64,
    inputs: FastMap<u64, InputClock>,
    current_input: u64,
    idle_ns: u64,
    pairing: PairingStore,
    cumulative: CumulativeState,
    interned: FastMap<Box<str>, Arc<str>>,
    /// Identities the last closed windows held (a ring).
    recent_identities: [usize; RECENT_WINDOWS],
    closed_count: usize,
    /// Identities a busy window is given room for at once: the most any of the last
    /// closed windows held, plus an eighth. A steady load so keeps one table size
    /// (memory stays flat instead of flipping between two sizes), and a window does
    /// not rehash its way up while it fills. Set as windows close.
    expected_identities: usize,
    /// The last closed window's identity set, cleared, for the next busy window.
    spare_identities: Option<FastSet<u64>>,
    counts: WindowCounts,
    edges: Vec<EdgeObservation>,
}

fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> Result<&'a T, ArrowError> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| ArrowError::SchemaError(format!("batch lacks column {name}")))
}

fn id_u128(bytes: &[u8]) -> u128 {
    let mut buf = [0u8; 16];
    let n = bytes.len().min(16);
    buf[..n].copy_from_slice(&bytes[..n]);
    u128::from_be_bytes(buf)
}

fn id_u64(bytes: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    let n = bytes.len().min(8);
    buf[..n].copy_from_slice(&bytes[..n]);
    u64::from_be_bytes(buf)
}

/// What de-duplication decided for one span (see `Windows::span_verdicts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Beyond `window.max_future_skew`.
    Future,
    /// For a closed window.
    Late,
    /// New (or not remembered: the identity set is full); counted.
    Counted,
    /// Seen before in its window.
    Repeat,
}

fn opt(a: &StringArray, i: usize) -> Option<&str> {
    a.is_valid(i).then(|| a.value(i)).filter(|s| !s.is_empty())
}

/// Hash maps of the hot path: foldhash, randomly seeded per map (SipHash was a
/// tenth of the ingest profile).
/// Closed windows whose de-duplication sizes set the next windows' (one minute of
/// 10 s windows).
const RECENT_WINDOWS: usize = 6;

pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
/// Hash sets of the hot path.
pub(crate) type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// A record identity for de-duplication: fixed-seeded, so the same record hashes
/// the same in every window.
fn hash_of(parts: impl std::hash::Hash) -> u64 {
    use std::hash::BuildHasher;
    foldhash::quality::FixedState::with_seed(0x686f_6d65_6f73_7461).hash_one(parts)
}

struct ServiceColumns<'a> {
    namespace: &'a StringArray,
    name: &'a StringArray,
    environment: &'a StringArray,
}

impl<'a> ServiceColumns<'a> {
    fn of(batch: &'a RecordBatch) -> Result<Self, ArrowError> {
        Ok(ServiceColumns {
            namespace: column(batch, "service_namespace")?,
            name: column(batch, "service_name")?,
            environment: column(batch, "deployment_environment")?,
        })
    }

    fn row(&self, i: usize) -> [&'a str; 3] {
        [
            self.namespace.value(i),
            self.name.value(i),
            self.environment.value(i),
        ]
    }
}

impl Windows {
    /// Empty windows configured by `config`.
    pub fn new(config: &WindowConfig) -> Self {
        let size_ms = (config.size.as_millis() as i64).max(1);
        Windows {
            size_ms,
            lateness_ms: config.allowed_lateness.as_millis() as i64,
            ttl_ns: config.pair_ttl.as_nanos() as u64,
            max_series: config.max_series,
            max_dedup: config.max_dedup_keys,
            max_future_ns: config.max_future_skew.as_nanos() as u64,
            open: BTreeMap::new(),
            closed_through_ms: i64::MIN,
            max_event_ms: i64::MIN,
            inputs: FastMap::default(),
            current_input: 0,
            idle_ns: config.idle_timeout.as_nanos() as u64,
            pairing: PairingStore::new(
                config.pair_ttl.as_nanos() as u64,
                config.size.as_nanos() as u64,
                config.max_pending_pairs,
            ),
            cumulative: CumulativeState::new(),
            interned: FastMap::default(),
            recent_identities: [0; RECENT_WINDOWS],
            closed_count: 0,
            expected_identities: 0,
            spare_identities: None,
            counts: WindowCounts::default(),
            edges: Vec::new(),
        }
    }

    /// Continues from a checkpoint taken by [`Windows::checkpoint`].
    pub fn restore(&mut self, checkpoint: Checkpoint) {
        self.closed_through_ms = checkpoint.closed_through_ms;
        self.max_event_ms = checkpoint.max_event_ms;
        self.cumulative = checkpoint.cumulative.into_iter().collect();
    }

    /// The state to persist together with the windows closed so far.
    pub fn checkpoint(&self) -> Checkpoint {
        let mut cumulative: Vec<(String, PointValue)> = self
            .cumulative
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        cumulative.sort_by(|a, b| a.0.cmp(&b.0));
        Checkpoint {
            closed_through_ms: self.closed_through_ms,
            max_event_ms: self.max_event_ms,
            cumulative,
        }
    }

    /// Totals counted so far.
    pub fn counts(&self) -> WindowCounts {
        self.counts
    }

    /// Pairing store counters.
    pub fn pairing_counts(&self) -> pairing::PairingCounts {
        self.pairing.counts()
    }

    /// Spans waiting in the pairing store.
    pub fn pending_pairs(&self) -> usize {
        self.pairing.len()
    }

    /// A one-line account of the state's sizes (entries and allocated slots), for
    /// the debug log.
    pub fn footprint(&self) -> String {
        let (callers, callees) = self.pairing.slots();
        let seen: Vec<String> = self
            .open
            .values()
            .map(|w| format!("{}/{}", w.identities(), w.identity_slots()))
            .collect();
        format!(
            "pending_pairs={} caller_slots={callers} callee_slots={callees} dedup=[{}] spare_dedup_slots={} cumulative={}/{} interned={} edges_buf={}",
            self.pairing.len(),
            seen.join(","),
            self.spare_identities.as_ref().map_or(0, |s| s.capacity()),
            self.cumulative.len(),
            self.cumulative.capacity(),
            self.interned.len(),
            self.edges.capacity(),
        )
    }

    /// Windows still open.
    pub fn open_windows(&self) -> usize {
        self.open.len()
    }

    /// Every window ending at or before this (ms) is closed.
    pub fn closed_through_ms(&self) -> i64 {
        self.closed_through_ms
    }

    /// Window length in ms.
    pub fn size_ms(&self) -> i64 {
        self.size_ms
    }

    fn window_start(&self, time_ns: u64) -> i64 {
        let ms = (time_ns / NANOS_PER_MS as u64) as i64;
        ms - ms.rem_euclid(self.size_ms)
    }

    fn is_future(&self, time_ns: u64, now_ns: u64) -> bool {
        time_ns > now_ns.saturating_add(self.max_future_ns)
    }

    fn observe_event(&mut self, time_ns: u64) {
        let ms = (time_ns / NANOS_PER_MS as u64) as i64;
        self.max_event_ms = self.max_event_ms.max(ms);
        if let Some(clock) = self.inputs.get_mut(&self.current_input) {
            clock.max_event_ms = clock.max_event_ms.max(ms);
        }
    }

    /// Future and late records are counted and refused; otherwise the record's window.
    fn admit(&mut self, time_ns: u64, now_ns: u64) -> Option<i64> {
        if self.is_future(time_ns, now_ns) {
            self.counts.future += 1;
            return None;
        }
        let window = self.window_start(time_ns);
        if window < self.closed_through_ms {
            self.counts.late += 1;
            return None;
        }
        self.observe_event(time_ns);
        Some(window)
    }

    /// The open window `window` when `identity` is new to it; repeats are counted and
    /// refused, and a full identity set is counted (the record still counts).
    fn first_sighting(&mut self, window: i64, identity: u64) -> Option<&mut OpenWindow> {
        let expected = self.expected_identities;
        let open = self.open.entry(window).or_default();
        match open.first_sighting(
            identity,
            self.max_dedup,
            expected,
            &mut self.spare_identities,
        ) {
            Some(false) => {
                self.counts.duplicates += 1;
                return None;
            }
            None => self.counts.dedup_overflow += 1,
            Some(true) => {}
        }
        Some(open)
    }

    /// The open window starting at `start_ms`.
    fn open_window(&mut self, start_ms: i64) -> &mut OpenWindow {
        self.open.entry(start_ms).or_default()
    }

    fn intern(&mut self, name: &str) -> Arc<str> {
        if let Some(s) = self.interned.get(name) {
            return s.clone();
        }
        let s: Arc<str> = Arc::from(name);
        if self.interned.len() < 100_000 {
            self.interned.insert(name.into(), s.clone());
        }
        s
    }

    /// Ingests one decoded batch. `now_ns` is processing time, used only to refuse
    /// records stamped far in the future. Returns the event time (ms) after which every
    /// record of the batch is in closed windows and no longer needed for pairing: once
    /// the windows closed through that time are persisted, the batch's source may be
    /// acknowledged. `None` when nothing of the batch is retained.
    /// `input` names the stream the batch came from (see the module docs).
    pub fn ingest(
        &mut self,
        decoded: &Decoded,
        input: u64,
        now_ns: u64,
    ) -> Result<Option<i64>, ArrowError> {
        self.current_input = input;
        let clock = self.inputs.entry(input).or_insert(InputClock {
            max_event_ms: i64::MIN,
            last_seen_ns: now_ns,
        });
        clock.last_seen_ns = now_ns;
        match decoded.signal {
            Signal::Traces => self.ingest_spans(&decoded.batch, now_ns),
            Signal::Metrics => self.ingest_metrics(&decoded.batch, now_ns),
            Signal::Logs => self.ingest_logs(&decoded.batch, now_ns),
        }
    }

    /// De-duplicates a batch's spans in one pass before any is aggregated. The
    /// identity sets outgrow the caches under load, so an insert is mostly a cache
    /// miss; issued back to back, the misses of neighbouring inserts can overlap,
    /// where one insert amid each span's other work waits its miss out alone.
    /// With the reuse of a closed window's set (`OpenWindow::first_sighting`):
    /// +13% spans per CPU-second under the load generator (30 s runs, alternated).
    fn span_verdicts(
        &mut self,
        end: &UInt64Array,
        trace_id: &FixedSizeBinaryArray,
        span_id: &FixedSizeBinaryArray,
        now_ns: u64,
    ) -> Vec<Verdict> {
        (0..end.len())
            .map(|i| {
                let end_ns = end.value(i);
                if self.is_future(end_ns, now_ns) {
                    return Verdict::Future;
                }
                let window = self.window_start(end_ns);
                if window < self.closed_through_ms {
                    return Verdict::Late;
                }
                let identity = hash_of((id_u128(trace_id.value(i)), id_u64(span_id.value(i))));
                match self.first_sighting(window, identity) {
                    Some(_) => Verdict::Counted,
                    None => Verdict::Repeat,
                }
            })
            .collect()
    }

    fn ingest_spans(
        &mut self,
        batch: &RecordBatch,
        now_ns: u64,
    ) -> Result<Option<i64>, ArrowError> {
        let services = ServiceColumns::of(batch)?;
        let trace_id: &FixedSizeBinaryArray = column(batch, "trace_id")?;
        let span_id: &FixedSizeBinaryArray = column(batch, "span_id")?;
        let parent: &FixedSizeBinaryArray = column(batch, "parent_span_id")?;
        let name: &StringArray = column(batch, "name")?;
        let kinds: &Int32Array = column(batch, "kind")?;
        let start: &UInt64Array = column(batch, "start_time_unix_nano")?;
        let end: &UInt64Array = column(batch, "end_time_unix_nano")?;
        let status: &Int32Array = column(batch, "status_code")?;
        let http_status: &Int32Array = column(batch, "http_status_code")?;
        let route: &StringArray = column(batch, "http_route")?;
        let db_system: &StringArray = column(batch, "db_system")?;
        let db_namespace: &StringArray = column(batch, "db_namespace")?;
        let server_address: &StringArray = column(batch, "server_address")?;
        let peer_service: &StringArray = column(batch, "peer_service")?;
        let ttl_ms = (self.ttl_ns / NANOS_PER_MS as u64) as i64;
        let mut release: Option<i64> = None;

        let verdicts = self.span_verdicts(end, trace_id, span_id, now_ns);
        for (i, verdict) in verdicts.into_iter().enumerate() {
            let end_ns = end.value(i);
            if verdict == Verdict::Future {
                self.counts.future += 1;
                continue;
            }
            let window = self.window_start(end_ns);
            let trace = id_u128(trace_id.value(i));
            let span = id_u64(span_id.value(i));
            let late = verdict == Verdict::Late;
            let kind = kinds.value(i);
            let has_parent = parent.is_valid(i);
            let duration_ms = end_ns.saturating_sub(start.value(i)) as f64 / 1e6;
            let http = http_status.is_valid(i).then(|| http_status.value(i));
            let server_like = matches!(kind, kind::SERVER | kind::CONSUMER)
                || (kind == kind::UNSPECIFIED && !has_parent);
            let error = status.value(i) == STATUS_ERROR
                || (matches!(kind, kind::SERVER | kind::UNSPECIFIED)
                    && http.is_some_and(|c| c >= 500));
            let service_row = services.row(i);
            if late {
                self.counts.late += 1;
            } else {
                self.observe_event(end_ns);
                if verdict == Verdict::Repeat {
                    continue;
                }
                let max_series = self.max_series;
                let open = self.open_window(window);
                let counted = !server_like || {
                    let operation = opt(route, i).unwrap_or(name.value(i));
                    open.add_request(service_row, operation, duration_ms, error, max_series)
                };
                self.counts.accepted += 1;
                if !counted {
                    self.counts.series_overflow += 1;
                }
            }
            // Late spans still feed the pairing store: after a restart they pair with
            // spans of windows that are still open.
            if late
                && end_ns.saturating_add(self.ttl_ns)
                    <= self.closed_through_ms.max(0).saturating_mul(NANOS_PER_MS) as u64
            {
                continue;
            }
            release = release.max(Some(window + self.size_ms + ttl_ms));
            if kind == kind::INTERNAL {
                continue;
            }
            let is_client = matches!(kind, kind::CLIENT | kind::UNSPECIFIED);
            let database = if is_client && opt(db_system, i).is_some() {
                opt(peer_service, i)
                    .or_else(|| opt(db_namespace, i))
                    .or_else(|| opt(server_address, i))
                    .or_else(|| opt(db_system, i))
            } else {
                None
            };
            let peer = if kind == kind::CLIENT && database.is_none() {
                opt(peer_service, i).or_else(|| opt(server_address, i))
            } else {
                None
            };
            let entry = (kind == kind::UNSPECIFIED && has_parent).then(|| {
                let operation = opt(route, i).unwrap_or(name.value(i));
                Arc::new(EntryKey {
                    service: service_row.map(|s| self.intern(s)),
                    operation: self.intern(operation),
                })
            });
            let span = PairSpan {
                entry,
                trace,
                span,
                parent: has_parent.then(|| id_u64(parent.value(i))),
                service: service_row[1],
                kind,
                end_ns,
                duration_ms,
                error,
                database,
                peer,
            };
            let mut edges = std::mem::take(&mut self.edges);
            self.pairing.offer(span, &mut edges);
            self.route_edges(&mut edges);
            self.edges = edges;
        }
        Ok(release)
    }

    fn route_edges(&mut self, edges: &mut Vec<EdgeObservation>) {
        for edge in edges.drain(..) {
            let window = self.window_start(edge.at_ns);
            if window < self.closed_through_ms {
                self.counts.late_edges += 1;
                continue;
            }
            let max_series = self.max_series;
            if !self.open_window(window).add_edge(&edge, max_series) {
                self.counts.series_overflow += 1;
            }
            if let Some(entry) = &edge.entry {
                let window = self.window_start(entry.end_ns);
                if window < self.closed_through_ms {
                    self.counts.late += 1;
                    continue;
                }
                let key = &entry.key;
                let service = [&*key.service[0], &*key.service[1], &*key.service[2]];
                if !self.open_window(window).add_request(
                    service,
                    &key.operation,
                    entry.duration_ms,
                    entry.error,
                    max_series,
                ) {
                    self.counts.series_overflow += 1;
                }
            }
        }
    }

    fn ingest_metrics(
        &mut self,
        batch: &RecordBatch,
        now_ns: u64,
    ) -> Result<Option<i64>, ArrowError> {
        let services = ServiceColumns::of(batch)?;
        let name: &StringArray = column(batch, "metric_name")?;
        let unit: &StringArray = column(batch, "metric_unit")?;
        let metric_type: &StringArray = column(batch, "metric_type")?;
        let temporality: &Int32Array = column(batch, "temporality")?;
        let monotonic: &BooleanArray = column(batch, "is_monotonic")?;
        let attributes: &StringArray = column(batch, "attributes")?;
        let start: &UInt64Array = column(batch, "start_time_unix_nano")?;
        let time: &UInt64Array = column(batch, "time_unix_nano")?;
        let value: &Float64Array = column(batch, "value")?;
        let count: &UInt64Array = column(batch, "count")?;
        let sum: &Float64Array = column(batch, "sum")?;
        let min: &Float64Array = column(batch, "min")?;
        let max: &Float64Array = column(batch, "max")?;
        let bounds: &ListArray = column(batch, "bucket_bounds")?;
        let bucket_counts: &ListArray = column(batch, "bucket_counts")?;
        let p99: &Float64Array = column(batch, "quantile_p99")?;
        let opt_f64 = |a: &Float64Array, i: usize| a.is_valid(i).then(|| a.value(i));
        let mut release = None;

        for i in 0..batch.num_rows() {
            let t = time.value(i);
            let Some(window) = self.admit(t, now_ns) else {
                continue;
            };
            let Some(kind) = MetricType::parse(metric_type.value(i)) else {
                continue;
            };
            let service_row = services.row(i);
            let identity = hash_of((
                service_row,
                name.value(i),
                kind.as_str(),
                attributes.value(i),
                t,
            ));
            let max_series = self.max_series;
            let Some(open) = self.first_sighting(window, identity) else {
                continue;
            };
            let mut point = PointValue {
                start_ns: start.value(i),
                time_ns: t,
                value: opt_f64(value, i).unwrap_or(0.0),
                count: if count.is_valid(i) { count.value(i) } else { 0 },
                sum: opt_f64(sum, i).unwrap_or(0.0),
                p99: opt_f64(p99, i),
                min: opt_f64(min, i),
                max: opt_f64(max, i),
                ..Default::default()
            };
            if bounds.is_valid(i) && bucket_counts.is_valid(i) {
                point.bounds = bounds
                    .value(i)
                    .as_primitive::<Float64Type>()
                    .values()
                    .to_vec();
                point.counts = bucket_counts
                    .value(i)
                    .as_primitive::<UInt64Type>()
                    .values()
                    .to_vec();
            }
            let added = open.add_point(
                service_row,
                name.value(i),
                unit.value(i),
                attributes.value(i),
                kind,
                temporality.value(i),
                monotonic.value(i),
                point,
                max_series,
            );
            if added {
                self.counts.accepted += 1;
                release = release.max(Some(window + self.size_ms));
            } else {
                self.counts.series_overflow += 1;
            }
        }
        Ok(release)
    }

    fn ingest_logs(&mut self, batch: &RecordBatch, now_ns: u64) -> Result<Option<i64>, ArrowError> {
        let services = ServiceColumns::of(batch)?;
        let time: &UInt64Array = column(batch, "time_unix_nano")?;
        let severity_number: &Int32Array = column(batch, "severity_number")?;
        let severity: &StringArray = column(batch, "severity")?;
        let body: &StringArray = column(batch, "body")?;
        let trace_id: &FixedSizeBinaryArray = column(batch, "trace_id")?;
        let span_id: &FixedSizeBinaryArray = column(batch, "span_id")?;
        let event_name: &StringArray = column(batch, "event_name")?;
        let mut release = None;
        for i in 0..batch.num_rows() {
            let t = time.value(i);
            let Some(window) = self.admit(t, now_ns) else {
                continue;
            };
            let service_row = services.row(i);
            let trace = trace_id.is_valid(i).then(|| trace_id.value(i));
            let span = span_id.is_valid(i).then(|| span_id.value(i));
            let identity = hash_of((
                service_row,
                t,
                severity_number.value(i),
                body.value(i),
                trace,
                span,
                event_name.value(i),
            ));
            let max_series = self.max_series;
            let Some(open) = self.first_sighting(window, identity) else {
                continue;
            };
            if open.add_log(service_row, severity.value(i), max_series) {
                self.counts.accepted += 1;
                release = release.max(Some(window + self.size_ms));
            } else {
                self.counts.series_overflow += 1;
            }
        }
        Ok(release)
    }

    /// Declares the inputs that exist now (assigned Kafka partitions): a new input
    /// holds the watermark back until it delivers data or stays silent for
    /// `idle_timeout`; inputs not listed are forgotten (input 0, OTLP, is kept).
    pub fn set_inputs(&mut self, inputs: &[u64], now_ns: u64) {
        self.inputs.retain(|id, _| *id == 0 || inputs.contains(id));
        for id in inputs {
            self.inputs.entry(*id).or_insert(InputClock {
                max_event_ms: i64::MIN,
                last_seen_ns: now_ns,
            });
        }
    }

    /// The watermark (ms) at processing time `now_ns`: the smallest newest-event-time
    /// of the active inputs, minus the allowed lateness.
    pub fn watermark_ms(&self, now_ns: u64) -> i64 {
        let idle_ns = self.idle_ns;
        let active = self
            .inputs
            .values()
            .filter(|c| now_ns.saturating_sub(c.last_seen_ns) < idle_ns)
            .map(|c| c.max_event_ms)
            .min();
        let newest = match active {
            Some(newest) => newest,
            None => self.max_event_ms,
        };
        newest.saturating_sub(self.lateness_ms)
    }

    /// Closes every window that ends at or before the watermark.
    pub fn advance(&mut self, now_ns: u64) -> Result<Vec<WindowTables>, ArrowError> {
        let watermark = self.watermark_ms(now_ns);
        if watermark <= i64::MIN + self.lateness_ms || self.max_event_ms == i64::MIN {
            return Ok(Vec::new());
        }
        let through = watermark - watermark.rem_euclid(self.size_ms);
        self.close_through(through)
    }

    /// Closes every open window and empties the pairing store (input went idle, or
    /// the engine is stopping): afterwards nothing ingested so far is still needed.
    pub fn close_all(&mut self) -> Result<Vec<WindowTables>, ArrowError> {
        let mut edges = std::mem::take(&mut self.edges);
        self.pairing.expire(u64::MAX, &mut edges);
        self.route_edges(&mut edges);
        self.edges = edges;
        match self.open.last_key_value() {
            Some((start, _)) => {
                let through = start + self.size_ms;
                self.close_through(through)
            }
            None => Ok(Vec::new()),
        }
    }

    fn close_through(&mut self, through_ms: i64) -> Result<Vec<WindowTables>, ArrowError> {
        if through_ms <= self.closed_through_ms {
            return Ok(Vec::new());
        }
        let mut edges = std::mem::take(&mut self.edges);
        self.pairing.expire(
            through_ms.max(0).saturating_mul(NANOS_PER_MS) as u64,
            &mut edges,
        );
        self.route_edges(&mut edges);
        self.edges = edges;
        self.closed_through_ms = through_ms;
        let mut closed = Vec::new();
        while let Some(entry) = self.open.first_entry() {
            if *entry.key() >= through_ms {
                break;
            }
            let (start, mut window) = entry.remove_entry();
            self.recent_identities[self.closed_count % RECENT_WINDOWS] = window.identities();
            let set = window.take_identities();
            if set.capacity() > self.spare_identities.as_ref().map_or(0, |s| s.capacity()) {
                self.spare_identities = Some(set);
            }
            self.closed_count += 1;
            let most = self.recent_identities.iter().copied().max().unwrap_or(0);
            self.expected_identities = (most + most / 8).min(self.max_dedup);
            // A spare far larger than the load now needs is memory held for nothing.
            if self
                .spare_identities
                .as_ref()
                .is_some_and(|set| set.capacity() / 4 > self.expected_identities.max(1024))
            {
                self.spare_identities = None;
            }
            let tables = window.finish(start, start + self.size_ms, &mut self.cumulative)?;
            self.counts.windows_closed += 1;
            closed.push(tables);
        }
        Ok(closed)
    }

    /// Forgets cumulative series not updated within `retain_ms` of event time.
    pub fn evict_stale_series(&mut self, retain_ms: i64) {
        let horizon_ns = self
            .closed_through_ms
            .saturating_sub(retain_ms)
            .max(0)
            .saturating_mul(NANOS_PER_MS) as u64;
        self.cumulative.retain(|_, p| p.time_ns >= horizon_ns);
    }
}

#[cfg(test)]
mod tests;
