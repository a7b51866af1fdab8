//! Spans -> Arrow.
//!
//! Schema (after the resource columns):
//!
//! | column | type | from |
//! |---|---|---|
//! | trace_id | FixedSizeBinary(16) | `trace_id` |
//! | span_id | FixedSizeBinary(8) | `span_id` |
//! | parent_span_id | FixedSizeBinary(8), null for roots | `parent_span_id` |
//! | name | Utf8 | `name` |
//! | kind | Int32 | `kind` (0 unspecified, 1 internal, 2 server, 3 client, 4 producer, 5 consumer) |
//! | start_time_unix_nano, end_time_unix_nano | UInt64 | span times |
//! | status_code | Int32 | `status.code` (0 unset, 1 ok, 2 error) |
//! | http_status_code | Int32? | `http.response.status_code`, else `http.status_code` |
//! | http_route | Utf8? | `http.route` |
//! | db_system | Utf8? | `db.system.name`, else `db.system` |
//! | db_namespace | Utf8? | `db.namespace`, else `db.name` |
//! | server_address | Utf8? | `server.address`, else `net.peer.name` |
//! | peer_service | Utf8? | `service.peer.name`, else `peer.service` |
//! | messaging_destination | Utf8? | `messaging.destination.name` |

use std::sync::{Arc, LazyLock};

use arrow::array::{ArrayRef, FixedSizeBinaryBuilder, Int32Builder, StringBuilder, UInt64Builder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;

use super::resource::{ResourceColumns, ResourceIdentity, find_i64, find_str, resource_fields};
use super::{Decoded, Rejections, Signal};

/// OTLP span kinds as stored in the `kind` column.
pub mod kind {
    /// No kind given.
    pub const UNSPECIFIED: i32 = 0;
    /// In-process work.
    pub const INTERNAL: i32 = 1;
    /// Handles a synchronous request.
    pub const SERVER: i32 = 2;
    /// Makes a synchronous request.
    pub const CLIENT: i32 = 3;
    /// Emits an asynchronous message.
    pub const PRODUCER: i32 = 4;
    /// Handles an asynchronous message.
    pub const CONSUMER: i32 = 5;
}

/// `status_code` value of a failed span.
pub const STATUS_ERROR: i32 = 2;

/// The span batch schema.
pub fn schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        let mut fields = resource_fields();
        fields.extend([
            Field::new("trace_id", DataType::FixedSizeBinary(16), false),
            Field::new("span_id", DataType::FixedSizeBinary(8), false),
            Field::new("parent_span_id", DataType::FixedSizeBinary(8), true),
            Field::new("name", DataType::Utf8, false),
            Field::new("kind", DataType::Int32, false),
            Field::new("start_time_unix_nano", DataType::UInt64, false),
            Field::new("end_time_unix_nano", DataType::UInt64, false),
            Field::new("status_code", DataType::Int32, false),
            Field::new("http_status_code", DataType::Int32, true),
            Field::new("http_route", DataType::Utf8, true),
            Field::new("db_system", DataType::Utf8, true),
            Field::new("db_namespace", DataType::Utf8, true),
            Field::new("server_address", DataType::Utf8, true),
            Field::new("peer_service", DataType::Utf8, true),
            Field::new("messaging_destination", DataType::Utf8, true),
        ]);
        Arc::new(Schema::new(fields))
    });
    SCHEMA.clone()
}

fn first_str(attributes: &[KeyValue], keys: &[&str]) -> Option<String> {
    keys.iter()
        .find_map(|key| find_str(attributes, key).filter(|v| !v.is_empty()))
}

/// Converts spans; invalid spans are rejected, the rest kept.
pub fn to_arrow(resource_spans: &[ResourceSpans]) -> Result<Decoded, ArrowError> {
    let capacity: usize = resource_spans
        .iter()
        .flat_map(|r| r.scope_spans.iter())
        .map(|s| s.spans.len())
        .sum();
    let mut resource = ResourceColumns::with_capacity(capacity);
    let mut trace_id = FixedSizeBinaryBuilder::with_capacity(capacity, 16);
    let mut span_id = FixedSizeBinaryBuilder::with_capacity(capacity, 8);
    let mut parent = FixedSizeBinaryBuilder::with_capacity(capacity, 8);
    let mut name = StringBuilder::with_capacity(capacity, capacity * 16);
    let mut kind = Int32Builder::with_capacity(capacity);
    let mut start = UInt64Builder::with_capacity(capacity);
    let mut end = UInt64Builder::with_capacity(capacity);
    let mut status = Int32Builder::with_capacity(capacity);
    let mut http_status = Int32Builder::with_capacity(capacity);
    let mut strings: [StringBuilder; 6] = Default::default();
    let mut rejections = Rejections::default();

    for rs in resource_spans {
        let identity = ResourceIdentity::from_resource(rs.resource.as_ref());
        for scope in &rs.scope_spans {
            for span in &scope.spans {
                if span.trace_id.len() != 16 || span.trace_id.iter().all(|b| *b == 0) {
                    rejections.reject(|| {
                        format!("span {:?}: trace_id must be 16 non-zero bytes", span.name)
                    });
                    continue;
                }
                if span.span_id.len() != 8 || span.span_id.iter().all(|b| *b == 0) {
                    rejections.reject(|| {
                        format!("span {:?}: span_id must be 8 non-zero bytes", span.name)
                    });
                    continue;
                }
                if !span.parent_span_id.is_empty() && span.parent_span_id.len() != 8 {
                    rejections.reject(|| {
                        format!(
                            "span {:?}: parent_span_id must be empty or 8 bytes",
                            span.name
                        )
                    });
                    continue;
                }
                if span.end_time_unix_nano == 0
                    || span.end_time_unix_nano < span.start_time_unix_nano
                {
                    rejections.reject(|| {
                        format!(
                            "span {:?}: end_time_unix_nano must be set and not before start_time_unix_nano",
                            span.name
                        )
                    });
                    continue;
                }
                resource.append(&identity);
                trace_id.append_value(&span.trace_id)?;
                span_id.append_value(&span.span_id)?;
                if span.parent_span_id.is_empty() || span.parent_span_id.iter().all(|b| *b == 0) {
                    parent.append_null();
                } else {
                    parent.append_value(&span.parent_span_id)?;
                }
                name.append_value(&span.name);
                kind.append_value(span.kind.clamp(0, 5));
                start.append_value(span.start_time_unix_nano);
                end.append_value(span.end_time_unix_nano);
                status.append_value(span.status.as_ref().map(|s| s.code).unwrap_or(0));
                let attrs = &span.attributes;
                http_status.append_option(
                    find_i64(attrs, "http.response.status_code")
                        .or_else(|| find_i64(attrs, "http.status_code"))
                        .and_then(|v| i32::try_from(v).ok()),
                );
                let values = [
                    first_str(attrs, &["http.route"]),
                    first_str(attrs, &["db.system.name", "db.system"]),
                    first_str(attrs, &["db.namespace", "db.name"]),
                    first_str(attrs, &["server.address", "net.peer.name"]),
                    first_str(attrs, &["service.peer.name", "peer.service"]),
                    first_str(attrs, &["messaging.destination.name"]),
                ];
                for (builder, value) in strings.iter_mut().zip(values) {
                    builder.append_option(value);
                }
            }
        }
    }

    let mut columns = resource.finish();
    columns.extend([
        Arc::new(trace_id.finish()) as ArrayRef,
        Arc::new(span_id.finish()),
        Arc::new(parent.finish()),
        Arc::new(name.finish()),
        Arc::new(kind.finish()),
        Arc::new(start.finish()),
        Arc::new(end.finish()),
        Arc::new(status.finish()),
        Arc::new(http_status.finish()),
    ]);
    columns.extend(strings.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
    let batch = RecordBatch::try_new(schema(), columns)?;
    Ok(Decoded {
        signal: Signal::Traces,
        batch,
        rejected: rejections.count,
        rejection: rejections.first,
    })
}
