//! A synthetic fleet and the OTLP requests it emits.
//!
//! Services form a call tree (`fanout` children each). Every service has several
//! HTTP operations; an operation calls a random subset of its children's
//! operations, some services own a database, some publish to a queue that another
//! service consumes. Durations are log-normal around a per-operation median, and
//! failures propagate to every caller. Each [`Round`] is one batch of whole traces
//! from the whole fleet (one resource per service), with the log records and metric
//! points those traces produce, encoded as OTLP protobuf.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span::SpanKind, status::StatusCode,
};
use prost::Message;
use rand::rngs::SmallRng;
use rand::{Rng as _, RngCore, SeedableRng};
use rand_distr::StandardNormal;

mod traces;
use traces::TraceGen;

/// Event time the templates are generated at; every timestamp is later patched
/// relative to it (see [`super::patch`]).
pub const TEMPLATE_EPOCH_NS: u64 = 1_600_000_000_123_456_789;

/// Shape of the fleet and of its traffic.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    /// Number of services.
    pub services: usize,
    /// HTTP operations per service.
    pub operations: usize,
    /// Children per service in the call tree.
    pub fanout: usize,
    /// Probability that an operation fails on its own (callers then fail too).
    pub error_ratio: f64,
    /// Median operation latency, milliseconds.
    pub latency_ms: f64,
    /// Log-normal sigma of latencies.
    pub latency_sigma: f64,
    /// Spans per traces request (whole traces are added until reached).
    pub batch_spans: usize,
    /// Log records per span.
    pub log_ratio: f64,
    /// Seed of everything random.
    pub seed: u64,
}

impl Default for FleetSpec {
    fn default() -> Self {
        FleetSpec {
            services: 20,
            operations: 4,
            fanout: 3,
            error_ratio: 0.01,
            latency_ms: 20.0,
            latency_sigma: 0.6,
            batch_spans: 512,
            log_ratio: 0.3,
            seed: 1,
        }
    }
}

/// A seedable generator for synthetic telemetry: rand's `SmallRng` (fast, not
/// cryptographic; one stream per seed within a build) and rand_distr's
/// normal, with the few draws the generators and the tests need.
#[derive(Debug, Clone)]
pub struct Rng(SmallRng);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(SmallRng::seed_from_u64(seed))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        self.0.random::<f64>()
    }

    /// Uniform in [0, n); 0 when n is 0.
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { self.0.random_range(0..n) }
    }

    /// Standard normal.
    pub fn normal(&mut self) -> f64 {
        self.0.sample(StandardNormal)
    }

    /// Log-normal with the given median and sigma.
    pub fn log_normal(&mut self, median: f64, sigma: f64) -> f64 {
        median * (sigma * self.normal()).exp()
    }

    /// Random id bytes, never all zero (an invalid OTLP id).
    fn id<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        self.0.fill_bytes(&mut out);
        if out.iter().all(|b| *b == 0) {
            out[0] = 1;
        }
        out
    }
}

const NAMES: [&str; 24] = [
    "frontend",
    "checkout",
    "cart",
    "payment",
    "shipping",
    "inventory",
    "catalog",
    "search",
    "users",
    "auth",
    "pricing",
    "recommend",
    "reviews",
    "notify",
    "email",
    "ledger",
    "fraud",
    "loyalty",
    "media",
    "session",
    "currency",
    "tax",
    "orders",
    "quotes",
];
const RESOURCES: [&str; 8] = [
    "items", "orders", "profile", "status", "batch", "search", "config", "history",
];
const METHODS: [&str; 4] = ["GET", "POST", "GET", "PUT"];
const DATABASES: [(&str, u16); 3] = [("postgresql", 5432), ("redis", 6379), ("mysql", 3306)];

#[derive(Debug, Clone)]
struct Operation {
    method: &'static str,
    route: String,
    name: String,
    median_ms: f64,
}

#[derive(Debug, Clone)]
struct Service {
    name: String,
    resource: Resource,
    operations: Vec<Operation>,
    children: Vec<usize>,
    database: Option<(&'static str, u16, String)>,
    /// (topic, consumer service)
    queue: Option<(String, usize)>,
}

/// The fleet: services, their call tree and their operations.
#[derive(Debug, Clone)]
pub struct Fleet {
    spec: FleetSpec,
    services: Vec<Service>,
}

/// One round of traffic: a traces request and the logs and metrics requests that
/// go with it, protobuf-encoded.
#[derive(Debug, Clone)]
pub struct Round {
    /// `ExportTraceServiceRequest`.
    pub traces: Vec<u8>,
    /// `ExportLogsServiceRequest` (empty when there are no log records).
    pub logs: Vec<u8>,
    /// `ExportMetricsServiceRequest`.
    pub metrics: Vec<u8>,
    /// Spans in `traces`.
    pub spans: u64,
    /// Log records in `logs`.
    pub log_records: u64,
    /// Data points in `metrics`.
    pub points: u64,
    /// Every trace id (16 bytes) in the round.
    pub trace_ids: Vec<[u8; 16]>,
    /// Every span id in the round.
    pub span_ids: Vec<[u8; 8]>,
    /// Every timestamp in the round.
    pub times: Vec<u64>,
    /// The latest timestamp in the round.
    pub last_time: u64,
}

fn kv(key: &str, value: impl Into<Value>) -> KeyValue {
    let value = match value.into() {
        Value::S(s) => any_value::Value::StringValue(s),
        Value::I(i) => any_value::Value::IntValue(i),
    };
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

enum Value {
    S(String),
    I(i64),
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::S(s.to_string())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::S(s)
    }
}
impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::I(i)
    }
}

impl Fleet {
    /// Builds the fleet described by `spec` (deterministic for a seed).
    pub fn new(spec: FleetSpec) -> Self {
        let mut rng = Rng::new(spec.seed);
        let n = spec.services.max(1);
        let fanout = spec.fanout.max(1);
        let mut services: Vec<Service> = (0..n)
            .map(|i| {
                let base = NAMES[i % NAMES.len()];
                let name = if i < NAMES.len() {
                    base.to_string()
                } else {
                    format!("{base}-{}", i / NAMES.len())
                };
                let version = format!("1.{}.{}", rng.below(20), rng.below(10));
                let pod = format!(
                    "{name}-{:08x}-{:05x}",
                    rng.next_u64() as u32,
                    rng.below(1 << 20)
                );
                let resource = Resource {
                    attributes: vec![
                        kv("service.name", name.as_str()),
                        kv("service.namespace", "loadgen"),
                        kv("service.version", version),
                        kv("service.instance.id", pod.clone()),
                        kv("deployment.environment.name", "loadgen"),
                        kv("k8s.namespace.name", "shop"),
                        kv("k8s.pod.name", pod),
                        kv("k8s.deployment.name", name.as_str()),
                        kv("k8s.node.name", format!("node-{}", i % 7)),
                        kv("telemetry.sdk.name", "opentelemetry"),
                        kv("telemetry.sdk.language", "rust"),
                        kv("telemetry.sdk.version", "0.33.0"),
                    ],
                    ..Default::default()
                };
                let operations = (0..spec.operations.max(1))
                    .map(|k| {
                        let method = METHODS[k % METHODS.len()];
                        let route = format!(
                            "/api/{name}/{}{}",
                            RESOURCES[(i + k) % RESOURCES.len()],
                            if k % 2 == 1 { "/{id}" } else { "" }
                        );
                        Operation {
                            method,
                            name: format!("{method} {route}"),
                            route,
                            median_ms: rng.log_normal(spec.latency_ms.max(0.01), 0.5),
                        }
                    })
                    .collect();
                let database = (i % 3 == 2 || ((i + 1) * fanout > n && i % 2 == 0)).then(|| {
                    let (system, port) = DATABASES[i % DATABASES.len()];
                    (system, port, format!("{name}_db"))
                });
                Service {
                    name,
                    resource,
                    operations,
                    children: Vec::new(),
                    database,
                    queue: None,
                }
            })
            .collect();
        for i in 1..n {
            services[(i - 1) / fanout].children.push(i);
        }
        for i in (0..n).filter(|i| i % 5 == 4) {
            let consumer = (i * 7 + 3) % n;
            if consumer != i {
                services[i].queue = Some((format!("{}.events", services[i].name), consumer));
            }
        }
        Fleet { spec, services }
    }

    /// The spec this fleet was built from.
    pub fn spec(&self) -> &FleetSpec {
        &self.spec
    }

    /// Service names, in index order.
    pub fn service_names(&self) -> Vec<String> {
        self.services.iter().map(|s| s.name.clone()).collect()
    }

    /// Generates round number `index` (deterministic for a seed and index).
    pub fn round(&self, index: u64) -> Round {
        let mut rng = Rng::new(self.spec.seed.wrapping_mul(0x100_0001) ^ (index + 1));
        let mut tg = TraceGen {
            fleet: self,
            rng: &mut rng,
            spans: vec![Vec::new(); self.services.len()],
            logs: vec![Vec::new(); self.services.len()],
            trace_ids: Vec::new(),
            span_ids: Vec::new(),
            times: Vec::new(),
            count: 0,
            budget: 0,
        };
        let target = self.spec.batch_spans.max(1);
        let mut start = TEMPLATE_EPOCH_NS;
        while tg.count < target {
            let trace_id: [u8; 16] = tg.rng.id();
            tg.trace_ids.push(trace_id);
            tg.budget = 400;
            let op = tg.rng.below(self.services[0].operations.len());
            let (end, _) = tg.server(0, op, &trace_id, None, start, false);
            // Traces overlap: the next starts a little after this one.
            start += (end - start) / 4 + 1_000;
        }
        let TraceGen {
            spans,
            logs,
            trace_ids,
            span_ids,
            mut times,
            count,
            ..
        } = tg;
        let last_time = times.iter().copied().max().unwrap_or(TEMPLATE_EPOCH_NS);
        let scope = InstrumentationScope {
            name: "homeostat-loadgen".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        };
        let resource_spans = spans
            .into_iter()
            .zip(&self.services)
            .filter(|(spans, _)| !spans.is_empty())
            .map(|(spans, service)| ResourceSpans {
                resource: Some(service.resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(scope.clone()),
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect();
        let mut log_records = 0;
        let resource_logs: Vec<ResourceLogs> = logs
            .into_iter()
            .zip(&self.services)
            .filter(|(logs, _)| !logs.is_empty())
            .map(|(log_records_of, service)| {
                log_records += log_records_of.len() as u64;
                ResourceLogs {
                    resource: Some(service.resource.clone()),
                    scope_logs: vec![ScopeLogs {
                        scope: Some(scope.clone()),
                        log_records: log_records_of,
                        ..Default::default()
                    }],
                    ..Default::default()
                }
            })
            .collect();
        let (resource_metrics, points) = self.metrics(&mut rng, last_time, &scope);
        times.push(last_time);
        times.push(last_time - 10_000_000_000);
        Round {
            traces: ExportTraceServiceRequest { resource_spans }.encode_to_vec(),
            logs: if resource_logs.is_empty() {
                Vec::new()
            } else {
                ExportLogsServiceRequest { resource_logs }.encode_to_vec()
            },
            metrics: ExportMetricsServiceRequest { resource_metrics }.encode_to_vec(),
            spans: count as u64,
            log_records,
            points,
            trace_ids,
            span_ids,
            times,
            last_time,
        }
    }

    /// Per service: a request-duration histogram per operation (delta), CPU and
    /// memory gauges, connection-pool usage for database owners, a delta counter of
    /// published messages for producers.
    fn metrics(
        &self,
        rng: &mut Rng,
        time: u64,
        scope: &InstrumentationScope,
    ) -> (Vec<ResourceMetrics>, u64) {
        let start = time - 10_000_000_000;
        let mut points = 0;
        let bounds = vec![
            5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 750.0, 1000.0, 2500.0, 5000.0,
        ];
        let resource_metrics = self
            .services
            .iter()
            .map(|service| {
                let histogram_points: Vec<HistogramDataPoint> = service
                    .operations
                    .iter()
                    .map(|op| {
                        let mut counts = vec![0u64; bounds.len() + 1];
                        let mut sum = 0.0;
                        let n = 20 + rng.below(80) as u64;
                        for _ in 0..n {
                            let v = rng.log_normal(op.median_ms, self.spec.latency_sigma);
                            sum += v;
                            let slot = bounds.partition_point(|b| *b < v);
                            counts[slot] += 1;
                        }
                        HistogramDataPoint {
                            attributes: vec![
                                kv("http.request.method", op.method),
                                kv("http.route", op.route.as_str()),
                                kv("http.response.status_code", 200),
                            ],
                            start_time_unix_nano: start,
                            time_unix_nano: time,
                            count: n,
                            sum: Some(sum),
                            bucket_counts: counts,
                            explicit_bounds: bounds.clone(),
                            ..Default::default()
                        }
                    })
                    .collect();
                points += histogram_points.len() as u64;
                let gauge =
                    |value: number_data_point::Value, attributes: Vec<KeyValue>| NumberDataPoint {
                        attributes,
                        start_time_unix_nano: 0,
                        time_unix_nano: time,
                        value: Some(value),
                        ..Default::default()
                    };
                let mut metrics = vec![
                    Metric {
                        name: "http.server.request.duration".into(),
                        unit: "ms".into(),
                        data: Some(metric::Data::Histogram(Histogram {
                            data_points: histogram_points,
                            aggregation_temporality: AggregationTemporality::Delta as i32,
                        })),
                        ..Default::default()
                    },
                    Metric {
                        name: "process.cpu.utilization".into(),
                        unit: "1".into(),
                        data: Some(metric::Data::Gauge(Gauge {
                            data_points: vec![gauge(
                                number_data_point::Value::AsDouble(0.2 + 0.3 * rng.unit()),
                                vec![],
                            )],
                        })),
                        ..Default::default()
                    },
                    Metric {
                        name: "process.memory.usage".into(),
                        unit: "By".into(),
                        data: Some(metric::Data::Gauge(Gauge {
                            data_points: vec![gauge(
                                number_data_point::Value::AsInt(
                                    300_000_000 + rng.below(50_000_000) as i64,
                                ),
                                vec![],
                            )],
                        })),
                        ..Default::default()
                    },
                ];
                points += 2;
                if let Some((system, _, db)) = &service.database {
                    metrics.push(Metric {
                        name: "db.client.connection.count".into(),
                        unit: "{connection}".into(),
                        data: Some(metric::Data::Gauge(Gauge {
                            data_points: ["used", "idle"]
                                .iter()
                                .map(|state| {
                                    gauge(
                                        number_data_point::Value::AsInt(rng.below(20) as i64),
                                        vec![
                                            kv("db.client.connection.state", *state),
                                            kv("db.client.connection.pool.name", db.as_str()),
                                            kv("db.system.name", *system),
                                        ],
                                    )
                                })
                                .collect(),
                        })),
                        ..Default::default()
                    });
                    points += 2;
                }
                if let Some((topic, _)) = &service.queue {
                    metrics.push(Metric {
                        name: "messaging.client.sent.messages".into(),
                        unit: "{message}".into(),
                        data: Some(metric::Data::Sum(Sum {
                            data_points: vec![NumberDataPoint {
                                attributes: vec![kv("messaging.destination.name", topic.as_str())],
                                start_time_unix_nano: start,
                                time_unix_nano: time,
                                value: Some(number_data_point::Value::AsInt(rng.below(500) as i64)),
                                ..Default::default()
                            }],
                            aggregation_temporality: AggregationTemporality::Delta as i32,
                            is_monotonic: true,
                        })),
                        ..Default::default()
                    });
                    points += 1;
                }
                ResourceMetrics {
                    resource: Some(service.resource.clone()),
                    scope_metrics: vec![ScopeMetrics {
                        scope: Some(scope.clone()),
                        metrics,
                        ..Default::default()
                    }],
                    ..Default::default()
                }
            })
            .collect();
        (resource_metrics, points)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_are_deterministic_and_sized() {
        let fleet = Fleet::new(FleetSpec::default());
        let a = fleet.round(3);
        let b = fleet.round(3);
        assert_eq!(a.traces, b.traces);
        assert!(a.spans >= 512 && a.spans < 512 + 400, "{}", a.spans);
        assert_ne!(fleet.round(4).traces, a.traces);
        let request = ExportTraceServiceRequest::decode(a.traces.as_slice()).expect("decode");
        let spans: usize = request
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        assert_eq!(spans as u64, a.spans);
        // Several services, with client, server, producer and consumer spans.
        assert!(request.resource_spans.len() > 3);
        let kinds: std::collections::BTreeSet<i32> = request
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .map(|s| s.kind)
            .collect();
        assert!(
            kinds.is_superset(&[2, 3, 4, 5].into_iter().collect()),
            "{kinds:?}"
        );
        assert!(a.log_records > 0 && a.points > 20);
    }
}
