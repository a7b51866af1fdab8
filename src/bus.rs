//! The action bus: how commands reach executors and outcomes come back.
//!
//! One interface ([`Bus`]), two transports: Kafka topics when `kafka.brokers`
//! is set ([`kafka::KafkaBus`]), else bounded in-process channels
//! ([`MemoryBus`]) with the executor inside the engine. A message has a key
//! (the target service: one target's commands stay in order), a payload (one
//! CloudEvent in structured JSON) and headers (`content-type`, `traceparent`).
//!
//! Delivery is at least once: a subscriber acknowledges each message once it
//! is handled ([`Delivery::ack`]), and on Kafka only acknowledged offsets are
//! committed. Publishing waits for room (in process) or for the broker's
//! acknowledgement (Kafka); consumers dedupe by event id.

pub mod kafka;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

/// Messages a subscription buffers before the publisher waits.
pub const SUBSCRIPTION_CAPACITY: usize = 1024;

/// One message.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub key: String,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

/// A received message; [`Delivery::ack`] once it is handled.
pub struct Delivery {
    pub message: Envelope,
    ack: Option<Box<dyn FnOnce() + Send>>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("message", &self.message)
            .finish()
    }
}

impl Delivery {
    /// A delivery acknowledged by `ack`.
    pub fn new(message: Envelope, ack: Option<Box<dyn FnOnce() + Send>>) -> Self {
        Self { message, ack }
    }

    /// Marks it handled (on Kafka: its offset may be committed).
    pub fn ack(mut self) {
        if let Some(ack) = self.ack.take() {
            ack();
        }
    }
}

/// What went wrong on the bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("no one subscribes to {0} in process: the message would be lost")]
    NoSubscriber(String),
    #[error("the bus is closed")]
    Closed,
}

/// The transport of commands and outcomes.
#[async_trait::async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes one message on `topic`; returns once it is durable (Kafka) or
    /// queued for every subscriber (in process).
    async fn publish(&self, topic: &str, message: Envelope) -> Result<(), BusError>;

    /// Subscribes to `topic` as a member of consumer group `group`.
    async fn subscribe(
        &self,
        topic: &str,
        group: &str,
    ) -> Result<mpsc::Receiver<Delivery>, BusError>;

    /// Which transport it is, for logs.
    fn name(&self) -> &'static str;
}

/// The subscribers of one topic: (group, channel).
type Members = Vec<(String, mpsc::Sender<Delivery>)>;

/// In-process transport: per topic and group one bounded channel; a message
/// goes to every group subscribed to its topic.
#[derive(Debug, Default, Clone)]
pub struct MemoryBus {
    groups: Arc<Mutex<HashMap<String, Members>>>,
}

impl MemoryBus {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait::async_trait]
impl Bus for MemoryBus {
    async fn publish(&self, topic: &str, message: Envelope) -> Result<(), BusError> {
        let senders: Vec<mpsc::Sender<Delivery>> = {
            let Ok(mut groups) = self.groups.lock() else {
                return Err(BusError::Closed);
            };
            let list = groups.entry(topic.to_string()).or_default();
            list.retain(|(_, s)| !s.is_closed());
            list.iter().map(|(_, s)| s.clone()).collect()
        };
        if senders.is_empty() {
            return Err(BusError::NoSubscriber(topic.to_string()));
        }
        for sender in senders {
            sender
                .send(Delivery::new(message.clone(), None))
                .await
                .map_err(|_| BusError::Closed)?;
        }
        Ok(())
    }

    async fn subscribe(
        &self,
        topic: &str,
        group: &str,
    ) -> Result<mpsc::Receiver<Delivery>, BusError> {
        let (tx, rx) = mpsc::channel(SUBSCRIPTION_CAPACITY);
        let Ok(mut groups) = self.groups.lock() else {
            return Err(BusError::Closed);
        };
        let list = groups.entry(topic.to_string()).or_default();
        // One member per group in process: a new one takes over.
        list.retain(|(g, s)| g != group && !s.is_closed());
        list.push((group.to_string(), tx));
        Ok(rx)
    }

    fn name(&self) -> &'static str {
        "in-process"
    }
}

/// The headers of a CloudEvent in structured mode.
pub fn headers(traceparent: &str) -> Vec<(String, String)> {
    let mut headers = vec![(
        "content-type".to_string(),
        crate::remediate::command::CONTENT_TYPE.to_string(),
    )];
    if !traceparent.is_empty() {
        headers.push(("traceparent".to_string(), traceparent.to_string()));
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(key: &str) -> Envelope {
        Envelope {
            key: key.into(),
            payload: key.as_bytes().to_vec(),
            headers: headers("00-abc-def-01"),
        }
    }

    #[tokio::test]
    async fn every_group_gets_each_message_in_order_and_nothing_is_sent_to_no_one() {
        let bus = MemoryBus::new();
        assert!(matches!(
            bus.publish("actions", message("a")).await,
            Err(BusError::NoSubscriber(_))
        ));
        let mut one = bus.subscribe("actions", "executors").await.expect("sub");
        let mut two = bus.subscribe("actions", "audit").await.expect("sub");
        for key in ["a", "b"] {
            bus.publish("actions", message(key)).await.expect("publish");
        }
        for rx in [&mut one, &mut two] {
            let first = rx.recv().await.expect("first");
            assert_eq!(first.message.key, "a");
            first.ack();
            assert_eq!(rx.recv().await.expect("second").message.key, "b");
        }
        bus.publish("outcomes", message("x"))
            .await
            .expect_err("another topic has no subscriber");
    }
}
