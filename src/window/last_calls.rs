//! Where requests end: the call each request made last.
//!
//! A callee whose answers make its callers give up (a wrong answer, an
//! exception the caller does not mark as an error, an early return) leaves no
//! error status anywhere, yet the requests of its callers now end right after
//! calling it: the calls they would have made next are skipped. For every
//! parent span of CLIENT spans, this store follows the child that started
//! last (ties to the later end, then the later arrival), whichever batch each
//! arrives in (an SDK's simple span processor exports every span alone).
//! The call counts toward its edge's `last_calls` ([`super::tables::LAST_CALLS`])
//! in the edge's window once it has paired and its parent span has arrived
//! (every call of a request ends before the request does; counting earlier
//! would name the first call of a request held up on a slow one as its last).
//! A request whose parent arrives after that window closed counts nothing.
//! Detection follows each callee's share of its caller's last calls.
//!
//! Memory: at most `capacity` parents, each about 72 bytes with its child's
//! index entry; a parent leaves when its own span arrives (exporters send it
//! right after its children), else when the window its last call paired in
//! closes, or when its latest child's window closed before it paired.
//! Parents beyond the capacity are counted (`overflow`), not followed.

use super::FastMap;
use super::open_window::EdgeId;
use super::pairing::span_key;

/// Where a parent's latest child paired: its window and its edge there, where
/// it counts as the last call once the parent arrives.
pub(super) type PairedOn = (i64, EdgeId);

/// The latest child of one parent so far.
#[derive(Debug)]
struct Latest {
    start_ns: u64,
    end_ns: u64,
    /// The child's span key ([`super::pairing::span_key`]).
    child: u64,
    /// Where it paired, once it did.
    paired_on: Option<PairedOn>,
}

/// In `waiting`: the parent ended, so this child is its last call for good.
const FINAL: u64 = 0;

/// The store (see the module docs).
#[derive(Debug, Default)]
pub(super) struct LastCalls {
    /// By parent span key.
    parents: FastMap<u64, Latest>,
    /// Latest children not yet paired: child span key -> (parent span key, or
    /// [`FINAL`] once the parent ended, and the child's end).
    waiting: FastMap<u64, (u64, u64)>,
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
            paired_on: None,
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
        self.waiting.insert(child, (parent, end_ns));
    }

    /// Span `span` of `trace` arrived: if it is a followed parent, its calls all
    /// ended before it, so its latest one is its last: one already paired
    /// counts now, one still unpaired counts when it pairs. Exporters send a
    /// span after its children (they end first), so a parent is followed
    /// only for the moments between its children and itself; the window
    /// stage offers a batch's spans here after the whole batch, in which a
    /// parent may come first.
    /// Returns where its last call, already paired, counts now.
    pub(super) fn span_arrived(&mut self, trace: u128, span: u64) -> Option<PairedOn> {
        if self.parents.is_empty() {
            return None;
        }
        let latest = self.parents.remove(&span_key(trace, span))?;
        if latest.paired_on.is_none()
            && let Some(waiting) = self.waiting.get_mut(&latest.child)
        {
            waiting.0 = FINAL;
        }
        latest.paired_on
    }

    /// The call of span `caller_key` was counted on edge `edge` of window
    /// `window_ms`: whether it is its parent's last call, to count as such
    /// there now (its parent arrived). A parent's latest call whose parent has
    /// not arrived yet waits for it: a later sibling may still come (a request
    /// held up on a slow call), and counting early would name its first call
    /// as its last.
    pub(super) fn paired(&mut self, caller_key: u64, window_ms: i64, edge: EdgeId) -> bool {
        if self.waiting.is_empty() {
            return false;
        }
        let Some((parent, _)) = self.waiting.remove(&caller_key) else {
            return false;
        };
        if parent == FINAL {
            return true;
        }
        if let Some(latest) = self.parents.get_mut(&parent) {
            latest.paired_on = Some((window_ms, edge));
        }
        false
    }

    /// Windows before `through_ms` close: the parents whose latest call paired
    /// in them, and those whose latest child ended before it and never
    /// paired, are forgotten (a later sibling can no longer move the count).
    pub(super) fn close_through(&mut self, through_ms: i64) {
        let through_ns = through_ms.max(0).saturating_mul(1_000_000) as u64;
        self.parents.retain(|_, latest| match latest.paired_on {
            Some((window_ms, _)) => window_ms >= through_ms,
            None => latest.end_ns >= through_ns,
        });
        self.waiting.retain(|_, (_, end_ns)| *end_ns >= through_ns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::pairing::CalleeKind;

    const MS: u64 = 1_000_000;

    fn edge(callee: u32) -> EdgeId {
        (1, callee, CalleeKind::Service)
    }

    #[test]
    fn the_call_a_request_started_last_counts_once_its_parent_arrived() {
        let mut last = LastCalls::new(100);
        let key = |span| span_key(7, span);
        // Parent 1's calls arrive one per batch, a later-started one second
        // (a request held up on a slow call); nothing counts before the
        // parent arrives.
        last.call(key(1), 11, 10 * MS, 20 * MS);
        assert!(!last.paired(11, 0, edge(2)));
        last.call(key(1), 13, 50 * MS, 60 * MS);
        // One that started earlier arrives late: not the last.
        last.call(key(1), 12, 30 * MS, 40 * MS);
        assert!(!last.paired(12, 0, edge(3)));
        assert!(!last.paired(13, 0, edge(4)));
        // An edge whose caller is no parent's latest child (a server span).
        assert!(!last.paired(99, 0, edge(5)));
        assert_eq!(last.span_arrived(7, 1), Some((0, edge(4))));
        assert_eq!(last.len(), 0);
        // Its last call pairs after the parent arrived: counted then.
        last.call(key(2), 21, 10 * MS, 20 * MS);
        assert_eq!(last.span_arrived(7, 2), None);
        assert!(last.paired(21, 0, edge(2)));
    }

    #[test]
    fn a_request_whose_parent_missed_the_close_counts_nothing() {
        let mut last = LastCalls::new(100);
        let key = |span| span_key(7, span);
        // Its first call paired in window 0, which closes before the parent.
        last.call(key(1), 11, 10 * MS, 20 * MS);
        last.paired(11, 0, edge(2));
        // Another parent's call never pairs: forgotten at the close too.
        last.call(key(2), 21, 10 * MS, 20 * MS);
        last.close_through(1000);
        assert_eq!(last.len(), 0);
        assert_eq!(last.span_arrived(7, 1), None);
        assert!(!last.paired(21, 0, edge(3)));
        // A parent counted in a window still open waits for it.
        last.call(key(3), 31, 1100 * MS, 1200 * MS);
        last.paired(31, 1000, edge(2));
        last.close_through(2000 - 1000);
        assert_eq!(last.span_arrived(7, 3), Some((1000, edge(2))));
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
