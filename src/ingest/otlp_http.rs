//! OTLP/HTTP receiver: `POST /v1/traces`, `/v1/metrics`, `/v1/logs` with
//! `application/x-protobuf` or `application/json` bodies, optionally gzip.

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use prost::Message;

use super::OtlpIntake;
use super::decode::{Encoding, RpcStatus, encode_response};
use super::error::IngestError;
use crate::columnar::Signal;

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

/// The OTLP/HTTP routes.
pub fn router(intake: OtlpIntake) -> Router {
    Router::new()
        .route("/v1/traces", post(traces))
        .route("/v1/metrics", post(metrics))
        .route("/v1/logs", post(logs))
        // The handlers enforce the limit themselves, to answer with an OTLP status body.
        .layer(DefaultBodyLimit::disable())
        .with_state(intake)
}

async fn traces(State(intake): State<OtlpIntake>, headers: HeaderMap, body: Body) -> Response {
    export(intake, Signal::Traces, headers, body).await
}

async fn metrics(State(intake): State<OtlpIntake>, headers: HeaderMap, body: Body) -> Response {
    export(intake, Signal::Metrics, headers, body).await
}

async fn logs(State(intake): State<OtlpIntake>, headers: HeaderMap, body: Body) -> Response {
    export(intake, Signal::Logs, headers, body).await
}

fn request_encoding(headers: &HeaderMap) -> Result<Encoding, IngestError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match content_type.as_str() {
        PROTOBUF | "application/protobuf" => Ok(Encoding::Protobuf),
        JSON => Ok(Encoding::Json),
        other => Err(IngestError::Unsupported(format!(
            "content type {other:?}: use {PROTOBUF} or {JSON}"
        ))),
    }
}

fn is_gzip(headers: &HeaderMap) -> Result<bool, IngestError> {
    match headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
    {
        None => Ok(false),
        Some(v) if v.eq_ignore_ascii_case("identity") || v.is_empty() => Ok(false),
        Some(v) if v.eq_ignore_ascii_case("gzip") => Ok(true),
        Some(other) => Err(IngestError::Unsupported(format!(
            "content encoding {other:?}: use gzip or identity"
        ))),
    }
}

async fn export(intake: OtlpIntake, signal: Signal, headers: HeaderMap, body: Body) -> Response {
    let encoding = match request_encoding(&headers) {
        Ok(encoding) => encoding,
        Err(error) => {
            intake.refused("http", signal, &error);
            return error_response(&error, Encoding::Protobuf);
        }
    };
    let limit = intake.max_request_bytes();
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(size) = declared.filter(|size| *size > limit) {
        let error = IngestError::TooLarge { size, limit };
        intake.refused("http", signal, &error);
        return error_response(&error, encoding);
    }
    let body = match intake.read_body("http", signal, body, limit).await {
        Ok(body) => body,
        Err(error) => return error_response(&error, encoding),
    };
    let gzip = match is_gzip(&headers) {
        Ok(gzip) => gzip,
        Err(error) => {
            intake.refused("http", signal, &error);
            return error_response(&error, encoding);
        }
    };
    let result = intake
        .accept_async("http", signal, body, encoding, gzip)
        .await;
    match result {
        Ok(decoded) => {
            let content_type = match encoding {
                Encoding::Protobuf => PROTOBUF,
                Encoding::Json => JSON,
            };
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
                encode_response(&decoded, encoding),
            )
                .into_response()
        }
        Err(error) => error_response(&error, encoding),
    }
}

/// The OTLP/HTTP error response: status code, `google.rpc.Status` body, and
/// `Retry-After` when retrying helps.
pub fn error_response(error: &IngestError, encoding: Encoding) -> Response {
    let status = RpcStatus {
        code: error.grpc_code(),
        message: error.to_string(),
    };
    let (content_type, body) = match encoding {
        Encoding::Protobuf => (PROTOBUF, status.encode_to_vec()),
        Encoding::Json => (JSON, serde_json::to_vec(&status).unwrap_or_default()),
    };
    let mut response = (
        error.http_status(),
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body,
    )
        .into_response();
    if error.is_retryable() {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}
