//! `homeostat loadgen` (the real binary) against a real engine over gRPC, HTTP
//! and Kafka: everything it reports accepted was received, nothing is a duplicate,
//! and the fleet's topology shows up in the tables.

use std::process::Command;

use crate::support::{self, num};

/// Runs the loadgen binary for `duration`; returns (sent, accepted) spans from its
/// last line.
fn loadgen(endpoint: &str, duration: &str, extra: &[&str]) -> (u64, u64) {
    let output = Command::new(env!("CARGO_BIN_EXE_homeostat"))
        .args([
            "loadgen",
            "--endpoint",
            endpoint,
            "--services",
            "8",
            "--templates",
            "4",
            "--concurrency",
            "2",
            "--rate",
            "8000",
            "--duration",
            duration,
        ])
        .args(extra)
        .output()
        .expect("loadgen runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "loadgen failed: {stderr}");
    let line = stdout.lines().last().expect("a summary line");
    let field = |name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name} missing in {line:?}"))
            .parse::<f64>()
            .expect("a number") as u64
    };
    let (sent, accepted) = (field("sent_spans"), field("accepted_spans"));
    assert!(field("spans_per_sec") > 0, "{line}");
    assert!(
        stderr.contains("shed 0, refused 0, transport errors 0"),
        "{stderr}"
    );
    (sent, accepted)
}

fn counter(exposition: &str, series: &str) -> u64 {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(series))
        .map(|v| v.trim().parse::<f64>().expect("a number") as u64)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_over_grpc_and_http_is_accepted_counted_and_aggregated() {
    let engine = support::engine("").await;
    let (sent, accepted) = tokio::task::spawn_blocking({
        let addr = engine.grpc_addr;
        move || loadgen(&format!("grpc://{addr}"), "2s", &[])
    })
    .await
    .expect("join");
    assert!(
        sent > 10_000 && accepted == sent,
        "sent {sent} accepted {accepted}"
    );
    let (http_sent, http_accepted) = tokio::task::spawn_blocking({
        let addr = engine.http_addr;
        move || loadgen(&format!("http://{addr}"), "2s", &["--seed", "2"])
    })
    .await
    .expect("join");
    assert!(http_sent > 10_000 && http_accepted == http_sent);

    let exposition = support::exposition(engine.api_addr).await;
    let received = |transport: &str| {
        counter(
            &exposition,
            &format!(
                "homeostat_records_received_total{{transport=\"{transport}\",signal=\"traces\"}}"
            ),
        )
    };
    assert_eq!(received("grpc"), accepted, "{exposition}");
    assert_eq!(received("http"), http_accepted);
    // Every round carries fresh ids: no span is dropped as a duplicate.
    assert_eq!(
        counter(
            &exposition,
            "homeostat_window_records_dropped_total{reason=\"duplicate\"}"
        ),
        0
    );
    assert!(received("grpc") > 0 && exposition.contains("signal=\"logs\""));

    engine.flush().await;
    let services = support::sql(
        engine.api_addr,
        "SELECT count(DISTINCT service_name) AS n FROM service_stats",
    )
    .await;
    assert_eq!(num(&services[0], "n"), 8.0, "{services:?}");
    let edges = support::sql(
        engine.api_addr,
        "SELECT callee_kind, sum(calls) AS calls, sum(errors) AS errors FROM edge_stats \
         GROUP BY callee_kind ORDER BY callee_kind",
    )
    .await;
    let kinds: Vec<&str> = edges
        .iter()
        .map(|r| r["callee_kind"].as_str().expect("kind"))
        .collect();
    assert_eq!(kinds, ["database", "messaging", "service"], "{edges:?}");
    assert!(edges.iter().all(|r| num(r, "calls") > 100.0), "{edges:?}");
    let metrics = support::sql(
        engine.api_addr,
        "SELECT count(DISTINCT metric_name) AS n FROM metric_stats",
    )
    .await;
    assert!(num(&metrics[0], "n") >= 3.0, "{metrics:?}");
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_to_kafka_is_consumed_by_the_engine() {
    let brokers = crate::kafka::broker();
    let topics = crate::kafka::Topics::new("loadgen");
    topics.create(&brokers).await;
    let names = format!("{},{},{}", topics.spans, topics.metrics, topics.logs);
    let (sent, accepted) = tokio::task::spawn_blocking({
        let brokers = brokers.clone();
        move || {
            loadgen(
                &format!("kafka://{brokers}"),
                "1s",
                &["--kafka-topics", &names],
            )
        }
    })
    .await
    .expect("join");
    assert!(
        sent > 2_000 && accepted == sent,
        "sent {sent} accepted {accepted}"
    );
    let engine = support::engine(&topics.config(&brokers, "loadgen", "otlp_proto")).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let exposition = support::exposition(engine.api_addr).await;
        let got = counter(
            &exposition,
            "homeostat_records_received_total{transport=\"kafka\",signal=\"traces\"}",
        );
        if got == accepted {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {got} of {accepted} spans consumed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    engine.shutdown().await;
}
