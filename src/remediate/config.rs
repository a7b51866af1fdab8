//! `[remediation]`: playbooks, the governor's limits, verification, and where
//! commands and outcomes travel.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::governor::Limits;

/// Remediation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemediationConfig {
    /// Whether incidents become commands (needs `incident.enabled`).
    pub enabled: bool,
    /// Shadow mode: decide and record as usual, send every command marked
    /// `dry_run` (executors change nothing).
    pub dry_run: bool,
    /// Kafka brokers of the action bus; empty: `kafka.brokers`; both empty:
    /// commands and outcomes travel in process.
    pub brokers: String,
    /// Kafka topic of the commands.
    pub actions_topic: String,
    /// Kafka topic of the outcomes.
    pub outcomes_topic: String,
    /// Playbooks: a TOML file or a directory of them; the built-in ones when the
    /// default path does not exist.
    pub playbooks: PathBuf,
    /// CloudEvents `source` of the commands; empty: `homeostat://<host name>`.
    pub source: String,
    /// Whether the reference executor runs inside the engine when commands
    /// travel in process (no Kafka).
    pub executor: bool,
    /// Windows the top root cause must stay the same before anything is done.
    pub settle_windows: u32,
    /// A root cause scored under this waits for a human's approval.
    pub min_score: f64,
    /// How long a command is valid (`expires_at`).
    #[serde(with = "humantime_serde")]
    pub command_ttl: Duration,
    /// Event time to wait for an executor's final outcome.
    #[serde(with = "humantime_serde")]
    pub outcome_timeout: Duration,
    /// Windows after a successful outcome within which the incident's series
    /// must be back to their baselines.
    pub verify_windows: u32,
    /// Commands per service within `rate_window`.
    pub max_per_service: usize,
    /// Commands in all within `rate_window`.
    pub max_global: usize,
    #[serde(with = "humantime_serde")]
    pub rate_window: Duration,
    /// Between two commands of one action on one service.
    #[serde(with = "humantime_serde")]
    pub cooldown: Duration,
    /// Remediations in flight at once.
    pub max_concurrent: usize,
    /// Share of the services on the graph under remediation at once (at least one).
    pub max_share: f64,
    /// Failed remediations in a row after which a service's automation stops.
    pub breaker_failures: u32,
    /// Rollbacks of one service in a row.
    pub rollback_depth: u32,
    /// Decisions and outcomes kept for SQL.
    pub max_log_rows: usize,
    /// On a target with several instances, act on a share of them first.
    pub canary: bool,
    /// That share (at least one instance, never all).
    pub canary_share: f64,
    /// Windows the canary must run without new anomalies before widening.
    pub canary_windows: u32,
    /// The actions that go to a canary first (`restart`, `rollback`).
    pub canary_actions: Vec<super::playbook::Action>,
}

impl RemediationConfig {
    /// Every rule the section breaks, one line each.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (key, value) in [
            ("remediation.actions_topic", &self.actions_topic),
            ("remediation.outcomes_topic", &self.outcomes_topic),
        ] {
            if value.trim().is_empty() {
                problems.push(format!("{key} must not be empty"));
            }
        }
        if self.actions_topic == self.outcomes_topic {
            problems.push("remediation.actions_topic and outcomes_topic must differ".into());
        }
        for (key, value) in [
            ("remediation.max_per_service", self.max_per_service),
            ("remediation.max_global", self.max_global),
            ("remediation.max_concurrent", self.max_concurrent),
            (
                "remediation.breaker_failures",
                self.breaker_failures as usize,
            ),
            ("remediation.verify_windows", self.verify_windows as usize),
            ("remediation.max_log_rows", self.max_log_rows),
        ] {
            if value == 0 {
                problems.push(format!("{key} must be positive"));
            }
        }
        for (key, value) in [
            ("remediation.command_ttl", self.command_ttl),
            ("remediation.outcome_timeout", self.outcome_timeout),
            ("remediation.rate_window", self.rate_window),
        ] {
            if value.is_zero() {
                problems.push(format!("{key} must be positive"));
            }
        }
        if !(0.0..=1.0).contains(&self.min_score) {
            problems.push(format!(
                "remediation.min_score must be in 0..1, not {}",
                self.min_score
            ));
        }
        if !(self.canary_share > 0.0 && self.canary_share < 1.0) {
            problems.push(format!(
                "remediation.canary_share must be in (0, 1), not {}",
                self.canary_share
            ));
        }
        for action in &self.canary_actions {
            if !super::canary::per_instance(*action) {
                problems.push(format!(
                    "remediation.canary_actions: {} does not act per instance (restart or rollback)",
                    action.as_str()
                ));
            }
        }
        if !(self.max_share > 0.0 && self.max_share <= 1.0) {
            problems.push(format!(
                "remediation.max_share must be in (0, 1], not {}",
                self.max_share
            ));
        }
        problems
    }

    /// The governor's limits.
    pub fn limits(&self) -> Limits {
        let ms = |d: Duration| d.as_millis().min(i64::MAX as u128) as i64;
        Limits {
            dry_run: self.dry_run,
            min_score: self.min_score,
            max_per_service: self.max_per_service,
            max_global: self.max_global,
            rate_window_ms: ms(self.rate_window),
            cooldown_ms: ms(self.cooldown),
            max_concurrent: self.max_concurrent,
            max_share: self.max_share,
            breaker_failures: self.breaker_failures,
            rollback_depth: self.rollback_depth,
        }
    }

    /// The Kafka settings of the action bus, or `None` for the in-process bus.
    pub fn bus(
        &self,
        kafka: &crate::ingest::config::KafkaConfig,
    ) -> Option<crate::ingest::config::KafkaConfig> {
        let mut kafka = kafka.clone();
        if !self.brokers.is_empty() {
            kafka.brokers = self.brokers.clone();
        }
        (!kafka.brokers.is_empty()).then_some(kafka)
    }

    /// The CloudEvents source.
    pub fn source(&self) -> String {
        if !self.source.is_empty() {
            return self.source.clone();
        }
        format!("homeostat://{}", host_name())
    }
}

/// This machine's name (`/etc/hostname`, else `$HOSTNAME`, else `localhost`),
/// for the CloudEvents `source` of the engine and of executors.
pub fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_string())
}
