//! One incident's remediation: which playbook, which step next, what is in
//! flight, and the context its commands are templated from.

use std::collections::{BTreeMap, BTreeSet};

use crate::incident::Incident;
use crate::incident::rank::implicated;

use super::command::Command;
use super::playbook::Context;

/// Where a remediation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum State {
    /// A step is being tried (or waits on a limit).
    Mitigating,
    /// A command waits for a human.
    WaitingApproval,
    /// An executor succeeded; the incident's series must come back.
    Verifying,
    /// The incident's series came back after a step.
    Recovered,
    /// The playbook is exhausted, the breaker opened, or a human was notified.
    Escalated,
    /// A human marked the incident a false positive or its root cause wrong.
    Stopped,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Mitigating => "mitigating",
            State::WaitingApproval => "waiting_approval",
            State::Verifying => "verifying",
            State::Recovered => "recovered",
            State::Escalated => "escalated",
            State::Stopped => "stopped",
        }
    }
}

/// The command of the current step and since when it is in its phase.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Attempt {
    pub command: Command,
    /// Index of the step in the playbook.
    pub step: usize,
    pub since_ms: i64,
    /// A human approved it.
    pub approved: bool,
    /// Sent (else held: waiting for a limit or a human).
    pub sent: bool,
}

/// One incident's remediation.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Case {
    pub incident: u64,
    pub opened_ms: i64,
    pub context: Context,
    pub evidence: Vec<String>,
    pub playbook: usize,
    /// Step indices in the order to try them.
    pub order: Vec<usize>,
    /// Position in `order` of the next step.
    pub next: usize,
    pub attempts: u32,
    pub state: State,
    pub current: Option<Attempt>,
    /// The last reason it waited, so a wait is logged once.
    pub last_wait: String,
    pub updated_ms: i64,
    /// Member anomalies of the incident at the last window.
    #[serde(default)]
    pub members: usize,
    /// A canary in progress.
    #[serde(default)]
    pub canary: Option<super::canary::Canary>,
    /// What the incident's own anomalies on the target measure (what a
    /// canary is judged on), at the last window.
    #[serde(default)]
    pub measures: Vec<super::canary_judge::Measure>,
}

/// Whether every member anomaly of the incident has ended (its series are back
/// to their baselines), or the incident resolved.
pub fn recovered(incident: &Incident) -> bool {
    incident.state == crate::incident::IncidentState::Resolved
        || incident.members().all(|(_, ended)| ended.is_some())
}

/// The context of `incident`'s top root cause: its identity (name, namespace,
/// environment) as ranked, its callers from the members' peer series, and its
/// versions.
pub fn context(
    incident: &Incident,
    versions: &BTreeMap<String, (String, String)>,
) -> Option<(Context, Vec<String>)> {
    let top = incident.root_causes.first()?;
    let service = top.service.clone();
    let (namespace, environment) = (top.namespace.clone(), top.environment.clone());
    let node = top.node();
    let mut callers = BTreeSet::new();
    for anomaly in incident.anomalies() {
        let key = &anomaly.key;
        if implicated(key) == (node.clone(), true) {
            callers.insert(key.service.clone());
        }
    }
    let (version, previous_version) = versions.get(&node).cloned().unwrap_or_default();
    let evidence = top
        .evidence
        .iter()
        .filter(|e| e.spoke)
        .map(|e| format!("{}: {}", e.signal.as_str(), e.detail))
        .collect();
    Some((
        Context {
            service,
            namespace,
            environment,
            class: top.class.as_str().to_string(),
            incident: incident.id,
            score: top.score,
            version,
            previous_version,
            callers: callers.into_iter().collect::<Vec<_>>().join(","),
        },
        evidence,
    ))
}
