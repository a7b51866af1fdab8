//! What the demo learns from the engine, the way any client would: SQL over
//! the API listener's `/sql`, polled. Each poll returns what changed since the
//! last one.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

/// One incident as the engine reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Incident {
    pub id: u64,
    pub state: String,
    pub services: Vec<String>,
    pub root_cause: String,
    pub class: String,
    pub score: f64,
}

/// One decision of the governor.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub seq: u64,
    pub incident: u64,
    pub command: String,
    pub service: String,
    pub action: String,
    pub verdict: String,
    pub reason: String,
}

/// What changed since the last poll.
#[derive(Debug, Default)]
pub struct Changes {
    /// Incidents new or changed (state or top root cause).
    pub incidents: Vec<Incident>,
    pub decisions: Vec<Decision>,
    /// Incidents whose remediation was verified (the `recovered` state).
    pub verified: Vec<u64>,
    /// Anomalies open now.
    pub open_anomalies: u64,
}

/// Polls one engine.
pub struct Watcher {
    client: reqwest::Client,
    url: String,
    incidents: BTreeMap<u64, Incident>,
    last_decision: u64,
    verified: BTreeMap<u64, String>,
}

fn text(row: &Value, key: &str) -> String {
    match row.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

fn number(row: &Value, key: &str) -> f64 {
    match row.get(key) {
        Some(Value::Number(n)) => n.as_f64().unwrap_or(0.0),
        Some(Value::String(s)) => s.parse().unwrap_or(0.0),
        _ => 0.0,
    }
}

impl Watcher {
    pub fn new(api: SocketAddr) -> Self {
        Watcher {
            client: reqwest::Client::new(),
            url: format!("http://{api}/sql?format=json"),
            incidents: BTreeMap::new(),
            last_decision: 0,
            verified: BTreeMap::new(),
        }
    }

    async fn sql(&self, query: &str) -> Result<Vec<Value>, String> {
        let response = self
            .client
            .post(&self.url)
            .timeout(Duration::from_secs(5))
            .body(query.to_string())
            .send()
            .await
            .map_err(|e| format!("the engine's API: {e}"))?;
        let status = response.status();
        let body = response.text().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("SQL answered {status}: {body}"));
        }
        serde_json::from_str(&body).map_err(|e| format!("SQL answer: {e}"))
    }

    /// What changed since the last poll.
    pub async fn poll(&mut self) -> Result<Changes, String> {
        let mut changes = Changes::default();
        let rows = self
            .sql("SELECT id, state, services, root_cause, root_cause_class, root_cause_score FROM incidents ORDER BY id")
            .await?;
        for row in rows {
            let incident = Incident {
                id: number(&row, "id") as u64,
                state: text(&row, "state"),
                services: text(&row, "services")
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect(),
                root_cause: text(&row, "root_cause"),
                class: text(&row, "root_cause_class"),
                score: number(&row, "root_cause_score"),
            };
            let before = self.incidents.get(&incident.id);
            let changed = before.is_none_or(|b| {
                b.state != incident.state
                    || b.root_cause != incident.root_cause
                    || b.class != incident.class
                    || b.services != incident.services
            });
            if changed {
                changes.incidents.push(incident.clone());
                self.incidents.insert(incident.id, incident);
            }
        }
        let rows = self
            .sql(&format!(
                "SELECT seq, incident, command, service, action, verdict, reason FROM remediation_decisions WHERE seq > {} ORDER BY seq",
                self.last_decision
            ))
            .await?;
        for row in rows {
            let decision = Decision {
                seq: number(&row, "seq") as u64,
                incident: number(&row, "incident") as u64,
                command: text(&row, "command"),
                service: text(&row, "service"),
                action: text(&row, "action"),
                verdict: text(&row, "verdict"),
                reason: text(&row, "reason"),
            };
            self.last_decision = self.last_decision.max(decision.seq);
            changes.decisions.push(decision);
        }
        let open = self
            .sql("SELECT COUNT(*) AS open FROM anomalies WHERE ended IS NULL")
            .await?;
        changes.open_anomalies = open.first().map_or(0, |r| number(r, "open") as u64);
        for row in self.sql("SELECT incident, state FROM remediations").await? {
            let (incident, state) = (number(&row, "incident") as u64, text(&row, "state"));
            if state == "recovered" && self.verified.get(&incident) != Some(&state) {
                changes.verified.push(incident);
            }
            self.verified.insert(incident, state);
        }
        Ok(changes)
    }

    /// The incident `id` as last seen.
    pub fn incident(&self, id: u64) -> Option<&Incident> {
        self.incidents.get(&id)
    }
}
