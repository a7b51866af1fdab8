//! `[executor]`: the reference executor's drivers and identity.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::remediate::playbook::Action;

/// The reference executor.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutorConfig {
    /// Consumer group on the action topic.
    pub group: String,
    /// CloudEvents `source` of its outcomes; empty: `executor://<host name>`.
    pub source: String,
    /// Drivers tried in this order; the first that handles an action acts.
    /// Known: `exec`, `webhook`, `kubernetes`.
    pub drivers: Vec<String>,
    /// Command ids remembered to drop redeliveries.
    pub dedupe: usize,
    /// A file (JSON lines) where those ids and their outcomes are kept across
    /// restarts; empty: in memory only (the engine's in-process executor uses
    /// `executor.jsonl` under `store.path` when that is set).
    pub journal: String,
    /// Longest a driver may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// `exec`: per action, a command line; each whitespace-separated word is
    /// templated on its own (`{{service}}`, `{{namespace}}`, `{{environment}}`,
    /// `{{version}}`, `{{previous_version}}`, `{{incident}}`, `{{action}}`,
    /// `{{id}}`, `{{params.NAME}}`), so a value can never add an argument.
    pub exec: BTreeMap<String, String>,
    /// `webhook`: the URL every command is POSTed to (structured CloudEvent).
    pub webhook_url: String,
    /// `kubernetes`: the API server's base URL, `http://` or `https://`
    /// (empty: in a pod the cluster's own, else `kubectl proxy`'s).
    pub kubernetes_api: String,
    /// `kubernetes`: the CA certificates (PEM) an `https` API server's
    /// certificate is checked against (empty: in a pod, the service account's).
    pub kubernetes_ca_file: String,
    /// `kubernetes`: a bearer token file (empty: the service account's).
    pub kubernetes_token_file: String,
}

/// Driver names.
pub const DRIVERS: [&str; 3] = ["exec", "webhook", "kubernetes"];

impl ExecutorConfig {
    /// Every rule the section breaks, one line each.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for driver in &self.drivers {
            if !DRIVERS.contains(&driver.as_str()) {
                problems.push(format!(
                    "executor.drivers: unknown driver `{driver}` (known: {})",
                    DRIVERS.join(", ")
                ));
            }
        }
        for (action, line) in &self.exec {
            if Action::parse(action).is_none() {
                problems.push(format!("executor.exec: unknown action `{action}`"));
            }
            if line.split_whitespace().next().is_none() {
                problems.push(format!("executor.exec.{action} is empty"));
            }
        }
        if self.drivers.iter().any(|d| d == "webhook") && self.webhook_url.is_empty() {
            problems.push("executor.webhook_url is needed by the webhook driver".into());
        }
        if self.group.trim().is_empty() {
            problems.push("executor.group must not be empty".into());
        }
        if self.dedupe == 0 || self.timeout.is_zero() {
            problems.push("executor.dedupe and executor.timeout must be positive".into());
        }
        problems
    }
}
