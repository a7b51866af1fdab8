//! Builders shared by the incident stage's tests and the stages after it.

use super::*;
use crate::detect::{FailureClass, SeriesKey};
use crate::window::tables::{Cell, TableBuilder};

pub(crate) const W: i64 = 10_000;

pub(crate) fn params() -> IncidentParams {
    IncidentParams {
        window_ms: W,
        join_windows: 5,
        max_join_windows: 30,
        hops: 2,
        resolve_windows: 3,
        reopen_windows: 5,
        max_incidents: 100,
        retain_ms: i64::MAX,
        edge_ttl_ms: 3_600_000,
        max_edges: 1000,
        history_windows: 30,
        max_history_series: 1000,
        min_anomalies: 1,
    }
}

/// A closed window `w` whose edges are `edges` (caller, callee).
pub(crate) fn window(w: i64, edges: &[(&str, &str)]) -> crate::window::WindowTables {
    let (start, end) = (w * W, (w + 1) * W);
    let mut edge = TableBuilder::new(2, start, end);
    for (caller, callee) in edges {
        edge.row(
            &["", caller, "", "", callee, "", "service", ""],
            &healthy_calls(),
        );
    }
    tables((start, end), TableBuilder::new(0, start, end), edge)
}

/// The measures of an edge row of 10 healthy calls (where requests end
/// unknown).
pub(crate) fn healthy_calls() -> [Cell; 7] {
    [
        Cell::U64(Some(10)),
        Cell::U64(Some(0)),
        Cell::F64(Some(0.0)),
        Cell::F64(Some(1.0)),
        Cell::F64(Some(2.0)),
        Cell::F64(Some(1.0)),
        Cell::U64(None),
    ]
}

/// The closed window of `service` and `edge` rows (the other tables empty).
pub(crate) fn tables(
    (start, end): (i64, i64),
    service: TableBuilder,
    edge: TableBuilder,
) -> crate::window::WindowTables {
    crate::window::WindowTables {
        start_ms: start,
        end_ms: end,
        batches: [
            service.finish().expect("service"),
            TableBuilder::new(1, start, end)
                .finish()
                .expect("operation"),
            edge.finish().expect("edge"),
            TableBuilder::new(3, start, end).finish().expect("metric"),
            TableBuilder::new(4, start, end).finish().expect("log"),
        ],
    }
}

pub(crate) fn anomaly(service: &str, onset_w: i64) -> Anomaly {
    Anomaly {
        key: SeriesKey {
            service: service.into(),
            signal: "service".into(),
            name: "error_rate".into(),
            attributes: String::new(),
        },
        class: FailureClass::ErrorSpike,
        pattern: "service_errors".into(),
        onset_ms: onset_w * W,
        detected_ms: (onset_w + 1) * W,
        ended_ms: None,
        observed: 0.5,
        expected: 0.01,
        score: 1.0,
        windows: 2,
        detail: String::new(),
        decisive: false,
    }
}

pub(crate) fn ended(a: &Anomaly, w: i64) -> AnomalyEvent {
    AnomalyEvent::Ended {
        key: a.key.clone(),
        pattern: a.pattern.clone(),
        onset_ms: a.onset_ms,
        ended_ms: w * W,
    }
}

pub(crate) const CHAIN: [(&str, &str); 3] = [
    ("frontend", "checkout"),
    ("checkout", "payments"),
    ("payments", "postgres"),
];

/// A stage on [`CHAIN`] with one incident: `service` anomalous from window 1,
/// ended at window 4.
pub(crate) fn one_ended(service: &str) -> (IncidentStage, IncidentLog) {
    let log = IncidentLog::default();
    let mut stage = IncidentStage::new(params(), log.clone());
    stage.on_window(&window(0, &CHAIN));
    let a = anomaly(service, 1);
    stage.on_event(&AnomalyEvent::Opened(a.clone()));
    stage.on_event(&ended(&a, 4));
    (stage, log)
}
