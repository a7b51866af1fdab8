//! The de-duplication set of one open window: which span and log identities it
//! has counted.
//!
//! Hand-written on purpose, not a `HashSet<u64>`: under load a window holds
//! millions of identities, tens of MiB, so nearly every insert misses the caches,
//! and a miss costs more than all the rest of an insert. The identities are
//! already 64-bit hashes, so the set keeps them as they are in one flat array with
//! linear probing: an insert reads one slot and its neighbours, one cache line,
//! where a `hashbrown` table reads its control bytes and then its slot, two lines
//! apart. And [`IdentitySet::touch`] reads the slots of a whole batch before
//! any is inserted, so their misses are in flight together instead of one after
//! another; hashbrown's API has no way to ask for a slot without probing it.
//! Measured in the engine under the load generator: see the README's
//! "Performance" section.
//!
//! Memory: 8 bytes per slot, at most half the slots used (so between 16 and 32
//! bytes per identity held); the table doubles when it is half full.

/// A set of `u64` identities; `0` is a valid identity (held apart: 0 marks an
/// empty slot).
#[derive(Debug, Default)]
pub(crate) struct IdentitySet {
    slots: Vec<u64>,
    len: usize,
    has_zero: bool,
}

impl IdentitySet {
    /// Identities held.
    pub(crate) fn len(&self) -> usize {
        self.len + usize::from(self.has_zero)
    }

    /// Identities it can hold before it must grow.
    pub(crate) fn capacity(&self) -> usize {
        self.slots.len() / 2
    }

    /// True when `identity` is held.
    pub(crate) fn contains(&self, identity: u64) -> bool {
        if identity == 0 {
            return self.has_zero;
        }
        !self.slots.is_empty() && self.slots[probe(&self.slots, identity)] == identity
    }

    /// Adds `identity`; true when it was not held before.
    pub(crate) fn insert(&mut self, identity: u64) -> bool {
        if identity == 0 {
            return !std::mem::replace(&mut self.has_zero, true);
        }
        if self.len >= self.capacity() {
            self.grow_to(self.len + 1);
        }
        let slot = probe(&self.slots, identity);
        if self.slots[slot] == identity {
            return false;
        }
        self.slots[slot] = identity;
        self.len += 1;
        true
    }

    /// Reads the home slot of each identity, so that the cache misses of a batch
    /// overlap before the inserts that need them. Changes nothing.
    pub(crate) fn touch(&self, identities: impl Iterator<Item = u64>) {
        if self.slots.is_empty() {
            return;
        }
        let folded = identities.fold(0u64, |acc, id| acc ^ self.slots[home(&self.slots, id)]);
        std::hint::black_box(folded);
    }

    /// Makes room for `additional` more identities without growing again; false
    /// when the memory cannot be had (the set is left as it was).
    pub(crate) fn try_reserve(&mut self, additional: usize) -> bool {
        let wanted = self.len.saturating_add(additional);
        if wanted <= self.capacity() {
            return true;
        }
        let Some(slots) = slots_for(wanted) else {
            return false;
        };
        let mut fresh = Vec::new();
        if fresh.try_reserve_exact(slots).is_err() {
            return false;
        }
        fresh.resize(slots, 0);
        self.rehash_into(fresh);
        true
    }

    /// Grows for `wanted` identities; a size past memory aborts, as `Vec` does.
    fn grow_to(&mut self, wanted: usize) {
        let slots = slots_for(wanted).unwrap_or(usize::MAX).max(16);
        self.rehash_into(vec![0; slots]);
    }

    fn rehash_into(&mut self, mut fresh: Vec<u64>) {
        for &identity in self.slots.iter().filter(|&&id| id != 0) {
            let slot = probe(&fresh, identity);
            fresh[slot] = identity;
        }
        self.slots = fresh;
    }

    /// Moves every identity of `other` into this set (which has the room, or grows).
    pub(crate) fn absorb(&mut self, other: IdentitySet) {
        if other.has_zero {
            self.insert(0);
        }
        for identity in other.slots.into_iter().filter(|&id| id != 0) {
            self.insert(identity);
        }
    }

    /// Forgets every identity, keeping the memory.
    pub(crate) fn clear(&mut self) {
        self.slots.fill(0);
        self.len = 0;
        self.has_zero = false;
    }
}

/// The slot of `slots` (a power of two long, never full) that holds `identity`
/// (not 0), or else the empty slot where it belongs: linear probing from its
/// home slot, the identity's low bits.
fn probe(slots: &[u64], identity: u64) -> usize {
    let mask = slots.len() - 1;
    let mut i = home(slots, identity);
    while slots[i] != 0 && slots[i] != identity {
        i = (i + 1) & mask;
    }
    i
}

/// Where `identity`'s probe starts in `slots` (a power of two long): its low bits.
fn home(slots: &[u64], identity: u64) -> usize {
    identity as usize & (slots.len() - 1)
}

/// Slots for `wanted` identities at most half full, a power of two; None when
/// that does not fit a `usize`.
fn slots_for(wanted: usize) -> Option<usize> {
    wanted
        .checked_mul(2)
        .and_then(usize::checked_next_power_of_two)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spread(i: u64) -> u64 {
        i.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }

    #[test]
    fn it_answers_as_a_hash_set_does() {
        let mut ours = IdentitySet::default();
        let mut reference = std::collections::HashSet::new();
        // Colliding home slots (multiples of a large power of two) and 0 included.
        let ids = (0..5_000u64)
            .map(spread)
            .chain((0..300).map(|i| i << 40))
            .chain((0..5_000u64).map(spread));
        for id in ids {
            assert_eq!(ours.insert(id), reference.insert(id), "{id}");
            assert!(ours.contains(id));
        }
        assert_eq!(ours.len(), reference.len());
        assert!(!ours.contains(spread(7_000)));
        assert!(ours.capacity() >= ours.len());
    }

    #[test]
    fn reserved_room_is_not_regrown_and_clear_keeps_it() {
        let mut set = IdentitySet::default();
        assert!(set.try_reserve(100_000));
        let capacity = set.capacity();
        for i in 0..100_000 {
            set.insert(spread(i));
        }
        assert_eq!(set.capacity(), capacity);
        set.clear();
        assert_eq!((set.len(), set.capacity()), (0, capacity));
        assert!(!set.contains(spread(5)));
        assert!(set.insert(spread(5)));
    }

    #[test]
    fn absorbing_keeps_every_identity() {
        let mut small = IdentitySet::default();
        for i in 1..=1_000 {
            small.insert(spread(i));
        }
        small.insert(0);
        let mut big = IdentitySet::default();
        assert!(big.try_reserve(10_000));
        big.absorb(small);
        assert_eq!(big.len(), 1_001);
        assert!((1..=1_000).all(|i| big.contains(spread(i))) && big.contains(0));
    }

    #[test]
    fn an_impossible_reservation_fails_and_leaves_the_set_as_it_was() {
        let mut set = IdentitySet::default();
        set.insert(3);
        assert!(!set.try_reserve(usize::MAX / 2));
        assert!(set.contains(3) && set.len() == 1);
    }
}
