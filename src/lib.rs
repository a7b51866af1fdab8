//! # Homeostat
//!
//! A streaming telemetry engine that heals the systems it watches. This crate is the
//! engine: it ingests OpenTelemetry traces, metrics and logs, aggregates them into
//! event-time windows held as Arrow record batches, detects anomalies in them
//! against per-series baselines, and serves windows and anomalies over SQL.
//!
//! ```text
//!  OTLP gRPC :4317 ─┐
//!  OTLP HTTP :4318 ─┼─> ingest ──> columnar ──> window ──────────> store (Arrow IPC)
//!  Kafka otlp_*   ──┘   decode     Arrow        event-time          │
//!                       + limits   batches      aggregates ──> history ──> api: SQL (DataFusion),
//!                                                    │                      health, /metrics
//!                                                    └──> detect: baselines + catalogue ──> anomalies
//! ```
//!
//! One stage, one module, in the order the data flows:
//!
//! - [`ingest`]: OTLP gRPC/HTTP receivers and the Kafka consumer; size limits,
//!   decoding, backpressure, acknowledgements.
//! - [`columnar`]: OTLP protobuf -> Arrow batches with fixed schemas.
//! - [`window`]: event-time tumbling windows, watermarks, lateness, pairing of
//!   spans into call edges, per-window tables.
//! - [`flow`]: how stages connect: bounded channels of data and flushes, one
//!   runner loop, shutdown in pipeline order.
//! - [`pipeline`]: the window stage: one bounded queue in, closed windows out
//!   to history, store and detection, Kafka offsets released once durable.
//! - [`detect`]: per-series anomaly scores on window values, a stage of its own;
//!   `homeostat replay`.
//! - [`store`]: embedded persistence of closed windows and the checkpoint.
//! - [`incident`]: anomalies grouped into incidents on the service graph.
//! - [`read_model`]: the tables stages publish for SQL.
//! - [`persist`]: small state files (incidents, deployments) under `store.path`.
//! - [`api`]: HTTP health, Prometheus self-metrics and SQL over the read model.
//! - [`config`]: one typed configuration.
//! - [`self_metrics`]: the engine's own Prometheus metrics, named in one place.
//! - [`engine`]: wires the stages together and runs them until shutdown.
//! - [`loadgen`]: a synthetic fleet's OTLP traffic, for benchmarks.
//! - [`demo`]: `homeostat demo`, the closed loop on a simulated shop.

pub mod api;
pub mod bus;
pub mod columnar;
pub mod config;
pub mod demo;
pub mod detect;
pub mod engine;
pub mod executor;
pub mod flow;
pub mod incident;
pub mod ingest;
pub mod loadgen;
pub mod models;
pub mod persist;
pub mod pipeline;
pub mod read_model;
pub mod remediate;
pub mod self_metrics;
pub mod store;
pub mod window;
