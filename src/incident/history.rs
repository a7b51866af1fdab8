//! The recent window series the root-cause ranking reads: every service's RED
//! measures, every edge's calls, every metric (its `auto` measure), and two
//! measures derived per service from the span pairs the window stage makes:
//! exclusive time (`self_ms`: the mean request time not spent waiting on
//! callees, next to the whole mean, `mean_ms`) and originated errors
//! (`own_error_rate`: errors not explained by a failing call).
//!
//! Keys are the [`SeriesKey`]s detection gives the same series, so an anomaly
//! finds its own history. Memory: at most `max_series` series of `windows`
//! values (`f64`, NaN where a window had no row); new series beyond are counted,
//! not kept; a series with no value left in its span is dropped.

use std::collections::{HashMap, VecDeque};

use super::node;
use crate::detect::SeriesKey;
use crate::detect::catalogue::SeriesKind;
use crate::detect::rows::{Row, rows};
use crate::window::WindowTables;

/// Measures of `service` and `operation` rows kept.
const RED: [&str; 5] = ["requests", "error_rate", "p95_ms", "p99_ms", "mean_ms"];
/// Measures of `edge` rows kept.
const EDGE: [&str; 7] = [
    "calls",
    "error_rate",
    "p50_ms",
    "p99_ms",
    "mean_ms",
    crate::detect::rows::CALLS_PER_REQUEST,
    crate::detect::rows::LAST_CALL_SHARE,
];
/// Values before an onset that say where a series stood (see
/// [`History::before_after`]).
const BEFORE_VALUES: usize = 6;
/// The signal name of derived series.
pub const DERIVED: &str = "derived";

/// The last `windows` values of many series, aligned on window starts.
#[derive(Debug)]
pub struct History {
    windows: usize,
    max_series: usize,
    /// Start of each window held, oldest first.
    starts: VecDeque<i64>,
    series: HashMap<SeriesKey, VecDeque<f64>>,
    /// The `edge` series held, by caller node and by the node they implicate
    /// (the callee), kept as series come and go.
    edges: HashMap<String, Vec<SeriesKey>>,
    edges_into: HashMap<String, Vec<SeriesKey>>,
    refused: u64,
}

impl History {
    pub fn new(windows: usize, max_series: usize) -> Self {
        Self {
            windows: windows.max(2),
            max_series,
            starts: VecDeque::new(),
            series: HashMap::new(),
            edges: HashMap::new(),
            edges_into: HashMap::new(),
            refused: 0,
        }
    }

    /// Series held.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    /// Whether no series is held.
    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// New series refused for want of room since the start.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// Window starts held, oldest first.
    pub fn starts(&self) -> &VecDeque<i64> {
        &self.starts
    }

    /// The values of `key`, aligned with [`History::starts`].
    pub fn values(&self, key: &SeriesKey) -> Option<&VecDeque<f64>> {
        self.series.get(key)
    }

    /// Where `key` stood just before `onset` and since: the median of its last
    /// (at most `BEFORE_VALUES`) values before and the median of those since
    /// (one straggler window of a p99 is not a shift; a fault that holds is),
    /// if it has at least `min_before` values before and one since. The
    /// median of the last few values, not the mean of all held: the windows
    /// held may reach back into an earlier incident, whose values say nothing
    /// of how this one began.
    pub fn before_after(
        &self,
        key: &SeriesKey,
        onset: i64,
        min_before: usize,
    ) -> Option<(f64, f64)> {
        let (mut before, after) = self.split(key, onset)?;
        let last = before.split_off(before.len().saturating_sub(BEFORE_VALUES));
        (last.len() >= min_before.max(1) && !after.is_empty()).then(|| {
            use crate::detect::baseline::median;
            (median(last), median(after))
        })
    }

    /// The mean of `key`'s values since `onset`, if it has any.
    pub fn since(&self, key: &SeriesKey, onset: i64) -> Option<f64> {
        let (_, after) = self.split(key, onset)?;
        (!after.is_empty()).then(|| after.iter().sum::<f64>() / after.len() as f64)
    }

    /// `key`'s finite values before `onset` and since, oldest first.
    fn split(&self, key: &SeriesKey, onset: i64) -> Option<(Vec<f64>, Vec<f64>)> {
        let (mut before, mut after) = (Vec::new(), Vec::new());
        for (t, v) in self.starts.iter().zip(self.values(key)?) {
            if v.is_finite() {
                if *t < onset { &mut before } else { &mut after }.push(*v);
            }
        }
        Some((before, after))
    }

    /// How `node`'s exclusive time moved since `onset`: its means before and
    /// since, and the share of the rise of its whole mean request time that
    /// the exclusive time's rise makes up. A caller waiting on a dependency
    /// that stopped answering gains a few milliseconds of its own (timeouts
    /// end its calls a little before its requests, requests straddle windows)
    /// on top of seconds of waiting: from nearly nothing that is a large
    /// relative rise, but a share near 0. Where the whole mean is missing the
    /// share is 1.
    pub fn own_time(&self, node: &str, onset: i64, min_before: usize) -> Option<OwnTime> {
        let (before, after) =
            self.before_after(&derived_key(node, "self_ms"), onset, min_before)?;
        let rise = after - before;
        let whole = self
            .before_after(&derived_key(node, "mean_ms"), onset, min_before)
            .map_or(rise, |(b, a)| a - b);
        let share = if rise > 0.0 {
            rise / whole.max(rise)
        } else {
            0.0
        };
        Some(OwnTime {
            before,
            after,
            share,
        })
    }

    /// The `edge` series held of calls to `peer`, from any caller.
    pub fn edges_to(&self, peer: &str) -> &[SeriesKey] {
        self.edges_into.get(peer).map_or(&[], Vec::as_slice)
    }

    /// The `edge` series held whose caller is `caller`.
    pub fn edges_from(&self, caller: &str) -> &[SeriesKey] {
        self.edges.get(caller).map_or(&[], Vec::as_slice)
    }

    /// Adds a closed window (windows in order).
    pub fn on_window(&mut self, tables: &WindowTables) {
        let values = window_values(&rows(tables));
        let held = self.starts.len();
        self.starts.push_back(tables.start_ms);
        for (key, series) in &mut self.series {
            series.push_back(values.get(key).copied().unwrap_or(f64::NAN));
        }
        for (key, value) in values {
            if self.series.contains_key(&key) {
                continue;
            }
            if self.series.len() >= self.max_series {
                self.refused += 1;
                continue;
            }
            let mut series: VecDeque<f64> = std::iter::repeat_n(f64::NAN, held).collect();
            series.push_back(value);
            if key.signal == "edge" {
                let calls = self.edges.entry(node::own(&key)).or_default();
                calls.push(key.clone());
                if let (callee, true) = super::rank::implicated(&key) {
                    self.edges_into.entry(callee).or_default().push(key.clone());
                }
            }
            self.series.insert(key, series);
        }
        if self.starts.len() > self.windows {
            self.starts.pop_front();
            for series in self.series.values_mut() {
                series.pop_front();
            }
        }
        let before = self.series.len();
        self.series.retain(|_, s| s.iter().any(|v| v.is_finite()));
        if self.series.len() != before {
            // Only when series were dropped: the index is kept as series come.
            let series = &self.series;
            for index in [&mut self.edges, &mut self.edges_into] {
                index.retain(|_, calls| {
                    calls.retain(|k| series.contains_key(k));
                    !calls.is_empty()
                });
            }
        }
    }
}

/// A node's exclusive time before and since an onset ([`History::own_time`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OwnTime {
    pub before: f64,
    pub after: f64,
    /// Of the rise of its whole mean request time, the part that is its own
    /// (0..1; 0 when its exclusive time did not rise).
    pub share: f64,
}

impl OwnTime {
    /// The exclusive time's rise relative to what it was.
    pub fn relative(&self) -> f64 {
        (self.after - self.before) / self.before.abs().max(1e-9)
    }
}

/// The key detection gives measure `name` of `row`.
pub fn row_key(row: &Row, name: &str) -> SeriesKey {
    SeriesKey {
        service: row.service.clone(),
        signal: row.kind.as_str().to_string(),
        name: if row.kind == SeriesKind::Metric {
            row.metric.clone()
        } else {
            name.to_string()
        },
        attributes: row.attributes.clone(),
    }
}

/// The key of a derived measure of node `node` ([`super::node`]).
pub fn derived_key(node: &str, name: &str) -> SeriesKey {
    SeriesKey {
        service: node.to_string(),
        signal: DERIVED.to_string(),
        name: name.to_string(),
        attributes: String::new(),
    }
}

/// Per-caller sums of its outgoing calls: (calls, calls x mean ms, errors).
#[derive(Default)]
struct Outgoing {
    wait_ms: f64,
    errors: f64,
}

fn window_values(rows: &[Row]) -> HashMap<SeriesKey, f64> {
    let mut out = HashMap::new();
    let mut outgoing: HashMap<String, Outgoing> = HashMap::new();
    for row in rows {
        let names: &[&str] = match row.kind {
            SeriesKind::Service | SeriesKind::Operation => &RED,
            SeriesKind::Edge => &EDGE,
            SeriesKind::Metric => &["auto"],
            _ => &[],
        };
        for name in names {
            if let Some(value) = row.measure(name) {
                out.insert(row_key(row, name), value);
            }
        }
        if row.kind == SeriesKind::Edge {
            let calls = row.volume();
            let sums = outgoing
                .entry(node::of(&row.service, &row.attributes))
                .or_default();
            sums.wait_ms += calls * row.measure("mean_ms").unwrap_or(0.0);
            sums.errors += row.values.get("errors").copied().unwrap_or(0.0);
        }
    }
    for row in rows.iter().filter(|r| r.kind == SeriesKind::Service) {
        let requests = row.volume();
        if requests <= 0.0 {
            continue;
        }
        let id = node::of(&row.service, &row.attributes);
        let sums = outgoing.get(&id);
        let (wait, failed) = sums.map_or((0.0, 0.0), |s| (s.wait_ms, s.errors));
        if let Some(mean) = row.measure("mean_ms") {
            let own = (mean - wait / requests).max(0.0);
            out.insert(derived_key(&id, "self_ms"), own);
            out.insert(derived_key(&id, "mean_ms"), mean);
        }
        let errors = row.values.get("errors").copied().unwrap_or(0.0);
        let own_errors = (errors - failed).max(0.0) / requests;
        out.insert(derived_key(&id, "own_error_rate"), own_errors);
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::window::tables::{Cell, TableBuilder};

    const W: i64 = 10_000;

    /// A window where `front` serves 100 requests of `mean` ms calling `back`
    /// 100 times at `back_ms` each.
    pub(crate) fn window(w: i64, mean: f64, back_ms: f64) -> WindowTables {
        let (start, end) = (w * W, (w + 1) * W);
        let mut service = TableBuilder::new(0, start, end);
        let mut red = crate::window::tables::Red::default();
        for _ in 0..100 {
            red.add(mean, false);
        }
        service.red_row(&["", "front", ""], &red);
        let mut edge = TableBuilder::new(2, start, end);
        edge.row(
            &["", "front", "", "", "back", "", "service", ""],
            &[
                Cell::U64(Some(100)),
                Cell::U64(Some(0)),
                Cell::F64(Some(0.0)),
                Cell::F64(Some(back_ms)),
                Cell::F64(Some(back_ms)),
                Cell::F64(Some(back_ms)),
                Cell::U64(Some(100)),
            ],
        );
        WindowTables {
            start_ms: start,
            end_ms: end,
            batches: [
                service.finish().expect("service"),
                TableBuilder::new(1, start, end).finish().expect("op"),
                edge.finish().expect("edge"),
                TableBuilder::new(3, start, end).finish().expect("metric"),
                TableBuilder::new(4, start, end).finish().expect("log"),
            ],
        }
    }

    #[test]
    fn exclusive_time_is_what_callees_do_not_explain() {
        let mut history = History::new(4, 100);
        history.on_window(&window(0, 50.0, 40.0));
        history.on_window(&window(1, 90.0, 80.0));
        let own = history
            .values(&derived_key("front", "self_ms"))
            .expect("self time");
        let own: Vec<f64> = own.iter().map(|v| v.round()).collect();
        assert_eq!(own, vec![10.0, 10.0], "waiting on `back` is not own time");
    }

    #[test]
    fn own_time_says_what_share_of_a_slowdown_is_the_nodes_own() {
        // `back` stops answering: `front` waits 1.5 s on it and gains 10 ms
        // of its own on top.
        let mut waiting = History::new(10, 100);
        for w in 0..6 {
            let (mean, back) = if w < 3 {
                (50.0, 50.0)
            } else {
                (1510.0, 1500.0)
            };
            waiting.on_window(&window(w, mean, back));
        }
        let own = waiting.own_time("front", 3 * W, 3).expect("own time");
        assert_eq!((own.before.round(), own.after.round()), (0.0, 10.0));
        assert!(own.relative() > 1e6 && own.share < 0.01, "{own:?}");
        // `front` itself slows down by 40 ms; `back` is as fast as ever.
        let mut slow = History::new(10, 100);
        for w in 0..6 {
            slow.on_window(&window(w, if w < 3 { 50.0 } else { 90.0 }, 40.0));
        }
        let own = slow.own_time("front", 3 * W, 3).expect("own time");
        assert!((own.share - 1.0).abs() < 1e-9, "{own:?}");
        assert!(slow.own_time("front", 3 * W, 4).is_none(), "too few before");
    }

    #[test]
    fn the_call_indexes_follow_the_series_held() {
        let mut history = History::new(3, 100);
        history.on_window(&window(0, 50.0, 40.0));
        assert_eq!(history.edges_from("front").len(), EDGE.len());
        assert!(history.edges_from("back").is_empty());
        // All but the call mix, which is the caller's own doing.
        assert_eq!(history.edges_to("back").len(), EDGE.len() - 1);
        assert!(history.edges_to("front").is_empty());
        // Windows without the call: its series age out, and the index with them.
        for w in 1..4 {
            let mut tables = window(w, 50.0, 40.0);
            tables.batches[2] = TableBuilder::new(2, w * W, (w + 1) * W)
                .finish()
                .expect("edge");
            history.on_window(&tables);
        }
        assert!(history.edges_from("front").is_empty());
        assert!(history.edges_to("back").is_empty());
    }

    #[test]
    fn holds_only_the_last_windows_and_at_most_max_series() {
        let mut history = History::new(3, 4);
        for w in 0..10 {
            history.on_window(&window(w, 50.0, 40.0));
        }
        assert_eq!(history.starts().len(), 3);
        assert_eq!(history.len(), 4);
        assert!(history.refused() > 0);
        assert!(history.series.values().all(|s| s.len() == 3));
    }
}
