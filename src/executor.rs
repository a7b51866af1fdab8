//! The reference executor: consumes commands from the action bus, carries them
//! out with its drivers, and reports outcomes.
//!
//! For each command, in the order they arrive (one target's commands are in
//! order on the bus): a redelivery (same `source` and `id` as one of the last
//! `dedupe` commands, remembered across restarts in `executor.journal`, see
//! [`journal`]) is not carried out again; an expired one (`expires_at` passed) is
//! `rejected`; otherwise `accepted`, `started`, then the first driver of
//! `executor.drivers` that handles the action carries it out (`succeeded` or
//! `failed`); with none, `rejected`. A `dry_run` command changes nothing and
//! succeeds, saying what a driver would have run. The delivery is acknowledged
//! after its last outcome is published, so a crash in between redelivers it.
//! Runs inside the engine (in-process bus) or alone (`homeostat executor`, on
//! Kafka).

pub mod config;
pub mod drivers;
pub mod journal;
pub mod kube_http;
pub mod kubernetes;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::bus::{Bus, BusError, Delivery, Envelope, headers};
use crate::remediate::command::{self, Command, Status, parse_command, parse_rfc3339};
pub use config::ExecutorConfig;
use drivers::Done;
pub use journal::JournalError;

/// An executor that cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The Kubernetes driver's API server or CA is unusable.
    #[error("kubernetes driver: {0}")]
    Kubernetes(String),
}
use journal::Seen;

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
    /// An executor; its journal (`executor.journal`, if set) is read back and
    /// the Kubernetes driver's API server and CA checked now.
    pub fn new(
        config: ExecutorConfig,
        bus: Arc<dyn Bus>,
        actions_topic: &str,
        outcomes_topic: &str,
    ) -> Result<Self, ExecutorError> {
        let source = if config.source.is_empty() {
            format!("executor://{}", crate::remediate::config::host_name())
        } else {
            config.source.clone()
        };
        let kubernetes = if config.drivers.iter().any(|d| d == "kubernetes") {
            Some(kubernetes::Kubernetes::new(&config).map_err(ExecutorError::Kubernetes)?)
        } else {
            None
        };
        let seen = if config.journal.is_empty() {
            Seen::new(config.dedupe)
        } else {
            Seen::open(Path::new(&config.journal), config.dedupe)?
        };
        Ok(Self {
            seen,
            source,
            bus,
            actions_topic: actions_topic.to_string(),
            outcomes_topic: outcomes_topic.to_string(),
            client: reqwest::Client::new(),
            kubernetes,
            config,
        })
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
        let key = (command.source.clone(), command.id.clone());
        let known = match self.seen.check(key.clone()) {
            Ok(known) => known,
            Err(error) => {
                // Without a record it could run twice: refused, not carried out.
                warn!(%error, id = %command.id, "cannot record a command; refused");
                let why = format!("not carried out: cannot record it: {error}");
                self.report(&command, Status::Failed, &why, stop).await;
                delivery.ack();
                return;
            }
        };
        if let Some(known) = known {
            // Carried out once only; its final outcome is told again, since the
            // sender may have missed it (a restart between its decision and the
            // outcome).
            info!(id = %command.id, "redelivered command not carried out again");
            if let Some((status, detail)) = known {
                let detail = format!("{detail} (reported again for a redelivery)");
                self.report(&command, status, &detail, stop).await;
            }
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
            self.conclude(&key, Status::Rejected, &why);
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
        self.conclude(&key, status, &detail);
        self.report(&command, status, &detail, stop).await;
        delivery.ack();
    }

    /// Records a command's final outcome; a journal that fails now only costs
    /// the memory of it after a restart (the command was carried out).
    fn conclude(&mut self, key: &journal::Key, status: Status, detail: &str) {
        if let Err(error) = self.seen.conclude(key, status, detail) {
            warn!(%error, id = %key.1, "cannot record a command's outcome");
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::MemoryBus;
    use crate::remediate::command::parse_outcome;

    /// An exec executor whose `restart` appends a line to `marker`.
    fn counting(marker: &Path, journal: Option<&Path>) -> ExecutorConfig {
        let mut config = crate::config::Config::from_toml_str("")
            .expect("defaults")
            .executor;
        config.drivers = vec!["exec".into()];
        config.exec.insert(
            "restart".into(),
            format!("sh -c echo>>{}", marker.display()),
        );
        config.journal = journal.map_or(String::new(), |p| p.display().to_string());
        config
    }

    /// A restart command that expires in a minute.
    fn restart_command() -> Envelope {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as i64;
        let mut command =
            crate::remediate::command::tests::sample(crate::remediate::playbook::Action::Restart);
        command.data.expires_at = crate::remediate::command::rfc3339(now + 60_000);
        Envelope {
            key: "cart".into(),
            payload: serde_json::to_vec(&command).expect("json"),
            headers: headers(&command.traceparent),
        }
    }

    /// Publishes `message` on `bus`; the statuses reported on `outcomes`, up to
    /// the final one.
    async fn exchange(
        bus: &MemoryBus,
        outcomes: &mut tokio::sync::mpsc::Receiver<Delivery>,
        message: &Envelope,
    ) -> Vec<Status> {
        while bus.publish("actions", message.clone()).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut statuses = Vec::new();
        loop {
            let d = outcomes.recv().await.expect("outcome");
            let o = parse_outcome(&d.message.payload).expect("parse");
            statuses.push(o.data.status);
            if o.data.status.is_final() {
                return statuses;
            }
        }
    }

    /// Delivers `message` to a running executor of `config` on `bus`; the
    /// statuses it reports, up to the final one.
    async fn deliver(config: &ExecutorConfig, bus: &MemoryBus, message: &Envelope) -> Vec<Status> {
        let mut outcomes = bus.subscribe("outcomes", "engine").await.expect("sub");
        let executor = Executor::new(config.clone(), Arc::new(bus.clone()), "actions", "outcomes")
            .expect("executor");
        let stop = CancellationToken::new();
        let run = tokio::spawn(executor.run(stop.clone()));
        let statuses = exchange(bus, &mut outcomes, message).await;
        stop.cancel();
        run.await.expect("join").expect("run");
        statuses
    }

    #[tokio::test]
    async fn a_redelivered_command_runs_once_and_its_outcome_is_told_again() {
        let dir = tempfile::tempdir().expect("dir");
        let marker = dir.path().join("runs");
        let config = counting(&marker, None);
        let bus = MemoryBus::new();
        let mut outcomes = bus.subscribe("outcomes", "engine").await.expect("sub");
        let executor =
            Executor::new(config, Arc::new(bus.clone()), "actions", "outcomes").expect("executor");
        let stop = CancellationToken::new();
        let run = tokio::spawn(executor.run(stop.clone()));
        let message = restart_command();
        let mut statuses = Vec::new();
        for _ in 0..2 {
            statuses.extend(exchange(&bus, &mut outcomes, &message).await);
        }
        stop.cancel();
        run.await.expect("join").expect("run");
        assert_eq!(
            statuses,
            [
                Status::Accepted,
                Status::Started,
                Status::Succeeded,
                Status::Succeeded
            ]
        );
        let runs = std::fs::read_to_string(&marker).expect("marker");
        assert_eq!(runs.lines().count(), 1, "carried out once: {runs:?}");
    }

    #[tokio::test]
    async fn with_a_journal_a_restarted_executor_does_not_act_twice() {
        let dir = tempfile::tempdir().expect("dir");
        let marker = dir.path().join("runs");
        let journal = dir.path().join("executor.jsonl");
        let message = restart_command();
        let config = counting(&marker, Some(&journal));
        let first = deliver(&config, &MemoryBus::new(), &message).await;
        assert_eq!(
            first,
            [Status::Accepted, Status::Started, Status::Succeeded]
        );
        // A new executor process (a new bus: nothing carried over but the file).
        let again = deliver(&config, &MemoryBus::new(), &message).await;
        assert_eq!(again, [Status::Succeeded], "told again, not redone");
        let runs = std::fs::read_to_string(&marker).expect("marker");
        assert_eq!(runs.lines().count(), 1, "carried out once: {runs:?}");
        // Without the journal, the same restart would act again.
        let forgetful = counting(&marker, None);
        deliver(&forgetful, &MemoryBus::new(), &message).await;
        let runs = std::fs::read_to_string(&marker).expect("marker");
        assert_eq!(runs.lines().count(), 2);
    }

    #[tokio::test]
    async fn a_dry_run_changes_nothing_and_says_what_would_run() {
        let dir = tempfile::tempdir().expect("dir");
        let marker = dir.path().join("runs");
        let mut config = crate::config::Config::from_toml_str("")
            .expect("defaults")
            .executor;
        config.drivers = vec!["exec".into()];
        config
            .exec
            .insert("restart".into(), format!("touch {}", marker.display()));
        let executor =
            Executor::new(config, Arc::new(MemoryBus::new()), "a", "o").expect("executor");
        let mut command =
            crate::remediate::command::tests::sample(crate::remediate::playbook::Action::Restart);
        command.data.dry_run = true;
        let done = executor.carry_out(&command).await;
        assert_eq!(
            done,
            Done::Succeeded("dry run: exec would restart cart".into())
        );
        assert!(!marker.exists(), "nothing ran");
        let mut notify = command.clone();
        notify.data.action = crate::remediate::playbook::Action::Notify;
        assert_eq!(executor.carry_out(&notify).await, Done::NotMine);
    }
}
