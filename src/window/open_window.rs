//! The aggregates of one open window, keyed by interned strings.

use arrow::error::ArrowError;

use super::FastMap;
use super::identities::IdentitySet;
use super::metric_series::{CumulativeState, MetricType, PointValue, SeriesAccumulator};
use super::pairing::{CalleeKind, EdgeObservation, node_parts};
use super::tables::{Red, TableBuilder, WindowTables};

/// (service.namespace, service.name, deployment.environment), interned.
pub(crate) type ServiceKey = [u32; 3];

/// Interns strings so hot-path keys are integers; allocates only for new strings.
#[derive(Debug, Default)]
struct Interner {
    ids: FastMap<Box<str>, u32>,
    strings: Vec<Box<str>>,
}

impl Interner {
    fn id(&mut self, s: &str) -> u32 {
        if let Some(id) = self.ids.get(s) {
            return *id;
        }
        let id = self.strings.len() as u32;
        self.strings.push(s.into());
        self.ids.insert(s.into(), id);
        id
    }

    fn get(&self, id: u32) -> &str {
        self.strings.get(id as usize).map(|s| &**s).unwrap_or("")
    }
}

type SeriesId = (ServiceKey, u32, u32, u8);

/// An edge of one window: caller and callee as ids of its interner, callee kind.
pub(super) type EdgeId = (u32, u32, CalleeKind);

/// The call an edge row points to as its example: the first failed call, else the
/// slowest (ties to the lower trace id, so equal input gives equal tables).
#[derive(Debug, Default, Clone, Copy)]
struct Exemplar {
    trace: u128,
    duration_ms: f64,
    error: bool,
}

impl Exemplar {
    fn offer(&mut self, trace: u128, duration_ms: f64, error: bool) {
        if trace == 0 {
            return;
        }
        let better = self.trace == 0
            || (error, duration_ms, std::cmp::Reverse(trace))
                > (self.error, self.duration_ms, std::cmp::Reverse(self.trace));
        if better {
            *self = Exemplar {
                trace,
                duration_ms,
                error,
            };
        }
    }

    /// The trace id as 32 hex digits (W3C form), empty when none is known.
    fn hex(&self) -> String {
        if self.trace == 0 {
            String::new()
        } else {
            format!("{:032x}", self.trace)
        }
    }
}

/// Identities a window holds before it is given room for a whole window's worth.
const PRESIZE_AFTER: usize = 1024;

#[derive(Debug, Default)]
pub(crate) struct OpenWindow {
    strings: Interner,
    seen: IdentitySet,
    /// The services counted; their rows are the sums of their operations' rows.
    services: FastMap<ServiceKey, ()>,
    operations: FastMap<(ServiceKey, u32), Red>,
    /// Per edge: its calls, its exemplar, and the calls that were the last of
    /// their request (`window::last_calls`).
    edges: FastMap<EdgeId, (Red, Exemplar, u64)>,
    series: FastMap<SeriesId, (u32, SeriesAccumulator)>,
    logs: FastMap<(ServiceKey, u32), u64>,
}

fn room<K: Eq + std::hash::Hash, V>(map: &FastMap<K, V>, key: &K, max: usize) -> bool {
    map.len() < max || map.contains_key(key)
}

impl OpenWindow {
    /// De-duplication ids held.
    pub(crate) fn identities(&self) -> usize {
        self.seen.len()
    }

    /// De-duplication slots allocated.
    pub(crate) fn identity_slots(&self) -> usize {
        self.seen.capacity()
    }

    /// `Some(true)` the first time `identity` is seen, `Some(false)` for a repeat,
    /// `None` when the identity set is full (the record is counted, not de-duplicated).
    ///
    /// The set starts small. Once it holds [`PRESIZE_AFTER`] ids and must grow, it
    /// grows straight to room for `expected`: a busy window rehashes once, while a
    /// window of a few stray (late or future-stamped) records stays small. Growing,
    /// it takes `spare` (a closed window's set, cleared) when that has the room:
    /// fresh memory of that size costs a page fault and a zeroed page per 4 KiB,
    /// 4% of the engine's CPU under the load generator.
    pub(crate) fn first_sighting(
        &mut self,
        identity: u64,
        max: usize,
        expected: usize,
        spare: &mut Option<IdentitySet>,
    ) -> Option<bool> {
        let held = self.seen.len();
        if held >= max && !self.seen.contains(identity) {
            return None;
        }
        if held == self.seen.capacity() && held >= PRESIZE_AFTER && expected > held {
            match spare.take() {
                Some(mut set) if set.capacity() >= expected => {
                    set.absorb(std::mem::take(&mut self.seen));
                    self.seen = set;
                }
                _ => {
                    // Without the memory, the set just grows as it would have.
                    let _ = self.seen.try_reserve(expected - held);
                }
            }
        }
        Some(self.seen.insert(identity))
    }

    /// Reads the slots of `identities` so their cache misses overlap (no change).
    pub(crate) fn touch_identities(&self, identities: impl Iterator<Item = u64>) {
        self.seen.touch(identities);
    }

    /// The identity set, emptied, for a later window to reuse.
    pub(crate) fn take_identities(&mut self) -> IdentitySet {
        let mut set = std::mem::take(&mut self.seen);
        set.clear();
        set
    }

    /// The window's key of a service (namespace, name, environment).
    pub(crate) fn service(&mut self, row: [&str; 3]) -> ServiceKey {
        [
            self.strings.id(row[0]),
            self.strings.id(row[1]),
            self.strings.id(row[2]),
        ]
    }

    /// Counts one request of a server-side span; false when a table is full.
    pub(crate) fn add_request(
        &mut self,
        service: [&str; 3],
        operation: &str,
        duration_ms: f64,
        error: bool,
        max_series: usize,
    ) -> bool {
        let key = self.service(service);
        self.add_service_request(key, operation, duration_ms, error, max_series)
    }

    /// [`Self::add_request`] for a service whose key ([`Self::service`]) is known.
    pub(crate) fn add_service_request(
        &mut self,
        key: ServiceKey,
        operation: &str,
        duration_ms: f64,
        error: bool,
        max_series: usize,
    ) -> bool {
        let op = (key, self.strings.id(operation));
        // Only the operation counts the request: its service's row is the sum of
        // the service's operations (`span_tables`), which halves the sketch
        // updates and table lookups of every server span.
        if let Some(red) = self.operations.get_mut(&op) {
            red.add(duration_ms, error);
            return true;
        }
        if !room(&self.services, &key, max_series) || self.operations.len() >= max_series {
            return false;
        }
        self.services.insert(key, ());
        self.operations
            .entry(op)
            .or_default()
            .add(duration_ms, error);
        true
    }

    /// Counts one call on an edge; its id, `None` when the table is full.
    pub(crate) fn add_edge(&mut self, edge: &EdgeObservation, max_series: usize) -> Option<EdgeId> {
        let key = (
            self.strings.id(&edge.caller),
            self.strings.id(&edge.callee),
            edge.callee_kind,
        );
        if !room(&self.edges, &key, max_series) {
            return None;
        }
        let (red, exemplar, _) = self.edges.entry(key).or_default();
        red.add(edge.duration_ms, edge.error);
        exemplar.offer(edge.trace, edge.duration_ms, edge.error);
        Some(key)
    }

    /// Counts a call on `edge` as the last of its request.
    pub(super) fn count_last_call(&mut self, edge: &EdgeId) {
        if let Some((_, _, last_calls)) = self.edges.get_mut(edge) {
            *last_calls += 1;
        }
    }

    /// Adds one metric point; false when the table is full.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn add_point(
        &mut self,
        service: [&str; 3],
        name: &str,
        unit: &str,
        attributes: &str,
        kind: MetricType,
        temporality: i32,
        monotonic: bool,
        point: PointValue,
        max_series: usize,
    ) -> bool {
        let key = (
            self.service(service),
            self.strings.id(name),
            self.strings.id(attributes),
            kind as u8,
        );
        if !room(&self.series, &key, max_series) {
            return false;
        }
        let unit = self.strings.id(unit);
        self.series
            .entry(key)
            .or_insert_with(|| (unit, SeriesAccumulator::new(kind, temporality, monotonic)))
            .1
            .add(point);
        true
    }

    /// Counts one log record; false when the table is full.
    pub(crate) fn add_log(
        &mut self,
        service: [&str; 3],
        severity: &str,
        max_series: usize,
    ) -> bool {
        let key = (self.service(service), self.strings.id(severity));
        if !room(&self.logs, &key, max_series) {
            return false;
        }
        *self.logs.entry(key).or_default() += 1;
        true
    }

    /// The span tables (`service_stats`, `operation_stats`, `edge_stats`) of
    /// what the window holds so far; the window stays open.
    pub(crate) fn span_tables(
        &self,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<[arrow::record_batch::RecordBatch; 3], ArrowError> {
        let s = &self.strings;
        let svc = |k: &ServiceKey| [s.get(k[0]), s.get(k[1]), s.get(k[2])];

        let mut operations: Vec<_> = self
            .operations
            .iter()
            .map(|((k, op), v)| {
                let [a, b, c] = svc(k);
                ([a, b, c, s.get(*op)], v)
            })
            .collect();
        operations.sort_by(|a, b| a.0.cmp(&b.0));
        // A service's row sums its operations' rows, merged in their sorted order so
        // that equal input gives equal sums.
        let mut services: Vec<([&str; 3], Red)> = Vec::new();
        for (keys, red) in &operations {
            let service = [keys[0], keys[1], keys[2]];
            match services.last_mut() {
                Some((last, sum)) if *last == service => sum.merge(red),
                _ => {
                    let mut sum = Red::default();
                    sum.merge(red);
                    services.push((service, sum));
                }
            }
        }
        let mut table = TableBuilder::new(0, start_ms, end_ms);
        for (keys, red) in &services {
            table.red_row(keys, red);
        }
        let service_stats = table.finish()?;

        let mut table = TableBuilder::new(1, start_ms, end_ms);
        for (keys, red) in operations {
            table.red_row(&keys, red);
        }
        let operation_stats = table.finish()?;

        let mut edges: Vec<_> = self
            .edges
            .iter()
            .map(|((caller, callee, kind), (red, exemplar, last_calls))| {
                let [a, b, c] = node_parts(s.get(*caller));
                let [d, e, f] = node_parts(s.get(*callee));
                (
                    [a, b, c, d, e, f, kind.as_str()],
                    (red, *last_calls),
                    exemplar.hex(),
                )
            })
            .collect();
        edges.sort_by(|a, b| a.0.cmp(&b.0));
        let mut table = TableBuilder::new(2, start_ms, end_ms);
        for (keys, (red, last_calls), exemplar) in edges {
            table.edge_row(&keys, &exemplar, red, last_calls);
        }
        let edge_stats = table.finish()?;
        Ok([service_stats, operation_stats, edge_stats])
    }

    /// Builds the window's tables; cumulative metric series advance `cumulative`.
    pub(crate) fn finish(
        self,
        start_ms: i64,
        end_ms: i64,
        cumulative: &mut CumulativeState,
    ) -> Result<WindowTables, ArrowError> {
        let [service_stats, operation_stats, edge_stats] = self.span_tables(start_ms, end_ms)?;
        let s = &self.strings;
        let svc = |k: &ServiceKey| [s.get(k[0]), s.get(k[1]), s.get(k[2])];
        let window_secs = (end_ms - start_ms) as f64 / 1000.0;
        let mut series: Vec<_> = self
            .series
            .into_iter()
            .map(|((k, name, attrs, _), (unit, acc))| {
                let [a, b, c] = svc(&k);
                (
                    [
                        a,
                        b,
                        c,
                        s.get(name),
                        acc.metric_type().as_str(),
                        s.get(unit),
                        s.get(attrs),
                    ],
                    acc,
                )
            })
            .collect();
        series.sort_by(|a, b| a.0.cmp(&b.0));
        let mut table = TableBuilder::new(3, start_ms, end_ms);
        for (keys, acc) in series {
            let row = if acc.is_cumulative() {
                let id = keys.join("\u{1f}");
                let (row, state) = acc.finish(cumulative.get_mut(&id), window_secs);
                if let Some(state) = state {
                    cumulative.insert(id, state);
                }
                row
            } else {
                acc.finish(None, window_secs).0
            };
            table.series_row(&keys, &row);
        }
        let metric_stats = table.finish()?;

        let mut logs: Vec<_> = self
            .logs
            .iter()
            .map(|((k, sev), n)| {
                let [a, b, c] = svc(k);
                ([a, b, c, s.get(*sev)], *n)
            })
            .collect();
        logs.sort_by(|a, b| a.0.cmp(&b.0));
        let mut table = TableBuilder::new(4, start_ms, end_ms);
        for (keys, n) in logs {
            table.row(&keys, &[super::tables::Cell::U64(Some(n))]);
        }
        let log_stats = table.finish()?;

        Ok(WindowTables {
            start_ms,
            end_ms,
            batches: [
                service_stats,
                operation_stats,
                edge_stats,
                metric_stats,
                log_stats,
            ],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_window_is_sized_once_and_a_stray_one_stays_small() {
        let expected = 1_000_000;
        let mut stray = OpenWindow::default();
        let mut spare = None;
        for id in 0..10u64 {
            assert_eq!(
                stray.first_sighting(id, usize::MAX, expected, &mut spare),
                Some(true)
            );
        }
        assert!(stray.identity_slots() < 64, "{}", stray.identity_slots());

        let mut busy = OpenWindow::default();
        let mut sized_at = None;
        for id in 0..200_000u64 {
            let id = id.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            assert_eq!(
                busy.first_sighting(id, usize::MAX, expected, &mut spare),
                Some(true)
            );
            if sized_at.is_none() && busy.identity_slots() >= expected {
                sized_at = Some(busy.identities());
            }
        }
        let sized_at = sized_at.expect("never given room for the expected ids");
        assert!(sized_at < 4 * PRESIZE_AFTER, "sized only at {sized_at}");
        assert_eq!(
            busy.first_sighting(0, usize::MAX, expected, &mut spare),
            Some(false)
        );
        // A full set still counts new records, without remembering them.
        assert_eq!(busy.first_sighting(1, 200_000, expected, &mut spare), None);
    }

    #[test]
    fn a_closed_windows_set_is_reused_by_the_next_busy_one() {
        let expected = 100_000;
        let mut spare = None;
        let mut first = OpenWindow::default();
        for id in 0..50_000u64 {
            first.first_sighting(id, usize::MAX, expected, &mut spare);
        }
        let set = first.take_identities();
        let (capacity, empty) = (set.capacity(), set.len() == 0);
        assert!(capacity >= expected && empty);
        spare = Some(set);
        let mut second = OpenWindow::default();
        for id in 0..5_000u64 {
            assert_eq!(
                second.first_sighting(id, usize::MAX, expected, &mut spare),
                Some(true)
            );
        }
        assert!(spare.is_none(), "the spare was not taken");
        assert_eq!(second.identity_slots(), capacity);
        assert_eq!(second.identities(), 5_000);
        assert_eq!(
            second.first_sighting(7, usize::MAX, expected, &mut spare),
            Some(false)
        );
    }
}
