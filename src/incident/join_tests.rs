//! The join rule's tests: which incident an anomaly joins.

use super::super::testing::{CHAIN, W, anomaly, ended, one_ended, params, window};
use super::super::*;
use crate::detect::anomaly::AnomalyEvent;
use crate::detect::task::DetectOutput;
use crate::window::tables::TableBuilder;

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
                &super::super::testing::healthy_calls(),
            );
        }
    }
    super::super::testing::tables((start, end), TableBuilder::new(0, start, end), edge)
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

/// An early look into window 3 opens the front end's anomaly while
/// payments' incident is open; it waits for the close, where the window,
/// judged in full, does not hold it and it ends. It joins nothing: it used to
/// join at the close as a member whose ending had already gone by, and held
/// payments' incident open for good. An update of a waiting anomaly that
/// holds is applied once it is grouped.
#[test]
fn an_early_anomaly_that_ends_at_its_close_joins_nothing() {
    let mut stage = IncidentStage::new(params(), IncidentLog::default());
    let mut out = Vec::new();
    let mut send = |stage: &mut IncidentStage, input: DetectOutput| stage.on_data(input, &mut out);
    let event = |e: AnomalyEvent| DetectOutput::Event(Box::new(e));
    let close = |w: i64| DetectOutput::Closed(std::sync::Arc::new(window(w, &CHAIN)));
    let look = |w: i64| DetectOutput::Early(std::sync::Arc::new(window(w, &CHAIN)));
    let payments = anomaly("payments", 1);
    send(&mut stage, close(0));
    send(&mut stage, event(AnomalyEvent::Opened(payments.clone())));
    send(&mut stage, close(1));
    send(&mut stage, close(2));
    let frontend = anomaly("frontend", 3);
    send(&mut stage, event(AnomalyEvent::Opened(frontend.clone())));
    send(&mut stage, look(3));
    assert_eq!(stage.incidents().len(), 1);
    send(&mut stage, event(ended(&frontend, 3)));
    send(&mut stage, close(3));
    send(&mut stage, event(ended(&payments, 4)));
    for w in 4..9 {
        send(&mut stage, close(w));
    }
    let incidents = stage.incidents();
    assert_eq!(incidents.len(), 1, "{incidents:#?}");
    assert_eq!(incidents[0].state, IncidentState::Resolved);
    assert_eq!(incidents[0].members().count(), 1);

    // The same anomaly held by its close: grouped, and its update applied.
    let mut stage = IncidentStage::new(params(), IncidentLog::default());
    let mut out = Vec::new();
    let mut send = |stage: &mut IncidentStage, input: DetectOutput| stage.on_data(input, &mut out);
    send(&mut stage, close(0));
    send(&mut stage, event(AnomalyEvent::Opened(payments.clone())));
    send(&mut stage, close(1));
    send(&mut stage, close(2));
    send(&mut stage, event(AnomalyEvent::Opened(frontend.clone())));
    send(&mut stage, look(3));
    let update = AnomalyEvent::Updated {
        key: frontend.key.clone(),
        pattern: frontend.pattern.clone(),
        onset_ms: frontend.onset_ms,
        at_ms: 4 * W,
        windows: 2,
    };
    send(&mut stage, event(update));
    send(&mut stage, close(3));
    let incidents = stage.incidents();
    assert_eq!(incidents.len(), 1, "{incidents:#?}");
    assert_eq!(incidents[0].members().count(), 2);
    assert_eq!(incidents[0].active_ms, 4 * W);
}

/// An incident whose members all ended just before (it has not yet resolved),
/// opened longer than `max_join_windows` (30) ago: two anomalies of one of its
/// nodes in one window are a new failure, both in one new incident, whichever
/// comes first (the first used to revive the old incident, and the second,
/// finding it gathering past its bound, opened another).
#[test]
fn a_late_symptom_of_a_recovering_incident_opens_anew_with_its_window() {
    let mut stage = IncidentStage::new(params(), IncidentLog::default());
    stage.on_window(&window(0, &CHAIN));
    let first = anomaly("payments", 1);
    stage.on_event(&AnomalyEvent::Opened(first.clone()));
    stage.on_event(&ended(&first, 39));
    let mut latency = anomaly("payments", 40);
    latency.key.name = "p95_ms".into();
    let mut calls = anomaly("payments", 40);
    calls.key.signal = "edge".into();
    calls.key.name = "p99_ms".into();
    calls.key.attributes = "callee=postgres,callee_kind=service".into();
    stage.on_event(&AnomalyEvent::Opened(latency));
    stage.on_event(&AnomalyEvent::Opened(calls));
    let incidents = stage.incidents();
    let members: Vec<usize> = incidents.iter().map(|i| i.members.len()).collect();
    assert_eq!(members, [1, 2], "{incidents:#?}");
    // Within the bound, the same node's late symptom still joins.
    let mut stage = IncidentStage::new(params(), IncidentLog::default());
    stage.on_window(&window(0, &CHAIN));
    stage.on_event(&AnomalyEvent::Opened(first.clone()));
    stage.on_event(&ended(&first, 20));
    stage.on_event(&AnomalyEvent::Opened(anomaly("payments", 21)));
    assert_eq!(stage.incidents().len(), 1);
}
