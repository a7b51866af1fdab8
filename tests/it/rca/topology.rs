//! Topologies and the telemetry they send through the real OpenTelemetry SDK:
//! one tracer (and logger) provider per service, exporting OTLP/gRPC, with
//! explicit event times so tens of seconds of traffic take a few seconds.
//!
//! A request walks the call graph from an entry service: a SERVER span per
//! service, a CLIENT span per synchronous call (to a service, or a leaf with
//! `db.system` / `server.address`), a PRODUCER span per message whose CONSUMER
//! span (in the queue's consumer) starts after it and does not hold the caller.
//! Durations are log-normal around each node's own time; a failure fails every
//! synchronous caller up the chain.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use homeostat::loadgen::fleet::Rng;
use opentelemetry::Context;
use opentelemetry::KeyValue as Attribute;
use opentelemetry::logs::{AnyValue, LogRecord, Logger, LoggerProvider, Severity};
use opentelemetry::trace::{Span, SpanKind, Status, TraceContextExt, Tracer, TracerProvider};
use opentelemetry_otlp::{LogExporter, SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;

/// What a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Service,
    /// A database (`db.system`).
    Database(&'static str),
    /// An uninstrumented HTTP endpoint (`server.address`).
    External,
    /// A messaging destination; the consumer is named.
    Queue(&'static str),
}

/// One node: name, kind, own time in ms.
#[derive(Debug, Clone, Copy)]
pub struct Node {
    pub name: &'static str,
    pub kind: Kind,
    pub own_ms: f64,
}

/// A topology: nodes, calls (caller, callee) in order, entry services.
pub struct Topology {
    pub nodes: Vec<Node>,
    pub calls: Vec<(&'static str, &'static str)>,
    pub entries: Vec<&'static str>,
}

/// What goes wrong, where, from which second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// The node's own time is multiplied.
    Latency(&'static str, f64),
    /// The node fails this share of its requests.
    Errors(&'static str, f64),
    /// The service logs errors; its spans stay as they were.
    ErrorLogs(&'static str),
    /// The service's version changes and nothing else does.
    Deploy(&'static str),
    /// The service's pod is starved of CPU: only its CPU metrics show it.
    CpuStarved(&'static str),
    /// The node answers this share of its requests wrongly, at once and
    /// without an error status; a caller given a wrong answer makes no more
    /// calls for that request and answers as if nothing happened (an early
    /// return). No span anywhere says "error".
    WrongAnswers(&'static str, f64),
}

impl Fault {
    pub fn node(self) -> &'static str {
        match self {
            Fault::Latency(n, _)
            | Fault::Errors(n, _)
            | Fault::ErrorLogs(n)
            | Fault::Deploy(n)
            | Fault::CpuStarved(n)
            | Fault::WrongAnswers(n, _) => n,
        }
    }
}

impl Topology {
    fn node(&self, name: &str) -> Node {
        *self
            .nodes
            .iter()
            .find(|n| n.name == name)
            .expect("node in topology")
    }

    fn callees(&self, name: &str) -> impl Iterator<Item = Node> + '_ {
        let name = name.to_string();
        self.calls
            .iter()
            .filter(move |(from, _)| *from == name)
            .map(|(_, to)| self.node(to))
    }

    pub fn services(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.nodes
            .iter()
            .filter(|n| n.kind == Kind::Service)
            .map(|n| n.name)
    }
}

/// The SDK providers of every service (version 1.0.0, and 1.1.0 for a deploy).
struct Providers {
    tracers: HashMap<(&'static str, bool), SdkTracerProvider>,
    loggers: HashMap<&'static str, SdkLoggerProvider>,
}

fn resource(service: &'static str, version: &str) -> Resource {
    Resource::builder()
        .with_service_name(service)
        .with_attribute(Attribute::new("service.version", version.to_string()))
        .with_attribute(Attribute::new("service.namespace", "golden"))
        .build()
}

impl Providers {
    fn new(topology: &Topology, grpc: &str) -> Self {
        let mut tracers = HashMap::new();
        let mut loggers = HashMap::new();
        for service in topology.services() {
            for deployed in [false, true] {
                let exporter = SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(grpc)
                    .build()
                    .expect("span exporter");
                let version = if deployed { "1.1.0" } else { "1.0.0" };
                let provider = SdkTracerProvider::builder()
                    .with_simple_exporter(exporter)
                    .with_resource(resource(service, version))
                    .build();
                tracers.insert((service, deployed), provider);
            }
            let exporter = LogExporter::builder()
                .with_tonic()
                .with_endpoint(grpc)
                .build()
                .expect("log exporter");
            let provider = SdkLoggerProvider::builder()
                .with_simple_exporter(exporter)
                .with_resource(resource(service, "1.0.0"))
                .build();
            loggers.insert(service, provider);
        }
        Self { tracers, loggers }
    }

    /// Exports what is batched now.
    fn flush(&self) {
        for provider in self.tracers.values() {
            let _ = provider.force_flush();
        }
        for provider in self.loggers.values() {
            let _ = provider.force_flush();
        }
    }

    fn shutdown(self) {
        for provider in self.tracers.into_values() {
            provider.force_flush().expect("flush spans");
            provider.shutdown().expect("stop spans");
        }
        for provider in self.loggers.into_values() {
            provider.force_flush().expect("flush logs");
            provider.shutdown().expect("stop logs");
        }
    }
}

/// One run of traffic.
pub struct Traffic<'a> {
    pub topology: &'a Topology,
    pub base: SystemTime,
    pub seconds: u64,
    pub per_second: u64,
    pub fault: Option<(Fault, u64)>,
    /// Once this says so, the fault is gone (a remedy took effect).
    pub healed: Option<&'a (dyn Fn() -> bool + Sync)>,
    /// Live pacing: after each second of traffic, export it and wait this long.
    pub pace: Option<Duration>,
}

struct Walk<'a> {
    traffic: &'a Traffic<'a>,
    providers: &'a Providers,
    rng: Rng,
    second: u64,
}

impl Walk<'_> {
    fn active(&self, fault: impl Fn(Fault) -> Option<f64>) -> Option<f64> {
        let (f, from) = self.traffic.fault?;
        if self.second < from || self.traffic.healed.is_some_and(|healed| healed()) {
            return None;
        }
        fault(f)
    }

    fn own_ms(&mut self, node: Node) -> f64 {
        let slow = self
            .active(|f| match f {
                Fault::Latency(n, x) if n == node.name => Some(x),
                _ => None,
            })
            .unwrap_or(1.0);
        self.rng.log_normal(node.own_ms, 0.15) * slow
    }

    fn fails(&mut self, node: Node) -> bool {
        let share = self
            .active(|f| match f {
                Fault::Errors(n, p) if n == node.name => Some(p),
                _ => None,
            })
            .unwrap_or(0.0);
        self.rng.unit() < share + 0.002
    }

    /// Whether the node answers this request wrongly (the rng is drawn only
    /// while such a fault is on, so the other scenarios' draws are as before).
    fn answers_wrongly(&mut self, node: Node) -> bool {
        let share = self.active(|f| match f {
            Fault::WrongAnswers(n, p) if n == node.name => Some(p),
            _ => None,
        });
        share.is_some_and(|p| self.rng.unit() < p)
    }

    fn tracer(&self, service: &'static str) -> opentelemetry_sdk::trace::SdkTracer {
        let deployed = self
            .active(|f| matches!(f, Fault::Deploy(n) if n == service).then_some(1.0))
            .is_some();
        self.providers.tracers[&(service, deployed)].tracer("golden")
    }

    /// Serves a request in `service` from `start` under `parent`; returns its
    /// end, whether it failed and whether it answered wrongly.
    fn serve(
        &mut self,
        service: Node,
        kind: SpanKind,
        start: SystemTime,
        parent: &Context,
    ) -> (SystemTime, bool, bool) {
        let tracer = self.tracer(service.name);
        let mut span = tracer
            .span_builder(format!("{} handle", service.name))
            .with_kind(kind)
            .with_start_time(start)
            .start_with_context(&tracer, parent);
        let cx = Context::new().with_remote_span_context(span.span_context().clone());
        let mut at = start + ms(self.own_ms(service));
        let mut failed = self.fails(service);
        let wrong = self.answers_wrongly(service);
        let callees: Vec<Node> = if wrong {
            Vec::new()
        } else {
            self.traffic.topology.callees(service.name).collect()
        };
        for callee in callees {
            let (end, bad, given_up) = self.call(service.name, callee, at, &cx);
            at = end;
            failed |= bad;
            if given_up {
                break;
            }
        }
        if failed {
            span.set_status(Status::error("request failed"));
        }
        span.end_with_timestamp(at);
        (at, failed, wrong)
    }

    /// One call from `caller` to `callee` starting at `start`: its end, whether
    /// it failed, whether the answer was wrong.
    fn call(
        &mut self,
        caller: &'static str,
        callee: Node,
        start: SystemTime,
        cx: &Context,
    ) -> (SystemTime, bool, bool) {
        let tracer = self.tracer(caller);
        let (kind, attributes) = match callee.kind {
            Kind::Service => (
                SpanKind::Client,
                vec![Attribute::new("peer.service", callee.name)],
            ),
            Kind::Database(system) => (
                SpanKind::Client,
                vec![
                    Attribute::new("db.system", system),
                    Attribute::new("db.namespace", callee.name),
                ],
            ),
            Kind::External => (
                SpanKind::Client,
                vec![Attribute::new("server.address", callee.name)],
            ),
            Kind::Queue(_) => (
                SpanKind::Producer,
                vec![Attribute::new("messaging.destination.name", callee.name)],
            ),
        };
        let mut span = tracer
            .span_builder(format!("call {}", callee.name))
            .with_kind(kind)
            .with_start_time(start)
            .with_attributes(attributes)
            .start_with_context(&tracer, cx);
        let child = Context::new().with_remote_span_context(span.span_context().clone());
        let (end, failed, wrong) = match callee.kind {
            Kind::Service => {
                let (end, failed, wrong) =
                    self.serve(callee, SpanKind::Server, start + ms(0.5), &child);
                (end + ms(0.5), failed, wrong)
            }
            Kind::Queue(consumer) => {
                let consumer = self.traffic.topology.node(consumer);
                let sent = start + ms(self.own_ms(callee));
                // The consumer picks the message up later; the caller goes on.
                self.serve(consumer, SpanKind::Consumer, sent + ms(5.0), &child);
                (sent, false, false)
            }
            Kind::Database(_) | Kind::External => {
                let failed = self.fails(callee);
                let wrong = self.answers_wrongly(callee);
                (start + ms(self.own_ms(callee)), failed, wrong)
            }
        };
        if failed {
            span.set_status(Status::error("call failed"));
        }
        span.end_with_timestamp(end);
        (end, failed, wrong)
    }

    /// Every service's pod CPU gauges for the second at `at`, sent with the
    /// generated OTLP/gRPC metrics client (the SDK stamps metric points with the
    /// wall clock, which an event-time replay cannot use).
    fn metrics(&mut self, at: SystemTime, client: &mut MetricsClient) {
        use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
        use opentelemetry_proto::tonic::common::v1::{AnyValue as Value, KeyValue, any_value};
        use opentelemetry_proto::tonic::metrics::v1::{
            Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, metric,
            number_data_point,
        };
        use opentelemetry_proto::tonic::resource::v1::Resource as OtlpResource;
        let text = |k: &str, v: &str| KeyValue {
            key: k.into(),
            value: Some(Value {
                value: Some(any_value::Value::StringValue(v.into())),
            }),
            ..Default::default()
        };
        let time = at.duration_since(UNIX_EPOCH).expect("clock").as_nanos() as u64;
        let starved = self.active(|f| matches!(f, Fault::CpuStarved(_)).then_some(1.0));
        let mut resource_metrics = Vec::new();
        let services: Vec<&'static str> = self.traffic.topology.services().collect();
        for service in services {
            let hit =
                starved.is_some() && self.traffic.fault.is_some_and(|(f, _)| f.node() == service);
            let mut gauge = |name: &str, base: f64| {
                let value = if hit {
                    0.97
                } else {
                    base + 0.02 * self.rng.normal()
                };
                Metric {
                    name: name.into(),
                    unit: "1".into(),
                    data: Some(metric::Data::Gauge(Gauge {
                        data_points: vec![NumberDataPoint {
                            time_unix_nano: time,
                            value: Some(number_data_point::Value::AsDouble(value)),
                            ..Default::default()
                        }],
                    })),
                    ..Default::default()
                }
            };
            let metrics = vec![
                gauge("container.cpu.utilization", 0.35),
                gauge("k8s.pod.cpu.limit_utilization", 0.4),
            ];
            resource_metrics.push(ResourceMetrics {
                resource: Some(OtlpResource {
                    attributes: vec![
                        text("service.name", service),
                        text("service.namespace", "golden"),
                        text("k8s.pod.name", &format!("{service}-7d9f8-x2x4q")),
                    ],
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            });
        }
        let request = ExportMetricsServiceRequest { resource_metrics };
        client
            .handle
            .block_on(client.client.export(request))
            .expect("metrics accepted");
    }

    fn logs(&mut self, at: SystemTime) {
        let logs = self.active(|f| matches!(f, Fault::ErrorLogs(_)).then_some(1.0));
        for service in self.traffic.topology.services() {
            let logger = self.providers.loggers[service].logger("golden");
            let failing =
                logs.is_some() && self.traffic.fault.is_some_and(|(f, _)| f.node() == service);
            let lines = if failing { 12 } else { 2 };
            for i in 0..lines {
                let mut record = logger.create_log_record();
                record.set_timestamp(at + ms(i as f64 * 40.0));
                if failing {
                    record.set_severity_number(Severity::Error);
                    record.set_body(AnyValue::from(format!(
                        "payment gateway rejected token {} with code 4{}",
                        self.rng.below(100_000),
                        self.rng.below(10)
                    )));
                } else {
                    record.set_severity_number(Severity::Info);
                    record.set_body(AnyValue::from(format!(
                        "handled request {} in {} ms",
                        self.rng.below(100_000),
                        self.rng.below(50)
                    )));
                }
                logger.emit(record);
            }
        }
    }
}

fn ms(value: f64) -> Duration {
    Duration::from_micros((value.max(0.0) * 1000.0) as u64)
}

/// The generated OTLP/gRPC metrics client, driven from a blocking thread.
struct MetricsClient {
    handle: tokio::runtime::Handle,
    client: opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient<
        tonic::transport::Channel,
    >,
}

/// Sends the traffic to `grpc` (blocking: call from `spawn_blocking`).
pub fn send(traffic: &Traffic<'_>, grpc: &str, seed: u64) {
    use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
    let providers = Providers::new(traffic.topology, grpc);
    let handle = tokio::runtime::Handle::current();
    let client = handle
        .block_on(MetricsServiceClient::connect(grpc.to_string()))
        .expect("metrics client");
    let mut metrics = MetricsClient { handle, client };
    let mut walk = Walk {
        traffic,
        providers: &providers,
        rng: Rng::new(seed),
        second: 0,
    };
    let gap = 1000.0 / traffic.per_second as f64;
    for second in 0..traffic.seconds {
        walk.second = second;
        let at = traffic.base + Duration::from_secs(second);
        walk.logs(at);
        walk.metrics(at, &mut metrics);
        for i in 0..traffic.per_second {
            for entry in &traffic.topology.entries {
                let node = traffic.topology.node(entry);
                walk.serve(
                    node,
                    SpanKind::Server,
                    at + ms(i as f64 * gap),
                    &Context::new(),
                );
            }
        }
        if let Some(pace) = traffic.pace {
            providers.flush();
            std::thread::sleep(pace);
        }
    }
    providers.shutdown();
}

/// Event time `seconds` seconds ago, on a whole second.
pub fn past(seconds: u64) -> SystemTime {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    UNIX_EPOCH + Duration::from_secs(now - seconds)
}
