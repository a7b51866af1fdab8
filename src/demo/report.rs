//! The demo's live timeline and its final table.
//!
//! Times are event time since the demo began (wall time multiplied by
//! `--speed`), in seconds and in windows. An incident is attributed to the most
//! recent fault whose afflicted nodes it names; a command is against a healthy
//! service when no fault injected so far afflicts its subject (or the one that
//! did was healed more than two windows before: the engine sees the fleet a
//! window late).

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use super::control::Applied;
use super::model::{Fault, Fleet};
use super::watch::{Changes, Decision, Watcher};
use crate::remediate::playbook::Action;

/// What became of one injected fault.
#[derive(Debug, Clone)]
pub struct FaultRun {
    pub fault: Fault,
    /// Wall seconds since the start.
    pub onset: f64,
    pub incident: Option<u64>,
    pub detected: Option<f64>,
    /// The top root cause: node, class, score.
    pub root_cause: Option<(String, String, f64)>,
    /// The first remedy the fleet carried out.
    pub action: Option<String>,
    pub recovered: Option<f64>,
    /// When the engine verified the recovery.
    pub verified: Option<f64>,
}

impl FaultRun {
    pub fn healed(&self) -> bool {
        self.recovered.is_some()
    }

    fn right_cause(&self) -> bool {
        self.root_cause
            .as_ref()
            .is_some_and(|(node, _, _)| node == self.fault.culprit())
    }
}

/// The live timeline.
pub struct Timeline {
    window: f64,
    speed: f64,
    runs: Vec<FaultRun>,
    applied: Arc<Mutex<Vec<Applied>>>,
    applied_seen: usize,
    /// Incidents no injected fault explains.
    pub unattributed: Vec<u64>,
    /// Allowed commands against services no fault afflicted.
    pub against_healthy: Vec<Decision>,
    /// Commands the governor let through.
    pub allowed: usize,
    /// Whether the engine had no open anomaly at the last poll.
    quiet: bool,
}

impl Timeline {
    pub fn new(window: f64, speed: f64, applied: Arc<Mutex<Vec<Applied>>>) -> Self {
        Timeline {
            window,
            speed,
            runs: Vec::new(),
            applied,
            applied_seen: 0,
            unattributed: Vec::new(),
            against_healthy: Vec::new(),
            allowed: 0,
            quiet: false,
        }
    }

    fn say(&self, now: f64, what: &str, text: &str) {
        println!("[{:6.1} s] {what:<9} {text}", now * self.speed);
    }

    pub fn injected(&mut self, fault: Fault, now: f64) {
        self.say(
            now,
            "inject",
            &format!("{} into {}", fault.kind.label(), fault.target),
        );
        self.runs.push(FaultRun {
            fault,
            onset: now,
            incident: None,
            detected: None,
            root_cause: None,
            action: None,
            recovered: None,
            verified: None,
        });
    }

    /// Faults afflicting `node` at `now` (unhealed, or healed under two windows ago).
    fn afflicting(&self, node: &str, now: f64) -> Option<usize> {
        self.runs.iter().rposition(|r| {
            r.onset <= now
                && r.recovered.is_none_or(|at| at >= now - 2.0 * self.window)
                && r.fault.afflicted().contains(&node)
        })
    }

    pub fn engine(&mut self, changes: &Changes, watcher: &Watcher, now: f64) {
        self.quiet = changes.open_anomalies == 0;
        for incident in &changes.incidents {
            let cause = (
                incident.root_cause.clone(),
                incident.class.clone(),
                incident.score,
            );
            let described = format!(
                "#{} {}: root cause {} ({}, {:.2}); services {}",
                incident.id,
                incident.state,
                or_none(&cause.0),
                or_none(&cause.1),
                cause.2,
                incident.services.join(",")
            );
            if let Some(run) = self
                .runs
                .iter_mut()
                .find(|r| r.incident == Some(incident.id))
            {
                if run.action.is_none() {
                    run.root_cause = Some(cause);
                }
                self.say(now, "incident", &described);
                continue;
            }
            if self.unattributed.contains(&incident.id) {
                continue;
            }
            let named = |r: &FaultRun| {
                let afflicted = r.fault.afflicted();
                incident
                    .services
                    .iter()
                    .any(|s| afflicted.contains(&s.as_str()))
                    || afflicted.contains(&incident.root_cause.as_str())
            };
            let run = self
                .runs
                .iter_mut()
                .rev()
                .find(|r| r.incident.is_none() && r.onset <= now && named(r));
            match run {
                Some(run) => {
                    run.incident = Some(incident.id);
                    run.detected = Some(now);
                    run.root_cause = Some(cause);
                    self.say(now, "incident", &described);
                }
                None if incident.state == "open" => {
                    self.unattributed.push(incident.id);
                    self.say(now, "incident", &format!("{described} (no injected fault)"));
                }
                None => {}
            }
        }
        for decision in &changes.decisions {
            self.decided(decision, now);
        }
        for id in &changes.verified {
            if let Some(run) = self.runs.iter_mut().find(|r| r.incident == Some(*id)) {
                run.verified.get_or_insert(now);
            }
            let service = watcher.incident(*id).map_or("", |i| i.root_cause.as_str());
            self.say(
                now,
                "verified",
                &format!("#{id}: the engine saw {service} back to its baseline"),
            );
        }
    }

    fn decided(&mut self, decision: &Decision, now: f64) {
        self.say(
            now,
            "governor",
            &format!(
                "{} {} ({} on {}): {}",
                decision.verdict,
                decision.command,
                decision.action,
                decision.service,
                decision.reason
            ),
        );
        if decision.verdict != "allow" {
            return;
        }
        self.allowed += 1;
        if decision.action != Action::Notify.as_str()
            && self.afflicting(&decision.service, now).is_none()
        {
            self.say(
                now,
                "WARNING",
                &format!("{} targets a healthy service", decision.command),
            );
            self.against_healthy.push(decision.clone());
        }
    }

    /// Records recoveries the fleet shows.
    pub fn fleet(&mut self, fleet: &Fleet, now: f64) {
        let mut recovered = Vec::new();
        for run in &mut self.runs {
            if run.recovered.is_none() && run.action.is_some() && fleet.healthy(run.fault) {
                run.recovered = Some(now);
                recovered.push(run.fault);
            }
        }
        for fault in recovered {
            self.say(
                now,
                "recovered",
                &format!("{}: {} is healthy again", fault.kind.label(), fault.target),
            );
        }
    }

    /// Prints (and attributes) what the executor carried out on the fleet.
    pub fn applied(&mut self, now: f64) {
        let new: Vec<Applied> = match self.applied.lock() {
            Ok(applied) => applied.iter().skip(self.applied_seen).cloned().collect(),
            Err(_) => return,
        };
        self.applied_seen += new.len();
        for a in new {
            let outcome = if a.ok { "done" } else { "refused" };
            self.say(
                now,
                "executor",
                &format!(
                    "{} {}: {outcome}: {}",
                    a.action.as_str(),
                    a.subject,
                    a.detail
                ),
            );
            if !a.ok || a.dry_run || a.action == Action::Notify {
                continue;
            }
            if let Some(i) = self.afflicting(&a.subject, now) {
                let run = &mut self.runs[i];
                run.action
                    .get_or_insert_with(|| format!("{} {}", a.action.as_str(), a.subject));
            }
        }
    }

    /// When the next fault may come: `spacing` after the last onset and
    /// `after_heal` after it healed, once the engine has no open anomaly (or
    /// a window and a half after the heal at the latest: an anomaly that ends
    /// in the same window a new one opens is applied first); `deadline` after
    /// the last onset if it did not heal.
    pub fn next_onset(&self, spacing: f64, after_heal: f64, deadline: f64) -> f64 {
        match self.runs.last() {
            None => 0.0,
            Some(r) => match r.recovered {
                Some(at) if self.quiet => (r.onset + spacing).max(at + after_heal),
                Some(at) => (r.onset + spacing).max(at + 1.5 * self.window),
                None => r.onset + deadline,
            },
        }
    }

    /// Whether every fault is healed and verified, or past `deadline` seconds.
    pub fn settled(&self, now: f64, deadline: f64) -> bool {
        self.runs
            .iter()
            .all(|r| (r.healed() && r.verified.is_some()) || now - r.onset > deadline)
    }

    pub fn finish(&self) -> Vec<FaultRun> {
        self.runs.clone()
    }

    /// Seconds of event time and windows, from wall seconds.
    fn span(&self, wall: f64) -> String {
        format!("{:.1} s ({:.1} w)", wall * self.speed, wall / self.window)
    }
}

fn or_none(text: &str) -> &str {
    if text.is_empty() { "none" } else { text }
}

/// The final table.
pub fn table(runs: &[FaultRun], timeline: &Timeline) -> String {
    let mut rows = vec![[
        "fault".to_string(),
        "injected into".to_string(),
        "detected after".to_string(),
        "root cause named".to_string(),
        "action".to_string(),
        "recovered after".to_string(),
        "verified".to_string(),
    ]];
    for r in runs {
        let after = |at: Option<f64>| at.map_or("-".to_string(), |at| timeline.span(at - r.onset));
        let cause = match &r.root_cause {
            Some((node, class, _)) if r.right_cause() => format!("{node} ({class}) right"),
            Some((node, class, _)) => format!("{node} ({class}) WRONG"),
            None => "-".to_string(),
        };
        rows.push([
            r.fault.kind.label().to_string(),
            r.fault.target.to_string(),
            after(r.detected),
            cause,
            r.action.clone().unwrap_or_else(|| "-".to_string()),
            r.recovered
                .map_or("NOT HEALED".to_string(), |at| timeline.span(at - r.onset)),
            after(r.verified),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::from("\n");
    for (i, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
        if i == 0 {
            let _ = writeln!(out, "{}", "-".repeat(widths.iter().sum::<usize>() + 12));
        }
    }
    out
}

fn median(values: Vec<f64>) -> Option<f64> {
    (!values.is_empty()).then(|| crate::detect::baseline::median(values))
}

/// The targets, each with its measured value.
pub fn targets(runs: &[FaultRun], timeline: &Timeline) -> String {
    let w = timeline.window;
    let healed = runs.iter().filter(|r| r.healed()).count();
    let detection = median(
        runs.iter()
            .filter_map(|r| r.detected.map(|d| (d - r.onset) / w))
            .collect(),
    );
    let worst = runs
        .iter()
        .filter_map(|r| r.recovered.map(|at| (at - r.onset) * timeline.speed))
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
    let right = runs.iter().filter(|r| r.right_cause()).count();
    let mark = |ok: bool| if ok { "met" } else { "NOT MET" };
    let mut out = String::from("\n");
    let _ = writeln!(
        out,
        "healed: {healed} of {} faults ({})",
        runs.len(),
        mark(healed == runs.len())
    );
    let _ = writeln!(
        out,
        "detection: median {} windows after onset (target <= 2: {})",
        detection.map_or("-".to_string(), |d| format!("{d:.2}")),
        mark(detection.is_some_and(|d| d <= 2.0))
    );
    // The target is 30 s at 5 s windows: six windows.
    let limit = 6.0 * w * timeline.speed;
    let _ = writeln!(
        out,
        "onset to recovery: at most {} s (target <= {limit:.0} s: {})",
        worst.map_or("-".to_string(), |v| format!("{v:.1}")),
        mark(healed == runs.len() && worst.is_some_and(|v| v <= limit))
    );
    let _ = writeln!(out, "root cause named right: {right} of {}", runs.len());
    let _ = writeln!(
        out,
        "commands against a healthy service: {} of {} let through ({})",
        timeline.against_healthy.len(),
        timeline.allowed,
        mark(timeline.against_healthy.is_empty())
    );
    let _ = writeln!(
        out,
        "incidents no injected fault explains: {}",
        timeline.unattributed.len()
    );
    out
}
