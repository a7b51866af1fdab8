//! Remediation: incidents become commands through playbooks and the safety
//! governor; outcomes come back, recovery is verified, and what worked is learned.
//!
//! For each reported incident whose top root cause (service and class) has
//! stayed the same for `settle_windows` windows, the first playbook that fits the cause
//! ([`playbook`]) gives the steps, tried one at a time in the order learning
//! prefers ([`learn`]). Each step's command passes the governor ([`governor`]),
//! which sends it, holds it (a limit that time lifts, or a human's approval) or
//! refuses it (then the next step). A sent command waits for its executor's
//! final outcome (`outcome_timeout`); a success must be followed by the
//! incident's series coming back to their baselines within `verify_windows`
//! (verification); otherwise the next step. When the playbook is exhausted, or
//! the service's circuit breaker opens, the case is escalated: a `notify`
//! command, and the state `escalated`.
//!
//! The stage's clock is the event time of the windows closed upstream, so a
//! replay decides as living through it did. It consumes incident events,
//! outcomes and control requests from one inbox and emits commands, which the
//! engine publishes on the action bus ([`crate::bus`]). Memory: one case per
//! incident remediated (dropped when its incident leaves the incident stage's
//! window of attention, see `prune`), the governor's and the log's bounds.

pub mod canary;
pub mod canary_judge;
pub mod case;
pub mod command;
pub mod config;
pub mod control;
pub mod governor;
pub mod learn;
pub mod log;
pub mod playbook;
pub mod snapshot;
mod verify;

use std::collections::{BTreeMap, HashMap};

use tracing::info;

use crate::flow::{Emit, Stage};
use crate::incident::{Incident, IncidentEvent, IncidentState};
use case::{Attempt, Case, State, context, recovered};
use command::{Cause, Command, CommandData, Outcome, Target};
use governor::{Governor, Request, Verdict};
use learn::Learning;
use log::{DecisionRow, RemediationLog, RemediationRow, StatsRow};
use playbook::{Action, Playbooks, render};

/// Cases kept after they concluded (recovered or escalated), oldest dropped.
const MAX_CONCLUDED: usize = 1000;

pub use control::{Control, ControlReply, ControlRequest, HumanVerdict};

/// What the stage consumes.
#[derive(Debug)]
pub enum RemediateInput {
    Incident(IncidentEvent),
    Outcome(Box<Outcome>),
    Control(Control),
}

/// Timing and identity parameters of the stage.
#[derive(Debug, Clone)]
pub struct RemediateParams {
    pub source: String,
    pub window_ms: i64,
    pub settle_windows: u32,
    pub command_ttl_ms: i64,
    pub outcome_timeout_ms: i64,
    pub verify_windows: u32,
    /// Canary remediation on targets with several instances.
    pub canary: bool,
    pub canary_share: f64,
    pub canary_windows: u32,
    pub canary_actions: Vec<Action>,
}

/// The remediation stage.
pub struct RemediateStage {
    params: RemediateParams,
    playbooks: Playbooks,
    governor: Governor,
    learning: Learning,
    cases: BTreeMap<u64, Case>,
    /// Per incident: its top root cause (service and class) and for how many
    /// windows in a row.
    tops: HashMap<u64, (String, crate::detect::FailureClass, u32)>,
    /// Per service node ([`crate::incident::node`]): (version, previous version).
    versions: BTreeMap<String, (String, String)>,
    /// Per service node: its live instances and Kubernetes identity.
    instances: BTreeMap<String, crate::window::inventory::Instances>,
    /// Per service with several instances: its last windows' per-instance
    /// health (window start, rows), oldest first.
    health: BTreeMap<
        String,
        std::collections::VecDeque<(i64, Vec<crate::window::instance_health::InstanceRow>)>,
    >,
    /// Incidents a human stopped remediating.
    stopped: std::collections::HashSet<u64>,
    /// Where the state is kept across restarts.
    state_path: Option<std::path::PathBuf>,
    /// Commands to send again after a restart (see `on_data`).
    unconfirmed: Vec<Command>,
    now_ms: i64,
    services: usize,
    log: RemediationLog,
}

impl RemediateStage {
    pub fn new(
        params: RemediateParams,
        playbooks: Playbooks,
        governor: Governor,
        log: RemediationLog,
    ) -> Self {
        Self {
            params,
            playbooks,
            governor,
            learning: Learning::default(),
            cases: BTreeMap::new(),
            tops: HashMap::new(),
            versions: BTreeMap::new(),
            instances: BTreeMap::new(),
            health: BTreeMap::new(),
            stopped: std::collections::HashSet::new(),
            state_path: None,
            unconfirmed: Vec::new(),
            now_ms: 0,
            services: 0,
            log,
        }
    }

    /// The cases (for tests and the API).
    pub fn cases(&self) -> impl Iterator<Item = &Case> {
        self.cases.values()
    }

    /// What was learned.
    pub fn learning(&self) -> &Learning {
        &self.learning
    }

    fn on_incidents(
        &mut self,
        end_ms: i64,
        services: usize,
        incidents: &[Incident],
        out: &mut Emit<Command>,
    ) {
        self.now_ms = self.now_ms.max(end_ms);
        self.services = services;
        let mut active = HashMap::new();
        let mut listed = HashMap::new();
        for incident in incidents {
            let back = recovered(incident);
            active.insert(incident.id, back);
            listed.insert(incident.id, incident);
            let Some(top) = incident.root_causes.first() else {
                continue;
            };
            let streak = match self.tops.get(&incident.id) {
                Some((service, class, n)) if *service == top.service && *class == top.class => {
                    n + 1
                }
                _ => 1,
            };
            self.tops
                .insert(incident.id, (top.service.clone(), top.class, streak));
            if incident.state == IncidentState::Open
                && !back
                && streak > self.params.settle_windows
                && !self.cases.contains_key(&incident.id)
                && !self.stopped.contains(&incident.id)
            {
                self.open_case(incident);
            }
        }
        let ids: Vec<u64> = self.cases.keys().copied().collect();
        for id in ids {
            // Not listed: neither open nor changed, so resolved before.
            let back = active.get(&id).copied().unwrap_or(true);
            if let (Some(case), Some(incident)) = (self.cases.get_mut(&id), listed.get(&id)) {
                case.members = incident.anomalies().count();
                case.measures = canary_judge::measures(incident, &case.context.node());
            }
            self.drive(id, back, out);
        }
        self.prune(&active);
        self.publish();
        if !self.cases.is_empty() || !incidents.is_empty() {
            self.persist();
        }
    }

    fn open_case(&mut self, incident: &Incident) {
        let Some((ctx, evidence)) = context(incident, &self.versions) else {
            return;
        };
        let measures = canary_judge::measures(incident, &ctx.node());
        let Some(index) = self.playbooks.playbooks.iter().position(|p| p.fits(&ctx)) else {
            return;
        };
        if ctx.class == "faulty_deployment" {
            self.governor.flag_version(&ctx.service, &ctx.version);
        }
        let actions: Vec<Action> = self.playbooks.playbooks[index]
            .actions
            .iter()
            .map(|s| s.action)
            .collect();
        let order = self.learning.order(&ctx.class, &ctx.service, &actions);
        info!(incident = incident.id, service = %ctx.service, class = %ctx.class, playbook = %self.playbooks.playbooks[index].name, "remediating");
        self.cases.insert(
            incident.id,
            Case {
                incident: incident.id,
                opened_ms: incident.opened_ms,
                context: ctx,
                evidence,
                playbook: index,
                order,
                next: 0,
                attempts: 0,
                state: State::Mitigating,
                current: None,
                last_wait: String::new(),
                updated_ms: self.now_ms,
                members: incident.anomalies().count(),
                canary: None,
                measures,
            },
        );
    }

    /// Moves one case on at the current window.
    fn drive(&mut self, id: u64, back: bool, out: &mut Emit<Command>) {
        let Some(mut case) = self.cases.remove(&id) else {
            return;
        };
        let now = self.now_ms;
        match case.state {
            State::Recovered if !back => {
                // It recurred: start over, in the order learned so far.
                case.state = State::Mitigating;
                case.next = 0;
                self.next_step(&mut case, out);
            }
            State::Recovered | State::Escalated | State::Stopped => {}
            State::WaitingApproval if back => {
                if let Some(a) = case.current.take() {
                    self.record(
                        &case,
                        &a.command,
                        Verdict::Deny,
                        "withdrawn: recovered before approval",
                    );
                }
                case.state = State::Recovered;
            }
            State::WaitingApproval => {}
            State::Verifying if back => self.succeed(&mut case),
            State::Verifying if case.canary.is_some() => {
                self.canary_window(&mut case, out);
            }
            State::Verifying => {
                let since = case.current.as_ref().map_or(now, |a| a.since_ms);
                let verify_ms = self.params.verify_windows as i64 * self.params.window_ms;
                if now - since > verify_ms {
                    let why = format!(
                        "not recovered within {} windows",
                        self.params.verify_windows
                    );
                    self.fail(&mut case, &why, true, out);
                }
            }
            State::Mitigating => match &case.current {
                Some(a) if a.sent => {
                    if now - a.since_ms > self.params.outcome_timeout_ms {
                        self.fail(
                            &mut case,
                            "no final outcome from an executor in time",
                            true,
                            out,
                        );
                    }
                }
                Some(_) => self.decide(&mut case, out),
                None if back => case.state = State::Recovered,
                None => self.next_step(&mut case, out),
            },
        }
        self.cases.insert(id, case);
    }

    /// Builds the command of the next step and asks the governor; escalates
    /// when no step is left.
    fn next_step(&mut self, case: &mut Case, out: &mut Emit<Command>) {
        let playbook = &self.playbooks.playbooks[case.playbook];
        let Some(&step) = case.order.get(case.next) else {
            self.escalate(case, "every step of the playbook was tried", out);
            return;
        };
        case.next += 1;
        // The versions of now, not of when the case opened: after a rollback,
        // the "previous" version is the bad release (flagged, so refused).
        if let Some((version, previous)) = self.versions.get(&case.context.node()) {
            case.context.version.clone_from(version);
            case.context.previous_version.clone_from(previous);
        }
        let spec = &playbook.actions[step];
        let params = spec
            .params
            .iter()
            .map(|(k, v)| (k.clone(), render(v, &case.context)))
            .collect();
        let mut command = self.command(case, spec.action, params, &playbook.name.clone());
        self.canary(case, &mut command);
        case.current = Some(Attempt {
            command,
            step,
            since_ms: self.now_ms,
            approved: false,
            sent: false,
        });
        self.decide(case, out);
    }

    fn command(
        &self,
        case: &Case,
        action: Action,
        params: BTreeMap<String, String>,
        playbook: &str,
    ) -> Command {
        let ctx = &case.context;
        let inventory = self.instances.get(&ctx.node());
        command::command(
            &self.params.source,
            self.now_ms,
            self.params.command_ttl_ms,
            CommandData {
                incident: case.incident,
                action,
                target: Target {
                    service: ctx.service.clone(),
                    namespace: ctx.namespace.clone(),
                    environment: ctx.environment.clone(),
                    version: ctx.version.clone(),
                    previous_version: ctx.previous_version.clone(),
                    k8s_namespace: inventory
                        .map(|i| i.k8s_namespace.clone())
                        .unwrap_or_default(),
                    k8s_deployment: inventory
                        .map(|i| i.k8s_deployment.clone())
                        .unwrap_or_default(),
                    instances: inventory.map(|i| i.instances.clone()).unwrap_or_default(),
                },
                root_cause: Cause {
                    service: ctx.service.clone(),
                    class: ctx.class.clone(),
                    score: ctx.score,
                },
                evidence: case.evidence.clone(),
                params,
                playbook: playbook.to_string(),
                attempt: case.attempts + 1,
                expires_at: String::new(),
                dry_run: false,
            },
        )
    }

    /// Asks the governor about the current attempt and acts on the answer.
    fn decide(&mut self, case: &mut Case, out: &mut Emit<Command>) {
        let Some(mut attempt) = case.current.take() else {
            return;
        };
        let data = &attempt.command.data;
        let demoted = self
            .learning
            .get(&(
                case.context.class.clone(),
                case.context.service.clone(),
                data.action,
            ))
            .is_some_and(learn::Record::demoted);
        let step = &self.playbooks.playbooks[case.playbook].actions[attempt.step];
        let request = Request {
            id: &attempt.command.id,
            service: &data.target.service,
            action: data.action,
            score: data.root_cause.score,
            approval: step.approval || demoted,
            to_version: data.params.get("to_version").map_or("", String::as_str),
            approved: attempt.approved,
            continues: data.params.get("canary").is_some_and(|c| c == "false"),
        };
        let d = self.governor.decide(&request, self.now_ms, self.services);
        if d.verdict != Verdict::Wait || d.reason != case.last_wait {
            self.record(case, &attempt.command, d.verdict, &d.reason);
        }
        case.updated_ms = self.now_ms;
        match d.verdict {
            Verdict::Allow | Verdict::DryRun => {
                if attempt.approved {
                    // Re-stamped: the approval may come long after the decision.
                    let data = attempt.command.data.clone();
                    attempt.command = command::command(
                        &self.params.source,
                        self.now_ms,
                        self.params.command_ttl_ms,
                        data,
                    );
                }
                attempt.command.data.dry_run = d.verdict == Verdict::DryRun;
                attempt.sent = true;
                attempt.since_ms = self.now_ms;
                case.attempts += 1;
                case.last_wait.clear();
                out.push(attempt.command.clone());
                let notify = !attempt.command.data.action.acts();
                case.current = Some(attempt);
                case.state = if notify {
                    State::Escalated
                } else {
                    State::Mitigating
                };
            }
            Verdict::Approval => {
                case.current = Some(attempt);
                case.state = State::WaitingApproval;
            }
            Verdict::Wait => {
                case.last_wait = d.reason;
                case.current = Some(attempt);
            }
            Verdict::Deny => {
                case.last_wait.clear();
                self.next_step(case, out);
            }
        }
    }

    pub(super) fn record(&self, case: &Case, command: &Command, verdict: Verdict, reason: &str) {
        self.log.decision(DecisionRow {
            seq: 0,
            at: self.now_ms,
            incident: case.incident,
            command: command.id.clone(),
            service: command.subject.clone(),
            action: command.data.action.as_str().to_string(),
            verdict: verdict.as_str().to_string(),
            reason: reason.to_string(),
        });
    }

    pub(super) fn learn_key(case: &Case, action: Action) -> learn::Key {
        (
            case.context.class.clone(),
            case.context.service.clone(),
            action,
        )
    }
}

impl RemediateStage {
    /// Forgets settle streaks of incidents no longer reported, and the oldest
    /// concluded cases beyond [`MAX_CONCLUDED`].
    fn prune(&mut self, active: &HashMap<u64, bool>) {
        self.tops.retain(|id, _| active.contains_key(id));
        let concluded: Vec<u64> = self
            .cases
            .values()
            .filter(|c| {
                matches!(
                    c.state,
                    State::Recovered | State::Escalated | State::Stopped
                )
            })
            .map(|c| c.incident)
            .collect();
        let excess = concluded.len().saturating_sub(MAX_CONCLUDED);
        for id in concluded.into_iter().take(excess) {
            self.cases.remove(&id);
        }
    }

    fn publish(&self) {
        let playbooks = &self.playbooks.playbooks;
        let remediations = self
            .cases
            .values()
            .map(|c| RemediationRow {
                incident: c.incident,
                state: c.state.as_str().to_string(),
                service: c.context.service.clone(),
                class: c.context.class.clone(),
                playbook: playbooks[c.playbook].name.clone(),
                attempts: c.attempts,
                command: c
                    .current
                    .as_ref()
                    .map(|a| a.command.id.clone())
                    .unwrap_or_default(),
                action: c
                    .current
                    .as_ref()
                    .map(|a| a.command.data.action.as_str().to_string())
                    .unwrap_or_default(),
                updated: c.updated_ms,
            })
            .collect();
        let stats = self
            .learning
            .entries()
            .map(|((class, service, action), r)| StatsRow {
                class: class.clone(),
                service: service.clone(),
                action: action.as_str().to_string(),
                attempts: r.attempts,
                successes: r.successes,
                success_rate: r.success_rate(),
                median_recovery_ms: r.median_recovery_ms(),
                demoted: r.demoted(),
            })
            .collect();
        self.log.publish(remediations, stats);
    }
}

impl Stage for RemediateStage {
    type In = RemediateInput;
    type Out = Command;

    fn name(&self) -> &'static str {
        "remediate"
    }

    fn on_data(&mut self, input: RemediateInput, out: &mut Emit<Command>) {
        // Commands recorded as sent before a restart, with no outcome since:
        // sent again under their ids (the state is written before commands
        // are published, so this is the outbox; executors dedupe by id).
        out.append(&mut self.unconfirmed);
        match input {
            RemediateInput::Incident(IncidentEvent::Window {
                end_ms,
                services,
                incidents,
            }) => self.on_incidents(end_ms, services, &incidents, out),
            RemediateInput::Incident(IncidentEvent::Instances(i)) => {
                let node = crate::incident::node::id(&i.namespace, &i.service, &i.environment);
                self.instances.insert(node, i);
            }
            RemediateInput::Incident(IncidentEvent::InstanceHealth(window)) => {
                self.on_health(&window);
            }
            RemediateInput::Incident(IncidentEvent::Deployment(change)) => {
                let node = crate::incident::node::id(
                    &change.namespace,
                    &change.service,
                    &change.environment,
                );
                self.versions
                    .insert(node, (change.to.clone(), change.from.clone()));
            }
            RemediateInput::Outcome(outcome) => self.on_outcome(&outcome, out),
            RemediateInput::Control(control) => {
                let reply = self.on_control(control.request, out);
                let _ = control.reply.send(reply);
                self.persist();
            }
        }
    }

    /// Unconfirmed commands of a previous run go out within a second of the
    /// start, whether or not telemetry flows.
    fn tick_every(&self) -> Option<std::time::Duration> {
        Some(std::time::Duration::from_secs(1))
    }

    fn on_tick(&mut self, out: &mut Emit<Command>) {
        out.append(&mut self.unconfirmed);
    }

    fn on_stop(&mut self, _out: &mut Emit<Command>) {
        self.persist();
    }
}

#[cfg(test)]
mod tests;
