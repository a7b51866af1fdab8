//! `[incident]`: the incident stage's configuration.

use std::time::Duration;

use serde::Deserialize;

/// Incidents.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncidentConfig {
    /// Whether the incident stage (grouping, ranking) runs after detection.
    pub enabled: bool,
    /// An anomaly joins an incident active this many windows before its onset.
    pub join_windows: u32,
    /// Windows after an incident opened during which anomalies may still join it.
    pub max_join_windows: u32,
    /// Edges on the service graph within which anomalies are one incident.
    pub hops: u32,
    /// Windows after the last member anomaly ended before an incident resolves.
    pub resolve_windows: u32,
    /// Windows after resolution within which a recurrence reopens the incident.
    pub reopen_windows: u32,
    /// Incidents kept for the `incidents` table (oldest resolved dropped first).
    pub max_incidents: usize,
    /// Event time a resolved incident is kept.
    #[serde(with = "humantime_serde")]
    pub retain: Duration,
    /// Event time an edge without traffic stays in the service graph.
    #[serde(with = "humantime_serde")]
    pub edge_ttl: Duration,
    /// Most edges in the service graph.
    pub max_edges: usize,
    /// Recent windows of every series the root-cause ranking reads.
    pub history_windows: usize,
    /// Most series held for the ranking.
    pub max_history_series: usize,
    /// Anomalies on distinct measurements (the quantiles of one count once)
    /// an incident needs before it is reported.
    pub min_anomalies: usize,
}

impl IncidentConfig {
    /// Every rule the section breaks, one line each.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (key, value) in [
            ("incident.resolve_windows", self.resolve_windows as usize),
            ("incident.max_incidents", self.max_incidents),
            ("incident.max_edges", self.max_edges),
            ("incident.max_history_series", self.max_history_series),
            ("incident.min_anomalies", self.min_anomalies),
        ] {
            if value == 0 {
                problems.push(format!("{key} must be positive"));
            }
        }
        if self.history_windows < 5 {
            problems.push("incident.history_windows must be at least 5".to_string());
        }
        problems
    }
}
