use super::*;

const MIN: i64 = 60_000;

fn limits() -> Limits {
    Limits {
        dry_run: false,
        min_score: 0.5,
        max_per_service: 2,
        max_global: 10,
        rate_window_ms: 60 * MIN,
        cooldown_ms: 10 * MIN,
        max_concurrent: 3,
        max_share: 0.5,
        breaker_failures: 3,
        rollback_depth: 1,
    }
}

fn ask<'a>(id: &'a str, service: &'a str, action: Action) -> Request<'a> {
    Request {
        id,
        service,
        action,
        score: 0.9,
        approval: false,
        to_version: "1.0",
        approved: false,
        continues: false,
    }
}

#[test]
fn a_storm_of_a_thousand_incidents_holds_the_rate_limit_and_blast_radius_exactly() {
    let mut g = Governor::new(limits());
    let ids: Vec<String> = (0..1000).map(|i| format!("c{i}")).collect();
    let services: Vec<String> = (0..1000).map(|i| format!("svc{}", i % 100)).collect();
    let mut sent = Vec::new();
    // Every incident asks once a minute for an hour; commands conclude (succeed)
    // two minutes after they are sent.
    for minute in 0..60 {
        let now = minute * MIN;
        for (id, service) in ids.iter().zip(&services) {
            let request = ask(id, service, Action::Restart);
            if sent.iter().any(|(s, _, _)| s == id) {
                continue;
            }
            let d = g.decide(&request, now, 100);
            if d.verdict.sends() {
                sent.push((id.clone(), service.clone(), now));
            } else {
                assert_eq!(d.verdict, Verdict::Wait, "{}", d.reason);
            }
            assert!(g.in_flight() <= 3, "in flight {}", g.in_flight());
        }
        for (id, service, at) in &sent {
            if now - at == 2 * MIN {
                g.conclude(id, service, true);
            }
        }
    }
    // max_global within any hour, and never more than max_concurrent at once.
    assert_eq!(sent.len(), 10, "{sent:?}");
}

#[test]
fn the_kill_switch_stops_everything_until_it_is_off() {
    let mut g = Governor::new(limits());
    g.kill(true);
    for action in Action::ALL {
        let d = g.decide(&ask("a", "cart", action), 0, 10);
        assert_eq!(d.verdict, Verdict::Wait, "{action:?}");
        assert!(d.reason.contains("kill switch"));
    }
    assert_eq!(g.in_flight(), 0);
    g.kill(false);
    assert!(
        g.decide(&ask("a", "cart", Action::Restart), 0, 10)
            .verdict
            .sends()
    );
}

#[test]
fn the_breaker_opens_after_n_failures_and_a_human_closes_it() {
    let mut g = Governor::new(Limits {
        cooldown_ms: 0,
        max_per_service: 100,
        ..limits()
    });
    let ids = ["a", "b", "c"];
    for (i, id) in ids.iter().enumerate() {
        assert!(
            g.decide(&ask(id, "cart", Action::Restart), i as i64, 10)
                .verdict
                .sends()
        );
        let opened = g.conclude(id, "cart", false);
        assert_eq!(opened, i == 2, "failure {}", i + 1);
    }
    let d = g.decide(&ask("d", "cart", Action::Scale), 10, 10);
    assert_eq!(d.verdict, Verdict::Deny);
    assert!(d.reason.contains("circuit breaker"), "{}", d.reason);
    // A notification still goes out; other services are not affected.
    assert!(
        g.decide(&ask("n", "cart", Action::Notify), 10, 10)
            .verdict
            .sends()
    );
    assert!(
        g.decide(&ask("e", "web", Action::Restart), 10, 10)
            .verdict
            .sends()
    );
    g.pause("cart", false);
    assert!(
        g.decide(&ask("f", "cart", Action::Restart), 11, 10)
            .verdict
            .sends()
    );
}

#[test]
fn cooldowns_and_per_service_rates_wait_then_lift() {
    let mut g = Governor::new(limits());
    assert!(
        g.decide(&ask("a", "cart", Action::Restart), 0, 10)
            .verdict
            .sends()
    );
    g.conclude("a", "cart", true);
    let d = g.decide(&ask("b", "cart", Action::Restart), 5 * MIN, 10);
    assert_eq!(d.verdict, Verdict::Wait);
    assert!(d.reason.starts_with("cooldown"), "{}", d.reason);
    assert!(
        g.decide(&ask("c", "cart", Action::Scale), 5 * MIN, 10)
            .verdict
            .sends()
    );
    g.conclude("c", "cart", true);
    let d = g.decide(&ask("d", "cart", Action::ClearCache), 6 * MIN, 10);
    assert!(d.reason.contains("max_per_service 2"), "{}", d.reason);
    assert!(
        g.decide(&ask("e", "cart", Action::Restart), 61 * MIN, 10)
            .verdict
            .sends(),
        "the rate window and cooldown have passed"
    );
}

#[test]
fn low_confidence_and_asking_steps_wait_for_a_human_unless_approved() {
    let mut g = Governor::new(limits());
    let mut low = ask("a", "cart", Action::Restart);
    low.score = 0.3;
    let d = g.decide(&low, 0, 10);
    assert_eq!(d.verdict, Verdict::Approval);
    assert!(d.reason.contains("0.30"), "{}", d.reason);
    assert_eq!(g.in_flight(), 0, "held commands are not in flight");
    low.approved = true;
    let d = g.decide(&low, 1, 10);
    assert_eq!(
        (d.verdict, d.reason.as_str()),
        (Verdict::Allow, "approved by a human")
    );
    let mut asks = ask("b", "web", Action::ReplayJobs);
    asks.approval = true;
    assert_eq!(g.decide(&asks, 2, 10).verdict, Verdict::Approval);
}

#[test]
fn the_rollback_guard_refuses_flagged_versions_and_depth() {
    let mut g = Governor::new(limits());
    g.flag_version("cart", "1.0");
    let d = g.decide(&ask("a", "cart", Action::Rollback), 0, 10);
    assert_eq!(d.verdict, Verdict::Deny);
    assert!(d.reason.contains("flagged"), "{}", d.reason);
    let mut unknown = ask("b", "cart", Action::Rollback);
    unknown.to_version = "";
    assert!(
        g.decide(&unknown, 0, 10)
            .reason
            .contains("no earlier version")
    );
    let mut ok = ask("c", "web", Action::Rollback);
    ok.to_version = "3.1";
    assert!(g.decide(&ok, 0, 10).verdict.sends());
    g.conclude("c", "web", true);
    let mut again = ask("d", "web", Action::Rollback);
    again.to_version = "3.0";
    let d = g.decide(&again, 20 * MIN, 10);
    assert!(d.reason.contains("rollback_depth 1"), "{}", d.reason);
}

#[test]
fn dry_run_records_what_would_be_done_and_counts_it() {
    let mut g = Governor::new(Limits {
        dry_run: true,
        ..limits()
    });
    let d = g.decide(&ask("a", "cart", Action::Restart), 0, 10);
    assert_eq!(d.verdict, Verdict::DryRun);
    assert_eq!(d.reason, "dry run: would restart cart");
    assert_eq!(
        g.decide(&ask("b", "cart", Action::Restart), 1, 10).verdict,
        Verdict::Wait,
        "a dry run keeps the cooldown it would have kept"
    );
}

#[test]
fn the_share_of_services_bounds_distinct_targets() {
    let mut g = Governor::new(Limits {
        max_share: 0.2,
        ..limits()
    });
    // 10 services: at most 2 distinct targets at once.
    assert!(
        g.decide(&ask("a", "s1", Action::Restart), 0, 10)
            .verdict
            .sends()
    );
    assert!(
        g.decide(&ask("b", "s2", Action::Restart), 0, 10)
            .verdict
            .sends()
    );
    let d = g.decide(&ask("c", "s3", Action::Restart), 0, 10);
    assert!(d.reason.contains("2 of 10 services"), "{}", d.reason);
    assert!(
        g.decide(&ask("d", "s1", Action::Scale), 0, 10)
            .verdict
            .sends()
    );
}
