//! What the retained history of closed windows costs in memory, against the Arrow
//! IPC size of the same rows (the size they take on disk in `store.path`).
//!
//! Two fleets from the load generator: its default fleet, and a small one (3
//! services, 2 operations). Each sends `ROUNDS` rounds (traces, logs, metrics)
//! per 10 s window for `WINDOWS` windows of event time through the window stage
//! (the code the engine runs), and every closed window goes into a `History` as
//! the engine's does. Prints rows, windows, the bytes `homeostat_retained_bytes`
//! reports, bytes per row and per window, the IPC bytes of the same batches, and
//! the ratio memory / IPC (the target: at most 2).
//!
//! `cargo bench --bench retained_memory` (env: WINDOWS, default 60; ROUNDS, 20).

use homeostat::columnar::Signal;
use homeostat::config::Config;
use homeostat::ingest::decode::{Encoding, decode};
use homeostat::loadgen::fleet::{Fleet, FleetSpec};
use homeostat::loadgen::patch::Finder;
use homeostat::pipeline::History;
use homeostat::window::{TABLE_NAMES, Windows};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The IPC file size of every batch of every table held by `history`.
fn ipc_bytes(history: &History) -> (usize, usize) {
    let (mut bytes, mut rows) = (0, 0);
    for table in TABLE_NAMES {
        let batches = history.table(table);
        let Some(first) = batches.first() else {
            continue;
        };
        let mut out = Vec::new();
        let mut writer =
            arrow::ipc::writer::FileWriter::try_new(&mut out, &first.schema()).expect("ipc writer");
        for batch in &batches {
            rows += batch.num_rows();
            writer.write(batch).expect("ipc write");
        }
        writer.finish().expect("ipc finish");
        drop(writer);
        bytes += out.len();
    }
    (bytes, rows)
}

fn run(label: &str, spec: FleetSpec, windows: u64, rounds: u64) {
    let config = Config::from_toml_str("[window]\nmax_future_skew = \"3650d\"\n").expect("config");
    let size_ns = config.window.size.as_nanos() as u64;
    let mut stage = Windows::new(&config.window);
    let history = History::default();
    let fleet = Fleet::new(spec);
    let templates: Vec<_> = (0..8)
        .map(|i| {
            let round = fleet.round(i);
            let finder = Finder::new(&round);
            let plans = [
                finder.plan(&round.traces),
                finder.plan(&round.logs),
                finder.plan(&round.metrics),
            ];
            (round, plans, finder.last_time())
        })
        .collect();
    let base: u64 = 1_750_000_000_000_000_000;
    let mut sent = 0u64;
    for w in 0..windows {
        for r in 0..rounds {
            let (round, plans, last) = &templates[(sent % 8) as usize];
            sent += 1;
            let at = base + w * size_ns + (r + 1) * size_ns / (rounds + 1);
            let shift = at as i64 - *last as i64;
            for (plan, (signal, bytes)) in plans.iter().zip([
                (Signal::Traces, &round.traces),
                (Signal::Logs, &round.logs),
                (Signal::Metrics, &round.metrics),
            ]) {
                if bytes.is_empty() {
                    continue;
                }
                let patched = plan.apply(bytes, sent, shift);
                let decoded = decode(signal, &patched, Encoding::Protobuf).expect("decode");
                stage.ingest(&decoded, 0, at).expect("ingest");
            }
        }
        let now = base + (w + 1) * size_ns;
        history.extend(stage.advance(now).expect("advance"));
    }
    history.extend(stage.close_all().expect("close"));
    let (held, bytes) = history.footprint();
    let (ipc, rows) = ipc_bytes(&history);
    println!(
        "{label:<14} windows={held} rows={rows} retained_bytes={bytes} per_row={:.0} \
         per_window={:.0} ipc_bytes={ipc} memory/ipc={:.2}",
        bytes as f64 / rows.max(1) as f64,
        bytes as f64 / held.max(1) as f64,
        bytes as f64 / ipc.max(1) as f64,
    );
}

fn main() {
    let windows = env("WINDOWS", 60);
    let rounds = env("ROUNDS", 20);
    run("loadgen fleet", FleetSpec::default(), windows, rounds);
    let small = FleetSpec {
        services: 3,
        operations: 2,
        ..FleetSpec::default()
    };
    run("small fleet", small, windows, rounds.min(4));
}
