//! Window and pairing state per active series, measured as the growth of the bytes
//! live on the heap while one window fills (the requests themselves are freed as they
//! are ingested), and, as a cross-check, of this process's resident memory with the
//! engine's allocator.
//!
//! `SERVICES x OPERATIONS` operation series (100k by default), each receiving
//! `SPANS_PER_SERIES` SERVER spans in the window, each called by a CLIENT span of
//! another service (so edges and the pairing store are exercised too), in batches
//! of 1000 spans like the receivers produce. By default every server span comes
//! first and waits in the pairing store for its caller (the store's worst case,
//! measured at that point), then the client spans. Prints bytes per active series.
//!
//! `cargo bench --bench state_memory` (env: SERVICES, OPERATIONS, SPANS_PER_SERIES,
//! CALLEES_FIRST=0 to send each client span right before its server span).

use cap::Cap;
use homeostat::columnar::Signal;
use homeostat::config::Config;
use homeostat::ingest::decode::{Encoding, decode};
use homeostat::window::Windows;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;

/// The engine's allocator, counting the bytes live on the heap.
#[global_allocator]
static ALLOCATOR: Cap<mimalloc::MiMalloc> = Cap::new(mimalloc::MiMalloc, usize::MAX);

fn live_bytes() -> isize {
    ALLOCATOR.allocated() as isize
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn main() {
    let services = env("SERVICES", 1000);
    let operations = env("OPERATIONS", 100);
    let per_series = env("SPANS_PER_SERIES", 10);
    let series = services * operations;
    let config = Config::from_toml_str(
        "[window]\nmax_series = 10000000\nmax_future_skew = \"3650d\"\nmax_dedup_keys = 100000000\n",
    )
    .expect("config");
    let mut windows = Windows::new(&config.window);
    let base: u64 = 1_750_000_000_000_000_000;
    let now = base + 3_600_000_000_000;
    let before = rss_bytes();
    let live_before = live_bytes();
    let mut spans = Vec::new();
    let mut id: u64;
    let flush = |spans: &mut Vec<(u64, Span)>, windows: &mut Windows| {
        let mut by_service: std::collections::BTreeMap<u64, Vec<Span>> = Default::default();
        for (service, span) in spans.drain(..) {
            by_service.entry(service).or_default().push(span);
        }
        let request = ExportTraceServiceRequest {
            resource_spans: by_service
                .into_iter()
                .map(|(service, spans)| ResourceSpans {
                    resource: Some(Resource {
                        attributes: vec![kv("service.name", &format!("service-{service}"))],
                        ..Default::default()
                    }),
                    scope_spans: vec![ScopeSpans {
                        spans,
                        ..Default::default()
                    }],
                    ..Default::default()
                })
                .collect(),
        };
        let decoded =
            decode(Signal::Traces, &request.encode_to_vec(), Encoding::Protobuf).expect("decode");
        windows.ingest(&decoded, 0, now).expect("ingest");
    };
    // Pass 0 sends each server span after its client (they pair at once); with
    // CALLEES_FIRST=1 (the default), every server span is sent first (pass 1: each
    // waits in the pairing store for its caller, the store's worst case, measured
    // there), then every client span (pass 2: they pair, the store empties).
    let callees_first = env("CALLEES_FIRST", 1) == 1;
    let passes: &[u8] = if callees_first { &[1, 2] } else { &[0] };
    let mut peak = (0isize, 0usize);
    for &pass in passes {
        id = 0;
        for round in 0..per_series {
            for s in 0..services {
                for o in 0..operations {
                    id += 1;
                    let trace = [id.to_be_bytes(), round.to_be_bytes()].concat();
                    let end = base + 1_000_000_000 + (id % 5_000) * 1_000_000;
                    let route = format!("/api/op-{o}");
                    let client = Span {
                        trace_id: trace.clone(),
                        span_id: (id * 2).to_be_bytes().to_vec(),
                        name: format!("GET {route}"),
                        kind: 3,
                        start_time_unix_nano: end - 5_000_000,
                        end_time_unix_nano: end,
                        ..Default::default()
                    };
                    let server = Span {
                        trace_id: trace,
                        span_id: (id * 2 + 1).to_be_bytes().to_vec(),
                        parent_span_id: (id * 2).to_be_bytes().to_vec(),
                        name: format!("GET {route}"),
                        kind: 2,
                        start_time_unix_nano: end - 4_000_000 - (id % 97) * 10_000,
                        end_time_unix_nano: end - 500_000,
                        attributes: vec![kv("http.route", &route)],
                        ..Default::default()
                    };
                    if pass != 1 {
                        spans.push(((s + 1) % services, client));
                    }
                    if pass != 2 {
                        spans.push((s, server));
                    }
                    if spans.len() >= 1000 {
                        flush(&mut spans, &mut windows);
                    }
                }
            }
        }
        flush(&mut spans, &mut windows);
        if pass == 1 {
            peak = (live_bytes() - live_before, windows.pending_pairs());
        }
    }
    let after = rss_bytes();
    let live_after = live_bytes();
    let counts = windows.counts();
    println!(
        "{series} active operation series ({services} services x {operations} operations), \
         {per_series} server + {per_series} client spans each in one open window; \
         {} spans accepted, {} waiting in the pairing store, {} open window(s)",
        counts.accepted,
        windows.pending_pairs(),
        windows.open_windows()
    );
    let live = (live_after - live_before) as f64;
    if callees_first {
        println!(
            "with every server span waiting for its caller: {:.1} MiB live on the heap = \
             {:.0} bytes per active series, {} spans waiting",
            peak.0 as f64 / (1 << 20) as f64,
            peak.0 as f64 / series as f64,
            peak.1
        );
    }
    println!(
        "state: {:.1} MiB live on the heap = {:.0} bytes per active series \
         ({:.0} per waiting span if all were pairing state)",
        live / (1 << 20) as f64,
        live / series as f64,
        live / windows.pending_pairs().max(1) as f64,
    );
    println!(
        "cross-check: {:.1} MiB resident growth = {:.0} bytes per active series",
        after.saturating_sub(before) as f64 / (1 << 20) as f64,
        after.saturating_sub(before) as f64 / series as f64
    );
    // The state is released when the window closes.
    let closed = windows.close_all().expect("close");
    let rows: usize = closed
        .iter()
        .map(|w| w.batches.iter().map(|b| b.num_rows()).sum::<usize>())
        .sum();
    println!("closed {} window(s) with {rows} table rows", closed.len());
}
