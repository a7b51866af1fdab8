//! What the incident stage publishes: the `incidents` table, the service graph
//! and a revision counter watchers wait on.

use std::collections::BTreeSet;
use std::sync::{Arc, LazyLock, RwLock};

use arrow::array::{
    ArrayRef, Float64Builder, StringBuilder, TimestampMillisecondBuilder, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

use super::{Incident, IncidentState};
use crate::read_model::TableSource;

/// An edge of the service graph as published: caller, callee, when it first and
/// last carried traffic, what the callee is, and a trace id to look at.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphEdge {
    /// The caller's and callee's identities ([`super::node`]); their names,
    /// namespaces and environments by [`super::node::parts`].
    pub caller: String,
    pub callee: String,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    /// `service`, `database`, `external` or `messaging`.
    pub callee_kind: String,
    /// The latest exemplar call's trace id (32 hex digits), empty when unknown.
    pub exemplar_trace_id: String,
}

/// The shared `incidents` table, the service graph, and a revision counter
/// that moves each time they are published (what watchers wait on).
#[derive(Debug, Clone)]
pub struct IncidentLog {
    incidents: Arc<RwLock<Vec<Incident>>>,
    edges: Arc<RwLock<Vec<GraphEdge>>>,
    changes: Arc<RwLock<Vec<super::graph::TopologyChange>>>,
    revision: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Default for IncidentLog {
    fn default() -> Self {
        Self {
            incidents: Arc::default(),
            edges: Arc::default(),
            changes: Arc::default(),
            revision: Arc::new(tokio::sync::watch::Sender::new(0)),
        }
    }
}

impl IncidentLog {
    /// The edges of the service graph, sorted.
    pub fn edges(&self) -> Vec<GraphEdge> {
        self.edges.read().map(|e| e.clone()).unwrap_or_default()
    }

    /// A receiver that sees each publication.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.revision.subscribe()
    }

    /// The topology changes recorded, oldest first.
    pub fn changes(&self) -> Vec<super::graph::TopologyChange> {
        self.changes.read().map(|c| c.clone()).unwrap_or_default()
    }

    pub(super) fn publish_graph(&self, graph: &super::graph::ServiceGraph) {
        if let Ok(mut held) = self.edges.write() {
            *held = graph.edges();
        }
        if let Ok(mut held) = self.changes.write()
            && held.last() != graph.changes().back()
        {
            *held = graph.changes().iter().cloned().collect();
        }
    }

    /// A copy of every incident held, oldest first.
    pub fn snapshot(&self) -> Vec<Incident> {
        self.incidents.read().map(|i| i.clone()).unwrap_or_default()
    }

    /// Publishes the confirmed incidents.
    pub(super) fn publish(&self, incidents: &[Incident]) {
        if let Ok(mut held) = self.incidents.write() {
            *held = incidents.iter().filter(|i| i.confirmed).cloned().collect();
        }
        self.revision.send_modify(|r| *r += 1);
    }
}

fn schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        let ts = crate::read_model::timestamp_field;
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::UInt64, false),
            Field::new("state", DataType::Utf8, false),
            ts("opened", false),
            ts("resolved", true),
            Field::new("services", DataType::Utf8, false),
            Field::new("classes", DataType::Utf8, false),
            Field::new("anomalies", DataType::UInt64, false),
            Field::new("reopened", DataType::UInt64, false),
            Field::new("root_cause", DataType::Utf8, true),
            Field::new("root_cause_namespace", DataType::Utf8, true),
            Field::new("root_cause_environment", DataType::Utf8, true),
            Field::new("root_cause_class", DataType::Utf8, true),
            Field::new("root_cause_score", DataType::Float64, true),
            Field::new("entry_points", DataType::Utf8, false),
            Field::new("root_causes", DataType::Utf8, false),
        ]))
    });
    SCHEMA.clone()
}

impl TableSource for IncidentLog {
    fn name(&self) -> &str {
        "incidents"
    }

    fn schema(&self) -> SchemaRef {
        schema()
    }

    fn batches(&self) -> Result<Vec<RecordBatch>, ArrowError> {
        let incidents = self.snapshot();
        let (mut id, mut anomalies, mut reopened) = (
            UInt64Builder::new(),
            UInt64Builder::new(),
            UInt64Builder::new(),
        );
        let (mut state, mut services, mut classes) = (
            StringBuilder::new(),
            StringBuilder::new(),
            StringBuilder::new(),
        );
        let (mut top, mut top_class, mut entry, mut ranked) = (
            StringBuilder::new(),
            StringBuilder::new(),
            StringBuilder::new(),
            StringBuilder::new(),
        );
        let (mut top_namespace, mut top_environment) = (StringBuilder::new(), StringBuilder::new());
        let mut top_score = Float64Builder::new();
        let mut opened = TimestampMillisecondBuilder::new().with_timezone("UTC");
        let mut resolved = TimestampMillisecondBuilder::new().with_timezone("UTC");
        for incident in &incidents {
            id.append_value(incident.id);
            state.append_value(match incident.state {
                IncidentState::Open => "open",
                IncidentState::Resolved => "resolved",
            });
            opened.append_value(incident.opened_ms);
            resolved.append_option(incident.resolved_ms);
            let names: Vec<&str> = incident.services().into_iter().collect();
            services.append_value(names.join(","));
            let kinds: BTreeSet<&str> = incident.anomalies().map(|a| a.class.as_str()).collect();
            classes.append_value(kinds.into_iter().collect::<Vec<_>>().join(","));
            anomalies.append_value(incident.members.len() as u64);
            reopened.append_value(incident.reopened);
            let best = incident.root_causes.first();
            top.append_option(best.map(|r| r.service.as_str()));
            top_namespace.append_option(best.map(|r| r.namespace.as_str()));
            top_environment.append_option(best.map(|r| r.environment.as_str()));
            top_class.append_option(best.map(|r| r.class.as_str()));
            top_score.append_option(best.map(|r| r.score));
            entry.append_value(incident.entry_points.join(","));
            ranked.append_value(
                serde_json::to_string(&incident.root_causes).unwrap_or_else(|_| "[]".into()),
            );
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(id.finish()),
            Arc::new(state.finish()),
            Arc::new(opened.finish()),
            Arc::new(resolved.finish()),
            Arc::new(services.finish()),
            Arc::new(classes.finish()),
            Arc::new(anomalies.finish()),
            Arc::new(reopened.finish()),
            Arc::new(top.finish()),
            Arc::new(top_namespace.finish()),
            Arc::new(top_environment.finish()),
            Arc::new(top_class.finish()),
            Arc::new(top_score.finish()),
            Arc::new(entry.finish()),
            Arc::new(ranked.finish()),
        ];
        Ok(vec![RecordBatch::try_new(schema(), columns)?])
    }
}
