//! The gRPC query API over a real failure (a real SDK sends a faulty deploy
//! over OTLP/gRPC), asked by a generated tonic client, by a Python client that
//! knows the API only through server reflection, and by the CLI.

use homeostat::api::query::pb;
use homeostat::api::query::pb::query_client::QueryClient;
use tonic::Code;

use super::deploys::{CONFIG, DEPLOY, send};
use crate::support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_query_api_answers_tonic_python_and_the_cli() {
    // Remediation off: an incident's state stays its lifecycle's (with it on,
    // the API tells `mitigating` or `escalated`; tests/it/remediation.rs).
    let engine = support::engine(&format!("{CONFIG}[remediation]\nenabled = false\n")).await;
    let grpc = format!("http://{}", engine.grpc_addr);
    send(
        grpc,
        support::aligned_past(30),
        Some(DEPLOY + 1),
        Some(DEPLOY),
    )
    .await;
    engine.flush().await;

    let mut client = QueryClient::connect(format!("http://{}", engine.api_addr))
        .await
        .expect("the query API shares the API listener");
    let list = client
        .list_incidents(pb::ListIncidentsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(list.incidents.len(), 1, "{list:?}");
    let id = list.incidents[0].id;
    let full = client
        .get_incident(pb::GetIncidentRequest { id })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(full.state, "open");
    assert!(full.anomaly_count >= 1 && full.anomalies.len() == full.anomaly_count as usize);
    let best = &full.root_causes[0];
    assert_eq!(
        (best.service.as_str(), best.class.as_str()),
        ("checkout", "faulty_deployment")
    );
    assert!((0.0..=1.0).contains(&best.score), "{best:?}");
    let change = best
        .evidence
        .iter()
        .find(|e| e.signal == "change")
        .expect("the version change is evidence");
    assert!(
        change.spoke && change.detail.contains("1.5.0"),
        "{change:?}"
    );
    let causes = client
        .get_root_causes(pb::GetIncidentRequest { id })
        .await
        .expect("root causes")
        .into_inner();
    assert_eq!(causes.root_causes, full.root_causes);

    let missing = client
        .get_incident(pb::GetIncidentRequest { id: 987_654_321 })
        .await
        .expect_err("no such incident");
    assert_eq!(missing.code(), Code::NotFound);
    let bad = client
        .list_incidents(pb::ListIncidentsRequest {
            state: "bogus".into(),
            limit: 0,
        })
        .await
        .expect_err("no such state");
    assert_eq!(bad.code(), Code::InvalidArgument);
    let anomalies = |service: &str| pb::ListAnomaliesRequest {
        service: service.into(),
        ..Default::default()
    };
    let own = client
        .list_anomalies(anomalies("checkout"))
        .await
        .expect("anomalies");
    assert_eq!(own.into_inner().anomalies.len(), full.anomalies.len());
    let none = client
        .list_anomalies(anomalies("nobody"))
        .await
        .expect("anomalies");
    assert!(none.into_inner().anomalies.is_empty());
    client
        .get_service_graph(pb::GetServiceGraphRequest {})
        .await
        .expect("graph");
    let mut watch = client
        .watch_incidents(pb::WatchIncidentsRequest { open_only: true })
        .await
        .expect("watch")
        .into_inner();
    let first = watch.message().await.expect("stream").expect("an incident");
    assert_eq!(first, full);

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", engine.api_addr))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: "homeostat.v1.Query".into(),
        })
        .await
        .expect("check")
        .into_inner();
    assert_eq!(health.status, 1, "SERVING");

    cli_answers(engine.api_addr, id).await;
    python_answers(engine.api_addr, id).await;
    engine.shutdown().await;
}

async fn run(args: Vec<String>) -> String {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_homeostat"))
        .args(&args)
        .output()
        .await
        .expect("run homeostat");
    assert!(output.status.success(), "{args:?}: {output:?}");
    String::from_utf8(output.stdout).expect("utf-8")
}

/// `homeostat incidents` and `homeostat incident ID` in JSON.
async fn cli_answers(addr: std::net::SocketAddr, id: u64) {
    let api = addr.to_string();
    let json = run(vec![
        "incidents".into(),
        "--api".into(),
        api.clone(),
        "--format".into(),
        "json".into(),
    ])
    .await;
    let all: serde_json::Value = serde_json::from_str(&json).expect("a JSON array");
    let first = &all[0];
    assert_eq!(first["id"], id);
    assert_eq!(first["state"], "open");
    let opened = first["opened_at"].as_str().expect("opened_at");
    humantime::parse_rfc3339(opened).expect("RFC 3339");
    assert_eq!(first["services"][0], "checkout");
    let cause = &first["root_causes"][0];
    assert_eq!(cause["service"], "checkout");
    assert_eq!(cause["class"], "faulty_deployment");
    assert!(
        cause["score"]
            .as_f64()
            .is_some_and(|s| (0.0..=1.0).contains(&s))
    );
    assert!(cause["evidence"].as_array().is_some_and(|e| !e.is_empty()));
    let one = run(vec![
        "incident".into(),
        id.to_string(),
        "--api".into(),
        api.clone(),
        "--format".into(),
        "json".into(),
    ])
    .await;
    let one: serde_json::Value = serde_json::from_str(&one).expect("a JSON object");
    assert_eq!(one["root_causes"], first["root_causes"]);
    assert!(one["anomalies"].as_array().is_some_and(|a| !a.is_empty()));
    let table = run(vec!["incident".into(), id.to_string(), "--api".into(), api]).await;
    assert!(table.contains("root causes, best first") && table.contains("checkout"));
}

/// A client with no generated code: Python grpcio through reflection.
async fn python_answers(addr: std::net::SocketAddr, id: u64) {
    let python = std::env::var("HOMEOSTAT_TEST_PYTHON").expect(
        "HOMEOSTAT_TEST_PYTHON is not set: run the suite with scripts/test.sh, which installs grpcio",
    );
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/query_reflection.py"
    );
    let output = tokio::process::Command::new(python)
        .arg(script)
        .arg(addr.to_string())
        .output()
        .await
        .expect("run python");
    assert!(output.status.success(), "{output:?}");
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert!(
        answer["methods"].as_array().is_some_and(|m| m.len() == 6),
        "{answer}"
    );
    assert_eq!(answer["list"]["incidents"][0]["id"], id.to_string());
    assert_eq!(answer["get"]["rootCauses"][0]["service"], "checkout");
    assert_eq!(answer["unknown"], "NOT_FOUND");
}
