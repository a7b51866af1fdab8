//! Shared helpers: engines on free ports, SQL over the real HTTP API.

use std::time::{Duration, Instant};

use homeostat::config::Config;
use homeostat::engine::Engine;
use serde_json::Value;

/// A config on ephemeral ports, over the embedded defaults, plus `extra` TOML.
pub fn config(extra: &str) -> Config {
    let base = r#"
[otlp]
grpc_addr = "127.0.0.1:0"
http_addr = "127.0.0.1:0"
[api]
addr = "127.0.0.1:0"
[window]
idle_timeout = "1h"
max_future_skew = "3650d"
"#;
    Config::from_toml_layers(&[base, extra]).expect("test config is valid")
}

/// Starts an engine with `config(extra)`; `RUST_LOG` turns on its logs.
pub async fn engine(extra: &str) -> Engine {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    Engine::start(config(extra)).await.expect("engine starts")
}

/// Runs SQL through the real HTTP API and returns the rows.
pub async fn sql(api: std::net::SocketAddr, query: &str) -> Vec<Value> {
    let response = reqwest::Client::new()
        .post(format!("http://{api}/sql?format=json"))
        .body(query.to_string())
        .send()
        .await
        .expect("api reachable");
    let status = response.status();
    let text = response.text().await.expect("body");
    assert!(
        status.is_success(),
        "query {query:?} failed: {status} {text}"
    );
    match serde_json::from_str(&text).expect("json rows") {
        Value::Array(rows) => rows,
        other => panic!("expected an array, got {other}"),
    }
}

/// Polls `query` until `done(rows)` or the timeout; returns the last rows.
pub async fn sql_until(
    api: std::net::SocketAddr,
    query: &str,
    timeout: Duration,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let rows = sql(api, query).await;
        if done(&rows) || Instant::now() > deadline {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A numeric column of a row as f64.
pub fn num(row: &Value, column: &str) -> f64 {
    row.get(column)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("row {row} lacks numeric {column}"))
}

/// A string column of a row.
pub fn text<'a>(row: &'a Value, column: &str) -> &'a str {
    row.get(column)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("row {row} lacks string {column}"))
}

/// Asserts `actual` is within 1% (the documented sketch error) of `expected`.
pub fn assert_close(actual: f64, expected: f64, what: &str) {
    let tolerance = expected.abs() * 0.01 + 1e-9;
    assert!(
        (actual - expected).abs() <= tolerance,
        "{what}: got {actual}, expected {expected}"
    );
}

/// A free TCP port on loopback (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Event time aligned to a 10 s window boundary, `minutes_ago` in the past.
pub fn aligned_past(minutes_ago: u64) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64;
    let t = now - minutes_ago * 60 * 1_000_000_000;
    t - t % 10_000_000_000
}

/// The engine's Prometheus exposition.
pub async fn exposition(api: std::net::SocketAddr) -> String {
    reqwest::get(format!("http://{api}/metrics"))
        .await
        .expect("metrics endpoint")
        .text()
        .await
        .expect("metrics text")
}
