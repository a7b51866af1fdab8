//! Long horizons: three weeks of 10-minute windows whose traffic dips to 40% every
//! weekend (the weekly profile takes over from the daily one after two weeks; that
//! it then predicts the weekends is `baseline.rs`'s
//! `weekly_profile_predicts_weekends_after_two_weeks`), and a leak of 2% an hour at
//! the engine's default 10 s windows.

use homeostat::detect::{Anomaly, FailureClass};

use super::fleet::{Clock, FAULTY, Fault, START_MS, name};
use super::{describe, run_on};

const TEN_MINUTES: i64 = 600_000;
const DAY: i64 = 24 * 3_600_000;

fn weekly(fault_window: i64) -> Clock {
    Clock {
        window_ms: TEN_MINUTES,
        weekend: 0.4,
        fault_window,
    }
}

/// Asserts that nothing fired before `onset_window` and that `class` fired on
/// the faulty service within `within` windows of it.
fn found(anomalies: &[Anomaly], clock: Clock, class: FailureClass, within: i64) -> i64 {
    let onset = START_MS + clock.fault_window * clock.window_ms;
    let early: Vec<Anomaly> = anomalies
        .iter()
        .filter(|a| a.detected_ms < onset || a.key.service != name(FAULTY))
        .cloned()
        .collect();
    assert!(
        early.is_empty(),
        "before the fault or elsewhere:\n{}",
        describe(&early)
    );
    let hit = anomalies
        .iter()
        .find(|a| a.class == class && a.detected_ms - onset <= within * clock.window_ms);
    let Some(hit) = hit else {
        panic!(
            "no {class} within {within} windows; got:\n{}",
            describe(anomalies)
        );
    };
    (hit.detected_ms - onset) / clock.window_ms
}

/// Three healthy weeks: daily cycles, weekends at 40% of weekday traffic (ramps
/// of 4 hours), noise. Nothing fires: not the weekends of the first two weeks
/// (judged by the level and the daily profile), not the third (by the weekly
/// profile).
#[test]
fn three_weeks_with_quiet_weekends_raise_no_anomaly() {
    let clock = weekly(i64::MAX);
    let anomalies = run_on(clock, None, 21 * DAY / TEN_MINUTES);
    assert!(
        anomalies.is_empty(),
        "{} anomalies on healthy traffic:\n{}",
        anomalies.len(),
        describe(&anomalies)
    );
}

/// A leak of 2% an hour under 1% jitter, at 10 s windows: 0.006% a window, so
/// no window-level rule can see it. Found by the slow-growth trend within 3 hours.
#[test]
fn detects_a_leak_of_two_percent_an_hour() {
    let clock = Clock {
        window_ms: 10_000,
        weekend: 1.0,
        fault_window: 2 * 360,
    };
    let anomalies = run_on(clock, Some(Fault::SlowLeak), clock.fault_window + 3 * 360);
    let after = found(&anomalies, clock, FailureClass::MemoryLeak, 3 * 360);
    eprintln!("leak found {after} windows (of 10 s) after it began");
}
