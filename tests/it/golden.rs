//! Golden scenarios: one folder under `tests/golden/` = one test. `input.jsonl` is
//! recorded telemetry (one OTLP/JSON export request per line, in arrival order);
//! it is replayed through OTLP/HTTP at two speeds into two engines, which must
//! produce identical tables, equal to `expected.json`; a third engine that is never
//! flushed, whose windows close when its input idles (processing time), must
//! produce the same tables. `HOMEOSTAT_BLESS=1`
//! regenerates `expected.json` (never edit it by hand); a scenario without an
//! `input.jsonl` gets one from the deterministic generator below.

use std::path::{Path, PathBuf};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
    Sum, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use serde_json::{Value, json};

use crate::limits::kv;
use crate::support;

const TABLES: [(&str, &str); 5] = [
    ("service_stats", "window_start, service_name"),
    ("operation_stats", "window_start, service_name, operation"),
    ("edge_stats", "window_start, caller, callee, callee_kind"),
    (
        "metric_stats",
        "window_start, service_name, metric_name, attributes",
    ),
    ("log_stats", "window_start, service_name, severity"),
];

fn scenarios() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("tests/golden exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

/// How the windows of a replay close.
#[derive(Clone, Copy)]
enum Close {
    /// An idle timeout far above the pauses: only event time decides, and the
    /// engine is flushed at the end.
    Flush,
    /// Nothing is flushed: the windows close when the input has been idle this
    /// long (processing time).
    Idle(Duration),
}

async fn replay(lines: &[(String, String)], pause: Duration, close: Close) -> Value {
    let idle = match close {
        Close::Flush => Duration::from_secs(3600),
        Close::Idle(idle) => idle,
    };
    let engine = support::engine(&format!(
        "[window]\nidle_timeout = \"{}ms\"\n",
        idle.as_millis()
    ))
    .await;
    let client = reqwest::Client::new();
    for (signal, body) in lines {
        let response = client
            .post(format!("http://{}/v1/{signal}", engine.http_addr))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .expect("engine reachable");
        assert_eq!(
            response.status(),
            200,
            "{}",
            response.text().await.unwrap_or_default()
        );
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    match close {
        Close::Flush => engine.flush().await,
        Close::Idle(idle) => {
            let deadline = std::time::Instant::now() + idle * 10;
            loop {
                let metrics = support::exposition(engine.api_addr).await;
                if metrics.contains("\nhomeostat_open_windows 0\n") {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "windows still open {idle:?} after the input went idle"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let mut tables = serde_json::Map::new();
    for (table, order) in TABLES {
        let rows = support::sql(
            engine.api_addr,
            &format!("SELECT * FROM {table} ORDER BY {order}"),
        )
        .await;
        tables.insert(table.to_string(), Value::Array(rows));
    }
    engine.shutdown().await;
    Value::Object(tables)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_scenarios_replay_identically_at_two_speeds() {
    let bless = std::env::var("HOMEOSTAT_BLESS").is_ok_and(|v| v == "1");
    let scenarios = scenarios();
    assert!(!scenarios.is_empty(), "no golden scenarios");
    for dir in scenarios {
        let input = dir.join("input.jsonl");
        if !input.exists() {
            assert!(
                bless,
                "{} lacks input.jsonl (HOMEOSTAT_BLESS=1 generates one)",
                dir.display()
            );
            std::fs::write(&input, generate_scenario()).expect("write input");
        }
        let text = std::fs::read_to_string(&input).expect("read input");
        let lines: Vec<(String, String)> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|line| {
                let value: Value = serde_json::from_str(line).expect("jsonl line");
                let signal = value["signal"].as_str().expect("signal").to_string();
                (signal, value["request"].to_string())
            })
            .collect();
        let fast = replay(&lines, Duration::ZERO, Close::Flush).await;
        let slow = replay(&lines, Duration::from_millis(15), Close::Flush).await;
        assert!(
            same(&fast, &slow),
            "{}: replay speed changed the tables",
            dir.display()
        );
        let idle = replay(&lines, Duration::ZERO, Close::Idle(Duration::from_secs(3))).await;
        assert!(
            same(&fast, &idle),
            "{}: closing by idling changed the tables",
            dir.display()
        );
        let expected_path = dir.join("expected.json");
        if bless {
            let pretty = serde_json::to_string_pretty(&fast).expect("json");
            std::fs::write(&expected_path, pretty + "\n").expect("write expected");
            continue;
        }
        let expected: Value = serde_json::from_str(
            &std::fs::read_to_string(&expected_path).unwrap_or_else(|_| {
                panic!(
                    "{} missing: run with HOMEOSTAT_BLESS=1",
                    expected_path.display()
                )
            }),
        )
        .expect("expected.json");
        for (table, _) in TABLES {
            assert!(
                same(&fast[table], &expected[table]),
                "{}: table {table} differs from expected.json\n got: {}\n",
                dir.display(),
                serde_json::to_string(&fast[table]).unwrap_or_default()
            );
        }
    }
}

fn kv_int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

fn resource(service: &str) -> Option<Resource> {
    Some(Resource {
        attributes: vec![
            kv("service.name", service),
            kv("service.namespace", "shop"),
            // The deprecated name, as older SDKs send it.
            kv("deployment.environment", "prod"),
            kv("k8s.pod.name", &format!("{service}-7d9f")),
        ],
        ..Default::default()
    })
}

/// A small deterministic pseudo-random sequence (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// 90 s of a three-tier shop (web -> api -> postgres `inventory`, api -> `payments.example.com`),
/// one request every 500 ms, with an api failure burst between 40 s and 60 s; spans with
/// and without kinds; per-service span batches every 5 s as SDK batch exporters send them;
/// cumulative counters, a histogram, a gauge and logs every 10 s.
fn generate_scenario() -> String {
    const BASE: u64 = 1_793_491_200_000_000_000; // 2026-11-01T00:00:00Z
    const MS: u64 = 1_000_000;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut lines = Vec::new();
    let mut web_count = 0u64;
    let mut api_latency = Vec::new();
    for batch in 0..18u64 {
        let mut by_service: [Vec<Span>; 2] = [Vec::new(), Vec::new()];
        for r in 0..10u64 {
            let request = batch * 10 + r;
            let start = BASE + request * 500 * MS;
            let trace = {
                let mut t = [0u8; 16];
                t[..8].copy_from_slice(&(request + 1).to_be_bytes());
                t[8..].copy_from_slice(&rng.next().to_be_bytes());
                t.to_vec()
            };
            let id = |n: u64| (request * 16 + n + 1).to_be_bytes().to_vec();
            let in_burst = (40_000..60_000).contains(&(request * 500));
            let failed = in_burst && rng.below(3) == 0;
            let db_ms = 2 + rng.below(6);
            let api_ms = 10 + db_ms + rng.below(20) + if in_burst { 80 } else { 0 };
            let web_ms = api_ms + 5 + rng.below(10);
            api_latency.push(api_ms as f64);
            web_count += 1;
            // Every fourth request carries no span kinds at all (old instrumentation).
            let kinds = request % 4 != 0;
            let kind = |k: i32| if kinds { k } else { 0 };
            let status = |error: bool| {
                error.then(|| Status {
                    code: 2,
                    message: "failed".into(),
                })
            };
            by_service[0].push(Span {
                trace_id: trace.clone(),
                span_id: id(0),
                name: "GET /products".into(),
                kind: kind(2),
                start_time_unix_nano: start,
                end_time_unix_nano: start + web_ms * MS,
                attributes: vec![
                    kv("http.route", "/products"),
                    kv_int("http.status_code", if failed { 502 } else { 200 }),
                ],
                status: status(failed),
                ..Default::default()
            });
            by_service[0].push(Span {
                trace_id: trace.clone(),
                span_id: id(1),
                parent_span_id: id(0),
                name: "GET".into(),
                kind: kind(3),
                start_time_unix_nano: start + MS,
                end_time_unix_nano: start + (api_ms + 3) * MS,
                attributes: vec![kv("server.address", "api")],
                status: status(failed),
                ..Default::default()
            });
            by_service[1].push(Span {
                trace_id: trace.clone(),
                span_id: id(2),
                parent_span_id: id(1),
                name: "GET /stock".into(),
                kind: kind(2),
                start_time_unix_nano: start + 2 * MS,
                end_time_unix_nano: start + (2 + api_ms) * MS,
                attributes: vec![
                    kv("http.route", "/stock/{id}"),
                    kv_int("http.response.status_code", if failed { 503 } else { 200 }),
                ],
                status: status(failed),
                ..Default::default()
            });
            if kinds {
                by_service[1].push(Span {
                    trace_id: trace.clone(),
                    span_id: id(3),
                    parent_span_id: id(2),
                    name: "SELECT inventory".into(),
                    kind: 3,
                    start_time_unix_nano: start + 3 * MS,
                    end_time_unix_nano: start + (3 + db_ms) * MS,
                    attributes: vec![kv("db.system", "postgresql"), kv("db.name", "inventory")],
                    ..Default::default()
                });
                if request % 5 == 0 {
                    by_service[1].push(Span {
                        trace_id: trace.clone(),
                        span_id: id(4),
                        parent_span_id: id(2),
                        name: "POST".into(),
                        kind: 3,
                        start_time_unix_nano: start + 4 * MS,
                        end_time_unix_nano: start + 9 * MS,
                        attributes: vec![kv("peer.service", "payments.example.com")],
                        ..Default::default()
                    });
                }
            }
        }
        // api's exporter flushes before web's: the callee's spans often arrive first.
        for (service, index) in [("api", 1usize), ("web", 0usize)] {
            let request = ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    resource: resource(service),
                    scope_spans: vec![ScopeSpans {
                        spans: std::mem::take(&mut by_service[index]),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            };
            lines.push(json!({"signal": "traces", "request": request}));
        }
        if batch % 2 == 1 {
            let time = BASE + (batch + 1) * 5_000 * MS - MS;
            let mut buckets = vec![0u64; 4];
            for latency in &api_latency {
                let bucket = [25.0, 50.0, 100.0]
                    .iter()
                    .position(|b| latency <= b)
                    .unwrap_or(3);
                buckets[bucket] += 1;
            }
            let metrics = ExportMetricsServiceRequest {
                resource_metrics: vec![ResourceMetrics {
                    resource: resource("api"),
                    scope_metrics: vec![ScopeMetrics {
                        metrics: vec![
                            Metric {
                                name: "http.server.request.duration".into(),
                                unit: "ms".into(),
                                data: Some(metric::Data::Histogram(Histogram {
                                    aggregation_temporality: 2,
                                    data_points: vec![HistogramDataPoint {
                                        start_time_unix_nano: BASE,
                                        time_unix_nano: time,
                                        count: api_latency.len() as u64,
                                        sum: Some(api_latency.iter().sum()),
                                        bucket_counts: buckets,
                                        explicit_bounds: vec![25.0, 50.0, 100.0],
                                        ..Default::default()
                                    }],
                                })),
                                ..Default::default()
                            },
                            Metric {
                                name: "requests".into(),
                                data: Some(metric::Data::Sum(Sum {
                                    aggregation_temporality: 2,
                                    is_monotonic: true,
                                    data_points: vec![NumberDataPoint {
                                        start_time_unix_nano: BASE,
                                        time_unix_nano: time,
                                        value: Some(number_data_point::Value::AsInt(
                                            web_count as i64,
                                        )),
                                        attributes: vec![kv("route", "/stock/{id}")],
                                        ..Default::default()
                                    }],
                                })),
                                ..Default::default()
                            },
                            Metric {
                                name: "db.pool.in_use".into(),
                                data: Some(metric::Data::Gauge(Gauge {
                                    data_points: vec![NumberDataPoint {
                                        time_unix_nano: time,
                                        value: Some(number_data_point::Value::AsDouble(
                                            (rng.below(20) + 1) as f64,
                                        )),
                                        ..Default::default()
                                    }],
                                })),
                                ..Default::default()
                            },
                        ],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            };
            lines.push(json!({"signal": "metrics", "request": metrics}));
            let logs = ExportLogsServiceRequest {
                resource_logs: vec![ResourceLogs {
                    resource: resource("api"),
                    scope_logs: vec![ScopeLogs {
                        log_records: (0..5u64)
                            .map(|i| {
                                let error = (40..60).contains(&(batch * 5)) && i < 3;
                                LogRecord {
                                    time_unix_nano: time - (i + 1) * 700 * MS,
                                    severity_number: if error { 17 } else { 9 },
                                    severity_text: if error {
                                        "ERROR".into()
                                    } else {
                                        "INFO".into()
                                    },
                                    body: Some(AnyValue {
                                        value: Some(any_value::Value::StringValue(format!(
                                            "stock lookup {i}"
                                        ))),
                                    }),
                                    ..Default::default()
                                }
                            })
                            .collect(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            };
            lines.push(json!({"signal": "logs", "request": logs}));
        }
    }
    lines.iter().map(|l| l.to_string() + "\n").collect()
}

/// Equal tables: the same rows and values, floats equal up to the last bits a
/// different summation order changes (records arrive in other batches at
/// another speed, and floating-point sums depend on their order).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) if x.fract() != 0.0 || y.fract() != 0.0 => {
                (x - y).abs() <= 1e-9 * x.abs().max(y.abs())
            }
            _ => x == y,
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}
