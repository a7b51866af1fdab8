//! Log records -> Arrow.
//!
//! Schema (after the resource columns):
//!
//! | column | type | meaning |
//! |---|---|---|
//! | time_unix_nano | UInt64 | `time_unix_nano`, else `observed_time_unix_nano`, else receive time |
//! | severity_number | Int32 | OTLP severity number (0 unspecified) |
//! | severity | Utf8 | `TRACE`, `DEBUG`, `INFO`, `WARN`, `ERROR`, `FATAL` from the number, else the upper-cased text, else `UNSPECIFIED` |
//! | body | Utf8 | the body rendered as text |
//! | trace_id | FixedSizeBinary(16)? | correlation |
//! | span_id | FixedSizeBinary(8)? | correlation |
//! | event_name | Utf8 | `event_name` |

use std::borrow::Cow;
use std::sync::{Arc, LazyLock};

use arrow::array::{ArrayRef, FixedSizeBinaryBuilder, Int32Builder, StringBuilder, UInt64Builder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use opentelemetry_proto::tonic::logs::v1::ResourceLogs;

use super::resource::{ResourceColumns, ResourceIdentity, any_value_to_string, resource_fields};
use super::{Decoded, Rejections, Signal};

/// The log record batch schema.
pub fn schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        let mut fields = resource_fields();
        fields.extend([
            Field::new("time_unix_nano", DataType::UInt64, false),
            Field::new("severity_number", DataType::Int32, false),
            Field::new("severity", DataType::Utf8, false),
            Field::new("body", DataType::Utf8, false),
            Field::new("trace_id", DataType::FixedSizeBinary(16), true),
            Field::new("span_id", DataType::FixedSizeBinary(8), true),
            Field::new("event_name", DataType::Utf8, false),
        ]);
        Arc::new(Schema::new(fields))
    });
    SCHEMA.clone()
}

/// The severity bucket of a record.
pub fn severity_bucket(number: i32, text: &str) -> String {
    severity(number, text).into_owned()
}

fn severity(number: i32, text: &str) -> Cow<'static, str> {
    Cow::Borrowed(match number {
        1..=4 => "TRACE",
        5..=8 => "DEBUG",
        9..=12 => "INFO",
        13..=16 => "WARN",
        17..=20 => "ERROR",
        21..=24 => "FATAL",
        _ if !text.trim().is_empty() => match text.trim().to_ascii_uppercase().as_str() {
            "WARNING" => "WARN",
            "CRITICAL" | "EMERGENCY" | "ALERT" | "PANIC" => "FATAL",
            "ERR" => "ERROR",
            other => return Cow::Owned(other.chars().take(32).collect()),
        },
        _ => "UNSPECIFIED",
    })
}

/// One log record as the batch needs it, from prost messages or the wire.
pub(crate) struct LogRow<'a> {
    pub(crate) time_unix_nano: u64,
    pub(crate) observed_time_unix_nano: u64,
    pub(crate) severity_number: i32,
    pub(crate) severity_text: &'a str,
    /// The body rendered as text (empty when absent).
    pub(crate) body: Cow<'a, str>,
    pub(crate) trace_id: &'a [u8],
    pub(crate) span_id: &'a [u8],
    pub(crate) event_name: &'a str,
}

/// Builds the log batch row by row.
pub(crate) struct LogBatchBuilder {
    resource: ResourceColumns,
    time: UInt64Builder,
    severity_number: Int32Builder,
    severity: StringBuilder,
    body: StringBuilder,
    trace_id: FixedSizeBinaryBuilder,
    span_id: FixedSizeBinaryBuilder,
    event_name: StringBuilder,
    rejections: Rejections,
    now_unix_nano: u64,
}

impl LogBatchBuilder {
    /// Empty builders sized for `capacity` records; `now_unix_nano` stamps records
    /// that carry no time at all.
    pub(crate) fn new(capacity: usize, now_unix_nano: u64) -> Self {
        LogBatchBuilder {
            resource: ResourceColumns::new(),
            time: UInt64Builder::with_capacity(capacity),
            severity_number: Int32Builder::with_capacity(capacity),
            severity: StringBuilder::with_capacity(capacity, capacity * 5),
            body: StringBuilder::with_capacity(capacity, capacity * 64),
            trace_id: FixedSizeBinaryBuilder::with_capacity(capacity, 16),
            span_id: FixedSizeBinaryBuilder::with_capacity(capacity, 8),
            event_name: StringBuilder::new(),
            rejections: Rejections::default(),
            now_unix_nano,
        }
    }

    /// Appends one record of the resource `identity`, or counts it as rejected.
    pub(crate) fn append(
        &mut self,
        identity: &ResourceIdentity,
        record: LogRow<'_>,
    ) -> Result<(), ArrowError> {
        let trace_ok = record.trace_id.is_empty() || record.trace_id.len() == 16;
        let span_ok = record.span_id.is_empty() || record.span_id.len() == 8;
        if !trace_ok || !span_ok {
            self.rejections.reject(|| {
                "log record: trace_id must be 16 bytes and span_id 8 bytes when set".to_string()
            });
            return Ok(());
        }
        let t = if record.time_unix_nano != 0 {
            record.time_unix_nano
        } else if record.observed_time_unix_nano != 0 {
            record.observed_time_unix_nano
        } else {
            self.now_unix_nano
        };
        self.resource.append(identity);
        self.time.append_value(t);
        self.severity_number.append_value(record.severity_number);
        self.severity
            .append_value(severity(record.severity_number, record.severity_text));
        self.body.append_value(record.body);
        if record.trace_id.len() == 16 {
            self.trace_id.append_value(record.trace_id)?;
        } else {
            self.trace_id.append_null();
        }
        if record.span_id.len() == 8 {
            self.span_id.append_value(record.span_id)?;
        } else {
            self.span_id.append_null();
        }
        self.event_name.append_value(record.event_name);
        Ok(())
    }

    /// The batch.
    pub(crate) fn finish(mut self) -> Result<Decoded, ArrowError> {
        let resource_runs = self.resource.runs();
        let mut columns = self.resource.finish()?;
        columns.extend([
            Arc::new(self.time.finish()) as ArrayRef,
            Arc::new(self.severity_number.finish()),
            Arc::new(self.severity.finish()),
            Arc::new(self.body.finish()),
            Arc::new(self.trace_id.finish()),
            Arc::new(self.span_id.finish()),
            Arc::new(self.event_name.finish()),
        ]);
        let batch = RecordBatch::try_new(schema(), columns)?;
        Ok(Decoded {
            signal: Signal::Logs,
            batch,
            resource_runs,
            rejected: self.rejections.count,
            rejection: self.rejections.first,
        })
    }
}

/// Converts log records; `now_unix_nano` stamps records that carry no time at all.
pub fn to_arrow(resource_logs: &[ResourceLogs], now_unix_nano: u64) -> Result<Decoded, ArrowError> {
    let mut builder = LogBatchBuilder::new(64, now_unix_nano);
    for rl in resource_logs {
        let identity = ResourceIdentity::from_resource(rl.resource.as_ref());
        for scope in &rl.scope_logs {
            for record in &scope.log_records {
                builder.append(
                    &identity,
                    LogRow {
                        time_unix_nano: record.time_unix_nano,
                        observed_time_unix_nano: record.observed_time_unix_nano,
                        severity_number: record.severity_number,
                        severity_text: &record.severity_text,
                        body: Cow::Owned(
                            record
                                .body
                                .as_ref()
                                .and_then(any_value_to_string)
                                .unwrap_or_default(),
                        ),
                        trace_id: &record.trace_id,
                        span_id: &record.span_id,
                        event_name: &record.event_name,
                    },
                )?;
            }
        }
    }
    builder.finish()
}
