//! Batches into the open windows: spans (de-duplication, requests, the pairing
//! store's edges), metric points and log records. Split from `window.rs`, whose
//! `Windows` these methods extend.

use arrow::array::{
    Array, BooleanArray, FixedSizeBinaryArray, Float64Array, Int32Array, ListArray, StringArray,
    UInt64Array,
};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

use super::*;
use crate::window::open_window::{EdgeId, ServiceKey};
use crate::window::pairing::span_key;

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

/// For each row of `batch`, the index of its run of rows from one resource
/// (`runs`: their lengths); each row is a run of its own when `runs` does not
/// cover the batch.
fn run_ids(runs: &[usize], batch: &RecordBatch) -> impl Iterator<Item = usize> {
    let rows = batch.num_rows();
    let known = runs.iter().sum::<usize>() == rows;
    let per_run = runs
        .iter()
        .enumerate()
        .flat_map(|(run, n)| std::iter::repeat_n(run, *n))
        .take(if known { rows } else { 0 });
    per_run.chain((0..rows).skip(if known { rows } else { 0 }))
}

fn opt(a: &StringArray, i: usize) -> Option<&str> {
    a.is_valid(i).then(|| a.value(i)).filter(|s| !s.is_empty())
}

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
            Signal::Traces => self.ingest_spans(&decoded.batch, &decoded.resource_runs, now_ns),
            Signal::Metrics => self.ingest_metrics(&decoded.batch, now_ns),
            Signal::Logs => self.ingest_logs(&decoded.batch, now_ns),
        }
    }

    /// De-duplicates a batch's spans in one pass before any is aggregated. The
    /// identity sets outgrow the caches under load, so an insert is mostly a cache
    /// miss: the batch's identities are computed first, their slots read together
    /// (`IdentitySet::touch`) so that the misses overlap, and only then inserted.
    fn span_verdicts(
        &mut self,
        end: &UInt64Array,
        trace_id: &FixedSizeBinaryArray,
        span_id: &FixedSizeBinaryArray,
        now_ns: u64,
    ) -> Vec<Verdict> {
        let keys: Vec<Result<(i64, u64), Verdict>> = (0..end.len())
            .map(|i| {
                let end_ns = end.value(i);
                if self.is_future(end_ns, now_ns) {
                    return Err(Verdict::Future);
                }
                let window = self.window_start(end_ns);
                if window < self.closed_through_ms {
                    return Err(Verdict::Late);
                }
                let identity = hash_of((id_u128(trace_id.value(i)), id_u64(span_id.value(i))));
                Ok((window, identity))
            })
            .collect();
        self.touch_identities(keys.iter().filter_map(|key| key.ok()));
        keys.into_iter()
            .map(|key| match key {
                Err(verdict) => verdict,
                Ok((window, identity)) => match self.first_sighting(window, identity) {
                    Some(_) => Verdict::Counted,
                    None => Verdict::Repeat,
                },
            })
            .collect()
    }

    fn ingest_spans(
        &mut self,
        batch: &RecordBatch,
        runs: &[usize],
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
        let destination: &StringArray = column(batch, "messaging_destination")?;
        let ttl_ms = (self.ttl_ns / NANOS_PER_MS as u64) as i64;
        let mut release: Option<i64> = None;

        let verdicts = self.span_verdicts(end, trace_id, span_id, now_ns);
        // A run of rows from one resource has one service: its key is looked up
        // once per run and window, not once per span.
        let mut service_key: Option<(usize, i64, ServiceKey)> = None;
        for ((i, verdict), run) in verdicts.into_iter().enumerate().zip(run_ids(runs, batch)) {
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
                    let key = match service_key {
                        Some((r, w, key)) if r == run && w == window => key,
                        _ => {
                            let key = open.service(service_row);
                            service_key = Some((run, window, key));
                            key
                        }
                    };
                    open.add_service_request(key, operation, duration_ms, error, max_series)
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
            let parent_id = has_parent.then(|| id_u64(parent.value(i)));
            if kind == kind::CLIENT
                && let Some(parent_id) = parent_id
            {
                self.last_calls.call(
                    span_key(trace, parent_id),
                    span_key(trace, span),
                    start.value(i),
                    end_ns,
                );
            }
            let span = PairSpan {
                entry,
                trace,
                span,
                parent: parent_id,
                service: service_row,
                kind,
                end_ns,
                duration_ms,
                error,
                database,
                peer,
                destination: (kind == kind::PRODUCER)
                    .then(|| opt(destination, i))
                    .flatten(),
            };
            let mut edges = std::mem::take(&mut self.edges);
            self.pairing.offer(span, &mut edges);
            self.route_edges(&mut edges);
            self.edges = edges;
        }
        // A batch need not list a parent after its children: its spans count
        // as arrived once the whole batch has been offered.
        for i in 0..batch.num_rows() {
            let (trace, span) = (id_u128(trace_id.value(i)), id_u64(span_id.value(i)));
            if let Some((window, edge)) = self.last_calls.span_arrived(trace, span) {
                self.count_last_call(window, &edge);
            }
        }
        Ok(release)
    }

    /// Counts a call on `edge` of window `window` as the last of its request,
    /// if that window is still open.
    fn count_last_call(&mut self, window: i64, edge: &EdgeId) {
        if let Some(open) = self.open.get_mut(&window) {
            open.count_last_call(edge);
        }
    }

    pub(super) fn route_edges(&mut self, edges: &mut Vec<EdgeObservation>) {
        for edge in edges.drain(..) {
            let window = self.window_start(edge.at_ns);
            if window < self.closed_through_ms {
                self.counts.late_edges += 1;
                continue;
            }
            let max_series = self.max_series;
            match self.open_window(window).add_edge(&edge, max_series) {
                Some(id) => {
                    if self.last_calls.paired(edge.caller_key, window, id) {
                        self.count_last_call(window, &id);
                    }
                }
                None => self.counts.series_overflow += 1,
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
        // Identities first, their slots read together, then the inserts (as spans).
        let keys: Vec<Option<(i64, u64)>> = (0..batch.num_rows())
            .map(|i| {
                let t = time.value(i);
                let window = self.admit(t, now_ns)?;
                let trace = trace_id.is_valid(i).then(|| trace_id.value(i));
                let span = span_id.is_valid(i).then(|| span_id.value(i));
                let identity = hash_of((
                    services.row(i),
                    t,
                    severity_number.value(i),
                    body.value(i),
                    trace,
                    span,
                    event_name.value(i),
                ));
                Some((window, identity))
            })
            .collect();
        self.touch_identities(keys.iter().flatten().copied());
        let mut release = None;
        for (i, key) in keys.into_iter().enumerate() {
            let Some((window, identity)) = key else {
                continue;
            };
            let max_series = self.max_series;
            let Some(open) = self.first_sighting(window, identity) else {
                continue;
            };
            if open.add_log(services.row(i), severity.value(i), max_series) {
                self.counts.accepted += 1;
                release = release.max(Some(window + self.size_ms));
            } else {
                self.counts.series_overflow += 1;
            }
        }
        Ok(release)
    }
}
