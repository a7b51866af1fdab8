//! The safety governor: every command passes it, and every decision is kept
//! with its reason.
//!
//! In the order they are checked: the kill switch (stops everything); automation
//! paused for the service; its circuit breaker (open after `breaker_failures`
//! remediations in a row failed, until a human resumes it); for actions that
//! change the system, the cooldown per (service, action), the rate limits per
//! service and overall within `rate_window`, the blast radius (at most
//! `max_concurrent` remediations in flight, on at most `max_share` of the
//! services the graph holds) and the rollback guard (never onto a version that
//! was itself flagged, at most `rollback_depth` rollbacks in a row); then the
//! confidence tier (a root cause scored under `min_score`, or a step that always
//! asks, waits for a human); then dry-run, which records what would have been
//! done and sends the command marked `dry_run`.
//!
//! Time is the pipeline's event time (`now_ms`, the end of the last closed
//! window), so a replay decides as living through it did. Memory: the issued
//! commands of the last `rate_window`, one cooldown per (service, action) used
//! within it, the in-flight commands, and per service a failure count and the
//! flagged versions (at most [`MAX_FLAGGED`] each).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::playbook::Action;

/// Flagged versions remembered per service.
pub const MAX_FLAGGED: usize = 16;

/// The governor's limits (`[remediation]`).
#[derive(Debug, Clone)]
pub struct Limits {
    pub dry_run: bool,
    pub min_score: f64,
    pub max_per_service: usize,
    pub max_global: usize,
    pub rate_window_ms: i64,
    pub cooldown_ms: i64,
    pub max_concurrent: usize,
    pub max_share: f64,
    pub breaker_failures: u32,
    pub rollback_depth: u32,
}

/// What the governor decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Send it.
    Allow,
    /// Send it marked `dry_run`: record what would be done.
    DryRun,
    /// Hold it until a human approves or denies it.
    Approval,
    /// Not now (a limit that time lifts: cooldown, rate, blast radius, pause).
    Wait,
    /// Never for this step (kill switch, breaker, rollback guard, denied).
    Deny,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::DryRun => "dry_run",
            Verdict::Approval => "approval",
            Verdict::Wait => "wait",
            Verdict::Deny => "deny",
        }
    }

    /// Whether the command goes out.
    pub fn sends(self) -> bool {
        matches!(self, Verdict::Allow | Verdict::DryRun)
    }
}

/// A decision and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub verdict: Verdict,
    pub reason: String,
}

fn decision(verdict: Verdict, reason: impl Into<String>) -> Decision {
    Decision {
        verdict,
        reason: reason.into(),
    }
}

/// What is asked of the governor.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub id: &'a str,
    pub service: &'a str,
    pub action: Action,
    /// The root cause's score.
    pub score: f64,
    /// The step always asks a human.
    pub approval: bool,
    /// For a rollback: the version to go back to.
    pub to_version: &'a str,
    /// A human approved this very command.
    pub approved: bool,
    /// It widens a canary that passed: the canary's cooldown and the
    /// per-service rate do not hold it back.
    pub continues: bool,
}

/// What of the governor survives a restart: the switches, the rate window,
/// cooldowns, in-flight commands, breakers and flagged versions.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Saved {
    killed: bool,
    paused: Vec<String>,
    issued: Vec<(i64, String)>,
    last_action: Vec<(String, Action, i64)>,
    in_flight: Vec<(String, String)>,
    failures: Vec<(String, u32)>,
    open: Vec<String>,
    flagged: Vec<(String, Vec<String>)>,
    rollbacks: Vec<(String, u32)>,
}

/// The governor's state.
#[derive(Debug)]
pub struct Governor {
    limits: Limits,
    killed: bool,
    paused: BTreeSet<String>,
    issued: VecDeque<(i64, String)>,
    last_action: HashMap<(String, Action), i64>,
    in_flight: BTreeMap<String, String>,
    failures: HashMap<String, u32>,
    open: BTreeSet<String>,
    flagged: HashMap<String, VecDeque<String>>,
    rollbacks: HashMap<String, u32>,
}

fn human(ms: i64) -> String {
    humantime::format_duration(std::time::Duration::from_millis(ms.max(0) as u64)).to_string()
}

impl Governor {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            killed: false,
            paused: BTreeSet::new(),
            issued: VecDeque::new(),
            last_action: HashMap::new(),
            in_flight: BTreeMap::new(),
            failures: HashMap::new(),
            open: BTreeSet::new(),
            flagged: HashMap::new(),
            rollbacks: HashMap::new(),
        }
    }

    /// Its state, to persist.
    pub fn save(&self) -> Saved {
        Saved {
            killed: self.killed,
            paused: self.paused.iter().cloned().collect(),
            issued: self.issued.iter().cloned().collect(),
            last_action: self
                .last_action
                .iter()
                .map(|((s, a), at)| (s.clone(), *a, *at))
                .collect(),
            in_flight: self
                .in_flight
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            failures: self.failures.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            open: self.open.iter().cloned().collect(),
            flagged: self
                .flagged
                .iter()
                .map(|(k, v)| (k.clone(), v.iter().cloned().collect()))
                .collect(),
            rollbacks: self
                .rollbacks
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
        }
    }

    /// Takes up a saved state (the limits stay those configured now).
    pub fn restore(&mut self, saved: Saved) {
        self.killed = saved.killed;
        self.paused = saved.paused.into_iter().collect();
        self.issued = saved.issued.into_iter().collect();
        self.last_action = saved
            .last_action
            .into_iter()
            .map(|(s, a, at)| ((s, a), at))
            .collect();
        self.in_flight = saved.in_flight.into_iter().collect();
        self.failures = saved.failures.into_iter().collect();
        self.open = saved.open.into_iter().collect();
        self.flagged = saved
            .flagged
            .into_iter()
            .map(|(k, v)| (k, v.into_iter().collect()))
            .collect();
        self.rollbacks = saved.rollbacks.into_iter().collect();
    }

    /// Turns the global kill switch on or off.
    pub fn kill(&mut self, on: bool) {
        self.killed = on;
    }

    /// Pauses (or resumes) automation for one service; resuming also closes its
    /// circuit breaker.
    pub fn pause(&mut self, service: &str, on: bool) {
        if on {
            self.paused.insert(service.to_string());
        } else {
            self.paused.remove(service);
            self.open.remove(service);
            self.failures.remove(service);
        }
    }

    /// Whether the kill switch is on, the paused services and the open breakers.
    pub fn switches(&self) -> (bool, Vec<String>, Vec<String>) {
        (
            self.killed,
            self.paused.iter().cloned().collect(),
            self.open.iter().cloned().collect(),
        )
    }

    /// Remembers that `version` of `service` was itself at fault: no rollback onto it.
    pub fn flag_version(&mut self, service: &str, version: &str) {
        if version.is_empty() {
            return;
        }
        let flagged = self.flagged.entry(service.to_string()).or_default();
        if !flagged.iter().any(|v| v == version) {
            flagged.push_back(version.to_string());
            if flagged.len() > MAX_FLAGGED {
                flagged.pop_front();
            }
        }
    }

    /// Commands sent and not yet concluded.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Decides `request` at `now_ms`, with `services` nodes on the graph; a
    /// command that goes out is counted against the limits from here on.
    pub fn decide(&mut self, request: &Request<'_>, now_ms: i64, services: usize) -> Decision {
        self.forget(now_ms);
        let service = request.service;
        if self.killed {
            return decision(Verdict::Wait, "the kill switch is on");
        }
        if self.paused.contains(service) {
            return decision(Verdict::Wait, format!("automation is paused for {service}"));
        }
        if request.action.acts() {
            if self.open.contains(service) {
                return decision(
                    Verdict::Deny,
                    format!(
                        "circuit breaker open for {service}: {} remediations in a row failed",
                        self.failures.get(service).copied().unwrap_or(0)
                    ),
                );
            }
            if let Some(d) = self.limit(request, now_ms, services) {
                return d;
            }
        }
        let asks = request.approval || request.score < self.limits.min_score;
        if asks && !request.approved && request.action.acts() {
            let why = if request.approval {
                "this step always asks a human".to_string()
            } else {
                format!(
                    "root-cause score {:.2} is under min_score {:.2}",
                    request.score, self.limits.min_score
                )
            };
            return decision(Verdict::Approval, format!("waits for approval: {why}"));
        }
        let verdict = if self.limits.dry_run {
            Verdict::DryRun
        } else {
            Verdict::Allow
        };
        if request.action.acts() {
            self.issued.push_back((now_ms, service.to_string()));
            self.last_action
                .insert((service.to_string(), request.action), now_ms);
            self.in_flight
                .insert(request.id.to_string(), service.to_string());
            if request.action == Action::Rollback {
                *self.rollbacks.entry(service.to_string()).or_default() += 1;
            } else {
                self.rollbacks.remove(service);
            }
        }
        let reason = match (verdict, request.approved) {
            (Verdict::DryRun, _) => format!("dry run: would {} {service}", request.action.as_str()),
            (_, true) => "approved by a human".to_string(),
            _ => "within every limit".to_string(),
        };
        decision(verdict, reason)
    }

    /// The first limit `request` breaks, if any.
    fn limit(&self, request: &Request<'_>, now_ms: i64, services: usize) -> Option<Decision> {
        let (service, action) = (request.service, request.action);
        let l = &self.limits;
        if let Some(&at) = self.last_action.get(&(service.to_string(), action))
            && now_ms - at < l.cooldown_ms
            && !request.continues
        {
            return Some(decision(
                Verdict::Wait,
                format!(
                    "cooldown: {} on {service} {} ago (cooldown {})",
                    action.as_str(),
                    human(now_ms - at),
                    human(l.cooldown_ms)
                ),
            ));
        }
        let mine = self.issued.iter().filter(|(_, s)| s == service).count();
        if mine >= l.max_per_service && !request.continues {
            return Some(decision(
                Verdict::Wait,
                format!(
                    "rate limit: {mine} commands for {service} within {} (max_per_service {})",
                    human(l.rate_window_ms),
                    l.max_per_service
                ),
            ));
        }
        if self.issued.len() >= l.max_global {
            return Some(decision(
                Verdict::Wait,
                format!(
                    "rate limit: {} commands within {} (max_global {})",
                    self.issued.len(),
                    human(l.rate_window_ms),
                    l.max_global
                ),
            ));
        }
        if self.in_flight.len() >= l.max_concurrent {
            return Some(decision(
                Verdict::Wait,
                format!(
                    "blast radius: {} remediations in flight (max_concurrent {})",
                    self.in_flight.len(),
                    l.max_concurrent
                ),
            ));
        }
        let targets: BTreeSet<&String> = self.in_flight.values().collect();
        let share_max = ((l.max_share * services as f64).floor() as usize).max(1);
        if !targets.contains(&service.to_string()) && targets.len() >= share_max {
            return Some(decision(
                Verdict::Wait,
                format!(
                    "blast radius: {} of {services} services under remediation (max_share {})",
                    targets.len(),
                    l.max_share
                ),
            ));
        }
        if action == Action::Rollback {
            return self.rollback_guard(service, request.to_version);
        }
        None
    }

    fn rollback_guard(&self, service: &str, to: &str) -> Option<Decision> {
        if to.is_empty() {
            return Some(decision(
                Verdict::Deny,
                format!("rollback guard: no earlier version of {service} is known"),
            ));
        }
        if self
            .flagged
            .get(service)
            .is_some_and(|f| f.iter().any(|v| v == to))
        {
            return Some(decision(
                Verdict::Deny,
                format!("rollback guard: version {to} of {service} was itself flagged"),
            ));
        }
        let depth = self.rollbacks.get(service).copied().unwrap_or(0);
        if depth >= self.limits.rollback_depth {
            return Some(decision(
                Verdict::Deny,
                format!(
                    "rollback guard: {depth} rollbacks of {service} in a row (rollback_depth {})",
                    self.limits.rollback_depth
                ),
            ));
        }
        None
    }

    /// Concludes an in-flight command; returns true when this failure opened
    /// the service's circuit breaker.
    pub fn conclude(&mut self, id: &str, service: &str, success: bool) -> bool {
        self.in_flight.remove(id);
        if success {
            self.failures.remove(service);
            return false;
        }
        let failures = self.failures.entry(service.to_string()).or_default();
        *failures += 1;
        if *failures >= self.limits.breaker_failures && !self.open.contains(service) {
            self.open.insert(service.to_string());
            return true;
        }
        false
    }

    /// Concludes an in-flight command that was never carried out.
    pub fn conclude_untried(&mut self, id: &str) {
        self.in_flight.remove(id);
    }

    /// Drops what the rate window and cooldowns no longer need.
    fn forget(&mut self, now_ms: i64) {
        let horizon = now_ms - self.limits.rate_window_ms.max(self.limits.cooldown_ms);
        while self
            .issued
            .front()
            .is_some_and(|(at, _)| *at <= now_ms - self.limits.rate_window_ms)
        {
            self.issued.pop_front();
        }
        self.last_action.retain(|_, at| *at > horizon);
    }
}

#[cfg(test)]
#[path = "governor_tests.rs"]
mod tests;
