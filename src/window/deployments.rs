//! Deployments: which `service.version` each service runs, from the resource of
//! every signal, and when a new one appeared.
//!
//! A version change is a version the service has not shown for `gap` of event
//! time appearing while another one was live: a rolling deploy, where old and new
//! instances report side by side for a while, is one change (at the first record
//! of the new version), not one per flip. A service's first version is not a
//! change. Memory: per service, the versions seen within `gap` (at most
//! [`MAX_VERSIONS`]); at most `max_services` services, then new ones are ignored.

use std::collections::VecDeque;
use std::sync::{Arc, LazyLock, RwLock};

use arrow::array::{Array, ArrayRef, StringArray, StringBuilder, TimestampMillisecondBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

use crate::read_model::TableSource;

/// Versions remembered per service.
pub const MAX_VERSIONS: usize = 8;

/// A service's version changed at `at_ms` (event time).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VersionChange {
    pub namespace: String,
    pub service: String,
    pub environment: String,
    /// The version live before.
    pub from: String,
    /// The new version.
    pub to: String,
    pub at_ms: i64,
}

/// Per service (namespace, name, environment), looked up by borrowed parts
/// ([`ServiceRef`]): a sighting of a known service allocates nothing.
pub(super) type ServiceMap<V> = hashbrown::HashMap<[String; 3], V, foldhash::fast::RandomState>;

/// The value of service `key` in `map`, made empty if the map holds fewer than
/// `max` services; `None` when it is new and there is no room.
pub(super) fn service_entry<'m, V: Default>(
    map: &'m mut ServiceMap<V>,
    key: [&str; 3],
    max: usize,
) -> Option<&'m mut V> {
    if !map.contains_key(&ServiceRef(key)) {
        if map.len() >= max {
            return None;
        }
        map.insert(key.map(str::to_string), V::default());
    }
    map.get_mut(&ServiceRef(key))
}

/// A borrowed service key for [`ServiceMap`] lookups. It hashes as the owned key
/// does: both hash as a slice of three strings.
pub(super) struct ServiceRef<'a>(pub(super) [&'a str; 3]);

impl std::hash::Hash for ServiceRef<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl hashbrown::Equivalent<[String; 3]> for ServiceRef<'_> {
    fn equivalent(&self, key: &[String; 3]) -> bool {
        self.0[1] == key[1] && self.0[0] == key[0] && self.0[2] == key[2]
    }
}

/// A Utf8 column of `batch` by name.
pub(super) fn text_column<'a>(batch: &'a RecordBatch, name: &str) -> Option<&'a StringArray> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
}

/// A batch's service identity columns and event times, read for what every
/// record's resource says (versions, instances).
pub(super) struct ResourceRows<'a> {
    ns: &'a StringArray,
    svc: &'a StringArray,
    env: &'a StringArray,
    times: &'a arrow::array::UInt64Array,
    rows: usize,
    /// The lengths of the runs of rows from one resource, when known.
    runs: Option<&'a [usize]>,
}

impl<'a> ResourceRows<'a> {
    /// The columns of `batch`, with event times from `time_column` (ns), and the
    /// batch's resource runs when known (`Decoded::resource_runs`; ignored when
    /// they do not cover the batch).
    pub(super) fn of(
        batch: &'a RecordBatch,
        time_column: &str,
        runs: Option<&'a [usize]>,
    ) -> Option<Self> {
        let times = batch
            .column_by_name(time_column)
            .and_then(|c| c.as_any().downcast_ref::<arrow::array::UInt64Array>())?;
        let rows = batch.num_rows();
        Some(Self {
            ns: text_column(batch, "service_namespace")?,
            svc: text_column(batch, "service_name")?,
            env: text_column(batch, "deployment_environment")?,
            times,
            rows,
            runs: runs.filter(|runs| runs.iter().sum::<usize>() == rows),
        })
    }

    /// (row, service key, event time ms) of the rows where `value` (a resource
    /// attribute) is set, for a tracker to look up. With the runs known, each run
    /// of one resource gives its earliest time and, when later, its latest: its
    /// rows share the resource, and their times need not be in order. Without,
    /// rows that repeat the previous one's service, value and second are skipped.
    pub(super) fn sightings<'v>(
        &'v self,
        value: impl Fn(usize) -> Option<&'v str> + 'v,
    ) -> Box<dyn Iterator<Item = (usize, [&'a str; 3], i64)> + 'v> {
        let key = |i: usize| [self.ns.value(i), self.svc.value(i), self.env.value(i)];
        let ms = |ns: u64| (ns / 1_000_000) as i64;
        if let Some(runs) = self.runs {
            let mut start = 0;
            return Box::new(runs.iter().flat_map(move |n| {
                let rows = start..start + n;
                start += n;
                let first = rows.start;
                let set = *n > 0 && value(first).is_some_and(|v| !v.is_empty());
                set.then(|| {
                    let times = &self.times.values()[rows];
                    let low = ms(times.iter().min().copied().unwrap_or(0));
                    let high = ms(times.iter().max().copied().unwrap_or(0));
                    let later = (high > low).then_some((first, key(first), high));
                    std::iter::once((first, key(first), low)).chain(later)
                })
                .into_iter()
                .flatten()
            }));
        }
        let mut previous: Option<usize> = None;
        let second = |i: usize| self.times.value(i) / 1_000_000_000;
        Box::new((0..self.rows).filter_map(move |i| {
            let v = value(i).filter(|v| !v.is_empty())?;
            let same = previous.is_some_and(|p| {
                value(p) == Some(v)
                    && self.svc.value(p) == self.svc.value(i)
                    && self.ns.value(p) == self.ns.value(i)
                    && self.env.value(p) == self.env.value(i)
                    && second(p) == second(i)
            });
            previous = Some(i);
            if same {
                return None;
            }
            Some((i, key(i), ms(self.times.value(i))))
        }))
    }
}

/// Versions per (namespace, service, environment), each with its last sighting.
#[derive(Debug)]
pub struct Deployments {
    services: ServiceMap<Vec<(String, i64)>>,
    gap_ms: i64,
    max_services: usize,
}

impl Deployments {
    /// A tracker for which a version unseen for `gap_ms` is new again.
    pub fn new(gap_ms: i64, max_services: usize) -> Self {
        Self {
            services: ServiceMap::default(),
            gap_ms,
            max_services,
        }
    }

    /// Remembers the versions of past changes (restored from the store), so the
    /// live version of a service that changed recently is known after a restart.
    pub fn seed(&mut self, changes: &[VersionChange]) {
        for c in changes {
            let key = [
                c.namespace.as_str(),
                c.service.as_str(),
                c.environment.as_str(),
            ];
            let _ = self.sighting(key, &c.to, c.at_ms);
        }
    }

    /// Reads a batch's resource columns and event times (`time_column`, ns), with
    /// its resource runs when known; returns the changes it shows, in row order.
    pub fn observe(
        &mut self,
        batch: &RecordBatch,
        time_column: &str,
        runs: Option<&[usize]>,
    ) -> Vec<VersionChange> {
        let (Some(rows), Some(version)) = (
            ResourceRows::of(batch, time_column, runs),
            text_column(batch, "service_version"),
        ) else {
            return Vec::new();
        };
        let mut changes = Vec::new();
        for (i, key, at_ms) in rows.sightings(|i| version.is_valid(i).then(|| version.value(i))) {
            if let Some(change) = self.sighting(key, version.value(i), at_ms) {
                changes.push(change);
            }
        }
        changes
    }

    fn sighting(&mut self, key: [&str; 3], version: &str, at_ms: i64) -> Option<VersionChange> {
        let gap = self.gap_ms;
        let versions = service_entry(&mut self.services, key, self.max_services)?;
        if let Some(seen) = versions.iter_mut().find(|(v, _)| v == version) {
            let fresh = at_ms - seen.1 > gap;
            seen.1 = seen.1.max(at_ms);
            if !fresh {
                return None;
            }
        } else {
            versions.push((version.to_string(), at_ms));
        }
        // The live version before this one: the most recent other one within the gap.
        let from = versions
            .iter()
            .filter(|(v, seen)| v != version && at_ms - seen <= gap)
            .max_by_key(|(_, seen)| *seen)
            .map(|(v, _)| v.clone());
        versions.retain(|(_, seen)| at_ms - seen <= gap);
        if versions.len() > MAX_VERSIONS {
            versions.sort_by_key(|(_, seen)| std::cmp::Reverse(*seen));
            versions.truncate(MAX_VERSIONS);
        }
        Some(VersionChange {
            namespace: key[0].to_string(),
            service: key[1].to_string(),
            environment: key[2].to_string(),
            from: from?,
            to: version.to_string(),
            at_ms,
        })
    }
}

/// The `deployments` table: the last version changes, oldest first.
#[derive(Debug, Clone)]
pub struct DeploymentLog {
    changes: Arc<RwLock<VecDeque<VersionChange>>>,
    capacity: usize,
}

impl DeploymentLog {
    /// A log of at most `capacity` changes.
    pub fn new(capacity: usize) -> Self {
        Self {
            changes: Arc::default(),
            capacity: capacity.max(1),
        }
    }

    /// The changes held, oldest first.
    pub fn snapshot(&self) -> Vec<VersionChange> {
        self.changes
            .read()
            .map(|c| c.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Records changes.
    pub fn extend(&self, changes: &[VersionChange]) {
        if let Ok(mut log) = self.changes.write() {
            log.extend(changes.iter().cloned());
            while log.len() > self.capacity {
                log.pop_front();
            }
        }
    }
}

fn schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        let text = |name: &str| Field::new(name, DataType::Utf8, false);
        Arc::new(Schema::new(vec![
            text("service_namespace"),
            text("service_name"),
            text("deployment_environment"),
            text("from_version"),
            text("to_version"),
            crate::read_model::timestamp_field("at", false),
        ]))
    });
    SCHEMA.clone()
}

impl TableSource for DeploymentLog {
    fn name(&self) -> &str {
        "deployments"
    }

    fn schema(&self) -> SchemaRef {
        schema()
    }

    fn batches(&self) -> Result<Vec<RecordBatch>, ArrowError> {
        let changes = self.snapshot();
        let mut text: Vec<StringBuilder> = (0..5).map(|_| StringBuilder::new()).collect();
        let mut at = TimestampMillisecondBuilder::new().with_timezone("UTC");
        for c in &changes {
            for (builder, value) in
                text.iter_mut()
                    .zip([&c.namespace, &c.service, &c.environment, &c.from, &c.to])
            {
                builder.append_value(value);
            }
            at.append_value(c.at_ms);
        }
        let mut columns: Vec<ArrayRef> = text
            .iter_mut()
            .map(|b| Arc::new(b.finish()) as ArrayRef)
            .collect();
        columns.push(Arc::new(at.finish()));
        Ok(vec![RecordBatch::try_new(schema(), columns)?])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(d: &mut Deployments, version: &str, at_ms: i64) -> Option<VersionChange> {
        d.sighting(["shop", "cart", "prod"], version, at_ms)
    }

    #[test]
    fn a_rolling_deploy_is_one_change_and_a_first_version_none() {
        let mut d = Deployments::new(3_600_000, 100);
        assert_eq!(seen(&mut d, "1.0", 0), None);
        assert_eq!(seen(&mut d, "1.0", 10_000), None);
        let change = seen(&mut d, "1.1", 20_000).expect("a change");
        assert_eq!((change.from.as_str(), change.to.as_str()), ("1.0", "1.1"));
        assert_eq!(change.at_ms, 20_000);
        // Old and new instances side by side: no more changes.
        for t in 3..20 {
            let v = if t % 2 == 0 { "1.0" } else { "1.1" };
            assert_eq!(seen(&mut d, v, t * 10_000), None, "at {t}");
        }
        // A version unseen for longer than the gap is new again (a rollback).
        assert_eq!(seen(&mut d, "1.1", 10_000_000), None);
        let back = seen(&mut d, "1.0", 10_010_000).expect("rollback");
        assert_eq!((back.from.as_str(), back.to.as_str()), ("1.1", "1.0"));
    }

    /// One traces request: per (version, end times in seconds), a resource of
    /// the service `cart` running that version with a span per time.
    fn request(resources: &[(&str, &[u64])]) -> crate::columnar::Decoded {
        use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
        use opentelemetry_proto::tonic::resource::v1::Resource;
        use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
        let attribute = |key: &str, value: &str| KeyValue {
            key: key.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value.into())),
            }),
            ..Default::default()
        };
        let resource_spans: Vec<ResourceSpans> = resources
            .iter()
            .map(|(version, ends)| ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![
                        attribute("service.name", "cart"),
                        attribute("service.version", version),
                    ],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: ends
                        .iter()
                        .enumerate()
                        .map(|(i, s)| Span {
                            trace_id: vec![1; 16],
                            span_id: vec![i as u8 + 1; 8],
                            start_time_unix_nano: s * 1_000_000_000 - 1,
                            end_time_unix_nano: s * 1_000_000_000,
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect();
        crate::columnar::spans::to_arrow(&resource_spans).expect("spans")
    }

    #[test]
    fn a_resource_run_shows_its_earliest_record_whatever_the_row_order() {
        let decoded = request(&[("1", &[5, 1, 3]), ("2", &[9, 7, 8])]);
        assert_eq!(decoded.resource_runs, [3, 3]);
        let found = |runs: Option<&[usize]>| -> Vec<(String, String, i64)> {
            let mut d = Deployments::new(3_600_000, 100);
            d.observe(&decoded.batch, "end_time_unix_nano", runs)
                .into_iter()
                .map(|c| (c.from, c.to, c.at_ms))
                .collect()
        };
        let change = |at_ms| vec![("1".to_string(), "2".to_string(), at_ms)];
        assert_eq!(found(Some(&decoded.resource_runs)), change(7_000));
        // Row by row (runs unknown) the change is at the new version's first row.
        assert_eq!(found(None), change(9_000));
        // Runs that do not cover the batch are not trusted.
        let mut d = Deployments::new(3_600_000, 100);
        let changes = d.observe(&decoded.batch, "end_time_unix_nano", Some(&[3, 4]));
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].at_ms, 9_000);
    }

    #[test]
    fn a_borrowed_key_finds_the_owned_one() {
        let mut map: ServiceMap<u32> = ServiceMap::default();
        map.insert(["shop".into(), "cart".into(), "prod".into()], 7);
        assert_eq!(map.get(&ServiceRef(["shop", "cart", "prod"])), Some(&7));
        assert_eq!(map.get(&ServiceRef(["shop", "cart", "test"])), None);
        assert_eq!(map.get(&ServiceRef(["", "shopcart", "prod"])), None);
    }

    #[test]
    fn services_are_bounded() {
        let mut d = Deployments::new(3_600_000, 1);
        assert_eq!(d.sighting(["", "a", ""], "1", 0), None);
        assert_eq!(d.sighting(["", "b", ""], "1", 0), None);
        assert_eq!(d.sighting(["", "b", ""], "2", 1), None);
        assert_eq!(d.services.len(), 1);
    }
}
