//! Resource identity columns shared by every schema, and attribute helpers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::{ArrayRef, StringArray};
use arrow::buffer::{MutableBuffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{DataType, Field};
use arrow::error::ArrowError;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::resource::v1::Resource;

/// Service name used when a resource has no `service.name`.
pub const UNKNOWN_SERVICE: &str = "unknown_service";

/// Leading columns of every batch: (column, resource attribute(s) it comes from).
pub const RESOURCE_FIELDS: [(&str, &[&str]); 9] = [
    ("service_namespace", &["service.namespace"]),
    ("service_name", &["service.name"]),
    ("service_version", &["service.version"]),
    ("service_instance_id", &["service.instance.id"]),
    (
        "deployment_environment",
        &["deployment.environment.name", "deployment.environment"],
    ),
    ("k8s_namespace_name", &["k8s.namespace.name"]),
    ("k8s_pod_name", &["k8s.pod.name"]),
    ("k8s_deployment_name", &["k8s.deployment.name"]),
    ("k8s_node_name", &["k8s.node.name"]),
];

/// Arrow fields of the resource columns: all Utf8; `service_name` is never null,
/// the others are empty strings when absent.
pub fn resource_fields() -> Vec<Field> {
    RESOURCE_FIELDS
        .iter()
        .map(|(name, _)| Field::new(*name, DataType::Utf8, false))
        .collect()
}

/// The resource identity of one OTLP resource, resolved once per resource.
///
/// Each resolution gets a serial number (kept by clones), so that the batch
/// builders can tell "the same resource as the previous row" with one integer
/// comparison instead of nine string comparisons.
#[derive(Debug, Clone, Default)]
pub struct ResourceIdentity {
    values: [String; 9],
    serial: u64,
}

impl PartialEq for ResourceIdentity {
    fn eq(&self, other: &Self) -> bool {
        self.values == other.values
    }
}

impl Eq for ResourceIdentity {}

/// Serials of resolved identities; 0 is left to `Default`.
static NEXT_SERIAL: AtomicU64 = AtomicU64::new(1);

impl ResourceIdentity {
    /// Reads the identity attributes of `resource`.
    pub fn from_resource(resource: Option<&Resource>) -> Self {
        let attributes: &[KeyValue] = resource.map(|r| r.attributes.as_slice()).unwrap_or(&[]);
        Self::resolve(|key| find_str(attributes, key))
    }

    /// The identity given `lookup`, which renders the first attribute named `key`
    /// (see [`find_str`]).
    pub(crate) fn resolve(mut lookup: impl FnMut(&str) -> Option<String>) -> Self {
        let mut values: [String; 9] = Default::default();
        for (slot, (_, keys)) in values.iter_mut().zip(RESOURCE_FIELDS.iter()) {
            for key in *keys {
                if let Some(value) = lookup(key)
                    && !value.is_empty()
                {
                    *slot = value;
                    break;
                }
            }
        }
        if values[1].is_empty() {
            values[1] = UNKNOWN_SERVICE.to_string();
        }
        let serial = NEXT_SERIAL.fetch_add(1, Ordering::Relaxed);
        ResourceIdentity { values, serial }
    }

    /// `service.name` (or `unknown_service`).
    pub fn service_name(&self) -> &str {
        &self.values[1]
    }
}

/// Builds the resource columns. The rows of one resource come together, so a
/// row is counted into a run of its resource and the columns are written at
/// `finish`, each sized exactly: per-row appends into growing builders were a
/// tenth of the engine's CPU under load (nine strings per span, and the
/// reallocations of builders sized by a guess).
#[derive(Default)]
pub struct ResourceColumns {
    runs: Vec<(ResourceIdentity, usize)>,
}

impl ResourceColumns {
    /// Empty columns.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one row of `identity`.
    pub fn append(&mut self, identity: &ResourceIdentity) {
        match self.runs.last_mut() {
            Some((last, rows)) if last.serial == identity.serial => *rows += 1,
            _ => self.runs.push((identity.clone(), 1)),
        }
    }

    /// The lengths of the runs of rows with one resource, in row order.
    pub fn runs(&self) -> Vec<usize> {
        self.runs.iter().map(|(_, n)| *n).collect()
    }

    /// Finishes the columns in schema order: each run's value is written by
    /// doubling copies and the offsets from the runs' lengths, not row by row.
    pub fn finish(self) -> Result<Vec<ArrayRef>, ArrowError> {
        fn value(identity: &ResourceIdentity, column: usize) -> &[u8] {
            identity.values[column].as_bytes()
        }
        let rows = self.runs.iter().map(|(_, n)| n).sum::<usize>();
        (0..RESOURCE_FIELDS.len())
            .map(|column| {
                // The values repeat per row: a long resource attribute on many
                // rows could pass i32 offsets (or the memory); refuse the batch.
                let bytes = self.runs.iter().fold(0usize, |sum, (identity, n)| {
                    sum.saturating_add(value(identity, column).len().saturating_mul(*n))
                });
                if i32::try_from(bytes).is_err() {
                    return Err(ArrowError::InvalidArgumentError(format!(
                        "resource column {} would take {bytes} bytes",
                        RESOURCE_FIELDS[column].0
                    )));
                }
                let mut values = MutableBuffer::with_capacity(bytes);
                let mut offsets = Vec::with_capacity(rows + 1);
                offsets.push(0i32);
                let mut end = 0usize;
                for (identity, n) in &self.runs {
                    let value = value(identity, column);
                    values.repeat_slice_n_times(value, *n);
                    // No overflow: `end + k * len` <= `bytes` <= i32::MAX.
                    offsets.extend((1..=*n).map(|k| (end + k * value.len()) as i32));
                    end += n * value.len();
                }
                let offsets = OffsetBuffer::new(ScalarBuffer::from(offsets));
                // `try_new` checks the UTF-8 and the offsets once per column.
                let array = StringArray::try_new(offsets, values.into(), None)?;
                Ok(Arc::new(array) as ArrayRef)
            })
            .collect()
    }
}

/// The value of attribute `key` rendered as a string, if present.
pub fn find_str(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(any_value_to_string)
}

/// The value of attribute `key` as an integer (ints, or strings holding ints).
pub fn find_i64(attributes: &[KeyValue], key: &str) -> Option<i64> {
    let value = attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?;
    match value.value.as_ref()? {
        Value::IntValue(i) => Some(*i),
        Value::DoubleValue(d) if d.is_finite() => Some(*d as i64),
        Value::StringValue(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Renders scalar values; arrays and maps as compact JSON-ish text.
pub fn any_value_to_string(value: &AnyValue) -> Option<String> {
    Some(match value.value.as_ref()? {
        Value::StringValue(s) => s.clone(),
        Value::BoolValue(b) => b.to_string(),
        Value::IntValue(i) => i.to_string(),
        Value::DoubleValue(d) => d.to_string(),
        Value::BytesValue(bytes) => bytes.iter().map(|b| format!("{b:02x}")).collect(),
        Value::ArrayValue(array) => format!(
            "[{}]",
            array
                .values
                .iter()
                .filter_map(any_value_to_string)
                .collect::<Vec<_>>()
                .join(",")
        ),
        Value::KvlistValue(list) => format!("{{{}}}", canonical_attributes(&list.values)),
        Value::StringValueStrindex(i) => format!("strindex:{i}"),
    })
}

/// A canonical, sorted `k=v,k=v` rendering of an attribute set (a series identity).
pub fn canonical_attributes(attributes: &[KeyValue]) -> String {
    let mut pairs: Vec<(&str, String)> = attributes
        .iter()
        .map(|kv| {
            (
                kv.key.as_str(),
                kv.value
                    .as_ref()
                    .and_then(any_value_to_string)
                    .unwrap_or_default(),
            )
        })
        .collect();
    pairs.sort_unstable();
    pairs.dedup_by(|a, b| a.0 == b.0);
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.to_string(),
            value: Some(AnyValue {
                value: Some(Value::StringValue(value.to_string())),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn identity_prefers_new_names_and_defaults_service() {
        let resource = Resource {
            attributes: vec![
                kv("deployment.environment", "old"),
                kv("deployment.environment.name", "prod"),
            ],
            ..Default::default()
        };
        let identity = ResourceIdentity::from_resource(Some(&resource));
        assert_eq!(identity.service_name(), UNKNOWN_SERVICE);
        assert_eq!(identity.values[4], "prod");
        let resource = Resource {
            attributes: vec![kv("deployment.environment", "old"), kv("service.name", "a")],
            ..Default::default()
        };
        let identity = ResourceIdentity::from_resource(Some(&resource));
        assert_eq!(identity.values[4], "old");
        assert_eq!(identity.service_name(), "a");
    }

    fn identity(service: &str, pod: &str) -> ResourceIdentity {
        let resource = Resource {
            attributes: vec![kv("service.name", service), kv("k8s.pod.name", pod)],
            ..Default::default()
        };
        ResourceIdentity::from_resource(Some(&resource))
    }

    fn column(columns: &[ArrayRef], i: usize) -> Vec<String> {
        let array = columns[i]
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("utf8");
        array
            .iter()
            .map(|v| v.unwrap_or("NULL").to_string())
            .collect()
    }

    #[test]
    fn rows_keep_their_resource_across_runs() {
        let (a, b) = (identity("a", "a-1"), identity("b", ""));
        // An equal identity resolved again is a new run, with the same values.
        let a_again = identity("a", "a-1");
        let mut columns = ResourceColumns::new();
        for id in [&a, &a, &b, &a, &a_again, &b, &b] {
            columns.append(id);
        }
        let columns = columns.finish().expect("finish");
        assert_eq!(columns.len(), RESOURCE_FIELDS.len());
        assert_eq!(column(&columns, 1), ["a", "a", "b", "a", "a", "b", "b"]);
        assert_eq!(
            column(&columns, 6),
            ["a-1", "a-1", "", "a-1", "a-1", "", ""]
        );
        assert!(columns.iter().all(|c| c.len() == 7 && c.null_count() == 0));
        let empty = ResourceColumns::new().finish().expect("empty");
        assert!(empty.iter().all(|c| c.is_empty()));
    }

    #[test]
    fn a_resource_too_large_for_its_rows_is_refused_not_allocated() {
        let long = identity(&"s".repeat(4096), "");
        let mut columns = ResourceColumns::new();
        for _ in 0..(1usize << 20) {
            columns.append(&long);
        }
        let error = columns.finish().expect_err("4 GiB of service names");
        assert!(error.to_string().contains("service_name"), "{error}");
    }

    #[test]
    fn canonical_attributes_are_sorted() {
        assert_eq!(
            canonical_attributes(&[kv("b", "2"), kv("a", "1")]),
            "a=1,b=2"
        );
    }
}
