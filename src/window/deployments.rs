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

use super::FastMap;
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
}

impl<'a> ResourceRows<'a> {
    /// The columns of `batch`, with event times from `time_column` (ns).
    pub(super) fn of(batch: &'a RecordBatch, time_column: &str) -> Option<Self> {
        let times = batch
            .column_by_name(time_column)
            .and_then(|c| c.as_any().downcast_ref::<arrow::array::UInt64Array>())?;
        Some(Self {
            ns: text_column(batch, "service_namespace")?,
            svc: text_column(batch, "service_name")?,
            env: text_column(batch, "deployment_environment")?,
            times,
            rows: batch.num_rows(),
        })
    }

    /// (row, service key, event time ms) of the rows where `value` (a resource
    /// attribute) is set, skipping rows that repeat the previous one's service,
    /// value and second: rows of one resource repeat its identity, so a
    /// tracker looks up only when it changes.
    pub(super) fn sightings<'v>(
        &'v self,
        value: impl Fn(usize) -> Option<&'v str> + 'v,
    ) -> impl Iterator<Item = (usize, [&'a str; 3], i64)> + 'v {
        let mut previous: Option<usize> = None;
        (0..self.rows).filter_map(move |i| {
            let v = value(i).filter(|v| !v.is_empty())?;
            let same = previous.is_some_and(|p| {
                value(p) == Some(v)
                    && self.svc.value(p) == self.svc.value(i)
                    && self.ns.value(p) == self.ns.value(i)
                    && self.env.value(p) == self.env.value(i)
                    && self.times.value(p) / 1_000_000_000 == self.times.value(i) / 1_000_000_000
            });
            previous = Some(i);
            if same {
                return None;
            }
            let key = [self.ns.value(i), self.svc.value(i), self.env.value(i)];
            Some((i, key, (self.times.value(i) / 1_000_000) as i64))
        })
    }
}

/// Versions per (namespace, service, environment), each with its last sighting.
#[derive(Debug)]
pub struct Deployments {
    services: FastMap<[String; 3], Vec<(String, i64)>>,
    gap_ms: i64,
    max_services: usize,
}

impl Deployments {
    /// A tracker for which a version unseen for `gap_ms` is new again.
    pub fn new(gap_ms: i64, max_services: usize) -> Self {
        Self {
            services: FastMap::default(),
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

    /// Reads a batch's resource columns and event times (`time_column`, ns);
    /// returns the changes it shows, in row order.
    pub fn observe(&mut self, batch: &RecordBatch, time_column: &str) -> Vec<VersionChange> {
        let (Some(rows), Some(version)) = (
            ResourceRows::of(batch, time_column),
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
        let owned = key.map(str::to_string);
        if !self.services.contains_key(&owned) && self.services.len() >= self.max_services {
            return None;
        }
        let gap = self.gap_ms;
        let versions = self.services.entry(owned).or_default();
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

    #[test]
    fn services_are_bounded() {
        let mut d = Deployments::new(3_600_000, 1);
        assert_eq!(d.sighting(["", "a", ""], "1", 0), None);
        assert_eq!(d.sighting(["", "b", ""], "1", 0), None);
        assert_eq!(d.sighting(["", "b", ""], "2", 1), None);
        assert_eq!(d.services.len(), 1);
    }
}
