//! The action bus on Kafka: commands and outcomes as records whose key is the
//! target service and whose value is one CloudEvent in structured JSON.
//!
//! Publishing waits for the broker's acknowledgement (`acks=all`); a broker
//! that is down makes `publish` fail after `message.timeout.ms`, and the caller
//! retries. A subscription is a consumer in a group; offsets are stored only
//! when a delivery is acknowledged and committed in the background, so a
//! message handled before a crash is redelivered at most, never skipped.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{Bus, BusError, Delivery, Envelope, SUBSCRIPTION_CAPACITY};
use crate::ingest::config::KafkaConfig;
use crate::ingest::kafka_log::{ErrorLog, LoggedContext};

/// Kafka transport.
pub struct KafkaBus {
    config: KafkaConfig,
    producer: FutureProducer<LoggedContext>,
}

impl KafkaBus {
    /// A producer on `config.brokers`; nothing connects until used.
    pub fn new(config: &KafkaConfig) -> Result<Self, BusError> {
        let producer = Self::client(config)
            .set("acks", "all")
            .set("message.timeout.ms", "30000")
            .create_with_context(LoggedContext::default())?;
        Ok(Self {
            config: config.clone(),
            producer,
        })
    }

    fn client(config: &KafkaConfig) -> ClientConfig {
        let mut client = ClientConfig::new();
        client.set("bootstrap.servers", &config.brokers);
        for (key, value) in &config.librdkafka_options {
            client.set(key, value);
        }
        client
    }

    /// Creates `topics` (3 partitions) where they do not exist; a failure is
    /// logged, not fatal: the broker may come up later, or topics may be
    /// managed elsewhere.
    pub async fn ensure_topics(&self, topics: &[&str]) {
        let admin: AdminClient<LoggedContext> =
            match Self::client(&self.config).create_with_context(LoggedContext::default()) {
                Ok(admin) => admin,
                Err(error) => {
                    warn!(%error, "kafka admin client");
                    return;
                }
            };
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|t| NewTopic::new(t, 3, TopicReplication::Fixed(1)))
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        match admin.create_topics(&new, &options).await {
            Ok(results) => {
                for result in results {
                    match result {
                        Ok(topic) => info!(topic, "kafka topic created"),
                        Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                        Err((topic, code)) => warn!(topic, %code, "cannot create kafka topic"),
                    }
                }
            }
            Err(error) => warn!(%error, "cannot create kafka topics"),
        }
    }
}

#[async_trait::async_trait]
impl Bus for KafkaBus {
    async fn publish(&self, topic: &str, message: Envelope) -> Result<(), BusError> {
        let mut headers = OwnedHeaders::new();
        for (key, value) in &message.headers {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
        let record = FutureRecord::to(topic)
            .key(message.key.as_bytes())
            .payload(&message.payload)
            .headers(headers);
        self.producer
            .send(record, Duration::from_secs(30))
            .await
            .map(|_| ())
            .map_err(|(error, _)| BusError::Kafka(error))
    }

    async fn subscribe(
        &self,
        topic: &str,
        group: &str,
    ) -> Result<mpsc::Receiver<Delivery>, BusError> {
        let session_ms = self
            .config
            .session_timeout
            .as_millis()
            .clamp(1000, 3_600_000);
        let consumer: StreamConsumer<LoggedContext> = Self::client(&self.config)
            .set("group.id", group)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", session_ms.to_string())
            .set("heartbeat.interval.ms", (session_ms / 3).to_string())
            .set("topic.metadata.refresh.interval.ms", "5000")
            .create_with_context(LoggedContext::default())?;
        consumer.subscribe(&[topic])?;
        let consumer = Arc::new(consumer);
        let (tx, rx) = mpsc::channel(SUBSCRIPTION_CAPACITY);
        let topic = topic.to_string();
        tokio::spawn(async move {
            let receive_errors = ErrorLog::default();
            loop {
                let received = tokio::select! {
                    m = consumer.recv() => m,
                    _ = tx.closed() => break, // unsubscribed
                };
                let delivery = match received {
                    Ok(m) => {
                        let headers = m
                            .headers()
                            .map(|h| {
                                h.iter()
                                    .map(|h| {
                                        let value = h.value.map(String::from_utf8_lossy);
                                        (h.key.to_string(), value.unwrap_or_default().into_owned())
                                    })
                                    .collect()
                            })
                            .unwrap_or_default();
                        let message = Envelope {
                            key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                            payload: m.payload().unwrap_or_default().to_vec(),
                            headers,
                        };
                        let (c, t, partition, offset) =
                            (consumer.clone(), topic.clone(), m.partition(), m.offset());
                        let ack: Box<dyn FnOnce() + Send> = Box::new(move || {
                            if let Err(error) = c.store_offset(&t, partition, offset) {
                                warn!(%error, "cannot store a kafka offset");
                            }
                        });
                        Delivery::new(message, Some(ack))
                    }
                    Err(error) => {
                        if let Some(held_back) = receive_errors.admit(&error.to_string()) {
                            warn!(%error, topic = %topic, held_back, "kafka receive");
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                            _ = tx.closed() => break, // unsubscribed
                        }
                    }
                };
                if tx.send(delivery).await.is_err() {
                    break; // unsubscribed
                }
            }
        });
        Ok(rx)
    }

    fn name(&self) -> &'static str {
        "kafka"
    }
}
