//! `homeostat loadgen`: realistic OTLP traffic from a synthetic fleet.
//!
//! The fleet ([`fleet`]) is generated once into `--templates` rounds, each a
//! traces request of whole traces with the logs and metrics requests that go with
//! it, encoded once. Workers then send patched copies ([`patch`]): unique ids per
//! round sent, timestamps moved to the current time. A worker sends a round's
//! traces, then its logs, and every `--metrics-every` rounds its metrics.
//!
//! The last line of the output is `sent_spans=N accepted_spans=M spans_per_sec=X`,
//! where accepted spans were acknowledged without error (minus spans rejected in
//! an OTLP partial success) and `spans_per_sec` is accepted spans over the run's
//! wall time. `--ceiling` instead measures bare `prost` decoding of the same
//! requests on one thread, the least work any receiver must do: the whole workload
//! (traces, logs, metrics as they would be sent), and its traces alone.

pub mod fleet;
pub mod patch;
pub mod target;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

use crate::columnar::Signal;
use fleet::{Fleet, FleetSpec};
use patch::{Finder, PatchPlan};
use target::{Endpoint, Failure, Sender};

/// Command-line options of `homeostat loadgen`.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Target: grpc://HOST:PORT, http://HOST:PORT or kafka://BROKERS.
    #[arg(long, required_unless_present = "ceiling")]
    pub endpoint: Option<Endpoint>,
    /// Services in the synthetic fleet.
    #[arg(long, default_value_t = 20)]
    pub services: usize,
    /// HTTP operations per service.
    #[arg(long, default_value_t = 4)]
    pub operations: usize,
    /// Children per service in the call tree.
    #[arg(long, default_value_t = 3)]
    pub fanout: usize,
    /// Probability that an operation fails on its own (its callers fail too).
    #[arg(long, default_value_t = 0.01)]
    pub error_ratio: f64,
    /// Median operation latency in milliseconds (log-normal).
    #[arg(long, default_value_t = 20.0)]
    pub latency_ms: f64,
    /// Sigma of the log-normal latencies.
    #[arg(long, default_value_t = 0.6)]
    pub latency_sigma: f64,
    /// Spans per traces request (whole traces are added until reached).
    #[arg(long, default_value_t = 512)]
    pub batch_spans: usize,
    /// Log records per span (failed spans always log).
    #[arg(long, default_value_t = 0.3)]
    pub log_ratio: f64,
    /// Send the metrics request every this many rounds (0 = never).
    #[arg(long, default_value_t = 10)]
    pub metrics_every: u64,
    /// Concurrent connections, each with one request in flight.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Spans per second across all connections (0 = as fast as possible).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// How long to send, e.g. 30s, 5m.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Distinct pre-encoded rounds to cycle through.
    #[arg(long, default_value_t = 64)]
    pub templates: u64,
    /// Seed of the fleet and its traffic.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Keep the templates' fixed timestamps instead of advancing with real time.
    #[arg(long)]
    pub fixed_time: bool,
    /// Kafka topics for spans, metrics and logs (kafka:// endpoints).
    #[arg(long, default_value = "otlp_spans,otlp_metrics,otlp_logs")]
    pub kafka_topics: String,
    /// Per-request timeout.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Measure bare prost decoding of the traces requests on one thread instead.
    #[arg(long)]
    pub ceiling: bool,
}

impl Options {
    /// The fleet these options describe.
    pub fn fleet_spec(&self) -> FleetSpec {
        FleetSpec {
            services: self.services,
            operations: self.operations,
            fanout: self.fanout,
            error_ratio: self.error_ratio.clamp(0.0, 1.0),
            latency_ms: self.latency_ms,
            latency_sigma: self.latency_sigma.max(0.0),
            batch_spans: self.batch_spans,
            log_ratio: self.log_ratio.clamp(0.0, 1.0),
            seed: self.seed,
        }
    }
}

/// One pre-encoded round and where to patch it.
pub struct Template {
    /// Traces request and its plan.
    pub traces: (Vec<u8>, PatchPlan),
    /// Logs request (may be empty) and its plan.
    pub logs: (Vec<u8>, PatchPlan),
    /// Metrics request and its plan.
    pub metrics: (Vec<u8>, PatchPlan),
    /// Spans, log records and metric points in the round.
    pub counts: (u64, u64, u64),
    last_time: u64,
}

impl Template {
    /// Builds round `index` of `fleet`.
    pub fn new(fleet: &Fleet, index: u64) -> Self {
        let round = fleet.round(index);
        let finder = Finder::new(&round);
        let plan = |body: &Vec<u8>| finder.plan(body);
        Template {
            traces: (round.traces.clone(), plan(&round.traces)),
            logs: (round.logs.clone(), plan(&round.logs)),
            metrics: (round.metrics.clone(), plan(&round.metrics)),
            counts: (round.spans, round.log_records, round.points),
            last_time: finder.last_time(),
        }
    }

    /// The three requests of send number `seq`, made unique by `seq` and with the
    /// latest timestamp at `now_ns` (or unshifted when `now_ns` is `None`).
    pub fn instantiate(&self, seq: u64, now_ns: Option<u64>) -> [Bytes; 3] {
        [&self.traces, &self.logs, &self.metrics].map(|part| self.patch(part, seq, now_ns))
    }

    /// Only the traces request of send number `seq` (see [`Template::instantiate`]).
    pub fn traces(&self, seq: u64, now_ns: Option<u64>) -> Bytes {
        self.patch(&self.traces, seq, now_ns)
    }

    fn patch(&self, (body, plan): &(Vec<u8>, PatchPlan), seq: u64, now_ns: Option<u64>) -> Bytes {
        // The send's key: a fixed hash of its number, never 0 (ids stay ids).
        let key = {
            use std::hash::BuildHasher;
            foldhash::quality::FixedState::with_seed(0x5EED).hash_one(seq) | 1
        };
        let shift = now_ns.map_or(0, |now| now as i64 - self.last_time as i64);
        Bytes::from(plan.apply(body, key, shift))
    }
}

/// Builds `count` templates of `fleet`.
pub fn templates(fleet: &Fleet, count: u64) -> Vec<Template> {
    (0..count.max(1)).map(|i| Template::new(fleet, i)).collect()
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[derive(Default)]
struct Stats {
    sent_spans: AtomicU64,
    accepted_spans: AtomicU64,
    sent_logs: AtomicU64,
    accepted_logs: AtomicU64,
    sent_points: AtomicU64,
    accepted_points: AtomicU64,
    requests: AtomicU64,
    shed: AtomicU64,
    refused: AtomicU64,
    transport: AtomicU64,
    bytes: AtomicU64,
}

impl Stats {
    fn record(&self, sent: &AtomicU64, accepted: &AtomicU64, n: u64, result: Result<u64, Failure>) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        sent.fetch_add(n, Ordering::Relaxed);
        match result {
            Ok(rejected) => {
                accepted.fetch_add(n.saturating_sub(rejected), Ordering::Relaxed);
            }
            Err(Failure::Shed) => {
                self.shed.fetch_add(1, Ordering::Relaxed);
            }
            Err(Failure::Refused) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
            }
            Err(Failure::Transport) => {
                self.transport.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Runs the load generator; prints progress to stderr and the summary line to
/// stdout.
pub async fn run(options: Options) -> anyhow::Result<()> {
    let fleet = Fleet::new(options.fleet_spec());
    let built = Instant::now();
    let templates = Arc::new(templates(&fleet, options.templates));
    let spans: u64 = templates.iter().map(|t| t.counts.0).sum();
    eprintln!(
        "loadgen: {} services, {} templates, {:.0} spans per traces request, built in {:?}",
        options.services.max(1),
        templates.len(),
        spans as f64 / templates.len() as f64,
        built.elapsed()
    );
    if options.ceiling {
        return ceiling(&templates, options.duration, options.metrics_every);
    }
    let endpoint = options.endpoint.clone().context("--endpoint is required")?;
    let stats = Arc::new(Stats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let scheduled = Arc::new(AtomicU64::new(0));
    let sequence = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::new();
    for _ in 0..options.concurrency.max(1) {
        senders.push(Sender::connect(&endpoint, &options.kafka_topics, options.timeout).await?);
    }
    let start = Instant::now();
    let mut workers = Vec::new();
    for mut sender in senders {
        let (templates, stats, stop, scheduled, sequence) = (
            templates.clone(),
            stats.clone(),
            stop.clone(),
            scheduled.clone(),
            sequence.clone(),
        );
        let options = options.clone();
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let seq = sequence.fetch_add(1, Ordering::Relaxed);
                let template = &templates[(seq % templates.len() as u64) as usize];
                let (spans, logs, points) = template.counts;
                if options.rate > 0.0 {
                    let before = scheduled.fetch_add(spans, Ordering::Relaxed);
                    let due = start + Duration::from_secs_f64(before as f64 / options.rate);
                    if due > start + options.duration {
                        break;
                    }
                    tokio::time::sleep_until(due.into()).await;
                }
                let now = (!options.fixed_time).then(now_ns);
                let [traces, log_body, metrics] = template.instantiate(seq, now);
                stats
                    .bytes
                    .fetch_add(traces.len() as u64, Ordering::Relaxed);
                let result = sender.send(Signal::Traces, traces).await;
                let shed = result == Err(Failure::Shed);
                stats.record(&stats.sent_spans, &stats.accepted_spans, spans, result);
                if logs > 0 {
                    let result = sender.send(Signal::Logs, log_body).await;
                    stats.record(&stats.sent_logs, &stats.accepted_logs, logs, result);
                }
                if options.metrics_every > 0 && seq % options.metrics_every == 0 {
                    let result = sender.send(Signal::Metrics, metrics).await;
                    stats.record(&stats.sent_points, &stats.accepted_points, points, result);
                }
                if shed {
                    // A shedding server gets a moment, as an OTLP exporter would give it.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }));
    }
    let progress = {
        let stats = stats.clone();
        tokio::spawn(async move {
            let mut last = 0;
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            tick.tick().await;
            loop {
                tick.tick().await;
                let accepted = stats.accepted_spans.load(Ordering::Relaxed);
                eprintln!(
                    "loadgen: {:>6.1}s accepted {:.0} spans/s over the last 5 s (shed {}, errors {})",
                    start.elapsed().as_secs_f64(),
                    (accepted - last) as f64 / 5.0,
                    stats.shed.load(Ordering::Relaxed),
                    stats.refused.load(Ordering::Relaxed) + stats.transport.load(Ordering::Relaxed)
                );
                last = accepted;
            }
        })
    };
    tokio::time::sleep(options.duration).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.context("a worker failed")?;
    }
    progress.abort();
    let elapsed = start.elapsed().as_secs_f64();
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    eprintln!(
        "loadgen: {} requests in {elapsed:.2}s ({:.1} MB/s of traces); shed {}, refused {}, transport errors {}; logs {}/{} accepted, metric points {}/{} accepted",
        get(&stats.requests),
        get(&stats.bytes) as f64 / elapsed / 1e6,
        get(&stats.shed),
        get(&stats.refused),
        get(&stats.transport),
        get(&stats.accepted_logs),
        get(&stats.sent_logs),
        get(&stats.accepted_points),
        get(&stats.sent_points),
    );
    println!(
        "sent_spans={} accepted_spans={} spans_per_sec={:.0}",
        get(&stats.sent_spans),
        get(&stats.accepted_spans),
        get(&stats.accepted_spans) as f64 / elapsed
    );
    Ok(())
}

/// Bare `prost` decoding, on this thread, of the requests the run would send: each
/// round's traces, its logs, and its metrics every `metrics_every` rounds. Prints the
/// spans per second of that workload (`ceiling_spans_per_sec`) and of its traces
/// alone (`traces_only_spans_per_sec`).
fn ceiling(templates: &[Template], duration: Duration, metrics_every: u64) -> anyhow::Result<()> {
    let rounds: Vec<([Bytes; 3], u64)> = templates
        .iter()
        .enumerate()
        .map(|(i, t)| (t.instantiate(i as u64, Some(now_ns())), t.counts.0))
        .collect();
    let decode_all = |traces_only: bool, duration: Duration| -> anyhow::Result<(f64, f64)> {
        let start = Instant::now();
        let (mut spans, mut bytes, mut seq) = (0u64, 0u64, 0u64);
        while start.elapsed() < duration {
            for ([traces, logs, metrics], n) in &rounds {
                let request = ExportTraceServiceRequest::decode(traces.as_ref())
                    .context("a template does not decode")?;
                std::hint::black_box(request);
                bytes += traces.len() as u64;
                if !traces_only {
                    if !logs.is_empty() {
                        let request = ExportLogsServiceRequest::decode(logs.as_ref())
                            .context("a logs template does not decode")?;
                        std::hint::black_box(request);
                        bytes += logs.len() as u64;
                    }
                    if metrics_every > 0 && seq % metrics_every == 0 {
                        let request = ExportMetricsServiceRequest::decode(metrics.as_ref())
                            .context("a metrics template does not decode")?;
                        std::hint::black_box(request);
                        bytes += metrics.len() as u64;
                    }
                }
                spans += n;
                seq += 1;
            }
        }
        let elapsed = start.elapsed().as_secs_f64();
        Ok((spans as f64 / elapsed, bytes as f64 / elapsed / 1e6))
    };
    let (workload, mb) = decode_all(false, duration)?;
    let (traces_only, _) = decode_all(true, duration / 2)?;
    println!(
        "ceiling_spans_per_sec={workload:.0} ceiling_mb_per_sec={mb:.1} \
         traces_only_spans_per_sec={traces_only:.0}"
    );
    Ok(())
}
