//! Canary remediation: on a target with several instances, a `restart` or
//! `rollback` first acts on a small share of them (`canary_share`, at least
//! one, never all), then on the rest.
//!
//! The canary is judged by what the engine sees: the executor's success, no
//! new anomaly joining the incident, then after `canary_windows` windows the
//! instances acted on against the rest, per instance, in the windows since
//! acting but the first (the remedy takes effect) against the two windows
//! before ([`super::canary_judge`]): recovered, it widens to the rest; no better,
//! worse or silent, it aborts the remediation and escalates. When the
//! instances report nothing the incident's anomalies measure, quiet windows
//! are all there is to go on, and it widens (the verification after widening
//! still catches a remedy that does nothing). If the incident recovers during
//! the canary, the remaining instances are left alone.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::RemediateStage;
use super::canary_judge::{Judgement, judge};
use super::case::{Attempt, Case, State};
use super::command::Command;
use super::playbook::Action;
use crate::flow::Emit;
use crate::window::instance_health::{InstanceRow, InstanceWindow};

/// Windows of per-instance health kept (longer than a canary runs).
const HEALTH_KEPT_WINDOWS: i64 = 16;
/// Windows before acting that a canary's "before" is read from.
const BEFORE_WINDOWS: i64 = 2;

/// A canary in progress.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Canary {
    /// The instances left for the widening.
    pub rest: Vec<String>,
    /// Member anomalies of the incident when the canary went out.
    pub members: usize,
    /// The target's per-instance health before acting.
    #[serde(default)]
    pub before: Vec<InstanceRow>,
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
        if !self.params.canary || !self.params.canary_actions.contains(&command.data.action) {
            return;
        }
        let Some(instances) = self.instances.get(&case.context.node()) else {
            return;
        };
        let Some((first, rest)) = split(&instances.instances, self.params.canary_share) else {
            return;
        };
        let params = &mut command.data.params;
        params.insert("instances".into(), first.join(","));
        params.insert("canary".into(), "true".into());
        let before = self.rows_since(case, self.now_ms - BEFORE_WINDOWS * self.params.window_ms);
        case.canary = Some(Canary {
            rest,
            members: case.members,
            before,
        });
    }

    /// Keeps the last windows' per-instance health of each service.
    pub(super) fn on_health(&mut self, window: &InstanceWindow) {
        let mut by_service: BTreeMap<&str, Vec<InstanceRow>> = BTreeMap::new();
        for row in &window.rows {
            by_service
                .entry(&row.service)
                .or_default()
                .push(row.clone());
        }
        for (service, rows) in by_service {
            let kept = self.health.entry(service.to_string()).or_default();
            kept.push_back((window.start_ms, rows));
        }
        let horizon = window.start_ms - HEALTH_KEPT_WINDOWS * self.params.window_ms;
        self.health.retain(|_, kept| {
            while kept.front().is_some_and(|(start, _)| *start < horizon) {
                kept.pop_front();
            }
            !kept.is_empty()
        });
    }

    /// The case target's per-instance rows of the windows that began at or
    /// after `since_ms` (rows of a namesake in another namespace or
    /// environment left out).
    fn rows_since(&self, case: &Case, since_ms: i64) -> Vec<InstanceRow> {
        let ctx = &case.context;
        self.health
            .get(&ctx.service)
            .into_iter()
            .flatten()
            .filter(|(start, _)| *start >= since_ms)
            .flat_map(|(_, rows)| rows.iter())
            .filter(|r| r.namespace == ctx.namespace && r.environment == ctx.environment)
            .cloned()
            .collect()
    }

    /// The canary's verdict from the target's per-instance health since
    /// acting at `since_ms`, the first window after skipped (the remedy takes
    /// effect) when there are later ones.
    fn judge_canary(&self, case: &Case, canary: &Canary, since_ms: i64) -> Judgement {
        let mut after = self.rows_since(case, since_ms + self.params.window_ms);
        if after.is_empty() {
            after = self.rows_since(case, since_ms);
        }
        judge(&case.measures, &canary.rest, &canary.before, &after)
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
        let acted_on = attempt.command.data.params.get("instances").cloned();
        let result = match self.judge_canary(case, &canary, attempt.since_ms) {
            Judgement::Failed(why) => {
                let why = format!("canary on {}: {why}", acted_on.unwrap_or_default());
                case.canary = None;
                self.abort(case, &why, out);
                return;
            }
            Judgement::Recovered(how) => format!("recovered per instance: {how}"),
            Judgement::Unobserved => {
                format!(
                    "no new anomalies for {} windows (not observed per instance)",
                    self.params.canary_windows
                )
            }
        };
        // Widen: the same step on the rest, as a continuation of the canary.
        let data = &attempt.command.data;
        self.governor.conclude_untried(&attempt.command.id);
        let mut params = data.params.clone();
        params.insert("instances".into(), canary.rest.join(","));
        params.insert("canary".into(), "false".into());
        params.insert("canary_result".into(), result);
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
