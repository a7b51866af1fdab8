//! Kafka ingestion against a real Kafka-protocol broker (tansu), started by
//! `scripts/test.sh` (`HOMEOSTAT_TEST_KAFKA`, `HOMEOSTAT_TEST_TANSU`).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::logs::v1::{LogRecord, LogsData, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    Metric, MetricsData, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, metric,
    number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{Span, TracesData};
use prost::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;

use crate::limits::{kv, server_span};
use crate::support::{self, num, text};

pub(crate) fn broker() -> String {
    std::env::var("HOMEOSTAT_TEST_KAFKA")
        .expect("HOMEOSTAT_TEST_KAFKA is not set: run the suite with scripts/test.sh, which starts the broker")
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    format!("{prefix}-{nanos}")
}

pub(crate) struct Topics {
    pub(crate) spans: String,
    pub(crate) metrics: String,
    pub(crate) logs: String,
}

impl Topics {
    pub(crate) fn new(prefix: &str) -> Self {
        let id = unique(prefix);
        Topics {
            spans: format!("{id}-spans"),
            metrics: format!("{id}-metrics"),
            logs: format!("{id}-logs"),
        }
    }

    pub(crate) fn config(&self, brokers: &str, group: &str, encoding: &str) -> String {
        format!(
            "[kafka]\nbrokers = \"{brokers}\"\ngroup_id = \"{group}\"\nspans_topic = \"{}\"\nmetrics_topic = \"{}\"\nlogs_topic = \"{}\"\nencoding = \"{encoding}\"\nsession_timeout = \"6s\"\ncommit_interval = \"200ms\"\n",
            self.spans, self.metrics, self.logs
        )
    }

    pub(crate) async fn create(&self, brokers: &str) {
        let admin: AdminClient<DefaultClientContext> =
            client(brokers).create().expect("admin client");
        let topics: Vec<NewTopic<'_>> = [&self.spans, &self.metrics, &self.logs]
            .iter()
            .map(|t| NewTopic::new(t, 3, TopicReplication::Fixed(1)))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let result = admin
                .create_topics(
                    &topics,
                    &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
                )
                .await;
            match result {
                Ok(results) if results.iter().all(|r| r.is_ok()) => return,
                other if Instant::now() > deadline => panic!("cannot create topics: {other:?}"),
                _ => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }
}

fn client(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    config
}

fn producer(brokers: &str) -> FutureProducer {
    client(brokers)
        .set("message.timeout.ms", "60000")
        .create()
        .expect("producer")
}

async fn produce(producer: &FutureProducer, topic: &str, key: &[u8], payload: Vec<u8>) {
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(&payload),
            Duration::from_secs(30),
        )
        .await
        .unwrap_or_else(|(error, _)| panic!("produce to {topic}: {error}"));
}

/// The `TracesData` the Collector's Kafka exporter writes (wire-identical to an
/// export request).
fn traces(service: &str, spans: Vec<Span>) -> TracesData {
    TracesData {
        resource_spans: crate::limits::request(service, spans).resource_spans,
    }
}

fn encode<M: Message + serde::Serialize>(message: &M, json: bool) -> Vec<u8> {
    if json {
        serde_json::to_vec(message).expect("json")
    } else {
        message.encode_to_vec()
    }
}

/// One test body for both encodings the Collector's Kafka exporter writes.
async fn topics_land_in_tables(json: bool) {
    let brokers = broker();
    let topics = Topics::new(if json { "json" } else { "proto" });
    topics.create(&brokers).await;
    let encoding = if json { "otlp_json" } else { "otlp_proto" };
    let engine = support::engine(&format!(
        "{}[window]\nidle_timeout = \"2s\"\n",
        topics.config(&brokers, &unique("group"), encoding)
    ))
    .await;
    let producer = producer(&brokers);
    let base = support::aligned_past(40);
    // 3 windows x 2 services x 5 spans; every 5th span fails.
    for w in 0..3u64 {
        for (s, service) in ["orders", "stock"].iter().enumerate() {
            let spans = (0..5u64)
                .map(|i| {
                    let id = (w * 10 + i + 1) as u8;
                    server_span(
                        s as u8 + 1,
                        id,
                        base + w * 10_000_000_000 + (i + 1) * 1_000_000_000,
                        10 + i,
                        i == 0,
                    )
                })
                .collect();
            produce(
                &producer,
                &topics.spans,
                &[s as u8 + 1; 16],
                encode(&traces(service, spans), json),
            )
            .await;
        }
    }
    // A cumulative counter: 10, 25, 45 over three windows.
    for (w, value) in [10.0, 25.0, 45.0].iter().enumerate() {
        let data = MetricsData {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", "orders")],
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![Metric {
                        name: "orders.placed".into(),
                        data: Some(metric::Data::Sum(Sum {
                            aggregation_temporality: 2,
                            is_monotonic: true,
                            data_points: vec![NumberDataPoint {
                                start_time_unix_nano: base - 3_600_000_000_000,
                                time_unix_nano: base + w as u64 * 10_000_000_000 + 5_000_000_000,
                                value: Some(number_data_point::Value::AsDouble(*value)),
                                ..Default::default()
                            }],
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        produce(&producer, &topics.metrics, b"orders", encode(&data, json)).await;
    }
    let logs = LogsData {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![kv("service.name", "stock")],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: (0..4u64)
                    .map(|i| LogRecord {
                        time_unix_nano: base + i * 1_000_000_000,
                        severity_number: if i == 0 { 17 } else { 9 },
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    produce(&producer, &topics.logs, b"stock", encode(&logs, json)).await;
    // A poison record is skipped, not retried forever, and does not block the partition.
    produce(
        &producer,
        &topics.spans,
        b"poison",
        b"\xff\xff not otlp".to_vec(),
    )
    .await;

    let rows = support::sql_until(
        engine.api_addr,
        "SELECT service_name, SUM(requests) AS requests, SUM(errors) AS errors, COUNT(*) AS windows \
         FROM service_stats GROUP BY service_name ORDER BY service_name",
        Duration::from_secs(60),
        |rows| rows.len() == 2 && rows.iter().all(|r| num(r, "windows") == 3.0),
    )
    .await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    for row in &rows {
        assert_eq!(num(row, "requests"), 15.0, "{row}");
        assert_eq!(num(row, "errors"), 3.0, "{row}");
    }
    let metric = support::sql(
        engine.api_addr,
        "SELECT window_start, delta, last FROM metric_stats WHERE metric_name = 'orders.placed' ORDER BY window_start",
    )
    .await;
    let deltas: Vec<f64> = metric.iter().map(|r| num(r, "delta")).collect();
    assert_eq!(
        deltas,
        vec![0.0, 15.0, 20.0],
        "first point of an old counter is its baseline"
    );
    let logs = support::sql(
        engine.api_addr,
        "SELECT severity, count FROM log_stats ORDER BY severity",
    )
    .await;
    let logs: Vec<(String, f64)> = logs
        .iter()
        .map(|r| (text(r, "severity").to_string(), num(r, "count")))
        .collect();
    assert_eq!(
        logs,
        vec![("ERROR".to_string(), 1.0), ("INFO".to_string(), 3.0)]
    );
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_otlp_proto_topics_land_in_tables() {
    topics_land_in_tables(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_otlp_json_topics_land_in_tables() {
    topics_land_in_tables(true).await;
}

/// The `homeostat` binary as a child process, killable with SIGKILL.
pub(crate) struct EngineProcess {
    child: Child,
}

impl EngineProcess {
    pub(crate) fn start(config: &std::path::Path, env: &[(&str, String)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_homeostat"));
        command
            .arg("run")
            .arg("--config")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (key, value) in env {
            command.env(key, value);
        }
        command.env("RUST_LOG", "warn");
        EngineProcess {
            child: command.spawn().expect("start engine"),
        }
    }

    pub(crate) fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }
}

impl Drop for EngineProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// 6 windows x 3 services x 2 records of 10 spans.
fn kill_test_records(base: u64, windows: std::ops::Range<u64>) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for w in windows {
        for (s, service) in ["alpha", "beta", "gamma"].iter().enumerate() {
            for half in 0..2u64 {
                let spans = (0..10u64)
                    .map(|i| {
                        let mut span = server_span(
                            0,
                            1,
                            base + w * 10_000_000_000 + (half * 10 + i + 1) * 400_000_000,
                            5,
                            i == 3,
                        );
                        span.trace_id =
                            [[s as u8 + 1; 8], (w * 100 + half * 10 + i).to_be_bytes()].concat();
                        span.span_id = (w * 1000 + half * 100 + i + 1).to_be_bytes().to_vec();
                        span
                    })
                    .collect();
                out.push((service.to_string(), traces(service, spans).encode_to_vec()));
            }
        }
    }
    out
}

async fn api_sql(api: std::net::SocketAddr, query: &str) -> Option<Vec<Value>> {
    let response = reqwest::Client::new()
        .post(format!("http://{api}/sql"))
        .body(query.to_string())
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    response.json().await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_engine_restarts_without_loss_or_double_counting() {
    let brokers = broker();
    let topics = Topics::new("kill");
    topics.create(&brokers).await;
    let store = tempfile::tempdir().expect("store dir");
    let api_port = support::free_port();
    let api: std::net::SocketAddr = format!("127.0.0.1:{api_port}").parse().expect("addr");
    let group = unique("kill-group");
    let env = vec![
        ("HOMEOSTAT__KAFKA__BROKERS", brokers.clone()),
        ("HOMEOSTAT__KAFKA__GROUP_ID", group),
        ("HOMEOSTAT__KAFKA__SPANS_TOPIC", topics.spans.clone()),
        ("HOMEOSTAT__KAFKA__METRICS_TOPIC", topics.metrics.clone()),
        ("HOMEOSTAT__KAFKA__LOGS_TOPIC", topics.logs.clone()),
        ("HOMEOSTAT__KAFKA__SESSION_TIMEOUT", "6s".to_string()),
        ("HOMEOSTAT__KAFKA__COMMIT_INTERVAL", "200ms".to_string()),
        ("HOMEOSTAT__WINDOW__IDLE_TIMEOUT", "3s".to_string()),
        ("HOMEOSTAT__STORE__PATH", store.path().display().to_string()),
        ("HOMEOSTAT__OTLP__GRPC_ADDR", "127.0.0.1:0".to_string()),
        ("HOMEOSTAT__OTLP__HTTP_ADDR", "127.0.0.1:0".to_string()),
        ("HOMEOSTAT__API__ADDR", api.to_string()),
    ];
    let producer = producer(&brokers);
    let base = support::aligned_past(50);
    for (service, payload) in kill_test_records(base, 0..4) {
        produce(&producer, &topics.spans, service.as_bytes(), payload).await;
    }

    // librdkafka options go through the config file (their keys contain dots).
    let config = store.path().join("homeostat.toml");
    std::fs::write(
        &config,
        "[kafka.librdkafka_options]\n\"client.id\" = \"homeostat-kill-test\"\n",
    )
    .expect("config file");
    let first = EngineProcess::start(&config, &env);
    // Wait until windows 0..2 are closed (window 3 stays open: the watermark is inside it).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = api_sql(api, "SELECT COUNT(*) AS n FROM service_stats").await;
        if rows
            .as_ref()
            .is_some_and(|r| r.first().is_some_and(|row| num(row, "n") >= 9.0))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "first engine never closed windows: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Let a commit happen, then kill without any chance to flush or commit more.
    tokio::time::sleep(Duration::from_millis(600)).await;
    first.kill();

    for (service, payload) in kill_test_records(base, 4..6) {
        produce(&producer, &topics.spans, service.as_bytes(), payload).await;
    }
    let _second = EngineProcess::start(&config, &env);
    let deadline = Instant::now() + Duration::from_secs(90);
    let query = "SELECT window_start, service_name, requests, errors FROM service_stats ORDER BY window_start, service_name";
    let rows = loop {
        let rows = api_sql(api, query).await.unwrap_or_default();
        if rows.len() >= 18 || Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(rows.len(), 18, "6 windows x 3 services: {rows:?}");
    for row in &rows {
        assert_eq!(
            num(row, "requests"),
            20.0,
            "nothing lost, nothing counted twice: {row}"
        );
        assert_eq!(num(row, "errors"), 2.0, "{row}");
    }
}

/// A tansu broker listening on `listen`, telling clients to connect to `advertised`.
fn start_tansu(listen: u16, advertised: u16) -> Child {
    let tansu = std::env::var("HOMEOSTAT_TEST_TANSU")
        .expect("HOMEOSTAT_TEST_TANSU is not set: run the suite with scripts/test.sh");
    Command::new(tansu)
        .args([
            "broker",
            "--listener-url",
            &format!("tcp://127.0.0.1:{listen}"),
            "--advertised-listener-url",
            &format!("tcp://127.0.0.1:{advertised}"),
            "--storage-engine",
            "memory://tansu/",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tansu")
}

/// A TCP forwarder from `listen` to `target`: the broker's network path. Aborting the
/// task closes the listener and every forwarded connection (the broker "goes down"
/// for its clients while keeping its state). Restarting tansu instead would lose its
/// in-memory topics, and librdkafka 2.12 then crashes (SIGSEGV in
/// `rd_kafka_metadata_update_op`, a null topic name from a KIP-951 leader-change tag
/// without a topic id) on the fresh broker's Fetch answers.
fn start_proxy(listen: u16, target: u16) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match tokio::net::TcpListener::bind(("127.0.0.1", listen)).await {
                Ok(listener) => break listener,
                Err(error) if Instant::now() > deadline => panic!("proxy bind: {error}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let mut connections = tokio::task::JoinSet::new();
        while let Ok((mut inbound, _)) = listener.accept().await {
            connections.spawn(async move {
                if let Ok(mut outbound) =
                    tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_at_start_and_mid_run_keeps_otlp_and_resumes() {
    let port = support::free_port();
    let broker_port = support::free_port();
    let brokers = format!("127.0.0.1:{port}");
    let topics = Topics::new("down");
    let engine = support::engine(&format!(
        "{}[window]\nidle_timeout = \"2s\"\n",
        topics.config(&brokers, &unique("down-group"), "otlp_proto")
    ))
    .await;
    let base = support::aligned_past(60);
    let url = format!("http://{}/v1/traces", engine.http_addr);
    let post_span = |trace: u8, id: u8, end: u64| {
        let body = crate::limits::request("otlp-side", vec![server_span(trace, id, end, 5, false)])
            .encode_to_vec();
        let url = url.clone();
        async move {
            reqwest::Client::new()
                .post(&url)
                .header("content-type", "application/x-protobuf")
                .body(body)
                .send()
                .await
                .expect("otlp reachable")
                .status()
        }
    };

    // Broker down at start: OTLP still accepted and counted.
    assert_eq!(post_span(9, 1, base + 1_000_000_000).await, 200);

    // Broker comes up: records produced now are consumed.
    let mut broker = start_tansu(broker_port, port);
    let proxy = start_proxy(port, broker_port);
    topics.create(&brokers).await;
    let producer = producer(&brokers);
    // Later windows each time: input idle for `idle_timeout` closes the open ones.
    let spans = (1..=5u8)
        .map(|i| server_span(7, i, base + 20_000_000_000, 5, false))
        .collect();
    produce(
        &producer,
        &topics.spans,
        b"k",
        traces("kafka-side", spans).encode_to_vec(),
    )
    .await;
    let query = "SELECT service_name, SUM(requests) AS requests FROM service_stats GROUP BY service_name ORDER BY service_name";
    let rows = support::sql_until(engine.api_addr, query, Duration::from_secs(90), |rows| {
        rows.len() == 2
    })
    .await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(num(&rows[0], "requests"), 5.0);
    assert_eq!(num(&rows[1], "requests"), 1.0);

    // The broker becomes unreachable mid-run: OTLP keeps working, and records
    // produced meanwhile (buffered by the producer) arrive once it is back.
    proxy.abort();
    let _ = proxy.await;
    assert_eq!(post_span(9, 2, base + 40_000_000_000).await, 200);
    let spans = (1..=4u8)
        .map(|i| server_span(8, i, base + 60_000_000_000, 5, false))
        .collect();
    let payload = traces("kafka-after", spans).encode_to_vec();
    let pending = {
        let (producer, topic) = (producer.clone(), topics.spans.clone());
        tokio::spawn(async move { produce(&producer, &topic, b"k", payload).await })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let proxy = start_proxy(port, broker_port);
    pending.await.expect("produced after the outage");
    let rows = support::sql_until(engine.api_addr, query, Duration::from_secs(120), |rows| {
        rows.iter()
            .any(|r| text(r, "service_name") == "kafka-after")
    })
    .await;
    let after: Vec<&Value> = rows
        .iter()
        .filter(|r| text(r, "service_name") == "kafka-after")
        .collect();
    assert_eq!(after.len(), 1, "{rows:?}");
    assert_eq!(num(after[0], "requests"), 4.0);
    let otlp: f64 = rows
        .iter()
        .filter(|r| text(r, "service_name") == "otlp-side")
        .map(|r| num(r, "requests"))
        .sum();
    assert_eq!(otlp, 2.0, "{rows:?}");
    engine.shutdown().await;
    proxy.abort();
    let _ = broker.kill();
    let _ = broker.wait();
}
