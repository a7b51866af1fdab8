//! A caller serving a few requests a window: too few for one window's call
//! mix (`edge_call_mix` wants 20 requests), judged by its edge's last windows
//! pooled (`detect::call_mix`), and only when that evidence is decisive.

use homeostat::detect::Anomaly;
use homeostat::loadgen::fleet::Rng;
use homeostat::window::WindowTables;
use homeostat::window::tables::{Cell, TableBuilder};

const W: i64 = 10_000;
const START: i64 = 1_700_000_000_000;

/// Window `w`: checkout serves 1 to 5 requests, each calling email once with
/// probability `p` (a second time one time in ten).
fn window(w: i64, p: f64, rng: &mut Rng) -> WindowTables {
    let (start, end) = (START + w * W, START + (w + 1) * W);
    let requests = 1 + rng.below(5) as u64;
    let calls: u64 = (0..requests)
        .map(|_| u64::from(rng.unit() < p) * if rng.unit() < 0.1 { 2 } else { 1 })
        .sum();
    let mut service = TableBuilder::new(0, start, end);
    service.row(
        &["shop", "checkout", "prod"],
        &[
            Cell::U64(Some(requests)),
            Cell::U64(Some(0)),
            Cell::F64(Some(0.0)),
            Cell::F64(Some(40.0)),
            Cell::F64(Some(90.0)),
            Cell::F64(Some(120.0)),
            Cell::F64(Some(50.0)),
            Cell::F64(Some(150.0)),
        ],
    );
    let mut edge = TableBuilder::new(2, start, end);
    if calls > 0 {
        edge.row(
            &[
                "shop", "checkout", "prod", "shop", "email", "prod", "service", "",
            ],
            &[
                Cell::U64(Some(calls)),
                Cell::U64(Some(0)),
                Cell::F64(Some(0.0)),
                Cell::F64(Some(10.0)),
                Cell::F64(Some(20.0)),
                Cell::F64(Some(11.0)),
                Cell::U64(None),
            ],
        );
    }
    let empty = |kind| TableBuilder::new(kind, start, end).finish().expect("table");
    WindowTables {
        start_ms: start,
        end_ms: end,
        batches: [
            service.finish().expect("service"),
            empty(1),
            edge.finish().expect("edge"),
            empty(3),
            empty(4),
        ],
    }
}

/// `windows` windows with the share of requests calling email `p(w)`.
fn run(windows: i64, seed: u64, p: impl Fn(i64) -> f64) -> Vec<Anomaly> {
    let (mut stage, log) = super::shipped_stage(W);
    let mut rng = Rng::new(seed);
    for w in 0..windows {
        stage.on_window(&window(w, p(w), &mut rng));
    }
    log.snapshot()
}

#[test]
fn a_thin_caller_that_mostly_skips_a_call_is_found_by_its_pooled_windows() {
    // From window 200 one request in 20 makes the call (an early return in
    // the rest): at 1 to 5 requests a window, most windows have no call and
    // no row, and count in the pool of the next one that has.
    const STOP: i64 = 200;
    let anomalies = run(STOP + 30, 7, |w| if w < STOP { 0.9 } else { 0.05 });
    let mix = anomalies
        .iter()
        .find(|a| a.key.name == "calls_per_request")
        .unwrap_or_else(|| panic!("no call-mix anomaly: {anomalies:#?}"));
    assert!(mix.onset_ms >= START + STOP * W, "{mix:#?}");
    // Once the pool (12 windows) holds only windows after the change, at the
    // next window with a call.
    assert!(mix.detected_ms <= START + (STOP + 30) * W, "{mix:#?}");
    assert!(mix.detail.contains("too few for one window"), "{mix:#?}");
    assert_eq!(mix.key.service, "checkout");
}

#[test]
fn a_thin_caller_calling_as_usual_raises_nothing() {
    for seed in 1..=3 {
        let anomalies = run(1_000, seed, |_| 0.9);
        assert!(anomalies.is_empty(), "seed {seed}: {anomalies:#?}");
    }
}
