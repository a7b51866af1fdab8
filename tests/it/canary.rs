//! Canary remediation judged per instance, end to end: three `cart` pods
//! (each its own OpenTelemetry SDK resource with `service.instance.id`,
//! exporting OTLP/gRPC, paced live) start failing half their requests. The
//! engine restarts one pod first (the executor's `exec` driver touches a
//! marker naming the pods it restarted, which heals those pods' traffic),
//! then judges the canary by the pods' own error rates against the others'.
//!
//! - When the restart heals the pod, the engine widens to the other two, and
//!   the incident recovers.
//! - When it does not (the driver does nothing), the engine stops after the
//!   canary and escalates: the other pods are never touched.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use opentelemetry::KeyValue as Attribute;
use opentelemetry::trace::{Span, SpanKind, Status, Tracer, TracerProvider};
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;

use crate::rca::topology::past;
use crate::support::{self, text};

const PODS: [&str; 3] = ["cart-0", "cart-1", "cart-2"];
const SECONDS: u64 = 75;
const ONSET: u64 = 30;
const PER_SECOND: u64 = 20;

/// 1 s windows, canaries on (a third of the pods first, judged after 3
/// windows), `restart` run by `exec` as `restart_command`.
fn config(restart_command: &str) -> String {
    format!(
        "[window]\nsize = \"1s\"\nallowed_lateness = \"500ms\"\n[detect.baseline]\nwarmup = 20\n\
         [remediation]\nsettle_windows = 1\nverify_windows = 15\ncooldown = \"1m\"\n\
         canary = true\ncanary_share = 0.25\ncanary_windows = 3\n\
         [executor]\ndrivers = [\"exec\"]\n[executor.exec]\nrestart = \"{restart_command}\"\n"
    )
}

/// Whether `pod` was restarted: some marker in `dir` lists it.
fn restarted(dir: &Path, pod: &str) -> bool {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            name.strip_prefix("restarted-")
                .is_some_and(|pods| pods.split(',').any(|p| p == pod))
        })
}

/// Each pod's SDK provider.
fn providers(grpc: &str) -> Vec<SdkTracerProvider> {
    PODS.iter()
        .map(|pod| {
            let exporter = SpanExporter::builder()
                .with_tonic()
                .with_endpoint(grpc)
                .build()
                .expect("span exporter");
            let resource = Resource::builder()
                .with_service_name("cart")
                .with_attribute(Attribute::new("service.instance.id", *pod))
                .build();
            SdkTracerProvider::builder()
                .with_simple_exporter(exporter)
                .with_resource(resource)
                .build()
        })
        .collect()
}

/// Sends the pods' requests, half failing from `ONSET` on each pod not
/// restarted by a remedy that heals (`heals`), 4 s of event time per wall s.
fn send(grpc: &str, dir: &Path, heals: bool) {
    let providers = providers(grpc);
    let base = past(SECONDS + 5);
    let mut rng = homeostat::loadgen::fleet::Rng::new(11);
    for second in 0..SECONDS {
        let at = base + Duration::from_secs(second);
        for (provider, pod) in providers.iter().zip(PODS) {
            let faulty = second >= ONSET && !(heals && restarted(dir, pod));
            let tracer = provider.tracer("canary");
            for i in 0..PER_SECOND {
                let start: SystemTime = at + Duration::from_millis(i * 1000 / PER_SECOND);
                let mut span = tracer
                    .span_builder("GET /cart")
                    .with_kind(SpanKind::Server)
                    .with_start_time(start)
                    .start(&tracer);
                let share = if faulty { 0.5 } else { 0.002 };
                if rng.unit() < share {
                    span.set_status(Status::error("failed"));
                }
                span.end_with_timestamp(start + Duration::from_millis(5 + i % 7));
            }
        }
        for provider in &providers {
            let _ = provider.force_flush();
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    for provider in providers {
        provider.shutdown().expect("stop spans");
    }
}

/// Runs the scenario; returns the decisions and the remediation states.
async fn run(dir: PathBuf, heals: bool) -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
    let marker = format!("touch {}/restarted-{{{{params.instances}}}}", dir.display());
    let engine = support::engine(&config(&marker)).await;
    let grpc = format!("http://{}", engine.grpc_addr);
    let sender_dir = dir.clone();
    tokio::task::spawn_blocking(move || send(&grpc, &sender_dir, heals))
        .await
        .expect("the SDK sent");
    engine.flush().await;
    let api = engine.api_addr;
    let states = support::sql_until(
        api,
        "SELECT state, service FROM remediations",
        Duration::from_secs(30),
        |rows| {
            rows.iter()
                .any(|r| matches!(text(r, "state"), "recovered" | "escalated"))
        },
    )
    .await;
    let decisions = support::sql(
        api,
        "SELECT command, service, action, verdict, reason FROM remediation_decisions ORDER BY seq",
    )
    .await;
    engine.shutdown().await;
    (decisions, states)
}

fn allowed(decisions: &[serde_json::Value]) -> Vec<&str> {
    decisions
        .iter()
        .filter(|d| text(d, "verdict") == "allow")
        .map(|d| text(d, "action"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_that_healed_its_pod_is_widened_to_the_rest() {
    let dir = tempfile::tempdir().expect("dir");
    let (decisions, states) = run(dir.path().to_path_buf(), true).await;
    assert!(
        states.iter().any(|r| text(r, "state") == "recovered"),
        "{states:?}\n{decisions:?}"
    );
    assert_eq!(allowed(&decisions), ["restart", "restart"], "{decisions:?}");
    for pod in PODS {
        assert!(restarted(dir.path(), pod), "{pod} restarted");
    }
    assert!(
        dir.path().join("restarted-cart-0").exists(),
        "the canary: one pod alone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_that_did_not_heal_its_pod_stops_and_escalates() {
    let dir = tempfile::tempdir().expect("dir");
    let (decisions, states) = run(dir.path().to_path_buf(), false).await;
    assert!(
        states.iter().any(|r| text(r, "state") == "escalated"),
        "{states:?}\n{decisions:?}"
    );
    assert_eq!(allowed(&decisions)[0], "restart", "{decisions:?}");
    assert!(
        !allowed(&decisions)[1..].contains(&"restart"),
        "no widening: {decisions:?}"
    );
    assert!(
        decisions
            .iter()
            .any(|d| text(d, "reason")
                .contains("canary on cart-0: no better than the rest (error rate")),
        "{decisions:?}"
    );
    assert!(!restarted(dir.path(), "cart-1") && !restarted(dir.path(), "cart-2"));
}
