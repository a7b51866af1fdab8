//! The window stage: decoded batches in; closed windows out to the history
//! (queried by SQL), the store and the next stage (detection); Kafka offsets
//! released once what they carried is durable. It runs in [`flow::run`].

pub mod history;
pub mod offsets;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arrow::record_batch::RecordBatch;
use serde::Deserialize;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::columnar::{Decoded, Signal};
use crate::flow::{self, Emit, Message};
use crate::self_metrics::SelfMetrics;
use crate::store::{Store, StoreConfig};
use crate::window::deployments::{DeploymentLog, Deployments, VersionChange};
use crate::window::{WindowConfig, WindowTables, Windows};
pub use history::History;
pub use offsets::{KafkaOrigin, OffsetTracker};

/// A decoded batch and, when it came from Kafka, its position (for commits).
#[derive(Debug)]
pub struct Ingested {
    /// The records.
    pub decoded: Decoded,
    /// Where it came from, for offset commits.
    pub origin: Option<KafkaOrigin>,
}

/// What travels on the pipeline queue: batches, and flushes.
pub type PipelineMessage = Message<Ingested>;

/// What the window stage hands on, in order: log records (for template mining)
/// and each closed window after the records it counted.
#[derive(Debug, Clone)]
pub enum WindowEvent {
    /// A batch of log records (the `columnar::logs` schema).
    Logs(RecordBatch),
    /// A closed window.
    Closed(Arc<WindowTables>),
    /// The request and call statistics of the open window so far
    /// (`window.early_look`); the window closes later as usual.
    Early(Arc<WindowTables>),
    /// A service's version changed (before the windows it shows in close).
    Deployment(VersionChange),
    /// A service's live instances changed.
    Instances(crate::window::inventory::Instances),
    /// Per-instance health of a closed window (before the window itself).
    InstanceHealth(Arc<crate::window::instance_health::InstanceWindow>),
    /// Humans' verdicts for detection (from the API, not the window stage).
    Feedback(Vec<crate::detect::feedback::Tolerance>),
}

/// A version unseen this long is new again when it reappears (see
/// `window::deployments`).
const DEPLOY_GAP_MS: i64 = 3_600_000;

/// Format version of `deployments.json`.
const DEPLOYMENTS_VERSION: u32 = 1;

/// Version changes kept for the `deployments` table.
const MAX_DEPLOYMENTS: usize = 10_000;

/// The window stage.
pub struct WindowStage {
    windows: Windows,
    history: History,
    store: Option<Store>,
    offsets: OffsetTracker,
    metrics: Arc<SelfMetrics>,
    idle_timeout: Duration,
    retain_ms: i64,
    close_on_stop: bool,
    /// Closed windows whose write failed, retried with the next one.
    unpersisted: Vec<WindowTables>,
    /// Whether a next stage takes the log records and closed windows.
    downstream: bool,
    /// The stage's own queue, to report its depth (weak: it does not keep the
    /// queue open).
    queue: Option<mpsc::WeakSender<PipelineMessage>>,
    last_input: Instant,
    assignment: u64,
    deployments: Deployments,
    /// Which instances each service runs.
    inventory: crate::window::inventory::Inventory,
    /// Per-instance health of services with several instances.
    health: crate::window::instance_health::InstanceHealth,
    deployment_log: DeploymentLog,
    /// Where the version changes are kept across restarts.
    deployment_file: Option<std::path::PathBuf>,
}

fn now_unix_nano() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn input_id(topic: &str, partition: i32) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one((topic, partition)) | 1
}

impl WindowStage {
    /// Builds the stage, restoring closed windows and the checkpoint from the store.
    pub fn new(
        window: &WindowConfig,
        store: &StoreConfig,
        history: History,
        offsets: OffsetTracker,
        metrics: Arc<SelfMetrics>,
    ) -> Result<Self, crate::store::StoreError> {
        let mut windows = Windows::new(window);
        let store = if store.path.as_os_str().is_empty() {
            None
        } else {
            let store = Store::open(&store.path)?;
            let (checkpoint, restored) = store.load(windows.size_ms())?;
            if let Some(checkpoint) = checkpoint {
                info!(
                    closed_through_ms = checkpoint.closed_through_ms,
                    windows = restored.len(),
                    "restored windows from store"
                );
                offsets.set_durable(checkpoint.closed_through_ms);
                windows.restore(checkpoint);
            }
            history.extend(restored);
            Some(store)
        };
        Ok(WindowStage {
            windows,
            history,
            store,
            offsets,
            metrics,
            idle_timeout: window.idle_timeout,
            retain_ms: window.retain.as_millis() as i64,
            close_on_stop: true,
            unpersisted: Vec::new(),
            downstream: false,
            queue: None,
            last_input: Instant::now(),
            assignment: 0,
            deployments: Deployments::new(DEPLOY_GAP_MS, window.max_series),
            inventory: crate::window::inventory::Inventory::new(window.max_series),
            health: crate::window::instance_health::InstanceHealth::new(
                window.size.as_millis() as i64
            ),
            deployment_log: DeploymentLog::new(MAX_DEPLOYMENTS),
            deployment_file: None,
        })
    }

    /// Input comes from Kafka: open windows are rebuilt from uncommitted records
    /// after a restart, so they are not closed at stop (that would turn those
    /// records into late ones).
    pub fn from_kafka(mut self) -> Self {
        self.close_on_stop = false;
        self
    }

    /// Keeps the version changes in `path` across restarts, loading what is there.
    pub fn deployments_at(
        mut self,
        path: std::path::PathBuf,
    ) -> Result<Self, crate::persist::StateFileError> {
        let changes: Vec<VersionChange> =
            crate::persist::load(&path, DEPLOYMENTS_VERSION)?.unwrap_or_default();
        self.deployments.seed(&changes);
        self.deployment_log.extend(&changes);
        self.deployment_file = Some(path);
        Ok(self)
    }

    /// The `deployments` table (for the read model).
    pub fn deployment_log(&self) -> DeploymentLog {
        self.deployment_log.clone()
    }

    /// Hands log records and closed windows on (to detection).
    pub fn with_downstream(mut self) -> Self {
        self.downstream = true;
        self
    }

    /// Reports the depth of `queue` (the stage's inbox) in the self-metrics.
    pub fn watching(mut self, queue: &mpsc::Sender<PipelineMessage>) -> Self {
        self.queue = Some(queue.downgrade());
        self
    }

    fn queue_depth(&self) -> usize {
        self.queue
            .as_ref()
            .and_then(mpsc::WeakSender::upgrade)
            .map_or(0, |q| q.max_capacity() - q.capacity())
    }

    /// Takes a new Kafka partition assignment as the inputs the watermark waits
    /// for. Checked before every batch: a batch from one partition handled before
    /// the others are known would move the watermark past their data.
    fn follow_assignment(&mut self) {
        if let Some((generation, partitions)) = self.offsets.assignment_since(self.assignment) {
            self.assignment = generation;
            let ids: Vec<u64> = partitions.iter().map(|(t, p)| input_id(t, *p)).collect();
            self.windows.set_inputs(&ids, now_unix_nano());
        }
    }

    /// Closes the windows the clock allows and hands them on.
    fn advance(&mut self, out: &mut Emit<WindowEvent>) {
        match self.windows.advance(now_unix_nano()) {
            Ok(closed) => {
                self.publish(closed, out);
            }
            Err(error) => warn!(%error, "failed to close windows"),
        }
        if !self.downstream {
            return;
        }
        match self.windows.early_look(now_unix_nano()) {
            Ok(Some(early)) => out.push(WindowEvent::Early(Arc::new(early))),
            Ok(None) => {}
            Err(error) => warn!(%error, "failed to look into the open window"),
        }
    }

    /// Runs `step`, then reports what it changed in the self-metrics.
    fn measured(&mut self, step: impl FnOnce(&mut Self)) {
        let before = (self.windows.counts(), self.windows.pairing_counts());
        step(self);
        self.metrics.window_progress(
            before,
            (self.windows.counts(), self.windows.pairing_counts()),
            self.windows.open_windows(),
            self.windows.pending_pairs(),
            self.windows.closed_through_ms(),
            self.queue_depth(),
        );
    }

    fn ingest(
        &mut self,
        decoded: Decoded,
        origin: Option<KafkaOrigin>,
        out: &mut Emit<WindowEvent>,
    ) {
        // OTLP receivers are one input; each Kafka topic-partition is its own.
        let input = origin
            .as_ref()
            .map_or(0, |o| input_id(&o.topic, o.partition));
        if decoded.signal == Signal::Logs && self.downstream {
            out.push(WindowEvent::Logs(decoded.batch.clone()));
        }
        let time_column = match decoded.signal {
            Signal::Traces => "end_time_unix_nano",
            Signal::Metrics | Signal::Logs => "time_unix_nano",
        };
        let inventory =
            self.inventory
                .observe(&decoded.batch, time_column, Some(&decoded.resource_runs));
        if self.downstream {
            out.extend(inventory.into_iter().map(WindowEvent::Instances));
            let closed = self.windows.closed_through_ms();
            match decoded.signal {
                Signal::Traces => {
                    self.health
                        .observe_spans(&decoded.batch, &self.inventory, closed)
                }
                Signal::Metrics => {
                    self.health
                        .observe_metrics(&decoded.batch, &self.inventory, closed)
                }
                Signal::Logs => {}
            }
        }
        let changes =
            self.deployments
                .observe(&decoded.batch, time_column, Some(&decoded.resource_runs));
        if !changes.is_empty() {
            for c in &changes {
                info!(service = %c.service, from = %c.from, to = %c.to, "version change");
            }
            self.deployment_log.extend(&changes);
            if let Some(path) = &self.deployment_file {
                let _ = crate::persist::save(
                    path,
                    DEPLOYMENTS_VERSION,
                    &self.deployment_log.snapshot(),
                );
            }
            if self.downstream {
                out.extend(changes.into_iter().map(WindowEvent::Deployment));
            }
        }
        let release = match self.windows.ingest(&decoded, input, now_unix_nano()) {
            Ok(release) => release,
            Err(error) => {
                warn!(%error, signal = decoded.signal.as_str(), "batch does not match its schema");
                None
            }
        };
        if let Some(origin) = origin {
            self.offsets.processed(&origin, release);
        }
    }

    fn close_all(&mut self, out: &mut Emit<WindowEvent>) {
        match self.windows.close_all() {
            Ok(closed) => {
                if self.publish(closed, out) {
                    self.offsets.release_processed();
                }
            }
            Err(error) => warn!(%error, "failed to close windows"),
        }
    }

    /// Hands closed windows to the history and the store; false when they (or windows
    /// whose earlier write failed, retried here first) could not be persisted.
    fn publish(&mut self, closed: Vec<WindowTables>, out: &mut Emit<WindowEvent>) -> bool {
        if closed.is_empty() && self.unpersisted.is_empty() {
            return true;
        }
        self.windows.evict_stale_series(self.retain_ms);
        let closed_through = self.windows.closed_through_ms();
        let horizon = closed_through - self.retain_ms;
        if self.downstream {
            for health in self.health.close(closed_through) {
                out.push(WindowEvent::InstanceHealth(Arc::new(health)));
            }
            out.extend(
                closed
                    .iter()
                    .map(|w| WindowEvent::Closed(Arc::new(w.clone()))),
            );
        }
        self.history.extend(closed.iter().cloned());
        self.history.retain_after(horizon);
        let (retained, retained_bytes) = self.history.footprint();
        self.metrics.retained(retained, retained_bytes);
        debug!(closed = closed.len(), state = %self.windows.footprint(), retained, retained_bytes, "windows closed");
        let Some(store) = &self.store else {
            self.offsets.set_durable(closed_through);
            return true;
        };
        self.unpersisted.extend(closed);
        let checkpoint = self.windows.checkpoint();
        if let Err(error) = store.persist(&self.unpersisted, &checkpoint) {
            // Offsets stay uncommitted (Kafka input is replayed after a restart) and
            // the windows are retried with the next write.
            warn!(%error, pending = self.unpersisted.len(), "failed to persist closed windows");
            self.metrics.store_error();
            self.unpersisted.retain(|w| w.end_ms > horizon);
            return false;
        }
        self.unpersisted.clear();
        self.offsets.set_durable(closed_through);
        if let Err(error) = store.prune(horizon) {
            warn!(%error, "failed to prune old windows");
        }
        true
    }
}

impl flow::Stage for WindowStage {
    type In = Ingested;
    type Out = WindowEvent;

    fn name(&self) -> &'static str {
        "window"
    }

    fn on_data(&mut self, batch: Ingested, out: &mut Emit<WindowEvent>) {
        self.measured(|stage| {
            stage.last_input = Instant::now();
            stage.follow_assignment();
            stage.ingest(batch.decoded, batch.origin, out);
            stage.advance(out);
        });
    }

    fn tick_every(&self) -> Option<Duration> {
        Some(Duration::from_millis(250))
    }

    /// Follows the Kafka assignment, closes what the clock allows, and closes
    /// everything when input has been idle for `window.idle_timeout`.
    fn on_tick(&mut self, out: &mut Emit<WindowEvent>) {
        self.measured(|stage| {
            stage.follow_assignment();
            stage.advance(out);
            if stage.last_input.elapsed() >= stage.idle_timeout && stage.windows.open_windows() > 0
            {
                debug!("input idle, closing open windows");
                stage.close_all(out);
            }
        });
    }

    fn on_flush(&mut self, out: &mut Emit<WindowEvent>) {
        self.measured(|stage| stage.close_all(out));
    }

    fn on_stop(&mut self, out: &mut Emit<WindowEvent>) {
        self.measured(|stage| {
            if stage.close_on_stop {
                stage.close_all(out);
            } else {
                stage.advance(out);
            }
        });
        info!("window stage stopped");
    }
}

/// The queue between receivers and the window stage.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Batches queued before receivers answer 503 / UNAVAILABLE.
    pub queue_capacity: usize,
}

impl PipelineConfig {
    /// Every rule the section breaks, one line each.
    pub fn problems(&self) -> Vec<String> {
        if self.queue_capacity == 0 {
            vec!["pipeline.queue_capacity must be positive".to_string()]
        } else {
            Vec::new()
        }
    }
}
