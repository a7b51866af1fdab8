//! The window stage task: one bounded queue in; closed windows out to the history
//! (queried by SQL) and the store; Kafka offsets released once what they carried is
//! durable.

pub mod history;
pub mod offsets;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::columnar::{Decoded, Signal};
use crate::config::Config;
use crate::detect::DetectStage;
use crate::self_metrics::SelfMetrics;
use crate::store::Store;
use crate::window::{WindowTables, Windows};
pub use history::History;
pub use offsets::{KafkaOrigin, OffsetTracker};

/// Everything that travels on the pipeline queue: data and control in one channel.
#[derive(Debug)]
pub enum PipelineMessage {
    /// A decoded batch, with its Kafka position when it came from Kafka.
    Batch {
        /// The records.
        decoded: Decoded,
        /// Where it came from, for offset commits.
        origin: Option<KafkaOrigin>,
    },
    /// Close every open window now, then answer (used by tests and tools).
    Flush(oneshot::Sender<()>),
}

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
    /// The detection stage, fed every closed window (and the log records).
    detect: Option<DetectStage>,
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
        config: &Config,
        history: History,
        offsets: OffsetTracker,
        metrics: Arc<SelfMetrics>,
    ) -> Result<Self, crate::store::StoreError> {
        let mut windows = Windows::new(&config.window);
        let store = if config.store.path.as_os_str().is_empty() {
            None
        } else {
            let store = Store::open(&config.store.path)?;
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
            idle_timeout: config.window.idle_timeout,
            retain_ms: config.window.retain.as_millis() as i64,
            // With Kafka, open windows are rebuilt from uncommitted records after a
            // restart; closing them at stop would turn those records into late ones.
            close_on_stop: !config.kafka_enabled(),
            unpersisted: Vec::new(),
            detect: None,
        })
    }

    /// Runs every closed window through `detect` (and mines log records into it).
    pub fn with_detection(mut self, detect: DetectStage) -> Self {
        self.detect = Some(detect);
        self
    }

    /// Runs until the queue closes (every sender dropped) or `stop` fires and the
    /// queue has been drained.
    pub async fn run(
        mut self,
        mut queue: mpsc::Receiver<PipelineMessage>,
        stop: CancellationToken,
    ) {
        let mut last_input = Instant::now();
        let mut assignment = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let before = (self.windows.counts(), self.windows.pairing_counts());
            if let Some((generation, partitions)) = self.offsets.assignment_since(assignment) {
                assignment = generation;
                let ids: Vec<u64> = partitions.iter().map(|(t, p)| input_id(t, *p)).collect();
                self.windows.set_inputs(&ids, now_unix_nano());
            }
            tokio::select! {
                message = queue.recv() => match message {
                    Some(PipelineMessage::Batch { decoded, origin }) => {
                        last_input = Instant::now();
                        self.ingest(decoded, origin);
                        match self.windows.advance(now_unix_nano()) {
                            Ok(closed) => {
                            self.publish(closed);
                        }
                            Err(error) => warn!(%error, "failed to close windows"),
                        }
                    }
                    Some(PipelineMessage::Flush(done)) => {
                        self.close_all();
                        let _ = done.send(());
                    }
                    None => break,
                },
                _ = tick.tick() => {
                    match self.windows.advance(now_unix_nano()) {
                        Ok(closed) => {
                            self.publish(closed);
                        }
                        Err(error) => warn!(%error, "failed to close windows"),
                    }
                    if last_input.elapsed() >= self.idle_timeout && self.windows.open_windows() > 0 {
                        debug!("input idle, closing open windows");
                        self.close_all();
                    }
                }
                _ = stop.cancelled() => {
                    queue.close();
                    while let Some(message) = queue.recv().await {
                        match message {
                            PipelineMessage::Batch { decoded, origin } => self.ingest(decoded, origin),
                            PipelineMessage::Flush(done) => { let _ = done.send(()); }
                        }
                    }
                    if self.close_on_stop {
                        self.close_all();
                    } else {
                        match self.windows.advance(now_unix_nano()) {
                            Ok(closed) => {
                            self.publish(closed);
                        }
                            Err(error) => warn!(%error, "failed to close windows"),
                        }
                    }
                    break;
                }
            }
            self.metrics.window_progress(
                before,
                (self.windows.counts(), self.windows.pairing_counts()),
                self.windows.open_windows(),
                self.windows.pending_pairs(),
                self.windows.closed_through_ms(),
                queue.len(),
            );
        }
        if let Some(detect) = &mut self.detect {
            detect.snapshot();
        }
        info!("window stage stopped");
    }

    fn ingest(&mut self, decoded: Decoded, origin: Option<KafkaOrigin>) {
        // OTLP receivers are one input; each Kafka topic-partition is its own.
        let input = origin
            .as_ref()
            .map_or(0, |o| input_id(&o.topic, o.partition));
        if decoded.signal == Signal::Logs
            && let Some(detect) = &mut self.detect
        {
            detect.on_logs(&decoded.batch);
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

    fn close_all(&mut self) {
        match self.windows.close_all() {
            Ok(closed) => {
                if self.publish(closed) {
                    self.offsets.release_processed();
                }
            }
            Err(error) => warn!(%error, "failed to close windows"),
        }
    }

    /// Hands closed windows to the history and the store; false when they (or windows
    /// whose earlier write failed, retried here first) could not be persisted.
    fn publish(&mut self, closed: Vec<WindowTables>) -> bool {
        if closed.is_empty() && self.unpersisted.is_empty() {
            return true;
        }
        self.windows.evict_stale_series(self.retain_ms);
        let closed_through = self.windows.closed_through_ms();
        let horizon = closed_through - self.retain_ms;
        if let Some(detect) = &mut self.detect {
            for window in &closed {
                let opened = detect.on_window(window);
                self.metrics.detection(
                    &opened,
                    detect.series_count(),
                    detect.take_untracked(),
                    detect.template_count(),
                );
            }
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
