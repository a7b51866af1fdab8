//! The canary: one instance first, then the rest or an escalation.

use super::*;

fn pods(l: &mut Loop, n: usize) {
    let instances = crate::window::inventory::Instances {
        namespace: String::new(),
        service: "cart".into(),
        environment: String::new(),
        instances: (0..n).map(|i| format!("cart-{i}")).collect(),
        k8s_namespace: "shop-prod".into(),
        k8s_deployment: "cart".into(),
    };
    let event = RemediateInput::Incident(IncidentEvent::Instances(instances));
    l.remediate.on_data(event, &mut Vec::new());
}

#[test]
fn a_canary_restarts_one_instance_first_then_widens_to_the_rest() {
    let mut l = Loop::new(limits());
    pods(&mut l, 4);
    let leak = l.open("cart", FailureClass::MemoryLeak);
    l.tick();
    let canary = l.tick();
    assert_eq!(actions(&canary), ["restart"]);
    let params = &canary[0].data.params;
    assert_eq!(
        (params["instances"].as_str(), params["canary"].as_str()),
        ("cart-0", "true")
    );
    let target = &canary[0].data.target;
    assert_eq!(
        (
            target.k8s_namespace.as_str(),
            target.k8s_deployment.as_str(),
            target.instances.len()
        ),
        ("shop-prod", "cart", 4)
    );
    l.report(&canary[0], Status::Succeeded);
    assert!(
        l.tick().is_empty(),
        "the canary runs for canary_windows first"
    );
    let widened = l.tick();
    assert_eq!(actions(&widened), ["restart"]);
    let params = &widened[0].data.params;
    assert_eq!(
        (params["instances"].as_str(), params["canary"].as_str()),
        ("cart-1,cart-2,cart-3", "false")
    );
    assert_ne!(widened[0].id, canary[0].id);
    l.report(&widened[0], Status::Succeeded);
    l.end(&leak);
    l.tick();
    assert_eq!(l.state(), State::Recovered);
    assert_eq!(l.restarts_learned("cart"), Some((1, 1)));
}

#[test]
fn a_canary_that_makes_things_worse_aborts_and_escalates() {
    let mut l = Loop::new(limits());
    pods(&mut l, 2);
    l.open("cart", FailureClass::MemoryLeak);
    l.tick();
    let canary = l.tick();
    l.report(&canary[0], Status::Succeeded);
    // A new anomaly joins the incident while only the canary was restarted.
    let mut worse = anomaly("cart", l.w);
    worse.key.name = "p99_ms".into();
    l.incidents.on_event(&AnomalyEvent::Opened(worse));
    let after = l.tick();
    assert_escalated_without_widening(&l, &after, "canary: new anomalies after acting on cart-0");
}

/// The canary aborted for `reason`: a human told, nothing widened.
fn assert_escalated_without_widening(l: &Loop, after: &[Command], reason: &str) {
    assert_eq!(actions(after), ["notify"], "no widening, a human is told");
    assert_eq!(l.state(), State::Escalated);
    let decisions = l.remediate.log.decisions();
    assert!(
        decisions.iter().any(|d| d.reason.contains(reason)),
        "{decisions:?}"
    );
}

/// The cart instances' memory in the window that closes next; a pod named
/// `namespace/pod` is a namesake's in that namespace.
fn memory(l: &mut Loop, pods: &[(&str, f64)]) {
    use crate::window::instance_health::{InstanceRow, InstanceWindow};
    let rows = pods
        .iter()
        .map(|(pod, bytes)| InstanceRow {
            namespace: pod.split_once('/').map_or("", |(ns, _)| ns).into(),
            service: "cart".into(),
            instance: pod.to_string(),
            requests: 50,
            duration_ms: 500.0,
            gauges: vec![("process.memory.usage".into(), *bytes)],
            ..Default::default()
        })
        .collect();
    let window = InstanceWindow {
        start_ms: l.w * W,
        end_ms: (l.w + 1) * W,
        rows,
    };
    let event = IncidentEvent::InstanceHealth(std::sync::Arc::new(window));
    l.remediate
        .on_data(RemediateInput::Incident(event), &mut Vec::new());
}

/// A leak on two cart pods, its canary restart out and succeeded, then the
/// pods' memory in the two windows that follow; the commands of the second.
fn canary_then(after: &[(&str, f64)]) -> (Loop, Vec<Command>) {
    let mut l = Loop::new(limits());
    pods(&mut l, 2);
    let mut leak = anomaly("cart", l.w);
    leak.class = FailureClass::MemoryLeak;
    leak.key.signal = "metric".into();
    leak.key.name = "process.memory.usage".into();
    l.incidents.on_event(&AnomalyEvent::Opened(leak));
    memory(&mut l, &[("cart-0", 900.0), ("cart-1", 910.0)]);
    l.tick();
    memory(&mut l, &[("cart-0", 920.0), ("cart-1", 930.0)]);
    let canary = l.tick();
    assert_eq!(canary[0].data.params["instances"], "cart-0");
    l.report(&canary[0], Status::Succeeded);
    memory(&mut l, after);
    assert!(l.tick().is_empty());
    memory(&mut l, after);
    let then = l.tick();
    (l, then)
}

#[test]
fn a_canary_whose_pod_recovered_while_the_rest_still_leak_widens() {
    // Restarted, the canary pod comes back under a new name.
    let (_, widened) = canary_then(&[("cart-0-b7x", 150.0), ("cart-1", 990.0)]);
    assert_eq!(actions(&widened), ["restart"]);
    let params = &widened[0].data.params;
    assert_eq!(params["instances"], "cart-1");
    assert!(
        params["canary_result"].starts_with("recovered per instance: process.memory.usage"),
        "{params:?}"
    );
}

#[test]
fn a_canary_whose_pod_did_not_recover_aborts_and_escalates() {
    let (l, after) = canary_then(&[("cart-0", 985.0), ("cart-1", 990.0)]);
    assert_escalated_without_widening(&l, &after, "canary on cart-0: no better than the rest");
}

#[test]
fn a_namesake_in_another_namespace_does_not_pass_for_the_canary() {
    // A fresh `cart` pod of staging, not acted on, must not count.
    let (l, after) = canary_then(&[
        ("cart-0", 985.0),
        ("cart-1", 990.0),
        ("staging/cart-9", 90.0),
    ]);
    assert_escalated_without_widening(&l, &after, "canary on cart-0: no better than the rest");
}
