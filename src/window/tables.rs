//! The per-window tables, their schemas and their row builders.
//!
//! Every table starts with `window_start` and `window_end` (Timestamp ms, UTC) and
//! rows are sorted by their key columns, so equal input gives byte-equal tables.

use std::sync::{Arc, LazyLock};

use arrow::array::{
    ArrayRef, Float64Builder, StringBuilder, TimestampMillisecondBuilder, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

use super::metric_series::SeriesRow;
use super::quantiles::Quantiles;

/// Names of the tables, in the order [`WindowTables`] holds them.
pub const TABLE_NAMES: [&str; 5] = [
    "service_stats",
    "operation_stats",
    "edge_stats",
    "metric_stats",
    "log_stats",
];

/// The five tables of one closed window.
#[derive(Debug, Clone)]
pub struct WindowTables {
    /// Window start, ms since the epoch.
    pub start_ms: i64,
    /// Window end (exclusive), ms since the epoch.
    pub end_ms: i64,
    /// One batch per entry of [`TABLE_NAMES`].
    pub batches: [RecordBatch; 5],
}

fn utf8(name: &str) -> Field {
    Field::new(name, DataType::Utf8, false)
}

fn u64f(name: &str) -> Field {
    Field::new(name, DataType::UInt64, false)
}

fn f64f(name: &str) -> Field {
    Field::new(name, DataType::Float64, true)
}

fn red_fields() -> Vec<Field> {
    vec![
        u64f("requests"),
        u64f("errors"),
        f64f("error_rate"),
        f64f("p50_ms"),
        f64f("p95_ms"),
        f64f("p99_ms"),
        f64f("mean_ms"),
        f64f("max_ms"),
    ]
}

fn schema_with(mut head: Vec<Field>, tail: Vec<Field>) -> SchemaRef {
    let ts = |name| crate::read_model::timestamp_field(name, false);
    let mut fields = vec![ts("window_start"), ts("window_end")];
    fields.append(&mut head);
    fields.extend(tail);
    Arc::new(Schema::new(fields))
}

/// The `edge_stats` column counting the calls that were the last their
/// caller's request made (the latest-started CLIENT child of its parent):
/// where requests end. A callee whose answers make its callers give up
/// (a wrong answer, an exception the caller does not mark as an error) is
/// where their requests now end.
pub const LAST_CALLS: &str = "last_calls";

/// Schemas in [`TABLE_NAMES`] order.
pub fn schemas() -> [SchemaRef; 5] {
    static SCHEMAS: LazyLock<[SchemaRef; 5]> = LazyLock::new(|| {
        let service = || {
            vec![
                utf8("service_namespace"),
                utf8("service_name"),
                utf8("deployment_environment"),
            ]
        };
        [
            schema_with(service(), red_fields()),
            schema_with(
                {
                    let mut f = service();
                    f.push(utf8("operation"));
                    f
                },
                red_fields(),
            ),
            schema_with(
                vec![
                    utf8("caller_namespace"),
                    utf8("caller"),
                    utf8("caller_environment"),
                    utf8("callee_namespace"),
                    utf8("callee"),
                    utf8("callee_environment"),
                    utf8("callee_kind"),
                    utf8("exemplar_trace_id"),
                ],
                vec![
                    u64f("calls"),
                    u64f("errors"),
                    f64f("error_rate"),
                    f64f("p50_ms"),
                    f64f("p99_ms"),
                    f64f("mean_ms"),
                    // Nullable: windows stored before the column existed read as null.
                    Field::new(LAST_CALLS, DataType::UInt64, true),
                ],
            ),
            schema_with(
                {
                    let mut f = service();
                    f.extend([
                        utf8("metric_name"),
                        utf8("metric_type"),
                        utf8("metric_unit"),
                        utf8("attributes"),
                    ]);
                    f
                },
                vec![
                    u64f("count"),
                    f64f("min"),
                    f64f("max"),
                    f64f("mean"),
                    f64f("last"),
                    f64f("delta"),
                    f64f("rate"),
                    Field::new("hist_count", DataType::UInt64, true),
                    f64f("hist_sum"),
                    f64f("hist_p99"),
                ],
            ),
            schema_with(
                {
                    let mut f = service();
                    f.push(utf8("severity"));
                    f
                },
                vec![u64f("count")],
            ),
        ]
    });
    SCHEMAS.clone()
}

/// Request/error/latency accumulation (RED) for one key.
#[derive(Debug, Clone, Default)]
pub struct Red {
    /// Requests (or calls).
    pub requests: u64,
    /// Failed requests.
    pub errors: u64,
    /// Sum of latencies, ms.
    pub total_ms: f64,
    /// Largest latency, ms.
    pub max_ms: f64,
    /// Latency distribution.
    pub latency: Quantiles,
}

impl Red {
    /// Counts one request.
    pub fn add(&mut self, duration_ms: f64, error: bool) {
        self.requests += 1;
        self.errors += u64::from(error);
        self.total_ms += duration_ms;
        self.max_ms = self.max_ms.max(duration_ms);
        self.latency.add(duration_ms);
    }

    /// Adds every request `other` counted.
    pub fn merge(&mut self, other: &Red) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.total_ms += other.total_ms;
        self.max_ms = self.max_ms.max(other.max_ms);
        self.latency.merge(&other.latency);
    }
}

/// Builds one table batch: the leading string keys, then the value columns.
pub struct TableBuilder {
    schema: SchemaRef,
    start: TimestampMillisecondBuilder,
    end: TimestampMillisecondBuilder,
    keys: Vec<StringBuilder>,
    values: Vec<ValueBuilder>,
    window: (i64, i64),
}

enum ValueBuilder {
    U64(UInt64Builder),
    F64(Float64Builder),
}

/// One value cell.
#[derive(Debug, Clone, Copy)]
pub enum Cell {
    /// Unsigned integer (null when `None`).
    U64(Option<u64>),
    /// Float (null when `None` or not finite).
    F64(Option<f64>),
}

impl TableBuilder {
    /// A builder for table `index` of [`TABLE_NAMES`] in window `[start_ms, end_ms)`.
    pub fn new(index: usize, start_ms: i64, end_ms: i64) -> Self {
        let schema = schemas()[index].clone();
        let mut keys = Vec::new();
        let mut values = Vec::new();
        for field in schema.fields().iter().skip(2) {
            match field.data_type() {
                DataType::Utf8 => keys.push(StringBuilder::new()),
                DataType::UInt64 => values.push(ValueBuilder::U64(UInt64Builder::new())),
                _ => values.push(ValueBuilder::F64(Float64Builder::new())),
            }
        }
        TableBuilder {
            schema,
            start: TimestampMillisecondBuilder::new().with_timezone("UTC"),
            end: TimestampMillisecondBuilder::new().with_timezone("UTC"),
            keys,
            values,
            window: (start_ms, end_ms),
        }
    }

    /// Appends one row; `keys` and `cells` must match the schema.
    pub fn row(&mut self, keys: &[&str], cells: &[Cell]) {
        debug_assert_eq!(keys.len(), self.keys.len());
        debug_assert_eq!(cells.len(), self.values.len());
        self.start.append_value(self.window.0);
        self.end.append_value(self.window.1);
        for (builder, key) in self.keys.iter_mut().zip(keys) {
            builder.append_value(key);
        }
        for (builder, cell) in self.values.iter_mut().zip(cells) {
            match (builder, cell) {
                (ValueBuilder::U64(b), Cell::U64(v)) => b.append_option(*v),
                (ValueBuilder::F64(b), Cell::F64(v)) => {
                    b.append_option(v.filter(|v| v.is_finite()))
                }
                (ValueBuilder::U64(b), Cell::F64(_)) => b.append_null(),
                (ValueBuilder::F64(b), Cell::U64(v)) => b.append_option(v.map(|v| v as f64)),
            }
        }
    }

    /// Appends a RED row.
    pub fn red_row(&mut self, keys: &[&str], red: &Red) {
        let [p50, p95, p99] = red.latency.quantiles([0.5, 0.95, 0.99]);
        let n = red.requests.max(1) as f64;
        self.row(
            keys,
            &[
                Cell::U64(Some(red.requests)),
                Cell::U64(Some(red.errors)),
                Cell::F64(Some(red.errors as f64 / n)),
                Cell::F64(p50),
                Cell::F64(p95),
                Cell::F64(p99),
                Cell::F64(Some(red.total_ms / n)),
                Cell::F64(Some(red.max_ms)),
            ],
        );
    }

    /// Appends an edge row: its identity keys, then its exemplar trace id; its
    /// calls, and those that were the last of their request ([`LAST_CALLS`]).
    pub fn edge_row(&mut self, identity: &[&str], exemplar: &str, red: &Red, last_calls: u64) {
        let keys: Vec<&str> = identity.iter().copied().chain([exemplar]).collect();
        let [p50, p99] = red.latency.quantiles([0.5, 0.99]);
        let n = red.requests.max(1) as f64;
        self.row(
            &keys,
            &[
                Cell::U64(Some(red.requests)),
                Cell::U64(Some(red.errors)),
                Cell::F64(Some(red.errors as f64 / n)),
                Cell::F64(p50),
                Cell::F64(p99),
                Cell::F64(Some(red.total_ms / n)),
                Cell::U64(Some(last_calls)),
            ],
        );
    }

    /// Appends a metric series row.
    pub fn series_row(&mut self, keys: &[&str], row: &SeriesRow) {
        self.row(
            keys,
            &[
                Cell::U64(Some(row.points)),
                Cell::F64(row.min),
                Cell::F64(row.max),
                Cell::F64(row.mean),
                Cell::F64(row.last),
                Cell::F64(row.delta),
                Cell::F64(row.rate),
                Cell::U64(row.hist_count),
                Cell::F64(row.hist_sum),
                Cell::F64(row.hist_p99),
            ],
        );
    }

    /// Finishes the batch.
    pub fn finish(mut self) -> Result<RecordBatch, ArrowError> {
        let mut columns: Vec<ArrayRef> =
            vec![Arc::new(self.start.finish()), Arc::new(self.end.finish())];
        columns.extend(
            self.keys
                .iter_mut()
                .map(|b| Arc::new(b.finish()) as ArrayRef),
        );
        columns.extend(self.values.iter_mut().map(|b| match b {
            ValueBuilder::U64(b) => Arc::new(b.finish()) as ArrayRef,
            ValueBuilder::F64(b) => Arc::new(b.finish()) as ArrayRef,
        }));
        // A closed window is kept for `window.retain`: it keeps its rows, not the
        // builders' spare capacity (the arrays are still exclusively owned here).
        for column in &mut columns {
            if let Some(array) = Arc::get_mut(column) {
                array.shrink_to_fit();
            }
        }
        RecordBatch::try_new(self.schema, columns)
    }
}
