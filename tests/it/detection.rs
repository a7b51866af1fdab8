//! The detection stage over 24 hours of event time: a synthetic fleet of 20
//! services with daily seasonality and noise raises no anomaly at all; the same
//! traffic with one fault injected (10 hours in) is detected, with the right
//! class, within 3 windows of the fault's onset, and nothing fires before it.
//!
//! The stage is driven with closed windows as the window stage hands them over
//! (the tables' real schemas, built with the real builders) and with real OTLP
//! log records for the template miner. Windows are 1 minute here (1,440 a day) to
//! keep the run short; the detectors count windows, not seconds.

use std::collections::BTreeMap;

use homeostat::columnar::logs;
use homeostat::detect::{
    Anomaly, AnomalyEvent, AnomalyLog, Catalogue, DetectStage, FailureClass, StageParams,
};

mod deploys;
mod early;
mod fleet;
mod query;
mod seasons;
mod thin;

use fleet::{
    Clock, DAY_WINDOWS, FAULT_WINDOW, FAULTY, Fault, MINUTE, Noise, START_MS, WINDOW_MS, name,
    window, window_at,
};

/// Runs 24 hours of fleet traffic (or, with `fault`, until 10 windows after
/// [`FAULT_WINDOW`]) through a
/// detection stage with the built-in catalogue and the shipped parameters.
fn run(fault: Option<Fault>) -> Vec<Anomaly> {
    let windows = if fault.is_some() {
        FAULT_WINDOW + 10
    } else {
        DAY_WINDOWS
    };
    run_for(fault, windows)
}

/// Runs `windows` windows of fleet traffic with `fault` (see [`run`]).
fn run_for(fault: Option<Fault>, windows: i64) -> Vec<Anomaly> {
    run_on(MINUTE, fault, windows)
}

/// Runs `windows` windows on `clock` with `fault` through a detection stage with
/// the built-in catalogue and the shipped parameters.
fn run_on(clock: Clock, fault: Option<Fault>, windows: i64) -> Vec<Anomaly> {
    let (mut stage, log) = shipped_stage(clock.window_ms);
    let mut noise = Noise::new(0x9E37_79B9_7F4A_7C15 ^ fault.map_or(0, |f| f as u64 + 1));
    // The events the stage emits rebuild its anomaly log (which also drops
    // anomalies `detect.anomaly_retain` after they ended: the replica keeps all).
    let replica = AnomalyLog::new(10_000);
    for w in 0..windows {
        let (tables, resource_logs) = window_at(clock, w, fault, &mut noise);
        let decoded = logs::to_arrow(&resource_logs, 0).expect("logs");
        stage.on_logs(&decoded.batch);
        for event in stage.on_window(&tables) {
            replica.apply(&event);
        }
    }
    assert_eq!(
        replica.snapshot(),
        log.snapshot(),
        "events and log disagree"
    );
    log.snapshot()
}

fn describe(anomalies: &[Anomaly]) -> String {
    let mut by: BTreeMap<String, usize> = BTreeMap::new();
    for a in anomalies {
        *by.entry(format!(
            "{} {} @{}min {}",
            a.class,
            a.key,
            (a.onset_ms - START_MS) / 60_000,
            a.detail
        ))
        .or_default() += 1;
    }
    by.into_iter()
        .map(|(k, n)| format!("  {n} x {k}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A detection stage with the built-in catalogue and the shipped parameters
/// on windows of `window_ms`, and its anomaly log.
fn shipped_stage(window_ms: i64) -> (DetectStage, AnomalyLog) {
    let config = homeostat::config::Config::from_toml_str(&format!(
        "[window]\nsize = \"{window_ms}ms\"\nretain = \"1h\"\n"
    ))
    .expect("config");
    let params: StageParams = homeostat::engine::stage_params(&config);
    let log = AnomalyLog::new(10_000);
    let stage = DetectStage::new(
        Catalogue::built_in().expect("catalogue"),
        params,
        log.clone(),
    );
    (stage, log)
}

/// A detection stage on 1-minute windows with the shipped parameters, and its
/// configuration.
fn minute_stage() -> (DetectStage, homeostat::config::Config) {
    let config =
        homeostat::config::Config::from_toml_str("[window]\nsize = \"1m\"\nretain = \"1h\"\n")
            .expect("config");
    let stage = DetectStage::new(
        Catalogue::built_in().expect("catalogue"),
        homeostat::engine::stage_params(&config),
        AnomalyLog::new(1000),
    );
    (stage, config)
}

/// An episode leaves detection as events: opened once, updated while it holds,
/// ended the first window it does not.
#[test]
fn an_episode_is_opened_updated_and_ended_as_events() {
    let (mut stage, _) = minute_stage();
    let mut noise = Noise::new(11);
    let mut events = Vec::new();
    for w in 0..FAULT_WINDOW + 40 {
        let fault = (w < FAULT_WINDOW + 10).then_some(Fault::ErrorSpike);
        events.extend(stage.on_window(&window(w, fault, &mut noise).0));
    }
    let spike = |e: &&AnomalyEvent| e.key().service == name(FAULTY) && e.key().name == "error_rate";
    let kinds: Vec<&str> = events
        .iter()
        .filter(spike)
        .map(|e| match e {
            AnomalyEvent::Opened(_) => "opened",
            AnomalyEvent::Updated { .. } => "updated",
            AnomalyEvent::Ended { .. } => "ended",
        })
        .collect();
    assert_eq!(kinds.first(), Some(&"opened"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"ended"), "{kinds:?}");
    assert_eq!(
        kinds.iter().filter(|k| **k == "opened").count(),
        1,
        "{kinds:?}"
    );
    assert!(kinds.contains(&"updated"), "{kinds:?}");
    let Some(AnomalyEvent::Ended { ended_ms, .. }) = events.iter().rev().find(|e| spike(e)) else {
        panic!("no end");
    };
    assert_eq!(*ended_ms, START_MS + (FAULT_WINDOW + 10) * WINDOW_MS);
}

/// A failing database makes its caller and the four services up the chain
/// anomalous (errors, dependency failures): one incident, not a storm, through
/// the incident stage fed as the pipeline feeds it (events, then the window).
#[test]
fn a_cascading_database_failure_is_one_incident() {
    use homeostat::incident::{IncidentLog, IncidentParams, IncidentStage};
    let (mut detect, config) = minute_stage();
    let params: IncidentParams = homeostat::engine::incident_params(&config);
    let mut incidents = IncidentStage::new(params, IncidentLog::default());
    let mut noise = Noise::new(5);
    let mut anomalies = Vec::new();
    for w in 0..FAULT_WINDOW + 10 {
        let (tables, _) = window(w, Some(Fault::DatabaseDown), &mut noise);
        for event in detect.on_window(&tables) {
            if let AnomalyEvent::Opened(a) = &event {
                anomalies.push(a.clone());
            }
            incidents.on_event(&event);
        }
        incidents.on_window(&tables);
    }
    let services: std::collections::BTreeSet<&str> =
        anomalies.iter().map(|a| a.key.service.as_str()).collect();
    assert!(services.len() >= 4, "{}", describe(&anomalies));
    let held = incidents.incidents();
    assert_eq!(held.len(), 1, "{held:?}\n{}", describe(&anomalies));
    assert_eq!(held[0].anomalies().count(), anomalies.len());
    // The database sends nothing of its own; its caller's failing calls to it
    // and the healthy dependencies below it put it first.
    let causes = &held[0].root_causes;
    assert_eq!(
        causes.first().map(|r| r.service.as_str()),
        Some("postgres"),
        "{causes:#?}"
    );
}

#[test]
fn a_day_of_steady_seasonal_traffic_raises_no_anomaly() {
    let anomalies = run(None);
    assert!(
        anomalies.is_empty(),
        "{} anomalies on steady traffic:\n{}",
        anomalies.len(),
        describe(&anomalies)
    );
}

fn detects(fault: Fault) -> Vec<Anomaly> {
    let anomalies = run(Some(fault));
    let onset = START_MS + FAULT_WINDOW * WINDOW_MS;
    let early: Vec<Anomaly> = anomalies
        .iter()
        .filter(|a| a.detected_ms < onset)
        .cloned()
        .collect();
    assert!(
        early.is_empty(),
        "{fault:?}: anomalies before the fault:\n{}",
        describe(&early)
    );
    let hit = anomalies.iter().find(|a| {
        a.class == fault.class()
            && a.key.service == name(FAULTY)
            && a.detected_ms - onset <= 3 * WINDOW_MS
            && a.onset_ms >= onset
    });
    assert!(
        hit.is_some(),
        "{fault:?}: no {} anomaly on {} within 3 windows of onset; got:\n{}",
        fault.class(),
        name(FAULTY),
        describe(&anomalies)
    );
    anomalies
}

#[test]
fn detects_an_error_spike() {
    detects(Fault::ErrorSpike);
}

#[test]
fn detects_latency_degradation() {
    detects(Fault::Latency);
}

#[test]
fn detects_saturation() {
    detects(Fault::Saturation);
}

#[test]
fn detects_a_memory_leak() {
    detects(Fault::MemoryLeak);
}

/// A leak that is no staircase: 40% in 30 windows under 1% jitter, so a third of
/// the steps fall. Found by its trend, within 15 windows.
#[test]
fn detects_a_noisy_memory_leak() {
    let anomalies = run_for(Some(Fault::NoisyLeak), FAULT_WINDOW + 30);
    let onset = START_MS + FAULT_WINDOW * WINDOW_MS;
    assert!(
        anomalies.iter().all(|a| a.detected_ms >= onset),
        "{}",
        describe(&anomalies)
    );
    let hit = anomalies.iter().find(|a| {
        a.class == FailureClass::MemoryLeak
            && a.key.service == name(FAULTY)
            && a.detected_ms - onset <= 15 * WINDOW_MS
    });
    assert!(
        hit.is_some(),
        "noisy leak missed:\n{}",
        describe(&anomalies)
    );
}

/// A healthy garbage-collector sawtooth on every service, all day: its ramps are
/// not leaks.
#[test]
fn a_gc_sawtooth_is_not_a_leak() {
    let anomalies = run_for(Some(Fault::GcSawtooth), DAY_WINDOWS);
    assert!(anomalies.is_empty(), "{}", describe(&anomalies));
}

/// Errors from 0.5% to 3%: small in absolute terms, six times the usual.
#[test]
fn detects_a_subtle_error_rise() {
    detects(Fault::SubtleErrors);
}

/// One operation of a service 1.5 times slower, the service's own quantiles
/// barely moved.
#[test]
fn detects_one_slower_operation() {
    detects(Fault::SubtleLatency);
}

/// A log template already known, suddenly frequent: the template-rate pattern.
#[test]
fn detects_a_burst_of_a_known_log_template() {
    detects(Fault::TemplateBurst);
}

#[test]
fn detects_a_dependency_failure() {
    detects(Fault::Dependency);
}

/// The faulty service's call-mix anomaly under `fault`: the caller's own, not
/// its callee's failure.
fn call_mix_anomaly(fault: Fault) -> Anomaly {
    let anomalies = detects(fault);
    let mix = anomalies
        .iter()
        .find(|a| a.key.name == "calls_per_request")
        .unwrap_or_else(|| panic!("no call-mix anomaly:\n{}", describe(&anomalies)));
    assert_eq!(mix.key.service, name(FAULTY));
    mix.clone()
}

#[test]
fn detects_requests_cut_short_by_the_calls_they_skip() {
    let mix = call_mix_anomaly(Fault::EarlyReturn);
    assert!(mix.observed < 0.5 * mix.expected, "{mix:?}");
}

#[test]
fn detects_a_quiet_dependency_slowing_down() {
    // Three calls a window are too few for the edge's quantiles (below the
    // pattern's `min_volume`): the window is judged by its median call. The
    // windows of one call between them are not judged and break no run.
    let anomalies = detects(Fault::QuietDependencySlow);
    let edge = anomalies
        .iter()
        .find(|a| a.key.attributes.contains("callee=mailer"))
        .unwrap_or_else(|| panic!("no anomaly on the quiet edge:\n{}", describe(&anomalies)));
    assert!(edge.detail.contains("the median of"), "{edge:?}");
}

#[test]
fn detects_a_traffic_surge() {
    detects(Fault::TrafficSurge);
}

#[test]
fn detects_a_queue_backlog() {
    detects(Fault::QueueBacklog);
}

#[test]
fn detects_a_deadlock() {
    detects(Fault::Deadlock);
}

#[test]
fn detects_a_new_error_log_pattern() {
    detects(Fault::LogPattern);
}

#[test]
fn detects_a_generic_metric_anomaly() {
    detects(Fault::Generic);
}

#[test]
fn forecasts_saturation_before_the_limit_is_reached() {
    let anomalies = detects(Fault::SaturationTrend);
    let forecast = anomalies
        .iter()
        .find(|a| a.class == FailureClass::Saturation && a.key.name == "system.cpu.utilization")
        .unwrap_or_else(|| panic!("no forecast:\n{}", describe(&anomalies)));
    assert!(
        forecast.observed < 0.9,
        "fired only at the threshold: {forecast:?}"
    );
    assert!(
        forecast.detail.contains("exhausted in"),
        "{}",
        forecast.detail
    );
}

/// Baselines survive a restart: a stage restored from the snapshot is `ready` at
/// once and keeps quiet on the same traffic.
#[test]
fn baselines_are_restored_from_the_snapshot() {
    let dir = tempfile::tempdir().expect("dir");
    let config = homeostat::config::Config::from_toml_str(&format!(
        "[window]\nsize = \"1m\"\nretain = \"1h\"\n[store]\npath = {:?}\n",
        dir.path().display().to_string()
    ))
    .expect("config");
    let params = homeostat::engine::stage_params(&config);
    let mut noise = Noise::new(42);
    let mut stage = DetectStage::new(
        Catalogue::built_in().expect("catalogue"),
        params.clone(),
        AnomalyLog::new(100),
    );
    for w in 0..60 {
        stage.on_window(&window(w, None, &mut noise).0);
    }
    stage.snapshot();
    let tracked = stage.series_count();
    drop(stage);
    let key = homeostat::detect::SeriesKey {
        service: name(3),
        signal: "service".into(),
        name: "error_rate".into(),
        attributes: "namespace=shop,environment=prod".into(),
    };
    let log = AnomalyLog::new(100);
    let mut restored = DetectStage::new(
        Catalogue::built_in().expect("catalogue"),
        params,
        log.clone(),
    );
    assert_eq!(restored.series_count(), tracked);
    assert_eq!(
        restored.baseline_state(&key, "error_rate"),
        Some(homeostat::detect::baseline::BaselineState::Ready)
    );
    for w in 60..120 {
        restored.on_window(&window(w, None, &mut noise).0);
    }
    assert!(log.is_empty(), "{}", describe(&log.snapshot()));
}

/// The `anomalies` table keeps its own retention (`detect.anomaly_retain`), not
/// the windows' (`window.retain`), and survives a restart through the snapshot.
#[test]
fn anomalies_outlive_the_window_retention_and_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let config = homeostat::config::Config::from_toml_str(&format!(
        "[window]\nsize = \"1m\"\nretain = \"1h\"\n[detect]\nanomaly_retain = \"3h\"\n\
         [store]\npath = {:?}\n",
        dir.path().display().to_string()
    ))
    .expect("config");
    let params = homeostat::engine::stage_params(&config);
    let fault = Some(Fault::ErrorSpike);
    let mut noise = Noise::new(7);
    let log = AnomalyLog::new(100);
    let mut stage = DetectStage::new(
        Catalogue::built_in().expect("catalogue"),
        params.clone(),
        log.clone(),
    );
    for w in 0..FAULT_WINDOW + 10 {
        stage.on_window(&window(w, fault, &mut noise).0);
    }
    // Two hours of healthy traffic: the episode ends, and outlives `window.retain`.
    for w in FAULT_WINDOW + 10..FAULT_WINDOW + 130 {
        stage.on_window(&window(w, None, &mut noise).0);
    }
    let before = log.snapshot();
    assert!(
        before.iter().any(|a| a.class == FailureClass::ErrorSpike),
        "{}",
        describe(&before)
    );
    assert!(before.iter().all(|a| a.ended_ms.is_some()));
    stage.snapshot();
    drop(stage);

    let log = AnomalyLog::new(100);
    let mut restored = DetectStage::new(
        Catalogue::built_in().expect("catalogue"),
        params,
        log.clone(),
    );
    assert_eq!(
        log.snapshot(),
        before,
        "the anomalies table after a restart"
    );
    // Past `detect.anomaly_retain` after they ended, they are gone.
    for w in FAULT_WINDOW + 130..FAULT_WINDOW + 320 {
        restored.on_window(&window(w, None, &mut noise).0);
    }
    let after = log.snapshot();
    assert!(
        after.iter().all(|a| !before.contains(a)),
        "{}",
        describe(&after)
    );
}

/// End to end: a real OpenTelemetry SDK sends spans over OTLP/gRPC to a running
/// engine; an error spike after the warm-up shows up in the `anomalies` SQL table
/// with its class, onset and the expected error rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_spike_sent_over_otlp_is_in_the_anomalies_table() {
    let engine =
        crate::support::engine("[window]\nsize = \"1s\"\n[detect.baseline]\nwarmup = 20\n").await;
    let grpc = format!("http://{}", engine.grpc_addr);
    let base_ns = crate::support::aligned_past(30);
    const SPIKE: u64 = 25;
    deploys::send(grpc, base_ns, Some(SPIKE), None).await;
    engine.flush().await;
    let rows = crate::support::sql(
        engine.api_addr,
        "SELECT class, pattern, service, name, onset, detected, observed, expected, score FROM anomalies ORDER BY detected",
    )
    .await;
    let spike = rows
        .iter()
        .find(|r| crate::support::text(r, "class") == "error_spike")
        .unwrap_or_else(|| panic!("no error_spike among {rows:?}"));
    assert_eq!(crate::support::text(spike, "service"), "checkout");
    assert_eq!(crate::support::text(spike, "name"), "error_rate");
    assert!(
        (crate::support::num(spike, "observed") - 0.6).abs() < 1e-9,
        "{spike}"
    );
    assert!(crate::support::num(spike, "expected") < 0.15, "{spike}");
    assert!(crate::support::num(spike, "score") > 0.9999, "{spike}");
    // Windows are 1 s: onset is the spike's first second, detected one window later
    // (two windows in a row).
    let onset_ms = (base_ns / 1_000_000 + SPIKE * 1000) as i64;
    let onset = spike
        .get("onset")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string();
    let detected = spike
        .get("detected")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string();
    let ms = |text: &str| homeostat::detect::replay::parse_timestamp(text).map(|s| s * 1000);
    assert_eq!(ms(&onset), Some(onset_ms), "onset {onset}");
    assert_eq!(ms(&detected), Some(onset_ms + 1000), "detected {detected}");
    let exposition = crate::support::exposition(engine.api_addr).await;
    assert!(
        exposition.contains("homeostat_anomalies_total{class=\"error_spike\"} 1"),
        "{exposition}"
    );
    engine.shutdown().await;
}
