//! Node identities in the incident stage. A service is keyed by namespace,
//! name and environment, as the window stage keys `edge_stats`
//! ([`crate::window::pairing::node_id`]): `checkout` of staging and of
//! production are two nodes of the graph, with histories of their own, and a
//! failure of one never joins the other's incident. A database, external peer
//! or destination takes the namespace and environment of its caller, as in the
//! window stage. A node with neither namespace nor environment is named by its
//! plain name. What users read (root causes, services, the graph) is split
//! back into name, namespace and environment ([`parts`]).

use crate::detect::SeriesKey;
use crate::window::pairing::{node_id, node_parts};

/// The identity of the node `name` in `namespace` and `environment`.
pub fn id(namespace: &str, name: &str, environment: &str) -> String {
    if namespace.is_empty() && environment.is_empty() {
        name.to_string()
    } else {
        node_id([namespace, name, environment])
    }
}

/// (namespace, name, environment) of an identity.
pub fn parts(id: &str) -> [&str; 3] {
    node_parts(id)
}

/// The name of an identity, as users read it.
pub fn name(id: &str) -> &str {
    node_parts(id)[1]
}

/// The value of attribute `name` in a series' `k=v,...` attributes (the first
/// one: the identity's come first).
pub fn attribute<'a>(attributes: &'a str, name: &str) -> Option<&'a str> {
    attributes
        .split(',')
        .find_map(|pair| pair.split_once('=').filter(|(k, _)| *k == name))
        .map(|(_, v)| v)
}

/// The node of service `service` whose series carry `attributes`.
pub fn of(service: &str, attributes: &str) -> String {
    id(
        attribute(attributes, "namespace").unwrap_or(""),
        service,
        attribute(attributes, "environment").unwrap_or(""),
    )
}

/// The node of a series' own service.
pub fn own(key: &SeriesKey) -> String {
    of(&key.service, &key.attributes)
}

/// The node of `peer`, which the series `key` measures calls to: in the
/// callee's namespace and environment where the series names them (they
/// differ from the caller's), else in the caller's.
pub fn peer(key: &SeriesKey, peer: &str) -> String {
    let scope = |callee: &str, own: &str| {
        attribute(&key.attributes, callee)
            .or_else(|| attribute(&key.attributes, own))
            .unwrap_or("")
    };
    id(
        scope("callee_namespace", "namespace"),
        peer,
        scope("callee_environment", "environment"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(service: &str, attributes: &str) -> SeriesKey {
        SeriesKey {
            service: service.into(),
            signal: "edge".into(),
            name: "p99_ms".into(),
            attributes: attributes.into(),
        }
    }

    #[test]
    fn a_service_is_keyed_by_namespace_name_and_environment() {
        let prod = key("checkout", "namespace=shop,environment=prod,callee=cart");
        let staging = key("checkout", "namespace=shop,environment=staging,callee=cart");
        assert_ne!(own(&prod), own(&staging));
        assert_eq!(parts(&own(&staging)), ["shop", "checkout", "staging"]);
        assert_eq!(name(&own(&prod)), "checkout");
        // The callee is in the caller's scope unless the series names its own.
        assert_eq!(parts(&peer(&prod, "cart")), ["shop", "cart", "prod"]);
        let across = key(
            "checkout",
            "namespace=shop,environment=prod,callee=ledger,callee_namespace=finance",
        );
        assert_eq!(
            parts(&peer(&across, "ledger")),
            ["finance", "ledger", "prod"]
        );
        // Without a scope, the plain name.
        assert_eq!(own(&key("checkout", "callee=cart")), "checkout");
        assert_eq!(parts("checkout"), ["", "checkout", ""]);
        // The identity's attributes come first; a metric's own attribute of
        // the same name later does not override them.
        assert_eq!(
            parts(&of("api", "namespace=a,environment=e,{namespace=b}")),
            ["a", "api", "e"]
        );
    }
}
