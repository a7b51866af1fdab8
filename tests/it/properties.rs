//! Property tests: decoders never panic on any input, and conversions account for
//! every record; windows give the same tables whatever the arrival order.

use homeostat::columnar::Signal;
use homeostat::config::Config;
use homeostat::ingest::decode::{Encoding, decode};
use homeostat::window::Windows;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use proptest::prelude::*;

use crate::limits::kv;

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn decoders_never_panic_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        for signal in [Signal::Traces, Signal::Metrics, Signal::Logs] {
            for encoding in [Encoding::Protobuf, Encoding::Json] {
                let _ = decode(signal, &bytes, encoding);
            }
        }
    }

    #[test]
    fn json_decoder_never_panics_on_near_valid_documents(
        keys in proptest::collection::vec("[a-zA-Z]{1,12}", 0..6),
        values in proptest::collection::vec(prop_oneof![
            Just("\"\"".to_string()), Just("null".to_string()), Just("-1".to_string()),
            Just("\"zz\"".to_string()), Just("[]".to_string()), Just("{}".to_string()),
            Just("18446744073709551616".to_string()), Just("\"0102\"".to_string()),
        ], 0..6),
    ) {
        let fields: Vec<String> = keys.iter().zip(values.iter()).map(|(k, v)| format!("\"{k}\": {v}")).collect();
        let span = format!("{{{}}}", fields.join(","));
        let doc = format!("{{\"resourceSpans\":[{{\"scopeSpans\":[{{\"spans\":[{span}]}}]}}]}}");
        let _ = decode(Signal::Traces, doc.as_bytes(), Encoding::Json);
    }

    #[test]
    fn span_conversion_accounts_for_every_span(
        spans in proptest::collection::vec(
            (0usize..20, 0usize..12, 0usize..12, -2i32..8, any::<u32>(), 0u64..1_000_000, 0i32..4),
            0..40,
        )
    ) {
        let spans: Vec<Span> = spans
            .into_iter()
            .map(|(trace_len, span_len, parent_len, kind, end, duration, status)| Span {
                trace_id: vec![7; trace_len],
                span_id: vec![3; span_len],
                parent_span_id: vec![5; parent_len],
                kind,
                start_time_unix_nano: (end as u64).saturating_sub(duration),
                end_time_unix_nano: end as u64,
                status: Some(Status { code: status, ..Default::default() }),
                ..Default::default()
            })
            .collect();
        let total = spans.len() as u64;
        let resource_spans = vec![ResourceSpans {
            scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
            ..Default::default()
        }];
        let decoded = homeostat::columnar::spans::to_arrow(&resource_spans).expect("conversion");
        prop_assert_eq!(decoded.batch.num_rows() as u64 + decoded.rejected, total);
        let config = Config::from_toml_str("").expect("defaults");
        let mut windows = Windows::new(&config.window);
        windows.ingest(&decoded, 0, u64::MAX / 2).expect("ingest");
        windows.close_all().expect("close");
    }

    /// Within the allowed lateness, arrival order does not change any table.
    #[test]
    fn arrival_order_does_not_change_tables(order in Just((0..24usize).collect::<Vec<_>>()).prop_shuffle()) {
        let config = Config::from_toml_str("[window]\nallowed_lateness = \"1m\"\n").expect("config");
        let base = 1_700_000_000_000_000_000u64;
        let batches: Vec<_> = (0..24u64)
            .map(|i| {
                // request i: client span in `front` (odd ids) and server span in `back`.
                let trace = vec![i as u8 + 1; 16];
                let end = base + (i % 3) * 10_000_000_000 + i * 1_000_000;
                let client = Span {
                    trace_id: trace.clone(), span_id: vec![1; 8], kind: 3,
                    start_time_unix_nano: end - 9_000_000, end_time_unix_nano: end, ..Default::default()
                };
                let server = Span {
                    trace_id: trace, span_id: vec![2; 8], parent_span_id: vec![1; 8], kind: 2,
                    start_time_unix_nano: end - 8_000_000, end_time_unix_nano: end - 1_000_000,
                    status: (i % 5 == 0).then(|| Status { code: 2, ..Default::default() }), ..Default::default()
                };
                let service = if i % 2 == 0 { (client, "front") } else { (server, "back") };
                let resource_spans = vec![ResourceSpans {
                    resource: Some(opentelemetry_proto::tonic::resource::v1::Resource {
                        attributes: vec![kv("service.name", service.1)], ..Default::default()
                    }),
                    scope_spans: vec![ScopeSpans { spans: vec![service.0], ..Default::default() }],
                    ..Default::default()
                }];
                homeostat::columnar::spans::to_arrow(&resource_spans).expect("conversion")
            })
            .collect();
        let run = |order: &[usize]| {
            let mut windows = Windows::new(&config.window);
            let mut closed = Vec::new();
            for i in order {
                windows.ingest(&batches[*i], 0, u64::MAX / 2).expect("ingest");
                closed.extend(windows.advance(u64::MAX / 2).expect("advance"));
            }
            closed.extend(windows.close_all().expect("close"));
            closed.into_iter().map(|w| (w.start_ms, w.batches)).collect::<Vec<_>>()
        };
        let sorted: Vec<usize> = (0..24).collect();
        prop_assert_eq!(run(&order), run(&sorted));
    }
}
