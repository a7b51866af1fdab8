//! The cost of root-cause ranking: one incident on service graphs of 100, 1,000
//! and 10,000 services (a call tree of fan-out 4, every tenth service with a
//! database), with 30 windows of series history. The incident holds the faulty
//! node's anomalies and those of every caller up the chain to the entry (about
//! log4 N services, two series each, and the edges between them).
//!
//! Reported per size, medians of `RUNS` runs measured in this process:
//! - the time to rank that incident;
//! - the same as a ratio to the incident stage's own per-window work at that size
//!   (learning the window's edges and series: what it does with ranking off);
//! - the bytes the graph and the history hold.
//!
//! `cargo bench --bench rca` (env: SIZES=100,1000,10000, RUNS=15).

use std::time::Instant;

use cap::Cap;
use homeostat::detect::{Anomaly, FailureClass, SeriesKey};
use homeostat::incident::graph::ServiceGraph;
use homeostat::incident::history::History;
use homeostat::incident::rank::{Inputs, rank};
use homeostat::window::WindowTables;
use homeostat::window::tables::{Cell, Red, TableBuilder};

#[global_allocator]
static ALLOCATOR: Cap<mimalloc::MiMalloc> = Cap::new(mimalloc::MiMalloc, usize::MAX);

const WINDOW_MS: i64 = 10_000;
const HISTORY: usize = 30;

fn name(i: usize) -> String {
    format!("svc-{i:05}")
}

/// The closed window `w` of a fleet of `n` services; the fault (from window
/// `fault_from`) slows service `faulty` and so everything above it.
fn window(n: usize, w: i64, faulty: usize, fault_from: i64) -> WindowTables {
    let (start, end) = (w * WINDOW_MS, (w + 1) * WINDOW_MS);
    let slow = |i: usize| {
        let mut j = faulty;
        loop {
            if j == i {
                return w >= fault_from;
            }
            if j == 0 {
                return false;
            }
            j = (j - 1) / 4;
        }
    };
    let mut services = TableBuilder::new(0, start, end);
    let mut edges = TableBuilder::new(2, start, end);
    let noise = |i: usize| ((i as i64 * 7919 + w * 104_729) % 13) as f64 / 13.0;
    for i in 0..n {
        let latency = 20.0 + noise(i) * 4.0 + if slow(i) { 200.0 } else { 0.0 };
        let mut red = Red::default();
        for _ in 0..20 {
            red.add(latency, false);
        }
        let service = name(i);
        services.red_row(&["", &service, ""], &red);
        let mut callees: Vec<(String, &str)> = (1..=4)
            .map(|k| 4 * i + k)
            .filter(|c| *c < n)
            .map(|c| (name(c), "service"))
            .collect();
        if i % 10 == 0 {
            callees.push((format!("db-{i:05}"), "database"));
        }
        for (callee, kind) in &callees {
            edges.row(
                &["", &service, "", "", callee, "", kind, ""],
                &[
                    Cell::U64(Some(20)),
                    Cell::U64(Some(0)),
                    Cell::F64(Some(0.0)),
                    Cell::F64(Some(latency / 2.0)),
                    Cell::F64(Some(latency)),
                    Cell::F64(Some(latency / 2.0)),
                ],
            );
        }
    }
    WindowTables {
        start_ms: start,
        end_ms: end,
        batches: [
            services.finish().expect("services"),
            TableBuilder::new(1, start, end)
                .finish()
                .expect("operations"),
            edges.finish().expect("edges"),
            TableBuilder::new(3, start, end).finish().expect("metrics"),
            TableBuilder::new(4, start, end).finish().expect("logs"),
        ],
    }
}

fn anomaly(service: &str, signal: &str, name: &str, attributes: &str, onset: i64) -> Anomaly {
    Anomaly {
        key: SeriesKey {
            service: service.into(),
            signal: signal.into(),
            name: name.into(),
            attributes: attributes.into(),
        },
        class: FailureClass::LatencyDegradation,
        pattern: "bench".into(),
        onset_ms: onset,
        detected_ms: onset + WINDOW_MS,
        ended_ms: None,
        observed: 220.0,
        expected: 22.0,
        score: 0.9,
        windows: 2,
        detail: String::new(),
        decisive: false,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let sizes: Vec<usize> = std::env::var("SIZES")
        .unwrap_or_else(|_| "100,1000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(15);
    println!(
        "| services | edges | incident anomalies | rank (ms) | rank / per-window learning | graph + history held (MB) |"
    );
    println!("|---|---|---|---|---|---|");
    for n in sizes {
        let faulty = n - 1;
        let fault_from = (HISTORY - 5) as i64;
        let windows: Vec<WindowTables> = (0..HISTORY as i64)
            .map(|w| window(n, w, faulty, fault_from))
            .collect();
        let before = ALLOCATOR.allocated();
        let mut graph = ServiceGraph::new(3_600_000, 1_000_000);
        let mut history = History::new(HISTORY, 1_000_000);
        let mut learn = Vec::new();
        for w in &windows {
            let t = Instant::now();
            graph.on_window(w);
            history.on_window(w);
            learn.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let held = ALLOCATOR.allocated().saturating_sub(before);
        let onset = fault_from * WINDOW_MS;
        let mut members = Vec::new();
        let mut j = faulty;
        loop {
            let service = name(j);
            members.push(anomaly(&service, "service", "p95_ms", "", onset));
            members.push(anomaly(&service, "service", "p99_ms", "", onset));
            if j == 0 {
                break;
            }
            let parent = (j - 1) / 4;
            let attributes = format!("callee={service},callee_kind=service");
            members.push(anomaly(&name(parent), "edge", "p99_ms", &attributes, onset));
            j = parent;
        }
        let refs: Vec<&Anomaly> = members.iter().collect();
        let inputs = Inputs {
            members: &refs,
            graph: &graph,
            history: &history,
            window_ms: WINDOW_MS,
            hops: 2,
        };
        let mut times = Vec::new();
        let mut top = String::new();
        for _ in 0..runs {
            let t = Instant::now();
            let ranked = rank(&inputs);
            times.push(t.elapsed().as_secs_f64() * 1e3);
            top = ranked
                .first()
                .map(|r| r.service.clone())
                .unwrap_or_default();
        }
        assert_eq!(top, name(faulty), "the bench's fault is ranked first");
        let (rank_ms, learn_ms) = (median(times), median(learn));
        println!(
            "| {n} | {} | {} | {rank_ms:.3} | {:.3} | {:.1} |",
            graph.len(),
            members.len(),
            rank_ms / learn_ms,
            held as f64 / 1e6
        );
    }
}
