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

/// The span attributes that become columns: `http_status_code`, then the six
/// string columns, each a list of attribute names in order of preference.
pub(crate) const STRING_ATTRIBUTES: [&[&str]; 6] = [
    &["http.route"],
    &["db.system.name", "db.system"],
    &["db.namespace", "db.name"],
    &["server.address", "net.peer.name"],
    &["service.peer.name", "peer.service"],
    &["messaging.destination.name"],
];
/// Attribute names of `http_status_code`, in order of preference.
pub(crate) const HTTP_STATUS_ATTRIBUTES: [&str; 2] =
    ["http.response.status_code", "http.status_code"];

/// One span as the batch needs it, borrowed from whichever decoder read it.
pub(crate) struct SpanRow<'a> {
    pub(crate) trace_id: &'a [u8],
    pub(crate) span_id: &'a [u8],
    pub(crate) parent_span_id: &'a [u8],
    pub(crate) name: &'a str,
    pub(crate) kind: i32,
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) status_code: i32,
    pub(crate) http_status: Option<i64>,
    pub(crate) strings: [Option<std::borrow::Cow<'a, str>>; 6],
}

/// Accumulates span rows into the batch; rejects invalid spans.
pub(crate) struct SpanBatchBuilder {
    resource: ResourceColumns,
    trace_id: FixedSizeBinaryBuilder,
    span_id: FixedSizeBinaryBuilder,
    parent: FixedSizeBinaryBuilder,
    name: StringBuilder,
    kind: Int32Builder,
    start: UInt64Builder,
    end: UInt64Builder,
    status: Int32Builder,
    http_status: Int32Builder,
    strings: [StringBuilder; 6],
    rejections: Rejections,
}

impl SpanBatchBuilder {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        SpanBatchBuilder {
            resource: ResourceColumns::new(),
            trace_id: FixedSizeBinaryBuilder::with_capacity(capacity, 16),
            span_id: FixedSizeBinaryBuilder::with_capacity(capacity, 8),
            parent: FixedSizeBinaryBuilder::with_capacity(capacity, 8),
            name: StringBuilder::with_capacity(capacity, capacity * 16),
            kind: Int32Builder::with_capacity(capacity),
            start: UInt64Builder::with_capacity(capacity),
            end: UInt64Builder::with_capacity(capacity),
            status: Int32Builder::with_capacity(capacity),
            http_status: Int32Builder::with_capacity(capacity),
            strings: Default::default(),
            rejections: Rejections::default(),
        }
    }

    /// A span whose ids or times are unusable is rejected, with the reason.
    fn check(row: &SpanRow<'_>) -> Result<(), String> {
        let name = row.name;
        if row.trace_id.len() != 16 || row.trace_id.iter().all(|b| *b == 0) {
            return Err(format!("span {name:?}: trace_id must be 16 non-zero bytes"));
        }
        if row.span_id.len() != 8 || row.span_id.iter().all(|b| *b == 0) {
            return Err(format!("span {name:?}: span_id must be 8 non-zero bytes"));
        }
        if !row.parent_span_id.is_empty() && row.parent_span_id.len() != 8 {
            return Err(format!(
                "span {name:?}: parent_span_id must be empty or 8 bytes"
            ));
        }
        if row.end == 0 || row.end < row.start {
            return Err(format!(
                "span {name:?}: end_time_unix_nano must be set and not before start_time_unix_nano"
            ));
        }
        Ok(())
    }

    pub(crate) fn append(
        &mut self,
        identity: &ResourceIdentity,
        row: SpanRow<'_>,
    ) -> Result<(), ArrowError> {
        if let Err(why) = Self::check(&row) {
            self.rejections.reject(|| why);
            return Ok(());
        }
        self.resource.append(identity);
        self.trace_id.append_value(row.trace_id)?;
        self.span_id.append_value(row.span_id)?;
        if row.parent_span_id.is_empty() || row.parent_span_id.iter().all(|b| *b == 0) {
            self.parent.append_null();
        } else {
            self.parent.append_value(row.parent_span_id)?;
        }
        self.name.append_value(row.name);
        self.kind.append_value(row.kind.clamp(0, 5));
        self.start.append_value(row.start);
        self.end.append_value(row.end);
        self.status.append_value(row.status_code);
        self.http_status
            .append_option(row.http_status.and_then(|v| i32::try_from(v).ok()));
        for (builder, value) in self.strings.iter_mut().zip(row.strings) {
            builder.append_option(value);
        }
        Ok(())
    }

    pub(crate) fn finish(mut self) -> Result<Decoded, ArrowError> {
        let resource_runs = self.resource.runs();
        let mut columns = self.resource.finish()?;
        columns.extend([
            Arc::new(self.trace_id.finish()) as ArrayRef,
            Arc::new(self.span_id.finish()),
            Arc::new(self.parent.finish()),
            Arc::new(self.name.finish()),
            Arc::new(self.kind.finish()),
            Arc::new(self.start.finish()),
            Arc::new(self.end.finish()),
            Arc::new(self.status.finish()),
            Arc::new(self.http_status.finish()),
        ]);
        columns.extend(
            self.strings
                .iter_mut()
                .map(|b| Arc::new(b.finish()) as ArrayRef),
        );
        let batch = RecordBatch::try_new(schema(), columns)?;
        Ok(Decoded {
            signal: Signal::Traces,
            batch,
            resource_runs,
            rejected: self.rejections.count,
            rejection: self.rejections.first,
        })
    }
}

/// Converts spans; invalid spans are rejected, the rest kept.
pub fn to_arrow(resource_spans: &[ResourceSpans]) -> Result<Decoded, ArrowError> {
    let capacity: usize = resource_spans
        .iter()
        .flat_map(|r| r.scope_spans.iter())
        .map(|s| s.spans.len())
        .sum();
    let mut builder = SpanBatchBuilder::with_capacity(capacity);
    for rs in resource_spans {
        let identity = ResourceIdentity::from_resource(rs.resource.as_ref());
        for scope in &rs.scope_spans {
            for span in &scope.spans {
                let attrs = &span.attributes;
                let row = SpanRow {
                    trace_id: &span.trace_id,
                    span_id: &span.span_id,
                    parent_span_id: &span.parent_span_id,
                    name: &span.name,
                    kind: span.kind,
                    start: span.start_time_unix_nano,
                    end: span.end_time_unix_nano,
                    status_code: span.status.as_ref().map(|s| s.code).unwrap_or(0),
                    http_status: HTTP_STATUS_ATTRIBUTES
                        .iter()
                        .find_map(|key| find_i64(attrs, key)),
                    strings: STRING_ATTRIBUTES.map(|keys| first_str(attrs, keys).map(Into::into)),
                };
                builder.append(&identity, row)?;
            }
        }
    }
    builder.finish()
}
