//! The reference executor: consumes commands from the action bus, carries them
//! out with its drivers, and reports outcomes.
//!
//! For each command, in the order they arrive (one target's commands are in
//! order on the bus): a redelivery (same `source` and `id` as one of the last
//! `dedupe` commands) is dropped; an expired one (`expires_at` passed) is
//! `rejected`; otherwise `accepted`, `started`, then the first driver of
//! `executor.drivers` that handles the action carries it out (`succeeded` or
//! `failed`); with none, `rejected`. A `dry_run` command changes nothing and
//! succeeds, saying what a driver would have run. The delivery is acknowledged
//! after its last outcome is published, so a crash in between redelivers it.
//! Runs inside the engine (in-process bus) or alone (`homeostat executor`, on
//! Kafka).

pub mod config;
pub mod drivers;
pub mod kubernetes;

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::bus::{Bus, BusError, Delivery, Envelope, headers};
use crate::remediate::command::{self, Command, Status, parse_command, parse_rfc3339};
pub use config::ExecutorConfig;
use drivers::Done;

/// Remembers the last ids seen.
#[derive(Debug, Default)]
struct Seen {
    order: VecDeque<(String, String)>,
    set: HashSet<(String, String)>,
    capacity: usize,
}

impl Seen {
    /// Whether `key` was seen; remembers it.
    fn check(&mut self, key: (String, String)) -> bool {
        if self.set.contains(&key) {
            return true;
        }
        self.set.insert(key.clone());
        self.order.push_back(key);
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        false
    }
}

/// The executor.
pub struct Executor {
    config: ExecutorConfig,
    source: String,
    bus: Arc<dyn Bus>,
    actions_topic: String,
    outcomes_topic: String,
    seen: Seen,
    client: reqwest::Client,
    kubernetes: Option<kubernetes::Kubernetes>,
}

impl Executor {
    pub fn new(
        config: ExecutorConfig,
        bus: Arc<dyn Bus>,
        actions_topic: &str,
        outcomes_topic: &str,
    ) -> Self {
        let source = if config.source.is_empty() {
            let host = std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "localhost".into());
            format!("executor://{host}")
        } else {
            config.source.clone()
        };
        let kubernetes = config
            .drivers
            .iter()
            .any(|d| d == "kubernetes")
            .then(|| kubernetes::Kubernetes::new(&config));
        Self {
            seen: Seen {
                capacity: config.dedupe,
                ..Seen::default()
            },
            source,
            bus,
            actions_topic: actions_topic.to_string(),
            outcomes_topic: outcomes_topic.to_string(),
            client: reqwest::Client::new(),
            kubernetes,
            config,
        }
    }

    /// Consumes commands until `stop`.
    pub async fn run(mut self, stop: CancellationToken) -> Result<(), BusError> {
        let mut commands = self
            .bus
            .subscribe(&self.actions_topic, &self.config.group)
            .await?;
        info!(source = %self.source, transport = self.bus.name(), drivers = ?self.config.drivers, "executor running");
        loop {
            let delivery = tokio::select! {
                d = commands.recv() => d,
                _ = stop.cancelled() => None,
            };
            let Some(delivery) = delivery else {
                return Ok(());
            };
            self.handle(delivery, &stop).await;
        }
    }

    async fn handle(&mut self, delivery: Delivery, stop: &CancellationToken) {
        let command = match parse_command(&delivery.message.payload) {
            Ok(command) => command,
            Err(error) => {
                warn!(%error, key = %delivery.message.key, "not a command; dropped");
                delivery.ack();
                return;
            }
        };
        if self
            .seen
            .check((command.source.clone(), command.id.clone()))
        {
            info!(id = %command.id, "redelivered command dropped");
            delivery.ack();
            return;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let expiry = parse_rfc3339(&command.data.expires_at);
        if expiry.is_none_or(|at| at < now) {
            let why = format!("expired at {:?}", command.data.expires_at);
            self.report(&command, Status::Rejected, &why, stop).await;
            delivery.ack();
            return;
        }
        self.report(&command, Status::Accepted, "", stop).await;
        self.report(&command, Status::Started, "", stop).await;
        let (status, detail) = match self.carry_out(&command).await {
            Done::Succeeded(detail) => (Status::Succeeded, detail),
            Done::Failed(detail) => (Status::Failed, detail),
            Done::NotMine => (
                Status::Rejected,
                format!("no driver handles {}", command.data.action.as_str()),
            ),
        };
        info!(id = %command.id, status = status.as_str(), detail = %detail, "command carried out");
        self.report(&command, status, &detail, stop).await;
        delivery.ack();
    }

    async fn carry_out(&self, command: &Command) -> Done {
        for driver in &self.config.drivers {
            if command.data.dry_run {
                let handles = match driver.as_str() {
                    "exec" => self.config.exec.contains_key(command.data.action.as_str()),
                    "webhook" => !self.config.webhook_url.is_empty(),
                    "kubernetes" => kubernetes::handles(command.data.action),
                    _ => false,
                };
                if handles {
                    return Done::Succeeded(format!(
                        "dry run: {driver} would {} {}",
                        command.data.action.as_str(),
                        command.subject
                    ));
                }
                continue;
            }
            let done = match driver.as_str() {
                "exec" => drivers::exec(&self.config, command).await,
                "webhook" => drivers::webhook(&self.client, &self.config, command).await,
                "kubernetes" => match &self.kubernetes {
                    Some(k) => k.carry_out(command).await,
                    None => Done::NotMine,
                },
                _ => Done::NotMine,
            };
            if done != Done::NotMine {
                return done;
            }
        }
        Done::NotMine
    }

    /// Publishes an outcome, retrying while the bus refuses it (until `stop`).
    async fn report(
        &self,
        command: &Command,
        status: Status,
        detail: &str,
        stop: &CancellationToken,
    ) {
        let outcome = command::outcome(&self.source, command, status, detail);
        let Ok(payload) = serde_json::to_vec(&outcome) else {
            return;
        };
        let message = Envelope {
            key: command.subject.clone(),
            payload,
            headers: headers(&outcome.traceparent),
        };
        let mut wait = Duration::from_millis(100);
        loop {
            match self
                .bus
                .publish(&self.outcomes_topic, message.clone())
                .await
            {
                Ok(()) => return,
                Err(error) => {
                    warn!(%error, id = %command.id, "cannot publish an outcome; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.cancelled() => return,
                    }
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}
