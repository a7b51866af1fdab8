//! `[otlp]` and `[kafka]`: the receivers' configuration.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

/// OTLP receivers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// Address of the OTLP/gRPC receiver.
    pub grpc_addr: SocketAddr,
    /// Address of the OTLP/HTTP receiver (`/v1/traces`, `/v1/metrics`, `/v1/logs`).
    pub http_addr: SocketAddr,
    /// Largest accepted request body, checked before and after decompression.
    pub max_request_bytes: usize,
}

impl OtlpConfig {
    /// Every rule the section breaks, one line each.
    pub fn problems(&self) -> Vec<String> {
        if self.max_request_bytes == 0 {
            vec!["otlp.max_request_bytes must be positive".to_string()]
        } else {
            Vec::new()
        }
    }
}

/// Wire encoding of Kafka records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KafkaEncoding {
    /// Serialized `TracesData` / `MetricsData` / `LogsData` protobuf.
    OtlpProto,
    /// The OTLP JSON encoding of the same messages.
    OtlpJson,
}

/// Kafka ingestion.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, comma separated; empty turns Kafka ingestion off.
    pub brokers: String,
    /// Consumer group id.
    pub group_id: String,
    /// Topic carrying spans.
    pub spans_topic: String,
    /// Topic carrying metrics.
    pub metrics_topic: String,
    /// Topic carrying logs.
    pub logs_topic: String,
    /// Record encoding.
    pub encoding: KafkaEncoding,
    /// Consumer session timeout (`session.timeout.ms`).
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// How often offsets of fully processed records are committed.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Extra librdkafka client properties (`security.protocol`, `sasl.*`, `ssl.*`,
    /// ...), applied after Homeostat's own settings.
    pub librdkafka_options: BTreeMap<String, String>,
}

impl KafkaConfig {
    /// Whether Kafka ingestion is on.
    pub fn enabled(&self) -> bool {
        !self.brokers.trim().is_empty()
    }

    /// Every rule the section breaks, one line each.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !self.enabled() {
            return problems;
        }
        for (key, value) in [
            ("kafka.group_id", &self.group_id),
            ("kafka.spans_topic", &self.spans_topic),
            ("kafka.metrics_topic", &self.metrics_topic),
            ("kafka.logs_topic", &self.logs_topic),
        ] {
            if value.trim().is_empty() {
                problems.push(format!("{key} must not be empty when kafka.brokers is set"));
            }
        }
        if self.session_timeout < Duration::from_secs(1) {
            problems.push("kafka.session_timeout must be at least 1s".to_string());
        }
        problems
    }
}
