//! OTLP/gRPC receiver: the three `Export` methods, plus tonic's standard gRPC
//! health (`grpc.health.v1.Health`) and reflection (v1 and v1alpha) services on the
//! same port.
//!
//! The `Export` methods are handled here rather than by tonic's codec path, so that
//! a full pipeline sheds a request before it is decompressed (UNAVAILABLE), a size
//! limit answers RESOURCE_EXHAUSTED before *and* after decompression (tonic's codec
//! answers OUT_OF_RANGE for an oversized message, a code the OTLP specification
//! tells exporters to retry), corrupt gzip and undecodable messages answer
//! INVALID_ARGUMENT (tonic: INTERNAL), a wrong content type is refused, and every
//! refusal is counted in one place. `cargo bench --bench grpc_receivers` measures
//! the two side by side; the README reports the figures.

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::StreamBody;
use hyper::body::Frame;

use super::OtlpIntake;
use super::decode::{Encoding, encode_response};
use super::error::{IngestError, grpc_code};
use crate::columnar::Signal;

/// The OTLP gRPC service names (what health and reflection report).
pub const SERVICES: [&str; 3] = [
    "opentelemetry.proto.collector.trace.v1.TraceService",
    "opentelemetry.proto.collector.metrics.v1.MetricsService",
    "opentelemetry.proto.collector.logs.v1.LogsService",
];

/// gRPC method paths of the OTLP services.
pub const TRACES_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// Metrics export method.
pub const METRICS_PATH: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";
/// Logs export method.
pub const LOGS_PATH: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";

/// The OTLP/gRPC routes with the health and reflection services beside them.
///
/// Health reports SERVING for the whole server (`""`) and for each OTLP service.
pub async fn router(intake: OtlpIntake) -> Result<Router, ReflectionError> {
    let otlp = Router::new()
        .route(TRACES_PATH, post(traces))
        .route(METRICS_PATH, post(metrics))
        .route(LOGS_PATH, post(logs))
        .fallback(unimplemented)
        .with_state(intake);
    let (reporter, health) = tonic_health::server::health_reporter();
    for service in SERVICES {
        reporter
            .set_service_status(service, tonic_health::ServingStatus::Serving)
            .await;
    }
    let reflection = || {
        SERVICES.iter().fold(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(opentelemetry_proto::DESCRIPTORS)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .with_service_name(tonic_health::pb::health_server::SERVICE_NAME)
                .with_service_name("grpc.reflection.v1.ServerReflection")
                .with_service_name("grpc.reflection.v1alpha.ServerReflection"),
            |builder, service| builder.with_service_name(*service),
        )
    };
    Ok(tonic::service::Routes::from(otlp)
        .add_service(health)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .into_axum_router())
}

/// The embedded protobuf descriptors could not be loaded (a build defect).
pub type ReflectionError = tonic_reflection::server::Error;

async fn traces(State(intake): State<OtlpIntake>, headers: HeaderMap, body: Body) -> Response {
    export(intake, Signal::Traces, headers, body).await
}

async fn metrics(State(intake): State<OtlpIntake>, headers: HeaderMap, body: Body) -> Response {
    export(intake, Signal::Metrics, headers, body).await
}

async fn logs(State(intake): State<OtlpIntake>, headers: HeaderMap, body: Body) -> Response {
    export(intake, Signal::Logs, headers, body).await
}

async fn unimplemented() -> Response {
    status_only(grpc_code::UNIMPLEMENTED, "unknown method")
}

/// Splits one gRPC length-prefixed message: (compressed, payload).
fn unframe(body: &Bytes, limit: usize) -> Result<(bool, Bytes), IngestError> {
    if body.len() < 5 {
        return Err(IngestError::Decode {
            what: "grpc frame",
            reason: format!(
                "{} bytes is shorter than the 5-byte message prefix",
                body.len()
            ),
        });
    }
    let compressed = match body[0] {
        0 => false,
        1 => true,
        flag => {
            return Err(IngestError::Decode {
                what: "grpc frame",
                reason: format!("invalid compressed flag {flag}"),
            });
        }
    };
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    if len > limit {
        return Err(IngestError::TooLarge { size: len, limit });
    }
    if body.len() - 5 != len {
        return Err(IngestError::Decode {
            what: "grpc frame",
            reason: format!(
                "prefix declares {len} bytes but {} follow (one message per unary call)",
                body.len() - 5
            ),
        });
    }
    Ok((compressed, body.slice(5..)))
}

/// Whether the request's content type is gRPC with the protobuf codec
/// (`application/grpc`, `application/grpc+proto`, parameters allowed).
fn is_grpc_proto(headers: &HeaderMap) -> Result<(), String> {
    let value = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = value.split(';').next().unwrap_or("").trim();
    if media.eq_ignore_ascii_case("application/grpc")
        || media.eq_ignore_ascii_case("application/grpc+proto")
    {
        Ok(())
    } else {
        Err(format!(
            "unsupported content-type {value:?}: use application/grpc (protobuf)"
        ))
    }
}

async fn export(intake: OtlpIntake, signal: Signal, headers: HeaderMap, body: Body) -> Response {
    if let Err(message) = is_grpc_proto(&headers) {
        return status_only(grpc_code::INVALID_ARGUMENT, &message);
    }
    let limit = intake.max_request_bytes();
    let body = match intake
        .read_body("grpc", signal, body, limit.saturating_add(5))
        .await
    {
        Ok(body) => body,
        Err(error) => return error_status(&error),
    };
    let (compressed, payload) = match unframe(&body, limit) {
        Ok(parts) => parts,
        Err(error) => {
            intake.refused("grpc", signal, &error);
            return error_status(&error);
        }
    };
    let gzip = if compressed {
        match headers.get("grpc-encoding").and_then(|v| v.to_str().ok()) {
            Some("gzip") => true,
            other => {
                return status_only(
                    grpc_code::UNIMPLEMENTED,
                    &format!("unsupported grpc-encoding {other:?}: use gzip or identity"),
                );
            }
        }
    } else {
        false
    };
    let result = intake
        .accept_async("grpc", signal, payload, Encoding::Protobuf, gzip)
        .await;
    match result {
        Ok(decoded) => {
            let message = encode_response(&decoded, Encoding::Protobuf);
            let mut frame = BytesMut::with_capacity(message.len() + 5);
            frame.put_u8(0);
            frame.put_u32(message.len() as u32);
            frame.put_slice(&message);
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            let frames: [Result<Frame<Bytes>, std::convert::Infallible>; 2] = [
                Ok(Frame::data(frame.freeze())),
                Ok(Frame::trailers(trailers)),
            ];
            let body = Body::new(StreamBody::new(futures::stream::iter(frames)));
            (
                StatusCode::OK,
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/grpc"),
                )],
                body,
            )
                .into_response()
        }
        Err(error) => error_status(&error),
    }
}

fn error_status(error: &IngestError) -> Response {
    status_only(error.grpc_code(), &error.to_string())
}

/// A trailers-only gRPC response carrying `code` and `message`.
fn status_only(code: i32, message: &str) -> Response {
    let mut response = (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        )],
    )
        .into_response();
    let headers = response.headers_mut();
    headers.insert("grpc-status", HeaderValue::from(code));
    if let Ok(value) = HeaderValue::from_str(&percent_encode(message)) {
        headers.insert("grpc-message", value);
    }
    response
}

/// Percent-encodes a grpc-message as the gRPC HTTP/2 spec asks.
fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_checked() {
        assert!(matches!(
            unframe(&Bytes::from_static(b"\x00\x00"), 10),
            Err(IngestError::Decode { .. })
        ));
        assert!(matches!(
            unframe(&Bytes::from_static(b"\x00\x00\x00\x00\x20"), 10),
            Err(IngestError::TooLarge { .. })
        ));
        assert!(matches!(
            unframe(&Bytes::from_static(b"\x02\x00\x00\x00\x00"), 10),
            Err(IngestError::Decode { .. })
        ));
        let (compressed, payload) =
            unframe(&Bytes::from_static(b"\x01\x00\x00\x00\x02ab"), 10).expect("ok");
        assert!(compressed);
        assert_eq!(&payload[..], b"ab");
        assert_eq!(percent_encode("a%b\n"), "a%25b%0A");
    }

    #[test]
    fn content_types() {
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(v));
            is_grpc_proto(&h)
        };
        assert!(with("application/grpc").is_ok());
        assert!(with("application/grpc+proto; charset=utf-8").is_ok());
        assert!(with("application/grpc+json").is_err());
        assert!(with("application/json").is_err());
        assert!(is_grpc_proto(&HeaderMap::new()).is_err());
    }
}
