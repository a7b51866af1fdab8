use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};

use super::*;

const BASE_MS: u64 = 1_700_000_000_000;
const W: i64 = 10_000;

fn attr(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn resource(service: &str, instance: &str) -> Option<Resource> {
    Some(Resource {
        attributes: vec![
            attr("service.name", service),
            attr("k8s.pod.name", instance),
        ],
        ..Default::default()
    })
}

/// `n` spans of `kind` from `instance` ending at `at_ms`, the first `errors`
/// failed, each taking `ms`.
fn spans(instance: &str, kind: i32, n: usize, errors: usize, ms: u64, at_ms: u64) -> ResourceSpans {
    let end = (BASE_MS + at_ms) * 1_000_000;
    let spans = (0..n)
        .map(|i| Span {
            trace_id: vec![1; 16],
            span_id: vec![i as u8 + 1; 8],
            kind,
            start_time_unix_nano: end - ms * 1_000_000,
            end_time_unix_nano: end,
            status: Some(Status {
                code: if i < errors { 2 } else { 0 },
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    ResourceSpans {
        resource: resource("cart", instance),
        scope_spans: vec![ScopeSpans {
            spans,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn batch(resources: &[ResourceSpans]) -> RecordBatch {
    crate::columnar::spans::to_arrow(resources)
        .expect("spans")
        .batch
}

fn point(value: f64, at_ms: u64) -> NumberDataPoint {
    NumberDataPoint {
        time_unix_nano: (BASE_MS + at_ms) * 1_000_000,
        value: Some(number_data_point::Value::AsDouble(value)),
        ..Default::default()
    }
}

fn metrics(instance: &str, points: &[(f64, u64)], monotonic_total: f64) -> RecordBatch {
    let gauge = Metric {
        name: "process.memory.usage".into(),
        data: Some(metric::Data::Gauge(Gauge {
            data_points: points.iter().map(|&(v, t)| point(v, t)).collect(),
        })),
        ..Default::default()
    };
    let counter = Metric {
        name: "requests.total".into(),
        data: Some(metric::Data::Sum(Sum {
            data_points: vec![point(monotonic_total, points[0].1)],
            aggregation_temporality: 2,
            is_monotonic: true,
        })),
        ..Default::default()
    };
    let rm = ResourceMetrics {
        resource: resource("cart", instance),
        scope_metrics: vec![ScopeMetrics {
            metrics: vec![gauge, counter],
            ..Default::default()
        }],
        ..Default::default()
    };
    crate::columnar::metrics::to_arrow(&[rm])
        .expect("metrics")
        .batch
}

/// An inventory that has seen `instances` of cart.
fn inventory(instances: &[&str]) -> Inventory {
    let mut inv = Inventory::new(10);
    let all: Vec<ResourceSpans> = instances.iter().map(|i| spans(i, 2, 1, 0, 1, 0)).collect();
    inv.observe(&batch(&all), "end_time_unix_nano", None);
    inv
}

fn start_ms() -> i64 {
    let base = BASE_MS as i64;
    base - base.rem_euclid(W)
}

#[test]
fn requests_errors_and_durations_are_counted_per_instance_and_window() {
    let inv = inventory(&["cart-0", "cart-1"]);
    let mut health = InstanceHealth::new(W);
    let b = batch(&[
        spans("cart-0", kind::SERVER, 10, 5, 200, 1_000),
        spans("cart-1", kind::SERVER, 10, 0, 20, 1_000),
        // Calls out (CLIENT) are not requests of the instance.
        spans("cart-1", kind::CLIENT, 7, 7, 900, 1_000),
        spans("cart-1", kind::CONSUMER, 2, 0, 20, 1_000 + W as u64),
    ]);
    health.observe_spans(&b, &inv, 0);
    let first = start_ms() + W;
    assert!(health.close(first - 1).is_empty(), "not yet ended");
    let closed = health.close(first);
    assert_eq!(closed.len(), 1);
    let rows: Vec<_> = closed[0]
        .rows
        .iter()
        .map(|r| {
            (
                r.instance.as_str(),
                r.requests,
                r.errors,
                r.duration_ms.round(),
            )
        })
        .collect();
    assert_eq!(rows, [("cart-0", 10, 5, 2000.0), ("cart-1", 10, 0, 200.0)]);
    let next = health.close(first + W);
    assert_eq!(
        next[0].rows[0].requests, 2,
        "the consumer spans, a window later"
    );
    // A record for a window already closed is dropped.
    health.observe_spans(&b, &inv, first + W);
    assert!(health.close(first + 2 * W).is_empty());
}

#[test]
fn a_service_with_one_instance_is_not_tracked() {
    let inv = inventory(&["cart-0"]);
    let mut health = InstanceHealth::new(W);
    health.observe_spans(
        &batch(&[spans("cart-0", kind::SERVER, 5, 0, 10, 0)]),
        &inv,
        0,
    );
    assert!(health.close(i64::MAX / 2).is_empty());
}

#[test]
fn gauges_are_averaged_per_instance_and_monotonic_counters_ignored() {
    let inv = inventory(&["cart-0", "cart-1"]);
    let mut health = InstanceHealth::new(W);
    health.observe_metrics(
        &metrics("cart-0", &[(100.0, 1_000), (300.0, 2_000)], 5.0),
        &inv,
        0,
    );
    health.observe_metrics(&metrics("cart-1", &[(900.0, 1_000)], 5.0), &inv, 0);
    let closed = health.close(start_ms() + W);
    let gauges: Vec<_> = closed[0]
        .rows
        .iter()
        .map(|r| (r.instance.as_str(), r.gauges.clone()))
        .collect();
    assert_eq!(
        gauges,
        [
            ("cart-0", vec![("process.memory.usage".to_string(), 200.0)]),
            ("cart-1", vec![("process.memory.usage".to_string(), 900.0)]),
        ]
    );
}

#[test]
fn rows_past_the_bound_are_dropped_and_counted() {
    let names: Vec<String> = (0..MAX_ROWS + 5).map(|i| format!("pod-{i}")).collect();
    let refs: Vec<&str> = names.iter().take(3).map(String::as_str).collect();
    let inv = inventory(&refs);
    let mut health = InstanceHealth::new(W);
    // One live instance set, but records from many windows of the known pods.
    for w in 0..(MAX_ROWS / 3 + 2) as u64 {
        let all: Vec<ResourceSpans> = refs
            .iter()
            .map(|i| spans(i, kind::SERVER, 1, 0, 1, w * W as u64))
            .collect();
        health.observe_spans(&batch(&all), &inv, 0);
    }
    assert_eq!(health.rows, MAX_ROWS);
    assert!(health.dropped() > 0);
    let closed = health.close(i64::MAX / 2);
    assert_eq!(closed.iter().map(|w| w.rows.len()).sum::<usize>(), MAX_ROWS);
    assert_eq!(health.rows, 0);
}
