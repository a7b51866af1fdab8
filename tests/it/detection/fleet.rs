//! The synthetic fleet the detection tests replay: 20 services in a chain to a
//! database, with daily (and, on a [`Clock`] that asks for it, weekly) seasonality
//! and noise, as closed windows in the real table schemas (built with the real
//! builders) plus real OTLP log records for the template miner; and the faults
//! that can be injected into service [`FAULTY`].

use crate::limits::kv;
use homeostat::detect::FailureClass;
use homeostat::loadgen::fleet::Rng;
use homeostat::window::WindowTables;
use homeostat::window::tables::{Cell, TableBuilder};
use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;

pub const WINDOW_MS: i64 = 60_000;
pub const DAY_WINDOWS: i64 = 24 * 60;
const DAY_MS: i64 = 24 * 3_600_000;

/// The windows' size and the traffic's weekly shape.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Window size.
    pub window_ms: i64,
    /// Traffic on Saturdays and Sundays as a share of weekday traffic (1.0: no
    /// weekly shape). The change ramps over 4 hours around midnight.
    pub weekend: f64,
    /// The window the fault starts in.
    pub fault_window: i64,
}

/// One-minute windows, no weekly shape: what most tests use.
pub const MINUTE: Clock = Clock {
    window_ms: WINDOW_MS,
    weekend: 1.0,
    fault_window: FAULT_WINDOW,
};

impl Clock {
    /// The traffic multiplier at `t_ms` after [`START_MS`] (a Monday): a daily sine
    /// times the weekend share.
    fn season(&self, t_ms: i64) -> f64 {
        let day = (t_ms.rem_euclid(DAY_MS)) as f64 / DAY_MS as f64;
        let daily = 1.0 + 0.5 * (std::f64::consts::TAU * (day - 0.25)).sin();
        // Hours into the week, and how far into the weekend (0..1, ramps of 4 h
        // centred on Saturday 00:00 and Monday 00:00).
        let mut hours = (t_ms.rem_euclid(7 * DAY_MS)) as f64 / 3_600_000.0;
        if hours < 2.0 {
            hours += 7.0 * 24.0; // Monday's first two hours end Sunday's ramp down.
        }
        let ramp = |centre: f64| ((hours - centre + 2.0) / 4.0).clamp(0.0, 1.0);
        let weekend = ramp(5.0 * 24.0) - ramp(7.0 * 24.0);
        daily * (1.0 - (1.0 - self.weekend) * weekend)
    }
}
/// 2024-03-04 00:00 UTC, a Monday.
pub const START_MS: i64 = 1_709_510_400_000;
pub const SERVICES: usize = 20;
/// The fault starts 10 hours in (the runs with a fault stop 10 windows later).
pub const FAULT_WINDOW: i64 = 10 * 60;
pub const FAULTY: usize = 7;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
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
    /// Memory climbing 2% an hour (compounded), each sample jittering by 1%.
    SlowLeak,
    /// The database fails: its caller's calls to it fail, and the errors travel
    /// up the chain to the five services before it.
    DatabaseDown,
    /// The service's requests end early (a wrong answer, an exception): 70% of
    /// them skip its call to the next service, and no span carries an error.
    EarlyReturn,
    /// The quiet dependency every service calls a couple of times a window
    /// (too few calls for the edge's quantiles to be its own) answers 20 times
    /// slower, called three times and once in turn.
    QuietDependencySlow,
}

impl Fault {
    pub fn class(self) -> FailureClass {
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
            Fault::SlowLeak => FailureClass::MemoryLeak,
            Fault::DatabaseDown => FailureClass::DependencyFailure,
            Fault::EarlyReturn => FailureClass::TrafficAnomaly,
            Fault::QuietDependencySlow => FailureClass::DependencyFailure,
        }
    }
}

/// Deterministic noise: the load generator's generator.
pub type Noise = Rng;

/// Poisson-like count with mean `lambda`.
fn count(noise: &mut Noise, lambda: f64) -> u64 {
    (lambda + lambda.sqrt() * noise.normal()).round().max(0.0) as u64
}

/// The edge cells of a window's `calls` to a quiet dependency (none: no row),
/// each 20 ms times `slower` with a heavy tail
/// (log-normal, sigma 0.5), so the edge's "p99" is just its slowest call and
/// its p50 the nearest-rank median, as the window stage computes them.
fn quiet_calls(noise: &mut Noise, calls: u64, slower: f64) -> Option<[Cell; 7]> {
    let mut ms: Vec<f64> = (0..calls)
        .map(|_| 20.0 * slower * (0.5 * noise.normal()).exp())
        .collect();
    ms.sort_by(f64::total_cmp);
    let (median, slowest) = (*ms.get(ms.len().saturating_sub(1) / 2)?, *ms.last()?);
    Some([
        Cell::U64(Some(calls)),
        Cell::U64(Some(0)),
        Cell::F64(Some(0.0)),
        Cell::F64(Some(median)),
        Cell::F64(Some(slowest)),
        Cell::F64(Some(ms.iter().sum::<f64>() / calls as f64)),
        Cell::U64(None),
    ])
}

pub fn name(i: usize) -> String {
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
    let mut noise = Noise::new(((w as u64) << 8) ^ i as u64);
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
pub fn window(
    w: i64,
    fault: Option<Fault>,
    noise: &mut Noise,
) -> (WindowTables, Vec<ResourceLogs>) {
    window_at(MINUTE, w, fault, noise)
}

/// Window `w` on `clock`.
pub fn window_at(
    clock: Clock,
    w: i64,
    fault: Option<Fault>,
    noise: &mut Noise,
) -> (WindowTables, Vec<ResourceLogs>) {
    let start = START_MS + w * clock.window_ms;
    let end = start + clock.window_ms;
    let season = clock.season(start - START_MS);
    let since = w - clock.fault_window;
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
        let cascade = active(Fault::DatabaseDown) && i + 5 >= SERVICES;
        if cascade {
            error_p = 0.25;
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
        let skipped = if faulty && active(Fault::EarlyReturn) {
            0.7
        } else {
            0.0
        };
        let calls = count(noise, lambda * 0.8 * (1.0 - skipped)).max(1);
        let mut edge_p = 0.005;
        let mut edge_latency = 40.0 * (1.0 + 0.05 * noise.normal());
        if (faulty && active(Fault::Dependency)) || cascade {
            edge_p = 0.4;
            edge_latency *= 3.0;
        }
        let edge_errors = (calls as f64 * edge_p + (calls as f64 * edge_p).sqrt() * noise.normal())
            .round()
            .clamp(0.0, calls as f64);
        edge.row(
            &["shop", &svc, "prod", "shop", &callee, "prod", kind, ""],
            &[
                Cell::U64(Some(calls)),
                Cell::U64(Some(edge_errors as u64)),
                Cell::F64(Some(edge_errors / calls as f64)),
                Cell::F64(Some(edge_latency * 0.4)),
                Cell::F64(Some(edge_latency)),
                Cell::F64(Some(edge_latency * 0.5)),
                Cell::U64(None),
            ],
        );
        let slow = faulty && active(Fault::QuietDependencySlow);
        // While slow: 3 calls, then 1, and so on (a window of one call between
        // two of three judges nothing and must not break the run).
        let calls = if slow {
            if since % 2 == 0 { 3 } else { 1 }
        } else {
            count(noise, 2.0)
        };
        if let Some(cells) = quiet_calls(noise, calls, if slow { 20.0 } else { 1.0 }) {
            edge.row(
                &[
                    "shop", &svc, "prod", "shop", "mailer", "prod", "service", "",
                ],
                &cells,
            );
        }

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
        let jitter = if faulty && matches!(fault, Some(Fault::NoisyLeak | Fault::SlowLeak)) {
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
        if faulty && active(Fault::SlowLeak) {
            let hours = (since + 1) as f64 * clock.window_ms as f64 / 3_600_000.0;
            memory *= 1.02f64.powf(hours);
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

pub fn record(start_ms: i64, severity: &str, body: &str) -> LogRecord {
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
