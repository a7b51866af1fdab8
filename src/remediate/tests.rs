use super::*;
use crate::detect::FailureClass;
use crate::detect::anomaly::AnomalyEvent;
use crate::incident::testing::{W, anomaly, params, window};
use crate::incident::{IncidentLog, IncidentStage};
use command::Status;
use governor::Limits;
use tokio::sync::oneshot;

/// The canary rollout, its widening and its abort.
mod canary;

const SOURCE: &str = "homeostat://test";

fn limits() -> Limits {
    Limits {
        dry_run: false,
        min_score: 0.0,
        max_per_service: 10,
        max_global: 100,
        rate_window_ms: 3_600_000,
        cooldown_ms: 0,
        max_concurrent: 10,
        max_share: 1.0,
        breaker_failures: 10,
        rollback_depth: 2,
    }
}

/// A remediation stage on the built-in playbooks, 10 s windows.
fn stage(limits: Limits) -> RemediateStage {
    let params = RemediateParams {
        source: SOURCE.into(),
        window_ms: W,
        settle_windows: 1,
        command_ttl_ms: 300_000,
        outcome_timeout_ms: 3 * W,
        verify_windows: 4,
        canary: true,
        canary_share: 0.25,
        canary_windows: 2,
        canary_actions: vec![Action::Restart, Action::Rollback],
    };
    let playbooks = Playbooks::built_in().expect("playbooks");
    RemediateStage::new(
        params,
        playbooks,
        Governor::new(limits),
        RemediationLog::new(100),
    )
}

/// An incident stage and a remediation stage in a row, on event time.
struct Loop {
    incidents: IncidentStage,
    remediate: RemediateStage,
    w: i64,
    sent: Vec<Command>,
}

impl Loop {
    fn new(limits: Limits) -> Self {
        let mut incidents = IncidentStage::new(params_for_incidents(), IncidentLog::default());
        incidents.on_window(&window(0, &[("web", "cart")]));
        Loop {
            incidents,
            remediate: stage(limits),
            w: 1,
            sent: Vec::new(),
        }
    }

    fn open(&mut self, service: &str, class: FailureClass) -> crate::detect::Anomaly {
        let mut a = anomaly(service, self.w);
        a.class = class;
        self.incidents.on_event(&AnomalyEvent::Opened(a.clone()));
        a
    }

    fn end(&mut self, a: &crate::detect::Anomaly) {
        self.incidents.on_event(&AnomalyEvent::Ended {
            key: a.key.clone(),
            pattern: a.pattern.clone(),
            onset_ms: a.onset_ms,
            ended_ms: self.w * W,
        });
    }

    /// Closes a window; returns the commands it sent.
    fn tick(&mut self) -> Vec<Command> {
        let event = self
            .incidents
            .on_window(&window(self.w, &[("web", "cart")]));
        self.w += 1;
        let mut out = Vec::new();
        self.remediate
            .on_data(RemediateInput::Incident(event), &mut out);
        self.sent.extend(out.clone());
        out
    }

    fn report(&mut self, command: &Command, status: Status) -> Vec<Command> {
        let mut out = Vec::new();
        let o = command::outcome("executor://test", command, status, "done");
        self.remediate
            .on_data(RemediateInput::Outcome(Box::new(o)), &mut out);
        self.sent.extend(out.clone());
        out
    }

    fn control(&mut self, request: ControlRequest) -> (ControlReply, Vec<Command>) {
        let (tx, mut rx) = oneshot::channel();
        let mut out = Vec::new();
        self.remediate.on_data(
            RemediateInput::Control(Control { request, reply: tx }),
            &mut out,
        );
        (rx.try_recv().expect("reply"), out)
    }

    fn state(&self) -> State {
        self.remediate.cases().next().expect("a case").state
    }

    /// What was learned of restarts against `service`'s memory leaks:
    /// (attempts, successes).
    fn restarts_learned(&self, service: &str) -> Option<(u32, u32)> {
        let key = ("memory_leak".into(), service.into(), Action::Restart);
        let learned = self.remediate.learning().get(&key)?;
        Some((learned.attempts, learned.successes))
    }
}

fn params_for_incidents() -> crate::incident::IncidentParams {
    params()
}

fn actions(commands: &[Command]) -> Vec<&str> {
    commands.iter().map(|c| c.data.action.as_str()).collect()
}

#[test]
fn a_leak_is_restarted_verified_and_learned() {
    let mut l = Loop::new(limits());
    let leak = l.open("cart", FailureClass::MemoryLeak);
    assert!(
        l.tick().is_empty(),
        "the root cause settles for a window first"
    );
    let sent = l.tick();
    assert_eq!(actions(&sent), ["restart"]);
    let c = &sent[0];
    assert_eq!((c.subject.as_str(), c.data.attempt), ("cart", 1));
    assert_eq!(c.data.root_cause.class, "memory_leak");
    assert!(!c.data.evidence.is_empty());
    assert!(l.report(c, Status::Succeeded).is_empty());
    assert_eq!(l.state(), State::Verifying);
    l.tick();
    l.end(&leak);
    assert!(l.tick().is_empty());
    assert_eq!(l.state(), State::Recovered);
    assert_eq!(l.restarts_learned("cart"), Some((1, 1)));
}

#[test]
fn failed_steps_move_on_and_an_exhausted_playbook_escalates() {
    let mut l = Loop::new(limits());
    l.open("cart", FailureClass::MemoryLeak);
    l.tick();
    let restart = l.tick();
    let scale = l.report(&restart[0], Status::Failed);
    assert_eq!(actions(&scale), ["scale"]);
    assert_eq!(
        scale[0].data.params.get("direction").map(String::as_str),
        Some("out")
    );
    assert_eq!(scale[0].data.attempt, 2);
    // The executor succeeds but the leak goes on: verification fails, and the
    // playbook (restart, scale) is exhausted.
    l.report(&scale[0], Status::Succeeded);
    let mut escalation = Vec::new();
    for _ in 0..6 {
        escalation.extend(l.tick());
    }
    assert_eq!(actions(&escalation), ["notify"]);
    assert!(
        escalation[0].data.params["message"].contains("escalated"),
        "{:?}",
        escalation[0].data.params
    );
    assert_eq!(l.state(), State::Escalated);
    let decisions = l.remediate.log.decisions();
    assert!(
        decisions
            .iter()
            .any(|d| d.reason.contains("not recovered within 4 windows")),
        "{decisions:?}"
    );
}

#[test]
fn a_command_without_an_outcome_times_out_and_the_next_step_follows() {
    let mut l = Loop::new(limits());
    l.open("cart", FailureClass::MemoryLeak);
    l.tick();
    assert_eq!(actions(&l.tick()), ["restart"]);
    let mut next = Vec::new();
    for _ in 0..5 {
        next.extend(l.tick());
    }
    assert_eq!(actions(&next), ["scale"]);
}

#[test]
fn a_held_command_waits_for_approval_and_goes_out_once_approved() {
    let mut l = Loop::new(Limits {
        min_score: 1.01,
        ..limits()
    });
    l.open("cart", FailureClass::MemoryLeak);
    l.tick();
    assert!(l.tick().is_empty());
    assert_eq!(l.state(), State::WaitingApproval);
    let (reply, _) = l.control(ControlRequest::Pending);
    let ControlReply::Pending(held) = reply else {
        panic!("{reply:?}")
    };
    assert_eq!(actions(&held), ["restart"]);
    let (reply, out) = l.control(ControlRequest::Decide {
        command: held[0].id.clone(),
        approve: true,
        by: "sre".into(),
    });
    assert!(matches!(reply, ControlReply::Done(_)), "{reply:?}");
    assert_eq!(actions(&out), ["restart"]);
    assert_eq!(out[0].id, held[0].id, "the same idempotency key");
    let (reply, _) = l.control(ControlRequest::Decide {
        command: "nope".into(),
        approve: true,
        by: "sre".into(),
    });
    assert!(matches!(reply, ControlReply::Refused(_)));
}

#[test]
fn the_kill_switch_holds_every_command_until_released() {
    let mut l = Loop::new(limits());
    l.control(ControlRequest::Kill(true));
    l.open("cart", FailureClass::MemoryLeak);
    for _ in 0..4 {
        assert!(l.tick().is_empty());
    }
    l.control(ControlRequest::Kill(false));
    assert_eq!(actions(&l.tick()), ["restart"]);
    let waits = l
        .remediate
        .log
        .decisions()
        .iter()
        .filter(|d| d.verdict == "wait")
        .count();
    assert_eq!(waits, 1, "a wait is recorded once, not every window");
}

#[test]
fn outcomes_of_another_engine_are_ignored() {
    let mut l = Loop::new(limits());
    l.open("cart", FailureClass::MemoryLeak);
    l.tick();
    let mut restart = l.tick().remove(0);
    restart.source = "homeostat://other".into();
    l.report(&restart, Status::Failed);
    assert_eq!(l.state(), State::Mitigating);
    assert!(l.remediate.log.outcomes().is_empty());
}

#[test]
fn a_faulty_deploy_is_rolled_back_to_the_previous_version() {
    let mut l = Loop::new(limits());
    let change = crate::window::deployments::VersionChange {
        namespace: String::new(),
        service: "cart".into(),
        environment: String::new(),
        from: "1.4".into(),
        to: "1.5".into(),
        at_ms: W,
    };
    l.remediate.on_data(
        RemediateInput::Incident(IncidentEvent::Deployment(change)),
        &mut Vec::new(),
    );
    l.open("cart", FailureClass::FaultyDeployment);
    l.tick();
    let sent = l.tick();
    assert_eq!(actions(&sent), ["rollback"]);
    assert_eq!(sent[0].data.params["to_version"], "1.4");
    assert_eq!(sent[0].data.target.version, "1.5");
}

#[test]
fn a_rollback_takes_the_versions_of_the_failing_environment() {
    let mut l = Loop::new(limits());
    for (env, from, to) in [("staging", "2.0", "2.1"), ("prod", "1.4", "1.5")] {
        let change = crate::window::deployments::VersionChange {
            namespace: "shop".into(),
            service: "cart".into(),
            environment: env.into(),
            from: from.into(),
            to: to.into(),
            at_ms: W,
        };
        l.remediate.on_data(
            RemediateInput::Incident(IncidentEvent::Deployment(change)),
            &mut Vec::new(),
        );
    }
    // Staging's cart fails after its deploy; production's deployed later.
    let mut a = anomaly("cart", l.w);
    a.class = FailureClass::FaultyDeployment;
    a.key.attributes = "namespace=shop,environment=staging".into();
    l.incidents.on_event(&AnomalyEvent::Opened(a));
    l.tick();
    let sent = l.tick();
    assert_eq!(actions(&sent), ["rollback"]);
    let target = &sent[0].data.target;
    assert_eq!(
        (target.environment.as_str(), target.version.as_str()),
        ("staging", "2.1")
    );
    assert_eq!(sent[0].data.params["to_version"], "2.0");
}

/// After a rollback healed it, the same incident recurs: the playbook starts
/// over, but the versions are today's (running 1.4, previous 1.5, the flagged
/// one), so the rollback guard refuses to "roll back" onto the bad release.
#[test]
fn a_recurrence_after_a_rollback_never_rolls_onto_the_flagged_version() {
    let mut l = Loop::new(limits());
    let deploy = |l: &mut Loop, from: &str, to: &str| {
        let change = crate::window::deployments::VersionChange {
            namespace: String::new(),
            service: "cart".into(),
            environment: String::new(),
            from: from.into(),
            to: to.into(),
            at_ms: l.w * W,
        };
        l.remediate.on_data(
            RemediateInput::Incident(IncidentEvent::Deployment(change)),
            &mut Vec::new(),
        );
    };
    deploy(&mut l, "1.4", "1.5");
    let a = l.open("cart", FailureClass::FaultyDeployment);
    l.tick();
    let sent = l.tick();
    assert_eq!(sent[0].data.params["to_version"], "1.4");
    l.report(&sent[0], Status::Succeeded);
    deploy(&mut l, "1.5", "1.4");
    l.end(&a);
    for _ in 0..2 {
        l.tick();
    }
    assert_eq!(l.state(), State::Recovered);
    let mut again = l.open("cart", FailureClass::ErrorSpike);
    again.detail = "recurred".into();
    for _ in 0..4 {
        l.tick();
    }
    let rollbacks: Vec<&str> = l
        .sent
        .iter()
        .filter(|c| c.data.action == crate::remediate::playbook::Action::Rollback)
        .map(|c| c.data.params["to_version"].as_str())
        .collect();
    assert_eq!(rollbacks, ["1.4"], "{:#?}", l.sent);
}

#[test]
fn a_restart_between_decision_and_outcome_sends_the_unconfirmed_command_again_under_its_id() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("remediation.json");
    let mut l = Loop::new(limits());
    l.remediate = stage(limits()).stored_at(&path).expect("no state yet");
    let leak = l.open("cart", FailureClass::MemoryLeak);
    l.tick();
    let restart = l.tick();
    assert_eq!(actions(&restart), ["restart"]);
    // The engine stops (its state is written) and starts again from the file.
    let mut out = Vec::new();
    l.remediate.on_stop(&mut out);
    let revived = stage(limits()).stored_at(&path).expect("state loads");
    l.remediate = revived;
    assert_eq!(l.state(), State::Mitigating);
    // Unconfirmed before the restart: sent again first thing, under its id.
    let again = l.tick();
    assert_eq!(again.len(), 1);
    assert_eq!(
        (again[0].id.as_str(), again[0].data.attempt),
        ("inc1-a1-restart", 1)
    );
    // The executor (deduping by id) reports; nothing else is sent.
    assert!(l.report(&restart[0], Status::Succeeded).is_empty());
    assert!(l.tick().is_empty());
    l.end(&leak);
    assert!(l.tick().is_empty());
    assert_eq!(l.state(), State::Recovered);
    let mut ids: Vec<&str> = l.sent.iter().map(|c| c.id.as_str()).collect();
    ids.dedup();
    assert_eq!(
        ids,
        ["inc1-a1-restart"],
        "one command (one id), never another"
    );
    // A damaged file stops the start with an error naming it.
    std::fs::write(&path, "{not json").expect("damage");
    let err = stage(limits())
        .stored_at(&path)
        .err()
        .expect("damaged state refused");
    assert!(err.to_string().contains("remediation.json"), "{err}");
}

#[test]
fn a_storm_of_a_thousand_incidents_holds_the_limits_exactly_through_the_stages() {
    let mut l = Loop::new(Limits {
        max_global: 12,
        max_concurrent: 5,
        max_per_service: 10,
        ..limits()
    });
    let mut open = Vec::new();
    for i in 0..1000 {
        open.push(l.open(&format!("svc-{i:04}"), FailureClass::MemoryLeak));
    }
    let mut sent: Vec<Command> = Vec::new();
    for round in 0..8 {
        let out = l.tick();
        if round == 0 {
            let incidents = l.incidents.incidents().len();
            assert_eq!(incidents, 1000, "one incident per unconnected failure");
        }
        sent.extend(out.iter().cloned());
        let in_flight = l.remediate.governor.in_flight();
        assert!(in_flight <= 5, "{in_flight} in flight");
        // Every command succeeds and its service recovers.
        for c in &out {
            l.report(c, Status::Succeeded);
            if let Some(a) = open.iter().find(|a| a.key.service == c.subject) {
                let a = a.clone();
                l.end(&a);
            }
        }
    }
    assert_eq!(sent.len(), 12, "max_global within the rate window, exactly");
    let mut targets: Vec<&str> = sent.iter().map(|c| c.subject.as_str()).collect();
    targets.dedup();
    assert_eq!(targets.len(), 12, "one command per incident");
    let held = l
        .remediate
        .cases()
        .filter(|c| c.current.as_ref().is_some_and(|a| !a.sent) && !c.last_wait.is_empty())
        .count();
    assert_eq!(held, 988, "every other incident waits, and says why");
}
