//! Per-instance health per window, for services that run several instances:
//! what a canary remediation is judged by (did the instances acted on recover
//! while the others still show the fault?).
//!
//! Per (service, instance, window): requests (SERVER and CONSUMER spans, and
//! roots without a kind), errors among them, their summed duration, and the
//! mean of each gauge or non-monotonic sum reported (by metric name, over all
//! its points and attribute sets). Instances are named as in the inventory
//! (the pod, else `service.instance.id`). Services with one live instance are
//! skipped: nothing to compare.
//!
//! Records are counted as they arrive, before the windows' de-duplication: a
//! redelivered batch counts twice, which moves the counts but not the ratios
//! the canary reads (error rate, mean duration, mean gauge). Records for
//! windows already closed are dropped.
//!
//! Memory: at most [`MAX_ROWS`] (service, instance, window) rows open, each
//! with at most [`MAX_GAUGES`] gauges; past that, records are dropped and
//! counted ([`InstanceHealth::dropped`]).

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray, StringArray};
use arrow::datatypes::{Float64Type, Int32Type, UInt64Type};
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

use super::FastMap;
use super::inventory::Inventory;
use crate::columnar::spans::{STATUS_ERROR, kind};

/// Open (service, instance, window) rows kept at most.
pub const MAX_ROWS: usize = 100_000;
/// Gauges kept per row.
pub const MAX_GAUGES: usize = 64;

/// One instance's health in one window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InstanceRow {
    pub namespace: String,
    pub service: String,
    pub environment: String,
    pub instance: String,
    pub requests: u64,
    pub errors: u64,
    /// Summed duration of the requests, ms.
    pub duration_ms: f64,
    /// (metric name, mean of its points in the window).
    pub gauges: Vec<(String, f64)>,
}

/// The instance rows of one closed window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InstanceWindow {
    pub start_ms: i64,
    pub end_ms: i64,
    pub rows: Vec<InstanceRow>,
}

/// Sums of one (service, instance) in one window.
#[derive(Debug, Default)]
struct Sums {
    requests: u64,
    errors: u64,
    duration_ms: f64,
    /// (metric name, sum, points).
    gauges: Vec<(String, f64, u64)>,
}

type Key = ([String; 3], String);

/// The accumulating rows of the open windows.
#[derive(Debug)]
pub struct InstanceHealth {
    window_ms: i64,
    open: BTreeMap<i64, FastMap<Key, Sums>>,
    rows: usize,
    dropped: u64,
}

/// A batch's columns the tracker reads, by name.
struct Columns<'a> {
    ns: &'a StringArray,
    svc: &'a StringArray,
    env: &'a StringArray,
    id: &'a StringArray,
    pod: &'a StringArray,
}

impl<'a> Columns<'a> {
    fn of(batch: &'a RecordBatch) -> Option<Self> {
        let text = |name: &str| super::deployments::text_column(batch, name);
        Some(Self {
            ns: text("service_namespace")?,
            svc: text("service_name")?,
            env: text("deployment_environment")?,
            id: text("service_instance_id")?,
            pod: text("k8s_pod_name")?,
        })
    }

    fn identity(&self, i: usize) -> [&'a str; 4] {
        [
            self.ns.value(i),
            self.svc.value(i),
            self.env.value(i),
            super::inventory::instance_name(self.pod, self.id, i),
        ]
    }
}

impl InstanceHealth {
    pub fn new(window_ms: i64) -> Self {
        Self {
            window_ms: window_ms.max(1),
            open: BTreeMap::new(),
            rows: 0,
            dropped: 0,
        }
    }

    /// Records dropped for want of room.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Counts a spans batch's requests, for instances of services that run
    /// several; windows starting before `closed_through_ms` are closed.
    pub fn observe_spans(&mut self, batch: &RecordBatch, inv: &Inventory, closed_through_ms: i64) {
        if !inv.any_several() {
            return;
        }
        let (Some(cols), Some(kinds), Some(status), Some(start), Some(end), Some(parent)) = (
            Columns::of(batch),
            batch
                .column_by_name("kind")
                .and_then(|c| c.as_primitive_opt::<Int32Type>()),
            batch
                .column_by_name("status_code")
                .and_then(|c| c.as_primitive_opt::<Int32Type>()),
            batch
                .column_by_name("start_time_unix_nano")
                .and_then(|c| c.as_primitive_opt::<UInt64Type>()),
            batch
                .column_by_name("end_time_unix_nano")
                .and_then(|c| c.as_primitive_opt::<UInt64Type>()),
            batch.column_by_name("parent_span_id"),
        ) else {
            return;
        };
        let mut run = Run::default();
        for i in 0..batch.num_rows() {
            let k = kinds.value(i);
            let request = k == kind::SERVER
                || k == kind::CONSUMER
                || (k == kind::UNSPECIFIED && parent.is_null(i));
            if !request {
                continue;
            }
            let at_ms = (end.value(i) / 1_000_000) as i64;
            let Some(sums) = self.row(&mut run, &cols, i, at_ms, inv, closed_through_ms) else {
                continue;
            };
            sums.requests += 1;
            sums.errors += u64::from(status.value(i) == STATUS_ERROR);
            sums.duration_ms += end.value(i).saturating_sub(start.value(i)) as f64 / 1e6;
        }
    }

    /// Averages a metrics batch's gauges and non-monotonic sums per instance.
    pub fn observe_metrics(
        &mut self,
        batch: &RecordBatch,
        inv: &Inventory,
        closed_through_ms: i64,
    ) {
        if !inv.any_several() {
            return;
        }
        let text = |name: &str| super::deployments::text_column(batch, name);
        let (Some(cols), Some(name), Some(kind), Some(monotonic), Some(time), Some(value)) = (
            Columns::of(batch),
            text("metric_name"),
            text("metric_type"),
            batch
                .column_by_name("is_monotonic")
                .and_then(|c| c.as_boolean_opt()),
            batch
                .column_by_name("time_unix_nano")
                .and_then(|c| c.as_primitive_opt::<UInt64Type>()),
            batch
                .column_by_name("value")
                .and_then(|c| c.as_primitive_opt::<Float64Type>()),
        ) else {
            return;
        };
        let mut run = Run::default();
        for i in 0..batch.num_rows() {
            let level = kind.value(i) == "gauge" || (kind.value(i) == "sum" && !monotonic.value(i));
            if !level || !value.is_valid(i) || !value.value(i).is_finite() {
                continue;
            }
            let at_ms = (time.value(i) / 1_000_000) as i64;
            let Some(sums) = self.row(&mut run, &cols, i, at_ms, inv, closed_through_ms) else {
                continue;
            };
            let metric = name.value(i);
            let v = value.value(i);
            match sums.gauges.iter().position(|g| g.0 == metric) {
                Some(at) => {
                    sums.gauges[at].1 += v;
                    sums.gauges[at].2 += 1;
                }
                None if sums.gauges.len() < MAX_GAUGES => {
                    sums.gauges.push((metric.to_string(), v, 1));
                }
                None => self.dropped += 1,
            }
        }
    }

    /// The sums of row `i`'s (service, instance, window), or `None` when it
    /// is not tracked (one instance, no instance id, closed, no room).
    fn row<'a>(
        &mut self,
        run: &mut Run<'a>,
        cols: &Columns<'a>,
        i: usize,
        at_ms: i64,
        inv: &Inventory,
        closed_through_ms: i64,
    ) -> Option<&mut Sums> {
        let start = at_ms - at_ms.rem_euclid(self.window_ms);
        if start < closed_through_ms {
            return None;
        }
        // Rows of one resource repeat its identity: the inventory is asked
        // once per run of equal identities, not per record.
        let identity = cols.identity(i);
        if run.identity != Some(identity) {
            let [ns, svc, env, instance] = identity;
            let tracked = !instance.is_empty() && inv.instances([ns, svc, env]) > 1;
            run.key = tracked.then(|| ([ns, svc, env].map(str::to_string), instance.to_string()));
            run.identity = Some(identity);
        }
        let key = run.key.as_ref()?;
        let window = self.open.entry(start).or_default();
        if !window.contains_key(key) {
            if self.rows >= MAX_ROWS {
                self.dropped += 1;
                return None;
            }
            self.rows += 1;
            window.insert(key.clone(), Sums::default());
        }
        window.get_mut(key)
    }

    /// The windows that ended at or before `closed_through_ms`, oldest first.
    pub fn close(&mut self, closed_through_ms: i64) -> Vec<InstanceWindow> {
        let mut closed = Vec::new();
        while let Some(entry) = self.open.first_entry() {
            let start = *entry.key();
            if start + self.window_ms > closed_through_ms {
                break;
            }
            let sums = entry.remove();
            self.rows -= sums.len();
            closed.push(finish(start, start + self.window_ms, sums));
        }
        closed
    }
}

/// The identity of the last record looked at, and its key when it is
/// tracked (built once per run of records of one resource).
#[derive(Default)]
struct Run<'a> {
    identity: Option<[&'a str; 4]>,
    key: Option<Key>,
}

fn finish(start_ms: i64, end_ms: i64, sums: FastMap<Key, Sums>) -> InstanceWindow {
    let mut rows: Vec<InstanceRow> = sums
        .into_iter()
        .map(
            |(([namespace, service, environment], instance), s)| InstanceRow {
                namespace,
                service,
                environment,
                instance,
                requests: s.requests,
                errors: s.errors,
                duration_ms: s.duration_ms,
                gauges: s
                    .gauges
                    .into_iter()
                    .map(|(name, sum, n)| (name, sum / n as f64))
                    .collect(),
            },
        )
        .collect();
    rows.sort_by(|a, b| (&a.service, &a.instance).cmp(&(&b.service, &b.instance)));
    InstanceWindow {
        start_ms,
        end_ms,
        rows,
    }
}

#[cfg(test)]
#[path = "instance_health_tests.rs"]
mod tests;
