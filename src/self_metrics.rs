//! The engine's own Prometheus metrics, all named here and emitted per batch.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::columnar::Signal;
use crate::window::WindowCounts;
use crate::window::pairing::PairingCounts;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransportSignal {
    transport: &'static str,
    signal: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    transport: &'static str,
    signal: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SignalReason {
    signal: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabel {
    class: &'static str,
}

/// The engine's self-metrics; one instance per engine, rendered at `/metrics`.
pub struct SelfMetrics {
    registry: Registry,
    received: Family<TransportSignal, Counter>,
    requests: Family<RequestLabels, Counter>,
    rejected: Family<SignalReason, Counter>,
    window_dropped: Family<DropLabels, Counter>,
    windows_closed: Counter,
    late_edges: Counter,
    pairing_overflow: Counter,
    dedup_overflow: Counter,
    pairing_unpaired: Counter,
    pairing_displaced: Counter,
    kafka_messages: Family<Outcome, Counter>,
    kafka_commits: Family<Outcome, Counter>,
    store_errors: Counter,
    open_windows: Gauge,
    retained_windows: Gauge,
    retained_bytes: Gauge,
    pending_pairs: Gauge,
    closed_through_seconds: Gauge,
    queue_depth: Gauge,
    anomalies: Family<ClassLabel, Counter>,
    detect_untracked: Counter,
    detect_series: Gauge,
    log_templates: Gauge,
}

impl std::fmt::Debug for SelfMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SelfMetrics")
    }
}

impl Default for SelfMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl SelfMetrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("homeostat");
        let received = Family::<TransportSignal, Counter>::default();
        registry.register(
            "records_received",
            "Records accepted by a receiver",
            received.clone(),
        );
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "OTLP export requests by outcome",
            requests.clone(),
        );
        let rejected = Family::<SignalReason, Counter>::default();
        registry.register(
            "records_rejected",
            "Records rejected while decoding (partial success)",
            rejected.clone(),
        );
        let window_dropped = Family::<DropLabels, Counter>::default();
        registry.register(
            "window_records_dropped",
            "Records the window stage dropped: late, duplicate, future, series_overflow",
            window_dropped.clone(),
        );
        let windows_closed = Counter::default();
        registry.register(
            "windows_closed",
            "Event-time windows closed",
            windows_closed.clone(),
        );
        let late_edges = Counter::default();
        registry.register(
            "late_edges",
            "Call edges completed after their window closed",
            late_edges.clone(),
        );
        let pairing_overflow = Counter::default();
        registry.register(
            "pairing_overflow",
            "Spans not stored because the pairing store (or the store of where requests end) was full",
            pairing_overflow.clone(),
        );
        let dedup_overflow = Counter::default();
        registry.register(
            "dedup_overflow",
            "Records counted without de-duplication because the window's identity set \
             was full (window.max_dedup_keys): a redelivery of these would count twice",
            dedup_overflow.clone(),
        );
        let pairing_unpaired = Counter::default();
        registry.register(
            "pairing_unpaired",
            "Callee spans whose caller never arrived",
            pairing_unpaired.clone(),
        );
        let pairing_displaced = Counter::default();
        registry.register(
            "pairing_displaced",
            "SERVER/CONSUMER spans pushed out of the recent-span table before their window closed",
            pairing_displaced.clone(),
        );
        let kafka_messages = Family::<Outcome, Counter>::default();
        registry.register(
            "kafka_messages",
            "Kafka records consumed by outcome",
            kafka_messages.clone(),
        );
        let kafka_commits = Family::<Outcome, Counter>::default();
        registry.register(
            "kafka_commits",
            "Kafka offset commits by outcome",
            kafka_commits.clone(),
        );
        let store_errors = Counter::default();
        registry.register(
            "store_errors",
            "Failed writes of closed windows",
            store_errors.clone(),
        );
        let retained_windows = Gauge::default();
        registry.register(
            "retained_windows",
            "Closed windows held in memory for queries (window.retain)",
            retained_windows.clone(),
        );
        let retained_bytes = Gauge::default();
        registry.register(
            "retained_bytes",
            "Bytes of the Arrow buffers of the retained windows",
            retained_bytes.clone(),
        );
        let open_windows = Gauge::default();
        registry.register(
            "open_windows",
            "Windows currently open",
            open_windows.clone(),
        );
        let pending_pairs = Gauge::default();
        registry.register(
            "pending_pairs",
            "Spans waiting in the pairing store",
            pending_pairs.clone(),
        );
        let closed_through_seconds = Gauge::default();
        registry.register(
            "closed_through_seconds",
            "Event time (unix seconds) through which windows are closed",
            closed_through_seconds.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "queue_depth",
            "Batches waiting in the pipeline queue",
            queue_depth.clone(),
        );
        let anomalies = Family::<ClassLabel, Counter>::default();
        registry.register(
            "anomalies",
            "Anomalies opened, by failure class",
            anomalies.clone(),
        );
        let detect_untracked = Counter::default();
        registry.register(
            "detect_untracked_series",
            "Series values not tracked because detect.max_series was reached",
            detect_untracked.clone(),
        );
        let detect_series = Gauge::default();
        registry.register(
            "detect_series",
            "Series with a baseline",
            detect_series.clone(),
        );
        let log_templates = Gauge::default();
        registry.register(
            "log_templates",
            "Log templates mined",
            log_templates.clone(),
        );
        SelfMetrics {
            registry,
            anomalies,
            detect_untracked,
            detect_series,
            log_templates,
            received,
            requests,
            rejected,
            window_dropped,
            windows_closed,
            late_edges,
            pairing_overflow,
            dedup_overflow,
            pairing_unpaired,
            pairing_displaced,
            kafka_messages,
            kafka_commits,
            store_errors,
            open_windows,
            retained_windows,
            retained_bytes,
            pending_pairs,
            closed_through_seconds,
            queue_depth,
        }
    }

    /// Counts records a receiver accepted.
    pub fn received(&self, transport: &'static str, signal: Signal, n: u64) {
        if n > 0 {
            self.received
                .get_or_create(&TransportSignal {
                    transport,
                    signal: signal.as_str(),
                })
                .inc_by(n);
        }
    }

    /// Counts one OTLP request by outcome.
    pub fn request(&self, transport: &'static str, signal: Signal, outcome: &'static str) {
        self.requests
            .get_or_create(&RequestLabels {
                transport,
                signal: signal.as_str(),
                outcome,
            })
            .inc();
    }

    /// Counts records rejected while decoding.
    pub fn rejected(&self, signal: Signal, reason: &'static str, n: u64) {
        if n > 0 {
            self.rejected
                .get_or_create(&SignalReason {
                    signal: signal.as_str(),
                    reason,
                })
                .inc_by(n);
        }
    }

    /// Counts one Kafka record by outcome.
    pub fn kafka_message(&self, outcome: &'static str) {
        self.kafka_messages
            .get_or_create(&Outcome { outcome })
            .inc();
    }

    /// Counts one offset commit by outcome.
    pub fn kafka_commit(&self, outcome: &'static str) {
        self.kafka_commits.get_or_create(&Outcome { outcome }).inc();
    }

    /// Counts a failed store write.
    pub fn store_error(&self) {
        self.store_errors.inc();
    }

    /// Brings window counters up to `now` (given the previous snapshot) and sets gauges.
    pub fn window_progress(
        &self,
        before: (WindowCounts, PairingCounts),
        now: (WindowCounts, PairingCounts),
        open_windows: usize,
        pending_pairs: usize,
        closed_through_ms: i64,
        queue_depth: usize,
    ) {
        let (b, bp) = before;
        let (n, np) = now;
        for (reason, delta) in [
            ("late", n.late - b.late),
            ("duplicate", n.duplicates - b.duplicates),
            ("future", n.future - b.future),
            ("series_overflow", n.series_overflow - b.series_overflow),
        ] {
            if delta > 0 {
                self.window_dropped
                    .get_or_create(&DropLabels { reason })
                    .inc_by(delta);
            }
        }
        self.windows_closed
            .inc_by(n.windows_closed - b.windows_closed);
        self.late_edges.inc_by(n.late_edges - b.late_edges);
        self.pairing_overflow.inc_by(np.overflow - bp.overflow);
        self.dedup_overflow
            .inc_by(n.dedup_overflow - b.dedup_overflow);
        self.pairing_unpaired.inc_by(np.unpaired - bp.unpaired);
        self.pairing_displaced.inc_by(np.displaced - bp.displaced);
        self.open_windows.set(open_windows as i64);
        self.pending_pairs.set(pending_pairs as i64);
        if closed_through_ms > 0 {
            self.closed_through_seconds.set(closed_through_ms / 1000);
        }
        self.queue_depth.set(queue_depth as i64);
    }

    /// Sets the retained-history gauges.
    pub fn retained(&self, windows: usize, bytes: usize) {
        self.retained_windows.set(windows as i64);
        self.retained_bytes.set(bytes as i64);
    }

    /// Counts the anomalies a closed window opened and sets the detection gauges.
    pub fn detection(
        &self,
        opened: &[crate::detect::Anomaly],
        series: usize,
        untracked: u64,
        templates: usize,
    ) {
        for anomaly in opened {
            self.anomalies
                .get_or_create(&ClassLabel {
                    class: anomaly.class.as_str(),
                })
                .inc();
        }
        self.detect_untracked.inc_by(untracked);
        self.detect_series.set(series as i64);
        self.log_templates.set(templates as i64);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
