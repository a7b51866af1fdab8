//! The `baselines` table: for every window, what each service-level and
//! metric series showed next to what its baseline expected then, and the
//! baseline's spread (one sigma), so that a plot can draw the observed value
//! against the band the detector judged it by (the web view draws
//! expected ± 3 sigma).
//!
//! Bounded: the newest [`BandLog::new`]`(max_rows)` rows are kept (oldest
//! dropped first); call edges, operations and log templates are left out, as
//! they multiply the rows without adding a plot a person reads.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use arrow::array::{ArrayRef, Float64Builder, StringBuilder, TimestampMillisecondBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

use super::anomaly::SeriesKey;
use crate::read_model::{TableSource, timestamp_field};

/// One series in one window.
#[derive(Debug, Clone)]
pub struct Band {
    pub window_start: i64,
    pub key: SeriesKey,
    pub measure: String,
    pub observed: f64,
    /// The baseline's expectation and spread before it learned `observed`.
    pub expected: f64,
    pub sigma: f64,
}

/// The recorded bands, shared by the detection stage (writer) and SQL.
#[derive(Debug, Clone)]
pub struct BandLog {
    rows: Arc<Mutex<VecDeque<Band>>>,
    max_rows: usize,
}

impl BandLog {
    /// A log keeping at most `max_rows` rows.
    pub fn new(max_rows: usize) -> Self {
        BandLog {
            rows: Arc::default(),
            max_rows,
        }
    }

    /// Whether `key`'s series are recorded (service-level and metric series).
    pub fn wants(&self, key: &SeriesKey) -> bool {
        self.max_rows > 0 && matches!(key.signal.as_str(), "service" | "metric")
    }

    /// Appends one window's bands (one lock per window, not per series).
    pub fn append(&self, bands: Vec<Band>) {
        if bands.is_empty() {
            return;
        }
        let Ok(mut rows) = self.rows.lock() else {
            return;
        };
        for band in bands.into_iter().filter(|b| self.wants(&b.key)) {
            while rows.len() >= self.max_rows {
                rows.pop_front();
            }
            rows.push_back(band);
        }
    }
}

fn schema() -> SchemaRef {
    let text = |name| Field::new(name, DataType::Utf8, false);
    let number = |name| Field::new(name, DataType::Float64, false);
    Arc::new(Schema::new(vec![
        timestamp_field("window_start", false),
        text("service"),
        text("signal"),
        text("name"),
        text("attributes"),
        text("measure"),
        number("observed"),
        number("expected"),
        number("sigma"),
    ]))
}

impl TableSource for BandLog {
    fn name(&self) -> &str {
        "baselines"
    }

    fn schema(&self) -> SchemaRef {
        schema()
    }

    fn batches(&self) -> Result<Vec<RecordBatch>, ArrowError> {
        let rows: Vec<Band> = match self.rows.lock() {
            Ok(rows) => rows.iter().cloned().collect(),
            Err(_) => Vec::new(),
        };
        let mut start = TimestampMillisecondBuilder::new().with_timezone("UTC");
        let mut texts: [StringBuilder; 5] = Default::default();
        let mut numbers: [Float64Builder; 3] = Default::default();
        for r in &rows {
            start.append_value(r.window_start);
            let k = &r.key;
            for (b, v) in
                texts
                    .iter_mut()
                    .zip([&k.service, &k.signal, &k.name, &k.attributes, &r.measure])
            {
                b.append_value(v);
            }
            for (b, v) in numbers.iter_mut().zip([r.observed, r.expected, r.sigma]) {
                b.append_value(v);
            }
        }
        let mut columns: Vec<ArrayRef> = vec![Arc::new(start.finish())];
        columns.extend(texts.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        columns.extend(numbers.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        Ok(vec![RecordBatch::try_new(schema(), columns)?])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(signal: &str) -> SeriesKey {
        SeriesKey {
            service: "cart".into(),
            signal: signal.into(),
            name: "p95_ms".into(),
            attributes: String::new(),
        }
    }

    #[test]
    fn keeps_the_newest_rows_of_service_and_metric_series() {
        let log = BandLog::new(3);
        let band = |t: i64, signal: &str, observed: f64| Band {
            window_start: t * 1000,
            key: key(signal),
            measure: "p95_ms".into(),
            observed,
            expected: 2.0,
            sigma: 0.5,
        };
        log.append((0..5).map(|t| band(t, "service", t as f64)).collect());
        log.append(vec![band(9, "edge", 1.0)]);
        let batches = log.batches().expect("batches");
        assert_eq!(batches[0].num_rows(), 3);
        let observed = batches[0]
            .column_by_name("observed")
            .and_then(|c| c.as_any().downcast_ref::<arrow::array::Float64Array>())
            .expect("observed");
        assert_eq!(observed.values().to_vec(), vec![2.0, 3.0, 4.0]);
    }
}
