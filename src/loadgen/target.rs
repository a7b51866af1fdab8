//! Where the load goes: OTLP/gRPC, OTLP/HTTP (protobuf) or the Kafka `otlp_*` topics.

use std::time::Duration;

use anyhow::{Context, bail};
use bytes::{Buf, BufMut, Bytes};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use crate::columnar::Signal;
use crate::ingest::otlp_grpc::{LOGS_PATH, METRICS_PATH, TRACES_PATH};

/// A parsed `--endpoint`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `grpc://HOST:PORT`
    Grpc(String),
    /// `http://HOST:PORT` (OTLP/HTTP protobuf on `/v1/{traces,metrics,logs}`)
    Http(String),
    /// `kafka://BROKERS` (comma-separated)
    Kafka(String),
}

impl std::str::FromStr for Endpoint {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        let (scheme, rest) = s.split_once("://").with_context(|| {
            format!("endpoint {s:?} has no scheme (grpc://, http://, kafka://)")
        })?;
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() {
            bail!("endpoint {s:?} has no address");
        }
        Ok(match scheme {
            "grpc" => Endpoint::Grpc(format!("http://{rest}")),
            "http" => Endpoint::Http(format!("http://{rest}")),
            "kafka" => Endpoint::Kafka(rest.to_string()),
            other => bail!("unknown endpoint scheme {other:?}: use grpc://, http:// or kafka://"),
        })
    }
}

/// Why a request was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The server shed load (HTTP 503 / 429, gRPC UNAVAILABLE / RESOURCE_EXHAUSTED).
    Shed,
    /// Any other error answer.
    Refused,
    /// No answer (connection, timeout, broker).
    Transport,
}

/// One connection to the target.
pub enum Sender {
    /// A gRPC channel.
    Grpc(tonic::client::Grpc<tonic::transport::Channel>),
    /// An HTTP client and base URL.
    Http(reqwest::Client, String),
    /// A Kafka producer and the three topics (spans, metrics, logs).
    Kafka(FutureProducer, [String; 3]),
}

/// Raw protobuf bodies through tonic: the requests are pre-encoded (also the
/// pass-through codec of `benches/grpc_receivers.rs`).
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// Records the server rejected in a successful answer (OTLP partial success).
fn rejected(signal: Signal, body: &[u8]) -> u64 {
    let rejected = match signal {
        Signal::Traces => ExportTraceServiceResponse::decode(body)
            .ok()
            .and_then(|r| r.partial_success)
            .map(|p| p.rejected_spans),
        Signal::Metrics => ExportMetricsServiceResponse::decode(body)
            .ok()
            .and_then(|r| r.partial_success)
            .map(|p| p.rejected_data_points),
        Signal::Logs => ExportLogsServiceResponse::decode(body)
            .ok()
            .and_then(|r| r.partial_success)
            .map(|p| p.rejected_log_records),
    };
    rejected.unwrap_or(0).max(0) as u64
}

impl Sender {
    /// Connects to `endpoint`.
    pub async fn connect(
        endpoint: &Endpoint,
        kafka_topics: &str,
        timeout: Duration,
    ) -> anyhow::Result<Sender> {
        Ok(match endpoint {
            Endpoint::Grpc(uri) => {
                let channel = tonic::transport::Endpoint::from_shared(uri.clone())
                    .with_context(|| format!("bad gRPC endpoint {uri}"))?
                    .timeout(timeout)
                    .connect_timeout(timeout)
                    .tcp_nodelay(true)
                    .connect()
                    .await
                    .with_context(|| format!("cannot connect to {uri}"))?;
                Sender::Grpc(
                    tonic::client::Grpc::new(channel)
                        .max_decoding_message_size(64 << 20)
                        .max_encoding_message_size(256 << 20),
                )
            }
            Endpoint::Http(base) => Sender::Http(
                reqwest::Client::builder()
                    .timeout(timeout)
                    .tcp_nodelay(true)
                    .build()
                    .context("cannot build the HTTP client")?,
                base.clone(),
            ),
            Endpoint::Kafka(brokers) => {
                let producer: FutureProducer = ClientConfig::new()
                    .set("bootstrap.servers", brokers)
                    .set("linger.ms", "5")
                    .set("message.max.bytes", "16777216")
                    .set("message.timeout.ms", timeout.as_millis().to_string())
                    .create()
                    .context("cannot create the Kafka producer")?;
                let topics: Vec<String> = kafka_topics
                    .split(',')
                    .map(|t| t.trim().to_string())
                    .collect();
                let [spans, metrics, logs] = <[String; 3]>::try_from(topics).map_err(|_| {
                    anyhow::anyhow!(
                        "--kafka-topics needs three comma-separated topics (spans,metrics,logs), got {kafka_topics:?}"
                    )
                })?;
                if [&spans, &metrics, &logs].iter().any(|t| t.is_empty()) {
                    bail!("--kafka-topics has an empty topic name: {kafka_topics:?}");
                }
                Sender::Kafka(producer, [spans, metrics, logs])
            }
        })
    }

    /// Sends one encoded export request; on success, the number of records the
    /// server rejected.
    pub async fn send(&mut self, signal: Signal, body: Bytes) -> Result<u64, Failure> {
        match self {
            Sender::Grpc(grpc) => {
                grpc.ready().await.map_err(|_| Failure::Transport)?;
                let path = match signal {
                    Signal::Traces => TRACES_PATH,
                    Signal::Metrics => METRICS_PATH,
                    Signal::Logs => LOGS_PATH,
                };
                let path = axum::http::uri::PathAndQuery::from_static(path);
                match grpc.unary(tonic::Request::new(body), path, RawCodec).await {
                    Ok(response) => Ok(rejected(signal, response.get_ref())),
                    Err(status) => Err(match status.code() {
                        tonic::Code::Unavailable | tonic::Code::ResourceExhausted => {
                            if status.message().contains("connect") {
                                Failure::Transport
                            } else {
                                Failure::Shed
                            }
                        }
                        tonic::Code::Unknown | tonic::Code::Cancelled
                            if status.message().contains("transport") =>
                        {
                            Failure::Transport
                        }
                        _ => Failure::Refused,
                    }),
                }
            }
            Sender::Http(client, base) => {
                let url = format!("{base}/v1/{}", signal.as_str());
                let response = client
                    .post(url)
                    .header("content-type", "application/x-protobuf")
                    .body(body)
                    .send()
                    .await
                    .map_err(|_| Failure::Transport)?;
                let status = response.status();
                let body = response.bytes().await.map_err(|_| Failure::Transport)?;
                if status.is_success() {
                    Ok(rejected(signal, &body))
                } else if status.as_u16() == 503 || status.as_u16() == 429 {
                    Err(Failure::Shed)
                } else {
                    Err(Failure::Refused)
                }
            }
            Sender::Kafka(producer, topics) => {
                let topic = match signal {
                    Signal::Traces => &topics[0],
                    Signal::Metrics => &topics[1],
                    Signal::Logs => &topics[2],
                };
                let record: FutureRecord<'_, (), [u8]> = FutureRecord::to(topic).payload(&body[..]);
                producer
                    .send(record, Duration::from_secs(5))
                    .await
                    .map(|_| 0)
                    .map_err(|(error, _)| match error.rdkafka_error_code() {
                        Some(rdkafka::types::RDKafkaErrorCode::QueueFull) => Failure::Shed,
                        _ => Failure::Transport,
                    })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_with_clear_errors() {
        assert_eq!(
            "grpc://127.0.0.1:4317".parse::<Endpoint>().expect("grpc"),
            Endpoint::Grpc("http://127.0.0.1:4317".into())
        );
        assert_eq!(
            "http://h:4318/".parse::<Endpoint>().expect("http"),
            Endpoint::Http("http://h:4318".into())
        );
        assert_eq!(
            "kafka://a:9092,b:9092".parse::<Endpoint>().expect("kafka"),
            Endpoint::Kafka("a:9092,b:9092".into())
        );
        let error = "127.0.0.1:4317"
            .parse::<Endpoint>()
            .expect_err("must fail")
            .to_string();
        assert!(error.contains("no scheme"), "{error}");
        let error = "udp://x:1"
            .parse::<Endpoint>()
            .expect_err("must fail")
            .to_string();
        assert!(error.contains("unknown endpoint scheme"), "{error}");
    }
}
