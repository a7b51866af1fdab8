//! Where requests end: the call each request made last.
//!
//! A callee whose answers make its callers give up (a wrong answer, an
//! exception the caller does not mark as an error, an early return) leaves no
//! error status anywhere, yet the requests of its callers now end right after
//! calling it: the calls they would have made next are skipped. For every
//! parent span of CLIENT spans, this store follows the child that started
//! last (ties to the later end, then the later arrival), whichever batch each
//! arrives in (an SDK's simple span processor exports every span alone);
//! once that child has paired into an edge, the call counts toward that
//! edge's `last_calls` ([`super::tables::LAST_CALLS`]) in the edge's window,
//! when the window closes: a later sibling arriving before then takes its
//! place. Detection follows each callee's share of its caller's last calls.
//!
//! Memory: at most `capacity` parents, each about 80 bytes with its child's
//! index entry; a parent leaves when its last call is counted at its window's
//! close, or when its latest child's window closed before it paired.
//! Parents beyond the capacity are counted (`overflow`), not followed.

use std::sync::Arc;

use super::FastMap;
use super::pairing::{CalleeKind, EdgeObservation};

/// The edge a request's last call was made on, and the window it counts in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct LastCall {
    pub(super) window_ms: i64,
    pub(super) caller: Arc<str>,
    pub(super) callee: Arc<str>,
    pub(super) kind: CalleeKind,
}

/// The latest child of one parent so far.
#[derive(Debug)]
struct Latest {
    start_ns: u64,
    end_ns: u64,
    /// The child's span key ([`super::pairing::span_key`]).
    child: u64,
    /// Its edge, once it paired.
    edge: Option<LastCall>,
}

/// The store (see the module docs).
#[derive(Debug, Default)]
pub(super) struct LastCalls {
    /// By parent span key.
    parents: FastMap<u64, Latest>,
    /// Latest children not yet paired: child span key -> parent span key.
    waiting: FastMap<u64, u64>,
    capacity: usize,
    overflow: u64,
}

impl LastCalls {
    /// An empty store following at most `capacity` parents.
    pub(super) fn new(capacity: usize) -> Self {
        LastCalls {
            capacity,
            ..Default::default()
        }
    }

    /// Parents not followed because the store was full.
    pub(super) fn overflow(&self) -> u64 {
        self.overflow
    }

    /// Parents followed now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.parents.len()
    }

    /// A CLIENT span `child` of `parent` (span keys) ran from `start_ns` to
    /// `end_ns`; offered before the pairing store sees it, so its edge finds it.
    pub(super) fn call(&mut self, parent: u64, child: u64, start_ns: u64, end_ns: u64) {
        let fresh = Latest {
            start_ns,
            end_ns,
            child,
            edge: None,
        };
        let full = self.parents.len() >= self.capacity;
        match self.parents.get_mut(&parent) {
            Some(latest) => {
                if (start_ns, end_ns) < (latest.start_ns, latest.end_ns) {
                    return;
                }
                self.waiting.remove(&latest.child);
                *latest = fresh;
            }
            None if full => {
                self.overflow += 1;
                return;
            }
            None => {
                self.parents.insert(parent, fresh);
            }
        }
        self.waiting.insert(child, parent);
    }

    /// An edge observed in window `window_ms`: if its caller is a parent's
    /// latest child, that call is now known to be on this edge.
    pub(super) fn paired(&mut self, edge: &EdgeObservation, window_ms: i64) {
        if self.waiting.is_empty() {
            return;
        }
        let Some(parent) = self.waiting.remove(&edge.caller_key) else {
            return;
        };
        if let Some(latest) = self.parents.get_mut(&parent) {
            latest.edge = Some(LastCall {
                window_ms,
                caller: edge.caller.clone(),
                callee: edge.callee.clone(),
                kind: edge.callee_kind,
            });
        }
    }

    /// Windows before `through_ms` close: the last calls counted in them, and
    /// the parents whose latest child ended before it and never paired are
    /// forgotten.
    pub(super) fn close_through(&mut self, through_ms: i64) -> Vec<LastCall> {
        let through_ns = through_ms.max(0).saturating_mul(1_000_000) as u64;
        let mut counted = Vec::new();
        let waiting = &mut self.waiting;
        self.parents.retain(|_, latest| match &latest.edge {
            Some(edge) if edge.window_ms < through_ms => {
                counted.push(edge.clone());
                false
            }
            Some(_) => true,
            None if latest.end_ns < through_ns => {
                waiting.remove(&latest.child);
                false
            }
            None => true,
        });
        counted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn edge(caller_key: u64, callee: &str) -> EdgeObservation {
        EdgeObservation {
            caller: "web".into(),
            callee: callee.into(),
            callee_kind: CalleeKind::Service,
            at_ns: 0,
            duration_ms: 1.0,
            error: false,
            trace: 1,
            caller_key,
            entry: None,
        }
    }

    fn callees(calls: &[LastCall]) -> Vec<&str> {
        let mut out: Vec<&str> = calls.iter().map(|c| &*c.callee).collect();
        out.sort();
        out
    }

    #[test]
    fn the_call_a_request_started_last_counts_whatever_the_arrival_order() {
        let mut last = LastCalls::new(100);
        // Parent 1's calls arrive one per batch, the latest second; parent 2
        // has one call, which pairs before its sibling-less parent closes.
        last.call(1, 11, 10 * MS, 20 * MS);
        last.paired(&edge(11, "cart"), 0);
        last.call(1, 13, 50 * MS, 60 * MS);
        last.call(1, 12, 30 * MS, 40 * MS);
        last.paired(&edge(12, "catalog"), 0);
        last.paired(&edge(13, "checkout"), 0);
        last.call(2, 21, 10 * MS, 20 * MS);
        last.paired(&edge(21, "catalog"), 0);
        // An unrelated edge (a server caller) changes nothing.
        last.paired(&edge(99, "email"), 0);
        assert_eq!(callees(&last.close_through(1000)), ["catalog", "checkout"]);
        assert_eq!(last.len(), 0);
    }

    #[test]
    fn a_call_counts_in_its_edges_window_and_an_unpaired_one_is_forgotten() {
        let mut last = LastCalls::new(100);
        last.call(1, 11, 10 * MS, 20 * MS);
        last.paired(&edge(11, "cart"), 1000);
        // Its child never pairs: forgotten once its window closed.
        last.call(2, 21, 10 * MS, 20 * MS);
        assert!(last.close_through(1000).is_empty());
        assert_eq!(last.len(), 1, "parent 1 waits for its edge's window");
        assert_eq!(callees(&last.close_through(2000)), ["cart"]);
        assert_eq!(last.len(), 0);
        // A late pairing of the forgotten child counts nothing.
        last.paired(&edge(21, "catalog"), 1000);
        assert!(last.close_through(3000).is_empty());
    }

    #[test]
    fn parents_beyond_the_capacity_are_counted_not_followed() {
        let mut last = LastCalls::new(1);
        last.call(1, 11, 0, MS);
        last.call(2, 21, 0, MS);
        // A known parent still takes its later children.
        last.call(1, 12, MS, 2 * MS);
        assert_eq!((last.len(), last.overflow()), (1, 1));
    }
}
