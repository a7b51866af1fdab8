use super::*;
use crate::incident::testing::{W, anomaly, window};

/// A series of `service` with `attributes`, anomalous from window `onset_w`.
fn on(service: &str, signal: &str, attributes: &str, onset_w: i64, score: f64) -> Anomaly {
    let mut a = anomaly(service, onset_w);
    a.key.signal = signal.into();
    a.key.attributes = attributes.into();
    a.score = score;
    a.class = FailureClass::LatencyDegradation;
    a
}

fn ranked(members: &[Anomaly], edges: &[(&str, &str)]) -> Vec<RootCause> {
    let mut graph = ServiceGraph::new(3_600_000, 1000);
    graph.on_window(&window(0, edges));
    let history = History::new(30, 1000);
    let members: Vec<&Anomaly> = members.iter().collect();
    rank(&Inputs {
        members: &members,
        graph: &graph,
        history: &history,
        window_ms: W,
        hops: 2,
    })
}

fn names(ranked: &[RootCause]) -> Vec<&str> {
    ranked.iter().map(|r| r.service.as_str()).collect()
}

const SHOP: [(&str, &str); 6] = [
    ("web", "cart"),
    ("web", "checkout"),
    ("checkout", "payments"),
    ("checkout", "pricing"),
    ("pricing", "redis"),
    ("cart", "redis"),
];

#[test]
fn the_deepest_anomalous_node_explains_its_callers() {
    // pricing is slow; checkout and web are slow because of it. They are
    // noticed in the order a busy entry point shows it first.
    let members = [
        on("web", "service", "", 1, 0.9),
        on("checkout", "service", "", 1, 0.9),
        on("pricing", "service", "", 1, 0.7),
    ];
    let ranked = ranked(&members, &SHOP);
    assert_eq!(names(&ranked), vec!["pricing", "checkout", "web"]);
    let topology = ranked[0]
        .evidence
        .iter()
        .find(|e| e.signal == Signal::Topology)
        .expect("topology evidence");
    assert!(topology.spoke, "{topology:?}");
    assert!(ranked.iter().all(|r| (0.0..=1.0).contains(&r.score)));
}

#[test]
fn a_silent_database_is_blamed_through_its_callers_edges() {
    // redis sends nothing; both callers see their calls to it slow down.
    let members = [
        on("cart", "edge", "callee=redis,callee_kind=database", 1, 0.8),
        on(
            "pricing",
            "edge",
            "callee=redis,callee_kind=database",
            1,
            0.8,
        ),
        on("cart", "service", "", 1, 0.8),
        on("web", "service", "", 2, 0.9),
    ];
    let ranked = ranked(&members, &SHOP);
    assert_eq!(ranked[0].service, "redis", "{ranked:#?}");
    assert!(ranked[0].evidence[0].detail.contains("seen by its caller"));
}

#[test]
fn a_metric_naming_a_peer_implicates_the_peer() {
    let mut a = on("web", "metric", "peer.service=cart", 1, 0.9);
    a.key.name = "rpc.client.duration".into();
    assert_eq!(implicated(&a.key), ("cart".to_string(), true));
    // On the server side the same attribute names the caller.
    a.key.name = "rpc.server.duration".into();
    assert_eq!(implicated(&a.key), ("web".to_string(), false));
    let own = on("web", "metric", "host=a", 1, 0.9);
    assert_eq!(implicated(&own.key), ("web".to_string(), false));
}

#[test]
fn a_released_callers_slower_calls_are_its_own() {
    // checkout was just released and its calls to shipping slowed while its
    // callers see errors: the release, not shipping, is the cause.
    let mut calls = on(
        "checkout",
        "edge",
        "callee=shipping,callee_kind=service",
        1,
        1.0,
    );
    calls.class = FailureClass::FaultyDeployment;
    let errors = on("web", "edge", "callee=checkout,callee_kind=service", 1, 0.9);
    let ranked = ranked(
        &[calls, errors],
        &[("web", "checkout"), ("checkout", "shipping")],
    );
    assert_eq!(ranked[0].service, "checkout");
    assert_eq!(ranked[0].class, FailureClass::FaultyDeployment);
    assert!(
        !names(&ranked).contains(&"shipping"),
        "{:?}",
        names(&ranked)
    );
}

#[test]
fn a_caller_that_skips_calls_is_its_own_cause() {
    // web's requests end early: its calls per request to cart dropped. The
    // cart did not fail; web's own code did.
    let skipped = |callee: &str| {
        let mut a = on(
            "web",
            "edge",
            &format!("callee={callee},callee_kind=service"),
            1,
            1.0,
        );
        a.key.name = crate::detect::rows::CALLS_PER_REQUEST.into();
        a.class = FailureClass::TrafficAnomaly;
        a
    };
    let ranked = ranked(&[skipped("cart")], &[("web", "cart")]);
    assert_eq!(names(&ranked), ["web"], "{ranked:#?}");
    assert_eq!(ranked[0].class, FailureClass::TrafficAnomaly);
}

#[test]
fn a_version_change_before_onset_speaks_for_its_service() {
    // Two unconnected services, same strength and time: the one just deployed
    // leads, and its class says so.
    let mut deployed = on("payments", "service", "", 1, 0.8);
    deployed.class = FailureClass::FaultyDeployment;
    deployed.detail = "moved from version 1.4 to 1.5".into();
    let members = [on("cart", "service", "", 1, 0.8), deployed];
    let ranked = ranked(&members, &[]);
    assert_eq!(ranked[0].service, "payments");
    assert_eq!(ranked[0].class, FailureClass::FaultyDeployment);
    let change = ranked[0]
        .evidence
        .iter()
        .find(|e| e.signal == Signal::Change)
        .expect("change evidence");
    assert!(change.spoke && change.detail.contains("1.5"));
}

#[test]
fn without_a_graph_the_first_and_strongest_leads() {
    // Metrics only: no edges at all. Topology says nothing for anyone.
    let members = [
        on("cart", "metric", "", 3, 0.9),
        on("payments", "metric", "", 1, 0.6),
        on("web", "metric", "", 2, 0.6),
    ];
    let ranked = ranked(&members, &[]);
    assert_eq!(names(&ranked)[0], "payments");
    assert!(
        ranked
            .iter()
            .all(|r| r.evidence.iter().all(|e| e.signal != Signal::Topology))
    );
}

#[test]
fn correlation_follows_the_series_that_moves_with_the_symptom() {
    // web's latency follows pricing's over the last windows; cart's does not.
    let mut history = History::new(30, 1000);
    let series = |w: i64| -> (f64, f64) {
        let pricing = if w >= 20 {
            50.0 + (w - 20) as f64 * 10.0
        } else {
            10.0 + (w % 3) as f64
        };
        let cart = 10.0 + ((w * 7) % 5) as f64;
        (pricing, cart)
    };
    for w in 0..30 {
        let (pricing, cart) = series(w);
        history.on_window(&crate::incident::tests::red_window(
            w,
            &[
                ("web", pricing * 2.0 + 5.0),
                ("pricing", pricing),
                ("cart", cart),
            ],
        ));
    }
    let key = |s: &str| SeriesKey {
        service: s.into(),
        signal: "service".into(),
        name: "p95_ms".into(),
        attributes: String::new(),
    };
    let mut members = Vec::new();
    for s in ["web", "pricing", "cart"] {
        let mut a = on(s, "service", "", 20, 0.8);
        a.key = key(s);
        members.push(a);
    }
    let graph = ServiceGraph::new(3_600_000, 1000);
    let refs: Vec<&Anomaly> = members.iter().collect();
    let inputs = Inputs {
        members: &refs,
        graph: &graph,
        history: &history,
        window_ms: W,
        hops: 2,
    };
    let symptoms = vec![("web", key("web"))];
    let candidate = |i: usize| Candidate {
        anomalies: vec![&members[i]],
        pointed: false,
    };
    let pricing = correlation_signal(inputs.history, "pricing", &candidate(1), &symptoms);
    let cart = correlation_signal(inputs.history, "cart", &candidate(2), &symptoms);
    assert!(pricing.value > 0.9, "{pricing:?}");
    assert!(cart.value < 0.5, "{cart:?}");
    assert!(!rank(&inputs).is_empty());
}

#[test]
fn a_caller_whose_calls_to_many_peers_slow_at_once_is_the_suspect() {
    // web's CPU is starved: every call it makes looks slow from its side,
    // while cart and checkout serve as fast as ever.
    let members = [
        on("web", "edge", "callee=cart,callee_kind=service", 1, 0.9),
        on("web", "edge", "callee=checkout,callee_kind=service", 1, 0.9),
        on("web", "service", "", 1, 0.9),
    ];
    let ranked = ranked(&members, &SHOP);
    assert_eq!(names(&ranked), vec!["web"], "{ranked:#?}");
}

#[test]
fn a_caller_short_of_cpu_owns_its_slower_calls() {
    // web's CPU is starved: its one call edge that fired looks slow from its
    // side, and its own CPU metric rose; cart, which it calls, is fine.
    let cpu = |service: &str, name: &str, observed: f64| {
        let mut a = on(service, "metric", "", 2, 0.97);
        a.key.name = name.into();
        a.class = FailureClass::Saturation;
        (a.observed, a.expected) = (observed, 0.5);
        a
    };
    let mut slow_calls = on("web", "edge", "callee=cart,callee_kind=service", 1, 1.0);
    slow_calls.key.name = "p50_ms".into();
    let starved = [slow_calls.clone(), cpu("web", "pod.cpu.usage_rate", 0.95)];
    assert_eq!(names(&ranked(&starved, &SHOP)), vec!["web"]);
    // Its failing calls are not explained by its CPU: cart fails.
    let mut failing = slow_calls.clone();
    failing.key.name = "error_rate".into();
    let ranked_failing = ranked(&[failing, cpu("web", "pod.cpu.usage_rate", 0.95)], &SHOP);
    assert_eq!(names(&ranked_failing)[0], "cart", "{ranked_failing:#?}");
    // Without it, cart is what web waits on; nor does a CPU that fell, or
    // the host's CPU, say web is short of it.
    let waiting = [slow_calls.clone()];
    assert_eq!(names(&ranked(&waiting, &SHOP)), vec!["cart"]);
    let mut fell = cpu("web", "pod.cpu.usage_rate", 0.1);
    fell.class = FailureClass::Generic;
    for other in [
        fell,
        cpu("web", "node.cpu.usage_rate", 0.95),
        cpu("web", "pod.memory.usage_rate", 0.95),
    ] {
        let ranked = ranked(&[slow_calls.clone(), other], &SHOP);
        assert_eq!(names(&ranked)[0], "cart", "{ranked:#?}");
    }
}

#[test]
fn a_dependency_new_just_before_onset_speaks_as_a_change() {
    let mut graph = ServiceGraph::new(3_600_000, 1000);
    for w in 0..20 {
        graph.on_window(&window(w, &SHOP));
    }
    let mut edges = SHOP.to_vec();
    edges.push(("checkout", "fraud-check"));
    graph.on_window(&window(20, &edges));
    let members = [
        on("checkout", "service", "", 21, 0.8),
        on("shipping", "service", "", 21, 0.8),
    ];
    let members: Vec<&Anomaly> = members.iter().collect();
    let history = History::new(30, 1000);
    let ranked = rank(&Inputs {
        members: &members,
        graph: &graph,
        history: &history,
        window_ms: W,
        hops: 2,
    });
    let checkout = ranked
        .iter()
        .find(|r| r.service == "checkout")
        .expect("ranked");
    let change = checkout
        .evidence
        .iter()
        .find(|e| e.signal == Signal::Change)
        .expect("change evidence");
    assert!(
        change.spoke && change.detail.contains("fraud-check"),
        "{change:?}"
    );
    assert_eq!(ranked[0].service, "checkout");
}

#[test]
fn a_caller_waiting_on_a_dead_dependency_is_not_blamed_for_its_own_time() {
    use crate::incident::history::tests::window as calls;
    let (mut waiting, mut slow) = (History::new(10, 100), History::new(10, 100));
    for w in 0..6 {
        let after = w >= 3;
        // Waits 1.5 s on `back`, 10 ms more of its own (from none).
        waiting.on_window(&calls(
            w,
            if after { 1510.0 } else { 50.0 },
            if after { 1500.0 } else { 50.0 },
        ));
        // Slow itself: 40 ms more of its own, `back` unchanged.
        slow.on_window(&calls(w, if after { 90.0 } else { 50.0 }, 40.0));
    }
    let waiting = trace_signal(&waiting, "front", 3 * W);
    let slow = trace_signal(&slow, "front", 3 * W);
    assert!(waiting.value < 0.01, "{waiting:?}");
    assert!(slow.value > 0.7, "{slow:?}");
}

#[test]
fn a_busy_host_does_not_make_a_callee_explain_its_caller() {
    // web's own CPU saturates; cart, which web calls, runs on the same host and
    // reports the host's CPU too, a window earlier.
    let metric = |service: &str, name: &str, onset_w: i64| {
        let mut a = on(service, "metric", "", onset_w, 0.97);
        a.key.name = name.into();
        a.class = FailureClass::Saturation;
        a
    };
    let members = [
        metric("cart", "node.cpu.usage_rate", 1),
        metric("web", "pod.cpu.usage_rate", 2),
        on("web", "service", "", 2, 0.9),
    ];
    let ranked = ranked(&members, &SHOP);
    assert_eq!(names(&ranked)[0], "web", "{ranked:#?}");
    // Its own CPU would have made cart the suspect.
    let mut own = members.clone();
    own[0].key.name = "pod.cpu.usage_rate".into();
    assert_eq!(names(&super::tests::ranked(&own, &SHOP))[0], "cart");
}
