//! Canary remediation: on a target with several instances, a `restart` or
//! `rollback` first acts on a small share of them (`canary_share`, at least
//! one, never all), then on the rest.
//!
//! The canary is judged by what the engine sees: the executor's success, then
//! `canary_windows` windows in which no new anomaly joins the incident. Per
//! instance recovery is not observed (the incident's series are per service),
//! so the canary guards against a remedy that makes things worse; a remedy that
//! does nothing is caught by the verification after widening. A canary that
//! fails aborts the remediation and escalates. If the incident recovers during
//! the canary, the remaining instances are left alone.

use serde::{Deserialize, Serialize};

use super::RemediateStage;
use super::case::{Attempt, Case, State};
use super::command::Command;
use super::playbook::Action;
use crate::flow::Emit;

/// A canary in progress.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Canary {
    /// The instances left for the widening.
    pub rest: Vec<String>,
    /// Member anomalies of the incident when the canary went out.
    pub members: usize,
}

/// Whether `action` acts per instance (so a canary makes sense).
pub fn per_instance(action: Action) -> bool {
    matches!(action, Action::Restart | Action::Rollback)
}

/// The canary's share of `instances` (at least one, never all), or `None`
/// when there are fewer than two.
pub fn split(instances: &[String], share: f64) -> Option<(Vec<String>, Vec<String>)> {
    if instances.len() < 2 {
        return None;
    }
    let n = instances.len();
    let first = ((share * n as f64).ceil() as usize).clamp(1, n - 1);
    Some((instances[..first].to_vec(), instances[first..].to_vec()))
}

impl RemediateStage {
    /// Makes `command` a canary when the step acts per instance and the target
    /// runs several; remembers the rest in the case.
    pub(super) fn canary(&self, case: &mut Case, command: &mut Command) {
        if !self.params.canary || !per_instance(command.data.action) {
            return;
        }
        let Some(instances) = self.instances.get(&case.context.service) else {
            return;
        };
        let Some((first, rest)) = split(&instances.instances, self.params.canary_share) else {
            return;
        };
        let params = &mut command.data.params;
        params.insert("instances".into(), first.join(","));
        params.insert("canary".into(), "true".into());
        case.canary = Some(Canary {
            rest,
            members: case.members,
        });
    }

    /// A canary verifying: widens after `canary_windows` quiet windows, aborts
    /// and escalates when the incident grew.
    pub(super) fn canary_window(&mut self, case: &mut Case, out: &mut Emit<Command>) {
        let Some(canary) = case.canary.clone() else {
            return;
        };
        let Some(attempt) = case.current.clone() else {
            case.canary = None;
            return;
        };
        if case.members > canary.members {
            let instances = attempt.command.data.params.get("instances").cloned();
            let why = format!(
                "canary: new anomalies after acting on {}",
                instances.unwrap_or_default()
            );
            case.canary = None;
            self.abort(case, &why, out);
            return;
        }
        let wait = i64::from(self.params.canary_windows) * self.params.window_ms;
        if self.now_ms - attempt.since_ms < wait {
            return;
        }
        // Widen: the same step on the rest, as a continuation of the canary.
        let data = &attempt.command.data;
        self.governor.conclude_untried(&attempt.command.id);
        let mut params = data.params.clone();
        params.insert("instances".into(), canary.rest.join(","));
        params.insert("canary".into(), "false".into());
        let playbook = data.playbook.clone();
        let command = self.command(case, data.action, params, &playbook);
        case.canary = None;
        case.state = State::Mitigating;
        case.current = Some(Attempt {
            command,
            step: attempt.step,
            since_ms: self.now_ms,
            approved: true,
            sent: false,
        });
        self.decide(case, out);
    }

    /// Ends the remediation after a failed canary: no further step.
    fn abort(&mut self, case: &mut Case, why: &str, out: &mut Emit<Command>) {
        if let Some(a) = case.current.take() {
            let data = &a.command.data;
            self.record(
                case,
                &a.command,
                super::governor::Verdict::Deny,
                &format!("failed: {why}"),
            );
            if !data.dry_run {
                self.governor
                    .conclude(&a.command.id, &data.target.service, false);
                self.learning
                    .record(Self::learn_key(case, data.action), None);
            }
        }
        self.escalate(case, why, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("pod-{i}")).collect()
    }

    #[test]
    fn a_canary_is_a_small_share_never_all_and_needs_two_instances() {
        assert_eq!(split(&names(1), 0.25), None);
        let (first, rest) = split(&names(2), 0.25).expect("two");
        assert_eq!((first.len(), rest.len()), (1, 1));
        let (first, rest) = split(&names(10), 0.25).expect("ten");
        assert_eq!((first.len(), rest.len()), (3, 7));
        let (first, rest) = split(&names(3), 1.0).expect("all but one");
        assert_eq!((first.len(), rest.len()), (2, 1));
    }
}
