//! Which instances each service runs ([`instance_name`]), from the resource
//! of every signal: what a canary remediation needs to act on one instance
//! first.
//!
//! An instance is live until it has sent nothing for [`INSTANCE_TTL_MS`] of
//! event time. A change of a service's live set (an instance new, or aged out
//! when the service is next seen) is reported. Memory: per service at most
//! [`MAX_INSTANCES`] instances, at most `max_services` services.

use arrow::array::{Array, StringArray};
use arrow::record_batch::RecordBatch;

use hashbrown::Equivalent;

use super::deployments::{ResourceRows, ServiceMap, ServiceRef, service_entry};

/// An instance's name from its resource: `k8s.pod.name` where Kubernetes runs
/// it (the name its API acts on: a canary restart deletes that pod), else
/// `service.instance.id`; empty when neither is set.
pub fn instance_name<'a>(pod: &'a StringArray, id: &'a StringArray, row: usize) -> &'a str {
    if pod.is_valid(row) && !pod.value(row).is_empty() {
        pod.value(row)
    } else if id.is_valid(row) {
        id.value(row)
    } else {
        ""
    }
}

/// Event time after which a silent instance is gone.
pub const INSTANCE_TTL_MS: i64 = 10 * 60 * 1000;
/// Instances remembered per service.
pub const MAX_INSTANCES: usize = 256;

/// A service's live instances, sorted, and where Kubernetes runs it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Instances {
    pub namespace: String,
    pub service: String,
    pub environment: String,
    pub instances: Vec<String>,
    /// `k8s.namespace.name` last seen, empty when none.
    #[serde(default)]
    pub k8s_namespace: String,
    /// `k8s.deployment.name` last seen, empty when none.
    #[serde(default)]
    pub k8s_deployment: String,
}

/// One service's live instances (each with its last sighting) and its
/// Kubernetes namespace and Deployment.
#[derive(Debug, Default)]
struct Entry {
    live: Vec<(String, i64)>,
    k8s: [String; 2],
}

/// Live instances per (namespace, service, environment).
#[derive(Debug)]
pub struct Inventory {
    services: ServiceMap<Entry>,
    max_services: usize,
    /// Services with two or more live instances.
    several: usize,
}

impl Inventory {
    pub fn new(max_services: usize) -> Self {
        Self {
            services: ServiceMap::default(),
            max_services,
            several: 0,
        }
    }

    /// Whether some service runs two or more live instances.
    pub fn any_several(&self) -> bool {
        self.several > 0
    }

    /// How many live instances the service `key` (namespace, name,
    /// environment) runs.
    pub fn instances(&self, key: [&str; 3]) -> usize {
        self.services
            .get(&ServiceRef(key))
            .map_or(0, |e| e.live.len())
    }

    /// Reads a batch's resource columns and event times (`time_column`, ns);
    /// returns the services whose live set changed, with the set now.
    pub fn observe(
        &mut self,
        batch: &RecordBatch,
        time_column: &str,
        runs: Option<&[usize]>,
    ) -> Vec<Instances> {
        let text = |name: &str| {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        };
        let (Some(rows), Some(id), Some(pod), Some(k8s_ns), Some(k8s_deploy)) = (
            ResourceRows::of(batch, time_column, runs),
            text("service_instance_id"),
            text("k8s_pod_name"),
            text("k8s_namespace_name"),
            text("k8s_deployment_name"),
        ) else {
            return Vec::new();
        };
        let instance = |i: usize| Some(instance_name(pod, id, i));
        let mut changed: Vec<[String; 3]> = Vec::new();
        for (i, key, at_ms) in rows.sightings(instance) {
            let name = instance(i).unwrap_or_default();
            let k8s = [k8s_ns.value(i), k8s_deploy.value(i)];
            if self.sighting(key, name, k8s, at_ms)
                && !changed.iter().any(|c| ServiceRef(key).equivalent(c))
            {
                changed.push(key.map(str::to_string));
            }
        }
        changed
            .into_iter()
            .map(|key| {
                let entry = self.services.get(&key);
                let mut instances: Vec<String> = entry
                    .map(|e| e.live.iter().map(|(n, _)| n.clone()).collect())
                    .unwrap_or_default();
                instances.sort();
                let [k8s_namespace, k8s_deployment] =
                    entry.map(|e| e.k8s.clone()).unwrap_or_default();
                let [namespace, service, environment] = key;
                Instances {
                    namespace,
                    service,
                    environment,
                    instances,
                    k8s_namespace,
                    k8s_deployment,
                }
            })
            .collect()
    }

    /// Records one sighting; true when the service's live set (or where
    /// Kubernetes runs it) changed.
    fn sighting(&mut self, key: [&str; 3], name: &str, k8s: [&str; 2], at_ms: i64) -> bool {
        let Some(entry) = service_entry(&mut self.services, key, self.max_services) else {
            return false;
        };
        let mut changed = false;
        for (slot, value) in entry.k8s.iter_mut().zip(k8s) {
            if !value.is_empty() && slot != value {
                *slot = value.to_string();
                changed = true;
            }
        }
        let live = &mut entry.live;
        let before = live.len();
        live.retain(|(_, seen)| at_ms - seen <= INSTANCE_TTL_MS);
        changed |= live.len() != before;
        let room = live.len() < MAX_INSTANCES;
        match live.iter_mut().find(|(n, _)| n == name) {
            Some(seen) => seen.1 = seen.1.max(at_ms),
            None if room => {
                live.push((name.to_string(), at_ms));
                changed = true;
            }
            None => {}
        }
        let after = live.len();
        if (before >= 2) != (after >= 2) {
            if after >= 2 {
                self.several += 1;
            } else {
                self.several -= 1;
            }
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
        let k8s = ["shop-prod", "cart"];
        assert!(inv.sighting(key, "cart-1", k8s, 0));
        assert!(
            !inv.sighting(key, "cart-1", k8s, 1_000),
            "seen again: no change"
        );
        assert!(!inv.any_several());
        assert!(inv.sighting(key, "cart-2", k8s, 2_000));
        assert!(inv.any_several());
        // cart-1 silent past the TTL: gone when the service is next seen.
        assert!(inv.sighting(key, "cart-2", k8s, INSTANCE_TTL_MS + 1_001));
        let entry = &inv.services[&key.map(str::to_string)];
        assert_eq!((entry.live.len(), entry.k8s[1].as_str()), (1, "cart"));
        assert!(!inv.any_several(), "one left");
        assert!(inv.sighting(
            key,
            "cart-2",
            ["shop-prod", "cart-v2"],
            INSTANCE_TTL_MS + 2_000
        ));
        let mut small = Inventory::new(1);
        assert!(small.sighting(key, "a", k8s, 0));
        assert!(
            !small.sighting(["", "web", ""], "w", k8s, 0),
            "services are bounded"
        );
    }
}
