//! Human override: the kill switch, pausing a service, approving or denying
//! held commands, listing them.

use tokio::sync::oneshot;
use tracing::warn;

use super::RemediateStage;
use super::case::State;
use super::command::Command;
use super::governor::Verdict;
use crate::flow::Emit;

/// A human's request, answered on `reply`.
#[derive(Debug)]
pub struct Control {
    pub request: ControlRequest,
    pub reply: oneshot::Sender<ControlReply>,
}

#[derive(Debug, Clone)]
pub enum ControlRequest {
    /// The global kill switch.
    Kill(bool),
    /// Pause (true) or resume (false) one service's automation; resuming also
    /// closes its circuit breaker.
    Pause { service: String, on: bool },
    /// Approve or deny a held command.
    Decide {
        command: String,
        approve: bool,
        by: String,
    },
    /// The commands waiting for a human.
    Pending,
    /// A human's verdict on an incident: its remediation stops.
    Mark {
        incident: u64,
        verdict: HumanVerdict,
        root_cause: String,
        comment: String,
        by: String,
    },
}

/// What a human says of an incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HumanVerdict {
    FalsePositive,
    WrongRootCause,
}

impl HumanVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            HumanVerdict::FalsePositive => "false_positive",
            HumanVerdict::WrongRootCause => "wrong_root_cause",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "false_positive" => Some(HumanVerdict::FalsePositive),
            "wrong_root_cause" => Some(HumanVerdict::WrongRootCause),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub enum ControlReply {
    Done(String),
    Pending(Vec<Command>),
    Refused(String),
}

impl RemediateStage {
    pub(super) fn on_control(
        &mut self,
        request: ControlRequest,
        out: &mut Emit<Command>,
    ) -> ControlReply {
        let reply = match request {
            ControlRequest::Kill(on) => {
                self.governor.kill(on);
                warn!(on, "kill switch");
                ControlReply::Done(format!("kill switch {}", if on { "on" } else { "off" }))
            }
            ControlRequest::Pause { service, on } => {
                self.governor.pause(&service, on);
                let what = if on { "paused" } else { "resumed" };
                warn!(service = %service, what, "automation");
                ControlReply::Done(format!("automation {what} for {service}"))
            }
            ControlRequest::Pending => ControlReply::Pending(
                self.cases
                    .values()
                    .filter(|c| c.state == State::WaitingApproval)
                    .filter_map(|c| c.current.as_ref().map(|a| a.command.clone()))
                    .collect(),
            ),
            ControlRequest::Decide {
                command,
                approve,
                by,
            } => self.decide_held(&command, approve, &by, out),
            ControlRequest::Mark {
                incident,
                verdict,
                root_cause,
                comment,
                by,
            } => self.mark(incident, verdict, &root_cause, &comment, &by),
        };
        self.publish();
        reply
    }

    /// Stops an incident's remediation on a human's verdict and keeps the
    /// verdict (for learning and audit).
    fn mark(
        &mut self,
        incident: u64,
        verdict: HumanVerdict,
        root_cause: &str,
        comment: &str,
        by: &str,
    ) -> ControlReply {
        self.stopped.insert(incident);
        let mut ranked = String::new();
        if let Some(mut case) = self.cases.remove(&incident) {
            ranked = case.context.service.clone();
            if let Some(a) = case.current.take() {
                if a.sent {
                    self.governor.conclude_untried(&a.command.id);
                }
                let why = format!("withdrawn: {} per {by}", verdict.as_str());
                self.record(&case, &a.command, Verdict::Deny, &why);
            }
            case.state = State::Stopped;
            case.updated_ms = self.now_ms;
            self.cases.insert(incident, case);
        }
        self.log.feedback(super::log::FeedbackRow {
            at: self.now_ms,
            incident,
            verdict: verdict.as_str().to_string(),
            ranked,
            root_cause: root_cause.to_string(),
            comment: comment.to_string(),
            by: by.to_string(),
        });
        warn!(incident, verdict = verdict.as_str(), by, "incident marked");
        ControlReply::Done(format!(
            "incident {incident} marked {}; its remediation stopped",
            verdict.as_str()
        ))
    }

    pub(super) fn decide_held(
        &mut self,
        id: &str,
        approve: bool,
        by: &str,
        out: &mut Emit<Command>,
    ) -> ControlReply {
        let held = self.cases.iter().find_map(|(k, c)| {
            (c.state == State::WaitingApproval
                && c.current.as_ref().is_some_and(|a| a.command.id == id))
            .then_some(*k)
        });
        let Some(key) = held else {
            return ControlReply::Refused(format!("no command {id} waits for approval"));
        };
        let Some(mut case) = self.cases.remove(&key) else {
            return ControlReply::Refused(format!("no command {id} waits for approval"));
        };
        let reply = if approve {
            if let Some(a) = case.current.as_mut() {
                a.approved = true;
            }
            case.state = State::Mitigating;
            self.decide(&mut case, out);
            ControlReply::Done(format!("{id} approved by {by}"))
        } else {
            if let Some(a) = case.current.take() {
                self.record(&case, &a.command, Verdict::Deny, &format!("denied by {by}"));
            }
            case.state = State::Mitigating;
            self.next_step(&mut case, out);
            ControlReply::Done(format!("{id} denied by {by}"))
        };
        self.cases.insert(key, case);
        reply
    }
}
