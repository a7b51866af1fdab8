//! The detection stage over 24 hours of event time: a synthetic fleet of 20
//! services with daily seasonality and noise raises no anomaly at all; the same
//! traffic with one fault injected (10 hours in) is detected, with the right
//! class, within 3 windows of the fault's onset, and nothing fires before it.
//!
//! The stage is driven with closed windows as the window stage hands them over
//! (the tables' real schemas, built with the real builders) and with real OTLP
//! log records for the template miner. Windows are 1 minute here (1,440 a day) to
//! keep the run short; the detectors count windows, not seconds.

use std::collections::BTreeMap;

use homeostat::columnar::logs;
use homeostat::detect::{Anomaly, AnomalyLog, Catalogue, DetectStage, FailureClass, StageParams};
use homeostat::loadgen::fleet::Rng;
use homeostat::window::WindowTables;
use homeostat::window::tables::{Cell, TableBuilder};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;

const WINDOW_MS: i64 = 60_000;
const DAY_WINDOWS: i64 = 24 * 60;
/// 2024-03-04 00:00 UTC, a Monday.
const START_MS: i64 = 1_709_510_400_000;
const SERVICES: usize = 20;
/// The fault starts 10 hours in (the runs with a fault stop 10 windows later).
const FAULT_WINDOW: i64 = 10 * 60;
const FAULTY: usize = 7;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    ErrorSpike,
    Latency,
    Saturation,
    MemoryLeak,
    Dependency,
    TrafficSurge,
    QueueBacklog,
    Deadlock,
    LogPattern,
    Generic,
    /// CPU utilization climbing toward its limit, still below the threshold.
    SaturationTrend,
    /// Memory climbing 40% in 30 windows, each sample jittering by 1%: no
    /// staircase, a trend.
    NoisyLeak,
    /// Not a fault: every service's memory follows a garbage-collector sawtooth
    /// (15% up over 17 windows, then back) all day.
    GcSawtooth,
    /// Errors from 0.5% to 3% of requests.
    SubtleErrors,
    /// One operation (30% of the traffic) 1.5 times slower.
    SubtleLatency,
    /// A known log template (a slow-query warning, seen in a third of the
    /// windows) logged 40 times a window.
    TemplateBurst,
}

impl Fault {
    fn class(self) -> FailureClass {
        match self {
            Fault::ErrorSpike => FailureClass::ErrorSpike,
            Fault::Latency => FailureClass::LatencyDegradation,
            Fault::Saturation => FailureClass::Saturation,
            Fault::MemoryLeak => FailureClass::MemoryLeak,
            Fault::Dependency => FailureClass::DependencyFailure,
            Fault::TrafficSurge => FailureClass::TrafficAnomaly,
            Fault::QueueBacklog => FailureClass::QueueBacklog,
            Fault::Deadlock => FailureClass::Deadlock,
            Fault::LogPattern => FailureClass::LogPattern,
            Fault::Generic => FailureClass::Generic,
            Fault::SaturationTrend => FailureClass::Saturation,
            Fault::NoisyLeak | Fault::GcSawtooth => FailureClass::MemoryLeak,
            Fault::SubtleErrors => FailureClass::ErrorSpike,
            Fault::SubtleLatency => FailureClass::LatencyDegradation,
            Fault::TemplateBurst => FailureClass::LogPattern,
        }
    }
}

/// Deterministic noise: the load generator's generator.
type Noise = Rng;

/// Poisson-like count with mean `lambda`.
fn count(noise: &mut Noise, lambda: f64) -> u64 {
    (lambda + lambda.sqrt() * noise.normal()).round().max(0.0) as u64
}

fn name(i: usize) -> String {
    format!("svc-{i:02}")
}

/// The rate, error and duration cells of a service or operation row: quantiles
/// around 30 / 80 / 150 ms times `latency`, with noise.
fn red_cells(requests: u64, errors: f64, latency: f64, noise: &mut Noise) -> [Cell; 8] {
    let (p50, p95, p99) = (
        30.0 * latency,
        80.0 * latency * (1.0 + 0.03 * noise.normal()),
        150.0 * latency * (1.0 + 0.05 * noise.normal()),
    );
    [
        Cell::U64(Some(requests)),
        Cell::U64(Some(errors as u64)),
        Cell::F64(Some(errors / requests as f64)),
        Cell::F64(Some(p50)),
        Cell::F64(Some(p95)),
        Cell::F64(Some(p99)),
        Cell::F64(Some(p50 * 1.2)),
        Cell::F64(Some(p99 * 1.5)),
    ]
}

/// The service's two operations (70% and 30% of its requests), with noise of
/// their own (a stream per window and service, so the fleet's other series are
/// the same with or without them); `slow` makes the second 1.5 times slower.
fn operation_rows(
    table: &mut TableBuilder,
    svc: &str,
    w: i64,
    i: usize,
    requests: u64,
    slow: bool,
) {
    let mut noise = Noise::new(homeostat::loadgen::fleet::mix64(
        ((w as u64) << 8) ^ i as u64,
    ));
    for (op, share, base) in [("GET /items", 0.7, 1.0), ("POST /checkout", 0.3, 1.6)] {
        let n = ((requests as f64 * share).round() as u64).max(1);
        let errors = count(&mut noise, n as f64 * 0.01).min(n);
        let mut latency = base * (1.0 + 0.03 * noise.normal());
        if slow && op == "POST /checkout" {
            latency *= 1.5;
        }
        table.row(
            &["shop", svc, "prod", op],
            &red_cells(n, errors as f64, latency, &mut noise),
        );
    }
}

/// One closed window of the fleet, and its log records.
fn window(w: i64, fault: Option<Fault>, noise: &mut Noise) -> (WindowTables, Vec<ResourceLogs>) {
    let start = START_MS + w * WINDOW_MS;
    let end = start + WINDOW_MS;
    let day = (w % DAY_WINDOWS) as f64 / DAY_WINDOWS as f64;
    let season = 1.0 + 0.5 * (std::f64::consts::TAU * (day - 0.25)).sin();
    let since = w - FAULT_WINDOW;
    let active = |f: Fault| fault == Some(f) && since >= 0;

    let mut service = TableBuilder::new(0, start, end);
    let mut operation = TableBuilder::new(1, start, end);
    let mut edge = TableBuilder::new(2, start, end);
    let mut metric = TableBuilder::new(3, start, end);
    let mut log = TableBuilder::new(4, start, end);
    let mut resource_logs = Vec::new();
    for i in 0..SERVICES {
        let svc = name(i);
        let faulty = i == FAULTY;
        let base = 300.0 + 40.0 * i as f64;
        let mut lambda = base * season;
        if faulty && active(Fault::TrafficSurge) {
            lambda *= 4.0;
        }
        if faulty && active(Fault::Deadlock) {
            lambda *= 0.02;
        }
        let requests = count(noise, lambda).max(1);
        let mut error_p = 0.01;
        if faulty && fault == Some(Fault::SubtleErrors) {
            error_p = if since >= 0 { 0.03 } else { 0.005 };
        }
        if faulty && active(Fault::ErrorSpike) {
            error_p = 0.3;
        }
        if faulty && active(Fault::Dependency) {
            error_p = 0.2;
        }
        let errors = (requests as f64 * error_p
            + (requests as f64 * error_p).sqrt() * noise.normal())
        .round()
        .clamp(0.0, requests as f64);
        let mut latency = 1.0 + 0.03 * noise.normal();
        if faulty && active(Fault::Latency) {
            latency *= 4.0;
        }
        if faulty && active(Fault::Deadlock) {
            latency *= 20.0;
        }
        service.row(
            &["shop", &svc, "prod"],
            &red_cells(requests, errors, latency, noise),
        );

        operation_rows(
            &mut operation,
            &svc,
            w,
            i,
            requests,
            active(Fault::SubtleLatency) && faulty,
        );

        // Calls to the next service, the last one to its database.
        let (callee, kind) = if i + 1 < SERVICES {
            (name(i + 1), "service")
        } else {
            ("postgres".to_string(), "database")
        };
        let calls = count(noise, lambda * 0.8).max(1);
        let mut edge_p = 0.005;
        let mut edge_latency = 40.0 * (1.0 + 0.05 * noise.normal());
        if faulty && active(Fault::Dependency) {
            edge_p = 0.4;
            edge_latency *= 3.0;
        }
        let edge_errors = (calls as f64 * edge_p + (calls as f64 * edge_p).sqrt() * noise.normal())
            .round()
            .clamp(0.0, calls as f64);
        edge.row(
            &[&svc, &callee, kind],
            &[
                Cell::U64(Some(calls)),
                Cell::U64(Some(edge_errors as u64)),
                Cell::F64(Some(edge_errors / calls as f64)),
                Cell::F64(Some(edge_latency * 0.4)),
                Cell::F64(Some(edge_latency)),
                Cell::F64(Some(edge_latency * 0.5)),
            ],
        );

        let mut gauge = |name: &str, unit: &str, kind: &str, value: f64| {
            let row = [
                Cell::U64(Some(4)),
                Cell::F64(Some(value)),
                Cell::F64(Some(value)),
                Cell::F64(Some(value)),
                Cell::F64(Some(value)),
                Cell::F64(None),
                Cell::F64(None),
                Cell::U64(None),
                Cell::F64(None),
                Cell::F64(None),
            ];
            metric.row(&["shop", &svc, "prod", name, kind, unit, ""], &row);
        };
        let jitter = if faulty && fault == Some(Fault::NoisyLeak) {
            0.01
        } else {
            0.003
        };
        let mut memory = 2.0e8 * (1.0 + jitter * noise.normal());
        if faulty && active(Fault::MemoryLeak) {
            memory *= 1.02f64.powi(since as i32 + 1);
        }
        if faulty && active(Fault::NoisyLeak) {
            memory *= 1.4f64.powf((since + 1) as f64 / 30.0);
        }
        if fault == Some(Fault::GcSawtooth) {
            memory *= 1.0 + 0.15 * (w % 17) as f64 / 17.0;
        }
        gauge("process.memory.usage", "By", "gauge", memory);
        let mut cpu = (0.2 + 0.15 * season + 0.02 * noise.normal()).clamp(0.0, 1.0);
        if faulty && active(Fault::SaturationTrend) {
            cpu = 0.72 + 0.03 * since as f64;
        }
        gauge("system.cpu.utilization", "1", "gauge", cpu);
        let mut connections = (10.0 + 2.0 * noise.normal()).max(0.0).round();
        if faulty && active(Fault::Saturation) {
            connections = 95.0;
        }
        gauge(
            "db.client.connections.usage",
            "{connection}",
            "sum",
            connections,
        );
        gauge("db.client.connections.max", "{connection}", "sum", 100.0);
        let mut lag = (50.0 + 5.0 * noise.normal()).max(0.0).round();
        if faulty && active(Fault::QueueBacklog) {
            lag = 50.0 * 1.5f64.powi(since as i32 + 1);
        }
        gauge("messaging.kafka.consumer.lag", "{message}", "gauge", lag);
        let mut inflight = (5.0 * season + noise.normal()).max(0.0).round();
        if faulty && active(Fault::Deadlock) {
            inflight = 40.0 + 10.0 * since as f64;
        }
        gauge("http.server.active_requests", "{request}", "sum", inflight);
        let mut hit_ratio = 0.9 + 0.005 * noise.normal();
        if faulty && active(Fault::Generic) {
            hit_ratio = 0.5;
        }
        gauge("app.cache.hit_ratio", "1", "gauge", hit_ratio);

        // Logs: a steady mix of templates, plus the fault's new error.
        let mut records = Vec::new();
        let info = count(noise, lambda / 50.0);
        for k in 0..info {
            records.push(record(
                start,
                "INFO",
                &format!(
                    "handled order {} for user u{} in {} ms",
                    w * 1000 + k as i64,
                    k % 7,
                    20 + k
                ),
            ));
        }
        let slow_queries = if faulty && active(Fault::TemplateBurst) {
            40
        } else {
            u64::from(noise.unit() < 0.3)
        };
        for k in 0..slow_queries {
            records.push(record(
                start,
                "WARN",
                &format!(
                    "slow query on table orders took {} ms",
                    200 + (w + k as i64) % 50
                ),
            ));
        }
        if faulty && active(Fault::LogPattern) {
            for k in 0..5 {
                records.push(record(
                    start,
                    "ERROR",
                    &format!("deadlock detected on table orders lock {}", 1000 + k),
                ));
            }
        }
        for severity in ["INFO", "WARN", "ERROR"] {
            let count = records
                .iter()
                .filter(|r| r.severity_text == severity)
                .count() as u64;
            if count > 0 {
                log.row(&["shop", &svc, "prod", severity], &[Cell::U64(Some(count))]);
            }
        }
        resource_logs.push(ResourceLogs {
            resource: Some(Resource {
                attributes: vec![kv("service.name", &svc), kv("service.namespace", "shop")],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: records,
                ..Default::default()
            }],
            schema_url: String::new(),
        });
    }
    let tables = WindowTables {
        start_ms: start,
        end_ms: end,
        batches: [
            service.finish().expect("service"),
            operation.finish().expect("operation"),
            edge.finish().expect("edge"),
            metric.finish().expect("metric"),
            log.finish().expect("log"),
        ],
    };
    (tables, resource_logs)
}

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_string())),
        }),
        ..Default::default()
    }
}

fn record(start_ms: i64, severity: &str, body: &str) -> LogRecord {
    let number = match severity {
        "ERROR" => 17,
        "WARN" => 13,
        _ => 9,
    };
    LogRecord {
        time_unix_nano: (start_ms as u64 + 30_000) * 1_000_000,
        severity_number: number,
        severity_text: severity.to_string(),
        body: Some(AnyValue {
            value: Some(any_value::Value::StringValue(body.to_string())),
        }),
        ..Default::default()
    }
}

/// Runs 24 hours of fleet traffic (or, with `fault`, until 10 windows after
/// [`FAULT_WINDOW`]) through a
/// detection stage with the built-in catalogue and the shipped parameters.
fn run(fault: Option<Fault>) -> Vec<Anomaly> {
    let windows = if fault.is_some() {
        FAULT_WINDOW + 10
    } else {
        DAY_WINDOWS
    };
    run_for(fault, windows)
}

/// Runs `windows` windows of fleet traffic with `fault` (see [`run`]).
fn run_for(fault: Option<Fault>, windows: i64) -> Vec<Anomaly> {
    let config =
        homeostat::config::Config::from_toml_str("[window]\nsize = \"1m\"\nretain = \"1h\"\n")
            .expect("config");
    let params: StageParams = homeostat::engine::stage_params(&config);
    let log = AnomalyLog::new(10_000);
    let mut stage = DetectStage::new(
        Catalogue::built_in().expect("catalogue"),
        params,
        log.clone(),
    );
    let mut noise = Noise::new(0x9E37_79B9_7F4A_7C15 ^ fault.map_or(0, |f| f as u64 + 1));
    for w in 0..windows {
        let (tables, resource_logs) = window(w, fault, &mut noise);
        let decoded = logs::to_arrow(&resource_logs, 0).expect("logs");
        stage.on_logs(&decoded.batch);
        stage.on_window(&tables);
    }
    log.snapshot()
}

fn describe(anomalies: &[Anomaly]) -> String {
    let mut by: BTreeMap<String, usize> = BTreeMap::new();
    for a in anomalies {
        *by.entry(format!(
            "{} {} @{} {}",
            a.class,
            a.key,
            (a.onset_ms - START_MS) / WINDOW_MS,
            a.detail
        ))
        .or_default() += 1;
    }
    by.into_iter()
        .map(|(k, n)| format!("  {n} x {k}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_day_of_steady_seasonal_traffic_raises_no_anomaly() {
    let anomalies = run(None);
    assert!(
        anomalies.is_empty(),
        "{} anomalies on steady traffic:\n{}",
        anomalies.len(),
        describe(&anomalies)
    );
}

fn detects(fault: Fault) {
    let anomalies = run(Some(fault));
    let onset = START_MS + FAULT_WINDOW * WINDOW_MS;
    let early: Vec<Anomaly> = anomalies
        .iter()
        .filter(|a| a.detected_ms < onset)
        .cloned()
        .collect();
    assert!(
        early.is_empty(),
        "{fault:?}: anomalies before the fault:\n{}",
        describe(&early)
    );
    let hit = anomalies.iter().find(|a| {
        a.class == fault.class()
            && a.key.service == name(FAULTY)
            && a.detected_ms - onset <= 3 * WINDOW_MS
            && a.onset_ms >= onset
    });
    assert!(
        hit.is_some(),
        "{fault:?}: no {} anomaly on {} within 3 windows of onset; got:\n{}",
        fault.class(),
        name(FAULTY),
        describe(&anomalies)
    );
}

#[test]
fn detects_an_error_spike() {
    detects(Fault::ErrorSpike);
}

#[test]
fn detects_latency_degradation() {
    detects(Fault::Latency);
}

#[test]
fn detects_saturation() {
    detects(Fault::Saturation);
}

#[test]
fn detects_a_memory_leak() {
    detects(Fault::MemoryLeak);
}

/// A leak that is no staircase: 40% in 30 windows under 1% jitter, so a third of
/// the steps fall. Found by its trend, within 15 windows.
#[test]
fn detects_a_noisy_memory_leak() {
    let anomalies = run_for(Some(Fault::NoisyLeak), FAULT_WINDOW + 30);
    let onset = START_MS + FAULT_WINDOW * WINDOW_MS;
    assert!(
        anomalies.iter().all(|a| a.detected_ms >= onset),
        "{}",
        describe(&anomalies)
    );
    let hit = anomalies.iter().find(|a| {
        a.class == FailureClass::MemoryLeak
            && a.key.service == name(FAULTY)
            && a.detected_ms - onset <= 15 * WINDOW_MS
    });
    assert!(
        hit.is_some(),
        "noisy leak missed:\n{}",
        describe(&anomalies)
    );
}

/// A healthy garbage-collector sawtooth on every service, all day: its ramps are
/// not leaks.
#[test]
fn a_gc_sawtooth_is_not_a_leak() {
    let anomalies = run_for(Some(Fault::GcSawtooth), DAY_WINDOWS);
    assert!(anomalies.is_empty(), "{}", describe(&anomalies));
}

/// Errors from 0.5% to 3%: small in absolute terms, six times the usual.
#[test]
fn detects_a_subtle_error_rise() {
    detects(Fault::SubtleErrors);
}

/// One operation of a service 1.5 times slower, the service's own quantiles
/// barely moved.
#[test]
fn detects_one_slower_operation() {
    detects(Fault::SubtleLatency);
}

/// A log template already known, suddenly frequent: the template-rate pattern.
#[test]
fn detects_a_burst_of_a_known_log_template() {
    detects(Fault::TemplateBurst);
}

#[test]
fn detects_a_dependency_failure() {
    detects(Fault::Dependency);
}

#[test]
fn detects_a_traffic_surge() {
    detects(Fault::TrafficSurge);
}

#[test]
fn detects_a_queue_backlog() {
    detects(Fault::QueueBacklog);
}

#[test]
fn detects_a_deadlock() {
    detects(Fault::Deadlock);
}

#[test]
fn detects_a_new_error_log_pattern() {
    detects(Fault::LogPattern);
}

#[test]
fn detects_a_generic_metric_anomaly() {
    detects(Fault::Generic);
}

#[test]
fn forecasts_saturation_before_the_limit_is_reached() {
    detects(Fault::SaturationTrend);
    let anomalies = run(Some(Fault::SaturationTrend));
    let forecast = anomalies
        .iter()
        .find(|a| a.class == FailureClass::Saturation && a.key.name == "system.cpu.utilization")
        .unwrap_or_else(|| panic!("no forecast:\n{}", describe(&anomalies)));
    assert!(
        forecast.observed < 0.9,
        "fired only at the threshold: {forecast:?}"
    );
    assert!(
        forecast.detail.contains("exhausted in"),
        "{}",
        forecast.detail
    );
}

/// Baselines survive a restart: a stage restored from the snapshot is `ready` at
/// once and keeps quiet on the same traffic.
#[test]
fn baselines_are_restored_from_the_snapshot() {
    let dir = tempfile::tempdir().expect("dir");
    let config = homeostat::config::Config::from_toml_str(&format!(
        "[window]\nsize = \"1m\"\nretain = \"1h\"\n[store]\npath = {:?}\n",
        dir.path().display().to_string()
    ))
    .expect("config");
    let params = homeostat::engine::stage_params(&config);
    let mut noise = Noise::new(42);
    let mut stage = DetectStage::new(
        Catalogue::built_in().expect("catalogue"),
        params.clone(),
        AnomalyLog::new(100),
    );
    for w in 0..60 {
        stage.on_window(&window(w, None, &mut noise).0);
    }
    stage.snapshot();
    let tracked = stage.series_count();
    drop(stage);
    let key = homeostat::detect::SeriesKey {
        service: name(3),
        signal: "service".into(),
        name: "error_rate".into(),
        attributes: "namespace=shop,environment=prod".into(),
    };
    let log = AnomalyLog::new(100);
    let mut restored = DetectStage::new(
        Catalogue::built_in().expect("catalogue"),
        params,
        log.clone(),
    );
    assert_eq!(restored.series_count(), tracked);
    assert_eq!(
        restored.baseline_state(&key, "error_rate"),
        Some(homeostat::detect::baseline::BaselineState::Ready)
    );
    for w in 60..120 {
        restored.on_window(&window(w, None, &mut noise).0);
    }
    assert!(log.is_empty(), "{}", describe(&log.snapshot()));
}

/// The `anomalies` table keeps its own retention (`detect.anomaly_retain`), not
/// the windows' (`window.retain`), and survives a restart through the snapshot.
#[test]
fn anomalies_outlive_the_window_retention_and_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let config = homeostat::config::Config::from_toml_str(&format!(
        "[window]\nsize = \"1m\"\nretain = \"1h\"\n[detect]\nanomaly_retain = \"3h\"\n\
         [store]\npath = {:?}\n",
        dir.path().display().to_string()
    ))
    .expect("config");
    let params = homeostat::engine::stage_params(&config);
    let fault = Some(Fault::ErrorSpike);
    let mut noise = Noise::new(7);
    let log = AnomalyLog::new(100);
    let mut stage = DetectStage::new(
        Catalogue::built_in().expect("catalogue"),
        params.clone(),
        log.clone(),
    );
    for w in 0..FAULT_WINDOW + 10 {
        stage.on_window(&window(w, fault, &mut noise).0);
    }
    // Two hours of healthy traffic: the episode ends, and outlives `window.retain`.
    for w in FAULT_WINDOW + 10..FAULT_WINDOW + 130 {
        stage.on_window(&window(w, None, &mut noise).0);
    }
    let before = log.snapshot();
    assert!(
        before.iter().any(|a| a.class == FailureClass::ErrorSpike),
        "{}",
        describe(&before)
    );
    assert!(before.iter().all(|a| a.ended_ms.is_some()));
    stage.snapshot();
    drop(stage);

    let log = AnomalyLog::new(100);
    let mut restored = DetectStage::new(
        Catalogue::built_in().expect("catalogue"),
        params,
        log.clone(),
    );
    assert_eq!(
        log.snapshot(),
        before,
        "the anomalies table after a restart"
    );
    // Past `detect.anomaly_retain` after they ended, they are gone.
    for w in FAULT_WINDOW + 130..FAULT_WINDOW + 320 {
        restored.on_window(&window(w, None, &mut noise).0);
    }
    let after = log.snapshot();
    assert!(
        after.iter().all(|a| !before.contains(a)),
        "{}",
        describe(&after)
    );
}

/// End to end: a real OpenTelemetry SDK sends spans over OTLP/gRPC to a running
/// engine; an error spike after the warm-up shows up in the `anomalies` SQL table
/// with its class, onset and the expected error rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_spike_sent_over_otlp_is_in_the_anomalies_table() {
    use opentelemetry::KeyValue as Attribute;
    use opentelemetry::trace::{Span, SpanKind, Status, Tracer, TracerProvider};
    use opentelemetry_otlp::{SpanExporter, WithExportConfig};
    use opentelemetry_sdk::Resource as SdkResource;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use std::time::{Duration, UNIX_EPOCH};

    let engine =
        crate::support::engine("[window]\nsize = \"1s\"\n[detect.baseline]\nwarmup = 20\n").await;
    let grpc = format!("http://{}", engine.grpc_addr);
    let base_ns = crate::support::aligned_past(30);
    const SPIKE: u64 = 25;
    tokio::task::spawn_blocking(move || {
        let exporter = SpanExporter::builder()
            .with_tonic()
            .with_endpoint(&grpc)
            .build()
            .expect("exporter");
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter)
            .with_resource(SdkResource::builder().with_service_name("checkout").build())
            .build();
        let tracer = provider.tracer("checkout");
        for second in 0..32u64 {
            for i in 0..20u64 {
                let start = UNIX_EPOCH
                    + Duration::from_nanos(base_ns + second * 1_000_000_000 + i * 40_000_000);
                let failed = if second >= SPIKE {
                    i < 12
                } else {
                    i < second % 3
                };
                let mut span = tracer
                    .span_builder("POST /pay")
                    .with_kind(SpanKind::Server)
                    .with_start_time(start)
                    .with_attributes(vec![Attribute::new("http.route", "/pay")])
                    .start(&tracer);
                if failed {
                    span.set_status(Status::error("upstream refused"));
                }
                span.end_with_timestamp(start + Duration::from_millis(20 + i));
            }
        }
        provider.shutdown().expect("flush spans");
    })
    .await
    .expect("client ran");
    engine.flush().await;
    let rows = crate::support::sql(
        engine.api_addr,
        "SELECT class, pattern, service, name, onset, detected, observed, expected, score FROM anomalies ORDER BY detected",
    )
    .await;
    let spike = rows
        .iter()
        .find(|r| crate::support::text(r, "class") == "error_spike")
        .unwrap_or_else(|| panic!("no error_spike among {rows:?}"));
    assert_eq!(crate::support::text(spike, "service"), "checkout");
    assert_eq!(crate::support::text(spike, "name"), "error_rate");
    assert!(
        (crate::support::num(spike, "observed") - 0.6).abs() < 1e-9,
        "{spike}"
    );
    assert!(crate::support::num(spike, "expected") < 0.15, "{spike}");
    assert!(crate::support::num(spike, "score") > 0.9999, "{spike}");
    // Windows are 1 s: onset is the spike's first second, detected one window later
    // (two windows in a row).
    let onset_ms = (base_ns / 1_000_000 + SPIKE * 1000) as i64;
    let onset = spike
        .get("onset")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string();
    let detected = spike
        .get("detected")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string();
    let ms = |text: &str| homeostat::detect::replay::parse_timestamp(text).map(|s| s * 1000);
    assert_eq!(ms(&onset), Some(onset_ms), "onset {onset}");
    assert_eq!(ms(&detected), Some(onset_ms + 1000), "detected {detected}");
    let exposition = crate::support::exposition(engine.api_addr).await;
    assert!(
        exposition.contains("homeostat_anomalies_total{class=\"error_spike\"} 1"),
        "{exposition}"
    );
    engine.shutdown().await;
}
