//! Criterion benches of the ingest hot paths, on the load generator's realistic
//! requests (20 services, ~520 spans per request, HTTP/database/messaging spans):
//!
//! - `decode/prost_only`: prost-decoding the request, the baseline any receiver pays;
//! - `decode/to_arrow`: the request into an Arrow batch (spans/s, and MB/s in
//!   `decode_bytes/to_arrow`);
//! - `window/aggregate`: one decoded batch into the event-time windows
//!   (dedup, per-service and per-operation stats, edge pairing, window closing);
//! - `pairing/offer`: the edge pairing store alone, caller and callee spans of
//!   distinct traces.
//!
//! `cargo bench --bench hot_paths` prints each one's throughput, then the cost of
//! each stage relative to the prost baseline measured in the same run.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Bencher, Criterion, Throughput};
use homeostat::columnar::{Decoded, Signal};
use homeostat::config::Config;
use homeostat::ingest::decode::{Encoding, decode};
use homeostat::loadgen::fleet::{Fleet, FleetSpec};
use homeostat::loadgen::{Template, templates};
use homeostat::window::Windows;
use homeostat::window::pairing::{PairSpan, PairingStore};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

const BASE_NS: u64 = 1_750_000_000_000_000_000;

struct Corpus {
    templates: Vec<Template>,
    bodies: Vec<(bytes::Bytes, u64)>,
}

impl Corpus {
    fn new() -> Self {
        let fleet = Fleet::new(FleetSpec::default());
        let templates = templates(&fleet, 16);
        let bodies = templates
            .iter()
            .enumerate()
            .map(|(i, t)| {
                (
                    t.instantiate(i as u64, Some(BASE_NS))[0].clone(),
                    t.counts.0,
                )
            })
            .collect();
        Corpus { templates, bodies }
    }

    fn spans_per_body(&self) -> u64 {
        self.bodies.iter().map(|(_, n)| n).sum::<u64>() / self.bodies.len() as u64
    }

    fn bytes_per_body(&self) -> u64 {
        self.bodies.iter().map(|(b, _)| b.len() as u64).sum::<u64>() / self.bodies.len() as u64
    }

    /// Send number `seq` decoded, `seq` ms after the base time.
    fn decoded(&self, seq: u64) -> Decoded {
        let template = &self.templates[(seq % self.templates.len() as u64) as usize];
        let body = template.traces(seq, Some(BASE_NS + seq * 2_000_000));
        decode(Signal::Traces, &body, Encoding::Protobuf).expect("decode")
    }
}

fn decode_benches(c: &mut Criterion, corpus: &Corpus) {
    let mut i = 0;
    let mut to_arrow = |b: &mut Bencher<'_>| {
        b.iter(|| {
            i += 1;
            let body = &corpus.bodies[i % corpus.bodies.len()].0;
            black_box(decode(Signal::Traces, body, Encoding::Protobuf).expect("decode"))
        })
    };
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(corpus.spans_per_body()));
    let mut j = 0;
    group.bench_function("prost_only", |b| {
        b.iter(|| {
            j += 1;
            let body = &corpus.bodies[j % corpus.bodies.len()].0;
            black_box(ExportTraceServiceRequest::decode(body.as_ref()).expect("decode"))
        })
    });
    group.bench_function("to_arrow", &mut to_arrow);
    group.finish();
    let mut group = c.benchmark_group("decode_bytes");
    group.throughput(Throughput::Bytes(corpus.bytes_per_body()));
    group.bench_function("to_arrow", &mut to_arrow);
    group.finish();
}

fn window_bench(c: &mut Criterion, corpus: &Corpus) {
    let config = Config::from_toml_str("").expect("config");
    let mut windows = Windows::new(&config.window);
    let mut group = c.benchmark_group("window");
    group.throughput(Throughput::Elements(corpus.spans_per_body()));
    let mut seq = 0u64;
    group.bench_function("aggregate", |b| {
        b.iter_batched(
            || {
                seq += 1;
                (corpus.decoded(seq), BASE_NS + seq * 2_000_000)
            },
            |(decoded, now)| {
                windows.ingest(&decoded, 0, now).expect("ingest");
                black_box(windows.advance(now).expect("advance"))
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

const PAIRS_PER_ITER: u64 = 500;

fn pair_span(
    trace: u128,
    span: u64,
    parent: Option<u64>,
    service: &str,
    kind: i32,
    end_ns: u64,
) -> PairSpan<'_> {
    PairSpan {
        trace,
        span,
        parent,
        service: ["shop", service, "prod"],
        kind,
        end_ns,
        duration_ms: 3.0,
        error: false,
        database: None,
        peer: None,
        destination: None,
        entry: None,
    }
}

const WINDOW_NS: u64 = 10_000_000_000;

fn pairing_bench(c: &mut Criterion) {
    let services: Vec<String> = (0..20).map(|i| format!("svc-{i}")).collect();
    let mut store = PairingStore::new(30_000_000_000, WINDOW_NS, 1_000_000);
    let mut out = Vec::new();
    let mut group = c.benchmark_group("pairing");
    group.throughput(Throughput::Elements(PAIRS_PER_ITER * 2));
    let mut seq = 0u64;
    group.bench_function("offer", |b| {
        b.iter_batched(
            || {
                // Callers and callees of distinct traces, half arriving callee-first.
                let mut spans = Vec::with_capacity(PAIRS_PER_ITER as usize * 2);
                for _ in 0..PAIRS_PER_ITER {
                    seq += 1;
                    let trace = (seq as u128) << 64 | 0xabcdef;
                    let end = BASE_NS + seq * 20_000;
                    let caller = &services[(seq % 20) as usize];
                    let callee = &services[((seq * 7 + 3) % 20) as usize];
                    let client = pair_span(trace, seq * 2, Some(seq * 2 + 7), caller, 3, end);
                    let server =
                        pair_span(trace, seq * 2 + 1, Some(seq * 2), callee, 2, end - 1000);
                    if seq.is_multiple_of(2) {
                        spans.extend([client, server]);
                    } else {
                        spans.extend([server, client]);
                    }
                }
                (spans, BASE_NS + seq * 20_000)
            },
            |(spans, now)| {
                for span in spans {
                    store.offer(span, &mut out);
                }
                // As the engine does: expiry when a window closes.
                let up_to = now.saturating_sub(30_000_000_000);
                store.expire(up_to - up_to % WINDOW_NS, &mut out);
                out.clear();
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

/// The median of a finished bench, from criterion's estimates file.
fn median_ns(group: &str, id: &str) -> Option<f64> {
    let dir = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let path = format!("{dir}/criterion/{group}/{id}/new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    value["median"]["point_estimate"].as_f64()
}

fn main() {
    let corpus = Corpus::new();
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .sample_size(30)
        .configure_from_args();
    println!(
        "corpus: {} spans and {} bytes per request",
        corpus.spans_per_body(),
        corpus.bytes_per_body()
    );
    decode_benches(&mut c, &corpus);
    window_bench(&mut c, &corpus);
    pairing_bench(&mut c);
    c.final_summary();
    if let (Some(base), Some(arrow), Some(window)) = (
        median_ns("decode", "prost_only"),
        median_ns("decode", "to_arrow"),
        median_ns("window", "aggregate"),
    ) {
        let spans = corpus.spans_per_body() as f64;
        println!(
            "relative to the prost baseline (same run): decode -> Arrow {:.2}x, + window {:.2}x; \
             ingest (decode -> Arrow -> window) {:.0} spans/s = {:.0}% of bare decode",
            arrow / base,
            (arrow + window) / base,
            spans / ((arrow + window) / 1e9),
            100.0 * base / (arrow + window)
        );
    }
}
