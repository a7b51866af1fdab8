//! What the pairing store holds per waiting span ([`Record`]), the fixed table
//! of recent SERVER and CONSUMER callers ([`Recent`]), and when a waiting
//! caller expires.

use crate::columnar::spans::kind;

/// A waiting span, 24 bytes: names are symbol ids, the duration an `f32`, the expiry
/// derived from the end time and the kind.
#[derive(Debug, Clone, Copy)]
pub(super) struct Record {
    pub(super) end_ns: u64,
    pub(super) duration_ms: f32,
    pub(super) service: u32,
    /// Callers: the peer's symbol (0 = none). Callees: the entry key's id (0 = none).
    pub(super) extra: u32,
    pub(super) kind: u8,
    pub(super) error: bool,
}

const _: () = assert!(std::mem::size_of::<Record>() == 24);

impl Record {
    pub(super) const EMPTY: Record = Record {
        end_ns: 0,
        duration_ms: 0.0,
        service: 0,
        extra: 0,
        kind: 0,
        error: false,
    };
}

/// SERVER and CONSUMER spans as possible callers, in a fixed table indexed by key:
/// a newer span takes its slot, and an expired one reads as absent.
///
/// Their callees are rare (a SERVER span directly under another SERVER span means an
/// uninstrumented client or a proxy; a CONSUMER under a CONSUMER, a forwarder), yet
/// every request has one, so holding each until its window closes would take most
/// of the store at a high rate. The table keeps its memory fixed at any rate; a
/// callee arriving after its SERVER parent pairs unless a newer span took the slot
/// (counted as `displaced`). A callee arriving *before* its parent never needs this
/// table: it waits in the callee map.
#[derive(Debug, Default)]
pub(super) struct Recent {
    pub(super) slots: Vec<(u64, Record)>,
    size: usize,
}

impl Recent {
    /// At most 2^24 slots (512 MiB), whatever the configured capacity.
    const MAX_SLOTS: usize = 1 << 24;

    pub(super) fn new(size: usize) -> Self {
        Recent {
            slots: Vec::new(),
            size: size.clamp(1, Self::MAX_SLOTS).next_power_of_two(),
        }
    }

    fn index(&self, key: u64) -> usize {
        (key as usize) & (self.size - 1)
    }

    /// The record under `key`, if it is still there and expires after `closed_ns`.
    pub(super) fn get(
        &self,
        key: u64,
        closed_ns: u64,
        window_ns: u64,
        ttl_ns: u64,
    ) -> Option<Record> {
        let (k, r) = self.slots.get(self.index(key))?;
        (*k == key && caller_expiry(r, window_ns, ttl_ns) > closed_ns).then_some(*r)
    }

    /// Stores `record` under `key`; true when it displaced a live record.
    pub(super) fn put(
        &mut self,
        key: u64,
        record: Record,
        closed_ns: u64,
        window_ns: u64,
        ttl_ns: u64,
    ) -> bool {
        if self.slots.is_empty() {
            // Allocated on first use: most stores (replays, tests) never need it.
            self.slots = vec![(0, Record::EMPTY); self.size];
        }
        let index = self.index(key);
        let (old_key, old) = self.slots[index];
        self.slots[index] = (key, record);
        old_key != 0 && old_key != key && caller_expiry(&old, window_ns, ttl_ns) > closed_ns
    }
}

/// CLIENT, SERVER and CONSUMER callers leave when their window closes; the others
/// wait `ttl` past their end.
pub(super) fn caller_expiry(r: &Record, window_ns: u64, ttl_ns: u64) -> u64 {
    if matches!(
        i32::from(r.kind),
        kind::CLIENT | kind::SERVER | kind::CONSUMER
    ) {
        window_end(r.end_ns, window_ns)
    } else {
        r.end_ns.saturating_add(ttl_ns)
    }
}

/// End of the window holding `end_ns`, as the window stage computes it.
fn window_end(end_ns: u64, window_ns: u64) -> u64 {
    let ms = end_ns / 1_000_000;
    let window_ms = (window_ns / 1_000_000).max(1);
    (ms - ms % window_ms + window_ms).saturating_mul(1_000_000)
}
