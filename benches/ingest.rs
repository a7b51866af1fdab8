//! Throughput of the ingest path on one core, as ratios against a baseline measured
//! in the same run (these machines are noisy):
//!
//! - baseline: prost-decoding the OTLP request (the least any receiver must do);
//! - decode + columnar: the request into an Arrow batch;
//! - decode + columnar + window: and aggregated into event-time windows.
//!
//! `cargo bench --bench ingest` prints spans/s and each stage's cost relative to the
//! baseline.

use std::hint::black_box;
use std::time::{Duration, Instant};

use homeostat::columnar::Signal;
use homeostat::config::Config;
use homeostat::ingest::decode::{Encoding, decode};
use homeostat::window::Windows;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;

const SPANS_PER_REQUEST: u64 = 1000;
const BASE: u64 = 1_700_000_000_000_000_000;

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

/// One request: 20 services x 50 spans (server + client pairs, routes, statuses).
fn request(seq: u64) -> Vec<u8> {
    let resource_spans = (0..20u64)
        .map(|s| ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", &format!("svc-{s}")),
                    kv("deployment.environment.name", "bench"),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: (0..SPANS_PER_REQUEST / 20)
                    .map(|i| {
                        let n = seq * SPANS_PER_REQUEST + s * 1000 + i;
                        let end = BASE + n * 1_000_000;
                        Span {
                            trace_id: [n.to_be_bytes(), s.to_be_bytes()].concat(),
                            span_id: (n + 1).to_be_bytes().to_vec(),
                            parent_span_id: if i % 2 == 1 {
                                n.to_be_bytes().to_vec()
                            } else {
                                vec![]
                            },
                            name: format!("GET /r{}", i % 8),
                            kind: if i % 2 == 0 { 3 } else { 2 },
                            start_time_unix_nano: end - 5_000_000,
                            end_time_unix_nano: end,
                            attributes: vec![kv("http.route", &format!("/r{}", i % 8))],
                            ..Default::default()
                        }
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest { resource_spans }.encode_to_vec()
}

fn measure(name: &str, requests: &[Vec<u8>], mut run: impl FnMut(&[u8])) -> Duration {
    // Warm up, then take the median of 7 passes.
    for body in requests.iter().take(5) {
        run(body);
    }
    let mut passes: Vec<Duration> = (0..7)
        .map(|_| {
            let start = Instant::now();
            for body in requests {
                run(body);
            }
            start.elapsed()
        })
        .collect();
    passes.sort();
    let median = passes[passes.len() / 2];
    let spans = requests.len() as f64 * SPANS_PER_REQUEST as f64;
    println!(
        "{name:<32} {:>12.0} spans/s  ({median:?} per pass)",
        spans / median.as_secs_f64()
    );
    median
}

fn main() {
    let requests: Vec<Vec<u8>> = (0..50).map(request).collect();
    let config = Config::from_toml_str("[window]\nmax_future_skew = \"3650d\"\n").expect("config");
    let baseline = measure("baseline: prost decode", &requests, |body| {
        black_box(ExportTraceServiceRequest::decode(body).expect("decode"));
    });
    let columnar = measure("decode + columnar", &requests, |body| {
        black_box(decode(Signal::Traces, body, Encoding::Protobuf).expect("decode"));
    });
    let mut windows = Windows::new(&config.window);
    let now = BASE + 3_600_000_000_000_000;
    let window = measure("decode + columnar + window", &requests, |body| {
        let decoded = decode(Signal::Traces, body, Encoding::Protobuf).expect("decode");
        windows.ingest(&decoded, 0, now).expect("ingest");
        black_box(windows.advance(now).expect("advance"));
    });
    let ratio = |d: Duration| d.as_secs_f64() / baseline.as_secs_f64();
    println!(
        "cost relative to the baseline: columnar {:.2}x, columnar + window {:.2}x",
        ratio(columnar),
        ratio(window)
    );
}
