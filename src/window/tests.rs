use arrow::array::{Array, StringArray, UInt64Array};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

use super::*;
use crate::config::Config;

const BASE: u64 = 1_700_000_000_000_000_000;
const SEC: u64 = 1_000_000_000;

fn spans(service: &str, ends: &[(u8, u64)]) -> Decoded {
    let spans = ends
        .iter()
        .map(|(id, end)| Span {
            trace_id: vec![9; 16],
            span_id: vec![*id; 8],
            kind: 2,
            start_time_unix_nano: end - 1_000_000,
            end_time_unix_nano: *end,
            ..Default::default()
        })
        .collect();
    let resource = Resource {
        attributes: vec![KeyValue {
            key: "service.name".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(service.into())),
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    crate::columnar::spans::to_arrow(&[ResourceSpans {
        resource: Some(resource),
        scope_spans: vec![ScopeSpans {
            spans,
            ..Default::default()
        }],
        ..Default::default()
    }])
    .expect("spans")
}

fn requests(tables: &WindowTables) -> Vec<(String, u64)> {
    let batch = &tables.batches[0];
    let names = batch.column_by_name("service_name").expect("col");
    let names = names.as_any().downcast_ref::<StringArray>().expect("str");
    let counts = batch.column_by_name("requests").expect("col");
    let counts = counts.as_any().downcast_ref::<UInt64Array>().expect("u64");
    (0..batch.num_rows())
        .map(|i| (names.value(i).to_string(), counts.value(i)))
        .collect()
}

fn windows() -> Windows {
    Windows::new(
        &Config::from_toml_str("[window]\nidle_timeout = \"10s\"\n")
            .expect("config")
            .window,
    )
}

#[test]
fn watermark_closes_windows_and_late_records_are_counted() {
    let mut w = windows();
    let now = BASE + 3600 * SEC;
    w.ingest(&spans("a", &[(1, BASE + SEC), (2, BASE + 9 * SEC)]), 0, now)
        .expect("ingest");
    assert!(w.advance(now).expect("advance").is_empty());
    // 16 s - 5 s lateness = 11 s: the first window [0, 10) closes.
    w.ingest(&spans("a", &[(3, BASE + 16 * SEC)]), 0, now)
        .expect("ingest");
    let closed = w.advance(now).expect("advance");
    assert_eq!(closed.len(), 1);
    assert_eq!(requests(&closed[0]), vec![("a".to_string(), 2)]);
    w.ingest(&spans("a", &[(4, BASE + 2 * SEC)]), 0, now)
        .expect("ingest");
    assert_eq!(w.counts().late, 1);
    // Duplicates within an open window are dropped.
    w.ingest(&spans("a", &[(3, BASE + 16 * SEC)]), 0, now)
        .expect("ingest");
    assert_eq!(w.counts().duplicates, 1);
    let closed = w.close_all().expect("close");
    assert_eq!(requests(&closed[0]), vec![("a".to_string(), 1)]);
}

#[test]
fn a_new_input_holds_the_watermark_until_it_delivers_or_idles() {
    let mut w = windows();
    let now = BASE + 3600 * SEC;
    w.set_inputs(&[1, 2], now);
    w.ingest(
        &spans("a", &[(1, BASE + SEC), (2, BASE + 30 * SEC)]),
        1,
        now,
    )
    .expect("ingest");
    assert!(
        w.advance(now).expect("advance").is_empty(),
        "input 2 has not delivered yet"
    );
    w.ingest(&spans("b", &[(3, BASE + 2 * SEC)]), 2, now)
        .expect("ingest");
    assert_eq!(w.counts().late, 0, "the slower input's record is not late");
    assert!(
        w.advance(now).expect("advance").is_empty(),
        "input 2 is at 2 s"
    );
    // Input 2 goes silent: after the idle timeout it no longer holds windows open.
    let closed = w.advance(now + 11 * SEC).expect("advance");
    assert_eq!(
        closed.len(),
        1,
        "[0 s, 10 s) closes; [30 s, 40 s) is within the lateness"
    );
    assert_eq!(
        requests(&closed[0]),
        vec![("a".to_string(), 1), ("b".to_string(), 1)]
    );
}

#[test]
fn checkpoint_restores_lateness_and_cumulative_state() {
    let mut w = windows();
    let now = BASE + 3600 * SEC;
    w.ingest(&spans("a", &[(1, BASE + SEC)]), 0, now)
        .expect("ingest");
    w.close_all().expect("close");
    let checkpoint = w.checkpoint();
    let mut restored = windows();
    restored.restore(checkpoint);
    restored
        .ingest(&spans("a", &[(2, BASE + 3 * SEC)]), 0, now)
        .expect("ingest");
    assert_eq!(restored.counts().late, 1);
}

#[test]
fn extreme_timestamps_do_not_panic() {
    let config =
        Config::from_toml_str("[window]\nmax_future_skew = \"100000d\"\n").expect("config");
    let mut w = Windows::new(&config.window);
    let now = u64::MAX - 1;
    let mut extreme = spans("a", &[(1, u64::MAX), (2, 1_000_000)]);
    w.ingest(&extreme, 0, now).expect("ingest");
    w.advance(now).expect("advance");
    extreme = spans("b", &[(3, u64::MAX - 5)]);
    w.ingest(&extreme, 0, now).expect("ingest");
    w.close_all().expect("close");
}

#[test]
fn the_open_window_is_looked_into_once_when_the_watermark_is_halfway() {
    let mut w = windows();
    let now = BASE + 3600 * SEC;
    w.ingest(&spans("a", &[(1, BASE + SEC), (2, BASE + 9 * SEC)]), 0, now)
        .expect("ingest");
    // The watermark, 9 s - 5 s lateness, is 4 s into [0, 10): not yet halfway.
    assert!(w.early_look(now).expect("look").is_none());
    w.ingest(&spans("a", &[(3, BASE + 10 * SEC)]), 0, now)
        .expect("ingest");
    let look = w.early_look(now).expect("look").expect("halfway at 5 s");
    assert_eq!(
        (look.start_ms, look.end_ms),
        (1_700_000_000_000, 1_700_000_005_000)
    );
    assert_eq!(requests(&look), vec![("a".to_string(), 2)]);
    assert!(look.batches[3..].iter().all(|b| b.num_rows() == 0));
    assert!(
        w.early_look(now).expect("look").is_none(),
        "once per window"
    );
    assert!(w.advance(now).expect("advance").is_empty(), "it stays open");
    // The window closes as usual, with what came after the look.
    w.ingest(
        &spans("a", &[(4, BASE + 8 * SEC), (5, BASE + 16 * SEC)]),
        0,
        now,
    )
    .expect("ingest");
    let closed = w.advance(now).expect("advance");
    assert_eq!(requests(&closed[0]), vec![("a".to_string(), 3)]);
    assert!(
        w.early_look(now).expect("look").is_none(),
        "1 s into [10, 20)"
    );
    w.ingest(&spans("a", &[(6, BASE + 21 * SEC)]), 0, now)
        .expect("ingest");
    let look = w.early_look(now).expect("look").expect("[10, 20) halfway");
    assert_eq!(look.start_ms, 1_700_000_010_000);
    assert_eq!(requests(&look), vec![("a".to_string(), 2)]);
}

#[test]
fn an_early_look_of_zero_never_looks() {
    let config = Config::from_toml_str("[window]\nearly_look = 0.0\n").expect("config");
    let mut w = Windows::new(&config.window);
    let now = BASE + 3600 * SEC;
    w.ingest(
        &spans("a", &[(1, BASE + SEC), (2, BASE + 14 * SEC)]),
        0,
        now,
    )
    .expect("ingest");
    assert!(w.early_look(now).expect("look").is_none());
    assert!(
        Config::from_toml_str("[window]\nearly_look = 1.0\n").is_err(),
        "a look at the end is the close"
    );
}
