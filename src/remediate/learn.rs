//! Learning which remedies work: per (failure class, service, action), the
//! attempts, the successes and the times to recovery.
//!
//! A playbook's steps are tried best first: by the success rate observed for
//! the incident's class and service, with a Beta(1, 1) prior (an untried step
//! counts as 1/2, so a step that worked once goes before it, and one that
//! failed once after it); ties keep the playbook's order. A step that failed
//! [`DEMOTE_AFTER`] times or more with a success rate under [`DEMOTE_RATE`] is
//! demoted: it waits for a human's approval from then on. Memory: one entry per
//! (class, service, action) tried, each with its last [`RECOVERIES`] times.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use statrs::statistics::{Data, Median};

use super::playbook::Action;

/// Recovery times kept per entry, for the median.
pub const RECOVERIES: usize = 50;
/// Failures before a step that keeps failing is demoted to approval.
pub const DEMOTE_AFTER: u32 = 3;
/// Success rate under which such a step is demoted.
pub const DEMOTE_RATE: f64 = 0.34;

/// (failure class, service, action).
pub type Key = (String, String, Action);

/// What one remedy did for one class on one service.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Record {
    pub attempts: u32,
    pub successes: u32,
    /// Time from the incident's onset to its recovery, ms, last ones first out.
    pub recoveries_ms: VecDeque<i64>,
}

impl Record {
    /// Observed success rate with a Beta(1, 1) prior.
    pub fn score(&self) -> f64 {
        (self.successes as f64 + 1.0) / (self.attempts as f64 + 2.0)
    }

    /// Success rate, or none before any attempt.
    pub fn success_rate(&self) -> Option<f64> {
        (self.attempts > 0).then(|| self.successes as f64 / self.attempts as f64)
    }

    /// Median time to recovery.
    pub fn median_recovery_ms(&self) -> Option<f64> {
        if self.recoveries_ms.is_empty() {
            return None;
        }
        let values: Vec<f64> = self.recoveries_ms.iter().map(|&v| v as f64).collect();
        Some(Data::new(values).median())
    }

    /// Whether it keeps failing.
    pub fn demoted(&self) -> bool {
        let failures = self.attempts - self.successes;
        failures >= DEMOTE_AFTER && self.success_rate().unwrap_or(1.0) < DEMOTE_RATE
    }
}

/// Everything learned.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Learning {
    records: BTreeMap<String, (Key, Record)>,
}

fn id((class, service, action): &Key) -> String {
    format!("{class}\u{1f}{service}\u{1f}{}", action.as_str())
}

impl Learning {
    /// Records one concluded attempt (`recovery_ms` when it recovered).
    pub fn record(&mut self, key: Key, recovery_ms: Option<i64>) {
        let (_, record) = self
            .records
            .entry(id(&key))
            .or_insert_with(|| (key, Record::default()));
        record.attempts += 1;
        if let Some(ms) = recovery_ms {
            record.successes += 1;
            record.recoveries_ms.push_back(ms.max(0));
            if record.recoveries_ms.len() > RECOVERIES {
                record.recoveries_ms.pop_front();
            }
        }
    }

    /// What is known of `key`.
    pub fn get(&self, key: &Key) -> Option<&Record> {
        self.records.get(&id(key)).map(|(_, r)| r)
    }

    /// The order to try `actions` (a playbook's steps) in for `class` on
    /// `service`: indices, best observed first, ties in playbook order.
    pub fn order(&self, class: &str, service: &str, actions: &[Action]) -> Vec<usize> {
        let score = |a: Action| {
            self.get(&(class.to_string(), service.to_string(), a))
                .map_or(0.5, Record::score)
        };
        let mut order: Vec<usize> = (0..actions.len()).collect();
        // Notifications stay last: they do not heal.
        order.sort_by(|&a, &b| {
            let key = |i: usize| (!actions[i].acts(), -score(actions[i]));
            key(a)
                .partial_cmp(&key(b))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        order
    }

    /// Every entry.
    pub fn entries(&self) -> impl Iterator<Item = (&Key, &Record)> {
        self.records.values().map(|(k, r)| (k, r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(action: Action) -> Key {
        ("memory_leak".into(), "cart".into(), action)
    }

    #[test]
    fn steps_that_worked_go_first_and_ties_keep_the_playbook_order() {
        let mut l = Learning::default();
        let steps = [
            Action::Restart,
            Action::Scale,
            Action::Notify,
            Action::ClearCache,
        ];
        assert_eq!(l.order("memory_leak", "cart", &steps), [0, 1, 3, 2]);
        l.record(key(Action::Restart), None);
        l.record(key(Action::ClearCache), Some(40_000));
        assert_eq!(l.order("memory_leak", "cart", &steps), [3, 1, 0, 2]);
        // Another service has learned nothing.
        assert_eq!(l.order("memory_leak", "web", &steps), [0, 1, 3, 2]);
    }

    #[test]
    fn success_rate_median_recovery_and_demotion() {
        let mut l = Learning::default();
        for ms in [30_000, 10_000, 20_000] {
            l.record(key(Action::Restart), Some(ms));
        }
        let r = l.get(&key(Action::Restart)).expect("record");
        assert_eq!((r.attempts, r.successes), (3, 3));
        assert_eq!(r.median_recovery_ms(), Some(20_000.0));
        assert!(!r.demoted());
        for _ in 0..3 {
            l.record(key(Action::Scale), None);
        }
        assert!(l.get(&key(Action::Scale)).expect("scale").demoted());
        l.record(key(Action::Scale), Some(1));
        l.record(key(Action::Scale), Some(1));
        assert!(
            !l.get(&key(Action::Scale)).expect("scale").demoted(),
            "2 of 5 worked"
        );
    }
}
