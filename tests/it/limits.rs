//! Limits and bad input: every case gets a clear status and loses nothing else.

use std::io::Write;

use homeostat::ingest::OtlpIntake;
use homeostat::ingest::otlp_http;
use homeostat::self_metrics::SelfMetrics;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;
use std::sync::Arc;

use crate::support::{self, num, text};

pub fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_string())),
        }),
        ..Default::default()
    }
}

/// A SERVER span of `service` ending at `end_ns`, lasting `ms`.
pub fn server_span(trace: u8, id: u8, end_ns: u64, ms: u64, error: bool) -> Span {
    Span {
        trace_id: vec![trace; 16],
        span_id: vec![id; 8],
        name: "GET /x".to_string(),
        kind: 2,
        start_time_unix_nano: end_ns - ms * 1_000_000,
        end_time_unix_nano: end_ns,
        status: error.then(|| Status {
            code: 2,
            message: "boom".into(),
        }),
        ..Default::default()
    }
}

pub fn request(service: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", service)],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// 200 spans: well over the 4 KiB limit these tests configure, yet small gzipped.
fn oversized_request(t: u64) -> ExportTraceServiceRequest {
    request(
        "svc",
        (0..200)
            .map(|i| server_span(1, i as u8 + 1, t + 1_000_000, 5, false))
            .collect(),
    )
}

async fn post(url: &str, content_type: &str, gzip: bool, body: Vec<u8>) -> reqwest::Response {
    let mut builder = reqwest::Client::new()
        .post(url)
        .header("content-type", content_type);
    if gzip {
        builder = builder.header("content-encoding", "gzip");
    }
    builder.body(body).send().await.expect("engine reachable")
}

/// Posts `request` as OTLP/HTTP protobuf and asserts it was accepted.
async fn post_accepted(url: &str, request: ExportTraceServiceRequest) {
    let response = post(
        url,
        "application/x-protobuf",
        false,
        request.encode_to_vec(),
    )
    .await;
    assert_eq!(response.status(), 200);
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes).expect("gzip");
    encoder.finish().expect("gzip")
}

fn rpc_status(bytes: &[u8]) -> (i32, String) {
    #[derive(Clone, PartialEq, prost::Message)]
    struct RpcStatus {
        #[prost(int32, tag = "1")]
        code: i32,
        #[prost(string, tag = "2")]
        message: String,
    }
    let status = RpcStatus::decode(bytes).expect("google.rpc.Status body");
    (status.code, status.message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_limits_and_bad_input() {
    let engine = support::engine("[otlp]\nmax_request_bytes = 4096\n").await;
    let url = format!("http://{}/v1/traces", engine.http_addr);
    let t = support::aligned_past(20);

    // Over the limit as sent.
    let big = oversized_request(t);
    let body = big.encode_to_vec();
    assert!(body.len() > 4096);
    let response = post(&url, "application/x-protobuf", false, body.clone()).await;
    assert_eq!(response.status(), 413);
    let (code, message) = rpc_status(&response.bytes().await.expect("body"));
    assert_eq!(code, 8, "RESOURCE_EXHAUSTED in the Status body");
    assert!(message.contains("exceeds"), "{message}");

    // Within the limit compressed, over it once inflated.
    let compressed = gzip(&body);
    assert!(compressed.len() < 4096, "fixture compresses well");
    let response = post(&url, "application/x-protobuf", true, compressed).await;
    assert_eq!(response.status(), 413);

    // Undecodable protobuf and JSON.
    let response = post(
        &url,
        "application/x-protobuf",
        false,
        b"\x0a\xff\xff\xff\xff\x0f".to_vec(),
    )
    .await;
    assert_eq!(response.status(), 400);
    let (code, message) = rpc_status(&response.bytes().await.expect("body"));
    assert_eq!(code, 3);
    assert!(message.contains("cannot decode traces"), "{message}");
    let response = post(
        &url,
        "application/json",
        false,
        b"{\"resourceSpans\": 7}".to_vec(),
    )
    .await;
    assert_eq!(response.status(), 400);
    let error: serde_json::Value = response.json().await.expect("json status");
    assert!(
        error["message"]
            .as_str()
            .unwrap_or("")
            .contains("cannot decode"),
        "{error}"
    );
    let response = post(&url, "application/json", true, b"not gzip".to_vec()).await;
    assert_eq!(response.status(), 400);

    // Unsupported media type.
    let response = post(&url, "text/plain", false, b"hello".to_vec()).await;
    assert_eq!(response.status(), 415);

    // Partly invalid: the valid spans count, the response says how many were rejected.
    let mut spans = vec![
        server_span(2, 1, t + 1_000_000, 10, false),
        server_span(2, 2, t + 2_000_000, 20, true),
    ];
    let mut bad = server_span(2, 3, t + 3_000_000, 5, false);
    bad.trace_id = vec![1, 2, 3];
    spans.push(bad);
    let mut no_end = server_span(2, 4, t + 3_000_000, 5, false);
    no_end.end_time_unix_nano = 0;
    no_end.start_time_unix_nano = 0;
    spans.push(no_end);
    let response = post(
        &url,
        "application/x-protobuf",
        false,
        request("partial", spans).encode_to_vec(),
    )
    .await;
    assert_eq!(response.status(), 200);
    let answer = ExportTraceServiceResponse::decode(response.bytes().await.expect("body"))
        .expect("response");
    let partial = answer.partial_success.expect("partial success");
    assert_eq!(partial.rejected_spans, 2);
    assert!(
        partial.error_message.contains("trace_id"),
        "{}",
        partial.error_message
    );

    // A redelivered request is not counted twice.
    let again = request("partial", vec![server_span(2, 1, t + 1_000_000, 10, false)]);
    let response = post(&url, "application/x-protobuf", false, again.encode_to_vec()).await;
    assert_eq!(response.status(), 200);

    engine.flush().await;
    let rows = support::sql(
        engine.api_addr,
        "SELECT service_name, requests, errors FROM service_stats",
    )
    .await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(text(&rows[0], "service_name"), "partial");
    assert_eq!(num(&rows[0], "requests"), 2.0);
    assert_eq!(num(&rows[0], "errors"), 1.0);

    // Late: the window closed at flush; a span for it is dropped and counted.
    let late = request("partial", vec![server_span(2, 9, t + 1_000_000, 10, false)]);
    post(&url, "application/x-protobuf", false, late.encode_to_vec()).await;
    // The flush queues behind the late batch: once it answers, the batch was processed.
    engine.flush().await;
    let exposition = support::exposition(engine.api_addr).await;
    for needle in [
        "homeostat_window_records_dropped_total{reason=\"late\"} 1",
        "homeostat_window_records_dropped_total{reason=\"duplicate\"} 1",
        "homeostat_records_rejected_total{signal=\"traces\",reason=\"invalid\"} 2",
        "outcome=\"too_large\"} 2",
    ] {
        assert!(
            exposition.contains(needle),
            "missing {needle} in\n{exposition}"
        );
    }
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_limits_and_bad_input() {
    let engine = support::engine("[otlp]\nmax_request_bytes = 4096\n").await;
    let endpoint = format!("http://{}", engine.grpc_addr);
    let t = support::aligned_past(20);
    let big = oversized_request(t);

    let mut client = TraceServiceClient::connect(endpoint.clone())
        .await
        .expect("connect");
    let status = client.export(big.clone()).await.expect_err("too large");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");

    // Compressed under the limit, over it inflated: still RESOURCE_EXHAUSTED.
    let mut gzip_client = TraceServiceClient::connect(endpoint.clone())
        .await
        .expect("connect")
        .send_compressed(tonic::codec::CompressionEncoding::Gzip);
    let status = gzip_client
        .export(big)
        .await
        .expect_err("too large once inflated");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");

    // A valid compressed request succeeds.
    let ok = request("grpc-svc", vec![server_span(3, 1, t + 1_000_000, 5, false)]);
    let response = gzip_client.export(ok).await.expect("accepted").into_inner();
    assert!(response.partial_success.is_none());

    // Partial success over gRPC.
    let mut bad = server_span(3, 2, t + 1_000_000, 5, false);
    bad.span_id = vec![];
    let response = client
        .export(request(
            "grpc-svc",
            vec![bad, server_span(3, 3, t + 1_000_000, 5, true)],
        ))
        .await
        .expect("accepted")
        .into_inner();
    assert_eq!(response.partial_success.expect("partial").rejected_spans, 1);

    // Undecodable message: INVALID_ARGUMENT with a message.
    let http2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let mut frame = vec![0u8, 0, 0, 0, 6];
    frame.extend_from_slice(b"\x0a\xff\xff\xff\xff\x0f");
    let response = http2
        .post(format!(
            "{endpoint}/opentelemetry.proto.collector.trace.v1.TraceService/Export"
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(frame)
        .send()
        .await
        .expect("grpc over h2");
    assert_eq!(
        response
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok()),
        Some("3")
    );
    let message = response
        .headers()
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(message.contains("cannot decode traces"), "{message}");

    // A wrong content type is INVALID_ARGUMENT; a compressed frame in an
    // encoding the server does not speak is UNIMPLEMENTED. Neither is counted.
    let path = format!("{endpoint}/opentelemetry.proto.collector.trace.v1.TraceService/Export");
    let valid = prost::Message::encode_to_vec(&request(
        "grpc-svc",
        vec![server_span(3, 9, t + 1_000_000, 5, false)],
    ));
    let framed = |flag: u8| {
        let mut f = vec![flag];
        f.extend_from_slice(&(valid.len() as u32).to_be_bytes());
        f.extend_from_slice(&valid);
        f
    };
    for (content_type, encoding, flag, code, says) in [
        (
            "application/json",
            "identity",
            0,
            "3",
            "unsupported content-type",
        ),
        (
            "application/grpc",
            "snappy",
            1,
            "12",
            "unsupported grpc-encoding",
        ),
    ] {
        let response = http2
            .post(&path)
            .header("content-type", content_type)
            .header("grpc-encoding", encoding)
            .header("te", "trailers")
            .body(framed(flag))
            .send()
            .await
            .expect("grpc over h2");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        assert_eq!(header("grpc-status"), code, "{content_type} {encoding}");
        assert!(
            header("grpc-message").contains(says),
            "{}",
            header("grpc-message")
        );
    }

    engine.flush().await;
    let rows = support::sql(
        engine.api_addr,
        "SELECT requests, errors FROM service_stats WHERE service_name = 'grpc-svc'",
    )
    .await;
    assert_eq!(rows.len(), 1);
    assert_eq!(num(&rows[0], "requests"), 2.0);
    assert_eq!(num(&rows[0], "errors"), 1.0);
    engine.shutdown().await;
}

/// The receivers answer 503 / UNAVAILABLE when the pipeline queue is full. The queue's
/// consumer (the window stage) is left out so the queue stays full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_answers_unavailable() {
    let (queue, _inbox) = tokio::sync::mpsc::channel(1);
    let intake = OtlpIntake::new(queue, 1 << 20, Arc::new(SelfMetrics::new()));
    let http = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let (http_addr, grpc_addr) = (
        http.local_addr().expect("addr"),
        grpc.local_addr().expect("addr"),
    );
    tokio::spawn(async move { axum::serve(http, otlp_http::router(intake.clone())).await });
    let (queue, _inbox2) = tokio::sync::mpsc::channel(1);
    let grpc_intake = OtlpIntake::new(queue, 1 << 20, Arc::new(SelfMetrics::new()));
    let router = homeostat::ingest::otlp_grpc::router(grpc_intake)
        .await
        .expect("router");
    tokio::spawn(async move { axum::serve(grpc, router).await });

    let t = support::aligned_past(5);
    let body = request("svc", vec![server_span(1, 1, t, 5, false)]).encode_to_vec();
    let url = format!("http://{http_addr}/v1/traces");
    assert_eq!(
        post(&url, "application/x-protobuf", false, body.clone())
            .await
            .status(),
        200
    );
    let response = post(&url, "application/x-protobuf", false, body).await;
    assert_eq!(response.status(), 503);
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );

    let mut client = TraceServiceClient::connect(format!("http://{grpc_addr}"))
        .await
        .expect("connect");
    client
        .export(request("svc", vec![server_span(1, 1, t, 5, false)]))
        .await
        .expect("first fits");
    let status = client
        .export(request("svc", vec![server_span(1, 2, t, 5, false)]))
        .await
        .expect_err("queue full");
    assert_eq!(status.code(), tonic::Code::Unavailable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_cardinality_is_capped_and_counted() {
    let engine = support::engine("[window]\nmax_series = 3\n").await;
    let url = format!("http://{}/v1/traces", engine.http_addr);
    let t = support::aligned_past(10);
    for (i, service) in ["a", "b", "c", "d", "e"].iter().enumerate() {
        let spans = vec![server_span(i as u8 + 1, 1, t + 1_000_000, 5, false)];
        post_accepted(&url, request(service, spans)).await;
    }
    engine.flush().await;
    let rows = support::sql(
        engine.api_addr,
        "SELECT service_name FROM service_stats ORDER BY service_name",
    )
    .await;
    let names: Vec<&str> = rows.iter().map(|r| text(r, "service_name")).collect();
    assert_eq!(names, vec!["a", "b", "c"]);
    let exposition = support::exposition(engine.api_addr).await;
    assert!(
        exposition.contains("homeostat_window_records_dropped_total{reason=\"series_overflow\"} 2"),
        "{exposition}"
    );
    engine.shutdown().await;
}

/// Records stamped beyond `window.max_future_skew` are dropped and counted; a
/// window's identity set stops at `window.max_dedup_keys` (the rest still count,
/// and the overflow is exported); answers stop at `api.max_result_rows` and say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn future_skew_dedup_cap_and_result_rows() {
    let engine = support::engine(
        "[window]\nmax_future_skew = \"1m\"\nmax_dedup_keys = 2\n[api]\nmax_result_rows = 2\n",
    )
    .await;
    let url = format!("http://{}/v1/traces", engine.http_addr);
    let t = support::aligned_past(10);
    let future = support::aligned_past(0) + 30 * 60 * 1_000_000_000;
    let mut spans: Vec<Span> = (1..=5)
        .map(|i| server_span(1, i, t + 1_000_000, 5, false))
        .collect();
    spans.push(server_span(2, 1, future, 5, false));
    post_accepted(&url, request("skew", spans)).await;
    // The same five spans again: two are recognised as redeliveries; the three
    // beyond the identity set cannot be, and count again.
    let again: Vec<Span> = (1..=5)
        .map(|i| server_span(1, i, t + 1_000_000, 5, false))
        .collect();
    post_accepted(&url, request("skew", again)).await;
    engine.flush().await;

    let rows = support::sql(
        engine.api_addr,
        "SELECT requests FROM service_stats WHERE service_name = 'skew'",
    )
    .await;
    assert_eq!(rows.len(), 1, "the future span opened no window: {rows:?}");
    assert_eq!(num(&rows[0], "requests"), 8.0);
    let exposition = support::exposition(engine.api_addr).await;
    for line in [
        "homeostat_window_records_dropped_total{reason=\"future\"} 1",
        "homeostat_window_records_dropped_total{reason=\"duplicate\"} 2",
        "homeostat_dedup_overflow_total 6",
    ] {
        assert!(exposition.contains(line), "{line} missing:\n{exposition}");
    }

    let response = reqwest::Client::new()
        .post(format!("http://{}/sql?format=json", engine.api_addr))
        .body("SELECT * FROM (VALUES (1), (2), (3), (4)) AS t(x)")
        .send()
        .await
        .expect("api");
    assert_eq!(response.status(), 200);
    let truncated = response
        .headers()
        .get("x-homeostat-truncated")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let rows: Vec<serde_json::Value> = response.json().await.expect("json");
    assert_eq!((rows.len(), truncated.as_deref()), (2, Some("true")));
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_errors_are_clear() {
    let engine = support::engine("").await;
    let response = reqwest::Client::new()
        .post(format!("http://{}/sql", engine.api_addr))
        .body("SELECT nope FROM service_stats")
        .send()
        .await
        .expect("api");
    assert_eq!(response.status(), 400);
    let error: serde_json::Value = response.json().await.expect("json");
    assert!(
        error["error"].as_str().unwrap_or("").contains("nope"),
        "{error}"
    );
    let response = reqwest::Client::new()
        .post(format!("http://{}/sql", engine.api_addr))
        .body("CREATE TABLE x AS SELECT 1")
        .send()
        .await
        .expect("api");
    assert_eq!(response.status(), 400, "DDL is refused");
    let rows = support::sql(engine.api_addr, "SELECT COUNT(*) AS n FROM edge_stats").await;
    assert_eq!(num(&rows[0], "n"), 0.0);
    engine.shutdown().await;
}
