use super::*;
use crate::read_model::TableSource;

use super::testing::{W, anomaly, params, window};
use crate::window::tables::TableBuilder;

fn ended(a: &Anomaly, w: i64) -> AnomalyEvent {
    AnomalyEvent::Ended {
        key: a.key.clone(),
        pattern: a.pattern.clone(),
        onset_ms: a.onset_ms,
        ended_ms: w * W,
    }
}

const CHAIN: [(&str, &str); 3] = [
    ("frontend", "checkout"),
    ("checkout", "payments"),
    ("payments", "postgres"),
];

/// A stage on [`CHAIN`] with one incident: `service` anomalous from window 1,
/// ended at window 4.
fn one_ended(service: &str) -> (IncidentStage, IncidentLog) {
    let log = IncidentLog::default();
    let mut stage = IncidentStage::new(params(), log.clone());
    stage.on_window(&window(0, &CHAIN));
    let a = anomaly(service, 1);
    stage.on_event(&AnomalyEvent::Opened(a.clone()));
    stage.on_event(&ended(&a, 4));
    (stage, log)
}

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

/// A caller that recovered from its own incident fails again two windows
/// later because its dependency fails: grouped deepest first, its anomaly
/// joins the dependency's new incident instead of reopening its own.
#[test]
fn a_caller_failing_because_of_its_dependency_does_not_reopen_its_own_incident() {
    let (mut stage, _) = one_ended("checkout");
    for w in 4..7 {
        stage.on_window(&window(w, &CHAIN));
    }
    assert_eq!(stage.incidents()[0].state, IncidentState::Resolved);
    // Window 8: checkout's anomaly comes first in the batch, then payments'.
    let mut out = Vec::new();
    for service in ["checkout", "payments"] {
        let event = AnomalyEvent::Opened(anomaly(service, 8));
        stage.on_data(DetectOutput::Event(Box::new(event)), &mut out);
    }
    let closed = std::sync::Arc::new(window(8, &CHAIN));
    stage.on_data(DetectOutput::Closed(closed), &mut out);
    let incidents = stage.incidents();
    assert_eq!(incidents.len(), 2, "{incidents:#?}");
    assert_eq!(incidents[0].state, IncidentState::Resolved);
    assert_eq!(incidents[0].reopened, 0);
    assert_eq!(
        incidents[1].services().into_iter().collect::<Vec<_>>(),
        vec!["checkout", "payments"]
    );
}

/// The front end calls a recommender and, through checkout, an order
/// notifier. While the recommender's incident is still open, the notifier
/// fails: it shares only a caller with the recommender, and it began too long
/// after the front end's anomaly to be its cause, so it is an incident of its
/// own. A dependency failing with the front end is still one incident.
#[test]
fn a_failure_a_shared_caller_reaches_is_not_the_open_incidents() {
    let shop = [
        ("frontend", "recommendation"),
        ("frontend", "checkout"),
        ("checkout", "notifier"),
    ];
    let graph = {
        let mut g = ServiceGraph::new(3_600_000, 100);
        g.on_window(&window(0, &shop));
        g
    };
    use graph::Relation;
    assert_eq!(graph.relation("frontend", "notifier", 2), Relation::Calls);
    assert_eq!(
        graph.relation("notifier", "frontend", 2),
        Relation::CalledBy
    );
    assert_eq!(
        graph.relation("notifier", "recommendation", 2),
        Relation::Unrelated
    );
    assert_eq!(
        graph.relation("checkout", "recommendation", 2),
        Relation::Unrelated
    );
    let mut stage = IncidentStage::new(params(), IncidentLog::default());
    stage.on_window(&window(0, &shop));
    for service in ["recommendation", "frontend"] {
        stage.on_event(&AnomalyEvent::Opened(anomaly(service, 1)));
    }
    // Within join_windows of the front end's onset, but 3 windows after it.
    stage.on_event(&AnomalyEvent::Opened(anomaly("notifier", 4)));
    let services: Vec<Vec<&str>> = stage
        .incidents()
        .iter()
        .map(|i| i.services().into_iter().collect())
        .collect();
    assert_eq!(
        services,
        vec![vec!["frontend", "recommendation"], vec!["notifier"]]
    );
    // Had it begun with the front end, it could have been the front end's cause.
    let mut stage = IncidentStage::new(params(), IncidentLog::default());
    stage.on_window(&window(0, &shop));
    for (service, w) in [("frontend", 1), ("notifier", 2)] {
        stage.on_event(&AnomalyEvent::Opened(anomaly(service, w)));
    }
    assert_eq!(stage.incidents().len(), 1);
}

/// Callers of one database that sends no telemetry of its own are symptoms of
/// one cause: one incident.
#[test]
fn fellow_callers_of_one_dependency_are_one_incident() {
    let db = [("orders", "postgres"), ("billing", "postgres")];
    let mut stage = IncidentStage::new(params(), IncidentLog::default());
    stage.on_window(&window(0, &db));
    for (service, w) in [("orders", 1), ("billing", 3)] {
        stage.on_event(&AnomalyEvent::Opened(anomaly(service, w)));
    }
    assert_eq!(stage.incidents().len(), 1, "{:#?}", stage.incidents());
}

/// A closed window of the same call chain in environments `envs` of one
/// namespace.
fn chain_in(w: i64, envs: &[&str]) -> crate::window::WindowTables {
    let (start, end) = (w * W, (w + 1) * W);
    let mut edge = TableBuilder::new(2, start, end);
    for env in envs {
        for (caller, callee) in CHAIN {
            edge.row(
                &["shop", caller, env, "shop", callee, env, "service", ""],
                &super::testing::healthy_calls(),
            );
        }
    }
    super::testing::tables((start, end), TableBuilder::new(0, start, end), edge)
}

fn anomaly_in(service: &str, env: &str, w: i64) -> Anomaly {
    let mut a = anomaly(service, w);
    a.key.attributes = format!("namespace=shop,environment={env}");
    a
}

#[test]
fn the_same_service_in_two_environments_is_two_nodes() {
    let log = IncidentLog::default();
    let mut stage = IncidentStage::new(params(), log.clone());
    stage.on_window(&chain_in(0, &["prod", "staging"]));
    // Staging's payments fail and its checkout with them; at the same time
    // production's frontend fails on its own. Production's frontend calls a
    // `checkout`, but not staging's.
    stage.on_batch(vec![
        anomaly_in("payments", "staging", 1),
        anomaly_in("checkout", "staging", 1),
        anomaly_in("frontend", "prod", 1),
    ]);
    stage.on_window(&chain_in(1, &["prod", "staging"]));
    let incidents = stage.incidents();
    assert_eq!(incidents.len(), 2, "{incidents:#?}");
    let staging = incidents
        .iter()
        .find(|i| i.services().contains("payments"))
        .expect("staging's incident");
    assert_eq!(
        staging.services().into_iter().collect::<Vec<_>>(),
        vec!["checkout", "payments"]
    );
    let top = &staging.root_causes[0];
    assert_eq!(
        (
            top.service.as_str(),
            top.namespace.as_str(),
            top.environment.as_str()
        ),
        ("payments", "shop", "staging")
    );
    // The `incidents` table names the root cause's scope too.
    use crate::read_model::TableSource;
    let batch = &log.batches().expect("the incidents table")[0];
    let text = |name: &str| {
        let column = batch.column_by_name(name).expect(name);
        let strings = column.as_any().downcast_ref::<arrow::array::StringArray>();
        strings.expect("a text column").clone()
    };
    let cause = text("root_cause");
    let row = (0..batch.num_rows())
        .find(|&i| cause.value(i) == "payments")
        .expect("staging's incident in the table");
    assert_eq!(
        (
            text("root_cause_namespace").value(row),
            text("root_cause_environment").value(row)
        ),
        ("shop", "staging")
    );
    // Production's payments failing next joins production's incident (a
    // callee of its frontend), not staging's, though staging's has a
    // `payments` failing.
    stage.on_event(&AnomalyEvent::Opened(anomaly_in("payments", "prod", 2)));
    let incidents = stage.incidents();
    assert_eq!(incidents.len(), 2);
    let prod = incidents
        .iter()
        .find(|i| i.services().contains("frontend"))
        .expect("production's incident");
    assert_eq!(prod.anomalies().count(), 2);
    assert!(
        prod.anomalies()
            .all(|a| a.key.attributes.contains("environment=prod"))
    );
}

#[test]
fn a_lone_resource_anomaly_waits_unless_it_left_its_baseline() {
    let mut p = params();
    p.min_anomalies = 2;
    let mut stage = IncidentStage::new(p, IncidentLog::default());
    stage.on_window(&window(0, &CHAIN));
    let saturated = |service: &str, decisive: bool| {
        let mut a = anomaly(service, 1);
        a.key.signal = "metric".into();
        a.key.name = "container.cpu.utilization".into();
        a.class = crate::detect::FailureClass::Saturation;
        a.decisive = decisive;
        a
    };
    // A service near its CPU limit as it often is: not reported alone.
    stage.on_event(&AnomalyEvent::Opened(saturated("checkout", false)));
    // One whose CPU leapt far above its own baseline: reported.
    stage.on_event(&AnomalyEvent::Opened(saturated("search", true)));
    let confirmed: Vec<Vec<&str>> = stage
        .incidents()
        .iter()
        .map(|i| (i.confirmed, i.services().into_iter().collect()))
        .filter_map(|(c, s)| c.then_some(s))
        .collect();
    assert_eq!(confirmed, vec![vec!["search"]]);
}

#[test]
fn more_of_a_failing_node_joins_its_open_incident_minutes_later_a_neighbour_does_not() {
    let mut stage = IncidentStage::new(params(), IncidentLog::default());
    stage.on_window(&window(0, &CHAIN));
    // payments' memory climbs from window 1 and is still climbing; a metric
    // sampled once a minute shows its latency rising 12 windows later, long
    // after `join_windows` (5) of the last onset.
    let mut memory = anomaly("payments", 1);
    memory.key.signal = "metric".into();
    memory.key.name = "process.memory.usage".into();
    stage.on_event(&AnomalyEvent::Opened(memory));
    let mut latency = anomaly("payments", 13);
    latency.key.name = "p95_ms".into();
    stage.on_event(&AnomalyEvent::Opened(latency));
    assert_eq!(stage.incidents().len(), 1, "{:#?}", stage.incidents());
    // Its caller failing as late is a failure of its own: only a recent
    // onset gathers neighbours.
    stage.on_event(&AnomalyEvent::Opened(anomaly("checkout", 20)));
    assert_eq!(stage.incidents().len(), 2);
    // And past `max_join_windows` (30) of its opening, payments too opens anew.
    let mut later = anomaly("payments", 40);
    later.key.name = "p99_ms".into();
    stage.on_event(&AnomalyEvent::Opened(later));
    assert_eq!(stage.incidents().len(), 3);
}

/// `checkout` calls `shipping` and `mailer`. While shipping's incident gathers,
/// checkout's calls to the mailer slow down: a caller's view of one callee says
/// nothing of the other, so that is an incident of its own. Checkout's calls to
/// shipping, and checkout's own requests, are shipping's symptoms.
#[test]
fn a_callers_view_of_one_callee_is_not_anothers_incident() {
    let shop = [("checkout", "shipping"), ("checkout", "mailer")];
    let calls_to = |callee: &str, w: i64| {
        let mut a = anomaly("checkout", w);
        a.key.signal = "edge".into();
        a.key.name = "p99_ms".into();
        a.key.attributes = format!("callee={callee},callee_kind=service");
        a
    };
    let services = |stage: &IncidentStage| -> Vec<Vec<String>> {
        let nodes = |i: &Incident| {
            let mut n: Vec<String> = i.anomalies().map(|a| rank::implicated(&a.key).0).collect();
            n.sort();
            n.dedup();
            n
        };
        stage.incidents().iter().map(nodes).collect()
    };
    let stage_with = |anomalies: Vec<Anomaly>| {
        let mut stage = IncidentStage::new(params(), IncidentLog::default());
        stage.on_window(&window(0, &shop));
        stage.on_event(&AnomalyEvent::Opened(anomaly("shipping", 1)));
        for a in anomalies {
            stage.on_event(&AnomalyEvent::Opened(a));
        }
        services(&stage)
    };
    assert_eq!(
        stage_with(vec![calls_to("mailer", 2)]),
        vec![vec!["shipping"], vec!["mailer"]]
    );
    assert_eq!(
        stage_with(vec![calls_to("shipping", 2), anomaly("checkout", 2)]),
        vec![vec!["checkout", "shipping"]]
    );
}

/// The p90, p95 and p99 of one latency metric off at once are one piece of
/// evidence: with `min_anomalies = 2` they wait for another measurement.
#[test]
fn quantiles_of_one_metric_corroborate_nothing() {
    let mut p = params();
    p.min_anomalies = 2;
    let mut stage = IncidentStage::new(p, IncidentLog::default());
    stage.on_window(&window(0, &CHAIN));
    let metric = |name: &str| {
        let mut a = anomaly("checkout", 1);
        a.key.signal = "metric".into();
        a.key.name = name.into();
        a.class = crate::detect::FailureClass::Generic;
        a
    };
    for q in ["p90", "p95", "p99"] {
        let name = format!("pod.client.latency.{q}");
        stage.on_event(&AnomalyEvent::Opened(metric(&name)));
    }
    assert_eq!(stage.incidents().len(), 1);
    assert!(
        !stage.incidents()[0].confirmed,
        "three quantiles confirmed it"
    );
    stage.on_event(&AnomalyEvent::Opened(metric("pod.network.receive")));
    assert!(stage.incidents()[0].confirmed);
}

/// An early look into window 6 opens checkout's anomaly while payments'
/// incident still has an open member, which ends when window 6 closes: the
/// anomaly waits for the close, where the endings go first, and is an
/// incident of its own; an anomaly that joins no incident is grouped at once.
#[test]
fn an_early_anomaly_joins_another_nodes_incident_only_at_the_close() {
    let mut stage = IncidentStage::new(params(), IncidentLog::default());
    let mut out = Vec::new();
    let mut send = |stage: &mut IncidentStage, input: DetectOutput| stage.on_data(input, &mut out);
    let opened = |a: &Anomaly| DetectOutput::Event(Box::new(AnomalyEvent::Opened(a.clone())));
    let payments = anomaly("payments", 1);
    send(
        &mut stage,
        DetectOutput::Closed(std::sync::Arc::new(window(0, &CHAIN))),
    );
    send(&mut stage, opened(&payments));
    for w in 2..6 {
        send(
            &mut stage,
            DetectOutput::Closed(std::sync::Arc::new(window(w, &CHAIN))),
        );
    }
    send(&mut stage, opened(&anomaly("checkout", 5)));
    send(&mut stage, opened(&anomaly("search", 5)));
    send(
        &mut stage,
        DetectOutput::Early(std::sync::Arc::new(window(6, &CHAIN))),
    );
    let services = |stage: &IncidentStage| -> Vec<Vec<String>> {
        let incidents = stage.incidents();
        incidents
            .iter()
            .map(|i| i.services().into_iter().map(String::from).collect())
            .collect()
    };
    assert_eq!(services(&stage), vec![vec!["payments"], vec!["search"]]);
    let end = DetectOutput::Event(Box::new(ended(&payments, 6)));
    send(&mut stage, end);
    send(
        &mut stage,
        DetectOutput::Closed(std::sync::Arc::new(window(6, &CHAIN))),
    );
    assert_eq!(
        services(&stage),
        vec![vec!["payments"], vec!["search"], vec!["checkout"]]
    );
}
