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
    match number {
        1..=4 => "TRACE".to_string(),
        5..=8 => "DEBUG".to_string(),
        9..=12 => "INFO".to_string(),
        13..=16 => "WARN".to_string(),
        17..=20 => "ERROR".to_string(),
        21..=24 => "FATAL".to_string(),
        _ if !text.trim().is_empty() => match text.trim().to_ascii_uppercase().as_str() {
            "WARNING" => "WARN".to_string(),
            "CRITICAL" | "EMERGENCY" | "ALERT" | "PANIC" => "FATAL".to_string(),
            "ERR" => "ERROR".to_string(),
            other => other.chars().take(32).collect(),
        },
        _ => "UNSPECIFIED".to_string(),
    }
}

/// Converts log records; `now_unix_nano` stamps records that carry no time at all.
pub fn to_arrow(resource_logs: &[ResourceLogs], now_unix_nano: u64) -> Result<Decoded, ArrowError> {
    let mut resource = ResourceColumns::with_capacity(64);
    let mut time = UInt64Builder::new();
    let mut severity_number = Int32Builder::new();
    let mut severity = StringBuilder::new();
    let mut body = StringBuilder::new();
    let mut trace_id = FixedSizeBinaryBuilder::new(16);
    let mut span_id = FixedSizeBinaryBuilder::new(8);
    let mut event_name = StringBuilder::new();
    let mut rejections = Rejections::default();

    for rl in resource_logs {
        let identity = ResourceIdentity::from_resource(rl.resource.as_ref());
        for scope in &rl.scope_logs {
            for record in &scope.log_records {
                let trace_ok = record.trace_id.is_empty() || record.trace_id.len() == 16;
                let span_ok = record.span_id.is_empty() || record.span_id.len() == 8;
                if !trace_ok || !span_ok {
                    rejections.reject(|| {
                        "log record: trace_id must be 16 bytes and span_id 8 bytes when set"
                            .to_string()
                    });
                    continue;
                }
                let t = if record.time_unix_nano != 0 {
                    record.time_unix_nano
                } else if record.observed_time_unix_nano != 0 {
                    record.observed_time_unix_nano
                } else {
                    now_unix_nano
                };
                resource.append(&identity);
                time.append_value(t);
                severity_number.append_value(record.severity_number);
                severity.append_value(severity_bucket(
                    record.severity_number,
                    &record.severity_text,
                ));
                body.append_value(
                    record
                        .body
                        .as_ref()
                        .and_then(any_value_to_string)
                        .unwrap_or_default(),
                );
                if record.trace_id.len() == 16 {
                    trace_id.append_value(&record.trace_id)?;
                } else {
                    trace_id.append_null();
                }
                if record.span_id.len() == 8 {
                    span_id.append_value(&record.span_id)?;
                } else {
                    span_id.append_null();
                }
                event_name.append_value(&record.event_name);
            }
        }
    }
    let mut columns = resource.finish();
    columns.extend([
        Arc::new(time.finish()) as ArrayRef,
        Arc::new(severity_number.finish()),
        Arc::new(severity.finish()),
        Arc::new(body.finish()),
        Arc::new(trace_id.finish()),
        Arc::new(span_id.finish()),
        Arc::new(event_name.finish()),
    ]);
    let batch = RecordBatch::try_new(schema(), columns)?;
    Ok(Decoded {
        signal: Signal::Logs,
        batch,
        rejected: rejections.count,
        rejection: rejections.first,
    })
}
