//! Root cause on two topologies of different shape (a shop with fan-out, a
//! cache, a database, a payment provider and an order queue; a social feed with
//! a deep chain, two databases, an object store and an analytics topic), with
//! spans and logs sent by the real OpenTelemetry SDK over OTLP/gRPC (per-pod CPU
//! gauges by the generated OTLP/gRPC client). Each failure is
//! injected into one node after 30 healthy seconds (1 s windows): the engine
//! must open exactly one incident within 3 windows of onset and rank the faulty
//! node first; a deploy that changes nothing opens none. One fault leaves no
//! error anywhere: a node that answers wrongly, after which its callers give up
//! their requests (found by where requests end, `window::last_calls`). The table of what was
//! injected and what was ranked is printed (`cargo test rca -- --nocapture`).

pub(crate) mod topology;

use homeostat::api::query::pb;
use homeostat::api::query::pb::query_client::QueryClient;
use topology::{Fault, Kind, Node, Topology, Traffic};

use crate::support;

const CONFIG: &str = "[window]\nsize = \"1s\"\n[detect.baseline]\nwarmup = 20\n";
const SECONDS: u64 = 45;
const ONSET: u64 = 30;

pub(crate) fn node(name: &'static str, kind: Kind, own_ms: f64) -> Node {
    Node { name, kind, own_ms }
}

/// web -> cart, catalog, checkout; checkout -> payments, shipping, currency,
/// the `orders` queue (consumed by fulfillment); payments -> stripe; cart ->
/// redis; catalog and recommendation -> postgres; fulfillment -> email.
pub(crate) fn shop() -> Topology {
    use Kind::*;
    Topology {
        nodes: vec![
            node("web", Service, 3.0),
            node("cart", Service, 2.0),
            node("catalog", Service, 4.0),
            node("recommendation", Service, 3.0),
            node("checkout", Service, 5.0),
            node("payments", Service, 6.0),
            node("shipping", Service, 3.0),
            node("currency", Service, 1.0),
            node("fulfillment", Service, 4.0),
            node("email", Service, 2.0),
            node("redis", Database("redis"), 0.5),
            node("postgres", Database("postgresql"), 3.0),
            node("api.stripe.example", External, 20.0),
            node("orders", Queue("fulfillment"), 1.0),
        ],
        calls: vec![
            ("web", "cart"),
            ("web", "catalog"),
            ("web", "recommendation"),
            ("web", "checkout"),
            ("cart", "redis"),
            ("catalog", "postgres"),
            ("recommendation", "catalog"),
            ("checkout", "currency"),
            ("checkout", "payments"),
            ("checkout", "shipping"),
            ("checkout", "orders"),
            ("payments", "api.stripe.example"),
            ("fulfillment", "email"),
        ],
        entries: vec!["web"],
    }
}

/// Two entry points (gateway, admin) over a deep chain: gateway -> auth ->
/// users-db; gateway -> feed -> timeline -> posts -> posts-db, posts -> media ->
/// s3; feed -> ranker -> features (memcached), ranker -> model; timeline ->
/// `views` topic (consumed by analytics) ; analytics -> warehouse.
fn feed() -> Topology {
    use Kind::*;
    Topology {
        nodes: vec![
            node("gateway", Service, 2.0),
            node("admin", Service, 2.0),
            node("auth", Service, 2.0),
            node("feed", Service, 3.0),
            node("timeline", Service, 4.0),
            node("posts", Service, 3.0),
            node("media", Service, 5.0),
            node("ranker", Service, 6.0),
            node("model", Service, 8.0),
            node("analytics", Service, 3.0),
            node("users-db", Database("postgresql"), 2.0),
            node("posts-db", Database("cassandra"), 4.0),
            node("features", Database("memcached"), 0.5),
            node("warehouse", Database("clickhouse"), 10.0),
            node("s3.example", External, 15.0),
            node("views", Queue("analytics"), 1.0),
        ],
        calls: vec![
            ("gateway", "auth"),
            ("gateway", "feed"),
            ("admin", "auth"),
            ("admin", "posts"),
            ("auth", "users-db"),
            ("feed", "timeline"),
            ("feed", "ranker"),
            ("timeline", "posts"),
            ("timeline", "views"),
            ("posts", "posts-db"),
            ("posts", "media"),
            ("media", "s3.example"),
            ("ranker", "features"),
            ("ranker", "model"),
            ("analytics", "warehouse"),
        ],
        entries: vec!["gateway", "admin"],
    }
}

/// What one scenario gave: incidents (newest first).
async fn run(
    topology: fn() -> Topology,
    fault: Fault,
    seed: u64,
    base: std::time::SystemTime,
) -> (Vec<pb::Incident>, Vec<(String, String, String)>) {
    let engine = support::engine(CONFIG).await;
    let grpc = format!("http://{}", engine.grpc_addr);
    tokio::task::spawn_blocking(move || {
        let topology = topology();
        let traffic = Traffic {
            topology: &topology,
            base,
            seconds: SECONDS,
            per_second: 8,
            fault: Some((fault, ONSET)),
            healed: None,
            pace: None,
        };
        topology::send(&traffic, &grpc, seed);
    })
    .await
    .expect("the SDK sent");
    engine.flush().await;
    let mut client = QueryClient::connect(format!("http://{}", engine.api_addr))
        .await
        .expect("query API");
    let mut incidents = client
        .list_incidents(pb::ListIncidentsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .incidents;
    for incident in &mut incidents {
        *incident = client
            .get_incident(pb::GetIncidentRequest { id: incident.id })
            .await
            .expect("get")
            .into_inner();
    }
    let graph = client
        .get_service_graph(pb::GetServiceGraphRequest {})
        .await
        .expect("graph")
        .into_inner();
    engine.shutdown().await;
    for e in &graph.edges {
        assert!(
            e.exemplar_trace_id.len() == 32
                && e.exemplar_trace_id.bytes().all(|b| b.is_ascii_hexdigit()),
            "edge {} -> {} has no exemplar trace id: {e:?}",
            e.caller,
            e.callee
        );
    }
    let edges = graph
        .edges
        .into_iter()
        .map(|e| (e.caller, e.callee, e.callee_kind))
        .collect();
    (incidents, edges)
}

/// One line of the table, and whether the case passed: (top 1, top 3).
struct Outcome {
    line: String,
    ok: bool,
    top1: bool,
}

fn judge(fault: Fault, base_ms: i64, incidents: &[pb::Incident]) -> Outcome {
    let onset_ms = base_ms + ONSET as i64 * 1000;
    let ranked = |i: &pb::Incident| -> Vec<String> {
        i.root_causes
            .iter()
            .take(3)
            .map(|r| format!("{} ({}, {:.2})", r.service, r.class, r.score))
            .collect()
    };
    if let Fault::Deploy(service) = fault {
        let ok = incidents.is_empty();
        return Outcome {
            line: format!(
                "| harmless deploy | {service} | {} incidents | - | {} |",
                incidents.len(),
                if ok { "yes" } else { "NO" }
            ),
            ok,
            top1: ok,
        };
    }
    let Some(incident) = incidents.last() else {
        return Outcome {
            line: format!("| {fault:?} | {} | no incident | - | NO |", fault.node()),
            ok: false,
            top1: false,
        };
    };
    let position = incident
        .root_causes
        .iter()
        .position(|r| r.service == fault.node());
    let windows = (incident.opened_unix_ms - onset_ms) / 1000;
    let timely = (-1..=3).contains(&windows);
    let ok = incidents.len() == 1 && timely && position.is_some_and(|p| p < 3);
    Outcome {
        line: format!(
            "| {fault:?} | {} | {} incident(s), opened {windows:+} windows | {} | {} |",
            fault.node(),
            incidents.len(),
            ranked(incident).join("; "),
            match position {
                Some(p) => format!("rank {}", p + 1),
                None => "not ranked".into(),
            }
        ),
        ok,
        top1: ok && position == Some(0),
    }
}

/// Runs each fault on `topology`; every run's service graph must hold `edges`
/// (synchronous calls, databases, external endpoints, producer -> destination,
/// producer -> consumer), each (caller, callee, callee kind).
async fn scenarios(
    name: &str,
    topology: fn() -> Topology,
    edges: &[(&str, &str, &str)],
    faults: &[Fault],
) {
    let mut lines = vec![
        format!("{name}:"),
        "| fault | node | incidents | ranked (top 3) | found |".to_string(),
        "|---|---|---|---|---|".to_string(),
    ];
    let (mut all_ok, mut top1) = (true, 0);
    for (seed, fault) in faults.iter().enumerate() {
        let base = topology::past(SECONDS + 30);
        let base_ms = base
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as i64;
        let (incidents, graph) = run(topology, *fault, seed as u64 + 1, base).await;
        for (caller, callee, kind) in edges {
            assert!(
                graph
                    .iter()
                    .any(|(a, b, k)| a == caller && b == callee && k == kind),
                "{name}: no {kind} edge {caller} -> {callee} in {graph:?}"
            );
        }
        let outcome = judge(*fault, base_ms, &incidents);
        all_ok &= outcome.ok;
        top1 += usize::from(outcome.top1);
        lines.push(outcome.line);
    }
    let table = lines.join("\n");
    println!("{table}\nfirst: {top1}/{}", faults.len());
    assert!(all_ok, "{table}");
    assert!(
        top1 * 10 >= faults.len() * 9,
        "right root cause first in {top1}/{}:\n{table}",
        faults.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shop_root_causes_are_ranked_first() {
    scenarios(
        "shop",
        shop,
        &[
            ("web", "checkout", "service"),
            ("cart", "redis", "database"),
            ("payments", "api.stripe.example", "external"),
            ("checkout", "orders", "messaging"),
            ("checkout", "fulfillment", "service"),
        ],
        &[
            Fault::Latency("payments", 8.0),
            Fault::Errors("redis", 0.3),
            Fault::Latency("postgres", 6.0),
            Fault::Errors("api.stripe.example", 0.4),
            Fault::Errors("email", 0.5),
            Fault::ErrorLogs("shipping"),
            Fault::CpuStarved("catalog"),
            Fault::WrongAnswers("catalog", 0.8),
            Fault::Deploy("catalog"),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_root_causes_are_ranked_first() {
    scenarios(
        "feed",
        feed,
        &[
            ("gateway", "feed", "service"),
            ("posts", "posts-db", "database"),
            ("media", "s3.example", "external"),
            ("timeline", "views", "messaging"),
            ("timeline", "analytics", "service"),
        ],
        &[
            Fault::Latency("model", 6.0),
            Fault::Errors("posts-db", 0.3),
            Fault::Latency("s3.example", 5.0),
            Fault::Errors("auth", 0.3),
            Fault::Latency("warehouse", 5.0),
            Fault::ErrorLogs("ranker"),
            Fault::CpuStarved("posts"),
            Fault::WrongAnswers("timeline", 0.8),
            Fault::Deploy("timeline"),
        ],
    )
    .await;
}
