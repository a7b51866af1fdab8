//! The bounded pairing store that turns parent/child spans of different services
//! into call edges, and client spans to databases and external systems into leaf edges.
//!
//! Rules (event time throughout, so replays pair exactly as live traffic did):
//! - a span that may be a caller (every kind but INTERNAL) and a span that may be a
//!   callee (SERVER, CONSUMER, UNSPECIFIED with a parent) pair on
//!   (trace_id, span_id) = (trace_id, parent_span_id); different services make an edge;
//! - a CLIENT span with `db.system` is an edge to that database at once;
//! - a CLIENT span still unpaired when its window closes, and naming a peer
//!   (`service.peer.name`/`peer.service`, `server.address`), is an edge to that external node;
//! - CLIENT, SERVER and CONSUMER callers leave the store when their window closes;
//!   PRODUCER and UNSPECIFIED callers and all waiting callees stay `pair_ttl` past their end.

use std::collections::BTreeMap;

use super::FastMap;
use std::sync::Arc;

use crate::columnar::spans::kind;

/// What the callee of an edge is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CalleeKind {
    /// An instrumented service (both sides seen).
    Service,
    /// A database named by `db.*` attributes.
    Database,
    /// An uninstrumented peer named by `peer.service` / `server.address`.
    External,
}

impl CalleeKind {
    /// Name used in the `callee_kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            CalleeKind::Service => "service",
            CalleeKind::Database => "database",
            CalleeKind::External => "external",
        }
    }
}

/// Identity of a span that has no kind: counted as a request of its service once a
/// caller in another service shows it is an entry point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryKey {
    /// (service.namespace, service.name, deployment.environment).
    pub service: [Arc<str>; 3],
    /// `http.route`, else the span name.
    pub operation: Arc<str>,
}

/// A kind-less callee confirmed as an entry span, to count as a request.
#[derive(Debug, Clone)]
pub struct EntryObservation {
    /// Service and operation.
    pub key: Arc<EntryKey>,
    /// End of the span (decides the window).
    pub end_ns: u64,
    /// Duration.
    pub duration_ms: f64,
    /// Failed.
    pub error: bool,
}

/// One observed call, to be counted in the window of `at_ns`.
#[derive(Debug, Clone)]
pub struct EdgeObservation {
    /// Calling service.
    pub caller: Arc<str>,
    /// Called service or leaf node.
    pub callee: Arc<str>,
    /// What the callee is.
    pub callee_kind: CalleeKind,
    /// Event time deciding the window: the later end of the two spans.
    pub at_ns: u64,
    /// Caller-observed latency for CLIENT callers, else the callee's duration.
    pub duration_ms: f64,
    /// Either side failed.
    pub error: bool,
    /// The callee had no kind and is now known to be an entry span.
    pub entry: Option<EntryObservation>,
}

/// A span as the pairing store needs it.
#[derive(Debug, Clone)]
pub struct PairSpan {
    /// Trace id.
    pub trace: u128,
    /// Span id.
    pub span: u64,
    /// Parent span id, if any.
    pub parent: Option<u64>,
    /// Service of the span.
    pub service: Arc<str>,
    /// OTLP span kind.
    pub kind: i32,
    /// End time.
    pub end_ns: u64,
    /// Duration.
    pub duration_ms: f64,
    /// Failed.
    pub error: bool,
    /// Database this CLIENT span calls, if any.
    pub database: Option<Arc<str>>,
    /// External peer this CLIENT span calls, if any.
    pub peer: Option<Arc<str>>,
    /// End of the window the span falls in.
    pub window_end_ns: u64,
    /// Set for kind-less spans with a parent: counted as a request when paired.
    pub entry: Option<Arc<EntryKey>>,
}

#[derive(Debug)]
struct Stored {
    span: PairSpan,
    expire_ns: u64,
}

/// Counters the store keeps about itself.
#[derive(Debug, Default, Clone, Copy)]
pub struct PairingCounts {
    /// Spans not stored because the store was full.
    pub overflow: u64,
    /// Callees whose caller never arrived within the TTL.
    pub unpaired: u64,
}

/// The pairing store.
#[derive(Debug)]
pub struct PairingStore {
    ttl_ns: u64,
    capacity: usize,
    callers: FastMap<(u128, u64), Stored>,
    callees: FastMap<(u128, u64), Vec<Stored>>,
    expiry: BTreeMap<u64, Vec<(bool, u128, u64)>>,
    len: usize,
    counts: PairingCounts,
}

impl PairingStore {
    /// An empty store.
    pub fn new(ttl_ns: u64, capacity: usize) -> Self {
        PairingStore {
            ttl_ns,
            capacity,
            callers: FastMap::default(),
            callees: FastMap::default(),
            expiry: BTreeMap::new(),
            len: 0,
            counts: PairingCounts::default(),
        }
    }

    /// Spans held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Counters so far.
    pub fn counts(&self) -> PairingCounts {
        self.counts
    }

    /// Offers one span; completed edges are pushed to `out`.
    pub fn offer(&mut self, span: PairSpan, out: &mut Vec<EdgeObservation>) {
        if let Some(database) = span.database.clone()
            && matches!(span.kind, kind::CLIENT | kind::UNSPECIFIED)
        {
            out.push(EdgeObservation {
                caller: span.service.clone(),
                callee: database,
                callee_kind: CalleeKind::Database,
                at_ns: span.end_ns,
                duration_ms: span.duration_ms,
                error: span.error,
                entry: None,
            });
            return;
        }
        let may_be_callee = matches!(span.kind, kind::SERVER | kind::CONSUMER | kind::UNSPECIFIED)
            && span.parent.is_some();
        let may_be_caller = span.kind != kind::INTERNAL;

        let mut store_as_callee = false;
        if may_be_callee && let Some(parent) = span.parent {
            let key = (span.trace, parent);
            match self.callers.get(&key) {
                Some(caller) => {
                    if caller.span.service != span.service {
                        out.push(edge(&caller.span, &span));
                    }
                    if caller.span.kind == kind::CLIENT {
                        self.callers.remove(&key);
                        self.len -= 1;
                    }
                }
                None => store_as_callee = true,
            }
        }
        if may_be_caller {
            let key = (span.trace, span.span);
            let mut paired_client = false;
            if let Some(waiting) = self.callees.remove(&key) {
                self.len -= waiting.len();
                for callee in waiting {
                    if callee.span.service != span.service {
                        out.push(edge(&span, &callee.span));
                    }
                }
                paired_client = span.kind == kind::CLIENT;
            }
            if !paired_client {
                let expire_ns = match span.kind {
                    kind::CLIENT | kind::SERVER | kind::CONSUMER => span.window_end_ns,
                    _ => span.end_ns.saturating_add(self.ttl_ns),
                };
                if self.has_room() {
                    self.expiry
                        .entry(expire_ns)
                        .or_default()
                        .push((true, key.0, key.1));
                    if self
                        .callers
                        .insert(
                            key,
                            Stored {
                                span: span.clone(),
                                expire_ns,
                            },
                        )
                        .is_none()
                    {
                        self.len += 1;
                    }
                } else {
                    self.counts.overflow += 1;
                }
            }
        }
        if store_as_callee && let Some(parent) = span.parent {
            if self.has_room() {
                let expire_ns = span.end_ns.saturating_add(self.ttl_ns);
                self.expiry
                    .entry(expire_ns)
                    .or_default()
                    .push((false, span.trace, parent));
                self.callees
                    .entry((span.trace, parent))
                    .or_default()
                    .push(Stored { span, expire_ns });
                self.len += 1;
            } else {
                self.counts.overflow += 1;
            }
        }
    }

    fn has_room(&self) -> bool {
        self.len < self.capacity
    }

    /// Removes everything expiring at or before `up_to_ns`; unpaired CLIENT spans naming
    /// a peer become external edges in `out`.
    pub fn expire(&mut self, up_to_ns: u64, out: &mut Vec<EdgeObservation>) {
        while let Some(entry) = self.expiry.first_entry() {
            if *entry.key() > up_to_ns {
                break;
            }
            let (expire_ns, keys) = entry.remove_entry();
            for (is_caller, trace, id) in keys {
                if is_caller {
                    let key = (trace, id);
                    if self
                        .callers
                        .get(&key)
                        .is_some_and(|s| s.expire_ns == expire_ns)
                        && let Some(stored) = self.callers.remove(&key)
                    {
                        self.len -= 1;
                        if stored.span.kind == kind::CLIENT
                            && let Some(peer) = stored.span.peer.clone()
                        {
                            out.push(EdgeObservation {
                                caller: stored.span.service.clone(),
                                callee: peer,
                                callee_kind: CalleeKind::External,
                                at_ns: stored.span.end_ns,
                                duration_ms: stored.span.duration_ms,
                                error: stored.span.error,
                                entry: None,
                            });
                        }
                    }
                } else if let Some(waiting) = self.callees.get_mut(&(trace, id)) {
                    let before = waiting.len();
                    waiting.retain(|s| s.expire_ns > expire_ns);
                    let removed = before - waiting.len();
                    self.len -= removed;
                    self.counts.unpaired += removed as u64;
                    if waiting.is_empty() {
                        self.callees.remove(&(trace, id));
                    }
                }
            }
        }
    }
}

fn edge(caller: &PairSpan, callee: &PairSpan) -> EdgeObservation {
    EdgeObservation {
        caller: caller.service.clone(),
        callee: callee.service.clone(),
        callee_kind: CalleeKind::Service,
        at_ns: caller.end_ns.max(callee.end_ns),
        duration_ms: if caller.kind == kind::CLIENT {
            caller.duration_ms
        } else {
            callee.duration_ms
        },
        error: caller.error || callee.error,
        entry: callee.entry.as_ref().map(|key| EntryObservation {
            key: key.clone(),
            end_ns: callee.end_ns,
            duration_ms: callee.duration_ms,
            error: callee.error,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(span: u64, parent: Option<u64>, service: &str, kind: i32, end_ns: u64) -> PairSpan {
        PairSpan {
            trace: 7,
            span,
            parent,
            service: Arc::from(service),
            kind,
            end_ns,
            duration_ms: 5.0,
            error: false,
            database: None,
            peer: None,
            window_end_ns: 10_000,
            entry: None,
        }
    }

    #[test]
    fn pairs_in_either_order_and_once() {
        for client_first in [true, false] {
            let mut store = PairingStore::new(1_000, 100);
            let mut out = Vec::new();
            let client = span(1, None, "a", kind::CLIENT, 100);
            let server = span(2, Some(1), "b", kind::SERVER, 90);
            if client_first {
                store.offer(client, &mut out);
                store.offer(server, &mut out);
            } else {
                store.offer(server, &mut out);
                store.offer(client, &mut out);
            }
            assert_eq!(out.len(), 1);
            assert_eq!((&*out[0].caller, &*out[0].callee), ("a", "b"));
            store.expire(u64::MAX, &mut out);
            assert_eq!(out.len(), 1, "no leaf edge after pairing");
            assert!(store.is_empty());
        }
    }

    #[test]
    fn spans_without_kind_still_pair_across_services() {
        let mut store = PairingStore::new(1_000, 100);
        let mut out = Vec::new();
        store.offer(span(2, Some(1), "b", kind::UNSPECIFIED, 90), &mut out);
        store.offer(span(1, None, "a", kind::UNSPECIFIED, 100), &mut out);
        assert_eq!(out.len(), 1);
        store.offer(span(3, Some(1), "a", kind::UNSPECIFIED, 95), &mut out);
        assert_eq!(out.len(), 1, "same service is not an edge");
    }

    #[test]
    fn unpaired_client_with_peer_becomes_external_and_capacity_is_enforced() {
        let mut store = PairingStore::new(1_000, 1);
        let mut out = Vec::new();
        let mut client = span(1, None, "a", kind::CLIENT, 100);
        client.peer = Some(Arc::from("payments.example.com"));
        store.offer(client, &mut out);
        store.offer(span(9, None, "a", kind::CLIENT, 100), &mut out);
        assert_eq!(store.counts().overflow, 1);
        store.expire(10_000, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].callee_kind, CalleeKind::External);
    }
}
