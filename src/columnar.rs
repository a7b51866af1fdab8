//! OTLP protobuf -> Arrow `RecordBatch`es with fixed, documented schemas.
//!
//! Every batch carries the resource identity in the same leading columns
//! ([`resource::RESOURCE_FIELDS`]); records that cannot be used (bad ids, no
//! timestamp) are rejected and counted, and the rest of the request still counts
//! (OTLP partial success).

pub mod logs;
pub mod logs_wire;
pub mod metrics;
pub mod resource;
pub mod spans;
pub mod spans_wire;

use arrow::record_batch::RecordBatch;

/// The three OTLP signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    /// Spans (`TracesData`).
    Traces,
    /// Metric data points (`MetricsData`).
    Metrics,
    /// Log records (`LogsData`).
    Logs,
}

impl Signal {
    /// Lowercase name used in labels and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Metrics => "metrics",
            Signal::Logs => "logs",
        }
    }
}

/// One decoded request: the usable records as Arrow, and what was rejected.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// Which schema `batch` has.
    pub signal: Signal,
    /// The accepted records.
    pub batch: RecordBatch,
    /// The lengths of the batch's runs of rows from one resource, in row order
    /// (they sum to the row count). A run's rows share every resource column, so
    /// a reader of those columns can read them once per run.
    pub resource_runs: Vec<usize>,
    /// Records that could not be used.
    pub rejected: u64,
    /// Why the first rejected record was rejected.
    pub rejection: Option<String>,
}

/// Collects rejections while converting.
#[derive(Debug, Default)]
pub(crate) struct Rejections {
    pub(crate) count: u64,
    pub(crate) first: Option<String>,
}

impl Rejections {
    pub(crate) fn reject(&mut self, why: impl FnOnce() -> String) {
        if self.first.is_none() {
            self.first = Some(why());
        }
        self.count += 1;
    }
}
