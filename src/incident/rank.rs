//! Root-cause ranking: the candidates of one incident, best first, each with a
//! score in 0..1, a failure class and the evidence of every signal that was
//! weighed.
//!
//! Candidates are the nodes the member anomalies implicate: a series' own
//! service, or, for a series that names a peer (an edge's `callee`, a metric's
//! `peer.service`, `server.address`, ...), that peer: a caller seeing its calls
//! to a database slow down implicates the database, which need not send any
//! telemetry of its own. Not when the caller is the common factor: its calls
//! to two or more peers degraded at once, or it is the only caller that finds
//! the peer slower while the peer's other callers, and the peer's own
//! requests, are as fast as before ([`super::calls::slowed_alone`]), or,
//! for slower calls, it is short of CPU itself
//! ([`super::calls::starved_callers`]); nor
//! when the caller's version changed just before (the anomaly is classed
//! `faulty_deployment`: what changed is the new release's calls); then the
//! anomaly counts as the caller's. Six signals are weighed, each in 0..1:
//!
//! - `anomaly`: how strong the candidate's own (or pointed-at) anomalies are
//!   (calls to it that degraded but no anomaly names yet weigh half, see
//!   [`super::calls`]: a node below the anomalous ones is a candidate too;
//!   so do metrics of the host it runs on, `node.*`, `host.*`, `system.*`,
//!   `k8s.node.*`, which move for every service there);
//! - `topology`: its own dependencies are healthy, and the other anomalous
//!   nodes call it (directly or through others) - it explains them, as far as
//!   the `anomaly` signal shows it failing (the product of the two);
//! - `trace_blame`: its exclusive time or originated errors grew (series
//!   derived from the span pairs, [`super::history`]);
//! - `time`: its anomalies began first (its host's weigh half);
//! - `correlation`: its anomalous series move with the symptoms (the series of
//!   the incident's most upstream anomalous nodes), Pearson's r over the
//!   recent windows, discounted by its significance (Student's t);
//! - `change`: its version changed just before (a `faulty_deployment` anomaly),
//!   or, weighing half, an edge to or from it appeared in the graph shortly
//!   before onset (a new dependency).
//!
//! A signal with nothing to say for any candidate (no traces, no graph) takes
//! the same value for all and so does not reorder them: the ranking degrades
//! to whatever signals the fleet sends. The weights were set on the golden
//! scenarios of the tests and the nezha-ob corpus (README, "Root cause").

mod correlation;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use correlation::{correlation_signal, symptom_series};

use super::graph::ServiceGraph;
use super::history::{History, derived_key};
use super::node;
use crate::detect::{Anomaly, FailureClass, SeriesKey};

/// Attributes naming the peer a series measures calls to.
const PEER_KEYS: [&str; 6] = [
    "callee",
    "peer.service",
    "service.peer.name",
    "server.address",
    "net.peer.name",
    "db.namespace",
];

/// Weights of the signals (sum 1).
const WEIGHTS: [(Signal, f64); 6] = [
    (Signal::Anomaly, 0.25),
    (Signal::Topology, 0.25),
    (Signal::TraceBlame, 0.15),
    (Signal::Time, 0.15),
    (Signal::Correlation, 0.10),
    (Signal::Change, 0.10),
];

/// Windows before onset in which a new edge is evidence of a change.
const CHANGE_WINDOWS: i64 = 10;

/// One of the signals weighed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    Anomaly,
    Topology,
    TraceBlame,
    Time,
    Correlation,
    Change,
}

impl Signal {
    /// The snake_case name used in the evidence.
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Anomaly => "anomaly",
            Signal::Topology => "topology",
            Signal::TraceBlame => "trace_blame",
            Signal::Time => "time",
            Signal::Correlation => "correlation",
            Signal::Change => "change",
        }
    }
}

/// What one signal said about a candidate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    pub signal: Signal,
    /// In 0..1.
    pub value: f64,
    /// Whether it spoke for this candidate more than for the others.
    pub spoke: bool,
    pub detail: String,
}

/// A ranked candidate: a service (or database, external endpoint) with its
/// namespace and environment (empty where its telemetry names none).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RootCause {
    pub service: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub environment: String,
    pub class: FailureClass,
    pub score: f64,
    pub evidence: Vec<Evidence>,
}

impl RootCause {
    /// The candidate's node identity ([`super::node`]).
    pub fn node(&self) -> String {
        node::id(&self.namespace, &self.service, &self.environment)
    }
}

/// The node a series implicates ([`super::node`]), and whether it is a peer
/// the series' own service calls: an edge's callee, or the peer a client-side
/// metric names (a `client` segment in its name, as in OpenTelemetry's
/// `rpc.client.duration` or `http.client.request.duration`; on server-side
/// metrics the same attributes name the caller or the server itself).
pub fn implicated(key: &SeriesKey) -> (String, bool) {
    let client_side = match key.signal.as_str() {
        // How many calls a caller makes per request is its own doing.
        "edge" => key.name != crate::detect::rows::CALLS_PER_REQUEST,
        "metric" => name_has(key, "client"),
        _ => false,
    };
    if !client_side {
        return (node::own(key), false);
    }
    for pair in key.attributes.split(',') {
        if let Some((k, v)) = pair.split_once('=')
            && PEER_KEYS.contains(&k)
            && !v.is_empty()
            && v != key.service
        {
            return (node::peer(key, v), true);
        }
    }
    (node::own(key), false)
}

/// Whether one of the `.`/`_`-separated segments of the series' name is
/// `segment` (`rpc.client.duration` has `client`, `process.cpu.utilization`
/// has `cpu`).
pub(crate) fn name_has(key: &SeriesKey, segment: &str) -> bool {
    key.name.split(['.', '_']).any(|s| s == segment)
}

/// What an anomaly of a host-level metric weighs in a candidate's anomaly
/// signal, against 1 for its own series.
const HOST_WEIGHT: f64 = 0.5;

/// Whether a metric measures the host a service runs on rather than the
/// service (`node.*`, `host.*`, `system.*`, `k8s.node.*`): every service on
/// that host sees it move, so it speaks for none of them in particular.
pub(crate) fn host_level(key: &SeriesKey) -> bool {
    key.signal == "metric"
        && (matches!(
            key.name.split(['.', '_']).next(),
            Some("node" | "host" | "system")
        ) || key.name.starts_with("k8s.node."))
}

/// Whether a series measures how long calls take.
pub(crate) fn is_latency(key: &SeriesKey) -> bool {
    key.signal == "edge" && key.name.ends_with("_ms")
}

/// A candidate's anomalies.
struct Candidate<'a> {
    anomalies: Vec<&'a Anomaly>,
    pointed: bool,
}

/// What every signal needs.
pub struct Inputs<'a> {
    pub members: &'a [&'a Anomaly],
    pub graph: &'a ServiceGraph,
    pub history: &'a History,
    pub window_ms: i64,
    pub hops: usize,
}

/// Ranks the candidates of one incident, best first.
pub fn rank(inputs: &Inputs<'_>) -> Vec<RootCause> {
    let first = inputs.members.iter().map(|a| a.onset_ms).min().unwrap_or(0);
    let implicated_nodes = inputs
        .members
        .iter()
        .map(|a| implicated(&a.key).0)
        .collect();
    let below = super::calls::below(inputs.history, &implicated_nodes, first, inputs.hops);
    let members: Vec<&Anomaly> = inputs.members.iter().copied().chain(&below).collect();
    let mut candidates: BTreeMap<String, Candidate<'_>> = BTreeMap::new();
    let callers = super::calls::slowed_callers(&members);
    let starved = super::calls::starved_callers(&members);
    for anomaly in &members {
        let (mut node, mut pointed) = implicated(&anomaly.key);
        let caller = node::own(&anomaly.key);
        // A caller just released (its anomaly classed `faulty_deployment`):
        // what changed is its own calls.
        let released = anomaly.class == FailureClass::FaultyDeployment;
        if pointed
            && (released
                || callers.contains(&caller)
                || (is_latency(&anomaly.key)
                    && (starved.contains(&caller)
                        || super::calls::slowed_alone(inputs.history, &caller, &node, first))))
        {
            (node, pointed) = (caller, false);
        }
        let c = candidates.entry(node).or_insert(Candidate {
            anomalies: Vec::new(),
            pointed: true,
        });
        c.anomalies.push(anomaly);
        c.pointed &= pointed;
    }
    let nodes: Vec<&str> = candidates.keys().map(String::as_str).collect();
    let symptoms = symptom_series(inputs, &candidates);
    let mut ranked: Vec<RootCause> = candidates
        .iter()
        .map(|(node, c)| {
            let anomaly = anomaly_signal(c);
            // A node explains its callers as far as it is shown to fail.
            let mut topology = topology_signal(inputs, node, &nodes);
            topology.value *= anomaly.value;
            let mut evidence = vec![
                anomaly,
                topology,
                trace_signal(inputs.history, node, first),
                time_signal(c, first, inputs.window_ms),
                correlation_signal(inputs.history, node, c, &symptoms),
                change_signal(c, inputs, node, first),
            ];
            let score = WEIGHTS
                .iter()
                .zip(&evidence)
                .map(|((_, w), e)| w * e.value)
                .sum::<f64>()
                .clamp(0.0, 1.0);
            evidence.retain(|e| e.value > 0.0 || e.signal == Signal::Anomaly);
            let [namespace, name, environment] = node::parts(node);
            RootCause {
                service: name.to_string(),
                namespace: namespace.to_string(),
                environment: environment.to_string(),
                class: class_of(c),
                score,
                evidence,
            }
        })
        .collect();
    mark_spoken(&mut ranked);
    ranked.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| a.node().cmp(&b.node()))
    });
    ranked
}

/// A signal spoke for a candidate when its value beats the median of all
/// candidates' values for it.
fn mark_spoken(ranked: &mut [RootCause]) {
    for (signal, _) in WEIGHTS {
        let mut values: Vec<f64> = ranked
            .iter()
            .map(|r| value_of(r, signal).unwrap_or(0.0))
            .collect();
        values.sort_by(f64::total_cmp);
        let median = values
            .get(values.len().saturating_sub(1) / 2)
            .copied()
            .unwrap_or(0.0);
        let single = ranked.len() == 1;
        for r in ranked.iter_mut() {
            for e in r.evidence.iter_mut().filter(|e| e.signal == signal) {
                e.spoke = e.value > 0.0 && (single || e.value > median);
            }
        }
    }
}

fn value_of(r: &RootCause, signal: Signal) -> Option<f64> {
    r.evidence
        .iter()
        .find(|e| e.signal == signal)
        .map(|e| e.value)
}

/// Classes that name a cause (a resource running out, a leak, a backlog, a
/// stall) rather than a symptom (slower, failing, more or less traffic): a
/// service whose memory climbs and whose latency grows has a leak.
fn names_a_cause(class: FailureClass) -> bool {
    matches!(
        class,
        FailureClass::MemoryLeak
            | FailureClass::Saturation
            | FailureClass::QueueBacklog
            | FailureClass::Deadlock
    )
}

/// The class of its strongest anomaly, causes before symptoms; a deployment wins.
fn class_of(c: &Candidate<'_>) -> FailureClass {
    if c.anomalies
        .iter()
        .any(|a| a.class == FailureClass::FaultyDeployment)
    {
        return FailureClass::FaultyDeployment;
    }
    // Its own series say what failed better than its callers' view of it, or
    // its host's.
    let own = c
        .anomalies
        .iter()
        .filter(|a| !implicated(&a.key).1 && !host_level(&a.key));
    let pick = |set: &mut dyn Iterator<Item = &&Anomaly>| {
        set.max_by(|a, b| {
            names_a_cause(a.class)
                .cmp(&names_a_cause(b.class))
                .then(a.score.total_cmp(&b.score))
        })
        .map(|a| a.class)
    };
    pick(&mut own.clone())
        .or_else(|| pick(&mut c.anomalies.iter()))
        .unwrap_or(FailureClass::Generic)
}

fn evidence(signal: Signal, value: f64, detail: String) -> Evidence {
    Evidence {
        signal,
        value: if value.is_finite() {
            value.clamp(0.0, 1.0)
        } else {
            0.0
        },
        spoke: false,
        detail,
    }
}

fn anomaly_signal(c: &Candidate<'_>) -> Evidence {
    let quiet: f64 = c
        .anomalies
        .iter()
        .map(|a| 1.0 - a.score.clamp(0.0, 1.0) * if host_level(&a.key) { HOST_WEIGHT } else { 1.0 })
        .product();
    let strongest = c
        .anomalies
        .iter()
        .max_by(|a, b| a.score.total_cmp(&b.score));
    let detail = strongest.map_or(String::new(), |a| {
        let whose = if c.pointed {
            "seen by its caller: "
        } else {
            ""
        };
        format!(
            "{} anomalies; strongest {whose}{} {} (observed {:.4}, expected {:.4})",
            c.anomalies.len(),
            a.key,
            a.pattern,
            a.observed,
            a.expected
        )
    });
    evidence(Signal::Anomaly, 1.0 - quiet, detail)
}

fn topology_signal(inputs: &Inputs<'_>, node: &str, anomalous: &[&str]) -> Evidence {
    let graph = inputs.graph;
    if !graph.knows(node) {
        return evidence(Signal::Topology, 0.0, String::new());
    }
    let callees: Vec<&str> = graph.callees(node).collect();
    let sick: Vec<&str> = callees
        .iter()
        .copied()
        .filter(|c| anomalous.contains(c))
        .collect();
    let healthy = if callees.is_empty() {
        1.0
    } else {
        1.0 - sick.len() as f64 / callees.len() as f64
    };
    let others: Vec<&str> = anomalous.iter().copied().filter(|n| *n != node).collect();
    let explained = others
        .iter()
        .filter(|other| graph.reaches(other, node, inputs.hops.max(1) * 2))
        .count();
    let explains = if others.is_empty() {
        1.0
    } else {
        explained as f64 / others.len() as f64
    };
    let detail = format!(
        "{}/{} of its dependencies healthy{}; explains {explained}/{} anomalous nodes that call it",
        callees.len() - sick.len(),
        callees.len(),
        if sick.is_empty() {
            String::new()
        } else {
            let names: Vec<&str> = sick.iter().map(|n| node::name(n)).collect();
            format!(" (anomalous: {})", names.join(", "))
        },
        others.len()
    );
    evidence(Signal::Topology, 0.5 * healthy + 0.5 * explains, detail)
}

fn trace_signal(history: &History, node: &str, onset: i64) -> Evidence {
    let mut parts = Vec::new();
    let mut value: f64 = 0.0;
    if let Some(own) = history.own_time(node, onset, 1)
        && own.after - own.before > 1.0
        && own.share > 0.0
    {
        // A large relative rise that is a sliver of the slowdown is not blame.
        let rel = own.relative();
        value = value.max((rel / (1.0 + rel)).min(own.share));
        parts.push(format!(
            "exclusive time {:.1} -> {:.1} ms ({:.0}% of its slowdown)",
            own.before,
            own.after,
            own.share * 100.0
        ));
    }
    let own = derived_key(node, "own_error_rate");
    if let Some((before, after)) = history.before_after(&own, onset, 1)
        && after - before > 0.005
    {
        value = value.max(((after - before) * 10.0).min(1.0));
        parts.push(format!(
            "errors originating here {:.2}% -> {:.2}%",
            before * 100.0,
            after * 100.0
        ));
    }
    evidence(Signal::TraceBlame, value, parts.join("; "))
}

fn time_signal(c: &Candidate<'_>, first: i64, window_ms: i64) -> Evidence {
    // Its own anomalies' onsets; its host's, weighing less, when it has no other.
    let own = c.anomalies.iter().filter(|a| !host_level(&a.key));
    let (onset, weight) = match own.map(|a| a.onset_ms).min() {
        Some(onset) => (onset, 1.0),
        None => {
            let host = c.anomalies.iter().map(|a| a.onset_ms).min();
            (host.unwrap_or(first), HOST_WEIGHT)
        }
    };
    let behind = (onset - first).max(0) / window_ms.max(1);
    let mut detail = if behind == 0 {
        "its anomalies began first".to_string()
    } else {
        format!("began {behind} window(s) after the first")
    };
    if weight < 1.0 {
        detail.push_str(" (its host's)");
    }
    evidence(Signal::Time, weight / (1.0 + behind as f64), detail)
}

fn change_signal(c: &Candidate<'_>, inputs: &Inputs<'_>, node: &str, onset: i64) -> Evidence {
    if let Some(a) = c
        .anomalies
        .iter()
        .find(|a| a.class == FailureClass::FaultyDeployment)
    {
        return evidence(Signal::Change, 1.0, a.detail.clone());
    }
    // A dependency that appeared shortly before the failure, to or from it.
    let from = onset - CHANGE_WINDOWS * inputs.window_ms;
    let new: Vec<String> = inputs
        .graph
        .changes()
        .iter()
        .filter(|t| t.new && (t.caller == node || t.callee == node))
        .filter(|t| t.at_ms >= from && t.at_ms <= onset + inputs.window_ms)
        .map(|t| format!("{} -> {}", node::name(&t.caller), node::name(&t.callee)))
        .collect();
    if new.is_empty() {
        return evidence(Signal::Change, 0.0, String::new());
    }
    let detail = format!("new edge(s) shortly before onset: {}", new.join(", "));
    evidence(Signal::Change, 0.5, detail)
}

#[cfg(test)]
#[path = "rank_tests.rs"]
mod tests;
