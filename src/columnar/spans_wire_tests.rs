//! Tests of the span fast path (`spans_wire.rs`): it must decode what prost
//! decodes, into the same batch.

use super::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, any_value::Value,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span};
use proptest::prelude::*;

// "rpc.system" and "db.namf" have column names' lengths but are not columns.
const KEYS: [&str; 19] = [
    "service.name",
    "service.namespace",
    "deployment.environment",
    "deployment.environment.name",
    "k8s.pod.name",
    "http.route",
    "http.response.status_code",
    "http.status_code",
    "db.system",
    "db.system.name",
    "db.name",
    "server.address",
    "net.peer.name",
    "peer.service",
    "messaging.destination.name",
    "service.peer.name",
    "rpc.system",
    "db.namf",
    "other",
];

fn value() -> impl Strategy<Value = Option<AnyValue>> {
    let simple = prop_oneof![
        "[a-z0-9 ]{0,6}".prop_map(Value::StringValue),
        Just(Value::StringValue(" 503 ".into())),
        any::<i64>().prop_map(Value::IntValue),
        (100i64..600).prop_map(Value::IntValue),
        any::<bool>().prop_map(Value::BoolValue),
        prop_oneof![Just(f64::NAN), Just(404.7), Just(-0.0), Just(1e300)]
            .prop_map(Value::DoubleValue),
        proptest::collection::vec(any::<u8>(), 0..4).prop_map(Value::BytesValue),
    ];
    let value = prop_oneof![
        4 => simple.clone(),
        1 => proptest::collection::vec(simple, 0..3).prop_map(|values| {
            Value::ArrayValue(ArrayValue {
                values: values.into_iter().map(|v| AnyValue { value: Some(v) }).collect(),
            })
        }),
    ];
    proptest::option::weighted(0.9, value.prop_map(|v| AnyValue { value: Some(v) }))
}

fn attributes() -> impl Strategy<Value = Vec<KeyValue>> {
    proptest::collection::vec(
        (proptest::sample::select(&KEYS[..]), value()).prop_map(|(key, value)| KeyValue {
            key: key.to_string(),
            value,
            ..Default::default()
        }),
        0..6,
    )
}

fn id(len: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => proptest::collection::vec(any::<u8>(), len),
        1 => Just(vec![0u8; len]),
        1 => proptest::collection::vec(any::<u8>(), 0..20),
    ]
}

fn span() -> impl Strategy<Value = Span> {
    (
        (id(16), id(8), prop_oneof![Just(vec![]), id(8)]),
        ("[A-Za-z /]{0,8}", -1i32..7),
        (0u64..3_000, 0u64..3_000),
        attributes(),
        proptest::option::of((0i32..4, "[a-z]{0,3}")),
        any::<bool>(),
    )
        .prop_map(
            |(
                (trace_id, span_id, parent_span_id),
                (name, kind),
                (start, end),
                attributes,
                status,
                event,
            )| Span {
                trace_id,
                span_id,
                parent_span_id,
                name,
                kind,
                start_time_unix_nano: start,
                end_time_unix_nano: end,
                attributes,
                status: status.map(|(code, message)| Status { code, message }),
                events: if event {
                    vec![span::Event {
                        name: "exception".into(),
                        time_unix_nano: 5,
                        ..Default::default()
                    }]
                } else {
                    vec![]
                },
                trace_state: "k=v".into(),
                flags: 1,
                ..Default::default()
            },
        )
}

fn request() -> impl Strategy<Value = (Vec<ResourceSpans>, bool)> {
    (
        proptest::collection::vec(
            (
                proptest::option::of(attributes()),
                proptest::collection::vec(proptest::collection::vec(span(), 0..4), 0..3),
            ),
            0..3,
        ),
        any::<bool>(),
    )
        .prop_map(|(resources, resource_last)| {
            let resource_spans = resources
                .into_iter()
                .map(|(attributes, scopes)| ResourceSpans {
                    resource: attributes.map(|attributes| Resource {
                        attributes,
                        ..Default::default()
                    }),
                    scope_spans: scopes
                        .into_iter()
                        .map(|spans| ScopeSpans {
                            scope: Some(InstrumentationScope {
                                name: "s".into(),
                                ..Default::default()
                            }),
                            spans,
                            schema_url: "u".into(),
                        })
                        .collect(),
                    schema_url: String::new(),
                })
                .collect();
            (resource_spans, resource_last)
        })
}

/// The request's encoding; with `resource_last`, each resource follows its
/// spans on the wire (legal protobuf that prost never writes).
fn encode(resource_spans: &[ResourceSpans], resource_last: bool) -> Vec<u8> {
    if !resource_last {
        return ExportTraceServiceRequest {
            resource_spans: resource_spans.to_vec(),
        }
        .encode_to_vec();
    }
    let mut out = Vec::new();
    for rs in resource_spans {
        let mut inner = ResourceSpans {
            resource: None,
            ..rs.clone()
        }
        .encode_to_vec();
        inner.extend(
            ResourceSpans {
                resource: rs.resource.clone(),
                ..Default::default()
            }
            .encode_to_vec(),
        );
        prost::encoding::encode_key(1, prost::encoding::WireType::LengthDelimited, &mut out);
        prost::encoding::encode_varint(inner.len() as u64, &mut out);
        out.extend(inner);
    }
    out
}

proptest! {
    #[test]
    fn wire_path_equals_the_prost_path((resource_spans, resource_last) in request()) {
        let body = encode(&resource_spans, resource_last);
        let expected = super::super::spans::to_arrow(
            &ExportTraceServiceRequest::decode(body.as_slice()).expect("prost decodes").resource_spans,
        ).expect("convert");
        let got = decode(&body).expect("fast path handles it").expect("convert");
        prop_assert_eq!(&got.batch, &expected.batch);
        prop_assert_eq!(got.rejected, expected.rejected);
        prop_assert_eq!(got.rejection, expected.rejection);
    }

    #[test]
    fn wire_path_gives_up_or_agrees_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(result) = decode(&bytes) {
            // Where prost accepts too, both agree. (The fast path may accept
            // more: it does not read events, links or the scope.)
            if let Ok(request) = ExportTraceServiceRequest::decode(bytes.as_slice()) {
                let expected = super::super::spans::to_arrow(&request.resource_spans).expect("convert");
                let got = result.expect("convert");
                prop_assert_eq!(got.batch, expected.batch);
            }
        }
    }
}
