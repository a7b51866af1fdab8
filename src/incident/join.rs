//! The join rule: which incident a new anomaly belongs to, and how it joins,
//! reopens or opens one (the rule itself is described in [`crate::incident`]).

use std::collections::BTreeSet;

use tracing::info;

use super::{Incident, IncidentStage, IncidentState, Member, graph, node, rank};
use crate::detect::anomaly::Anomaly;

impl IncidentStage {
    /// The incident `anomaly` (whose subject is `subject`) joins, if any.
    pub(super) fn incident_for(
        &self,
        anomaly: &Anomaly,
        subject: &graph::Subject,
    ) -> Option<usize> {
        let p = &self.params;
        let onset = anomaly.onset_ms;
        let join_from = onset - p.join_windows * p.window_ms;
        let reopen_from = onset - p.reopen_windows * p.window_ms;
        let graph = &self.graph;
        let quiet = p.resolve_windows * p.window_ms;
        let gather_from = onset - p.max_join_windows * p.window_ms;
        let recur_from = reopen_from - quiet;
        self.incidents.iter().rposition(|incident| {
            let own = || incident.has_node(&subject.own);
            match incident.quiet_since(quiet) {
                // A recurrence is a series of it failing again within a few
                // windows of its own recovery (flapping); a neighbour failing
                // after the incident resolved is a failure of its own, and so
                // is another symptom of one of its nodes, or one healthy
                // since long before (a failure's long tail on the node kept
                // the incident from resolving until now).
                Some(resolved) if resolved <= onset => {
                    resolved >= reopen_from && incident.recurs(&anomaly.key, recur_from)
                }
                // Every member ended: it is recovering, not gathering; a
                // neighbour failing now is a failure of its own too, and so
                // is anything past `max_join_windows` of its opening, as
                // while it gathers (else the first anomaly of a window would
                // revive it and the rest of that window, finding it gathering
                // past that bound, would open another).
                _ if incident.members.iter().all(|m| m.ended_ms.is_some()) => {
                    incident.opened_ms >= gather_from && own()
                }
                // Still gathering: a node already in it that shows more of
                // its failure joins however long ago the last one began (a
                // metric sampled once a minute shows a new symptom minutes
                // apart); another node joins when it is related and recent.
                _ => {
                    incident.opened_ms >= gather_from
                        && (own()
                            || incident.last_onset_ms >= join_from
                                && incident.members.iter().any(|m| {
                                    graph::related(graph, subject, m.subject(), p.hops, p.window_ms)
                                }))
                }
            }
        })
    }

    /// Adds a new anomaly to the incident it belongs to, or opens one.
    pub(super) fn join(&mut self, anomaly: Anomaly) -> u64 {
        let subject = graph::Subject::of(&anomaly);
        let found = self.incident_for(&anomaly, &subject);
        let p = &self.params;
        let onset = anomaly.onset_ms;
        let quiet = p.resolve_windows * p.window_ms;
        let member = Member::new(anomaly);
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
                        info!(incident = incident.id, service = %node::name(&subject.own), "incident opened");
                    }
                }
                incident.id
            }
            None => {
                let id = self.next_id;
                self.next_id += 1;
                let confirmed = corroborated(std::slice::from_ref(&member), p.min_anomalies);
                if confirmed {
                    info!(incident = id, service = %node::name(&subject.own), "incident opened");
                }
                self.incidents.push(Incident {
                    id,
                    state: IncidentState::Open,
                    opened_ms: onset,
                    active_ms: onset,
                    last_onset_ms: onset,
                    resolved_ms: None,
                    reopened: 0,
                    confirmed,
                    members: vec![member],
                    root_causes: Vec::new(),
                    entry_points: Vec::new(),
                });
                id
            }
        }
    }
}

/// Whether anomalies are enough for an incident: `min` distinct series, or one
/// on requests (a service's, an operation's, or calls to a peer as the caller
/// sees them), on a log template (the application itself saying something new
/// or unusual), right after a deployment, or decisive (a resource's use far
/// outside its own baseline). A lone resource metric or log count is the
/// commonest false alarm and otherwise waits for corroboration.
pub(super) fn corroborated(members: &[Member], min: usize) -> bool {
    let series: BTreeSet<(&str, &str, Vec<&str>, Vec<&str>)> = members
        .iter()
        .map(|m| measurement(&m.anomaly.key))
        .collect();
    series.len() >= min
        || members.iter().any(|m| {
            let key = &m.anomaly.key;
            matches!(
                key.signal.as_str(),
                "service" | "operation" | "edge" | "log_template"
            ) || rank::implicated(key).1
                || m.anomaly.class == crate::detect::FailureClass::FaultyDeployment
                || m.anomaly.decisive
        })
}

/// The measurement a series is one view of: its service, signal, and name and
/// attributes without a quantile (a `p50`, `p99`, ... segment of the name, a
/// `quantile` attribute). The p90, p95 and p99 of one latency move together:
/// three of them off at once are one piece of evidence, not three.
fn measurement(key: &crate::detect::SeriesKey) -> (&str, &str, Vec<&str>, Vec<&str>) {
    let quantile = |s: &str| {
        s.strip_prefix('p')
            .is_some_and(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
    };
    let name = key
        .name
        .split(['.', '_'])
        .filter(|s| !quantile(s))
        .collect();
    let attributes = key
        .attributes
        .split(',')
        .filter(|pair| !pair.starts_with("quantile="))
        .collect();
    (&key.service, &key.signal, name, attributes)
}

#[cfg(test)]
#[path = "join_tests.rs"]
mod tests;
