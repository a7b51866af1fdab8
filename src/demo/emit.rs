//! The fleet's instrumentation: every service has its own OpenTelemetry SDK
//! providers (a tracer provider per deployed version, a meter provider) that
//! export OTLP/gRPC to the engine, as a real service's SDK would.
//!
//! Spans carry explicit start and end times (a request's duration comes from
//! the model, not from sleeping), stamped on the wall clock the metrics are
//! stamped on too. A tick's requests arrived during the tick just past, and
//! each span is ended (and so exported) at the first tick after its end time,
//! as a real service's SDK sends a span once it ends: telemetry never arrives
//! before the time it is stamped with, so the engine's watermark does not run
//! ahead of the wall clock. The traffic loop runs on a blocking thread: the
//! SDK's simple span processor exports synchronously, inside the runtime's
//! context.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{MetricExporter, SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, Span};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal, Poisson};

use super::model::{BASE_MEMORY, Fleet, Kind, MEMORY_LIMIT, Node, TOPOLOGY, node};

/// Namespace and environment of every demo service.
pub const NAMESPACE: &str = "shop";
pub const ENVIRONMENT: &str = "demo";
/// How long a call to a failing host takes before it gives up, ms.
const TIMEOUT_MS: f64 = 1500.0;

/// The SDK providers of the fleet.
pub struct Instruments {
    endpoint: String,
    tracers: HashMap<(&'static str, String), SdkTracerProvider>,
    meters: Vec<SdkMeterProvider>,
}

fn resource(service: &'static str, version: Option<&str>) -> Resource {
    let mut builder = Resource::builder()
        .with_service_name(service)
        .with_attribute(KeyValue::new("service.namespace", NAMESPACE))
        .with_attribute(KeyValue::new("deployment.environment.name", ENVIRONMENT))
        .with_attribute(KeyValue::new("service.instance.id", format!("{service}-0")))
        .with_attribute(KeyValue::new("k8s.namespace.name", NAMESPACE))
        .with_attribute(KeyValue::new("k8s.deployment.name", service));
    if let Some(version) = version {
        builder = builder.with_attribute(KeyValue::new("service.version", version.to_string()));
    }
    builder.build()
}

impl Instruments {
    /// Meter providers for every service, reading the shared fleet state every
    /// `interval`; tracer providers are made per version as versions appear.
    pub fn new(
        endpoint: &str,
        fleet: &Arc<Mutex<Fleet>>,
        interval: Duration,
    ) -> Result<Self, opentelemetry_otlp::ExporterBuildError> {
        let mut meters = Vec::new();
        for n in TOPOLOGY.iter().filter(|n| n.kind == Kind::Service) {
            let exporter = MetricExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()?;
            let reader = PeriodicReader::builder(exporter)
                .with_interval(interval)
                .build();
            let provider = SdkMeterProvider::builder()
                .with_reader(reader)
                .with_resource(resource(n.name, None))
                .build();
            register_gauges(&provider, n.name, fleet);
            meters.push(provider);
        }
        Ok(Instruments {
            endpoint: endpoint.to_string(),
            tracers: HashMap::new(),
            meters,
        })
    }

    fn tracer(&mut self, service: &'static str, version: &str) -> SdkTracer {
        let key = (service, version.to_string());
        if let Some(provider) = self.tracers.get(&key) {
            return provider.tracer("homeostat-demo");
        }
        let provider = match SpanExporter::builder()
            .with_tonic()
            .with_endpoint(&self.endpoint)
            .build()
        {
            Ok(exporter) => SdkTracerProvider::builder()
                .with_simple_exporter(exporter)
                .with_resource(resource(service, Some(version)))
                .build(),
            // Cannot happen for an http:// endpoint; spans then go nowhere.
            Err(_) => SdkTracerProvider::builder().build(),
        };
        let tracer = provider.tracer("homeostat-demo");
        self.tracers.insert(key, provider);
        tracer
    }

    /// Flushes and stops every provider.
    pub fn shutdown(self) {
        for provider in self.tracers.into_values() {
            let _ = provider.force_flush();
            let _ = provider.shutdown();
        }
        for provider in self.meters {
            let _ = provider.force_flush();
            let _ = provider.shutdown();
        }
    }
}

/// What a gauge reads from the fleet's state for its service.
type Reading = fn(&Fleet, &str) -> f64;

/// Every service's resource gauges: name, unit, reading.
const GAUGES: &[(&str, &str, Reading)] = &[
    ("process.memory.usage", "By", |f, s| {
        f.services.get(s).map_or(0.0, |s| s.memory)
    }),
    ("process.memory.limit", "By", |_, _| MEMORY_LIMIT),
    // The runtime's heap: most of the process's memory, with a jitter of its own.
    ("runtime.heap.used", "By", |f, s| {
        f.services.get(s).map_or(0.0, |s| {
            0.7 * s.memory + 0.01 * BASE_MEMORY * (f.clock * 1.7).sin()
        })
    }),
    ("runtime.heap.limit", "By", |_, _| 0.75 * MEMORY_LIMIT),
    ("process.cpu.utilization", "1", |f, s| {
        f.services.get(s).map_or(0.0, |s| s.cpu)
    }),
];

/// The queue consumer's gauges.
const CONSUMER_GAUGES: &[(&str, &str, Reading)] = &[
    ("messaging.queue.depth", "{message}", |f, _| {
        f.queue.len() as f64
    }),
    ("messaging.consumer.lag", "s", |f, _| f.queue_age()),
];

/// The service's gauges, observed from the shared state at each export.
fn register_gauges(provider: &SdkMeterProvider, service: &'static str, fleet: &Arc<Mutex<Fleet>>) {
    let meter = provider.meter("homeostat-demo");
    let consumes = TOPOLOGY
        .iter()
        .any(|n| matches!(n.kind, Kind::Queue { consumer } if consumer == service));
    let extra: &[(&str, &str, Reading)] = if consumes { CONSUMER_GAUGES } else { &[] };
    for &(name, unit, reading) in GAUGES.iter().chain(extra) {
        let fleet = fleet.clone();
        let _ = meter
            .f64_observable_gauge(name)
            .with_unit(unit)
            .with_callback(move |observer| {
                if let Ok(fleet) = fleet.lock() {
                    observer.observe(reading(&fleet, service), &[]);
                }
            })
            .build();
    }
}

/// One tick's traffic: spans through the SDK, counts for the model.
pub struct Traffic {
    rng: StdRng,
    /// Durations are divided by the demo's speed, like its clock.
    compress: f64,
    /// Spans whose requests are still under way.
    pending: Pending,
}

/// Spans ended in the model and not yet exported: a real SDK exports a span
/// when it ends, so each waits for the wall clock to pass its end. A min-heap
/// by (end, order of ending), so a tick releases the due spans without
/// sorting those still under way.
#[derive(Default)]
struct Pending {
    heap: BinaryHeap<Reverse<Due>>,
    seq: u64,
}

/// One span under way, ordered by its end, then by when the model ended it.
struct Due {
    end: SystemTime,
    seq: u64,
    span: Span,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        (self.end, self.seq) == (other.end, other.seq)
    }
}

impl Eq for Due {}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.end, self.seq).cmp(&(other.end, other.seq))
    }
}

impl Pending {
    fn push(&mut self, end: SystemTime, span: Span) {
        self.seq += 1;
        let seq = self.seq;
        self.heap.push(Reverse(Due { end, seq, span }));
    }

    /// Ends (exports) the spans due by `now` (all with `None`), earliest
    /// first, so a parent follows its children.
    fn release(&mut self, now: Option<SystemTime>) {
        while let Some(Reverse(due)) = self.heap.peek() {
            if now.is_some_and(|now| due.end > now) {
                break;
            }
            if let Some(Reverse(mut due)) = self.heap.pop() {
                due.span.end_with_timestamp(due.end);
            }
        }
    }
}

/// What one request left behind.
struct Visit {
    end: SystemTime,
    failed: bool,
}

impl Traffic {
    pub fn new(seed: u64, speed: f64) -> Self {
        Traffic {
            compress: 1.0 / speed.max(1.0),
            rng: StdRng::seed_from_u64(seed),
            pending: Pending::default(),
        }
    }

    /// Ends every span still under way (the demo is stopping).
    pub fn flush(&mut self) {
        self.pending.release(None);
    }

    /// Sends `dt` seconds of requests against `snapshot` (the fleet as the tick
    /// began) and then lets the consumer work; returns requests per service.
    pub fn tick(
        &mut self,
        dt: f64,
        entry_rate: f64,
        fleet: &Arc<Mutex<Fleet>>,
        instruments: &mut Instruments,
    ) -> BTreeMap<&'static str, f64> {
        let snapshot = match fleet.lock() {
            Ok(f) => f.snapshot(),
            Err(_) => return BTreeMap::new(),
        };
        let mut walk = Walk {
            fleet: &snapshot,
            sink: Sink {
                instruments: &mut *instruments,
                pending: &mut self.pending,
            },
            rng: &mut self.rng,
            counts: BTreeMap::new(),
            sent: Vec::new(),
            compress: self.compress,
        };
        let requests = Poisson::new(entry_rate * dt).map_or(0.0, |p| p.sample(walk.rng));
        // The tick's requests arrived during the wall-clock tick just past
        // (`dt` is model time: the clock runs `speed` times faster).
        let wall_dt = dt * self.compress;
        let tick_start = SystemTime::now() - Duration::from_secs_f64(wall_dt);
        for _ in 0..requests as u64 {
            let offset = Duration::from_secs_f64(walk.rng.random_range(0.0..wall_dt));
            if let Some(entry) = node("frontend") {
                walk.serve(
                    entry,
                    SpanKind::Server,
                    tick_start + offset,
                    &Context::new(),
                );
            }
        }
        let (mut counts, sent) = (walk.counts, walk.sent);
        let taken = match fleet.lock() {
            Ok(mut f) => {
                for message in sent {
                    f.enqueue(message);
                }
                f.dequeue(dt)
            }
            Err(_) => Vec::new(),
        };
        let compress = self.compress;
        consume(
            &snapshot,
            taken,
            Sink {
                instruments,
                pending: &mut self.pending,
            },
            (&mut self.rng, compress),
            &mut counts,
        );
        self.pending.release(Some(SystemTime::now()));
        counts
            .into_iter()
            .map(|(k, v)| (k, v as f64 / dt))
            .collect()
    }
}

/// Where a walk's spans go: the SDK's tracers, and the spans under way.
struct Sink<'a> {
    instruments: &'a mut Instruments,
    pending: &'a mut Pending,
}

/// The consumer's spans for the messages it took this tick.
fn consume(
    fleet: &Fleet,
    taken: Vec<(f64, SpanContext)>,
    sink: Sink<'_>,
    (rng, compress): (&mut StdRng, f64),
    counts: &mut BTreeMap<&'static str, u64>,
) {
    let Some((queue, consumer)) = TOPOLOGY.iter().find_map(|n| match n.kind {
        Kind::Queue { consumer } => Some((n.name, consumer)),
        _ => None,
    }) else {
        return;
    };
    let Some(consumer_node) = node(consumer) else {
        return;
    };
    let now = SystemTime::now();
    for (_, producer) in taken {
        let parent = Context::new().with_remote_span_context(producer);
        let mut walk = Walk {
            fleet,
            sink: Sink {
                instruments: &mut *sink.instruments,
                pending: &mut *sink.pending,
            },
            rng,
            counts: BTreeMap::new(),
            sent: Vec::new(),
            compress,
        };
        walk.serve_named(
            consumer_node,
            SpanKind::Consumer,
            now,
            &parent,
            &format!("process {queue}"),
        );
        *counts.entry(consumer).or_insert(0) += 1;
    }
}

struct Walk<'a> {
    fleet: &'a Fleet,
    /// The SDK's tracers, and the spans ended in the model, exported once the
    /// wall clock passes their end.
    sink: Sink<'a>,
    rng: &'a mut StdRng,
    counts: BTreeMap<&'static str, u64>,
    /// Producer span contexts of messages sent.
    sent: Vec<SpanContext>,
    compress: f64,
}

fn ms(value: f64) -> Duration {
    Duration::from_secs_f64(value.max(0.0) / 1000.0)
}

impl Walk<'_> {
    fn own_ms(&mut self, n: &Node, slowdown: f64) -> f64 {
        let spread = LogNormal::new(0.0, 0.25).map_or(1.0, |d| d.sample(self.rng));
        n.own_ms * slowdown * spread * self.compress
    }

    fn serve(
        &mut self,
        service: &'static Node,
        kind: SpanKind,
        start: SystemTime,
        parent: &Context,
    ) -> Visit {
        let name = format!("GET /api/{}", service.name);
        self.serve_named(service, kind, start, parent, &name)
    }

    fn serve_named(
        &mut self,
        service: &'static Node,
        kind: SpanKind,
        start: SystemTime,
        parent: &Context,
        name: &str,
    ) -> Visit {
        let Some(state) = self.fleet.services.get(service.name) else {
            return Visit {
                end: start,
                failed: false,
            };
        };
        let (version, error_share, slowdown) =
            (state.version.clone(), state.error_share, state.slowdown());
        *self.counts.entry(service.name).or_insert(0) += 1;
        let tracer = self.sink.instruments.tracer(service.name, &version);
        let mut span = tracer
            .span_builder(name.to_string())
            .with_kind(kind.clone())
            .with_start_time(start)
            .with_attributes([KeyValue::new(
                "http.route",
                format!("/api/{}", service.name),
            )])
            .start_with_context(&tracer, parent);
        let cx = Context::new().with_remote_span_context(span.span_context().clone());
        let mut at = start + ms(self.own_ms(service, slowdown));
        let mut failed = self.rng.random::<f64>() < error_share;
        for (callee, share) in service.calls {
            if self.rng.random::<f64>() >= *share {
                continue;
            }
            if let Some(callee) = node(callee) {
                let visit = self.call(service.name, &version, callee, at, &cx);
                at = visit.end;
                failed |= visit.failed;
            }
        }
        if failed {
            span.set_status(Status::error("request failed"));
        }
        self.sink.pending.push(at, span);
        Visit { end: at, failed }
    }

    fn call(
        &mut self,
        caller: &'static str,
        version: &str,
        callee: &'static Node,
        start: SystemTime,
        cx: &Context,
    ) -> Visit {
        let tracer = self.sink.instruments.tracer(caller, version);
        let host = self.fleet.route(callee.name);
        let (kind, attributes) = match callee.kind {
            Kind::Service => (
                SpanKind::Client,
                vec![KeyValue::new("peer.service", callee.name)],
            ),
            Kind::Database(system) => (
                SpanKind::Client,
                vec![
                    KeyValue::new("db.system", system),
                    KeyValue::new("db.namespace", callee.name),
                ],
            ),
            Kind::External { .. } => (
                SpanKind::Client,
                vec![KeyValue::new("server.address", host)],
            ),
            Kind::Queue { .. } => (
                SpanKind::Producer,
                vec![
                    KeyValue::new("messaging.system", "kafka"),
                    KeyValue::new("messaging.destination.name", callee.name),
                ],
            ),
        };
        let mut span = tracer
            .span_builder(format!("call {host}"))
            .with_kind(kind)
            .with_start_time(start)
            .with_attributes(attributes)
            .start_with_context(&tracer, cx);
        let visit = match callee.kind {
            Kind::Service => {
                let child = Context::new().with_remote_span_context(span.span_context().clone());
                let visit = self.serve(callee, SpanKind::Server, start + ms(0.4), &child);
                Visit {
                    end: visit.end + ms(0.4),
                    failed: visit.failed,
                }
            }
            Kind::Queue { .. } => {
                self.sent.push(span.span_context().clone());
                Visit {
                    end: start + ms(self.own_ms(callee, 1.0)),
                    failed: false,
                }
            }
            Kind::External { .. } if self.rng.random::<f64>() < self.fleet.failing_share(host) => {
                Visit {
                    end: start + ms(TIMEOUT_MS * self.compress),
                    failed: true,
                }
            }
            Kind::Database(_) | Kind::External { .. } => {
                let own = node(host).map_or(callee.own_ms, |n| n.own_ms) * self.compress;
                let end =
                    start + ms(own * LogNormal::new(0.0, 0.25).map_or(1.0, |d| d.sample(self.rng)));
                Visit { end, failed: false }
            }
        };
        if visit.failed {
            span.set_status(Status::error("call failed"));
        }
        self.sink.pending.push(visit.end, span);
        visit
    }
}
