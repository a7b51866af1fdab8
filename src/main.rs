//! The `homeostat` binary: `run` the engine, query it with `sql`, or load it with
//! `loadgen`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use homeostat::config::Config;
use homeostat::detect::replay::ColumnNames;
use homeostat::engine::Engine;

/// mimalloc: the engine allocates many small, short-lived buffers per request, and
/// glibc's allocator was a third of the ingest profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "homeostat",
    version,
    about = "A streaming telemetry engine that heals the systems it watches"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Watch the engine heal a simulated fleet: nine services instrumented with
    /// the OpenTelemetry SDK, six faults injected in turn, remedies carried out;
    /// prints a live timeline and a final table (exit status 1 if a fault was
    /// not healed).
    Demo(homeostat::demo::Options),
    /// Run the engine until SIGINT or SIGTERM.
    Run {
        /// TOML configuration file (over embedded defaults; env HOMEOSTAT__SECTION__KEY wins).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run the reference executor: consume remediation commands from the Kafka
    /// action topic, carry them out with the configured drivers, publish outcomes.
    Executor {
        /// TOML configuration file (`[kafka]` brokers, `[remediation]` topics,
        /// `[executor]` drivers).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run a SQL query against a running engine and print the result.
    Sql {
        /// The query, e.g. "SELECT * FROM service_stats".
        query: String,
        #[command(flatten)]
        target: ApiTarget,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// List the engine's incidents with their ranked root causes (gRPC query API).
    Incidents {
        #[command(flatten)]
        target: ApiTarget,
        /// Keep printing incidents as they open, change and resolve.
        #[arg(long)]
        watch: bool,
        /// Output format (json: an array; with --watch, one object per line).
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Show one incident: root causes with their evidence, and its anomalies.
    Incident {
        /// The incident id.
        id: u64,
        #[command(flatten)]
        target: ApiTarget,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Remediation: what was decided and learned, and human override (gRPC).
    Remediation {
        #[command(subcommand)]
        command: homeostat::api::remediation_cli::RemediationCommand,
        #[command(flatten)]
        target: ApiTarget,
        /// Bearer token of the control methods (default: api.control_token).
        #[arg(
            long,
            global = true,
            env = "HOMEOSTAT_CONTROL_TOKEN",
            hide_env_values = true
        )]
        token: Option<String>,
        /// Output format of the read commands.
        #[arg(long, global = true, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Send realistic OTLP load from a synthetic fleet (or measure the decode ceiling).
    Loadgen(homeostat::loadgen::Options),
    /// Score `timestamp,value` CSV files with the univariate detector, row by row
    /// (one row = one window value, no look-ahead); writes `timestamp,value,anomaly_score`.
    Replay {
        /// A CSV file, or a directory searched for `.csv` files.
        #[arg(long)]
        input: PathBuf,
        /// Directory for the scored files, at the same relative paths.
        #[arg(long)]
        output: PathBuf,
        /// Configuration file whose `[detect.univariate]` is used.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Header name of the timestamp column (default: timestamp, time, ts,
        /// datetime, date; any case). Timestamps are RFC 3339 / ISO 8601 date-times
        /// or seconds, milliseconds or nanoseconds since the epoch.
        #[arg(long)]
        timestamp_column: Option<String>,
        /// Header name of the value column (default: value, y, val; any case).
        #[arg(long)]
        value_column: Option<String>,
        /// Print each file's rows, sampling interval and alerts.
        #[arg(long)]
        verbose: bool,
    },
}

/// Where a running engine's API is.
#[derive(clap::Args)]
struct ApiTarget {
    /// API address of the engine (default: api.addr of the configuration).
    #[arg(long, global = true)]
    api: Option<SocketAddr>,
    /// Configuration file to read api.addr from.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// An aligned text table.
    Table,
    /// A JSON array of row objects.
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(options) => demo(options),
        Command::Run { config } => run(config),
        Command::Executor { config } => executor(config),
        Command::Remediation {
            command,
            target,
            token,
            format,
        } => remediation(command, target, token, format),
        Command::Sql {
            query,
            target,
            format,
        } => sql(query, target, format),
        Command::Incidents {
            target,
            watch,
            format,
        } => api_addr(target).and_then(|addr| {
            let output = output(format);
            runtime()?.block_on(homeostat::api::cli::incidents(addr, watch, output))
        }),
        Command::Incident { id, target, format } => api_addr(target).and_then(|addr| {
            let output = output(format);
            runtime()?.block_on(homeostat::api::cli::incident(addr, id, output))
        }),
        Command::Loadgen(options) => {
            runtime().and_then(|rt| rt.block_on(homeostat::loadgen::run(options)))
        }
        Command::Replay {
            input,
            output,
            config,
            timestamp_column,
            value_column,
            verbose,
        } => {
            let columns = ColumnNames {
                timestamp: timestamp_column,
                value: value_column,
            };
            replay(&input, &output, config.as_deref(), &columns, verbose)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--api`, else `api.addr` of the configuration.
fn api_addr(target: ApiTarget) -> anyhow::Result<SocketAddr> {
    match target.api {
        Some(addr) => Ok(addr),
        None => Ok(Config::load(target.config.as_deref())?.api.addr),
    }
}

fn remediation(
    command: homeostat::api::remediation_cli::RemediationCommand,
    target: ApiTarget,
    token: Option<String>,
    format: Format,
) -> anyhow::Result<()> {
    let config = Config::load(target.config.as_deref())?;
    let addr = target.api.unwrap_or(config.api.addr);
    let token = token.unwrap_or(config.api.control_token);
    runtime()?.block_on(homeostat::api::remediation_cli::run(
        addr,
        command,
        &token,
        output(format),
    ))
}

fn output(format: Format) -> homeostat::api::cli::Output {
    match format {
        Format::Table => homeostat::api::cli::Output::Table,
        Format::Json => homeostat::api::cli::Output::Json,
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn executor(config_path: Option<PathBuf>) -> anyhow::Result<()> {
    logging();
    let config = Config::load(config_path.as_deref())?;
    let rc = &config.remediation;
    let Some(kafka) = rc.bus(&config.kafka) else {
        anyhow::bail!(
            "the executor reads commands from Kafka: set remediation.brokers or kafka.brokers (without Kafka the engine runs its executor itself)"
        );
    };
    runtime()?.block_on(async move {
        let bus = homeostat::bus::kafka::KafkaBus::new(&kafka)?;
        bus.ensure_topics(&[&rc.actions_topic, &rc.outcomes_topic])
            .await;
        let executor = homeostat::executor::Executor::new(
            config.executor.clone(),
            std::sync::Arc::new(bus),
            &rc.actions_topic,
            &rc.outcomes_topic,
        )?;
        let stop = tokio_util::sync::CancellationToken::new();
        let run = tokio::spawn(executor.run(stop.clone()));
        wait_for_signal().await?;
        tracing::info!("shutting down");
        stop.cancel();
        run.await??;
        Ok(())
    })
}

fn logging() {
    logging_at("info");
}

fn logging_at(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn demo(options: homeostat::demo::Options) -> anyhow::Result<()> {
    // The engine's own log would drown the timeline: warnings only, unless
    // RUST_LOG says otherwise.
    if std::env::var_os("RUST_LOG").is_none() {
        logging_at("warn");
    } else {
        logging();
    }
    let healed = runtime()?.block_on(homeostat::demo::run(options))?;
    if !healed {
        anyhow::bail!("a fault was not healed");
    }
    Ok(())
}

fn run(config_path: Option<PathBuf>) -> anyhow::Result<()> {
    logging();
    let config = Config::load(config_path.as_deref())?;
    runtime()?.block_on(async move {
        let engine = Engine::start(config).await?;
        wait_for_signal().await?;
        tracing::info!("shutting down");
        engine.shutdown().await;
        Ok(())
    })
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("cannot watch SIGINT")?,
        _ = terminate.recv() => {}
    }
    Ok(())
}

fn sql(query: String, target: ApiTarget, format: Format) -> anyhow::Result<()> {
    let addr = api_addr(target)?;
    let format = match format {
        Format::Table => "table",
        Format::Json => "json",
    };
    runtime()?.block_on(async move {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(120))
            .build()
            .context("cannot build the HTTP client")?;
        let response = client
            .post(format!("http://{addr}/sql?format={format}"))
            .header("content-type", "text/plain")
            .body(query)
            .send()
            .await
            .with_context(|| {
                format!("cannot reach the engine API at {addr} (is `homeostat run` running?)")
            })?;
        let status = response.status();
        let truncated = response
            .headers()
            .get("x-homeostat-truncated")
            .is_some_and(|v| v == "true");
        let body = response.text().await.context("cannot read the answer")?;
        if !status.is_success() {
            let message = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                .unwrap_or(body);
            anyhow::bail!("query failed ({status}): {message}");
        }
        println!("{body}");
        if truncated {
            eprintln!("note: the answer was cut at api.max_result_rows rows");
        }
        Ok(())
    })
}

fn replay(
    input: &Path,
    output: &Path,
    config: Option<&Path>,
    columns: &ColumnNames,
    verbose: bool,
) -> anyhow::Result<()> {
    let config = Config::load(config)?;
    let params = &config.detect.univariate;
    let summary = homeostat::detect::replay::replay(input, output, params, columns)?;
    for (file, s) in summary.scored.iter().filter(|_| verbose) {
        let every = s.interval_secs.map_or("one row".to_string(), |i| {
            humantime::format_duration(std::time::Duration::from_secs(i.unsigned_abs())).to_string()
        });
        println!(
            "{}: rows={} every={every} alerts={}",
            file.display(),
            s.rows,
            s.alerts
        );
    }
    for failure in &summary.failed {
        eprintln!("error: {failure}");
    }
    println!(
        "files={} rows={} alerts={} failed={}",
        summary.files(),
        summary.rows(),
        summary.alerts(),
        summary.failed.len()
    );
    if summary.failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("{} file(s) could not be replayed", summary.failed.len())
    }
}
