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
//! - a PRODUCER span naming `messaging.destination.name` is an edge to that destination
//!   at once, and still pairs with its consumers (a producer -> consumer edge);
//! - CLIENT, SERVER and CONSUMER callers leave the store when their window closes;
//!   PRODUCER and UNSPECIFIED callers and all waiting callees stay `pair_ttl` past their end.
//!
//! Nodes are named by their identity, (service.namespace, name, deployment.environment)
//! joined by [`SEP`] (see [`node_id`]); a database, external peer or destination takes
//! the namespace and environment of the service that calls it, so `orders-db` of
//! staging and of production stay two nodes. Every edge carries the trace id of the
//! call it came from, as an exemplar.

mod records;
mod symbols;

use super::FastMap;
use std::sync::Arc;

use records::{Recent, Record, caller_expiry};
use symbols::Symbols;

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
    /// A messaging destination (topic, queue) named by `messaging.destination.name`.
    Messaging,
}

/// Separates the parts of a node identity.
pub const SEP: char = '\u{1f}';

/// The identity of a node: namespace, name and environment joined by [`SEP`].
pub fn node_id(parts: [&str; 3]) -> String {
    let mut id = String::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    push_node_id(&mut id, parts);
    id
}

fn push_node_id(out: &mut String, [namespace, name, environment]: [&str; 3]) {
    out.push_str(namespace);
    out.push(SEP);
    out.push_str(name);
    out.push(SEP);
    out.push_str(environment);
}

/// The (namespace, name, environment) of a node identity; a plain name has empty
/// namespace and environment.
pub fn node_parts(id: &str) -> [&str; 3] {
    let mut parts = id.splitn(3, SEP);
    match (parts.next(), parts.next(), parts.next()) {
        (Some(namespace), Some(name), Some(environment)) => [namespace, name, environment],
        _ => ["", id, ""],
    }
}

impl CalleeKind {
    /// Name used in the `callee_kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            CalleeKind::Service => "service",
            CalleeKind::Database => "database",
            CalleeKind::External => "external",
            CalleeKind::Messaging => "messaging",
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
    /// Calling service ([`node_id`]).
    pub caller: Arc<str>,
    /// Called service or leaf node ([`node_id`]).
    pub callee: Arc<str>,
    /// What the callee is.
    pub callee_kind: CalleeKind,
    /// Event time deciding the window: the later end of the two spans.
    pub at_ns: u64,
    /// Caller-observed latency for CLIENT callers, else the callee's duration.
    pub duration_ms: f64,
    /// Either side failed.
    pub error: bool,
    /// Trace id of the call (0 when unknown).
    pub trace: u128,
    /// The caller span's key ([`span_key`]), by which the calls a request made
    /// last are found (`window::last_calls`).
    pub caller_key: u64,
    /// The callee had no kind and is now known to be an entry span.
    pub entry: Option<EntryObservation>,
}

/// A span as the pairing store needs it (borrowed from the decoded batch).
#[derive(Debug, Clone)]
pub struct PairSpan<'a> {
    /// Trace id.
    pub trace: u128,
    /// Span id.
    pub span: u64,
    /// Parent span id, if any.
    pub parent: Option<u64>,
    /// (service.namespace, service.name, deployment.environment) of the span.
    pub service: [&'a str; 3],
    /// OTLP span kind.
    pub kind: i32,
    /// End time.
    pub end_ns: u64,
    /// Duration.
    pub duration_ms: f64,
    /// Failed.
    pub error: bool,
    /// Database this CLIENT span calls, if any.
    pub database: Option<&'a str>,
    /// External peer this CLIENT span calls, if any.
    pub peer: Option<&'a str>,
    /// Messaging destination this PRODUCER span sends to, if any.
    pub destination: Option<&'a str>,
    /// Set for kind-less spans with a parent: counted as a request when paired.
    pub entry: Option<Arc<EntryKey>>,
}

/// Stored kind of a span: OTLP kinds are 0..=5; anything else is kept as "other".
fn kind_u8(kind: i32) -> u8 {
    u8::try_from(kind).unwrap_or(u8::MAX)
}

/// Counters the store keeps about itself.
#[derive(Debug, Default, Clone, Copy)]
pub struct PairingCounts {
    /// Spans not stored because the store was full.
    pub overflow: u64,
    /// Callees whose caller never arrived within the TTL.
    pub unpaired: u64,
    /// SERVER and CONSUMER spans pushed out of the recent table by a newer span
    /// before their window closed (a late direct callee of theirs cannot pair).
    pub displaced: u64,
}

/// The pairing store.
///
/// Waiting spans are 24-byte records keyed by a 64-bit hash of (trace id, span id)
/// (of the parent, for callees), 32 bytes in the map. Two different ids share a
/// hash with a probability of about 1e-8 at a million waiting spans; the cost of
/// such a collision is one wrong edge observation. Expiry is a sweep of the maps when
/// the earliest expiry is due (at window close), not an index per span.
///
/// CLIENT, PRODUCER and kind-less spans wait as callers in a map bounded by the
/// capacity; SERVER and CONSUMER spans, which are rarely anyone's direct parent,
/// wait in a fixed `Recent` table of half the capacity's slots. Memory is so
/// bounded by the capacity whatever the rate.
#[derive(Debug)]
pub struct PairingStore {
    ttl_ns: u64,
    window_ns: u64,
    capacity: usize,
    callers: FastMap<u64, Record>,
    /// Trace ids of the CLIENT callers naming a peer (external edge exemplars).
    peer_traces: FastMap<u64, u128>,
    recent: Recent,
    /// Every window ending at or before this has been expired.
    closed_ns: u64,
    /// The first callee waiting for each parent; further ones in `more_callees`.
    callees: FastMap<u64, Record>,
    more_callees: FastMap<u64, Vec<Record>>,
    entries: FastMap<u32, Arc<EntryKey>>,
    next_entry: u32,
    symbols: Symbols,
    compact_at: usize,
    next_expiry: u64,
    len: usize,
    counts: PairingCounts,
}

const COMPACT_MIN: usize = 4096;

/// A span's key: never 0 (an empty slot of the recent table).
pub fn span_key(trace: u128, span: u64) -> u64 {
    key(trace, span)
}

fn key(trace: u128, span: u64) -> u64 {
    use std::hash::BuildHasher;
    foldhash::quality::FixedState::with_seed(0x7061_6972_696e_6721)
        .hash_one((trace, span))
        .max(1)
}

/// Kinds held in the recent table rather than the caller map.
fn recent_kind(kind: i32) -> bool {
    matches!(kind, kind::SERVER | kind::CONSUMER)
}

impl PairingStore {
    /// An empty store for windows of `window_ns`.
    pub fn new(ttl_ns: u64, window_ns: u64, capacity: usize) -> Self {
        PairingStore {
            ttl_ns,
            window_ns: window_ns.max(1),
            capacity,
            callers: FastMap::default(),
            peer_traces: FastMap::default(),
            recent: Recent::new(capacity / 2),
            closed_ns: 0,
            callees: FastMap::default(),
            more_callees: FastMap::default(),
            entries: FastMap::default(),
            next_entry: 0,
            symbols: Symbols::default(),
            compact_at: COMPACT_MIN,
            next_expiry: u64::MAX,
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

    /// Slots allocated in the record maps (callers, callees), for memory reports.
    pub fn slots(&self) -> (usize, usize) {
        (self.callers.capacity(), self.callees.capacity())
    }

    /// Counters so far.
    pub fn counts(&self) -> PairingCounts {
        self.counts
    }

    /// Offers one span; completed edges are pushed to `out`.
    pub fn offer(&mut self, span: PairSpan<'_>, out: &mut Vec<EdgeObservation>) {
        if let Some(database) = span.database
            && matches!(span.kind, kind::CLIENT | kind::UNSPECIFIED)
        {
            out.push(self.leaf_edge(&span, database, CalleeKind::Database));
            return;
        }
        if let Some(destination) = span.destination
            && span.kind == kind::PRODUCER
        {
            out.push(self.leaf_edge(&span, destination, CalleeKind::Messaging));
        }
        let may_be_callee = matches!(span.kind, kind::SERVER | kind::CONSUMER | kind::UNSPECIFIED)
            && span.parent.is_some();
        let may_be_caller = span.kind != kind::INTERNAL;
        let service = self.symbols.node(span.service);
        let this = Record {
            end_ns: span.end_ns,
            duration_ms: span.duration_ms as f32,
            service,
            extra: 0,
            kind: kind_u8(span.kind),
            error: span.error,
        };

        let mut store_as_callee = false;
        if may_be_callee && let Some(parent) = span.parent {
            let parent_key = key(span.trace, parent);
            let caller = self.callers.get(&parent_key).copied().or_else(|| {
                self.recent
                    .get(parent_key, self.closed_ns, self.window_ns, self.ttl_ns)
            });
            match caller {
                Some(caller) => {
                    if caller.service != service {
                        out.push(self.edge(
                            &caller,
                            &this,
                            span.trace,
                            span.entry.as_ref(),
                            parent_key,
                        ));
                    }
                    if caller.kind == kind::CLIENT as u8 {
                        self.callers.remove(&parent_key);
                        self.peer_traces.remove(&parent_key);
                        self.len -= 1;
                    }
                }
                None => store_as_callee = true,
            }
        }
        if may_be_caller {
            let own_key = key(span.trace, span.span);
            let mut paired_client = false;
            if let Some(first) = self.callees.remove(&own_key) {
                let more = self.more_callees.remove(&own_key).unwrap_or_default();
                self.len -= 1 + more.len();
                for callee in std::iter::once(first).chain(more) {
                    let entry = self.take_entry(callee.extra);
                    if callee.service != service {
                        out.push(self.edge(&this, &callee, span.trace, entry.as_ref(), own_key));
                    }
                }
                paired_client = span.kind == kind::CLIENT;
            }
            if recent_kind(span.kind) {
                let expire_ns = caller_expiry(&this, self.window_ns, self.ttl_ns);
                if expire_ns > self.closed_ns
                    && self
                        .recent
                        .put(own_key, this, self.closed_ns, self.window_ns, self.ttl_ns)
                {
                    self.counts.displaced += 1;
                }
            } else if !paired_client {
                let peer = match span.peer {
                    Some(peer) if span.kind == kind::CLIENT => {
                        let [namespace, _, environment] = span.service;
                        self.symbols.node([namespace, peer, environment])
                    }
                    _ => 0,
                };
                let record = Record {
                    extra: peer,
                    ..this
                };
                let expire_ns = caller_expiry(&record, self.window_ns, self.ttl_ns);
                let stored = if let Some(old) = self.callers.get_mut(&own_key) {
                    *old = record;
                    true
                } else if self.has_room() {
                    self.callers.insert(own_key, record);
                    self.len += 1;
                    true
                } else {
                    self.counts.overflow += 1;
                    false
                };
                if stored {
                    self.next_expiry = self.next_expiry.min(expire_ns);
                    if peer != 0 {
                        self.peer_traces.insert(own_key, span.trace);
                    }
                }
            }
        }
        if store_as_callee && let Some(parent) = span.parent {
            if self.has_room() {
                let expire_ns = span.end_ns.saturating_add(self.ttl_ns);
                let entry = match span.entry {
                    Some(entry) => {
                        self.next_entry = self.next_entry.checked_add(1).unwrap_or(1);
                        self.entries.insert(self.next_entry, entry);
                        self.next_entry
                    }
                    None => 0,
                };
                let record = Record {
                    extra: entry,
                    ..this
                };
                match self.callees.entry(key(span.trace, parent)) {
                    std::collections::hash_map::Entry::Vacant(slot) => {
                        slot.insert(record);
                    }
                    std::collections::hash_map::Entry::Occupied(slot) => {
                        self.more_callees
                            .entry(*slot.key())
                            .or_default()
                            .push(record);
                    }
                }
                self.len += 1;
                self.next_expiry = self.next_expiry.min(expire_ns);
            } else {
                self.counts.overflow += 1;
            }
        }
    }

    fn has_room(&self) -> bool {
        self.len < self.capacity
    }

    fn take_entry(&mut self, id: u32) -> Option<Arc<EntryKey>> {
        if id == 0 {
            return None;
        }
        self.entries.remove(&id)
    }

    /// An edge to a node that sends no spans of its own (database, destination).
    fn leaf_edge(&mut self, span: &PairSpan<'_>, name: &str, kind: CalleeKind) -> EdgeObservation {
        let [namespace, _, environment] = span.service;
        let caller = self.symbols.node(span.service);
        let callee = self.symbols.node([namespace, name, environment]);
        EdgeObservation {
            caller: self.symbols.name(caller).clone(),
            callee: self.symbols.name(callee).clone(),
            callee_kind: kind,
            at_ns: span.end_ns,
            duration_ms: span.duration_ms,
            error: span.error,
            trace: span.trace,
            caller_key: key(span.trace, span.span),
            entry: None,
        }
    }

    fn edge(
        &self,
        caller: &Record,
        callee: &Record,
        trace: u128,
        entry: Option<&Arc<EntryKey>>,
        caller_key: u64,
    ) -> EdgeObservation {
        let duration_ms = if caller.kind == kind::CLIENT as u8 {
            caller.duration_ms
        } else {
            callee.duration_ms
        };
        EdgeObservation {
            caller: self.symbols.name(caller.service).clone(),
            callee: self.symbols.name(callee.service).clone(),
            callee_kind: CalleeKind::Service,
            at_ns: caller.end_ns.max(callee.end_ns),
            duration_ms: duration_ms as f64,
            error: caller.error || callee.error,
            trace,
            caller_key,
            entry: entry.map(|key| EntryObservation {
                key: key.clone(),
                end_ns: callee.end_ns,
                duration_ms: callee.duration_ms as f64,
                error: callee.error,
            }),
        }
    }

    /// Removes everything expiring at or before `up_to_ns`; unpaired CLIENT spans naming
    /// a peer become external edges in `out`.
    pub fn expire(&mut self, up_to_ns: u64, out: &mut Vec<EdgeObservation>) {
        self.closed_ns = self.closed_ns.max(up_to_ns);
        if self.next_expiry > up_to_ns {
            return;
        }
        let mut next = u64::MAX;
        let mut removed = 0usize;
        let (symbols, ttl_ns, window_ns) = (&self.symbols, self.ttl_ns, self.window_ns);
        let peer_traces = &mut self.peer_traces;
        self.callers.retain(|key, r| {
            let expire_ns = caller_expiry(r, window_ns, ttl_ns);
            if expire_ns > up_to_ns {
                next = next.min(expire_ns);
                return true;
            }
            removed += 1;
            let trace = if peer_traces.is_empty() {
                0
            } else {
                peer_traces.remove(key).unwrap_or(0)
            };
            if r.kind == kind::CLIENT as u8 && r.extra != 0 {
                out.push(EdgeObservation {
                    caller: symbols.name(r.service).clone(),
                    callee: symbols.name(r.extra).clone(),
                    callee_kind: CalleeKind::External,
                    at_ns: r.end_ns,
                    duration_ms: r.duration_ms as f64,
                    error: r.error,
                    trace,
                    caller_key: *key,
                    entry: None,
                });
            }
            false
        });
        let mut unpaired = 0usize;
        let mut dropped_entries = Vec::new();
        let mut sweep = |r: &Record| {
            let expire_ns = r.end_ns.saturating_add(ttl_ns);
            if expire_ns > up_to_ns {
                next = next.min(expire_ns);
                true
            } else {
                unpaired += 1;
                if r.extra != 0 {
                    dropped_entries.push(r.extra);
                }
                false
            }
        };
        self.callees.retain(|_, r| sweep(r));
        self.more_callees.retain(|_, rs| {
            rs.retain(&mut sweep);
            !rs.is_empty()
        });
        // A parent whose first callee expired but later ones wait: promote one.
        if !self.more_callees.is_empty() {
            let orphans: Vec<u64> = self
                .more_callees
                .keys()
                .filter(|k| !self.callees.contains_key(k))
                .copied()
                .collect();
            for k in orphans {
                if let Some(rs) = self.more_callees.get_mut(&k)
                    && let Some(first) = rs.pop()
                {
                    self.callees.insert(k, first);
                    if rs.is_empty() {
                        self.more_callees.remove(&k);
                    }
                }
            }
        }
        for id in dropped_entries {
            self.entries.remove(&id);
        }
        self.len -= removed + unpaired;
        self.counts.unpaired += unpaired as u64;
        self.next_expiry = next;
        if self.symbols.len() > self.compact_at {
            self.compact_symbols();
        }
    }

    /// Rebuilds the symbol table from the names waiting spans still use.
    fn compact_symbols(&mut self) {
        let old = std::mem::take(&mut self.symbols);
        let symbols = &mut self.symbols;
        let mut remap = |id: u32| {
            if id == 0 {
                0
            } else {
                symbols.node(old.parts(id))
            }
        };
        for r in self.callers.values_mut() {
            r.service = remap(r.service);
            r.extra = remap(r.extra);
        }
        let (closed_ns, window_ns, ttl_ns) = (self.closed_ns, self.window_ns, self.ttl_ns);
        for (k, r) in &mut self.recent.slots {
            if *k != 0 && caller_expiry(r, window_ns, ttl_ns) > closed_ns {
                r.service = remap(r.service);
            } else {
                *k = 0;
            }
        }
        for r in self
            .callees
            .values_mut()
            .chain(self.more_callees.values_mut().flatten())
        {
            r.service = remap(r.service);
        }
        self.compact_at = COMPACT_MIN.max(self.symbols.len() * 2);
    }
}

#[cfg(test)]
#[path = "pairing_tests.rs"]
mod tests;
