//! `homeostat demo`: the engine on embedded defaults, a simulated shop of nine
//! services instrumented with the OpenTelemetry SDK (exporting OTLP/gRPC to the
//! engine over loopback), six faults injected in turn, and the executor's
//! `webhook` driver carrying the engine's commands out on the fleet.
//!
//! The demo only injects faults and watches: it learns what the engine found
//! and decided through the engine's SQL API, and a fault counts as healed when
//! the fleet's own state shows the symptom gone after a remedy.

pub mod control;
pub mod emit;
pub mod model;
pub mod report;
pub mod watch;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rand::{Rng as _, SeedableRng as _};

use self::control::Shared;
use self::model::{Fault, FaultKind, Fleet};
use self::report::{FaultRun, Timeline};
use crate::config::Config;
use crate::engine::Engine;

/// Window length at `--speed 1`, seconds.
const WINDOW_S: f64 = 5.0;
/// Windows of normal traffic before the first fault (baselines need 8).
const LEAD_WINDOWS: f64 = 9.0;
/// Windows at least between two faults' onsets.
const SPACING_WINDOWS: f64 = 3.0;
/// Windows after a fault healed before the next is injected, once the engine
/// shows no open anomaly (a fault injected while the last one's symptoms are
/// still in the engine's windows would join the last one's incident).
const AFTER_HEAL_WINDOWS: f64 = 0.5;
/// Windows a fault has to be healed in; the next one comes after that anyway.
const DEADLINE_WINDOWS: f64 = 10.0;
/// Traffic ticks per window.
const TICKS_PER_WINDOW: f64 = 25.0;

/// The faults, in the order they are injected.
pub const SCENARIO: [Fault; 6] = [
    Fault {
        kind: FaultKind::LatencyDegradation,
        target: "catalog",
    },
    Fault {
        kind: FaultKind::FaultyDeployment,
        target: "checkout",
    },
    Fault {
        kind: FaultKind::MemoryLeak,
        target: "cart",
    },
    Fault {
        kind: FaultKind::DependencyOutage,
        target: "pay.primary.example",
    },
    Fault {
        kind: FaultKind::CpuSaturation,
        target: "recommendation",
    },
    Fault {
        kind: FaultKind::QueueBacklog,
        target: "notifier",
    },
];

/// `homeostat demo` options.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Compress event time: windows are 5 s divided by this, the fleet's clock
    /// runs this much faster and its requests take this much less (1 to 10).
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// The engine's API listener, where the web view is served.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub api: SocketAddr,
    /// Seed of the fleet's traffic and of where in a window each fault begins.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Keep the engine and the fleet running this many seconds after the
    /// table (to look around in the web view).
    #[arg(long, default_value_t = 0)]
    pub linger: u64,
    /// A configuration file layered over the demo's engine configuration.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// The demo's engine configuration for windows of `window_ms`.
pub fn engine_config(
    window_ms: u64,
    api: SocketAddr,
    hook: SocketAddr,
    token: &str,
    extra: Option<&str>,
) -> Result<Config, crate::config::ConfigError> {
    let demo = include_str!("demo/demo.toml")
        .replace("{W}", &window_ms.to_string())
        .replace("{L}", &(window_ms / 20).max(100).to_string())
        .replace("{I}", &(window_ms * 6).to_string());
    let addresses = format!(
        "[otlp]\ngrpc_addr = \"127.0.0.1:0\"\nhttp_addr = \"127.0.0.1:0\"\n[api]\naddr = \"{api}\"\ncontrol_token = \"{token}\"\n[executor]\nwebhook_url = \"http://{hook}/remediate\"\n"
    );
    let mut layers = vec![demo.as_str(), addresses.as_str()];
    if let Some(extra) = extra {
        layers.push(extra);
    }
    Config::from_toml_layers(&layers)
}

/// Runs the demo; true when every fault was healed.
pub async fn run(options: Options) -> anyhow::Result<bool> {
    if !(1.0..=10.0).contains(&options.speed) {
        anyhow::bail!("--speed must be between 1 and 10, not {}", options.speed);
    }
    let extra = match &options.config {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?,
        ),
        None => None,
    };
    let window = WINDOW_S / options.speed;
    let shared = Shared {
        fleet: Arc::new(Mutex::new(Fleet::new())),
        applied: Arc::default(),
        started: Instant::now(),
    };
    let hook = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot open the fleet's control endpoint")?;
    let hook_addr = hook.local_addr()?;
    let router = control::router(shared.clone());
    let control = tokio::spawn(async move {
        let _ = axum::serve(hook, router).await;
    });
    let token: String = (0..16)
        .map(|_| format!("{:02x}", rand::rng().random::<u8>()))
        .collect();
    let config = engine_config(
        (window * 1000.0).round() as u64,
        options.api,
        hook_addr,
        &token,
        extra.as_deref(),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let engine = Engine::start(config).await?;
    println!(
        "homeostat demo: {} services exporting OTLP/gRPC to {}; {window:.1} s windows",
        model::TOPOLOGY
            .iter()
            .filter(|n| n.kind == model::Kind::Service)
            .count(),
        engine.grpc_addr,
    );
    println!(
        "web view: http://{}/  (control token {token})\n",
        engine.api_addr
    );
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = spawn_traffic(&shared, engine.grpc_addr, &options, window, stop.clone());
    let mut timeline = Timeline::new(window, options.speed, shared.applied.clone());
    let result = drive(&shared, &engine, &mut timeline, window, options.seed).await;
    if options.linger > 0 && result.is_ok() {
        println!("\nlingering {} s: the web view is up", options.linger);
        tokio::time::sleep(Duration::from_secs(options.linger)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let traffic_result = traffic.await;
    engine.shutdown().await;
    control.abort();
    result?;
    traffic_result.context("the fleet's traffic stopped")??;
    let runs = timeline.finish();
    print!("{}", report::table(&runs, &timeline));
    let healed = runs.iter().all(FaultRun::healed);
    print!("{}", report::targets(&runs, &timeline));
    Ok(healed)
}

/// The fleet's traffic on a blocking thread, until `stop`.
fn spawn_traffic(
    shared: &Shared,
    grpc: SocketAddr,
    options: &Options,
    window: f64,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    let fleet = shared.fleet.clone();
    let (speed, seed) = (options.speed, options.seed);
    tokio::task::spawn_blocking(move || {
        let endpoint = format!("http://{grpc}");
        let interval = Duration::from_secs_f64(window / 5.0);
        let mut instruments = emit::Instruments::new(&endpoint, &fleet, interval)
            .context("cannot build the fleet's OTLP exporters")?;
        let mut traffic = emit::Traffic::new(seed, speed);
        let tick = window / TICKS_PER_WINDOW;
        let mut next = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            // Model time runs `speed` times faster than the wall clock.
            let dt = tick * speed;
            let rates = traffic.tick(dt, model::ENTRY_RATE, &fleet, &mut instruments);
            if let Ok(mut f) = fleet.lock() {
                f.advance(dt, &rates);
            }
            next += Duration::from_secs_f64(tick);
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        traffic.flush();
        instruments.shutdown();
        Ok(())
    })
}

/// Injects the scenario, watches the engine and the fleet, until every fault
/// is healed and verified or out of time.
async fn drive(
    shared: &Shared,
    engine: &Engine,
    timeline: &mut Timeline,
    window: f64,
    seed: u64,
) -> anyhow::Result<()> {
    let mut watcher = watch::Watcher::new(engine.api_addr);
    let begun = shared.started;
    // Faults do not know where windows begin: each onset gets a random phase
    // within a window (without it, onsets lock to the windows' edges, since a
    // heal follows a window's close).
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let phases: Vec<f64> = SCENARIO
        .iter()
        .map(|_| rng.random_range(0.0..window))
        .collect();
    let mut next = window * LEAD_WINDOWS + phases[0];
    let mut injected = 0;
    let mut failures = 0;
    loop {
        let now = begun.elapsed().as_secs_f64();
        if injected < SCENARIO.len() && now >= next {
            let fault = SCENARIO[injected];
            if let Ok(mut fleet) = shared.fleet.lock() {
                fleet.inject(fault);
            }
            timeline.injected(fault, now);
            injected += 1;
        }
        if injected > 0 && injected < SCENARIO.len() {
            next = timeline.next_onset(
                window * SPACING_WINDOWS,
                window * AFTER_HEAL_WINDOWS,
                window * DEADLINE_WINDOWS,
            ) + phases[injected];
        }
        match watcher.poll().await {
            Ok(changes) => {
                failures = 0;
                timeline.engine(&changes, &watcher, now);
            }
            Err(error) => {
                failures += 1;
                anyhow::ensure!(failures < 20, "the engine stopped answering: {error}");
            }
        }
        if let Ok(fleet) = shared.fleet.lock() {
            timeline.fleet(&fleet, now);
        }
        timeline.applied(now);
        let settled =
            injected == SCENARIO.len() && timeline.settled(now, window * DEADLINE_WINDOWS);
        if settled {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs_f64((window / 25.0).min(0.5))).await;
    }
}
