//! Request bodies -> [`Decoded`] Arrow batches: bounded decompression, protobuf or
//! OTLP JSON decoding, then the columnar conversion.

use std::io::Read;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

use super::error::IngestError;
use crate::columnar::{self, Decoded, Signal};

/// Body encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Binary protobuf.
    Protobuf,
    /// OTLP JSON (hex ids, integer enums, lowerCamelCase names).
    Json,
}

/// Inflates a gzip body, refusing to produce more than `limit` bytes.
pub fn gunzip_bounded(body: &[u8], limit: usize) -> Result<Bytes, IngestError> {
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
    let mut decoder = flate2::read::GzDecoder::new(body).take(limit as u64 + 1);
    decoder
        .read_to_end(&mut out)
        .map_err(|e| IngestError::Decode {
            what: "gzip body",
            reason: e.to_string(),
        })?;
    if out.len() > limit {
        return Err(IngestError::TooLarge {
            size: out.len(),
            limit,
        });
    }
    Ok(Bytes::from(out))
}

fn now_unix_nano() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn decode_message<M: Message + Default + serde::de::DeserializeOwned>(
    body: &[u8],
    encoding: Encoding,
    what: &'static str,
) -> Result<M, IngestError> {
    match encoding {
        Encoding::Protobuf => M::decode(body).map_err(|e| IngestError::Decode {
            what,
            reason: e.to_string(),
        }),
        Encoding::Json => serde_json::from_slice(body).map_err(|e| IngestError::Decode {
            what,
            reason: e.to_string(),
        }),
    }
}

fn internal(e: arrow::error::ArrowError) -> IngestError {
    IngestError::Internal(e.to_string())
}

/// Decodes an OTLP export request (or the identical `TracesData`/`MetricsData`/
/// `LogsData` of the Kafka exporter) of `signal` into Arrow.
pub fn decode(signal: Signal, body: &[u8], encoding: Encoding) -> Result<Decoded, IngestError> {
    match signal {
        Signal::Traces => {
            if encoding == Encoding::Protobuf
                && let Ok(result) = columnar::spans_wire::decode(body)
            {
                return result.map_err(internal);
            }
            let request: ExportTraceServiceRequest = decode_message(body, encoding, "traces")?;
            columnar::spans::to_arrow(&request.resource_spans).map_err(internal)
        }
        Signal::Metrics => {
            let request: ExportMetricsServiceRequest = decode_message(body, encoding, "metrics")?;
            columnar::metrics::to_arrow(&request.resource_metrics).map_err(internal)
        }
        Signal::Logs => {
            if encoding == Encoding::Protobuf
                && let Ok(result) = columnar::logs_wire::decode(body, now_unix_nano())
            {
                return result.map_err(internal);
            }
            let request: ExportLogsServiceRequest = decode_message(body, encoding, "logs")?;
            columnar::logs::to_arrow(&request.resource_logs, now_unix_nano()).map_err(internal)
        }
    }
}

/// Encodes the export response carrying the partial-success counts.
pub fn encode_response(decoded: &Decoded, encoding: Encoding) -> Bytes {
    use opentelemetry_proto::tonic::collector::logs::v1::{
        ExportLogsPartialSuccess, ExportLogsServiceResponse,
    };
    use opentelemetry_proto::tonic::collector::metrics::v1::{
        ExportMetricsPartialSuccess, ExportMetricsServiceResponse,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTracePartialSuccess, ExportTraceServiceResponse,
    };
    let message = decoded.rejection.clone().unwrap_or_default();
    let partial = decoded.rejected > 0;
    if !partial && encoding == Encoding::Json {
        // OTLP/JSON omits absent fields rather than writing null.
        return Bytes::from_static(b"{}");
    }
    let rejected = decoded.rejected as i64;
    fn encode<M: Message + serde::Serialize>(m: &M, encoding: Encoding) -> Bytes {
        match encoding {
            Encoding::Protobuf => Bytes::from(m.encode_to_vec()),
            Encoding::Json => Bytes::from(serde_json::to_vec(m).unwrap_or_else(|_| b"{}".to_vec())),
        }
    }
    match decoded.signal {
        Signal::Traces => encode(
            &ExportTraceServiceResponse {
                partial_success: partial.then_some(ExportTracePartialSuccess {
                    rejected_spans: rejected,
                    error_message: message,
                }),
            },
            encoding,
        ),
        Signal::Metrics => encode(
            &ExportMetricsServiceResponse {
                partial_success: partial.then_some(ExportMetricsPartialSuccess {
                    rejected_data_points: rejected,
                    error_message: message,
                }),
            },
            encoding,
        ),
        Signal::Logs => encode(
            &ExportLogsServiceResponse {
                partial_success: partial.then_some(ExportLogsPartialSuccess {
                    rejected_log_records: rejected,
                    error_message: message,
                }),
            },
            encoding,
        ),
    }
}

/// `google.rpc.Status`, the body of OTLP/HTTP error responses.
#[derive(Clone, PartialEq, Message, serde::Serialize)]
pub struct RpcStatus {
    /// gRPC code.
    #[prost(int32, tag = "1")]
    pub code: i32,
    /// Human-readable message.
    #[prost(string, tag = "2")]
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn gzip_bomb_is_refused() {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(&vec![0u8; 1 << 20]).expect("write");
        let body = encoder.finish().expect("finish");
        assert!(body.len() < 10_000);
        assert!(matches!(
            gunzip_bounded(&body, 1 << 16),
            Err(IngestError::TooLarge { .. })
        ));
        assert_eq!(gunzip_bounded(&body, 1 << 20).expect("fits").len(), 1 << 20);
    }

    #[test]
    fn garbage_is_a_decode_error() {
        for signal in [Signal::Traces, Signal::Metrics, Signal::Logs] {
            let error =
                decode(signal, b"\xff\xff\xff\xff", Encoding::Protobuf).expect_err("garbage");
            assert!(matches!(error, IngestError::Decode { .. }), "{error}");
            let error = decode(signal, b"{not json", Encoding::Json).expect_err("garbage");
            assert!(matches!(error, IngestError::Decode { .. }), "{error}");
        }
    }
}
