//! Resource identity columns shared by every schema, and attribute helpers.

use std::sync::Arc;

use arrow::array::{ArrayRef, StringBuilder};
use arrow::datatypes::{DataType, Field};
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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceIdentity {
    values: [String; 9],
}

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
        ResourceIdentity { values }
    }

    /// `service.name` (or `unknown_service`).
    pub fn service_name(&self) -> &str {
        &self.values[1]
    }
}

/// Builds the resource columns row by row.
pub struct ResourceColumns {
    builders: Vec<StringBuilder>,
}

impl ResourceColumns {
    /// Empty builders sized for `capacity` rows.
    pub fn with_capacity(capacity: usize) -> Self {
        ResourceColumns {
            builders: (0..RESOURCE_FIELDS.len())
                .map(|_| StringBuilder::with_capacity(capacity, capacity * 8))
                .collect(),
        }
    }

    /// Appends one row of `identity`.
    pub fn append(&mut self, identity: &ResourceIdentity) {
        for (builder, value) in self.builders.iter_mut().zip(identity.values.iter()) {
            builder.append_value(value);
        }
    }

    /// Finishes the columns in schema order.
    pub fn finish(mut self) -> Vec<ArrayRef> {
        self.builders
            .iter_mut()
            .map(|b| Arc::new(b.finish()) as ArrayRef)
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

    #[test]
    fn canonical_attributes_are_sorted() {
        assert_eq!(
            canonical_attributes(&[kv("b", "2"), kv("a", "1")]),
            "a=1,b=2"
        );
    }
}
