//! Incidents: anomalies grouped into one incident per underlying failure, not an
//! alert storm.
//!
//! An anomaly that opens joins the incident one of whose members began within
//! `join_windows` before its onset (a member that merely persists does not hold
//! the incident open to later, unrelated failures) and holds a member it is
//! related to within `hops` calls on the service graph ([`graph`]): the same
//! node, a node it calls or shares a dependency with, or a node that calls it
//! if it began soon enough to be that node's cause ([`graph::related`]); a
//! caller's view of its calls to a peer is about that peer, and about the
//! caller only as the caller itself. An incident is reported once its
//! anomalies corroborate one another ([`IncidentParams::min_anomalies`]
//! distinct measurements, the quantiles of one counting once, or one strong
//! enough alone). An anomaly on a node already in an incident that is still gathering (within
//! `max_join_windows` of its opening) joins it however long after the last
//! onset: more of the same failure. Else it opens a new incident. An
//! incident is `resolved` once every member anomaly has ended and `resolve_windows`
//! windows passed; one of its series failing again within `reopen_windows`
//! after that reopens it (flapping control) instead of opening another. Another
//! symptom on one of its nodes opens an incident of its own: a new fault on a
//! service that was in the last incident is a new failure.
//!
//! The stage consumes what detection emits ([`DetectOutput`]) and publishes the
//! `incidents` table. Memory: at most `max_incidents` incidents (oldest resolved
//! dropped first), the graph's bound.

pub mod calls;
pub mod config;
pub mod graph;
pub mod history;
mod join;
pub mod log;
pub mod node;
pub mod rank;
pub mod store;

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use tracing::info;

use crate::detect::SeriesKey;
use crate::detect::anomaly::{Anomaly, AnomalyEvent};
use crate::detect::task::DetectOutput;
use crate::flow::{Emit, Stage};
use crate::persist::StateFileError;
use graph::ServiceGraph;
use history::History;
pub use log::{GraphEdge, IncidentLog};
use rank::RootCause;

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
    /// Event time a resolved incident is kept.
    pub retain_ms: i64,
    /// Event time an idle edge stays in the graph.
    pub edge_ttl_ms: i64,
    /// Most edges in the graph.
    pub max_edges: usize,
    /// Windows of series history the ranking reads.
    pub history_windows: usize,
    /// Most series in that history.
    pub max_history_series: usize,
    /// Anomalies on distinct measurements (the quantiles of one count once)
    /// an incident needs before it is reported.
    pub min_anomalies: usize,
}

/// What the incident stage tells the stages after it.
#[derive(Debug, Clone)]
pub enum IncidentEvent {
    /// A window closed at `end_ms` (event time, the clock of everything
    /// downstream); `incidents` are the reported incidents that are open or
    /// changed in it, `services` the nodes the service graph holds.
    Window {
        end_ms: i64,
        services: usize,
        incidents: Vec<Incident>,
    },
    /// A service's version changed.
    Deployment(crate::window::deployments::VersionChange),
    /// A service's live instances changed.
    Instances(crate::window::inventory::Instances),
    /// Per-instance health of a closed window (before the window).
    InstanceHealth(std::sync::Arc<crate::window::instance_health::InstanceWindow>),
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
    /// Its subject, worked out from the key once (every join asks it of
    /// every member of the open incidents); not stored.
    #[serde(skip)]
    subject: std::sync::OnceLock<graph::Subject>,
}

impl Member {
    fn new(anomaly: Anomaly) -> Self {
        Member {
            anomaly,
            ended_ms: None,
            subject: std::sync::OnceLock::new(),
        }
    }

    fn subject(&self) -> &graph::Subject {
        self.subject
            .get_or_init(|| graph::Subject::of(&self.anomaly))
    }
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

    /// Whether one of its anomalies is on node `id`'s own series ([`node`]),
    /// or on a series of its callers that points at it (the incident is about
    /// `id` already: `id` showing more of its failure is part of it).
    fn has_node(&self, id: &str) -> bool {
        self.members
            .iter()
            .any(|m| m.subject().own == id || m.subject().about == id)
    }

    /// Whether series `key` is one of its members and was anomalous at or
    /// after `since`: the same symptom coming back, not merely the same node.
    fn recurs(&self, key: &SeriesKey, since: i64) -> bool {
        self.members
            .iter()
            .any(|m| &m.anomaly.key == key && m.ended_ms.is_none_or(|end| end >= since))
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
    store: Option<store::IncidentStore>,
    /// Incidents changed, and dropped, since they were last written.
    changed: BTreeSet<u64>,
    removed: Vec<u64>,
    /// The window's new anomalies, grouped once the window closes.
    pending: Vec<Anomaly>,
    /// Updates of anomalies in `pending`, applied once they are grouped.
    pending_updates: Vec<AnomalyEvent>,
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
            changed: BTreeSet::new(),
            removed: Vec::new(),
            pending: Vec::new(),
            pending_updates: Vec::new(),
        }
    }

    /// Keeps the incidents in the database at `path` across restarts, loading
    /// what it holds.
    pub fn stored_at(mut self, path: &std::path::Path) -> Result<Self, StateFileError> {
        let legacy = path.with_extension("json");
        let import = !path.exists() && legacy.exists();
        let (store, mut next_id, mut incidents) = store::IncidentStore::open(path)?;
        if import {
            // Earlier versions kept `incidents.json`: carry it over once.
            (next_id, incidents) = crate::persist::load(&legacy, 1)?.unwrap_or((1, Vec::new()));
            let all: Vec<&Incident> = incidents.iter().collect();
            if !store.write(next_id, &all, &[]) {
                return Err(StateFileError {
                    path: path.to_path_buf(),
                    reason: "cannot write the incidents imported from incidents.json".into(),
                });
            }
            let _ = std::fs::rename(&legacy, legacy.with_extension("json.imported"));
        }
        if !incidents.is_empty() {
            info!(incidents = incidents.len(), path = %path.display(), "restored incidents");
        }
        self.incidents = incidents;
        self.next_id = next_id.max(1);
        self.log.publish(&self.incidents);
        self.store = Some(store);
        Ok(self)
    }

    /// Writes what changed since the last write.
    fn persist(&mut self) {
        let Some(store) = &self.store else {
            self.changed.clear();
            self.removed.clear();
            return;
        };
        if self.changed.is_empty() && self.removed.is_empty() {
            return;
        }
        let changed: Vec<&Incident> = self
            .incidents
            .iter()
            .filter(|i| self.changed.contains(&i.id))
            .collect();
        if store.write(self.next_id, &changed, &self.removed) {
            self.changed.clear();
            self.removed.clear();
        }
    }

    /// The incidents now (oldest first).
    pub fn incidents(&self) -> &[Incident] {
        &self.incidents
    }

    /// Groups a window's new anomalies, deepest first: those on a node none of
    /// whose dependencies is anomalous in the batch go first, then their
    /// callers. A caller failing because of a dependency then finds the
    /// dependency's incident (newer, gathering) before an older incident of its
    /// own that it would otherwise reopen: a checkout that recovered from a bad
    /// deploy and now fails because payments fail is in the payments incident,
    /// not a recurrence of the deploy.
    pub fn on_batch(&mut self, batch: Vec<Anomaly>) {
        let implicated: Vec<String> = batch.iter().map(|a| rank::implicated(&a.key).0).collect();
        let nodes: BTreeSet<&String> = implicated.iter().collect();
        let reach = self.params.hops.max(1) * 2;
        let mut batch: Vec<(usize, Anomaly)> = batch
            .into_iter()
            .zip(&implicated)
            .map(|(a, own)| {
                let below = nodes
                    .iter()
                    .filter(|n| **n != own && self.graph.reaches(own, n, reach))
                    .count();
                (below, a)
            })
            .collect();
        batch.sort_by_key(|(below, _)| *below);
        for (_, anomaly) in batch {
            self.on_event(&AnomalyEvent::Opened(anomaly));
        }
    }

    /// Applies one anomaly event.
    pub fn on_event(&mut self, event: &AnomalyEvent) {
        match event {
            AnomalyEvent::Opened(anomaly) => {
                let id = self.join(anomaly.clone());
                self.changed.insert(id);
            }
            AnomalyEvent::Updated {
                key,
                pattern,
                onset_ms,
                at_ms,
                ..
            } => {
                if let Some((incident, _)) = self.member(key, pattern, *onset_ms) {
                    incident.active_ms = incident.active_ms.max(*at_ms);
                    let id = incident.id;
                    self.changed.insert(id);
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
                    let id = incident.id;
                    self.changed.insert(id);
                }
            }
        }
    }

    /// Learns the window's edges and series, ranks the open incidents' root
    /// causes, resolves incidents whose members all ended `resolve_windows` ago,
    /// publishes the table, and tells what changed.
    pub fn on_window(&mut self, window: &crate::window::WindowTables) -> IncidentEvent {
        self.graph.on_window(window);
        self.log.publish_graph(&self.graph);
        self.history.on_window(window);
        self.rank_open();
        let quiet = self.params.resolve_windows * self.params.window_ms;
        for incident in &mut self.incidents {
            // In event time: when it had been quiet long enough (windows
            // without data may close later, or never).
            let quiet_since = incident.quiet_since(quiet);
            if incident.state == IncidentState::Open
                && quiet_since.is_some_and(|at| at <= window.end_ms)
            {
                incident.state = IncidentState::Resolved;
                incident.resolved_ms = quiet_since;
                self.changed.insert(incident.id);
                info!(incident = incident.id, "incident resolved");
            }
        }
        let incidents = self
            .incidents
            .iter()
            .filter(|i| {
                i.confirmed && (i.state == IncidentState::Open || self.changed.contains(&i.id))
            })
            .cloned()
            .collect();
        self.drop_old(window.end_ms);
        self.log.publish(&self.incidents);
        self.persist();
        IncidentEvent::Window {
            end_ms: window.end_ms,
            services: self.graph.nodes(),
            incidents,
        }
    }

    /// Groups and ranks the anomalies an early look into the open window
    /// opened, and publishes the incidents; the window's close moves their
    /// lifecycle on (and hands them to remediation) as usual.
    ///
    /// An anomaly that would join another node's incident waits for the
    /// close: the window's endings go out before its openings (an incident
    /// whose last members end in it is recovering, and a neighbour failing
    /// then is a failure of its own), and an early look comes before them.
    fn on_early(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        let (now, later): (Vec<Anomaly>, Vec<Anomaly>) = pending.into_iter().partition(|anomaly| {
            let subject = graph::Subject::of(anomaly);
            self.incident_for(anomaly, &subject)
                .is_none_or(|i| self.incidents[i].has_node(&subject.own))
        });
        self.pending = later;
        if now.is_empty() {
            return;
        }
        self.on_batch(now);
        self.rank_open();
        self.log.publish(&self.incidents);
    }

    /// Groups the anomalies waiting in `pending`, then applies their updates.
    fn group_pending(&mut self) {
        let batch = std::mem::take(&mut self.pending);
        self.on_batch(batch);
        for event in std::mem::take(&mut self.pending_updates) {
            self.on_event(&event);
        }
    }

    /// Takes an update or ending of an anomaly still waiting in `pending` (one
    /// opened by a look, held for the close by [`Self::on_early`]); gives any
    /// other event back. An update waits with it. An ending withdraws it: the
    /// close judged its window in full and did not hold it, so it joins
    /// nothing (it would otherwise join as an open member that nothing ends
    /// any more, holding its incident open for good).
    fn on_pending(&mut self, event: AnomalyEvent) -> Option<AnomalyEvent> {
        let Some(index) = self.pending.iter().position(|a| is_of(&event, a)) else {
            return Some(event);
        };
        if matches!(event, AnomalyEvent::Ended { .. }) {
            let withdrawn = self.pending.remove(index);
            self.pending_updates.retain(|e| !is_of(e, &withdrawn));
        } else {
            self.pending_updates.push(event);
        }
        None
    }

    /// Forgets unconfirmed incidents that resolved, resolved incidents older
    /// than `retain_ms`, and the oldest resolved beyond `max_incidents`.
    fn drop_old(&mut self, now_ms: i64) {
        let horizon = now_ms.saturating_sub(self.params.retain_ms);
        let excess = self
            .incidents
            .len()
            .saturating_sub(self.params.max_incidents);
        let mut dropped = 0;
        let removed = &mut self.removed;
        self.incidents.retain(|i| {
            let resolved = i.state == IncidentState::Resolved;
            let old = i.resolved_ms.is_some_and(|r| r < horizon);
            let drop = resolved && (!i.confirmed || old || dropped < excess);
            if drop {
                dropped += 1;
                removed.push(i.id);
            }
            !drop
        });
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
                self.changed.insert(incident.id);
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
            let index = incident
                .members
                .iter()
                .position(|m| m.anomaly.is_episode(key, pattern, onset_ms))?;
            Some((incident, index))
        })
    }
}

/// Whether `event` is an update or ending of `anomaly`'s episode.
fn is_of(event: &AnomalyEvent, anomaly: &Anomaly) -> bool {
    event
        .episode()
        .is_some_and(|(key, pattern, onset)| anomaly.is_episode(key, pattern, onset))
}

/// The operations (else services) of the members' request series on nodes
/// nothing calls, sorted: where users meet the failure.
fn entry_points(members: &[&Anomaly], graph: &ServiceGraph) -> Vec<String> {
    let mut out = BTreeSet::new();
    for anomaly in members {
        let key = &anomaly.key;
        let own = node::own(key);
        if !matches!(key.signal.as_str(), "service" | "operation")
            || !graph.knows(&own)
            || graph.is_called(&own)
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
    type Out = IncidentEvent;

    fn name(&self) -> &'static str {
        "incidents"
    }

    fn on_data(&mut self, input: DetectOutput, out: &mut Emit<IncidentEvent>) {
        match input {
            DetectOutput::Event(event) => match *event {
                AnomalyEvent::Opened(anomaly) => self.pending.push(anomaly),
                event => {
                    if let Some(event) = self.on_pending(event) {
                        self.on_event(&event);
                    }
                }
            },
            DetectOutput::Early(_) => self.on_early(),
            DetectOutput::Closed(window) => {
                self.group_pending();
                out.push(self.on_window(&window));
            }
            DetectOutput::Deployment(change) => out.push(IncidentEvent::Deployment(change)),
            DetectOutput::Instances(i) => out.push(IncidentEvent::Instances(i)),
            DetectOutput::InstanceHealth(h) => out.push(IncidentEvent::InstanceHealth(h)),
        }
    }

    fn on_stop(&mut self, _out: &mut Emit<IncidentEvent>) {
        self.group_pending();
        self.persist();
    }
}

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
