//! What remediation publishes for SQL and the API: every governor decision,
//! every outcome, each incident's remediation state, and what was learned.
//!
//! Tables: `remediation_decisions`, `remediation_outcomes`,
//! `remediation_feedback` (humans' verdicts; the last `capacity` of each),
//! `remediations` (one row per incident remediated) and `remediation_stats`
//! (per failure class, service and action). Rows are
//! serialised with serde and decoded into Arrow by `arrow::json`, so a row type
//! and its schema are the whole definition of a table.

use std::collections::VecDeque;
use std::sync::{Arc, LazyLock, RwLock};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use serde::Serialize;

use crate::read_model::{TableSource, timestamp_field};

/// One governor decision.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DecisionRow {
    /// Order of recording (several decisions share a window's time).
    pub seq: u64,
    pub at: i64,
    pub incident: u64,
    pub command: String,
    pub service: String,
    pub action: String,
    pub verdict: String,
    pub reason: String,
}

/// One outcome an executor reported.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct OutcomeRow {
    pub seq: u64,
    pub at: i64,
    pub incident: u64,
    pub command: String,
    pub service: String,
    pub action: String,
    pub status: String,
    pub executor: String,
    pub detail: String,
}

/// An incident's remediation as it stands.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RemediationRow {
    pub incident: u64,
    /// `mitigating`, `waiting_approval`, `verifying`, `recovered`, `escalated`.
    pub state: String,
    pub service: String,
    pub class: String,
    pub playbook: String,
    pub attempts: u32,
    pub command: String,
    pub action: String,
    pub updated: i64,
}

/// A human's verdict on an incident.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FeedbackRow {
    pub at: i64,
    pub incident: u64,
    /// `false_positive` or `wrong_root_cause`.
    pub verdict: String,
    /// The root cause the engine had ranked first.
    pub ranked: String,
    /// The root cause the human named, if any.
    pub root_cause: String,
    pub comment: String,
    pub by: String,
}

/// What one remedy did for one class on one service.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StatsRow {
    pub class: String,
    pub service: String,
    pub action: String,
    pub attempts: u32,
    pub successes: u32,
    pub success_rate: Option<f64>,
    pub median_recovery_ms: Option<f64>,
    pub demoted: bool,
}

#[derive(Debug, Default)]
struct Inner {
    seq: u64,
    decisions: VecDeque<DecisionRow>,
    outcomes: VecDeque<OutcomeRow>,
    remediations: Vec<RemediationRow>,
    stats: Vec<StatsRow>,
    feedback: VecDeque<FeedbackRow>,
}

/// The shared tables.
#[derive(Debug, Clone)]
pub struct RemediationLog {
    inner: Arc<RwLock<Inner>>,
    capacity: usize,
}

fn push<T>(rows: &mut VecDeque<T>, row: T, capacity: usize) {
    rows.push_back(row);
    while rows.len() > capacity {
        rows.pop_front();
    }
}

impl RemediationLog {
    /// Keeps the last `capacity` decisions and outcomes.
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Arc::default(),
            capacity: capacity.max(1),
        }
    }

    /// Records a decision (its `seq` is assigned here).
    pub fn decision(&self, mut row: DecisionRow) {
        if let Ok(mut inner) = self.inner.write() {
            inner.seq += 1;
            row.seq = inner.seq;
            push(&mut inner.decisions, row, self.capacity);
        }
    }

    /// Records an outcome (its `seq` is assigned here).
    pub fn outcome(&self, mut row: OutcomeRow) {
        if let Ok(mut inner) = self.inner.write() {
            inner.seq += 1;
            row.seq = inner.seq;
            push(&mut inner.outcomes, row, self.capacity);
        }
    }

    /// Keeps a human's verdict.
    pub fn feedback(&self, row: FeedbackRow) {
        if let Ok(mut inner) = self.inner.write() {
            push(&mut inner.feedback, row, self.capacity);
        }
    }

    pub fn feedbacks(&self) -> Vec<FeedbackRow> {
        self.read(|i| i.feedback.iter().cloned().collect())
    }

    /// Replaces the remediation states and the learned stats.
    pub fn publish(&self, remediations: Vec<RemediationRow>, stats: Vec<StatsRow>) {
        if let Ok(mut inner) = self.inner.write() {
            inner.remediations = remediations;
            inner.stats = stats;
        }
    }

    pub fn decisions(&self) -> Vec<DecisionRow> {
        self.read(|i| i.decisions.iter().cloned().collect())
    }

    pub fn outcomes(&self) -> Vec<OutcomeRow> {
        self.read(|i| i.outcomes.iter().cloned().collect())
    }

    pub fn remediations(&self) -> Vec<RemediationRow> {
        self.read(|i| i.remediations.clone())
    }

    pub fn stats(&self) -> Vec<StatsRow> {
        self.read(|i| i.stats.clone())
    }

    fn read<T: Default>(&self, f: impl FnOnce(&Inner) -> T) -> T {
        self.inner.read().map(|i| f(&i)).unwrap_or_default()
    }

    /// The four tables, each a [`TableSource`] to register.
    pub fn tables(&self) -> Vec<Arc<dyn TableSource>> {
        Table::ALL
            .into_iter()
            .map(|table| {
                Arc::new(View {
                    log: self.clone(),
                    table,
                }) as Arc<dyn TableSource>
            })
            .collect()
    }
}

#[derive(Debug, Clone, Copy)]
enum Table {
    Decisions,
    Outcomes,
    Remediations,
    Stats,
    Feedback,
}

impl Table {
    const ALL: [Table; 5] = [
        Table::Decisions,
        Table::Outcomes,
        Table::Remediations,
        Table::Stats,
        Table::Feedback,
    ];
}

struct View {
    log: RemediationLog,
    table: Table,
}

fn text(name: &str) -> Field {
    Field::new(name, DataType::Utf8, false)
}

fn uint(name: &str) -> Field {
    Field::new(name, DataType::UInt64, false)
}

fn schema(table: Table) -> SchemaRef {
    static SCHEMAS: LazyLock<[SchemaRef; 5]> = LazyLock::new(|| {
        let decisions = vec![
            uint("seq"),
            timestamp_field("at", false),
            uint("incident"),
            text("command"),
            text("service"),
            text("action"),
            text("verdict"),
            text("reason"),
        ];
        let outcomes = vec![
            uint("seq"),
            timestamp_field("at", false),
            uint("incident"),
            text("command"),
            text("service"),
            text("action"),
            text("status"),
            text("executor"),
            text("detail"),
        ];
        let remediations = vec![
            uint("incident"),
            text("state"),
            text("service"),
            text("class"),
            text("playbook"),
            Field::new("attempts", DataType::UInt32, false),
            text("command"),
            text("action"),
            timestamp_field("updated", false),
        ];
        let stats = vec![
            text("class"),
            text("service"),
            text("action"),
            Field::new("attempts", DataType::UInt32, false),
            Field::new("successes", DataType::UInt32, false),
            Field::new("success_rate", DataType::Float64, true),
            Field::new("median_recovery_ms", DataType::Float64, true),
            Field::new("demoted", DataType::Boolean, false),
        ];
        let feedback = vec![
            timestamp_field("at", false),
            uint("incident"),
            text("verdict"),
            text("ranked"),
            text("root_cause"),
            text("comment"),
            text("by"),
        ];
        [decisions, outcomes, remediations, stats, feedback].map(|f| Arc::new(Schema::new(f)))
    });
    SCHEMAS[table as usize].clone()
}

fn batch<T: Serialize>(schema: SchemaRef, rows: &[T]) -> Result<RecordBatch, ArrowError> {
    let mut decoder = arrow::json::ReaderBuilder::new(schema.clone()).build_decoder()?;
    decoder.serialize(rows)?;
    Ok(decoder
        .flush()?
        .unwrap_or_else(|| RecordBatch::new_empty(schema)))
}

impl TableSource for View {
    fn name(&self) -> &str {
        match self.table {
            Table::Decisions => "remediation_decisions",
            Table::Outcomes => "remediation_outcomes",
            Table::Remediations => "remediations",
            Table::Stats => "remediation_stats",
            Table::Feedback => "remediation_feedback",
        }
    }

    fn schema(&self) -> SchemaRef {
        schema(self.table)
    }

    fn batches(&self) -> Result<Vec<RecordBatch>, ArrowError> {
        let s = self.schema();
        let batch = match self.table {
            Table::Decisions => batch(s, &self.log.decisions())?,
            Table::Outcomes => batch(s, &self.log.outcomes())?,
            Table::Remediations => batch(s, &self.log.remediations())?,
            Table::Stats => batch(s, &self.log.stats())?,
            Table::Feedback => batch(s, &self.log.feedbacks())?,
        };
        Ok(vec![batch])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_become_tables_with_their_schema_also_when_empty() {
        let log = RemediationLog::new(2);
        for i in 0..3 {
            log.decision(DecisionRow {
                seq: 0,
                at: 1_700_000_000_000 + i,
                incident: 4,
                command: format!("inc4-a{i}-restart"),
                service: "cart".into(),
                action: "restart".into(),
                verdict: "allow".into(),
                reason: "within every limit".into(),
            });
        }
        let tables = log.tables();
        let decisions = tables[0].batches().expect("batches");
        assert_eq!(decisions[0].num_rows(), 2, "capacity 2");
        assert_eq!(decisions[0].schema(), tables[0].schema());
        for t in &tables[1..] {
            let b = t.batches().expect("empty");
            assert_eq!((b[0].num_rows(), b[0].schema()), (0, t.schema()));
        }
        log.publish(
            Vec::new(),
            vec![StatsRow {
                class: "memory_leak".into(),
                service: "cart".into(),
                action: "restart".into(),
                attempts: 2,
                successes: 1,
                success_rate: Some(0.5),
                median_recovery_ms: None,
                demoted: false,
            }],
        );
        let stats = tables[3].batches().expect("stats");
        assert_eq!(stats[0].num_rows(), 1);
    }
}
