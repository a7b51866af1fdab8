//! Wires the stages together and runs them until shutdown.
//!
//! Shutdown order keeps "nothing lost": receivers stop first (in-flight requests
//! finish), the window stage drains its queue and persists what closed, then the
//! last durable Kafka offsets are committed, and the API stops last.

mod http_server;
mod remediation;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

use http_server::serve;

use crate::api::{self, ApiState};
use crate::config::Config;
use crate::detect::{AnomalyLog, Catalogue, DetectStage, DetectTask, StageParams};
use crate::flow;
use crate::incident::{IncidentLog, IncidentParams, IncidentStage};
use crate::ingest::kafka::KafkaIngest;
use crate::ingest::{OtlpIntake, otlp_grpc, otlp_http};
use crate::pipeline::{History, OffsetTracker, PipelineMessage, WindowStage};
use crate::read_model::ReadModel;
use crate::self_metrics::SelfMetrics;

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A listener could not bind (address in use, permission).
    #[error("cannot listen for {what} on {addr}: {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The store could not be opened or read.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The failure-pattern catalogue is invalid.
    #[error(transparent)]
    Catalogue(#[from] crate::detect::catalogue::CatalogueError),
    /// The Kafka client could not be created (bad settings).
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// A state file (incidents, deployments) could not be loaded.
    #[error("state file {0}")]
    State(#[from] crate::persist::StateFileError),
    /// Two stages published a table of the same name (a wiring defect).
    #[error(transparent)]
    Tables(#[from] crate::read_model::DuplicateTable),
    /// The playbooks are invalid.
    #[error(transparent)]
    Playbooks(#[from] crate::remediate::playbook::PlaybookError),
    /// The action bus could not be set up.
    #[error("action bus: {0}")]
    Bus(#[from] crate::bus::BusError),
    /// The in-process executor could not start (its journal, its drivers).
    #[error(transparent)]
    Executor(#[from] crate::executor::ExecutorError),
    /// The embedded gRPC descriptors for reflection did not load (a build defect).
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] otlp_grpc::ReflectionError),
}

/// Rows of the `baselines` table (about 200 bytes each).
const BAND_ROWS: usize = 200_000;

/// A running engine.
pub struct Engine {
    /// Bound OTLP/gRPC address.
    pub grpc_addr: SocketAddr,
    /// Bound OTLP/HTTP address.
    pub http_addr: SocketAddr,
    /// Bound API address.
    pub api_addr: SocketAddr,
    /// Closed windows.
    pub history: History,
    /// Self-metrics.
    pub metrics: Arc<SelfMetrics>,
    queue: mpsc::Sender<PipelineMessage>,
    receivers_stop: CancellationToken,
    stage_stop: CancellationToken,
    api_stop: CancellationToken,
    receivers: Vec<JoinHandle<()>>,
    stage: JoinHandle<()>,
    /// The detection stage, when on; it stops after the window stage.
    detect: Option<JoinHandle<()>>,
    /// Remediation, when on; it stops after the incident stage.
    remediation: Option<remediation::Remediation>,
    api: JoinHandle<()>,
    kafka: Option<Arc<KafkaIngest>>,
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, EngineError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| EngineError::Bind { what, addr, source })
}

fn local_addr(listener: &TcpListener, fallback: SocketAddr) -> SocketAddr {
    listener.local_addr().unwrap_or(fallback)
}

/// The incident stage's parameters from the configuration.
pub fn incident_params(config: &Config) -> IncidentParams {
    let i = &config.incident;
    IncidentParams {
        window_ms: config.window.size.as_millis().max(1) as i64,
        join_windows: i64::from(i.join_windows),
        max_join_windows: i64::from(i.max_join_windows),
        hops: i.hops as usize,
        resolve_windows: i64::from(i.resolve_windows),
        reopen_windows: i64::from(i.reopen_windows),
        max_incidents: i.max_incidents,
        retain_ms: i.retain.as_millis().min(i64::MAX as u128) as i64,
        edge_ttl_ms: i.edge_ttl.as_millis().min(i64::MAX as u128) as i64,
        max_edges: i.max_edges,
        history_windows: i.history_windows,
        max_history_series: i.max_history_series,
        min_anomalies: i.min_anomalies,
    }
}

/// The detection stage's parameters from the configuration.
pub fn stage_params(config: &Config) -> StageParams {
    let d = &config.detect;
    StageParams {
        baseline: d.baseline.clone(),
        univariate: d.univariate.clone(),
        window_ms: config.window.size.as_millis().max(1) as i64,
        max_series: d.max_series,
        max_univariate_series: d.max_univariate_series,
        max_templates: d.max_templates,
        template_similarity: d.template_similarity,
        template_warmup: d.template_warmup,
        deploy_windows: d.deploy_windows,
        snapshot: (!config.store.path.as_os_str().is_empty())
            .then(|| config.store.path.join("detect-snapshot.json")),
        snapshot_every: d.snapshot_every,
        anomaly_retain_ms: d.anomaly_retain.as_millis().min(i64::MAX as u128) as i64,
        max_future_ms: config
            .window
            .max_future_skew
            .as_millis()
            .min(i64::MAX as u128) as i64,
    }
}

impl Engine {
    /// Binds every listener and starts every stage.
    pub async fn start(config: Config) -> Result<Engine, EngineError> {
        let metrics = Arc::new(SelfMetrics::new());
        let history = History::default();
        let anomalies = AnomalyLog::new(config.detect.max_anomalies);
        let tables = ReadModel::default();
        history.register(&tables)?;
        tables.register(Arc::new(anomalies.clone()))?;
        let offsets = OffsetTracker::new();
        let (queue, inbox) = mpsc::channel(config.pipeline.queue_capacity);
        let mut window_stage = WindowStage::new(
            &config.window,
            &config.store,
            history.clone(),
            offsets.clone(),
            metrics.clone(),
        )?
        .watching(&queue);
        tables.register(Arc::new(window_stage.deployment_log()))?;
        if config.kafka_enabled() {
            window_stage = window_stage.from_kafka();
        }
        if !config.store.path.as_os_str().is_empty() {
            window_stage =
                window_stage.deployments_at(config.store.path.join("deployments.json"))?;
        }
        let mut detect = None;
        let mut remediation = None;
        let incidents = IncidentLog::default();
        if config.detect.enabled {
            let catalogue = Catalogue::load(&config.detect.catalogue)?;
            info!(source = %catalogue.source, patterns = catalogue.patterns.len(), "failure-pattern catalogue loaded");
            let bands = crate::detect::bands::BandLog::new(BAND_ROWS);
            tables.register(Arc::new(bands.clone()))?;
            let task = DetectTask::new(
                DetectStage::new(catalogue, stage_params(&config), anomalies.clone())
                    .with_bands(bands),
                metrics.clone(),
            );
            let (events, events_inbox) = mpsc::channel(config.pipeline.queue_capacity);
            window_stage = window_stage.with_downstream();
            tables.register(Arc::new(incidents.clone()))?;
            let (findings, findings_inbox) = mpsc::channel(config.pipeline.queue_capacity);
            let mut incident_stage =
                IncidentStage::new(incident_params(&config), incidents.clone());
            if !config.store.path.as_os_str().is_empty() {
                incident_stage =
                    incident_stage.stored_at(&config.store.path.join("incidents.redb"))?;
            }
            // Each stops when the stage before it drops its outlet, after its last
            // output.
            let never = CancellationToken::new;
            let enabled = config.incident.enabled;
            if enabled && config.remediation.enabled {
                remediation = Some(remediation::Remediation::start(&config, &tables).await?);
            }
            let outlet = remediation.as_ref().map(|r| r.incidents.clone());
            let run_incidents = flow::run(incident_stage, findings_inbox, outlet, never());
            let run_detect = flow::run(task, events_inbox, enabled.then_some(findings), never());
            detect = Some((
                events,
                tokio::spawn(async move {
                    let incidents = enabled.then(|| tokio::spawn(run_incidents));
                    drop(run_detect.await);
                    if let Some(incidents) = incidents {
                        drop(incidents.await);
                    }
                }),
            ));
        }
        let grpc_listener = bind("OTLP/gRPC", config.otlp.grpc_addr).await?;
        let http_listener = bind("OTLP/HTTP", config.otlp.http_addr).await?;
        let api_listener = bind("API", config.api.addr).await?;
        let grpc_addr = local_addr(&grpc_listener, config.otlp.grpc_addr);
        let http_addr = local_addr(&http_listener, config.otlp.http_addr);
        let api_addr = local_addr(&api_listener, config.api.addr);

        let stage_stop = CancellationToken::new();
        // Weak: the API must not keep detection's inbox open at shutdown.
        let detection_feedback = detect.as_ref().map(|(events, _)| events.downgrade());
        let remediation_log = remediation.as_ref().map_or_else(
            || crate::remediate::log::RemediationLog::new(1),
            |r| r.log.clone(),
        );
        let (outlet, detect) = match detect {
            Some((events, task)) => (Some(events), Some(task)),
            None => (None, None),
        };
        let run = flow::run(window_stage, inbox, outlet, stage_stop.clone());
        let stage = tokio::spawn(async move { drop(run.await) });

        let receivers_stop = CancellationToken::new();
        let intake = OtlpIntake::new(
            queue.clone(),
            config.otlp.max_request_bytes,
            metrics.clone(),
        );
        let mut receivers = vec![
            serve(
                grpc_listener,
                otlp_grpc::router(intake.clone()).await?,
                receivers_stop.clone(),
                "otlp-grpc",
            ),
            serve(
                http_listener,
                otlp_http::router(intake),
                receivers_stop.clone(),
                "otlp-http",
            ),
        ];

        let kafka = if config.kafka_enabled() {
            let kafka = Arc::new(KafkaIngest::new(
                &config.kafka,
                offsets.clone(),
                metrics.clone(),
                config.otlp.max_request_bytes,
            )?);
            let runner = kafka.clone();
            let (queue, stop) = (queue.clone(), receivers_stop.clone());
            receivers.push(tokio::spawn(async move { runner.run(queue, stop).await }));
            info!(brokers = %config.kafka.brokers, group = %config.kafka.group_id, "kafka ingestion on");
            Some(kafka)
        } else {
            None
        };

        let ready = Arc::new(AtomicBool::new(false));
        let api_stop = CancellationToken::new();
        let api = serve(
            api_listener,
            api::query::with_grpc(
                api::router(ApiState {
                    tables,
                    metrics: metrics.clone(),
                    ready: ready.clone(),
                    max_result_rows: config.api.max_result_rows,
                }),
                api::query::QueryService {
                    incidents: incidents.clone(),
                    anomalies,
                    stop: api_stop.clone(),
                    remediations: remediation_log.clone(),
                },
                api::remediation::RemediationService {
                    log: remediation_log,
                    control: remediation.as_ref().map(|r| r.inbox.clone()),
                    token: config.api.control_token.clone(),
                    incidents,
                    detection: detection_feedback,
                },
            )
            .await?,
            api_stop.clone(),
            "api",
        );
        ready.store(true, Ordering::SeqCst);
        info!(%grpc_addr, %http_addr, %api_addr, "homeostat running");
        Ok(Engine {
            grpc_addr,
            http_addr,
            api_addr,
            history,
            metrics,
            queue,
            receivers_stop,
            stage_stop,
            api_stop,
            receivers,
            stage,
            detect,
            remediation,
            api,
            kafka,
        })
    }

    /// Closes every open window now and waits until they are queryable.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.queue.send(flow::Message::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Stops gracefully: receivers, then the window stage, detection, the API.
    pub async fn shutdown(self) {
        self.receivers_stop.cancel();
        for receiver in self.receivers {
            let _ = receiver.await;
        }
        drop(self.queue);
        self.stage_stop.cancel();
        let _ = self.stage.await;
        if let Some(detect) = self.detect {
            let _ = detect.await;
        }
        if let Some(remediation) = self.remediation {
            remediation.stopped().await;
        }
        if let Some(kafka) = &self.kafka {
            kafka.commit().await;
        }
        self.api_stop.cancel();
        let _ = self.api.await;
        info!("homeostat stopped");
    }
}
