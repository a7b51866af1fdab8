//! Reads the rows of a closed window's tables into plain values the detectors use.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, Float64Array, StringArray, UInt64Array};
use arrow::record_batch::RecordBatch;

use super::catalogue::{Pattern, SeriesKind, glob_match};
use crate::window::{FastMap, WindowTables};

/// One row of one table.
#[derive(Debug, Clone)]
pub struct Row {
    pub kind: SeriesKind,
    /// The service (edges: the caller).
    pub service: String,
    /// Metric name (metric rows); empty otherwise.
    pub metric: String,
    /// `gauge`, `sum`, `histogram`, `summary` (metric rows).
    pub metric_type: String,
    /// Metric unit (metric rows).
    pub unit: String,
    /// The identity beyond service and name: `k=v` pairs joined by `,`.
    pub attributes: String,
    /// Edge rows: the callee kind; log rows: the severity.
    pub tag: String,
    /// The numeric columns by name (nulls left out).
    pub values: HashMap<&'static str, f64>,
}

impl Row {
    /// The value of `measure`; `auto` picks by metric type (gauge: mean, sum: rate,
    /// distributions: p99).
    pub fn measure(&self, measure: &str) -> Option<f64> {
        let column = match measure {
            "auto" => match self.metric_type.as_str() {
                "sum" => "rate",
                "histogram" | "summary" | "exponential_histogram" => "hist_p99",
                _ => "mean",
            },
            other => other,
        };
        self.values.get(column).copied().filter(|v| v.is_finite())
    }

    /// Requests or calls in the window (0 when the table has none).
    pub fn volume(&self) -> f64 {
        self.values
            .get("requests")
            .or_else(|| self.values.get("calls"))
            .copied()
            .unwrap_or(0.0)
    }

    /// What `measure` was counted over: the caller's requests for
    /// [`CALLS_PER_REQUEST`], else [`Row::volume`].
    pub fn volume_for(&self, measure: &str) -> f64 {
        match measure {
            CALLS_PER_REQUEST => self.values.get(CALLER_REQUESTS).copied().unwrap_or(0.0),
            LAST_CALL_SHARE => self.values.get(CALLER_LAST_CALLS).copied().unwrap_or(0.0),
            _ => self.volume(),
        }
    }
}

/// The edge measure derived from the caller's requests: how many calls to
/// the callee each request of the caller made in the window. A caller's call
/// mix is a property of its code and its request mix, not of its load; a
/// request cut short (an exception, a wrong answer, an early return) skips
/// the calls it would have made next, even where no span carries an error.
pub const CALLS_PER_REQUEST: &str = "calls_per_request";
/// The caller's requests in the window, next to [`CALLS_PER_REQUEST`].
pub const CALLER_REQUESTS: &str = "caller_requests";
/// The edge measure of where the caller's requests end: the share of the
/// caller's last calls in the window (`last_calls`,
/// [`crate::window::tables::LAST_CALLS`]) that went to this callee. A callee
/// whose answers make its callers give up is where their requests now end,
/// even where no span carries an error status.
pub const LAST_CALL_SHARE: &str = "last_call_share";
/// The caller's last calls in the window (over all its edges), next to
/// [`LAST_CALL_SHARE`].
pub const CALLER_LAST_CALLS: &str = "caller_last_calls";

/// Every row of the window's tables.
pub fn rows(tables: &WindowTables) -> Vec<Row> {
    let [service, operation, edge, metric, log] = &tables.batches;
    let mut out = Vec::new();
    read(service, SeriesKind::Service, &mut out);
    read(operation, SeriesKind::Operation, &mut out);
    read(edge, SeriesKind::Edge, &mut out);
    read(metric, SeriesKind::Metric, &mut out);
    read(log, SeriesKind::Log, &mut out);
    add_calls_per_request(&mut out);
    add_last_call_share(&mut out);
    out
}

/// Whether `measure` means the same over part of a window as over all of
/// it: a share or a quantile of the requests or calls counted so far, not a
/// count or a ratio of two counts that complete at different times (calls are
/// counted when both of their spans have arrived, requests at once).
pub fn holds_early(measure: &str) -> bool {
    matches!(
        measure,
        "error_rate" | "p50_ms" | "p95_ms" | "p99_ms" | "mean_ms"
    )
}

/// Gives every edge row whose caller served requests in the window its
/// [`CALLS_PER_REQUEST`] and [`CALLER_REQUESTS`].
fn add_calls_per_request(rows: &mut [Row]) {
    let requests = served_requests(rows);
    for row in rows.iter_mut().filter(|r| r.kind == SeriesKind::Edge) {
        let key = (row.service.clone(), caller_identity(&row.attributes));
        let (Some(&served), Some(&calls)) = (requests.get(&key), row.values.get("calls")) else {
            continue;
        };
        row.values.insert(CALLS_PER_REQUEST, calls / served);
        row.values.insert(CALLER_REQUESTS, served);
    }
}

/// Gives every edge row of a caller that made a last call in the window its
/// [`LAST_CALL_SHARE`] and [`CALLER_LAST_CALLS`].
fn add_last_call_share(rows: &mut [Row]) {
    let last_calls = |r: &Row| r.values.get(crate::window::tables::LAST_CALLS).copied();
    let mut totals: HashMap<(String, String), f64> = HashMap::new();
    for row in rows.iter().filter(|r| r.kind == SeriesKind::Edge) {
        if let Some(n) = last_calls(row) {
            let key = (row.service.clone(), caller_identity(&row.attributes));
            *totals.entry(key).or_default() += n;
        }
    }
    for row in rows.iter_mut().filter(|r| r.kind == SeriesKind::Edge) {
        let key = (row.service.clone(), caller_identity(&row.attributes));
        let (Some(n), Some(&total)) = (last_calls(row), totals.get(&key)) else {
            continue;
        };
        if total > 0.0 {
            row.values.insert(LAST_CALL_SHARE, n / total);
            row.values.insert(CALLER_LAST_CALLS, total);
        }
    }
}

/// The requests each service served in the window (those that served any),
/// by (service, identity attributes) as edge rows name their caller.
pub(super) fn served_requests(rows: &[Row]) -> HashMap<(String, String), f64> {
    rows.iter()
        .filter(|r| r.kind == SeriesKind::Service)
        .filter_map(|r| {
            let n = r.values.get("requests").copied().filter(|n| *n > 0.0)?;
            Some(((r.service.clone(), r.attributes.clone()), n))
        })
        .collect()
}

/// The caller's identity in an edge row's `attributes`: those before its
/// callee's (as a service row of the caller has them).
pub(super) fn caller_identity(attributes: &str) -> String {
    let caller: Vec<&str> = attributes
        .split(',')
        .take_while(|p| !p.starts_with("callee="))
        .collect();
    caller.join(",")
}

fn read(batch: &RecordBatch, kind: SeriesKind, out: &mut Vec<Row>) {
    let text = |name: &str| {
        batch
            .column_by_name(name)
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
    };
    let get = |col: Option<&StringArray>, i: usize| -> String {
        col.filter(|c| !c.is_null(i))
            .map(|c| c.value(i).to_string())
            .unwrap_or_default()
    };
    let service_col = if kind == SeriesKind::Edge {
        text("caller")
    } else {
        text("service_name")
    };
    let (namespace, environment) = if kind == SeriesKind::Edge {
        (text("caller_namespace"), text("caller_environment"))
    } else {
        (text("service_namespace"), text("deployment_environment"))
    };
    let (callee_namespace, callee_environment) =
        (text("callee_namespace"), text("callee_environment"));
    let (operation, callee, callee_kind) = (text("operation"), text("callee"), text("callee_kind"));
    let (metric, metric_type, unit, attrs, severity) = (
        text("metric_name"),
        text("metric_type"),
        text("metric_unit"),
        text("attributes"),
        text("severity"),
    );
    // The columns a pattern on this kind of row may name.
    let numeric: Vec<(&'static str, &dyn Array)> = kind
        .measures()
        .iter()
        .filter_map(|name| batch.column_by_name(name).map(|c| (*name, c.as_ref())))
        .collect();
    for i in 0..batch.num_rows() {
        let mut attributes = Vec::new();
        let ns = get(namespace, i);
        if !ns.is_empty() {
            attributes.push(format!("namespace={ns}"));
        }
        let env = get(environment, i);
        if !env.is_empty() {
            attributes.push(format!("environment={env}"));
        }
        let tag = match kind {
            SeriesKind::Operation => {
                attributes.push(format!("operation={}", get(operation, i)));
                String::new()
            }
            SeriesKind::Edge => {
                let k = get(callee_kind, i);
                attributes.push(format!("callee={}", get(callee, i)));
                attributes.push(format!("callee_kind={k}"));
                // Named only when the callee lives elsewhere than its caller.
                let (cns, cenv) = (get(callee_namespace, i), get(callee_environment, i));
                if cns != ns {
                    attributes.push(format!("callee_namespace={cns}"));
                }
                if cenv != env {
                    attributes.push(format!("callee_environment={cenv}"));
                }
                k
            }
            SeriesKind::Metric => {
                let a = get(attrs, i);
                if !a.is_empty() && a != "{}" {
                    attributes.push(a);
                }
                String::new()
            }
            SeriesKind::Log => {
                let s = get(severity, i);
                attributes.push(format!("severity={s}"));
                s
            }
            _ => String::new(),
        };
        let mut values = HashMap::new();
        for (name, column) in &numeric {
            if column.is_null(i) {
                continue;
            }
            let value = if let Some(c) = column.as_any().downcast_ref::<UInt64Array>() {
                c.value(i) as f64
            } else if let Some(c) = column.as_any().downcast_ref::<Float64Array>() {
                c.value(i)
            } else {
                continue;
            };
            values.insert(*name, value);
        }
        out.push(Row {
            kind,
            service: get(service_col, i),
            metric: get(metric, i),
            metric_type: get(metric_type, i),
            unit: get(unit, i),
            attributes: attributes.join(","),
            tag,
            values,
        });
    }
}

/// The patterns that watch `row`, in catalogue order; a fallback pattern only
/// when no other pattern of the row's kind does. Cached per row identity.
pub(super) fn patterns_for(
    matched: &mut FastMap<(SeriesKind, String), Arc<[usize]>>,
    patterns: &[Pattern],
    row: &Row,
) -> Arc<[usize]> {
    let identity = match row.kind {
        SeriesKind::Metric => row.metric.clone(),
        SeriesKind::Edge | SeriesKind::Log => row.tag.clone(),
        _ => String::new(),
    };
    if let Some(found) = matched.get(&(row.kind, identity.clone())) {
        return found.clone();
    }
    let mut out = Vec::new();
    let mut claimed = false;
    for (index, pattern) in ordered(patterns) {
        if pattern.series != row.kind || !matches(pattern, row) || (pattern.fallback && claimed) {
            continue;
        }
        claimed |= !pattern.fallback;
        out.push(index);
    }
    let out: Arc<[usize]> = out.into();
    matched.insert((row.kind, identity), out.clone());
    out
}

/// Non-fallback patterns first, so that fallbacks see which rows are claimed.
fn ordered(patterns: &[Pattern]) -> impl Iterator<Item = (usize, &Pattern)> {
    let (main, fallback): (Vec<_>, Vec<_>) =
        patterns.iter().enumerate().partition(|(_, p)| !p.fallback);
    main.into_iter().chain(fallback)
}

fn matches(p: &Pattern, row: &Row) -> bool {
    match row.kind {
        SeriesKind::Metric => {
            (p.metrics.is_empty() || p.metrics.iter().any(|g| glob_match(g, &row.metric)))
                && !p.exclude_metrics.iter().any(|g| glob_match(g, &row.metric))
        }
        SeriesKind::Edge => p.callee_kinds.is_empty() || p.callee_kinds.contains(&row.tag),
        SeriesKind::Log => {
            p.severities.is_empty()
                || p.severities
                    .iter()
                    .any(|s| s.eq_ignore_ascii_case(&row.tag))
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::incident::node;
    use crate::window::tables::{Red, TableBuilder};

    #[test]
    fn an_edge_carries_its_callers_calls_per_request() {
        let (start, end) = (0, 10_000);
        let mut service = TableBuilder::new(0, start, end);
        let mut red = Red::default();
        for _ in 0..40 {
            red.add(10.0, false);
        }
        // Same name in another environment: not the caller.
        service.red_row(&["shop", "web", "prod"], &red);
        service.red_row(&["shop", "web", "staging"], &Red::default());
        let mut edge = TableBuilder::new(2, start, end);
        let calls = crate::incident::testing::healthy_calls(); // 10 calls
        edge.row(
            &["shop", "web", "prod", "shop", "cart", "prod", "service", ""],
            &calls,
        );
        // A caller that serves no requests (a client): no ratio.
        edge.row(
            &[
                "shop", "cron", "prod", "shop", "cart", "prod", "service", "",
            ],
            &calls,
        );
        let tables = crate::incident::testing::tables((start, end), service, edge);
        let edges: Vec<Row> = rows(&tables)
            .into_iter()
            .filter(|r| r.kind == SeriesKind::Edge)
            .collect();
        assert_eq!(edges[0].service, "web");
        assert_eq!(edges[0].measure(CALLS_PER_REQUEST), Some(0.25));
        assert_eq!(edges[0].volume_for(CALLS_PER_REQUEST), 40.0);
        assert_eq!(edges[0].volume_for("p99_ms"), 10.0);
        assert_eq!(edges[1].measure(CALLS_PER_REQUEST), None);
    }

    #[test]
    fn an_edge_carries_its_share_of_where_its_callers_requests_end() {
        use crate::window::tables::Cell;
        let (start, end) = (0, 10_000);
        let mut edge = TableBuilder::new(2, start, end);
        let with_last = |n: Option<u64>| {
            let mut cells = crate::incident::testing::healthy_calls();
            cells[6] = Cell::U64(n);
            cells
        };
        // web's requests ended 3 times at cart, once at pay, never at the
        // cache; in staging, web is another caller; a window stored before
        // the column existed has none.
        for (callee, env, last) in [
            ("cart", "prod", Some(3)),
            ("pay", "prod", Some(1)),
            ("cache", "prod", Some(0)),
            ("cart", "staging", Some(2)),
            ("old", "prod", None),
        ] {
            edge.row(
                &["shop", "web", env, "shop", callee, env, "service", ""],
                &with_last(last),
            );
        }
        let tables =
            crate::incident::testing::tables((start, end), TableBuilder::new(0, start, end), edge);
        let shares: Vec<(String, Option<f64>, f64)> = rows(&tables)
            .into_iter()
            .filter(|r| r.kind == SeriesKind::Edge)
            .map(|r| {
                let callee = node::attribute(&r.attributes, "callee")
                    .unwrap_or("")
                    .to_string();
                let env = node::attribute(&r.attributes, "environment").unwrap_or("");
                (
                    format!("{callee}/{env}"),
                    r.measure(LAST_CALL_SHARE),
                    r.volume_for(LAST_CALL_SHARE),
                )
            })
            .collect();
        assert_eq!(
            shares,
            [
                ("cart/prod".to_string(), Some(0.75), 4.0),
                ("pay/prod".to_string(), Some(0.25), 4.0),
                ("cache/prod".to_string(), Some(0.0), 4.0),
                ("cart/staging".to_string(), Some(1.0), 2.0),
                ("old/prod".to_string(), None, 0.0),
            ]
        );
    }
}
