//! Which instances each service runs (`service.instance.id`, else
//! `k8s.pod.name`), from the resource of every signal: what a canary
//! remediation needs to act on one instance first.
//!
//! An instance is live until it has sent nothing for [`INSTANCE_TTL_MS`] of
//! event time. A change of a service's live set (an instance new, or aged out
//! when the service is next seen) is reported. Memory: per service at most
//! [`MAX_INSTANCES`] instances, at most `max_services` services.

use arrow::array::{Array, StringArray};
use arrow::record_batch::RecordBatch;

use super::FastMap;
use super::deployments::ResourceRows;

/// Event time after which a silent instance is gone.
pub const INSTANCE_TTL_MS: i64 = 10 * 60 * 1000;
/// Instances remembered per service.
pub const MAX_INSTANCES: usize = 256;

/// A service's live instances, sorted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Instances {
    pub namespace: String,
    pub service: String,
    pub environment: String,
    pub instances: Vec<String>,
}

/// Live instances per (namespace, service, environment), each with its last sighting.
#[derive(Debug)]
pub struct Inventory {
    services: FastMap<[String; 3], Vec<(String, i64)>>,
    max_services: usize,
}

impl Inventory {
    pub fn new(max_services: usize) -> Self {
        Self {
            services: FastMap::default(),
            max_services,
        }
    }

    /// Reads a batch's resource columns and event times (`time_column`, ns);
    /// returns the services whose live set changed, with the set now.
    pub fn observe(&mut self, batch: &RecordBatch, time_column: &str) -> Vec<Instances> {
        let text = |name: &str| {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        };
        let (Some(rows), Some(id), Some(pod)) = (
            ResourceRows::of(batch, time_column),
            text("service_instance_id"),
            text("k8s_pod_name"),
        ) else {
            return Vec::new();
        };
        let instance = |i: usize| {
            if id.is_valid(i) && !id.value(i).is_empty() {
                Some(id.value(i))
            } else {
                pod.is_valid(i).then(|| pod.value(i))
            }
        };
        let mut changed: Vec<[String; 3]> = Vec::new();
        for (i, key, at_ms) in rows.sightings(instance) {
            let owned = key.map(str::to_string);
            let name = instance(i).unwrap_or_default();
            if self.sighting(key, name, at_ms) && !changed.contains(&owned) {
                changed.push(owned);
            }
        }
        changed
            .into_iter()
            .map(|key| {
                let mut instances: Vec<String> = self
                    .services
                    .get(&key)
                    .map(|v| v.iter().map(|(n, _)| n.clone()).collect())
                    .unwrap_or_default();
                instances.sort();
                let [namespace, service, environment] = key;
                Instances {
                    namespace,
                    service,
                    environment,
                    instances,
                }
            })
            .collect()
    }

    /// Records one sighting; true when the service's live set changed.
    fn sighting(&mut self, key: [&str; 3], name: &str, at_ms: i64) -> bool {
        let owned = key.map(str::to_string);
        if !self.services.contains_key(&owned) && self.services.len() >= self.max_services {
            return false;
        }
        let live = self.services.entry(owned).or_default();
        let before = live.len();
        live.retain(|(_, seen)| at_ms - seen <= INSTANCE_TTL_MS);
        let mut changed = live.len() != before;
        let room = live.len() < MAX_INSTANCES;
        match live.iter_mut().find(|(n, _)| n == name) {
            Some(seen) => seen.1 = seen.1.max(at_ms),
            None if room => {
                live.push((name.to_string(), at_ms));
                changed = true;
            }
            None => {}
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_instances_and_silent_ones_change_the_set() {
        let mut inv = Inventory::new(10);
        let key = ["shop", "cart", "prod"];
        assert!(inv.sighting(key, "cart-1", 0));
        assert!(!inv.sighting(key, "cart-1", 1_000), "seen again: no change");
        assert!(inv.sighting(key, "cart-2", 2_000));
        // cart-1 silent past the TTL: gone when the service is next seen.
        assert!(inv.sighting(key, "cart-2", INSTANCE_TTL_MS + 1_001));
        assert_eq!(inv.services[&key.map(str::to_string)].len(), 1);
        let mut small = Inventory::new(1);
        assert!(small.sighting(key, "a", 0));
        assert!(
            !small.sighting(["", "web", ""], "w", 0),
            "services are bounded"
        );
    }
}
