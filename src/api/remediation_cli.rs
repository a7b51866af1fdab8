//! `homeostat remediation ...`: the remediation API's gRPC client. Reads
//! (`list`, `pending`, `decisions`, `learning`) need nothing; control
//! (`approve`, `deny`, `pause`, `resume`, `kill-switch`, `mark`) sends the
//! bearer token (`--token`, `HOMEOSTAT_CONTROL_TOKEN`, else `api.control_token`).

use std::net::SocketAddr;

use anyhow::Context;
use serde_json::{Value, json};
use tonic::metadata::MetadataValue;

use super::cli::Output;
use super::query::pb;
use super::query::pb::remediation_client::RemediationClient;

/// What to do.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum RemediationCommand {
    /// Each incident's remediation: state, playbook, attempts, current command.
    List,
    /// Commands waiting for a human's approval.
    Pending,
    /// The governor's decisions with their reasons (of one incident, or all).
    Decisions {
        #[arg(long, default_value_t = 0)]
        incident: u64,
    },
    /// What was learned: per class, service and action, attempts and successes.
    Learning,
    /// Approve a held command.
    Approve { command: String },
    /// Deny a held command (the playbook's next step follows).
    Deny { command: String },
    /// Pause automation for a service.
    Pause { service: String },
    /// Resume automation for a service (also closes its circuit breaker).
    Resume { service: String },
    /// The global kill switch.
    KillSwitch {
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// Mark an incident a false positive or its root cause wrong.
    Mark {
        incident: u64,
        #[arg(value_parser = ["false_positive", "wrong_root_cause"])]
        verdict: String,
        /// The service that really was at fault.
        #[arg(long, default_value = "")]
        root_cause: String,
        #[arg(long, default_value = "")]
        comment: String,
    },
}

fn authorized<T>(message: T, token: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    if !token.is_empty() {
        let value: MetadataValue<_> = format!("Bearer {token}")
            .parse()
            .context("the token is not a valid header value")?;
        request.metadata_mut().insert("authorization", value);
    }
    Ok(request)
}

fn print(output: Output, rows: Vec<Value>, columns: &[&str]) {
    match output {
        Output::Json => println!("{}", Value::Array(rows)),
        Output::Table => {
            println!("{}", columns.join(" | "));
            for row in rows {
                let cells: Vec<String> = columns
                    .iter()
                    .map(|c| match &row[*c] {
                        Value::String(s) => s.clone(),
                        Value::Null => String::new(),
                        other => other.to_string(),
                    })
                    .collect();
                println!("{}", cells.join(" | "));
            }
        }
    }
}

/// Runs one remediation command against the engine at `addr`.
pub async fn run(
    addr: SocketAddr,
    command: RemediationCommand,
    token: &str,
    output: Output,
) -> anyhow::Result<()> {
    let mut client = RemediationClient::connect(format!("http://{addr}"))
        .await
        .map_err(|error| super::cli::unreachable(addr, &error))?;
    let control = |r: Result<tonic::Response<pb::ControlResponse>, tonic::Status>| {
        r.map(|r| println!("{}", r.into_inner().message))
            .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))
    };
    match command {
        RemediationCommand::List => {
            let r = client
                .list_remediations(pb::ListRemediationsRequest {})
                .await?;
            let rows = r.into_inner().remediations.into_iter().map(|s| json!({
                "incident": s.incident, "state": s.state, "service": s.service, "class": s.class,
                "playbook": s.playbook, "attempts": s.attempts, "command": s.command, "action": s.action,
            })).collect();
            print(
                output,
                rows,
                &[
                    "incident", "state", "service", "class", "playbook", "attempts", "command",
                ],
            );
        }
        RemediationCommand::Pending => {
            let r = client.list_pending(pb::ListPendingRequest {}).await?;
            let rows = r.into_inner().commands.into_iter().map(|c| json!({
                "id": c.id, "incident": c.incident, "service": c.service, "action": c.action, "score": c.score,
            })).collect();
            print(
                output,
                rows,
                &["id", "incident", "service", "action", "score"],
            );
        }
        RemediationCommand::Decisions { incident } => {
            let r = client
                .list_decisions(pb::ListDecisionsRequest { incident })
                .await?;
            let rows = r.into_inner().decisions.into_iter().map(|d| json!({
                "seq": d.seq, "incident": d.incident, "command": d.command, "service": d.service,
                "action": d.action, "verdict": d.verdict, "reason": d.reason,
            })).collect();
            print(
                output,
                rows,
                &["seq", "incident", "command", "verdict", "reason"],
            );
        }
        RemediationCommand::Learning => {
            let r = client.get_learning(pb::GetLearningRequest {}).await?;
            let rows = r.into_inner().entries.into_iter().map(|l| json!({
                "class": l.class, "service": l.service, "action": l.action, "attempts": l.attempts,
                "successes": l.successes,
                "median_recovery_ms": (l.median_recovery_ms >= 0.0).then_some(l.median_recovery_ms),
                "demoted": l.demoted,
            })).collect();
            print(
                output,
                rows,
                &[
                    "class",
                    "service",
                    "action",
                    "attempts",
                    "successes",
                    "median_recovery_ms",
                    "demoted",
                ],
            );
        }
        RemediationCommand::Approve { command } => control(
            client
                .decide_command(authorized(
                    pb::DecideCommandRequest {
                        command,
                        approve: true,
                    },
                    token,
                )?)
                .await,
        )?,
        RemediationCommand::Deny { command } => control(
            client
                .decide_command(authorized(
                    pb::DecideCommandRequest {
                        command,
                        approve: false,
                    },
                    token,
                )?)
                .await,
        )?,
        RemediationCommand::Pause { service } => control(
            client
                .pause_service(authorized(
                    pb::PauseServiceRequest {
                        service,
                        pause: true,
                    },
                    token,
                )?)
                .await,
        )?,
        RemediationCommand::Resume { service } => control(
            client
                .pause_service(authorized(
                    pb::PauseServiceRequest {
                        service,
                        pause: false,
                    },
                    token,
                )?)
                .await,
        )?,
        RemediationCommand::KillSwitch { state } => control(
            client
                .set_kill_switch(authorized(
                    pb::SetKillSwitchRequest { on: state == "on" },
                    token,
                )?)
                .await,
        )?,
        RemediationCommand::Mark {
            incident,
            verdict,
            root_cause,
            comment,
        } => control(
            client
                .mark_incident(authorized(
                    pb::MarkIncidentRequest {
                        incident,
                        verdict,
                        root_cause,
                        comment,
                    },
                    token,
                )?)
                .await,
        )?,
    }
    Ok(())
}
