use super::*;
use crate::read_model::TableSource;

use super::testing::{CHAIN, W, anomaly, ended, one_ended, params, window};
use crate::window::tables::TableBuilder;

#[test]
fn connected_anomalies_are_one_incident_and_others_another() {
    let mut stage = IncidentStage::new(params(), IncidentLog::default());
    stage.on_window(&window(0, &CHAIN));
    for (service, w) in [
        ("postgres", 1),
        ("payments", 1),
        ("checkout", 2),
        ("frontend", 2),
    ] {
        stage.on_event(&AnomalyEvent::Opened(anomaly(service, w)));
    }
    // Unconnected, at the same time: its own incident.
    stage.on_event(&AnomalyEvent::Opened(anomaly("search", 2)));
    let incidents = stage.incidents();
    assert_eq!(incidents.len(), 2);
    assert_eq!(
        incidents[0].services().into_iter().collect::<Vec<_>>(),
        vec!["checkout", "frontend", "payments", "postgres"]
    );
    assert_eq!(
        incidents[1].services().into_iter().collect::<Vec<_>>(),
        vec!["search"]
    );
}

#[test]
fn far_in_time_is_another_incident() {
    let mut stage = IncidentStage::new(params(), IncidentLog::default());
    stage.on_window(&window(0, &CHAIN));
    stage.on_event(&AnomalyEvent::Opened(anomaly("payments", 1)));
    // Still open (never ended) but quiet for longer than join_windows.
    stage.on_event(&AnomalyEvent::Opened(anomaly("checkout", 20)));
    assert_eq!(stage.incidents().len(), 2);
}

#[test]
fn resolves_after_quiet_windows_and_reopens_on_recurrence() {
    let (mut stage, log) = one_ended("payments");
    // Healthy from window 4: resolved at the end of its third healthy window.
    for w in 4..6 {
        stage.on_window(&window(w, &CHAIN));
        assert_eq!(
            stage.incidents()[0].state,
            IncidentState::Open,
            "window {w}"
        );
    }
    stage.on_window(&window(6, &CHAIN));
    assert_eq!(stage.incidents()[0].state, IncidentState::Resolved);
    assert_eq!(log.snapshot()[0].resolved_ms, Some(7 * W));
    // It flaps back two windows later: the same incident reopens.
    stage.on_event(&AnomalyEvent::Opened(anomaly("payments", 9)));
    let incidents = stage.incidents();
    assert_eq!(incidents.len(), 1);
    assert_eq!(incidents[0].state, IncidentState::Open);
    assert_eq!(incidents[0].reopened, 1);
}

/// Payments' latency anomalous from window 1 to 4, its error rate from 2 to
/// 20, which held the incident open: resolved at window 24. Returns the two.
fn resolved_long_after_latency(stage: &mut IncidentStage) -> (Anomaly, Anomaly) {
    stage.on_window(&window(0, &CHAIN));
    let mut slow = anomaly("payments", 1);
    slow.key.name = "p99_ms".into();
    let errors = anomaly("payments", 2);
    for a in [&slow, &errors] {
        stage.on_event(&AnomalyEvent::Opened(a.clone()));
    }
    stage.on_event(&ended(&slow, 4));
    stage.on_event(&ended(&errors, 20));
    for w in 20..24 {
        stage.on_window(&window(w, &CHAIN));
    }
    assert_eq!(stage.incidents()[0].state, IncidentState::Resolved);
    (slow, errors)
}

/// A node's new symptom after the incident resolved is a new failure, and so
/// is the recurrence of a series that had recovered long before: only a series
/// failing again within a few windows of its own recovery reopens (flapping).
#[test]
fn a_series_healthy_since_long_before_does_not_reopen() {
    let mut stage = IncidentStage::new(params(), IncidentLog::default());
    let (slow, _) = resolved_long_after_latency(&mut stage);
    // Two windows after resolution: latency again, healthy for 20 windows,
    // and another symptom of payments, its requests.
    stage.on_event(&AnomalyEvent::Opened(anomaly_on(&slow, 25)));
    let mut traffic = anomaly("payments", 25);
    traffic.key.name = "requests".into();
    stage.on_event(&AnomalyEvent::Opened(traffic));
    let incidents = stage.incidents();
    assert_eq!(incidents.len(), 2, "{incidents:#?}");
    assert_eq!(incidents[0].reopened, 0);
    assert_eq!(incidents[0].state, IncidentState::Resolved);
    assert_eq!(incidents[1].anomalies().count(), 2);
}

#[test]
fn a_series_failing_again_soon_after_its_recovery_reopens() {
    let mut stage = IncidentStage::new(params(), IncidentLog::default());
    let (_, errors) = resolved_long_after_latency(&mut stage);
    // The error rate, healthy since window 20, fails again at window 26.
    stage.on_event(&AnomalyEvent::Opened(anomaly_on(&errors, 26)));
    let incidents = stage.incidents();
    assert_eq!(incidents.len(), 1, "{incidents:#?}");
    assert_eq!(incidents[0].reopened, 1);
    assert_eq!(incidents[0].state, IncidentState::Open);
}

/// `a`'s series failing again from window `w`.
fn anomaly_on(a: &Anomaly, w: i64) -> Anomaly {
    Anomaly {
        onset_ms: w * W,
        detected_ms: (w + 1) * W,
        ..a.clone()
    }
}

#[test]
fn a_neighbour_failing_after_recovery_is_an_incident_of_its_own() {
    let (mut stage, _) = one_ended("payments");
    // Recovering (every member ended), not yet resolved: a caller that fails
    // now is a failure of its own, not more of the same.
    stage.on_window(&window(4, &CHAIN));
    let b = anomaly("checkout", 5);
    stage.on_event(&AnomalyEvent::Opened(b.clone()));
    assert_eq!(stage.incidents().len(), 2);
    stage.on_event(&ended(&b, 6));
    // After resolution too.
    for w in 5..8 {
        stage.on_window(&window(w, &CHAIN));
    }
    stage.on_event(&AnomalyEvent::Opened(anomaly("frontend", 9)));
    assert_eq!(stage.incidents().len(), 3);
}

#[test]
fn the_table_lists_incidents() {
    let log = IncidentLog::default();
    let mut stage = IncidentStage::new(params(), log.clone());
    stage.on_window(&window(0, &CHAIN));
    stage.on_event(&AnomalyEvent::Opened(anomaly("payments", 1)));
    stage.on_window(&window(1, &CHAIN));
    let batch = &log.batches().expect("table")[0];
    assert_eq!(batch.num_rows(), 1);
    assert_eq!(batch.schema().fields().len(), 15);
}

#[test]
fn idle_edges_age_out_of_the_graph() {
    let mut graph = ServiceGraph::new(60_000, 10);
    graph.on_window(&window(0, &CHAIN));
    assert!(graph.near("frontend", "payments", 2));
    assert!(!graph.near("frontend", "postgres", 2));
    graph.on_window(&window(10, &[]));
    assert!(graph.is_empty());
}

/// A closed window `w` whose service table has one row per (service, p95 ms).
pub(super) fn red_window(w: i64, services: &[(&str, f64)]) -> crate::window::WindowTables {
    let mut tables = window(w, &[]);
    let (start, end) = (w * W, (w + 1) * W);
    let mut service = TableBuilder::new(0, start, end);
    for (name, ms) in services {
        let mut red = crate::window::tables::Red::default();
        for _ in 0..20 {
            red.add(*ms, false);
        }
        service.red_row(&["", name, ""], &red);
    }
    tables.batches[0] = service.finish().expect("service");
    tables
}

#[test]
fn the_entry_points_are_the_anomalous_operations_nothing_calls() {
    let mut stage = IncidentStage::new(params(), IncidentLog::default());
    stage.on_window(&window(0, &CHAIN));
    let mut entry = anomaly("frontend", 1);
    entry.key.signal = "operation".into();
    entry.key.attributes = "operation=GET /checkout".into();
    for a in [anomaly("payments", 1), anomaly("checkout", 1), entry] {
        stage.on_event(&AnomalyEvent::Opened(a));
    }
    stage.on_window(&window(1, &CHAIN));
    let incident = &stage.incidents()[0];
    assert_eq!(incident.entry_points, vec!["frontend GET /checkout"]);
    assert_eq!(incident.root_causes[0].service, "payments");
}

#[test]
fn an_incident_stops_gathering_after_max_join_windows() {
    // Anomalies keep beginning every 4 windows on the same chain, deepest
    // first (a later one is on a caller, or on the same node): the first 30
    // windows' are one incident, what begins later opens another.
    let mut stage = IncidentStage::new(params(), IncidentLog::default());
    stage.on_window(&window(0, &CHAIN));
    for w in (1..=33).step_by(4) {
        let service = CHAIN[2 - (w as usize / 4) % 3].0;
        stage.on_event(&AnomalyEvent::Opened(anomaly(service, w)));
    }
    let opened: Vec<i64> = stage.incidents().iter().map(|i| i.opened_ms / W).collect();
    assert_eq!(opened, vec![1, 33]);
}

#[test]
fn the_store_keeps_incidents_and_drops_what_retention_drops() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("incidents.redb");
    let mut short = params();
    short.retain_ms = 20 * W;
    let mut stage = IncidentStage::new(short.clone(), IncidentLog::default())
        .stored_at(&path)
        .expect("new store");
    stage.on_window(&window(0, &CHAIN));
    let a = anomaly("payments", 1);
    stage.on_event(&AnomalyEvent::Opened(a.clone()));
    stage.on_event(&AnomalyEvent::Opened(anomaly("search", 2)));
    stage.on_event(&ended(&a, 3));
    for w in 3..8 {
        stage.on_window(&window(w, &CHAIN));
    }
    let before: Vec<(u64, IncidentState)> =
        stage.incidents().iter().map(|i| (i.id, i.state)).collect();
    assert_eq!(
        before,
        vec![(1, IncidentState::Resolved), (2, IncidentState::Open)]
    );
    drop(stage);

    let mut again = IncidentStage::new(short, IncidentLog::default())
        .stored_at(&path)
        .expect("reopen");
    let after: Vec<(u64, IncidentState)> =
        again.incidents().iter().map(|i| (i.id, i.state)).collect();
    assert_eq!(after, before);
    assert_eq!(again.incidents()[1].anomalies().count(), 1);
    // Resolved at window 6; 20 windows later it is gone, from the store too.
    again.on_window(&window(30, &CHAIN));
    assert_eq!(again.incidents().len(), 1);
    drop(again);
    let (_, next_id, held) = store::IncidentStore::open(&path).expect("open");
    assert_eq!((next_id, held.len()), (3, 1));
}

#[test]
fn a_damaged_store_stops_the_start_naming_it() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("incidents.redb");
    std::fs::write(&path, b"not a database at all, just text").expect("write");
    let Err(error) = IncidentStage::new(params(), IncidentLog::default()).stored_at(&path) else {
        panic!("a damaged store is refused");
    };
    assert!(error.to_string().contains("incidents.redb"), "{error}");
}

#[test]
fn incidents_json_of_earlier_versions_is_imported_once() {
    let dir = tempfile::tempdir().expect("dir");
    let mut stage = IncidentStage::new(params(), IncidentLog::default());
    stage.on_window(&window(0, &CHAIN));
    stage.on_event(&AnomalyEvent::Opened(anomaly("payments", 1)));
    let legacy = dir.path().join("incidents.json");
    assert!(crate::persist::save(&legacy, 1, &(2u64, stage.incidents())));
    let path = dir.path().join("incidents.redb");
    let imported = IncidentStage::new(params(), IncidentLog::default())
        .stored_at(&path)
        .expect("import");
    assert_eq!(imported.incidents().len(), 1);
    assert!(!legacy.exists(), "renamed once imported");
    drop(imported);
    let (_, next_id, held) = store::IncidentStore::open(&path).expect("open");
    assert_eq!((next_id, held.len()), (2, 1));
}

#[test]
fn the_graph_records_new_and_gone_edges_once_learned() {
    let mut graph = ServiceGraph::new(30 * W, 100);
    for w in 0..12 {
        graph.on_window(&window(w, &CHAIN));
    }
    assert!(graph.changes().is_empty(), "learning is not change");
    let mut edges = CHAIN.to_vec();
    edges.push(("checkout", "fraud"));
    graph.on_window(&window(12, &edges));
    let new = graph.changes().back().cloned().expect("a change");
    assert!(new.new && new.caller == "checkout" && new.callee == "fraud");
    assert_eq!(new.at_ms, 12 * W);
    // payments -> postgres stops; 30 windows later it is gone.
    for w in 13..45 {
        graph.on_window(&window(w, &CHAIN[..2]));
    }
    let gone: Vec<_> = graph.changes().iter().filter(|c| !c.new).collect();
    assert!(
        gone.iter()
            .any(|c| c.caller == "payments" && c.callee == "postgres"),
        "{gone:?}"
    );
}
