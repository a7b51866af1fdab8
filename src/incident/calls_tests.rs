use super::*;
use crate::incident::graph::ServiceGraph;
use crate::incident::rank::{Inputs, RootCause, rank};
use crate::window::WindowTables;
use crate::window::tables::{Cell, Red, TableBuilder};

const W: i64 = 10_000;
/// The first degraded window.
const ONSET: i64 = 10;

/// One window: services with the mean time of their 100 requests, calls
/// (caller, callee, kind, mean ms, failed of 100).
fn window(
    w: i64,
    services: &[(&str, f64)],
    calls: &[(&str, &str, &str, f64, u64)],
) -> WindowTables {
    let (start, end) = (w * W, (w + 1) * W);
    let mut service = TableBuilder::new(0, start, end);
    for (name, mean) in services {
        let mut red = Red::default();
        for _ in 0..100 {
            red.add(*mean, false);
        }
        service.red_row(&["", name, ""], &red);
    }
    let mut edge = TableBuilder::new(2, start, end);
    for (caller, callee, kind, mean, failed) in calls {
        edge.row(
            &["", caller, "", "", callee, "", kind, ""],
            &[
                Cell::U64(Some(100)),
                Cell::U64(Some(*failed)),
                Cell::F64(Some(*failed as f64 / 100.0)),
                Cell::F64(Some(*mean)),
                Cell::F64(Some(*mean)),
                Cell::F64(Some(*mean)),
                Cell::U64(None),
            ],
        );
    }
    crate::incident::testing::tables((start, end), service, edge)
}

/// frontend -> checkout -> {payment -> provider (external), cart}: healthy
/// windows, then from [`ONSET`] on what `fault` makes of them.
fn history_of(fault: impl Fn(bool) -> Shop) -> (History, ServiceGraph) {
    let mut history = History::new(30, 1000);
    let mut graph = ServiceGraph::new(3_600_000, 1000);
    for w in 0..ONSET + 2 {
        let shop = fault(w >= ONSET);
        let tables = window(w, &shop.services, &shop.calls);
        history.on_window(&tables);
        graph.on_window(&tables);
    }
    (history, graph)
}

struct Shop {
    services: Vec<(&'static str, f64)>,
    calls: Vec<(&'static str, &'static str, &'static str, f64, u64)>,
}

/// The provider stops answering: calls to it fail after a 1.5 s timeout.
fn outage(on: bool) -> Shop {
    let (provider_ms, failed) = if on { (1500.0, 80) } else { (50.0, 1) };
    let payment = provider_ms + 10.0;
    let checkout = payment + 10.0 + 30.0;
    Shop {
        services: vec![
            ("frontend", checkout + 20.0),
            ("checkout", checkout),
            ("payment", payment),
            ("cart", 10.0),
        ],
        calls: vec![
            ("frontend", "checkout", "service", checkout, failed),
            ("checkout", "payment", "service", payment, failed),
            ("checkout", "cart", "service", 10.0, 0),
            ("payment", "provider", "external", provider_ms, failed),
        ],
    }
}

/// checkout's CPU saturates: its own time grows tenfold, and its calls, timed
/// on its side, wait behind it too.
fn saturated(on: bool) -> Shop {
    let mut shop = outage(false);
    if on {
        shop.services[1].1 = 60.0 + 10.0 + 300.0;
        shop.services[0].1 = 390.0;
        shop.calls[0].3 = 370.0;
        shop.calls[1].3 = 130.0;
    }
    shop
}

fn latency(service: &str) -> Anomaly {
    let mut a = crate::incident::testing::anomaly(service, ONSET);
    a.key.name = "p95_ms".into();
    a.class = FailureClass::LatencyDegradation;
    a.onset_ms = ONSET * W;
    a
}

fn ranked(members: &[Anomaly], history: &History, graph: &ServiceGraph) -> Vec<RootCause> {
    let members: Vec<&Anomaly> = members.iter().collect();
    rank(&Inputs {
        members: &members,
        graph,
        history,
        window_ms: W,
        hops: 2,
    })
}

#[test]
fn a_failing_provider_is_named_before_detection_reaches_it() {
    // Only checkout's and frontend's latency fired so far.
    let (history, graph) = history_of(outage);
    let members = [latency("checkout"), latency("frontend")];
    let ranked = ranked(&members, &history, &graph);
    assert_eq!(ranked[0].service, "provider", "{ranked:#?}");
    assert_eq!(ranked[0].class, FailureClass::DependencyFailure);
    assert!(
        ranked[0].evidence[0].detail.contains("seen by its caller"),
        "{:?}",
        ranked[0].evidence[0]
    );
    assert!(ranked.iter().any(|r| r.service == "checkout"));
}

#[test]
fn a_caller_slow_itself_is_not_looked_past() {
    let (history, graph) = history_of(saturated);
    let nodes: BTreeSet<String> = ["checkout", "frontend"].map(String::from).into();
    assert!(below(&history, &nodes, ONSET * W, 2).is_empty());
    let members = [latency("checkout"), latency("frontend")];
    assert_eq!(ranked(&members, &history, &graph)[0].service, "checkout");
}

#[test]
fn healthy_calls_add_nothing() {
    let (history, _) = history_of(outage);
    let nodes: BTreeSet<String> = ["cart"].map(String::from).into();
    assert!(below(&history, &nodes, ONSET * W, 2).is_empty());
    // Before onset, nothing had degraded.
    let (history, _) = history_of(|_| outage(false));
    let nodes: BTreeSet<String> = ["checkout"].map(String::from).into();
    assert!(below(&history, &nodes, ONSET * W, 2).is_empty());
}

#[test]
fn a_caller_whose_calls_to_two_peers_degraded_is_the_common_factor() {
    let both = |on: bool| {
        let mut shop = outage(on);
        if on {
            shop.calls[2].3 = 100.0;
        }
        shop
    };
    let (history, _) = history_of(both);
    let nodes: BTreeSet<String> = ["checkout"].map(String::from).into();
    assert!(below(&history, &nodes, ONSET * W, 2).is_empty());
}

/// cart is called by checkout and by the front end. `contended`: checkout's
/// calls to it, timed on checkout's side, take eight times longer (checkout's
/// CPU is starved), while the front end's calls and cart's own requests are as
/// fast as ever. `slow_cart`: cart itself slows down, for both callers.
fn two_callers(contended: bool, slow_cart: bool) -> Shop {
    let mut shop = outage(false);
    shop.calls.push(("frontend", "cart", "service", 10.0, 0));
    if contended {
        shop.calls[2].3 = 80.0;
        shop.services[1].1 += 70.0;
    }
    if slow_cart {
        shop.services[3].1 = 80.0;
        shop.calls[2].3 = 80.0;
        shop.calls[4].3 = 80.0;
    }
    shop
}

fn checkout_sees_cart_slow() -> [Anomaly; 2] {
    let mut edge = latency("checkout");
    edge.key.signal = "edge".into();
    edge.key.name = "p99_ms".into();
    edge.key.attributes = "callee=cart,callee_kind=service".into();
    [edge, latency("checkout")]
}

#[test]
fn a_peer_only_one_caller_finds_slow_is_waiting_on_that_caller() {
    let (history, graph) = history_of(|on| two_callers(on, false));
    assert!(slowed_alone(&history, "checkout", "cart", ONSET * W));
    let first = ranked(&checkout_sees_cart_slow(), &history, &graph);
    assert_eq!(first[0].service, "checkout", "{first:#?}");
    // A cart slow for every caller is the cart's fault.
    let (history, graph) = history_of(|on| two_callers(false, on));
    assert!(!slowed_alone(&history, "checkout", "cart", ONSET * W));
    let first = ranked(&checkout_sees_cart_slow(), &history, &graph);
    assert_eq!(first[0].service, "cart", "{first:#?}");
    // With no other caller to compare with, the peer stays the suspect.
    let (history, _) = history_of(outage);
    assert!(!slowed_alone(&history, "payment", "provider", ONSET * W));
}

#[test]
fn calls_failing_for_one_caller_are_followed_though_their_slowdown_is_its_own() {
    // checkout's calls to cart slow down (checkout's contention: frontend's
    // calls to cart stay fast) and also fail: the slowdown is checkout's, the
    // errors are cart's answers, and the walk follows them as the ranking does.
    let (history, _) = history_of(|on| {
        let mut shop = two_callers(on, false);
        if on {
            shop.calls[2].4 = 30;
        }
        shop
    });
    assert!(slowed_alone(&history, "checkout", "cart", ONSET * W));
    let nodes = BTreeSet::from(["checkout".to_string()]);
    let found = below(&history, &nodes, ONSET * W, 2);
    let names: Vec<&str> = found.iter().map(|a| a.key.name.as_str()).collect();
    assert_eq!(names, ["error_rate"], "{found:#?}");
    assert_eq!(implicated(&found[0].key).0, "cart");
}

/// The front end calls checkout and currency, checkout calls currency, and
/// currency's network delays every answer by 600 ms (its own time unchanged).
fn delayed_currency(on: bool) -> Shop {
    let currency = if on { 605.0 } else { 5.0 };
    Shop {
        services: vec![
            ("frontend", 3.0 * currency + 200.0),
            ("checkout", 2.0 * currency + 100.0),
            ("currency", 1.0),
        ],
        calls: vec![
            ("frontend", "checkout", "service", 2.0 * currency + 100.0, 0),
            ("frontend", "currency", "service", currency, 0),
            ("checkout", "currency", "service", currency, 0),
        ],
    }
}

#[test]
fn a_peer_slow_because_it_waits_on_another_does_not_make_two() {
    let (history, _) = history_of(delayed_currency);
    let nodes = BTreeSet::from(["frontend".to_string()]);
    let found = below(&history, &nodes, ONSET * W, 2);
    let callees: BTreeSet<String> = found.iter().map(|a| implicated(&a.key).0).collect();
    assert_eq!(
        callees,
        BTreeSet::from(["currency".to_string()]),
        "{found:#?}"
    );
}

#[test]
fn a_few_milliseconds_more_for_another_caller_do_not_clear_the_caller() {
    // checkout's calls to cart take 70 ms more (its CPU is starved); the
    // front end's, a few a window, happen to average 6 ms more (1.6 times).
    let front_end_at = |ms: f64| {
        move |on: bool| {
            let mut shop = two_callers(on, false);
            if on {
                shop.calls[4].3 = ms;
            }
            shop
        }
    };
    let (history, _) = history_of(front_end_at(16.0));
    assert!(slowed_alone(&history, "checkout", "cart", ONSET * W));
    // Slowed by as much as checkout's, they would.
    let (history, _) = history_of(front_end_at(60.0));
    assert!(!slowed_alone(&history, "checkout", "cart", ONSET * W));
}

#[test]
fn with_no_before_callers_are_compared_as_they_stand() {
    // Traces begin as the fault does (sampled, or switched on for it): no
    // window before onset. checkout's calls to cart take 80 ms, the front
    // end's 10 ms, and cart serves its requests in 10 ms: checkout waits alone.
    let only_after = |shop: fn(bool, bool) -> Shop, contended, slow| {
        let mut history = History::new(30, 1000);
        for w in ONSET..ONSET + 3 {
            let shop = shop(contended, slow);
            history.on_window(&window(w, &shop.services, &shop.calls));
        }
        history
    };
    let history = only_after(two_callers, true, false);
    assert!(slowed_alone(&history, "checkout", "cart", ONSET * W));
    // A cart slow in its own requests is slow for both callers.
    let history = only_after(two_callers, false, true);
    assert!(!slowed_alone(&history, "checkout", "cart", ONSET * W));
    // Calls slow beyond cart's own time for both callers (cart's network).
    let history = only_after(
        |_, _| {
            let mut shop = two_callers(false, false);
            shop.calls[2].3 = 80.0;
            shop.calls[4].3 = 80.0;
            shop
        },
        false,
        false,
    );
    assert!(!slowed_alone(&history, "checkout", "cart", ONSET * W));
}

#[test]
fn one_slow_window_since_onset_is_not_a_degraded_call() {
    // checkout's calls to cart: 10 ms, then one window of 300 ms among
    // ordinary ones since onset (a straggler, not a shift).
    let mut history = History::new(30, 1000);
    for w in 0..ONSET + 3 {
        let mut shop = outage(false);
        if w == ONSET + 1 {
            shop.calls[2].3 = 300.0;
        }
        history.on_window(&window(w, &shop.services, &shop.calls));
    }
    let nodes = BTreeSet::from(["checkout".to_string()]);
    assert!(below(&history, &nodes, ONSET * W, 2).is_empty());
    // Held for two of the three windows, it is.
    let mut history = History::new(30, 1000);
    for w in 0..ONSET + 3 {
        let mut shop = outage(false);
        if w > ONSET {
            shop.calls[2].3 = 300.0;
        }
        history.on_window(&window(w, &shop.services, &shop.calls));
    }
    let found = below(&history, &nodes, ONSET * W, 2);
    assert!(
        found.iter().any(|a| implicated(&a.key).0 == "cart"),
        "{found:#?}"
    );
}
