//! Humans' feedback to detection: a series whose anomaly was marked a false
//! positive tolerates deviations as large as that one from then on.
//!
//! The mechanism is general: the marked anomaly's |observed - expected| becomes
//! the series' tolerance, and a later candidate on the series opens an episode
//! only when it deviates further (a larger tolerance from a later verdict
//! wins). One verdict thus lowers the sensitivity of exactly the series that
//! misled, by exactly as much as they misled. Memory: at most [`MAX_TOLERANCES`]
//! series, the oldest verdict forgotten first; kept in the detection snapshot.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::SeriesKey;
use super::detectors::Candidate;

/// Series with a tolerance.
pub const MAX_TOLERANCES: usize = 10_000;

/// A verdict on one series: deviations up to `deviation` are normal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tolerance {
    pub key: SeriesKey,
    pub deviation: f64,
}

/// The tolerances held.
#[derive(Debug, Default, Clone)]
pub struct Tolerances {
    map: HashMap<SeriesKey, f64>,
    order: VecDeque<SeriesKey>,
}

impl Tolerances {
    /// Takes a verdict in.
    pub fn tolerate(&mut self, t: Tolerance) {
        if !t.deviation.is_finite() || t.deviation <= 0.0 {
            return;
        }
        match self.map.get_mut(&t.key) {
            Some(d) => *d = d.max(t.deviation),
            None => {
                self.order.push_back(t.key.clone());
                self.map.insert(t.key, t.deviation);
                while self.order.len() > MAX_TOLERANCES {
                    if let Some(old) = self.order.pop_front() {
                        self.map.remove(&old);
                    }
                }
            }
        }
    }

    /// Whether `candidate` on `key` deviates more than the series tolerates.
    pub fn exceeds(&self, key: &SeriesKey, candidate: &Candidate) -> bool {
        self.map
            .get(key)
            .is_none_or(|&d| (candidate.observed - candidate.expected).abs() > d)
    }

    /// Every tolerance, oldest first (for the snapshot).
    pub fn entries(&self) -> Vec<Tolerance> {
        self.order
            .iter()
            .filter_map(|k| {
                self.map.get(k).map(|&d| Tolerance {
                    key: k.clone(),
                    deviation: d,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> SeriesKey {
        SeriesKey {
            service: "cart".into(),
            signal: "metric".into(),
            name: name.into(),
            attributes: String::new(),
        }
    }

    fn candidate(observed: f64) -> Candidate {
        Candidate {
            observed,
            expected: 100.0,
            score: 1.0,
            onset: None,
            detail: String::new(),
            decisive: false,
        }
    }

    #[test]
    fn a_marked_series_tolerates_as_much_as_misled_and_no_more() {
        let mut t = Tolerances::default();
        assert!(t.exceeds(&key("gc"), &candidate(130.0)));
        t.tolerate(Tolerance {
            key: key("gc"),
            deviation: 30.0,
        });
        assert!(!t.exceeds(&key("gc"), &candidate(130.0)));
        assert!(!t.exceeds(&key("gc"), &candidate(75.0)));
        assert!(
            t.exceeds(&key("gc"), &candidate(140.0)),
            "a larger deviation still counts"
        );
        assert!(
            t.exceeds(&key("heap"), &candidate(130.0)),
            "other series unchanged"
        );
        t.tolerate(Tolerance {
            key: key("gc"),
            deviation: 10.0,
        });
        assert!(
            !t.exceeds(&key("gc"), &candidate(130.0)),
            "the larger tolerance wins"
        );
        assert_eq!(t.entries().len(), 1);
    }
}
