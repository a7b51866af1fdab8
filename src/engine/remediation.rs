//! Wiring of remediation after the incident stage: the stage itself, the
//! publisher of its commands on the action bus, the subscriber of outcomes,
//! and (commands in process) the reference executor.
//!
//! The publisher keeps up to [`MAX_UNSENT`] commands it could not publish yet
//! (a broker down) and retries them in order, so an unreachable bus never
//! stalls detection upstream; at shutdown it drops (and logs) only those that
//! expired while the bus refused them.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::EngineError;
use crate::bus::kafka::KafkaBus;
use crate::bus::{Bus, BusError, Envelope, MemoryBus, headers};
use crate::config::Config;
use crate::executor::Executor;
use crate::flow::{self, Message};
use crate::incident::IncidentEvent;
use crate::read_model::ReadModel;
use crate::remediate::command::{Command, parse_outcome, parse_rfc3339};
use crate::remediate::governor::Governor;
use crate::remediate::log::RemediationLog;
use crate::remediate::playbook::Playbooks;
use crate::remediate::{RemediateInput, RemediateParams, RemediateStage};

/// Commands held while the bus refuses them.
pub(super) const MAX_UNSENT: usize = 10_000;

/// Remediation, running.
pub(super) struct Remediation {
    /// Where the incident stage sends its events.
    pub(super) incidents: mpsc::Sender<Message<IncidentEvent>>,
    /// The stage's inbox, for control requests.
    pub(super) inbox: mpsc::Sender<Message<RemediateInput>>,
    pub(super) log: RemediationLog,
    done: JoinHandle<()>,
    bus_stop: CancellationToken,
}

impl Remediation {
    /// Starts everything; it stops once the incident stage's outlet closes.
    pub(super) async fn start(config: &Config, tables: &ReadModel) -> Result<Self, EngineError> {
        let rc = &config.remediation;
        let playbooks = Playbooks::load(&rc.playbooks)?;
        info!(source = %playbooks.source, playbooks = playbooks.playbooks.len(), "playbooks loaded");
        let kafka = rc.bus(&config.kafka);
        let bus: Arc<dyn Bus> = if let Some(kafka) = &kafka {
            let bus = Arc::new(KafkaBus::new(kafka)?);
            // In the background: a broker that is down must not hold the start.
            let (creator, topics) = (
                bus.clone(),
                [rc.actions_topic.clone(), rc.outcomes_topic.clone()],
            );
            tokio::spawn(async move {
                let topics = [topics[0].as_str(), topics[1].as_str()];
                let _ =
                    tokio::time::timeout(Duration::from_secs(30), creator.ensure_topics(&topics))
                        .await;
            });
            bus
        } else {
            Arc::new(MemoryBus::new())
        };
        let log = RemediationLog::new(rc.max_log_rows);
        for table in log.tables() {
            tables.register(table)?;
        }
        let ms = |d: Duration| d.as_millis().min(i64::MAX as u128) as i64;
        let source = rc.source();
        let mut stage = RemediateStage::new(
            RemediateParams {
                source: source.clone(),
                window_ms: ms(config.window.size),
                settle_windows: rc.settle_windows,
                command_ttl_ms: ms(rc.command_ttl),
                outcome_timeout_ms: ms(rc.outcome_timeout),
                verify_windows: rc.verify_windows,
                canary: rc.canary,
                canary_share: rc.canary_share,
                canary_windows: rc.canary_windows,
                canary_actions: rc.canary_actions.clone(),
            },
            playbooks,
            Governor::new(rc.limits()),
            log.clone(),
        );
        if !config.store.path.as_os_str().is_empty() {
            stage = stage.stored_at(&crate::remediate::snapshot::path(&config.store.path))?;
        }
        let capacity = config.pipeline.queue_capacity;
        let (inbox, stage_inbox) = mpsc::channel(capacity);
        let (incidents, incident_events) = mpsc::channel(capacity);
        let (commands, command_rx) = mpsc::channel(capacity);
        let (stage_stop, bus_stop) = (CancellationToken::new(), CancellationToken::new());
        let adapter = tokio::spawn(forward(incident_events, inbox.clone(), stage_stop.clone()));
        let run = flow::run(stage, stage_inbox, Some(commands), stage_stop);
        let publisher = tokio::spawn(publish(command_rx, bus.clone(), rc.actions_topic.clone()));
        let outcomes_group = format!("{}-outcomes", config.kafka.group_id);
        let receive = bus.subscribe(&rc.outcomes_topic, &outcomes_group).await?;
        tokio::spawn(outcomes(receive, inbox.clone(), source, bus_stop.clone()));
        if kafka.is_none() && rc.executor {
            let mut executor_config = config.executor.clone();
            if executor_config.journal.is_empty() && !config.store.path.as_os_str().is_empty() {
                let journal = config.store.path.join("executor.jsonl");
                executor_config.journal = journal.to_string_lossy().into_owned();
            }
            let executor = Executor::new(
                executor_config,
                bus.clone(),
                &rc.actions_topic,
                &rc.outcomes_topic,
            )?;
            let stop = bus_stop.clone();
            tokio::spawn(async move {
                if let Err(error) = executor.run(stop).await {
                    warn!(%error, "the in-process executor stopped");
                }
            });
        } else if kafka.is_none() {
            warn!(
                "remediation commands travel in process and no executor runs: they are decided and recorded only"
            );
        }
        info!(transport = bus.name(), dry_run = rc.dry_run, actions = %rc.actions_topic, "remediation on");
        let done = tokio::spawn(async move {
            drop(run.await);
            let _ = publisher.await;
            let _ = adapter.await;
        });
        Ok(Self {
            incidents,
            inbox,
            log,
            done,
            bus_stop,
        })
    }

    /// Waits until the stage and the publisher finished (after the incident
    /// stage stopped), then stops the subscriber and the executor.
    pub(super) async fn stopped(self) {
        drop(self.incidents);
        drop(self.inbox);
        let _ = self.done.await;
        self.bus_stop.cancel();
    }
}

/// Passes incident events (and flushes) into the stage's inbox; when the
/// incident stage stops, stops the stage.
async fn forward(
    mut events: mpsc::Receiver<Message<IncidentEvent>>,
    inbox: mpsc::Sender<Message<RemediateInput>>,
    stop: CancellationToken,
) {
    while let Some(message) = events.recv().await {
        let message = match message {
            Message::Data(event) => Message::Data(RemediateInput::Incident(event)),
            Message::Flush(done) => Message::Flush(done),
        };
        if inbox.send(message).await.is_err() {
            break;
        }
    }
    stop.cancel();
}

/// Subscribes the stage to outcomes of its own commands.
async fn outcomes(
    mut deliveries: mpsc::Receiver<crate::bus::Delivery>,
    inbox: mpsc::Sender<Message<RemediateInput>>,
    source: String,
    stop: CancellationToken,
) {
    loop {
        let delivery = tokio::select! {
            d = deliveries.recv() => d,
            _ = stop.cancelled() => None,
        };
        let Some(delivery) = delivery else {
            return;
        };
        match parse_outcome(&delivery.message.payload) {
            Ok(outcome) if outcome.data.command_source == source => {
                let input = RemediateInput::Outcome(Box::new(outcome));
                if inbox.send(Message::Data(input)).await.is_err() {
                    return; // stopped: unacknowledged, redelivered next time
                }
            }
            Ok(_) => {} // another engine's
            Err(error) => warn!(%error, "not an outcome; dropped"),
        }
        delivery.ack();
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Publishes commands in order; holds those the bus refuses and retries them.
async fn publish(mut commands: mpsc::Receiver<Message<Command>>, bus: Arc<dyn Bus>, topic: String) {
    let mut unsent: VecDeque<Command> = VecDeque::new();
    let mut backoff = Duration::from_millis(100);
    let mut open = true;
    while open || !unsent.is_empty() {
        let received = if unsent.is_empty() {
            commands.recv().await
        } else if open && unsent.len() < MAX_UNSENT {
            tokio::select! {
                m = commands.recv() => m,
                _ = tokio::time::sleep(backoff) => { send_held(&bus, &topic, &mut unsent, &mut backoff).await; continue; }
            }
        } else {
            tokio::time::sleep(backoff).await;
            send_held(&bus, &topic, &mut unsent, &mut backoff).await;
            if !open {
                // Stopping: what the bus still refuses after its expiry is dropped.
                unsent
                    .retain(|c| parse_rfc3339(&c.data.expires_at).is_some_and(|at| at > now_ms()));
            }
            continue;
        };
        match received {
            Some(Message::Data(command)) => {
                unsent.push_back(command);
                send_held(&bus, &topic, &mut unsent, &mut backoff).await;
            }
            Some(Message::Flush(done)) => {
                send_held(&bus, &topic, &mut unsent, &mut backoff).await;
                let _ = done.send(());
            }
            None => open = false,
        }
    }
}

/// Publishes the held commands in order until the bus refuses one.
async fn send_held(
    bus: &Arc<dyn Bus>,
    topic: &str,
    unsent: &mut VecDeque<Command>,
    backoff: &mut Duration,
) {
    // Expired commands still go out: the executor rejects them, and that
    // outcome tells the stage the step was never tried.
    while let Some(command) = unsent.front() {
        let Ok(payload) = serde_json::to_vec(command) else {
            unsent.pop_front();
            continue;
        };
        let message = Envelope {
            key: command.subject.clone(),
            payload,
            headers: headers(&command.traceparent),
        };
        match bus.publish(topic, message).await {
            Ok(()) => {
                info!(id = %command.id, action = command.data.action.as_str(), target = %command.subject, dry_run = command.data.dry_run, "command published");
                unsent.pop_front();
                *backoff = Duration::from_millis(100);
            }
            Err(BusError::NoSubscriber(_)) => {
                warn!(id = %command.id, "no executor in process: the command is recorded only");
                unsent.pop_front();
            }
            Err(error) => {
                warn!(%error, id = %command.id, held = unsent.len(), "cannot publish a command; holding it");
                *backoff = (*backoff * 2).min(Duration::from_secs(5));
                return;
            }
        }
    }
}
