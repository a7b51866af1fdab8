use super::*;

fn span(span: u64, parent: Option<u64>, service: &str, kind: i32, end_ns: u64) -> PairSpan<'_> {
    PairSpan {
        trace: 7,
        span,
        parent,
        service: ["", service, ""],
        kind,
        end_ns,
        duration_ms: 5.0,
        error: false,
        database: None,
        peer: None,
        destination: None,
        entry: None,
    }
}

fn name(id: &Arc<str>) -> &str {
    node_parts(id)[1]
}

#[test]
fn a_leaf_edge_names_its_caller_span() {
    // (A paired edge's: `pairs_in_either_order_and_once`.)
    let mut store = PairingStore::new(1_000, 10_000_000_000, 100);
    let mut out = Vec::new();
    // A database call, an unpaired call to an external peer.
    store.offer(
        PairSpan {
            database: Some("orders-db"),
            ..span(3, Some(9), "a", kind::CLIENT, 100)
        },
        &mut out,
    );
    store.offer(
        PairSpan {
            peer: Some("payments.example"),
            ..span(4, Some(9), "a", kind::CLIENT, 100)
        },
        &mut out,
    );
    store.expire(u64::MAX, &mut out);
    let keys: Vec<(&str, u64)> = out
        .iter()
        .map(|e| (name(&e.callee), e.caller_key))
        .collect();
    assert_eq!(
        keys,
        [
            ("orders-db", span_key(7, 3)),
            ("payments.example", span_key(7, 4))
        ]
    );
}

#[test]
fn pairs_in_either_order_and_once() {
    for client_first in [true, false] {
        let mut store = PairingStore::new(1_000, 10_000_000_000, 100);
        let mut out = Vec::new();
        let client = span(1, None, "a", kind::CLIENT, 100);
        let server = span(2, Some(1), "b", kind::SERVER, 90);
        if client_first {
            store.offer(client, &mut out);
            store.offer(server, &mut out);
        } else {
            store.offer(server, &mut out);
            store.offer(client, &mut out);
        }
        assert_eq!(out.len(), 1);
        assert_eq!((name(&out[0].caller), name(&out[0].callee)), ("a", "b"));
        assert_eq!(
            out[0].caller_key,
            span_key(7, 1),
            "client first: {client_first}"
        );
        store.expire(u64::MAX, &mut out);
        assert_eq!(out.len(), 1, "no leaf edge after pairing");
        assert!(store.is_empty());
    }
}

#[test]
fn spans_without_kind_still_pair_across_services() {
    let mut store = PairingStore::new(1_000, 10_000_000_000, 100);
    let mut out = Vec::new();
    store.offer(span(2, Some(1), "b", kind::UNSPECIFIED, 90), &mut out);
    store.offer(span(1, None, "a", kind::UNSPECIFIED, 100), &mut out);
    assert_eq!(out.len(), 1);
    store.offer(span(3, Some(1), "a", kind::UNSPECIFIED, 95), &mut out);
    assert_eq!(out.len(), 1, "same service is not an edge");
}

#[test]
fn unpaired_client_with_peer_becomes_external_and_capacity_is_enforced() {
    let mut store = PairingStore::new(1_000, 10_000_000_000, 1);
    let mut out = Vec::new();
    let mut client = span(1, None, "a", kind::CLIENT, 100);
    client.peer = Some("payments.example.com");
    store.offer(client, &mut out);
    store.offer(span(9, None, "a", kind::CLIENT, 100), &mut out);
    assert_eq!(store.counts().overflow, 1);
    store.expire(10_000_000_000, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].callee_kind, CalleeKind::External);
}

#[test]
fn several_callees_of_one_parent_all_pair_and_later_ones_survive_expiry() {
    let mut store = PairingStore::new(1_000, 10_000_000_000, 100);
    let mut out = Vec::new();
    // Consumers of one message, arriving before the producer; one expires first.
    store.offer(span(2, Some(1), "b", kind::CONSUMER, 100), &mut out);
    store.offer(span(3, Some(1), "c", kind::CONSUMER, 5_000), &mut out);
    store.offer(span(4, Some(1), "d", kind::CONSUMER, 6_000), &mut out);
    // Each waits as a callee (and in the recent table as a possible caller).
    assert_eq!(store.len(), 3);
    store.expire(2_000, &mut out);
    assert_eq!((store.len(), store.counts().unpaired), (2, 1));
    store.offer(span(1, None, "a", kind::PRODUCER, 50), &mut out);
    let mut callees: Vec<&str> = out.iter().map(|e| name(&e.callee)).collect();
    callees.sort();
    assert_eq!(callees, ["c", "d"]);
    assert!(out.iter().all(|e| name(&e.caller) == "a"));
    assert_eq!(store.len(), 1, "the producer waits for later consumers");
}

#[test]
fn a_server_parent_pairs_with_a_later_direct_callee_until_its_window_closes() {
    let window = 10_000_000_000;
    let mut store = PairingStore::new(1_000, window, 100);
    let mut out = Vec::new();
    // A proxy's SERVER span, then the backend's SERVER span directly under it.
    store.offer(span(1, None, "proxy", kind::SERVER, 100), &mut out);
    assert_eq!(store.len(), 0, "entry spans do not take the bounded store");
    store.offer(span(2, Some(1), "backend", kind::SERVER, 90), &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(
        (name(&out[0].caller), name(&out[0].callee)),
        ("proxy", "backend")
    );
    // Once the parent's window has closed, a late callee waits and expires unpaired.
    store.expire(window, &mut out);
    store.offer(span(3, Some(1), "late", kind::SERVER, 95), &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(store.len(), 1);
    store.expire(2 * window, &mut out);
    assert_eq!((store.len(), store.counts().unpaired), (0, 1));
}

#[test]
fn the_recent_table_keeps_its_size_and_counts_what_it_displaces() {
    let mut store = PairingStore::new(1_000, 10_000_000_000, 64);
    let mut out = Vec::new();
    for id in 1..=10_000u64 {
        store.offer(span(id, None, "a", kind::SERVER, 100), &mut out);
    }
    assert_eq!(store.len(), 0);
    assert_eq!(store.recent.slots.len(), 32);
    // 10,000 spans into 32 slots: all but at most 32 were displaced.
    assert!(
        store.counts().displaced >= 10_000 - 32,
        "{:?}",
        store.counts()
    );
    // The newest ones are still there to pair (kind-less probes stay out of the table).
    let held = (1..=10_000u64)
        .filter(|id| {
            let mut out = Vec::new();
            store.offer(
                span(100_000 + id, Some(*id), "b", kind::UNSPECIFIED, 90),
                &mut out,
            );
            !out.is_empty()
        })
        .count();
    assert!((1..=32).contains(&held), "{held}");
}

#[test]
fn names_stay_right_after_the_symbol_table_is_compacted() {
    let mut store = PairingStore::new(1_000, 10_000_000_000, 100_000);
    let mut out = Vec::new();
    let names: Vec<String> = (0..3 * COMPACT_MIN).map(|i| format!("svc-{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        store.offer(
            span(10 + i as u64, Some(1), name, kind::UNSPECIFIED, 100),
            &mut out,
        );
    }
    store.offer(
        span(5, Some(2), "late-callee", kind::SERVER, 50_000),
        &mut out,
    );
    store.expire(10_000, &mut out);
    assert!(store.symbols.len() < COMPACT_MIN, "{}", store.symbols.len());
    store.offer(span(2, None, "caller", kind::CLIENT, 60_000), &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(
        (name(&out[0].caller), name(&out[0].callee)),
        ("caller", "late-callee")
    );
}

#[test]
fn nodes_keep_namespace_and_environment_and_leaves_take_the_callers() {
    let mut store = PairingStore::new(1_000, 10_000_000_000, 100);
    let mut out = Vec::new();
    let mut client = span(1, None, "", kind::CLIENT, 100);
    client.service = ["shop", "web", "prod"];
    client.trace = 42;
    let mut server = span(2, Some(1), "", kind::SERVER, 90);
    server.service = ["shop", "cart", "prod"];
    server.trace = 42;
    store.offer(client, &mut out);
    store.offer(server, &mut out);
    let mut db = span(3, Some(2), "", kind::CLIENT, 80);
    db.service = ["shop", "cart", "staging"];
    db.database = Some("orders");
    db.trace = 43;
    store.offer(db, &mut out);
    let ids: Vec<_> = out
        .iter()
        .map(|e| (node_parts(&e.caller), node_parts(&e.callee), e.trace))
        .collect();
    assert_eq!(
        ids,
        [
            (["shop", "web", "prod"], ["shop", "cart", "prod"], 42),
            (
                ["shop", "cart", "staging"],
                ["shop", "orders", "staging"],
                43
            ),
        ]
    );
}

#[test]
fn a_producer_is_an_edge_to_its_destination_and_still_pairs_with_consumers() {
    let mut store = PairingStore::new(1_000, 10_000_000_000, 100);
    let mut out = Vec::new();
    let mut producer = span(1, None, "orders", kind::PRODUCER, 100);
    producer.destination = Some("order-events");
    store.offer(producer, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].callee_kind, CalleeKind::Messaging);
    assert_eq!(name(&out[0].callee), "order-events");
    store.offer(span(2, Some(1), "billing", kind::CONSUMER, 900), &mut out);
    assert_eq!(out.len(), 2);
    assert_eq!(
        (
            name(&out[1].caller),
            name(&out[1].callee),
            out[1].callee_kind
        ),
        ("orders", "billing", CalleeKind::Service)
    );
}

#[test]
fn an_external_edge_made_at_expiry_keeps_its_trace_id() {
    let mut store = PairingStore::new(1_000, 10_000_000_000, 100);
    let mut out = Vec::new();
    let mut client = span(1, None, "a", kind::CLIENT, 100);
    client.peer = Some("api.example.com");
    client.trace = 0xabc;
    store.offer(client, &mut out);
    store.expire(10_000_000_000, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(
        (name(&out[0].callee), out[0].trace),
        ("api.example.com", 0xabc)
    );
    assert!(store.peer_traces.is_empty());
}
