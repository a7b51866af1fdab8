//! The fleet's control endpoint: the executor's `webhook` driver POSTs each
//! remediation command (a structured CloudEvent) here, and the fleet carries it
//! out the way an orchestrator would. An action the fleet cannot carry out
//! answers 422 with the reason, which the executor reports as a failed outcome.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;

use super::model::{Fleet, Kind, TOPOLOGY, node};
use crate::remediate::command::Command;
use crate::remediate::playbook::Action;

/// One command the fleet carried out (or refused).
#[derive(Debug, Clone)]
pub struct Applied {
    /// Seconds since the demo started.
    pub at: f64,
    pub id: String,
    pub action: Action,
    pub subject: String,
    pub ok: bool,
    pub detail: String,
    pub dry_run: bool,
}

/// What the endpoint shares with the demo.
#[derive(Clone)]
pub struct Shared {
    pub fleet: Arc<Mutex<Fleet>>,
    pub applied: Arc<Mutex<Vec<Applied>>>,
    pub started: Instant,
}

/// The routes: `POST /remediate`.
pub fn router(shared: Shared) -> axum::Router {
    axum::Router::new()
        .route("/remediate", post(remediate))
        .with_state(shared)
}

async fn remediate(
    State(shared): State<Shared>,
    Json(command): Json<Command>,
) -> (StatusCode, String) {
    let d = &command.data;
    let result = if d.dry_run {
        Ok("dry run: nothing changed".to_string())
    } else {
        match shared.fleet.lock() {
            Ok(mut fleet) => apply(&mut fleet, d.action, &d.target.service, &d.params),
            Err(_) => Err("the fleet's state is poisoned".to_string()),
        }
    };
    let (ok, detail) = match &result {
        Ok(detail) => (true, detail.clone()),
        Err(reason) => (false, reason.clone()),
    };
    if let Ok(mut applied) = shared.applied.lock() {
        applied.push(Applied {
            at: shared.started.elapsed().as_secs_f64(),
            id: command.id.clone(),
            action: d.action,
            subject: d.target.service.clone(),
            ok,
            detail: detail.clone(),
            dry_run: d.dry_run,
        });
    }
    match result {
        Ok(detail) => (StatusCode::OK, detail),
        Err(reason) => (StatusCode::UNPROCESSABLE_ENTITY, reason),
    }
}

/// Carries out `action` on `subject`.
pub fn apply(
    fleet: &mut Fleet,
    action: Action,
    subject: &str,
    params: &std::collections::BTreeMap<String, String>,
) -> Result<String, String> {
    let known = node(subject).ok_or_else(|| format!("no node called {subject:?} in the fleet"))?;
    match action {
        Action::Notify => Ok(format!(
            "paged the on-call: {}",
            params.get("message").map_or("", String::as_str)
        )),
        Action::Reroute => reroute(fleet, known.name),
        Action::ReplayJobs => Ok(format!("replayed the failed jobs of {subject}")),
        _ => {
            let s = fleet
                .services
                .get_mut(known.name)
                .ok_or_else(|| format!("{subject} is not a service: cannot {action:?} it"))?;
            match action {
                Action::Restart => {
                    s.memory = super::model::BASE_MEMORY;
                    s.leak_per_s = 0.0;
                    // The requests it held are lost with the process.
                    s.waiting_work = 0.0;
                    s.restarts += 1;
                    Ok(format!("restarted {subject} (restart #{})", s.restarts))
                }
                Action::Rollback => {
                    let to = s
                        .previous_version
                        .take()
                        .ok_or_else(|| format!("{subject} has no previous version"))?;
                    let from = std::mem::replace(&mut s.version, to.clone());
                    s.error_share = s.bad_versions.get(&to).copied().unwrap_or(0.002);
                    s.previous_version = Some(from.clone());
                    Ok(format!("rolled {subject} back from {from} to {to}"))
                }
                Action::Scale => {
                    let before = s.replicas;
                    s.replicas = scaled(before, params)?;
                    // The waiting work spreads over the new replicas.
                    s.waiting_work *= f64::from(before) / f64::from(s.replicas.max(1));
                    Ok(format!(
                        "scaled {subject} from {before} to {} replicas",
                        s.replicas
                    ))
                }
                // A cold or poisoned cache is refilled; the model has no cache
                // state of its own, so this changes nothing it can observe.
                _ => Ok(format!("cleared the caches of {subject}")),
            }
        }
    }
}

/// Replicas after a `scale` with `direction` (out/in) and `by` (N or N%).
fn scaled(
    replicas: u32,
    params: &std::collections::BTreeMap<String, String>,
) -> Result<u32, String> {
    let by = params.get("by").map_or("1", String::as_str).trim();
    let step = if let Some(share) = by.strip_suffix('%') {
        let share: f64 = share
            .trim()
            .parse()
            .map_err(|_| format!("scale by {by:?}: not a share"))?;
        ((f64::from(replicas) * share / 100.0).ceil() as u32).max(1)
    } else {
        by.parse()
            .map_err(|_| format!("scale by {by:?}: not a number"))?
    };
    Ok(match params.get("direction").map(String::as_str) {
        Some("in") => replicas.saturating_sub(step).max(1),
        _ => replicas.saturating_add(step).min(64),
    })
}

/// Fails over away from `subject`: an external host's callers go to its backup;
/// a service moves its own calls off whichever external host is failing.
fn reroute(fleet: &mut Fleet, subject: &'static str) -> Result<String, String> {
    let hosts: Vec<&'static str> = match node(subject).map(|n| n.kind) {
        Some(Kind::External { .. }) => vec![subject],
        Some(Kind::Service) => node(subject)
            .into_iter()
            .flat_map(|n| n.calls.iter().map(|(c, _)| *c))
            .filter(|c| fleet.outages.contains_key(c))
            .collect(),
        _ => Vec::new(),
    };
    let mut moved = Vec::new();
    for host in hosts {
        let backup = TOPOLOGY.iter().find_map(|n| match n.kind {
            Kind::External { backup: Some(b) } if n.name == host => Some(b),
            _ => None,
        });
        if let Some(backup) = backup {
            fleet.rerouted.insert(host, backup);
            moved.push(format!("{host} -> {backup}"));
        }
    }
    if moved.is_empty() {
        Err(format!(
            "nothing to reroute away from {subject}: no failing dependency with a backup"
        ))
    } else {
        Ok(format!("rerouted {}", moved.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::demo::model::{Fault, FaultKind};

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn each_remedy_clears_its_fault_for_a_reason_of_the_model() {
        let cases = [
            (FaultKind::MemoryLeak, "cart", Action::Restart, params(&[])),
            (
                FaultKind::FaultyDeployment,
                "checkout",
                Action::Rollback,
                params(&[]),
            ),
            (
                FaultKind::CpuSaturation,
                "recommendation",
                Action::Scale,
                params(&[("by", "200%")]),
            ),
            (
                FaultKind::LatencyDegradation,
                "catalog",
                Action::Scale,
                params(&[("by", "2")]),
            ),
            (
                FaultKind::QueueBacklog,
                "notifier",
                Action::Scale,
                params(&[("by", "2")]),
            ),
            (
                FaultKind::DependencyOutage,
                "pay.primary.example",
                Action::Reroute,
                params(&[]),
            ),
        ];
        let nominal = crate::demo::model::nominal_rates();
        for (kind, target, action, p) in cases {
            let fault = Fault { kind, target };
            let mut fleet = Fleet::new();
            fleet.inject(fault);
            for _ in 0..30 {
                fleet.advance(1.0, &nominal);
            }
            assert!(!fleet.healthy(fault), "{kind:?} shows no symptom");
            apply(&mut fleet, action, target, &p).expect("applied");
            for _ in 0..30 {
                fleet.advance(1.0, &nominal);
            }
            // The backlog drains through the traffic loop, not here.
            fleet.queue.clear();
            assert!(fleet.healthy(fault), "{action:?} did not clear {kind:?}");
        }
    }

    #[test]
    fn the_wrong_remedy_leaves_the_fault() {
        let fault = Fault {
            kind: FaultKind::MemoryLeak,
            target: "cart",
        };
        let mut fleet = Fleet::new();
        fleet.inject(fault);
        apply(&mut fleet, Action::Scale, "cart", &params(&[("by", "1")])).expect("scaled");
        for _ in 0..40 {
            fleet.advance(1.0, &crate::demo::model::nominal_rates());
        }
        assert!(!fleet.healthy(fault));
        let no_version = apply(&mut fleet, Action::Rollback, "cart", &params(&[]));
        assert!(no_version.is_err_and(|e| e.contains("no previous version")));
        assert!(apply(&mut fleet, Action::Restart, "nowhere", &params(&[])).is_err());
    }

    #[test]
    fn scale_reads_counts_and_shares() {
        assert_eq!(scaled(1, &params(&[("by", "50%")])), Ok(2));
        assert_eq!(scaled(4, &params(&[("by", "50%")])), Ok(6));
        assert_eq!(
            scaled(3, &params(&[("by", "2"), ("direction", "in")])),
            Ok(1)
        );
        assert!(scaled(1, &params(&[("by", "many")])).is_err());
    }
}
