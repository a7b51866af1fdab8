//! Receivers: OTLP over gRPC and HTTP, and the Kafka consumer.
//!
//! Every receiver decodes into Arrow on its own task, then offers the batch to the
//! bounded pipeline queue: OTLP receivers answer 503 / `UNAVAILABLE` when it is
//! full, the Kafka consumer stops polling until there is room.

pub mod config;
pub mod decode;
pub mod error;
pub mod kafka;
pub mod kafka_log;
pub mod otlp_grpc;
pub mod otlp_http;

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::columnar::{Decoded, Signal};
use crate::flow::Message;
use crate::pipeline::{Ingested, PipelineMessage};
use crate::self_metrics::SelfMetrics;
use decode::Encoding;
use error::IngestError;

/// What OTLP receivers share: the queue, the limits and the self-metrics.
#[derive(Clone)]
pub struct OtlpIntake {
    queue: mpsc::Sender<PipelineMessage>,
    max_request_bytes: usize,
    metrics: Arc<SelfMetrics>,
}

impl OtlpIntake {
    /// An intake feeding `queue`.
    pub fn new(
        queue: mpsc::Sender<PipelineMessage>,
        max_request_bytes: usize,
        metrics: Arc<SelfMetrics>,
    ) -> Self {
        OtlpIntake {
            queue,
            max_request_bytes,
            metrics,
        }
    }

    /// Largest accepted body.
    pub fn max_request_bytes(&self) -> usize {
        self.max_request_bytes
    }

    /// Counts a request refused before decoding (size, media type, framing).
    pub fn refused(&self, transport: &'static str, signal: Signal, error: &IngestError) {
        self.metrics.request(transport, signal, error.outcome());
    }

    /// Reads a request body of at most `limit` bytes; counts a refusal.
    pub async fn read_body(
        &self,
        transport: &'static str,
        signal: Signal,
        body: axum::body::Body,
        limit: usize,
    ) -> Result<Bytes, IngestError> {
        axum::body::to_bytes(body, limit).await.map_err(|error| {
            let too_large = std::error::Error::source(&error)
                .is_some_and(|e| e.is::<http_body_util::LengthLimitError>());
            let error = if too_large {
                IngestError::TooLarge {
                    size: limit + 1,
                    limit,
                }
            } else {
                IngestError::Decode {
                    what: "request body",
                    reason: error.to_string(),
                }
            };
            self.refused(transport, signal, &error);
            error
        })
    }

    /// [`OtlpIntake::accept`], moving large bodies off the reactor threads (decoding
    /// is CPU work).
    pub async fn accept_async(
        &self,
        transport: &'static str,
        signal: Signal,
        body: Bytes,
        encoding: Encoding,
        gzip: bool,
    ) -> Result<Decoded, IngestError> {
        if body.len() <= 256 * 1024 {
            return self.accept(transport, signal, body, encoding, gzip);
        }
        let intake = self.clone();
        tokio::task::spawn_blocking(move || intake.accept(transport, signal, body, encoding, gzip))
            .await
            .unwrap_or_else(|e| Err(IngestError::Internal(e.to_string())))
    }

    /// Decompresses (when `gzip`), decodes and enqueues one export request.
    pub fn accept(
        &self,
        transport: &'static str,
        signal: Signal,
        body: Bytes,
        encoding: Encoding,
        gzip: bool,
    ) -> Result<Decoded, IngestError> {
        let result = self.accept_inner(signal, body, encoding, gzip);
        match &result {
            Ok(decoded) => {
                self.metrics.request(
                    transport,
                    signal,
                    if decoded.rejected > 0 {
                        "partial"
                    } else {
                        "ok"
                    },
                );
                self.metrics
                    .received(transport, signal, decoded.batch.num_rows() as u64);
                self.metrics.rejected(signal, "invalid", decoded.rejected);
            }
            Err(error) => self.metrics.request(transport, signal, error.outcome()),
        }
        result
    }

    fn accept_inner(
        &self,
        signal: Signal,
        body: Bytes,
        encoding: Encoding,
        gzip: bool,
    ) -> Result<Decoded, IngestError> {
        if body.len() > self.max_request_bytes {
            return Err(IngestError::TooLarge {
                size: body.len(),
                limit: self.max_request_bytes,
            });
        }
        // Reserve first: a full queue sheds the request before any decompression or decoding
        // work
        // is spent on it, and before anything is counted.
        let permit = self.queue.try_reserve().map_err(|e| match e {
            mpsc::error::TrySendError::Full(()) => IngestError::QueueFull,
            mpsc::error::TrySendError::Closed(()) => IngestError::ShuttingDown,
        })?;
        let body = if gzip {
            decode::gunzip_bounded(&body, self.max_request_bytes)?
        } else {
            body
        };
        let decoded = decode::decode(signal, &body, encoding)?;
        if decoded.batch.num_rows() > 0 {
            permit.send(Message::Data(Ingested {
                decoded: decoded.clone(),
                origin: None,
            }));
        }
        Ok(decoded)
    }
}
