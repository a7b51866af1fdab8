//! Commands and outcomes as they travel: CloudEvents 1.0 in structured JSON mode
//! (`application/cloudevents+json`), one event per message.
//!
//! A command's `id` is its idempotency key: `inc<incident>-a<attempt>-<action>`
//! is the same whenever the engine decides the same step again (after a restart,
//! say), so an executor that dedupes on (`source`, `id`) acts once. Its `subject`
//! is the target service, which is also the Kafka message key, so one target's
//! commands stay in order. The schemas are `schemas/command.schema.json` and
//! `schemas/outcome.schema.json`; `schemas/asyncapi.yaml` describes the topics.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::playbook::Action;

/// CloudEvents `specversion`.
pub const SPEC_VERSION: &str = "1.0";
/// Content type of a structured-mode event.
pub const CONTENT_TYPE: &str = "application/cloudevents+json";
/// Prefix of a command's `type`; the action's name follows.
pub const COMMAND_TYPE_PREFIX: &str = "dev.homeostat.remediation.";
/// Prefix of an outcome's `type`; the status follows.
pub const OUTCOME_TYPE_PREFIX: &str = "dev.homeostat.outcome.";

/// One CloudEvent in structured mode with `data` of type `T`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CloudEvent<T> {
    pub specversion: String,
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub subject: String,
    pub time: String,
    pub datacontenttype: String,
    /// W3C trace context of the decision (the distributed-tracing extension).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub traceparent: String,
    pub data: T,
}

/// Whom a command is for: the identity OpenTelemetry resources gave the service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Target {
    pub service: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub environment: String,
    /// The version it runs (`service.version`), empty when unknown.
    #[serde(default)]
    pub version: String,
    /// The version it ran before its last change, empty when unknown.
    #[serde(default)]
    pub previous_version: String,
    /// `k8s.namespace.name` of its pods, empty when unknown.
    #[serde(default)]
    pub k8s_namespace: String,
    /// `k8s.deployment.name` of its pods, empty when unknown.
    #[serde(default)]
    pub k8s_deployment: String,
    /// Its live instances (`service.instance.id`, else `k8s.pod.name`).
    #[serde(default)]
    pub instances: Vec<String>,
}

/// The root cause a command answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cause {
    pub service: String,
    pub class: String,
    pub score: f64,
}

/// A command's `data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandData {
    pub incident: u64,
    pub action: Action,
    pub target: Target,
    pub root_cause: Cause,
    /// One line per signal that spoke for the root cause.
    pub evidence: Vec<String>,
    /// The playbook step's parameters, templated.
    pub params: BTreeMap<String, String>,
    pub playbook: String,
    /// 1 for the first command of the incident, then 2, ...
    pub attempt: u32,
    /// RFC 3339; an executor must not act on it later.
    pub expires_at: String,
    /// Say what would be done; change nothing.
    pub dry_run: bool,
}

/// A remediation command.
pub type Command = CloudEvent<CommandData>;

/// What an executor did with a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Received and valid; it will be carried out.
    Accepted,
    /// Being carried out.
    Started,
    Succeeded,
    Failed,
    /// Not carried out: expired, a duplicate, or no driver for the action.
    Rejected,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Accepted => "accepted",
            Status::Started => "started",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Rejected => "rejected",
        }
    }

    /// Whether nothing more will be reported for the command.
    pub fn is_final(self) -> bool {
        matches!(self, Status::Succeeded | Status::Failed | Status::Rejected)
    }
}

/// An outcome's `data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutcomeData {
    /// The command's `id`.
    pub command: String,
    /// The command's `source`.
    pub command_source: String,
    pub status: Status,
    pub incident: u64,
    pub action: Action,
    pub service: String,
    #[serde(default)]
    pub detail: String,
    #[serde(default)]
    pub dry_run: bool,
}

/// An executor's report.
pub type Outcome = CloudEvent<OutcomeData>;

/// RFC 3339 with milliseconds, UTC.
pub fn rfc3339(ms: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(time).to_string()
}

/// Milliseconds since the epoch of an RFC 3339 time.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let time = humantime::parse_rfc3339_weak(text.trim_end_matches('Z'))
        .ok()
        .or_else(|| humantime::parse_rfc3339(text).ok())?;
    Some(time.duration_since(UNIX_EPOCH).ok()?.as_millis() as i64)
}

/// A W3C `traceparent` derived from the command id: the same decision always
/// carries the same trace, so a redelivered command is recognisably the same.
pub fn traceparent(id: &str) -> String {
    use std::hash::BuildHasher;
    let state = foldhash::quality::FixedState::with_seed(0x686f_6d65_6f73_7461);
    let high = state.hash_one((id, 1u8));
    let low = state.hash_one((id, 2u8));
    let span = state.hash_one((id, 3u8)).max(1);
    format!("00-{high:016x}{:016x}-{span:016x}-01", low.max(1))
}

/// Builds a command.
pub fn command(source: &str, time_ms: i64, ttl_ms: i64, data: CommandData) -> Command {
    let id = format!(
        "inc{}-a{}-{}",
        data.incident,
        data.attempt,
        data.action.as_str()
    );
    CloudEvent {
        specversion: SPEC_VERSION.to_string(),
        traceparent: traceparent(&id),
        id,
        source: source.to_string(),
        kind: format!("{COMMAND_TYPE_PREFIX}{}", data.action.as_str()),
        subject: data.target.service.clone(),
        time: rfc3339(time_ms),
        datacontenttype: "application/json".to_string(),
        data: CommandData {
            expires_at: rfc3339(time_ms.saturating_add(ttl_ms)),
            ..data
        },
    }
}

/// Builds the outcome of `command`.
pub fn outcome(executor: &str, command: &Command, status: Status, detail: &str) -> Outcome {
    let now = std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    CloudEvent {
        specversion: SPEC_VERSION.to_string(),
        id: format!("{}/{}", command.id, status.as_str()),
        source: executor.to_string(),
        kind: format!("{OUTCOME_TYPE_PREFIX}{}", status.as_str()),
        subject: command.subject.clone(),
        time: rfc3339(now),
        datacontenttype: "application/json".to_string(),
        traceparent: command.traceparent.clone(),
        data: OutcomeData {
            command: command.id.clone(),
            command_source: command.source.clone(),
            status,
            incident: command.data.incident,
            action: command.data.action,
            service: command.subject.clone(),
            detail: detail.to_string(),
            dry_run: command.data.dry_run,
        },
    }
}

/// Why an event could not be read.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("not a CloudEvent of this schema: {0}")]
    Json(#[from] serde_json::Error),
    #[error("specversion {0:?} is not {SPEC_VERSION}")]
    Version(String),
    #[error("type {found:?} does not start with {expected}")]
    Type {
        found: String,
        expected: &'static str,
    },
}

fn check<T>(event: CloudEvent<T>, prefix: &'static str) -> Result<CloudEvent<T>, EventError> {
    if event.specversion != SPEC_VERSION {
        return Err(EventError::Version(event.specversion));
    }
    if !event.kind.starts_with(prefix) {
        return Err(EventError::Type {
            found: event.kind,
            expected: prefix,
        });
    }
    Ok(event)
}

/// Reads a command.
pub fn parse_command(bytes: &[u8]) -> Result<Command, EventError> {
    check(serde_json::from_slice(bytes)?, COMMAND_TYPE_PREFIX)
}

/// Reads an outcome.
pub fn parse_outcome(bytes: &[u8]) -> Result<Outcome, EventError> {
    check(serde_json::from_slice(bytes)?, OUTCOME_TYPE_PREFIX)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample(action: Action) -> Command {
        command(
            "homeostat://test",
            1_700_000_000_000,
            300_000,
            CommandData {
                incident: 12,
                action,
                target: Target {
                    service: "cart".into(),
                    namespace: "shop".into(),
                    environment: "prod".into(),
                    version: "2.1".into(),
                    previous_version: "2.0".into(),
                    ..Target::default()
                },
                root_cause: Cause {
                    service: "cart".into(),
                    class: "faulty_deployment".into(),
                    score: 0.9,
                },
                evidence: vec!["change: 2.0 -> 2.1 one window before onset".into()],
                params: BTreeMap::from([("to_version".into(), "2.0".into())]),
                playbook: "bad-deploy".into(),
                attempt: 1,
                expires_at: String::new(),
                dry_run: false,
            },
        )
    }

    #[test]
    fn a_command_is_a_structured_cloudevent_with_a_stable_id() {
        let c = sample(Action::Rollback);
        let json: serde_json::Value = serde_json::to_value(&c).expect("json");
        assert_eq!(json["specversion"], "1.0");
        assert_eq!(json["type"], "dev.homeostat.remediation.rollback");
        assert_eq!(json["subject"], "cart");
        assert_eq!(json["id"], "inc12-a1-rollback");
        assert_eq!(json["time"], "2023-11-14T22:13:20.000Z");
        assert_eq!(json["data"]["expires_at"], "2023-11-14T22:18:20.000Z");
        assert_eq!(json["data"]["target"]["previous_version"], "2.0");
        let tp = json["traceparent"].as_str().expect("traceparent");
        assert_eq!(tp.len(), 55);
        assert!(tp.starts_with("00-") && tp.ends_with("-01"));
        assert_eq!(sample(Action::Rollback).traceparent, c.traceparent);
        let back = parse_command(&serde_json::to_vec(&c).expect("bytes")).expect("parse");
        assert_eq!(back, c);
        assert_eq!(parse_rfc3339(&c.data.expires_at), Some(1_700_000_300_000));
    }

    #[test]
    fn outcomes_name_their_command_and_bad_events_are_refused() {
        let c = sample(Action::Restart);
        let o = outcome("executor://a", &c, Status::Succeeded, "restarted");
        assert_eq!(o.kind, "dev.homeostat.outcome.succeeded");
        assert_eq!(o.data.command, c.id);
        let bytes = serde_json::to_vec(&o).expect("bytes");
        assert_eq!(parse_outcome(&bytes).expect("parse"), o);
        assert!(matches!(
            parse_command(&bytes),
            Err(EventError::Json(_) | EventError::Type { .. })
        ));
        assert!(parse_command(b"{not json").is_err());
        let mut v: serde_json::Value = serde_json::to_value(&c).expect("json");
        v["specversion"] = "0.3".into();
        let err = parse_command(&serde_json::to_vec(&v).expect("bytes")).expect_err("0.3");
        assert!(err.to_string().contains("0.3"), "{err}");
    }
}
