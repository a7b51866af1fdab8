//! Metric data points -> Arrow, one row per data point.
//!
//! Schema (after the resource columns):
//!
//! | column | type | meaning |
//! |---|---|---|
//! | metric_name, metric_unit | Utf8 | instrument name and unit |
//! | metric_type | Utf8 | `gauge`, `sum`, `histogram`, `exponential_histogram`, `summary` |
//! | temporality | Int32 | 0 unspecified, 1 delta, 2 cumulative |
//! | is_monotonic | Boolean | sums only |
//! | attributes | Utf8 | the point's attributes, canonical sorted `k=v,k=v` |
//! | start_time_unix_nano, time_unix_nano | UInt64 | point times |
//! | value | Float64? | gauge and sum value |
//! | count | UInt64? | histogram / summary count |
//! | sum | Float64? | histogram / summary sum |
//! | min, max | Float64? | histogram min and max when recorded |
//! | bucket_bounds | List(Float64)? | upper bounds (exponential buckets converted) |
//! | bucket_counts | List(UInt64)? | one more count than bounds |
//! | quantile_p99 | Float64? | summary: the value at the quantile closest to 0.99 |

use std::sync::{Arc, LazyLock};

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int32Builder, ListBuilder, StringBuilder,
    UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::{
    ExponentialHistogramDataPoint, ResourceMetrics, metric::Data, number_data_point,
};

use super::resource::{ResourceColumns, ResourceIdentity, canonical_attributes, resource_fields};
use super::{Decoded, Rejections, Signal};

/// `temporality` of delta points.
pub const TEMPORALITY_DELTA: i32 = 1;
/// `temporality` of cumulative points.
pub const TEMPORALITY_CUMULATIVE: i32 = 2;
/// Most histogram buckets accepted per point.
pub const MAX_BUCKETS: usize = 4096;
const NO_RECORDED_VALUE: u32 = 1;

/// The metric point batch schema.
pub fn schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        let mut fields = resource_fields();
        fields.extend([
            Field::new("metric_name", DataType::Utf8, false),
            Field::new("metric_unit", DataType::Utf8, false),
            Field::new("metric_type", DataType::Utf8, false),
            Field::new("temporality", DataType::Int32, false),
            Field::new("is_monotonic", DataType::Boolean, false),
            Field::new("attributes", DataType::Utf8, false),
            Field::new("start_time_unix_nano", DataType::UInt64, false),
            Field::new("time_unix_nano", DataType::UInt64, false),
            Field::new("value", DataType::Float64, true),
            Field::new("count", DataType::UInt64, true),
            Field::new("sum", DataType::Float64, true),
            Field::new("min", DataType::Float64, true),
            Field::new("max", DataType::Float64, true),
            Field::new(
                "bucket_bounds",
                DataType::List(Arc::new(Field::new("item", DataType::Float64, true))),
                true,
            ),
            Field::new(
                "bucket_counts",
                DataType::List(Arc::new(Field::new("item", DataType::UInt64, true))),
                true,
            ),
            Field::new("quantile_p99", DataType::Float64, true),
        ]);
        Arc::new(Schema::new(fields))
    });
    SCHEMA.clone()
}

/// One point, normalised.
struct Point<'a> {
    attributes: &'a [KeyValue],
    start: u64,
    time: u64,
    flags: u32,
    value: Option<f64>,
    count: Option<u64>,
    sum: Option<f64>,
    min: Option<f64>,
    max: Option<f64>,
    buckets: Option<(Vec<f64>, Vec<u64>)>,
    p99: Option<f64>,
}

impl<'a> Point<'a> {
    fn new(attributes: &'a [KeyValue], start: u64, time: u64, flags: u32) -> Self {
        Point {
            attributes,
            start,
            time,
            flags,
            value: None,
            count: None,
            sum: None,
            min: None,
            max: None,
            buckets: None,
            p99: None,
        }
    }
}

struct Builders {
    resource: ResourceColumns,
    name: StringBuilder,
    unit: StringBuilder,
    kind: StringBuilder,
    temporality: Int32Builder,
    monotonic: BooleanBuilder,
    attributes: StringBuilder,
    start: UInt64Builder,
    time: UInt64Builder,
    value: Float64Builder,
    count: UInt64Builder,
    sum: Float64Builder,
    min: Float64Builder,
    max: Float64Builder,
    bounds: ListBuilder<Float64Builder>,
    bucket_counts: ListBuilder<UInt64Builder>,
    p99: Float64Builder,
}

/// Converts metric data points; invalid points are rejected, the rest kept.
pub fn to_arrow(resource_metrics: &[ResourceMetrics]) -> Result<Decoded, ArrowError> {
    let mut b = Builders {
        resource: ResourceColumns::new(),
        name: StringBuilder::new(),
        unit: StringBuilder::new(),
        kind: StringBuilder::new(),
        temporality: Int32Builder::new(),
        monotonic: BooleanBuilder::new(),
        attributes: StringBuilder::new(),
        start: UInt64Builder::new(),
        time: UInt64Builder::new(),
        value: Float64Builder::new(),
        count: UInt64Builder::new(),
        sum: Float64Builder::new(),
        min: Float64Builder::new(),
        max: Float64Builder::new(),
        bounds: ListBuilder::new(Float64Builder::new()),
        bucket_counts: ListBuilder::new(UInt64Builder::new()),
        p99: Float64Builder::new(),
    };
    let mut rejections = Rejections::default();

    for rm in resource_metrics {
        let identity = ResourceIdentity::from_resource(rm.resource.as_ref());
        for scope in &rm.scope_metrics {
            for metric in &scope.metrics {
                let Some(data) = metric.data.as_ref() else {
                    rejections.reject(|| format!("metric {:?} has no data", metric.name));
                    continue;
                };
                let (kind, temporality, monotonic, points): (&str, i32, bool, Vec<Point<'_>>) =
                    match data {
                        Data::Gauge(g) => ("gauge", 0, false, number_points(&g.data_points)),
                        Data::Sum(s) => (
                            "sum",
                            s.aggregation_temporality,
                            s.is_monotonic,
                            number_points(&s.data_points),
                        ),
                        Data::Histogram(h) => (
                            "histogram",
                            h.aggregation_temporality,
                            false,
                            h.data_points
                                .iter()
                                .map(|p| {
                                    let mut point = Point::new(
                                        &p.attributes,
                                        p.start_time_unix_nano,
                                        p.time_unix_nano,
                                        p.flags,
                                    );
                                    point.count = Some(p.count);
                                    point.sum = p.sum;
                                    point.min = p.min;
                                    point.max = p.max;
                                    if !p.bucket_counts.is_empty() {
                                        point.buckets = Some((
                                            p.explicit_bounds.clone(),
                                            p.bucket_counts.clone(),
                                        ));
                                    }
                                    point
                                })
                                .collect(),
                        ),
                        Data::ExponentialHistogram(h) => (
                            "exponential_histogram",
                            h.aggregation_temporality,
                            false,
                            h.data_points
                                .iter()
                                .map(|p| {
                                    let mut point = Point::new(
                                        &p.attributes,
                                        p.start_time_unix_nano,
                                        p.time_unix_nano,
                                        p.flags,
                                    );
                                    point.count = Some(p.count);
                                    point.sum = p.sum;
                                    point.min = p.min;
                                    point.max = p.max;
                                    point.buckets = exponential_to_explicit(p);
                                    point
                                })
                                .collect(),
                        ),
                        Data::Summary(s) => (
                            "summary",
                            TEMPORALITY_CUMULATIVE,
                            false,
                            s.data_points
                                .iter()
                                .map(|p| {
                                    let mut point = Point::new(
                                        &p.attributes,
                                        p.start_time_unix_nano,
                                        p.time_unix_nano,
                                        p.flags,
                                    );
                                    point.count = Some(p.count);
                                    point.sum = Some(p.sum);
                                    point.p99 = p
                                        .quantile_values
                                        .iter()
                                        .min_by(|a, b| {
                                            (a.quantile - 0.99)
                                                .abs()
                                                .total_cmp(&(b.quantile - 0.99).abs())
                                        })
                                        .map(|q| q.value);
                                    point
                                })
                                .collect(),
                        ),
                    };
                for point in points {
                    if point.flags & NO_RECORDED_VALUE != 0 {
                        continue;
                    }
                    if let Some(why) = invalid(&point, kind) {
                        rejections.reject(|| format!("metric {:?}: {why}", metric.name));
                        continue;
                    }
                    b.resource.append(&identity);
                    b.name.append_value(&metric.name);
                    b.unit.append_value(&metric.unit);
                    b.kind.append_value(kind);
                    b.temporality.append_value(temporality);
                    b.monotonic.append_value(monotonic);
                    b.attributes
                        .append_value(canonical_attributes(point.attributes));
                    b.start.append_value(point.start);
                    b.time.append_value(point.time);
                    b.value.append_option(point.value);
                    b.count.append_option(point.count);
                    b.sum.append_option(point.sum);
                    b.min.append_option(point.min);
                    b.max.append_option(point.max);
                    match point.buckets {
                        Some((bounds, counts)) => {
                            b.bounds.values().append_slice(&bounds);
                            b.bounds.append(true);
                            b.bucket_counts.values().append_slice(&counts);
                            b.bucket_counts.append(true);
                        }
                        None => {
                            b.bounds.append_null();
                            b.bucket_counts.append_null();
                        }
                    }
                    b.p99.append_option(point.p99);
                }
            }
        }
    }

    let resource_runs = b.resource.runs();
    let mut columns = b.resource.finish()?;
    columns.extend([
        Arc::new(b.name.finish()) as ArrayRef,
        Arc::new(b.unit.finish()),
        Arc::new(b.kind.finish()),
        Arc::new(b.temporality.finish()),
        Arc::new(b.monotonic.finish()),
        Arc::new(b.attributes.finish()),
        Arc::new(b.start.finish()),
        Arc::new(b.time.finish()),
        Arc::new(b.value.finish()),
        Arc::new(b.count.finish()),
        Arc::new(b.sum.finish()),
        Arc::new(b.min.finish()),
        Arc::new(b.max.finish()),
        Arc::new(b.bounds.finish()),
        Arc::new(b.bucket_counts.finish()),
        Arc::new(b.p99.finish()),
    ]);
    let batch = RecordBatch::try_new(schema(), columns)?;
    Ok(Decoded {
        signal: Signal::Metrics,
        batch,
        resource_runs,
        rejected: rejections.count,
        rejection: rejections.first,
    })
}

fn number_points(
    points: &[opentelemetry_proto::tonic::metrics::v1::NumberDataPoint],
) -> Vec<Point<'_>> {
    points
        .iter()
        .map(|p| {
            let mut point = Point::new(
                &p.attributes,
                p.start_time_unix_nano,
                p.time_unix_nano,
                p.flags,
            );
            point.value = p.value.as_ref().map(|v| match v {
                number_data_point::Value::AsDouble(d) => *d,
                number_data_point::Value::AsInt(i) => *i as f64,
            });
            point
        })
        .collect()
}

fn invalid(point: &Point<'_>, kind: &str) -> Option<String> {
    if point.time == 0 {
        return Some("data point has no time_unix_nano".to_string());
    }
    if matches!(kind, "gauge" | "sum") {
        match point.value {
            None => return Some("number data point has no value".to_string()),
            Some(v) if !v.is_finite() => return Some("value is not finite".to_string()),
            _ => {}
        }
    }
    if let Some((bounds, counts)) = &point.buckets {
        if counts.len() != bounds.len() + 1 || counts.len() > MAX_BUCKETS {
            return Some(format!(
                "histogram has {} bucket counts for {} bounds (want bounds + 1, at most {MAX_BUCKETS})",
                counts.len(),
                bounds.len()
            ));
        }
        if bounds
            .windows(2)
            .any(|w| w[0].partial_cmp(&w[1]) != Some(std::cmp::Ordering::Less))
        {
            return Some("histogram bounds are not strictly increasing".to_string());
        }
    }
    if point.sum.is_some_and(|s| !s.is_finite()) {
        return Some("sum is not finite".to_string());
    }
    None
}

/// Converts exponential buckets to explicit upper bounds, ascending.
fn exponential_to_explicit(p: &ExponentialHistogramDataPoint) -> Option<(Vec<f64>, Vec<u64>)> {
    let negative = p
        .negative
        .as_ref()
        .map(|b| (b.offset, b.bucket_counts.as_slice()));
    let positive = p
        .positive
        .as_ref()
        .map(|b| (b.offset, b.bucket_counts.as_slice()));
    let total = negative.map_or(0, |n| n.1.len()) + positive.map_or(0, |n| n.1.len()) + 1;
    if total > MAX_BUCKETS || !(-10..=20).contains(&p.scale) {
        return Some((vec![0.0; total.min(MAX_BUCKETS + 1)], vec![0; 0]));
    }
    let base = 2f64.powf(2f64.powi(-p.scale));
    let mut bounds = Vec::with_capacity(total);
    let mut counts = Vec::with_capacity(total);
    if let Some((offset, buckets)) = negative {
        for (k, count) in buckets.iter().enumerate().rev() {
            counts.push(*count);
            bounds.push(-base.powi(offset + k as i32));
        }
    }
    counts.push(p.zero_count);
    if let Some((offset, buckets)) = positive {
        bounds.push(p.zero_threshold.max(0.0));
        for (k, count) in buckets.iter().enumerate() {
            counts.push(*count);
            if k + 1 < buckets.len() {
                bounds.push(base.powi(offset + k as i32 + 1));
            }
        }
    }
    // Degenerate bounds (equal after rounding) would fail validation; merge them away.
    let mut merged_bounds: Vec<f64> = Vec::with_capacity(bounds.len());
    let mut merged_counts: Vec<u64> = Vec::with_capacity(counts.len());
    for (i, count) in counts.iter().enumerate() {
        match bounds.get(i) {
            Some(bound) if merged_bounds.last().is_some_and(|last| last >= bound) => {
                if let Some(c) = merged_counts.last_mut() {
                    *c += count;
                }
            }
            Some(bound) => {
                merged_bounds.push(*bound);
                merged_counts.push(*count);
            }
            None => merged_counts.push(*count),
        }
    }
    Some((merged_bounds, merged_counts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::metrics::v1::exponential_histogram_data_point::Buckets;

    #[test]
    fn exponential_buckets_become_ascending_bounds() {
        let p = ExponentialHistogramDataPoint {
            scale: 0,
            zero_count: 1,
            positive: Some(Buckets {
                offset: 0,
                bucket_counts: vec![2, 3, 4],
            }),
            negative: Some(Buckets {
                offset: 1,
                bucket_counts: vec![5],
            }),
            count: 15,
            ..Default::default()
        };
        let (bounds, counts) = exponential_to_explicit(&p).expect("buckets");
        assert_eq!(bounds, vec![-2.0, 0.0, 2.0, 4.0]);
        assert_eq!(counts, vec![5, 1, 2, 3, 4]);
    }
}
