//! Verification and escalation: outcomes from executors, a step concluded as
//! recovered or failed (what is learned, what the breaker counts), and handing
//! a case to a human.

use std::collections::BTreeMap;

use tracing::{info, warn};

use super::RemediateStage;
use super::case::{Case, State};
use super::command::{Command, Outcome, Status};
use super::governor::{Request, Verdict};
use super::log::OutcomeRow;
use super::playbook::Action;
use crate::flow::Emit;

impl RemediateStage {
    pub(super) fn succeed(&mut self, case: &mut Case) {
        if let Some(a) = case.current.take() {
            let data = &a.command.data;
            if !data.dry_run {
                self.governor
                    .conclude(&a.command.id, &data.target.service, true);
                let recovery = self.now_ms - case.opened_ms;
                self.learning
                    .record(Self::learn_key(case, data.action), Some(recovery));
            } else {
                self.governor.conclude_untried(&a.command.id);
            }
            info!(
                incident = case.incident,
                action = data.action.as_str(),
                "recovered"
            );
        }
        case.state = State::Recovered;
        case.updated_ms = self.now_ms;
    }

    /// Concludes the current step as failed and moves on. `tried`: the remedy
    /// was carried out (or may have been); a command no executor could run
    /// (rejected) teaches nothing and counts for no breaker.
    pub(super) fn fail(
        &mut self,
        case: &mut Case,
        why: &str,
        tried: bool,
        out: &mut Emit<Command>,
    ) {
        let Some(a) = case.current.take() else {
            return;
        };
        let data = &a.command.data;
        warn!(
            incident = case.incident,
            action = data.action.as_str(),
            why,
            "remediation step failed"
        );
        self.record(case, &a.command, Verdict::Deny, &format!("failed: {why}"));
        let mut opened = false;
        if tried && !data.dry_run {
            opened = self
                .governor
                .conclude(&a.command.id, &data.target.service, false);
            self.learning
                .record(Self::learn_key(case, data.action), None);
        } else {
            self.governor.conclude_untried(&a.command.id);
        }
        case.state = State::Mitigating;
        if opened {
            let why = format!("circuit breaker opened for {}", data.target.service);
            self.escalate(case, &why, out);
        } else {
            self.next_step(case, out);
        }
    }

    /// Hands the case to a human: a `notify` command and the state `escalated`.
    pub(super) fn escalate(&mut self, case: &mut Case, why: &str, out: &mut Emit<Command>) {
        case.state = State::Escalated;
        case.updated_ms = self.now_ms;
        let params = BTreeMap::from([(
            "message".to_string(),
            format!(
                "escalated: {why} ({} on {}, incident {})",
                case.context.class, case.context.service, case.incident
            ),
        )]);
        let playbook = self.playbooks.playbooks[case.playbook].name.clone();
        let mut command = self.command(case, Action::Notify, params, &playbook);
        let request = Request {
            id: &command.id,
            service: &command.subject,
            action: Action::Notify,
            score: 1.0,
            approval: false,
            to_version: "",
            approved: false,
            continues: false,
        };
        let d = self.governor.decide(&request, self.now_ms, self.services);
        self.record(
            case,
            &command,
            d.verdict,
            &format!("escalation: {why}; {}", d.reason),
        );
        if d.verdict.sends() {
            command.data.dry_run = d.verdict == Verdict::DryRun;
            case.attempts += 1;
            out.push(command);
        }
        warn!(incident = case.incident, why, "remediation escalated");
    }

    pub(super) fn on_outcome(&mut self, outcome: &Outcome, out: &mut Emit<Command>) {
        let data = &outcome.data;
        if data.command_source != self.params.source {
            return; // another engine's command on a shared topic
        }
        self.log.outcome(OutcomeRow {
            seq: 0,
            at: self.now_ms,
            incident: data.incident,
            command: data.command.clone(),
            service: data.service.clone(),
            action: data.action.as_str().to_string(),
            status: data.status.as_str().to_string(),
            executor: outcome.source.clone(),
            detail: data.detail.clone(),
        });
        let Some(mut case) = self.cases.remove(&data.incident) else {
            return;
        };
        let current = case
            .current
            .as_ref()
            .is_some_and(|a| a.sent && a.command.id == data.command);
        if current && case.state == State::Mitigating {
            match data.status {
                Status::Succeeded => {
                    if let Some(a) = case.current.as_mut() {
                        a.since_ms = self.now_ms;
                    }
                    case.state = State::Verifying;
                    case.updated_ms = self.now_ms;
                }
                Status::Failed | Status::Rejected => {
                    let why = format!("executor {}: {}", data.status.as_str(), data.detail);
                    let tried = data.status == Status::Failed;
                    self.fail(&mut case, &why, tried, out);
                }
                Status::Accepted | Status::Started => {}
            }
        }
        self.cases.insert(data.incident, case);
        self.publish();
        self.persist();
    }
}
