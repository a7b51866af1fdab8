//! Deployment correlation, end to end: a real OpenTelemetry SDK sends spans over
//! OTLP/gRPC from a service whose `service.version` changes mid-stream. The
//! change is a row of the `deployments` table; errors that begin right after it
//! are a `faulty_deployment` naming both versions; a deploy followed by nothing
//! raises nothing.

use std::time::{Duration, UNIX_EPOCH};

use opentelemetry::KeyValue as Attribute;
use opentelemetry::trace::{Span, SpanKind, Status, Tracer, TracerProvider};
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;

use crate::support::{self, num, text};

const SECONDS: u64 = 32;
pub(super) const DEPLOY: u64 = 23;

fn provider(grpc: &str, version: &str) -> SdkTracerProvider {
    let exporter = SpanExporter::builder()
        .with_tonic()
        .with_endpoint(grpc)
        .build()
        .expect("exporter");
    SdkTracerProvider::builder()
        .with_simple_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name("checkout")
                .with_attribute(Attribute::new("service.version", version.to_string()))
                .build(),
        )
        .build()
}

/// 20 requests a second to `checkout` for [`SECONDS`] seconds from version
/// 1.4.0, then from 1.5.0 from second `deploy` on (if any); from `spike` on, 60%
/// of them fail.
pub(super) async fn send(grpc: String, base_ns: u64, spike: Option<u64>, deploy: Option<u64>) {
    tokio::task::spawn_blocking(move || {
        let old = provider(&grpc, "1.4.0");
        let new = provider(&grpc, "1.5.0");
        for second in 0..SECONDS {
            let provider = if deploy.is_some_and(|d| second >= d) {
                &new
            } else {
                &old
            };
            let tracer = provider.tracer("checkout");
            for i in 0..20u64 {
                let start = UNIX_EPOCH
                    + Duration::from_nanos(base_ns + second * 1_000_000_000 + i * 40_000_000);
                let failed = match spike {
                    Some(s) if second >= s => i < 12,
                    _ => i < second % 3,
                };
                let mut span = tracer
                    .span_builder("POST /pay")
                    .with_kind(SpanKind::Server)
                    .with_start_time(start)
                    .with_attributes(vec![Attribute::new("http.route", "/pay")])
                    .start(&tracer);
                if failed {
                    span.set_status(Status::error("upstream refused"));
                }
                span.end_with_timestamp(start + Duration::from_millis(20 + i));
            }
        }
        old.shutdown().expect("flush old");
        new.shutdown().expect("flush new");
    })
    .await
    .expect("client ran");
}

pub(super) const CONFIG: &str = "[window]\nsize = \"1s\"\n[detect.baseline]\nwarmup = 20\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_right_after_a_version_change_are_a_faulty_deployment() {
    let engine = support::engine(CONFIG).await;
    let base_ns = support::aligned_past(30);
    let grpc = format!("http://{}", engine.grpc_addr);
    send(grpc, base_ns, Some(DEPLOY + 1), Some(DEPLOY)).await;
    engine.flush().await;

    let deploys = support::sql(
        engine.api_addr,
        "SELECT service_name, from_version, to_version, at FROM deployments",
    )
    .await;
    assert_eq!(deploys.len(), 1, "{deploys:?}");
    assert_eq!(text(&deploys[0], "from_version"), "1.4.0");
    assert_eq!(text(&deploys[0], "to_version"), "1.5.0");

    let rows = support::sql(
        engine.api_addr,
        "SELECT class, service, name, detail, observed FROM anomalies",
    )
    .await;
    let faulty = rows
        .iter()
        .find(|r| text(r, "class") == "faulty_deployment")
        .unwrap_or_else(|| panic!("no faulty_deployment among {rows:?}"));
    assert_eq!(text(faulty, "service"), "checkout");
    assert_eq!(text(faulty, "name"), "error_rate");
    let detail = text(faulty, "detail");
    assert!(
        detail.contains("1.4.0") && detail.contains("1.5.0") && detail.contains("error_spike"),
        "{detail}"
    );
    assert!((num(faulty, "observed") - 0.6).abs() < 1e-9, "{faulty}");

    // Every anomaly of the failure is one incident.
    let incidents = support::sql(
        engine.api_addr,
        "SELECT id, state, services, classes, anomalies FROM incidents",
    )
    .await;
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    assert_eq!(text(&incidents[0], "state"), "open");
    assert_eq!(text(&incidents[0], "services"), "checkout");
    assert!(
        text(&incidents[0], "classes").contains("faulty_deployment"),
        "{incidents:?}"
    );
    assert_eq!(num(&incidents[0], "anomalies"), rows.len() as f64);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_change_followed_by_nothing_is_no_anomaly() {
    let engine = support::engine(CONFIG).await;
    let base_ns = support::aligned_past(30);
    send(
        format!("http://{}", engine.grpc_addr),
        base_ns,
        None,
        Some(DEPLOY),
    )
    .await;
    engine.flush().await;
    let deploys = support::sql(engine.api_addr, "SELECT to_version FROM deployments").await;
    assert_eq!(deploys.len(), 1, "{deploys:?}");
    let rows = support::sql(engine.api_addr, "SELECT class, detail FROM anomalies").await;
    assert!(rows.is_empty(), "{rows:?}");
    let incidents = support::sql(engine.api_addr, "SELECT id FROM incidents").await;
    assert!(incidents.is_empty(), "{incidents:?}");
    engine.shutdown().await;
}

/// With `store.path`, the incidents and version changes survive a restart; a
/// damaged state file stops the next start with an error naming it, never an
/// empty history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incidents_survive_a_restart_and_a_damaged_file_stops_the_start() {
    let dir = tempfile::tempdir().expect("dir");
    let config = format!(
        "{CONFIG}[store]\npath = {:?}\n",
        dir.path().display().to_string()
    );
    let query = "SELECT id, state, opened, services, classes, anomalies FROM incidents";
    let engine = support::engine(&config).await;
    let grpc = format!("http://{}", engine.grpc_addr);
    send(
        grpc,
        support::aligned_past(30),
        Some(DEPLOY + 1),
        Some(DEPLOY),
    )
    .await;
    engine.flush().await;
    let deploys = "SELECT service_name, from_version, to_version, at FROM deployments";
    let before = support::sql(engine.api_addr, query).await;
    let changes = support::sql(engine.api_addr, deploys).await;
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(changes.len(), 1, "{changes:?}");
    engine.shutdown().await;

    let engine = support::engine(&config).await;
    assert_eq!(support::sql(engine.api_addr, query).await, before);
    assert_eq!(support::sql(engine.api_addr, deploys).await, changes);
    engine.shutdown().await;

    for file in ["incidents.redb", "deployments.json"] {
        let path = dir.path().join(file);
        let good = std::fs::read(&path).expect("state file");
        std::fs::write(&path, b"{ not json").expect("damage");
        let error = homeostat::engine::Engine::start(support::config(&config))
            .await
            .err()
            .expect("a damaged state file stops the start");
        assert!(error.to_string().contains(file), "{error}");
        std::fs::write(&path, good).expect("repair");
    }
}
