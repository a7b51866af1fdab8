//! `homeostat incidents` and `homeostat incident ID`: the query API's gRPC client
//! for people and scripts. JSON output: one array (`incidents`), one object
//! (`incident`), or one object per line (`incidents --watch`).

use std::net::SocketAddr;

use anyhow::Context;
use serde_json::{Value, json};

use super::query::pb;
use super::query::pb::query_client::QueryClient;

/// How to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

async fn connect(addr: SocketAddr) -> anyhow::Result<QueryClient<tonic::transport::Channel>> {
    QueryClient::connect(format!("http://{addr}"))
        .await
        .map_err(|error| unreachable(addr, &error))
}

/// The error of a failed connection to the engine API, with the innermost
/// cause only: tonic's chain says "transport error: tcp connect error: tcp
/// connect error: Connection refused", the last link being the one a user
/// can act on.
pub(crate) fn unreachable(addr: SocketAddr, error: &tonic::transport::Error) -> anyhow::Error {
    let mut cause: &dyn std::error::Error = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    anyhow::anyhow!("cannot reach the engine API at {addr} (is `homeostat run` running?): {cause}")
}

/// RFC 3339 (UTC, milliseconds) of ms since the epoch.
fn rfc3339(ms: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(at).to_string()
}

/// An incident as JSON.
pub fn to_json(i: &pb::Incident) -> Value {
    let causes: Vec<Value> = i
        .root_causes
        .iter()
        .map(|r| {
            let evidence: Vec<Value> = r
                .evidence
                .iter()
                .map(|e| json!({"signal": e.signal, "value": e.value, "spoke": e.spoke, "detail": e.detail}))
                .collect();
            json!({"service": r.service, "namespace": r.namespace, "environment": r.environment, "class": r.class, "score": r.score, "evidence": evidence})
        })
        .collect();
    let mut out = json!({
        "id": i.id,
        "state": i.state,
        "opened_at": rfc3339(i.opened_unix_ms),
        "resolved_at": (i.resolved_unix_ms != 0).then(|| rfc3339(i.resolved_unix_ms)),
        "services": i.services,
        "root_causes": causes,
        "entry_points": i.entry_points,
        "anomaly_count": i.anomaly_count,
        "reopened": i.reopened,
    });
    if !i.anomalies.is_empty() {
        out["anomalies"] = i
            .anomalies
            .iter()
            .map(|a| {
                json!({
                    "service": a.service, "signal": a.signal, "name": a.name,
                    "attributes": a.attributes, "class": a.class, "pattern": a.pattern,
                    "onset": rfc3339(a.onset_unix_ms),
                    "ended": (a.ended_unix_ms != 0).then(|| rfc3339(a.ended_unix_ms)),
                    "observed": a.observed, "expected": a.expected, "score": a.score,
                    "detail": a.detail,
                })
            })
            .collect();
    }
    out
}

fn table_row(i: &pb::Incident) -> String {
    let top = i.root_causes.first();
    format!(
        "{:>6}  {:<8}  {:<24}  {:<24}  {:<20}  {:>5}  {}",
        i.id,
        i.state,
        rfc3339(i.opened_unix_ms),
        top.map_or("-", |r| r.service.as_str()),
        top.map_or("-", |r| r.class.as_str()),
        top.map_or("-".to_string(), |r| format!("{:.2}", r.score)),
        i.services.join(",")
    )
}

const HEADER: &str = "    id  state     opened_at                 root_cause                class                 score  services";

/// `homeostat incidents`.
pub async fn incidents(addr: SocketAddr, watch: bool, output: Output) -> anyhow::Result<()> {
    let mut client = connect(addr).await?;
    if watch {
        let mut stream = client
            .watch_incidents(pb::WatchIncidentsRequest { open_only: false })
            .await
            .context("the engine refused the watch")?
            .into_inner();
        if output == Output::Table {
            println!("{HEADER}");
        }
        while let Some(incident) = stream.message().await.context("the watch broke off")? {
            match output {
                Output::Json => println!("{}", to_json(&incident)),
                Output::Table => println!("{}", table_row(&incident)),
            }
        }
        return Ok(());
    }
    let list = client
        .list_incidents(pb::ListIncidentsRequest::default())
        .await
        .context("the engine refused the query")?
        .into_inner();
    match output {
        Output::Json => {
            let all: Vec<Value> = list.incidents.iter().map(to_json).collect();
            println!("{}", serde_json::to_string_pretty(&all)?);
        }
        Output::Table => {
            println!("{HEADER}");
            for incident in &list.incidents {
                println!("{}", table_row(incident));
            }
        }
    }
    Ok(())
}

/// `homeostat incident ID`.
pub async fn incident(addr: SocketAddr, id: u64, output: Output) -> anyhow::Result<()> {
    let mut client = connect(addr).await?;
    let incident = client
        .get_incident(pb::GetIncidentRequest { id })
        .await
        .map_err(|status| anyhow::anyhow!("{}", status.message()))?
        .into_inner();
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&to_json(&incident))?),
        Output::Table => {
            println!("{HEADER}\n{}", table_row(&incident));
            if !incident.entry_points.is_empty() {
                println!("\nentry points: {}", incident.entry_points.join(", "));
            }
            println!("\nroot causes, best first:");
            for (rank, r) in incident.root_causes.iter().enumerate() {
                // Where the telemetry names them: namespace/environment.
                let scope: Vec<&str> = [r.namespace.as_str(), r.environment.as_str()]
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .collect();
                let scope = if scope.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", scope.join("/"))
                };
                println!(
                    "{:>3}. {}{scope} ({}, score {:.2})",
                    rank + 1,
                    r.service,
                    r.class,
                    r.score
                );
                for e in &r.evidence {
                    let mark = if e.spoke { "*" } else { " " };
                    println!("      {mark} {:<12} {:.2}  {}", e.signal, e.value, e.detail);
                }
            }
            println!("\nanomalies:");
            for a in &incident.anomalies {
                println!(
                    "  {}  {}/{}/{} {}  {} ({})",
                    rfc3339(a.onset_unix_ms),
                    a.service,
                    a.signal,
                    a.name,
                    a.attributes,
                    a.pattern,
                    a.class
                );
            }
        }
    }
    Ok(())
}
