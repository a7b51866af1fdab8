//! Incidents: anomalies grouped into one incident per underlying failure, not an
//! alert storm.
//!
//! An anomaly that opens joins the incident one of whose members began within
//! `join_windows` before its onset (a member that merely persists does not hold
//! the incident open to later, unrelated failures) and holds a service the same as, or at most `hops` edges from, its
//! own on the service graph ([`graph`]); else it opens a new incident. An
//! incident is `resolved` once every member anomaly has ended and `resolve_windows`
//! windows passed; an anomaly that would join it within `reopen_windows` after
//! that reopens it (flapping control) instead of opening another.
//!
//! The stage consumes what detection emits ([`DetectOutput`]) and publishes the
//! `incidents` table. Memory: at most `max_incidents` incidents (oldest resolved
//! dropped first), the graph's bound.

pub mod config;
pub mod graph;
pub mod history;
pub mod rank;

use std::collections::BTreeSet;
use std::sync::{Arc, LazyLock, RwLock};

use arrow::array::{
    ArrayRef, Float64Builder, StringBuilder, TimestampMillisecondBuilder, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::detect::anomaly::{Anomaly, AnomalyEvent};
use crate::detect::task::DetectOutput;
use crate::flow::{Emit, Stage};
use crate::persist::StateFileError;
use crate::read_model::TableSource;
use graph::ServiceGraph;
use history::History;
use rank::RootCause;

/// Format version of `incidents.json`.
const STATE_VERSION: u32 = 1;

/// Grouping and lifecycle parameters.
#[derive(Debug, Clone)]
pub struct IncidentParams {
    pub window_ms: i64,
    /// An anomaly joins an incident active this many windows before its onset.
    pub join_windows: i64,
    /// ... and opened at most this many windows before it.
    pub max_join_windows: i64,
    /// Graph distance within which services belong to one incident.
    pub hops: usize,
    /// Windows after the last member ended before an incident is resolved.
    pub resolve_windows: i64,
    /// Windows after resolution within which a recurrence reopens it.
    pub reopen_windows: i64,
    /// Incidents kept for the table.
    pub max_incidents: usize,
    /// Event time an idle edge stays in the graph.
    pub edge_ttl_ms: i64,
    /// Most edges in the graph.
    pub max_edges: usize,
    /// Windows of series history the ranking reads.
    pub history_windows: usize,
    /// Most series in that history.
    pub max_history_series: usize,
    /// Anomalies on distinct series an incident needs before it is reported.
    pub min_anomalies: usize,
}

/// `open` or `resolved`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentState {
    Open,
    Resolved,
}

/// A member anomaly, named as its events name it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Member {
    anomaly: Anomaly,
    ended_ms: Option<i64>,
}

/// One incident.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Incident {
    pub id: u64,
    pub state: IncidentState,
    pub opened_ms: i64,
    /// The latest onset, update or end of a member.
    pub active_ms: i64,
    /// The latest onset of a member: a new anomaly joins only near it.
    #[serde(default)]
    pub last_onset_ms: i64,
    pub resolved_ms: Option<i64>,
    pub reopened: u64,
    members: Vec<Member>,
    /// Whether it has as many anomalies on distinct series as an incident
    /// needs to be reported (`min_anomalies`); unconfirmed ones still gather
    /// anomalies but are not published, and are forgotten when they resolve.
    #[serde(default = "confirmed_default")]
    pub confirmed: bool,
    /// Candidates, best first (ranked each window while open).
    #[serde(default)]
    pub root_causes: Vec<RootCause>,
    /// The entry operations (or services) whose latency or errors degraded.
    #[serde(default)]
    pub entry_points: Vec<String>,
}

impl Incident {
    /// The services of its anomalies, sorted.
    pub fn services(&self) -> BTreeSet<&str> {
        self.members
            .iter()
            .map(|m| m.anomaly.key.service.as_str())
            .collect()
    }

    /// When it resolved, or would resolve had a window closed since: every
    /// member ended and `quiet` ms passed.
    fn quiet_since(&self, quiet: i64) -> Option<i64> {
        match self.state {
            IncidentState::Resolved => self.resolved_ms,
            IncidentState::Open => self
                .members
                .iter()
                .all(|m| m.ended_ms.is_some())
                .then_some(self.active_ms + quiet),
        }
    }

    /// Member anomalies.
    pub fn anomalies(&self) -> impl Iterator<Item = &Anomaly> {
        self.members.iter().map(|m| &m.anomaly)
    }

    /// Member anomalies with when each ended.
    pub fn members(&self) -> impl Iterator<Item = (&Anomaly, Option<i64>)> {
        self.members.iter().map(|m| (&m.anomaly, m.ended_ms))
    }
}

fn confirmed_default() -> bool {
    true
}

/// An edge of the service graph as published: caller, callee, and the event
/// time it last carried traffic.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphEdge {
    pub caller: String,
    pub callee: String,
    pub last_seen_ms: i64,
}

/// The shared `incidents` table, the service graph, and a revision counter
/// that moves each time they are published (what watchers wait on).
#[derive(Debug, Clone)]
pub struct IncidentLog {
    incidents: Arc<RwLock<Vec<Incident>>>,
    edges: Arc<RwLock<Vec<GraphEdge>>>,
    revision: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Default for IncidentLog {
    fn default() -> Self {
        Self {
            incidents: Arc::default(),
            edges: Arc::default(),
            revision: Arc::new(tokio::sync::watch::Sender::new(0)),
        }
    }
}

impl IncidentLog {
    /// The edges of the service graph, sorted.
    pub fn edges(&self) -> Vec<GraphEdge> {
        self.edges.read().map(|e| e.clone()).unwrap_or_default()
    }

    /// A receiver that sees each publication.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.revision.subscribe()
    }

    fn publish_edges(&self, edges: Vec<GraphEdge>) {
        if let Ok(mut held) = self.edges.write() {
            *held = edges;
        }
    }

    /// A copy of every incident held, oldest first.
    pub fn snapshot(&self) -> Vec<Incident> {
        self.incidents.read().map(|i| i.clone()).unwrap_or_default()
    }

    /// Publishes the confirmed incidents.
    fn publish(&self, incidents: &[Incident]) {
        if let Ok(mut held) = self.incidents.write() {
            *held = incidents.iter().filter(|i| i.confirmed).cloned().collect();
        }
        self.revision.send_modify(|r| *r += 1);
    }
}

/// The incident stage.
pub struct IncidentStage {
    params: IncidentParams,
    graph: ServiceGraph,
    history: History,
    incidents: Vec<Incident>,
    next_id: u64,
    log: IncidentLog,
    /// Where the incidents are kept across restarts, and whether they changed
    /// since they were last written.
    store: Option<std::path::PathBuf>,
    dirty: bool,
}

impl IncidentStage {
    pub fn new(params: IncidentParams, log: IncidentLog) -> Self {
        Self {
            graph: ServiceGraph::new(params.edge_ttl_ms, params.max_edges),
            history: History::new(params.history_windows, params.max_history_series),
            params,
            incidents: Vec::new(),
            next_id: 1,
            log,
            store: None,
            dirty: false,
        }
    }

    /// Keeps the incidents in `path` across restarts, loading what is there.
    pub fn stored_at(mut self, path: std::path::PathBuf) -> Result<Self, StateFileError> {
        let (next_id, incidents): (u64, Vec<Incident>) =
            crate::persist::load(&path, STATE_VERSION)?.unwrap_or((1, Vec::new()));
        if !incidents.is_empty() {
            info!(incidents = incidents.len(), path = %path.display(), "restored incidents");
        }
        self.incidents = incidents;
        self.next_id = next_id.max(1);
        self.log.publish(&self.incidents);
        self.store = Some(path);
        Ok(self)
    }

    /// Writes the incidents if they changed.
    fn persist(&mut self) {
        if let (true, Some(path)) = (self.dirty, &self.store) {
            let state = (self.next_id, &self.incidents);
            self.dirty = !crate::persist::save(path, STATE_VERSION, &state);
        }
    }

    /// The incidents now (oldest first).
    pub fn incidents(&self) -> &[Incident] {
        &self.incidents
    }

    /// Applies one anomaly event.
    pub fn on_event(&mut self, event: &AnomalyEvent) {
        self.dirty = true;
        match event {
            AnomalyEvent::Opened(anomaly) => self.join(anomaly.clone()),
            AnomalyEvent::Updated {
                key,
                pattern,
                onset_ms,
                at_ms,
                ..
            } => {
                if let Some((incident, _)) = self.member(key, pattern, *onset_ms) {
                    incident.active_ms = incident.active_ms.max(*at_ms);
                }
            }
            AnomalyEvent::Ended {
                key,
                pattern,
                onset_ms,
                ended_ms,
            } => {
                if let Some((incident, member)) = self.member(key, pattern, *onset_ms) {
                    incident.members[member].ended_ms = Some(*ended_ms);
                    incident.active_ms = incident.active_ms.max(*ended_ms);
                }
            }
        }
    }

    /// Learns the window's edges and series, ranks the open incidents' root
    /// causes, resolves incidents whose members all ended `resolve_windows` ago,
    /// and publishes the table.
    pub fn on_window(&mut self, window: &crate::window::WindowTables) {
        self.graph.on_window(window);
        self.log.publish_edges(self.graph.edges());
        self.history.on_window(window);
        self.rank_open();
        let quiet = self.params.resolve_windows * self.params.window_ms;
        for incident in &mut self.incidents {
            let ended = incident.members.iter().all(|m| m.ended_ms.is_some());
            if incident.state == IncidentState::Open
                && ended
                && window.end_ms - incident.active_ms >= quiet
            {
                incident.state = IncidentState::Resolved;
                // In event time: when it had been quiet long enough (windows
                // without data may close later, or never).
                incident.resolved_ms = Some(incident.active_ms + quiet);
                self.dirty = true;
                info!(incident = incident.id, "incident resolved");
            }
        }
        self.incidents
            .retain(|i| i.confirmed || i.state == IncidentState::Open);
        let excess = self
            .incidents
            .len()
            .saturating_sub(self.params.max_incidents);
        if excess > 0 {
            let mut dropped = 0;
            self.incidents.retain(|i| {
                let drop = dropped < excess && i.state == IncidentState::Resolved;
                dropped += usize::from(drop);
                !drop
            });
        }
        self.log.publish(&self.incidents);
        self.persist();
    }

    /// Ranks every open incident's candidates and lists its entry points.
    fn rank_open(&mut self) {
        for incident in &mut self.incidents {
            if incident.state != IncidentState::Open {
                continue;
            }
            let members: Vec<&Anomaly> = incident.anomalies().collect();
            let inputs = rank::Inputs {
                members: &members,
                graph: &self.graph,
                history: &self.history,
                window_ms: self.params.window_ms,
                hops: self.params.hops,
            };
            let ranked = rank::rank(&inputs);
            let entry_points = entry_points(&members, &self.graph);
            if ranked != incident.root_causes || entry_points != incident.entry_points {
                incident.root_causes = ranked;
                incident.entry_points = entry_points;
                self.dirty = true;
            }
        }
    }

    fn member(
        &mut self,
        key: &crate::detect::SeriesKey,
        pattern: &str,
        onset_ms: i64,
    ) -> Option<(&mut Incident, usize)> {
        self.incidents.iter_mut().rev().find_map(|incident| {
            let index = incident.members.iter().position(|m| {
                m.anomaly.onset_ms == onset_ms
                    && m.anomaly.pattern == pattern
                    && &m.anomaly.key == key
            })?;
            Some((incident, index))
        })
    }

    /// Adds a new anomaly to the incident it belongs to, or opens one.
    fn join(&mut self, anomaly: Anomaly) {
        let p = &self.params;
        let onset = anomaly.onset_ms;
        let join_from = onset - p.join_windows * p.window_ms;
        let reopen_from = onset - p.reopen_windows * p.window_ms;
        let service = anomaly.key.service.clone();
        let graph = &self.graph;
        let quiet = p.resolve_windows * p.window_ms;
        let gather_from = onset - p.max_join_windows * p.window_ms;
        let found = self.incidents.iter().rposition(|incident| {
            let recent = match incident.quiet_since(quiet) {
                Some(resolved) if resolved <= onset => resolved >= reopen_from,
                _ => incident.last_onset_ms >= join_from && incident.opened_ms >= gather_from,
            };
            recent
                && incident
                    .services()
                    .iter()
                    .any(|s| graph.near(s, &service, p.hops))
        });
        let member = Member {
            anomaly,
            ended_ms: None,
        };
        match found {
            Some(index) => {
                let incident = &mut self.incidents[index];
                if incident.quiet_since(quiet).is_some_and(|r| r <= onset) {
                    incident.state = IncidentState::Open;
                    incident.resolved_ms = None;
                    incident.reopened += 1;
                    info!(incident = incident.id, "incident reopened");
                }
                tracing::debug!(incident = incident.id, series = %member.anomaly.key, onset, "anomaly joined incident");
                incident.active_ms = incident.active_ms.max(onset);
                incident.last_onset_ms = incident.last_onset_ms.max(onset);
                incident.members.push(member);
                if !incident.confirmed {
                    incident.confirmed = corroborated(&incident.members, p.min_anomalies);
                    if incident.confirmed {
                        info!(incident = incident.id, service = %service, "incident opened");
                    }
                }
            }
            None => {
                let id = self.next_id;
                self.next_id += 1;
                if corroborated(std::slice::from_ref(&member), p.min_anomalies) {
                    info!(incident = id, service = %service, "incident opened");
                }
                self.incidents.push(Incident {
                    id,
                    state: IncidentState::Open,
                    opened_ms: onset,
                    active_ms: onset,
                    last_onset_ms: onset,
                    resolved_ms: None,
                    reopened: 0,
                    confirmed: corroborated(std::slice::from_ref(&member), p.min_anomalies),
                    members: vec![member],
                    root_causes: Vec::new(),
                    entry_points: Vec::new(),
                });
            }
        }
    }
}

/// Whether anomalies are enough for an incident: `min` distinct series, or one
/// on requests (a service's, an operation's, or calls to a peer as the caller
/// sees them), on a log template (the application itself saying something new
/// or unusual), or right after a deployment. A lone resource metric or log
/// count is the commonest false alarm and waits for corroboration.
fn corroborated(members: &[Member], min: usize) -> bool {
    let series: BTreeSet<&crate::detect::SeriesKey> =
        members.iter().map(|m| &m.anomaly.key).collect();
    series.len() >= min
        || members.iter().any(|m| {
            let key = &m.anomaly.key;
            matches!(
                key.signal.as_str(),
                "service" | "operation" | "edge" | "log_template"
            ) || rank::implicated(key).1
                || m.anomaly.class == crate::detect::FailureClass::FaultyDeployment
        })
}

/// The operations (else services) of the members' request series on nodes
/// nothing calls, sorted: where users meet the failure.
fn entry_points(members: &[&Anomaly], graph: &ServiceGraph) -> Vec<String> {
    let mut out = BTreeSet::new();
    for anomaly in members {
        let key = &anomaly.key;
        if !matches!(key.signal.as_str(), "service" | "operation")
            || !graph.knows(&key.service)
            || graph.is_called(&key.service)
        {
            continue;
        }
        let operation = key
            .attributes
            .split(',')
            .find_map(|kv| kv.strip_prefix("operation="));
        out.insert(match operation {
            Some(op) => format!("{} {op}", key.service),
            None => key.service.clone(),
        });
    }
    out.into_iter().collect()
}

impl Stage for IncidentStage {
    type In = DetectOutput;
    type Out = ();

    fn name(&self) -> &'static str {
        "incidents"
    }

    fn on_data(&mut self, input: DetectOutput, _out: &mut Emit<()>) {
        match input {
            DetectOutput::Event(event) => self.on_event(&event),
            DetectOutput::Closed(window) => self.on_window(&window),
        }
    }

    fn on_stop(&mut self, _out: &mut Emit<()>) {
        self.persist();
    }
}

fn schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        let ts = crate::read_model::timestamp_field;
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::UInt64, false),
            Field::new("state", DataType::Utf8, false),
            ts("opened", false),
            ts("resolved", true),
            Field::new("services", DataType::Utf8, false),
            Field::new("classes", DataType::Utf8, false),
            Field::new("anomalies", DataType::UInt64, false),
            Field::new("reopened", DataType::UInt64, false),
            Field::new("root_cause", DataType::Utf8, true),
            Field::new("root_cause_class", DataType::Utf8, true),
            Field::new("root_cause_score", DataType::Float64, true),
            Field::new("entry_points", DataType::Utf8, false),
            Field::new("root_causes", DataType::Utf8, false),
        ]))
    });
    SCHEMA.clone()
}

impl TableSource for IncidentLog {
    fn name(&self) -> &str {
        "incidents"
    }

    fn schema(&self) -> SchemaRef {
        schema()
    }

    fn batches(&self) -> Result<Vec<RecordBatch>, ArrowError> {
        let incidents = self.snapshot();
        let (mut id, mut anomalies, mut reopened) = (
            UInt64Builder::new(),
            UInt64Builder::new(),
            UInt64Builder::new(),
        );
        let (mut state, mut services, mut classes) = (
            StringBuilder::new(),
            StringBuilder::new(),
            StringBuilder::new(),
        );
        let (mut top, mut top_class, mut entry, mut ranked) = (
            StringBuilder::new(),
            StringBuilder::new(),
            StringBuilder::new(),
            StringBuilder::new(),
        );
        let mut top_score = Float64Builder::new();
        let mut opened = TimestampMillisecondBuilder::new().with_timezone("UTC");
        let mut resolved = TimestampMillisecondBuilder::new().with_timezone("UTC");
        for incident in &incidents {
            id.append_value(incident.id);
            state.append_value(match incident.state {
                IncidentState::Open => "open",
                IncidentState::Resolved => "resolved",
            });
            opened.append_value(incident.opened_ms);
            resolved.append_option(incident.resolved_ms);
            let names: Vec<&str> = incident.services().into_iter().collect();
            services.append_value(names.join(","));
            let kinds: BTreeSet<&str> = incident.anomalies().map(|a| a.class.as_str()).collect();
            classes.append_value(kinds.into_iter().collect::<Vec<_>>().join(","));
            anomalies.append_value(incident.members.len() as u64);
            reopened.append_value(incident.reopened);
            let best = incident.root_causes.first();
            top.append_option(best.map(|r| r.service.as_str()));
            top_class.append_option(best.map(|r| r.class.as_str()));
            top_score.append_option(best.map(|r| r.score));
            entry.append_value(incident.entry_points.join(","));
            ranked.append_value(
                serde_json::to_string(&incident.root_causes).unwrap_or_else(|_| "[]".into()),
            );
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(id.finish()),
            Arc::new(state.finish()),
            Arc::new(opened.finish()),
            Arc::new(resolved.finish()),
            Arc::new(services.finish()),
            Arc::new(classes.finish()),
            Arc::new(anomalies.finish()),
            Arc::new(reopened.finish()),
            Arc::new(top.finish()),
            Arc::new(top_class.finish()),
            Arc::new(top_score.finish()),
            Arc::new(entry.finish()),
            Arc::new(ranked.finish()),
        ];
        Ok(vec![RecordBatch::try_new(schema(), columns)?])
    }
}

#[cfg(test)]
mod tests;
