//! Pre-encoded requests made unique and current by patching bytes in place.
//!
//! Encoding OTLP per request would make the generator the bottleneck. Instead each
//! template is encoded once, and the byte offsets of its ids and timestamps are
//! found by looking up every 8-byte window of the encoding in a table of the values
//! the template was generated with (random 64-bit ids and distinct timestamps: a
//! chance match is about 2^-40 per template). A request is then a copy of the
//! template with every id XORed with the request's key (relations between spans,
//! parents and log records survive, because the same key is applied to all of them)
//! and every timestamp shifted so that the template's latest time becomes "now".
//! Ids and timestamps are fixed-width fields in OTLP protobuf, so the message stays
//! valid.

use std::collections::HashMap;

use super::fleet::Round;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    /// An id: XOR its first 8 bytes with the key.
    Id,
    /// A fixed64 timestamp: add the shift.
    Time,
}

/// Where the ids and timestamps of one encoded message are.
#[derive(Debug, Clone, Default)]
pub struct PatchPlan {
    offsets: Vec<(usize, Field)>,
}

/// Looks up 8-byte windows of encoded messages.
#[derive(Debug)]
pub struct Finder {
    values: HashMap<u64, Field>,
    last_time: u64,
}

impl Finder {
    /// A finder for the ids and times of `round`.
    pub fn new(round: &Round) -> Self {
        let mut values = HashMap::new();
        for id in &round.trace_ids {
            values.insert(u64::from_le_bytes(head(id)), Field::Id);
        }
        for id in &round.span_ids {
            values.insert(u64::from_le_bytes(*id), Field::Id);
        }
        for time in &round.times {
            values.insert(*time, Field::Time);
        }
        Finder {
            values,
            last_time: round.last_time,
        }
    }

    /// The patch plan of `encoded`.
    pub fn plan(&self, encoded: &[u8]) -> PatchPlan {
        let mut offsets = Vec::new();
        let mut i = 0;
        while i + 8 <= encoded.len() {
            let window = u64::from_le_bytes(head(&encoded[i..]));
            if let Some(field) = self.values.get(&window) {
                offsets.push((i, *field));
                i += 8;
            } else {
                i += 1;
            }
        }
        PatchPlan { offsets }
    }

    /// The latest timestamp of the round.
    pub fn last_time(&self) -> u64 {
        self.last_time
    }
}

fn head(bytes: &[u8]) -> [u8; 8] {
    let mut out = [0u8; 8];
    out.copy_from_slice(&bytes[..8]);
    out
}

impl PatchPlan {
    /// Number of patched fields.
    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    /// Whether nothing is patched.
    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// `template` with ids XORed with `key` and times shifted by `shift` nanoseconds.
    pub fn apply(&self, template: &[u8], key: u64, shift: i64) -> Vec<u8> {
        let mut out = template.to_vec();
        for (offset, field) in &self.offsets {
            let slot = &mut out[*offset..*offset + 8];
            let value = u64::from_le_bytes(head(slot));
            let patched = match field {
                Field::Id => value ^ key,
                Field::Time => value.wrapping_add_signed(shift),
            };
            slot.copy_from_slice(&patched.to_le_bytes());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::fleet::{Fleet, FleetSpec};
    use super::*;
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    use prost::Message;

    #[test]
    fn patching_changes_every_id_and_time_and_keeps_relations() {
        let fleet = Fleet::new(FleetSpec::default());
        let round = fleet.round(0);
        let finder = Finder::new(&round);
        let key = 0x0123_4567_89ab_cdef;
        let shift = 1_000_000_000_000i64;
        let original = ExportTraceServiceRequest::decode(round.traces.as_slice()).expect("decode");
        let patched = finder.plan(&round.traces).apply(&round.traces, key, shift);
        let patched = ExportTraceServiceRequest::decode(patched.as_slice()).expect("decode");
        let pairs = original
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .zip(
                patched
                    .resource_spans
                    .iter()
                    .flat_map(|r| &r.scope_spans)
                    .flat_map(|s| &s.spans),
            );
        let xor = |id: &[u8]| {
            let mut id = id.to_vec();
            if id.len() >= 8 {
                let v = u64::from_le_bytes(head(&id)) ^ key;
                id[..8].copy_from_slice(&v.to_le_bytes());
            }
            id
        };
        let mut n = 0;
        for (a, b) in pairs {
            n += 1;
            assert_eq!(b.trace_id, xor(&a.trace_id));
            assert_eq!(b.span_id, xor(&a.span_id));
            assert_eq!(b.parent_span_id, xor(&a.parent_span_id));
            assert_eq!(
                b.start_time_unix_nano,
                a.start_time_unix_nano + shift as u64
            );
            assert_eq!(b.end_time_unix_nano, a.end_time_unix_nano + shift as u64);
            assert_eq!(
                (a.name.as_str(), &a.attributes),
                (b.name.as_str(), &b.attributes)
            );
        }
        assert_eq!(n, round.spans);

        let logs = finder.plan(&round.logs).apply(&round.logs, key, shift);
        let logs = ExportLogsServiceRequest::decode(logs.as_slice()).expect("decode");
        let original = ExportLogsServiceRequest::decode(round.logs.as_slice()).expect("decode");
        let records = |r: &ExportLogsServiceRequest| {
            r.resource_logs
                .iter()
                .flat_map(|r| &r.scope_logs)
                .flat_map(|s| s.log_records.clone())
                .collect::<Vec<_>>()
        };
        for (a, b) in records(&original).iter().zip(records(&logs).iter()) {
            assert_eq!(b.time_unix_nano, a.time_unix_nano + shift as u64);
            assert_eq!(b.trace_id, xor(&a.trace_id));
            assert_eq!(b.span_id, xor(&a.span_id));
        }

        let metrics = finder
            .plan(&round.metrics)
            .apply(&round.metrics, key, shift);
        let metrics = ExportMetricsServiceRequest::decode(metrics.as_slice()).expect("decode");
        for metric in metrics
            .resource_metrics
            .iter()
            .flat_map(|r| &r.scope_metrics)
            .flat_map(|s| &s.metrics)
        {
            let times: Vec<u64> = match metric.data.as_ref().expect("data") {
                Data::Gauge(g) => g.data_points.iter().map(|p| p.time_unix_nano).collect(),
                Data::Sum(s) => s.data_points.iter().map(|p| p.time_unix_nano).collect(),
                Data::Histogram(h) => h.data_points.iter().map(|p| p.time_unix_nano).collect(),
                _ => unreachable!(),
            };
            assert!(times.iter().all(|t| *t == round.last_time + shift as u64));
        }
    }
}
