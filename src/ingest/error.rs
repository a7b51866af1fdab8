//! Ingestion errors, and the one place they become HTTP statuses and gRPC codes.

use axum::http::StatusCode;

/// Why a request (or a Kafka record) was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The body is larger than `otlp.max_request_bytes` (before or after decompression).
    #[error("request of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Bytes seen (at least).
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The body is not a valid OTLP message in its declared encoding. The client's fault.
    #[error("cannot decode {what}: {reason}")]
    Decode {
        /// What was being decoded.
        what: &'static str,
        /// Why it failed.
        reason: String,
    },
    /// Unsupported content type or encoding. The client's fault.
    #[error("unsupported {0}")]
    Unsupported(String),
    /// The pipeline queue is full; retry later.
    #[error("pipeline queue is full, retry later")]
    QueueFull,
    /// The engine is shutting down; retry against another instance or later.
    #[error("engine is shutting down")]
    ShuttingDown,
    /// A bug or resource problem on our side.
    #[error("internal error: {0}")]
    Internal(String),
}

/// gRPC status codes used by the receivers.
pub mod grpc_code {
    /// Success.
    pub const OK: i32 = 0;
    /// The client sent something invalid.
    pub const INVALID_ARGUMENT: i32 = 3;
    /// A limit was exceeded.
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    /// The method does not exist.
    pub const UNIMPLEMENTED: i32 = 12;
    /// Server-side failure.
    pub const INTERNAL: i32 = 13;
    /// Retryable: try again later.
    pub const UNAVAILABLE: i32 = 14;
}

impl IngestError {
    /// Whether retrying the same request later can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, IngestError::QueueFull | IngestError::ShuttingDown)
    }

    /// The HTTP status of this error.
    pub fn http_status(&self) -> StatusCode {
        match self {
            IngestError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            IngestError::Decode { .. } => StatusCode::BAD_REQUEST,
            IngestError::Unsupported(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IngestError::QueueFull | IngestError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            IngestError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The gRPC status code of this error.
    pub fn grpc_code(&self) -> i32 {
        match self {
            IngestError::TooLarge { .. } => grpc_code::RESOURCE_EXHAUSTED,
            IngestError::Decode { .. } | IngestError::Unsupported(_) => grpc_code::INVALID_ARGUMENT,
            IngestError::QueueFull | IngestError::ShuttingDown => grpc_code::UNAVAILABLE,
            IngestError::Internal(_) => grpc_code::INTERNAL,
        }
    }

    /// The label used in self-metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            IngestError::TooLarge { .. } => "too_large",
            IngestError::Decode { .. } => "bad_request",
            IngestError::Unsupported(_) => "unsupported",
            IngestError::QueueFull => "queue_full",
            IngestError::ShuttingDown => "shutting_down",
            IngestError::Internal(_) => "internal",
        }
    }
}
