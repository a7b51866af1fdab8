//! The fast path for log records: OTLP protobuf bytes straight into the log batch,
//! without materialising prost messages, like [`super::spans_wire`] for spans.
//!
//! It reads `ExportLogsServiceRequest` / `LogsData` and produces exactly what
//! [`super::logs::to_arrow`] produces from the prost messages (a property test
//! holds the two equal). Anything it does not handle (malformed input, groups, a
//! known field with an unexpected wire type, a body given twice) makes it give up
//! with [`Unsupported`], and the caller decodes with prost. A body other than a
//! plain string, integer, boolean or double is rendered by decoding just that
//! `AnyValue` with prost. As for spans, record attributes and the instrumentation
//! scope are not columns and are skipped unread.

use std::borrow::Cow;

use arrow::error::ArrowError;
use opentelemetry_proto::tonic::common::v1::AnyValue;
use prost::Message;

use super::Decoded;
use super::logs::{LogBatchBuilder, LogRow};
use super::resource::any_value_to_string;
use super::spans_wire::{
    Attribute, FIXED64, LEN, Reader, Simple, Unsupported, VARINT, any_value, expect, resource_items,
};

/// Decodes a logs request into the log batch, or gives up.
pub fn decode(body: &[u8], now_unix_nano: u64) -> Result<Result<Decoded, ArrowError>, Unsupported> {
    // Size the builders by a cheap estimate: about 150 bytes per record.
    let mut builder = LogBatchBuilder::new((body.len() / 150).clamp(16, 1 << 16), now_unix_nano);
    let mut resource_attributes: Vec<Attribute<'_>> = Vec::new();
    let mut reader = Reader::new(body);
    while reader.more() {
        match reader.key()? {
            (1, wire_type) => {
                expect(wire_type, LEN)?;
                let resource_logs = reader.bytes()?;
                let appended = resource_items(
                    resource_logs,
                    &mut resource_attributes,
                    |record, identity| Ok(builder.append(identity, log_record(record)?)),
                )?;
                if let Err(error) = appended {
                    return Ok(Err(error));
                }
            }
            (_, wire_type) => reader.skip(wire_type)?,
        }
    }
    Ok(builder.finish())
}

fn log_record(bytes: &[u8]) -> Result<LogRow<'_>, Unsupported> {
    let mut row = LogRow {
        time_unix_nano: 0,
        observed_time_unix_nano: 0,
        severity_number: 0,
        severity_text: "",
        body: Cow::Borrowed(""),
        trace_id: &[],
        span_id: &[],
        event_name: "",
    };
    let mut bodies = 0;
    let mut reader = Reader::new(bytes);
    while reader.more() {
        let (field, wire_type) = reader.key()?;
        match field {
            1 | 11 => {
                expect(wire_type, FIXED64)?;
                let value = reader.fixed64()?;
                if field == 1 {
                    row.time_unix_nano = value;
                } else {
                    row.observed_time_unix_nano = value;
                }
            }
            2 => {
                expect(wire_type, VARINT)?;
                row.severity_number = reader.varint()? as i32;
            }
            3 => {
                expect(wire_type, LEN)?;
                row.severity_text = reader.str()?;
            }
            5 => {
                expect(wire_type, LEN)?;
                bodies += 1;
                if bodies > 1 {
                    // prost merges repeated messages: leave that to prost.
                    return Err(Unsupported);
                }
                row.body = body(reader.bytes()?)?;
            }
            9 | 10 => {
                expect(wire_type, LEN)?;
                let value = reader.bytes()?;
                if field == 9 {
                    row.trace_id = value;
                } else {
                    row.span_id = value;
                }
            }
            12 => {
                expect(wire_type, LEN)?;
                row.event_name = reader.str()?;
            }
            // attributes, dropped count, flags and unknown fields.
            _ => reader.skip(wire_type)?,
        }
    }
    Ok(row)
}

/// The body rendered as `any_value_to_string` renders it.
fn body(bytes: &[u8]) -> Result<Cow<'_, str>, Unsupported> {
    Ok(match any_value(bytes)? {
        Some(Simple::Str(s)) => Cow::Borrowed(s),
        Some(Simple::None) => Cow::Borrowed(""),
        Some(Simple::Int(i)) => Cow::Owned(i.to_string()),
        Some(Simple::Bool(b)) => Cow::Owned(b.to_string()),
        Some(Simple::Double(d)) => Cow::Owned(d.to_string()),
        None => Cow::Owned(
            any_value_to_string(&AnyValue::decode(bytes).map_err(|_| Unsupported)?)
                .unwrap_or_default(),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{
        AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList, any_value,
    };
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use proptest::prelude::*;

    const NOW: u64 = 1_750_000_000_000_000_000;

    fn value() -> impl Strategy<Value = Option<AnyValue>> {
        let leaf = prop_oneof![
            "[a-z 0-9]{0,12}".prop_map(any_value::Value::StringValue),
            any::<i64>().prop_map(any_value::Value::IntValue),
            any::<bool>().prop_map(any_value::Value::BoolValue),
            (-1e6f64..1e6).prop_map(any_value::Value::DoubleValue),
            proptest::collection::vec(any::<u8>(), 0..4).prop_map(any_value::Value::BytesValue),
        ];
        let nested = prop_oneof![
            leaf.clone(),
            proptest::collection::vec(leaf.clone(), 0..3).prop_map(|values| {
                any_value::Value::ArrayValue(ArrayValue {
                    values: values
                        .into_iter()
                        .map(|v| AnyValue { value: Some(v) })
                        .collect(),
                })
            }),
            ("[a-z]{1,3}", leaf).prop_map(|(key, v)| {
                any_value::Value::KvlistValue(KeyValueList {
                    values: vec![KeyValue {
                        key,
                        value: Some(AnyValue { value: Some(v) }),
                        ..Default::default()
                    }],
                })
            }),
        ];
        proptest::option::of(proptest::option::of(nested).prop_map(|value| AnyValue { value }))
    }

    fn id(lengths: &'static [usize]) -> impl Strategy<Value = Vec<u8>> {
        proptest::sample::select(lengths).prop_map(|n| vec![7u8; n])
    }

    fn record() -> impl Strategy<Value = LogRecord> {
        (
            (
                prop_oneof![Just(0u64), 1u64..u64::MAX],
                prop_oneof![Just(0u64), 1u64..1000],
            ),
            (
                0i32..30,
                proptest::sample::select(&["", "warning", "Err", "custom", " info "][..]),
            ),
            value(),
            (id(&[0, 16, 5]), id(&[0, 8, 3])),
            proptest::sample::select(&["", "login"][..]),
            any::<bool>(),
        )
            .prop_map(
                |((time, observed), (number, text), body, (trace_id, span_id), event, attrs)| {
                    LogRecord {
                        time_unix_nano: time,
                        observed_time_unix_nano: observed,
                        severity_number: number,
                        severity_text: text.to_string(),
                        body,
                        trace_id,
                        span_id,
                        event_name: event.to_string(),
                        attributes: if attrs {
                            vec![KeyValue {
                                key: "k".into(),
                                value: Some(AnyValue {
                                    value: Some(any_value::Value::IntValue(3)),
                                }),
                                ..Default::default()
                            }]
                        } else {
                            vec![]
                        },
                        flags: 1,
                        ..Default::default()
                    }
                },
            )
    }

    fn request() -> impl Strategy<Value = ExportLogsServiceRequest> {
        proptest::collection::vec(
            (
                proptest::option::of(proptest::sample::select(&["shop", "pay", ""][..])),
                proptest::collection::vec(proptest::collection::vec(record(), 0..4), 0..3),
            ),
            0..3,
        )
        .prop_map(|resources| ExportLogsServiceRequest {
            resource_logs: resources
                .into_iter()
                .map(|(service, scopes)| ResourceLogs {
                    resource: service.map(|name| Resource {
                        attributes: vec![KeyValue {
                            key: "service.name".into(),
                            value: Some(AnyValue {
                                value: Some(any_value::Value::StringValue(name.into())),
                            }),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                    scope_logs: scopes
                        .into_iter()
                        .map(|log_records| ScopeLogs {
                            scope: Some(InstrumentationScope {
                                name: "s".into(),
                                ..Default::default()
                            }),
                            log_records,
                            schema_url: "u".into(),
                        })
                        .collect(),
                    schema_url: String::new(),
                })
                .collect(),
        })
    }

    proptest! {
        #[test]
        fn wire_path_equals_the_prost_path(request in request()) {
            let body = request.encode_to_vec();
            let expected = super::super::logs::to_arrow(&request.resource_logs, NOW).expect("convert");
            let got = decode(&body, NOW).expect("fast path handles it").expect("convert");
            prop_assert_eq!(&got.batch, &expected.batch);
            prop_assert_eq!(got.rejected, expected.rejected);
            prop_assert_eq!(got.rejection, expected.rejection);
        }

        #[test]
        fn wire_path_gives_up_or_agrees_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(result) = decode(&bytes, NOW)
                && let Ok(request) = ExportLogsServiceRequest::decode(bytes.as_slice())
            {
                let expected = super::super::logs::to_arrow(&request.resource_logs, NOW).expect("convert");
                prop_assert_eq!(result.expect("convert").batch, expected.batch);
            }
        }
    }
}
