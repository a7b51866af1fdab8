//! Kafka ingestion of the `otlp_spans`, `otlp_metrics` and `otlp_logs` topics, as the
//! OpenTelemetry Collector's Kafka exporter writes them.
//!
//! At-least-once: a record's offset is committed only after the windows it touched are
//! closed and persisted (see [`crate::pipeline::OffsetTracker`]); redelivered records
//! are de-duplicated by the window stage. The consumer stops polling while the pipeline
//! queue is full. A broker that is down (at start or mid-run) is retried by librdkafka
//! with backoff while OTLP keeps being served.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::config::{KafkaConfig, KafkaEncoding};
use super::decode::{self, Encoding};
use super::kafka_log::ErrorLog;
use crate::columnar::Signal;
use crate::flow::Message as FlowMessage;
use crate::pipeline::{Ingested, KafkaOrigin, OffsetTracker, PipelineMessage};
use crate::self_metrics::SelfMetrics;

/// Logs client errors (see [`super::kafka_log`]) and forgets revoked
/// partitions.
pub struct IngestContext {
    tracker: OffsetTracker,
    errors: ErrorLog,
}

impl ClientContext for IngestContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.errors.client_error(&error, reason);
    }
}

impl ConsumerContext for IngestContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                for element in list.elements() {
                    info!(
                        topic = element.topic(),
                        partition = element.partition(),
                        "kafka partition assigned"
                    );
                    self.tracker.assign(element.topic(), element.partition());
                }
            }
            Rebalance::Revoke(list) => {
                for element in list.elements() {
                    info!(
                        topic = element.topic(),
                        partition = element.partition(),
                        "kafka partition revoked"
                    );
                    self.tracker.revoke(element.topic(), element.partition());
                }
            }
            Rebalance::Error(error) => warn!(%error, "kafka rebalance error"),
        }
    }
}

type IngestConsumer = StreamConsumer<IngestContext>;

/// The Kafka consumer of the three OTLP topics.
pub struct KafkaIngest {
    consumer: Arc<IngestConsumer>,
    config: KafkaConfig,
    tracker: OffsetTracker,
    metrics: Arc<SelfMetrics>,
    max_record_bytes: usize,
}

impl KafkaIngest {
    /// Creates the consumer and subscribes; does not need the broker to be up.
    pub fn new(
        config: &KafkaConfig,
        tracker: OffsetTracker,
        metrics: Arc<SelfMetrics>,
        max_record_bytes: usize,
    ) -> Result<Self, KafkaError> {
        let session_ms = config.session_timeout.as_millis().max(1000);
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &config.brokers)
            .set("group.id", &config.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", session_ms.to_string())
            .set("heartbeat.interval.ms", (session_ms / 3).to_string())
            .set("reconnect.backoff.ms", "100")
            .set("reconnect.backoff.max.ms", "5000")
            // Notice topics created after start (a broker that came up late) quickly.
            .set("topic.metadata.refresh.interval.ms", "5000");
        for (key, value) in &config.librdkafka_options {
            client.set(key, value);
        }
        let consumer: IngestConsumer = client.create_with_context(IngestContext {
            tracker: tracker.clone(),
            errors: ErrorLog::default(),
        })?;
        consumer.subscribe(&[
            &config.spans_topic,
            &config.metrics_topic,
            &config.logs_topic,
        ])?;
        Ok(KafkaIngest {
            consumer: Arc::new(consumer),
            config: config.clone(),
            tracker,
            metrics,
            max_record_bytes,
        })
    }

    fn signal_of(&self, topic: &str) -> Option<Signal> {
        if topic == self.config.spans_topic {
            Some(Signal::Traces)
        } else if topic == self.config.metrics_topic {
            Some(Signal::Metrics)
        } else if topic == self.config.logs_topic {
            Some(Signal::Logs)
        } else {
            None
        }
    }

    /// Consumes until `stop` fires, committing durable offsets every `commit_interval`.
    pub async fn run(&self, queue: mpsc::Sender<PipelineMessage>, stop: CancellationToken) {
        let encoding = match self.config.encoding {
            KafkaEncoding::OtlpProto => Encoding::Protobuf,
            KafkaEncoding::OtlpJson => Encoding::Json,
        };
        let mut commit_tick = tokio::time::interval(self.config.commit_interval);
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut backoff = Duration::from_millis(100);
        let mut topics: Vec<Arc<str>> = Vec::new();
        let receive_errors = ErrorLog::default();
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = commit_tick.tick() => self.commit().await,
                message = self.consumer.recv() => {
                    let message = match message {
                        Ok(message) => message,
                        Err(error) => {
                            if let Some(held_back) = receive_errors.admit(&error.to_string()) {
                                warn!(%error, backoff_ms = backoff.as_millis() as u64, held_back, "kafka receive failed");
                            }
                            // The stop is not held up by the backoff (up to 5 s).
                            tokio::select! {
                                _ = stop.cancelled() => break,
                                _ = tokio::time::sleep(backoff) => {}
                            }
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                            continue;
                        }
                    };
                    backoff = Duration::from_millis(100);
                    let topic = match topics.iter().find(|t| ***t == *message.topic()) {
                        Some(topic) => topic.clone(),
                        None => {
                            let topic: Arc<str> = Arc::from(message.topic());
                            topics.push(topic.clone());
                            topic
                        }
                    };
                    let origin = KafkaOrigin { topic, partition: message.partition(), offset: message.offset() };
                    self.tracker.consumed(&origin);
                    let Some(signal) = self.signal_of(message.topic()) else {
                        self.tracker.processed(&origin, None);
                        continue;
                    };
                    let payload = message.payload().unwrap_or_default();
                    let decoded = if payload.len() > self.max_record_bytes {
                        Err(super::error::IngestError::TooLarge { size: payload.len(), limit: self.max_record_bytes })
                    } else {
                        decode::decode(signal, payload, encoding)
                    };
                    match decoded {
                        Ok(decoded) => {
                            self.metrics.kafka_message("ok");
                            self.metrics.received("kafka", signal, decoded.batch.num_rows() as u64);
                            self.metrics.rejected(signal, "invalid", decoded.rejected);
                            if decoded.rejected > 0 {
                                warn!(topic = %origin.topic, partition = origin.partition, offset = origin.offset,
                                    rejected = decoded.rejected, reason = decoded.rejection.as_deref().unwrap_or(""),
                                    "kafka record partly rejected");
                            }
                            if decoded.batch.num_rows() == 0 {
                                self.tracker.processed(&origin, None);
                                continue;
                            }
                            // Waits while the queue is full: backpressure stops polling.
                            let sent = tokio::select! {
                                sent = queue.send(FlowMessage::Data(Ingested { decoded, origin: Some(origin.clone()) })) => sent.is_ok(),
                                _ = stop.cancelled() => false,
                            };
                            if !sent {
                                break;
                            }
                        }
                        Err(error) => {
                            // Poison records cannot succeed on retry: count, log, skip.
                            self.metrics.kafka_message("undecodable");
                            warn!(topic = %origin.topic, partition = origin.partition, offset = origin.offset,
                                %error, "skipping undecodable kafka record");
                            self.tracker.processed(&origin, None);
                        }
                    }
                }
            }
        }
    }

    /// Commits every offset whose records are durable.
    pub async fn commit(&self) {
        let ready = self.tracker.committable();
        if ready.is_empty() {
            return;
        }
        let mut list = TopicPartitionList::new();
        for (topic, partition, next) in &ready {
            if let Err(error) = list.add_partition_offset(topic, *partition, Offset::Offset(*next))
            {
                warn!(%error, "cannot build offset list");
                return;
            }
        }
        let consumer = self.consumer.clone();
        let result =
            tokio::task::spawn_blocking(move || consumer.commit(&list, CommitMode::Sync)).await;
        match result {
            Ok(Ok(())) => {
                self.metrics.kafka_commit("ok");
                for (topic, partition, next) in &ready {
                    self.tracker.committed(topic, *partition, *next);
                }
            }
            Ok(Err(error)) => {
                self.metrics.kafka_commit("failed");
                warn!(%error, "failed to commit kafka offsets, will retry");
            }
            Err(error) => warn!(%error, "commit task failed"),
        }
    }
}
