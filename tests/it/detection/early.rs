//! Early looks (`window.early_look`): the part of the open window seen so far
//! may complete a run the closed windows began, before the window closes.
//! The fleet's windows stand in for the window stage's looks: what a look
//! sees is a sample of its own, so each look is an independent draw of the
//! same window (its own noise).

use homeostat::detect::{Anomaly, AnomalyEvent, AnomalyLog};
use homeostat::window::WindowTables;

use super::fleet::{DAY_WINDOWS, FAULT_WINDOW, FAULTY, Fault, MINUTE, Noise, name, window_at};
use super::{describe, shipped_stage};

/// A look into window `w` with its own noise.
fn look(w: i64, fault: Option<Fault>, seed: u64) -> WindowTables {
    window_at(MINUTE, w, fault, &mut Noise::new(seed ^ (w as u64) << 20)).0
}

/// Runs `windows` windows of the fleet with `fault`, each looked into early
/// before it closes; returns what the looks opened and the final log.
fn run_looking(fault: Option<Fault>, windows: i64) -> (Vec<AnomalyEvent>, Vec<Anomaly>) {
    let (mut stage, log) = shipped_stage(MINUTE.window_ms);
    let mut noise = Noise::new(0x5EED ^ fault.map_or(0, |f| f as u64 + 1));
    let replica = AnomalyLog::new(10_000);
    let mut early = Vec::new();
    for w in 0..windows {
        for event in stage.on_early(&look(w, fault, 0xEA57)) {
            replica.apply(&event);
            early.push(event);
        }
        let (tables, _) = window_at(MINUTE, w, fault, &mut noise);
        for event in stage.on_window(&tables) {
            replica.apply(&event);
        }
    }
    assert_eq!(
        replica.snapshot(),
        log.snapshot(),
        "events and log disagree"
    );
    (early, log.snapshot())
}

#[test]
fn early_looks_into_a_healthy_day_raise_no_anomaly() {
    let (_, anomalies) = run_looking(None, DAY_WINDOWS);
    assert!(
        anomalies.is_empty(),
        "{} anomalies on steady traffic looked at early:\n{}",
        anomalies.len(),
        describe(&anomalies)
    );
}

/// The spike's first window holds (a run of one); the look into the second
/// completes the run and opens the episode, which its close then updates: one
/// anomaly, opened half a window sooner.
#[test]
fn an_error_spike_is_confirmed_by_a_look_into_its_second_window() {
    let (early, anomalies) = run_looking(Some(Fault::ErrorSpike), FAULT_WINDOW + 5);
    let spike = |a: &Anomaly| a.key.service == name(FAULTY) && a.key.name == "error_rate";
    let opened: Vec<&Anomaly> = early
        .iter()
        .filter_map(|e| match e {
            AnomalyEvent::Opened(a) => Some(a),
            _ => None,
        })
        .filter(|a| spike(a))
        .collect();
    let onset = super::fleet::START_MS + FAULT_WINDOW * MINUTE.window_ms;
    assert_eq!(opened.len(), 1, "{early:#?}");
    assert_eq!(opened[0].onset_ms, onset);
    assert_eq!(opened[0].detected_ms, onset + MINUTE.window_ms);
    assert_eq!(opened[0].windows, 1, "the look is not a closed window");
    let spikes: Vec<&Anomaly> = anomalies.iter().filter(|a| spike(a)).collect();
    assert_eq!(spikes.len(), 1, "{}", describe(&anomalies));
    assert!(spikes[0].windows >= 5, "{:?}", spikes[0]);
}

/// A look completes only a run under way: a failure whose first window is
/// only being looked into waits for that window to close.
#[test]
fn a_look_alone_opens_nothing() {
    let (mut stage, _) = shipped_stage(MINUTE.window_ms);
    let mut noise = Noise::new(3);
    for w in 0..FAULT_WINDOW {
        stage.on_window(&window_at(MINUTE, w, None, &mut noise).0);
    }
    let events = stage.on_early(&look(FAULT_WINDOW, Some(Fault::ErrorSpike), 9));
    assert!(events.is_empty(), "{events:#?}");
}

/// `tables` with the faulty service's error rate set to `rate`.
fn with_error_rate(tables: WindowTables, rate: f64) -> WindowTables {
    use arrow::array::{Array, ArrayRef, Float64Array, StringArray};
    let batch = &tables.batches[0];
    let names = batch.column_by_name("service_name").expect("service_name");
    let names = names
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("strings");
    let index = batch.schema().index_of("error_rate").expect("error_rate");
    let old = batch
        .column(index)
        .as_any()
        .downcast_ref::<Float64Array>()
        .expect("f64");
    let new: Float64Array = (0..old.len())
        .map(|i| {
            Some(if names.value(i) == name(FAULTY) {
                rate
            } else {
                old.value(i)
            })
        })
        .collect();
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    columns[index] = std::sync::Arc::new(new);
    let mut batches = tables.batches.clone();
    batches[0] = arrow::record_batch::RecordBatch::try_new(batch.schema(), columns).expect("batch");
    WindowTables { batches, ..tables }
}

/// A look is held to a stricter bar than a close: after the spike's first
/// window, a look in which the error rate is three times its usual 1% (over
/// the pattern's bar, short of decisive) opens nothing; one at 30% opens.
#[test]
fn a_look_that_is_not_decisive_opens_nothing() {
    let opened = |rate: f64| {
        let (mut stage, _) = shipped_stage(MINUTE.window_ms);
        let mut noise = Noise::new(5);
        for w in 0..=FAULT_WINDOW {
            stage.on_window(&window_at(MINUTE, w, Some(Fault::ErrorSpike), &mut noise).0);
        }
        let look = with_error_rate(look(FAULT_WINDOW + 1, None, 1), rate);
        stage.on_early(&look).iter().any(|e| {
            matches!(e, AnomalyEvent::Opened(a) if a.key.service == name(FAULTY) && a.key.name == "error_rate")
        })
    };
    assert!(
        !opened(0.032),
        "a look over the bar but not decisive opened"
    );
    assert!(opened(0.3), "a decisive look did not open");
}
