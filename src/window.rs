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
pub mod instance_health;
pub mod inventory;
pub mod metric_series;
pub mod pairing;
pub mod quantiles;
pub mod tables;

mod identities;
mod ingest;
mod last_calls;
mod open_window;

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::AsArray;
use arrow::datatypes::{Float64Type, UInt64Type};
use arrow::error::ArrowError;
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
    spare_identities: Option<identities::IdentitySet>,
    counts: WindowCounts,
    edges: Vec<EdgeObservation>,
    last_calls: last_calls::LastCalls,
    /// `window.early_look` in ms of a window (0: never), and the start of the
    /// last window offered early.
    early_ms: i64,
    looked_ms: i64,
}

/// Hash maps of the hot path: foldhash, randomly seeded per map (SipHash was a
/// tenth of the ingest profile).
/// Closed windows whose de-duplication sizes set the next windows' (one minute of
/// 10 s windows).
const RECENT_WINDOWS: usize = 6;

pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

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
            last_calls: last_calls::LastCalls::new(config.max_pending_pairs),
            early_ms: (config.early_look.clamp(0.0, 1.0) * size_ms as f64) as i64,
            looked_ms: i64::MIN,
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

    /// Pairing store counters; `overflow` includes the requests whose last
    /// call was not followed for want of room (`last_calls`).
    pub fn pairing_counts(&self) -> pairing::PairingCounts {
        let mut counts = self.pairing.counts();
        counts.overflow += self.last_calls.overflow();
        counts
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

    /// Reads the identity-set slots of `keys` (window, identity) ahead of their
    /// inserts, for the windows already open (see `IdentitySet::touch`).
    fn touch_identities(&self, keys: impl Iterator<Item = (i64, u64)> + Clone) {
        let Some((first, _)) = keys.clone().next() else {
            return;
        };
        if let Some(open) = self.open.get(&first) {
            open.touch_identities(keys.filter(|(w, _)| *w == first).map(|(_, id)| id));
        }
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

    /// The request and call statistics (`service_stats`, `operation_stats`,
    /// `edge_stats`; the other tables empty) of the open window the watermark
    /// is in, once per window, when the watermark is `window.early_look` of
    /// the way through it. Its `end_ms` is the watermark: the rows hold what
    /// arrived before it. The window stays open and closes as usual.
    pub fn early_look(&mut self, now_ns: u64) -> Result<Option<WindowTables>, ArrowError> {
        if self.early_ms <= 0 || self.max_event_ms == i64::MIN {
            return Ok(None);
        }
        let watermark = self.watermark_ms(now_ns);
        if watermark <= i64::MIN + self.lateness_ms {
            return Ok(None);
        }
        let start = watermark - watermark.rem_euclid(self.size_ms);
        if watermark - start < self.early_ms
            || start <= self.looked_ms
            || start < self.closed_through_ms
        {
            return Ok(None);
        }
        let Some(window) = self.open.get(&start) else {
            return Ok(None);
        };
        self.looked_ms = start;
        let [service, operation, edge] = window.span_tables(start, watermark)?;
        let empty = |index| tables::TableBuilder::new(index, start, watermark).finish();
        Ok(Some(WindowTables {
            start_ms: start,
            end_ms: watermark,
            batches: [service, operation, edge, empty(3)?, empty(4)?],
        }))
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
        self.last_calls.close_through(through_ms);
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
