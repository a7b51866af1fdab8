//! Which Kafka offsets may be committed: a record is done once every window it
//! touched is closed *and durable*, and it is no longer needed for span pairing.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

/// A topic-partition.
pub type Partition = (Arc<str>, i32);

/// Where a batch came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaOrigin {
    /// Topic.
    pub topic: Arc<str>,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Consumed, not yet processed by the window stage.
    InFlight,
    /// Processed; done once windows are durable through this event time (ms).
    NeededUntil(i64),
    /// Processed; nothing retained.
    Done,
}

#[derive(Debug, Default)]
struct Inner {
    assigned: BTreeMap<(Arc<str>, i32), ()>,
    assignment_generation: u64,
    partitions: HashMap<(Arc<str>, i32), BTreeMap<i64, State>>,
    ready: HashMap<(Arc<str>, i32), i64>,
    committed: HashMap<(Arc<str>, i32), i64>,
}

/// Shared between the Kafka consumer (which registers and commits) and the window
/// stage (which marks records processed and windows durable).
#[derive(Debug, Clone, Default)]
pub struct OffsetTracker {
    inner: Arc<Mutex<Inner>>,
    durable_through_ms: Arc<AtomicI64>,
}

impl OffsetTracker {
    /// A tracker with nothing durable yet.
    pub fn new() -> Self {
        let tracker = OffsetTracker::default();
        tracker.durable_through_ms.store(i64::MIN, Ordering::SeqCst);
        tracker
    }

    /// Registers a consumed record before it is sent to the pipeline.
    pub fn consumed(&self, origin: &KafkaOrigin) {
        if let Ok(mut inner) = self.inner.lock() {
            inner
                .partitions
                .entry((origin.topic.clone(), origin.partition))
                .or_default()
                .insert(origin.offset, State::InFlight);
        }
    }

    /// The window stage processed the record; `needed_until_ms` as returned by
    /// [`crate::window::Windows::ingest`].
    pub fn processed(&self, origin: &KafkaOrigin, needed_until_ms: Option<i64>) {
        if let Ok(mut inner) = self.inner.lock()
            && let Some(offsets) = inner
                .partitions
                .get_mut(&(origin.topic.clone(), origin.partition))
            && let Some(state) = offsets.get_mut(&origin.offset)
        {
            *state = match needed_until_ms {
                Some(ms) => State::NeededUntil(ms),
                None => State::Done,
            };
        }
    }

    /// Every record processed so far is done (all windows closed and durable, the
    /// pairing store empty); records still in flight are not.
    pub fn release_processed(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            for offsets in inner.partitions.values_mut() {
                for state in offsets.values_mut() {
                    if matches!(state, State::NeededUntil(_)) {
                        *state = State::Done;
                    }
                }
            }
        }
    }

    /// Windows ending at or before `closed_through_ms` are durable.
    pub fn set_durable(&self, closed_through_ms: i64) {
        self.durable_through_ms
            .fetch_max(closed_through_ms, Ordering::SeqCst);
    }

    /// Notes a partition assigned to this consumer (an input of the window stage).
    pub fn assign(&self, topic: &str, partition: i32) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.assigned.insert((Arc::from(topic), partition), ());
            inner.assignment_generation += 1;
        }
    }

    /// The assigned partitions, when they changed since `generation`.
    pub fn assignment_since(&self, generation: u64) -> Option<(u64, Vec<Partition>)> {
        let inner = self.inner.lock().ok()?;
        (inner.assignment_generation != generation).then(|| {
            (
                inner.assignment_generation,
                inner.assigned.keys().cloned().collect(),
            )
        })
    }

    /// Forgets partitions this consumer no longer owns.
    pub fn revoke(&self, topic: &str, partition: i32) {
        if let Ok(mut inner) = self.inner.lock() {
            inner
                .assigned
                .retain(|(t, p), _| !(&**t == topic && *p == partition));
            inner.assignment_generation += 1;
            inner
                .partitions
                .retain(|(t, p), _| !(&**t == topic && *p == partition));
            inner
                .committed
                .retain(|(t, p), _| !(&**t == topic && *p == partition));
            inner
                .ready
                .retain(|(t, p), _| !(&**t == topic && *p == partition));
        }
    }

    /// The next offset to commit per partition, for partitions where it advanced.
    /// Call [`OffsetTracker::committed`] once the commit succeeded.
    pub fn committable(&self) -> Vec<(Arc<str>, i32, i64)> {
        let durable = self.durable_through_ms.load(Ordering::SeqCst);
        let Ok(mut inner) = self.inner.lock() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let Inner {
            partitions,
            ready,
            committed,
            ..
        } = &mut *inner;
        for ((topic, partition), offsets) in partitions.iter_mut() {
            let mut next = None;
            while let Some((offset, state)) = offsets.first_key_value() {
                let done = match state {
                    State::InFlight => false,
                    State::NeededUntil(ms) => *ms <= durable,
                    State::Done => true,
                };
                if !done {
                    break;
                }
                next = Some(offset + 1);
                offsets.pop_first();
            }
            if let Some(next) = next {
                let slot = ready.entry((topic.clone(), *partition)).or_insert(next);
                *slot = (*slot).max(next);
            }
        }
        for ((topic, partition), next) in ready.iter() {
            if committed
                .get(&(topic.clone(), *partition))
                .is_none_or(|c| next > c)
            {
                out.push((topic.clone(), *partition, *next));
            }
        }
        out
    }

    /// Records a successful commit (so it is not repeated).
    pub fn committed(&self, topic: &Arc<str>, partition: i32, next_offset: i64) {
        if let Ok(mut inner) = self.inner.lock() {
            inner
                .committed
                .insert((topic.clone(), partition), next_offset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(offset: i64) -> KafkaOrigin {
        KafkaOrigin {
            topic: Arc::from("t"),
            partition: 0,
            offset,
        }
    }

    #[test]
    fn commits_only_the_durable_prefix() {
        let tracker = OffsetTracker::new();
        for offset in 0..3 {
            tracker.consumed(&origin(offset));
        }
        tracker.processed(&origin(0), Some(10));
        tracker.processed(&origin(2), None);
        assert!(tracker.committable().is_empty(), "nothing durable yet");
        tracker.set_durable(10);
        assert_eq!(tracker.committable(), vec![(Arc::from("t"), 0, 1)]);
        tracker.committed(&Arc::from("t"), 0, 1);
        tracker.processed(&origin(1), Some(20));
        assert!(tracker.committable().is_empty(), "offset 1 needs window 20");
        tracker.set_durable(20);
        assert_eq!(tracker.committable(), vec![(Arc::from("t"), 0, 3)]);
    }
}
