//! What detection remembers per series: its baseline, its last values, and the
//! per-detector state some patterns need (a univariate detector, slow-growth
//! buckets), in a table bounded by `detect.max_series` and
//! `detect.max_univariate_series`.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use tracing::warn;

use super::anomaly::SeriesKey;
use super::baseline::{Baseline, BaselineParams, BaselineState};
use super::catalogue::{Pattern, SeriesKind};
use super::rows::Row;
use super::trend::Coarse;
use super::univariate::{Univariate, UnivariateParams};
use crate::window::FastMap;

/// What a series remembers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SeriesState {
    pub(crate) baseline: Baseline,
    /// The last values learned, (window start, value), oldest first.
    pub(crate) recent: VecDeque<(i64, f64)>,
    pub(crate) univariate: Option<Box<Univariate>>,
    /// Bucketed history for slow growth (series a growth pattern watches).
    #[serde(default)]
    pub(crate) coarse: Option<Box<Coarse>>,
}

/// The table's limits and the parameters its series learn with.
#[derive(Debug, Clone)]
pub(crate) struct SeriesLimits {
    pub(crate) baseline: BaselineParams,
    pub(crate) univariate: UnivariateParams,
    pub(crate) window_ms: i64,
    pub(crate) max_series: usize,
    pub(crate) max_univariate: usize,
    /// Values each series keeps in `recent` (the longest a detector reads).
    pub(crate) history: usize,
}

/// Every tracked series, by [`series_id`] (the key is kept to resolve collisions).
#[derive(Debug)]
pub(crate) struct SeriesTable {
    pub(crate) limits: SeriesLimits,
    map: FastMap<u64, (SeriesKey, String, SeriesState)>,
    univariates: usize,
    untracked: u64,
}

impl SeriesTable {
    pub(crate) fn new(limits: SeriesLimits) -> Self {
        Self {
            limits,
            map: FastMap::default(),
            univariates: 0,
            untracked: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// New series refused since the start (`detect.max_series`).
    pub(crate) fn untracked(&self) -> u64 {
        self.untracked
    }

    pub(crate) fn state(&self, key: &SeriesKey, measure: &str) -> Option<&SeriesState> {
        self.map
            .get(&series_id(key, measure))
            .filter(|(k, m, _)| k == key && m == measure)
            .map(|(_, _, s)| s)
    }

    /// The series' state once its baseline is `ready`.
    pub(crate) fn ready(&self, key: &SeriesKey, measure: &str) -> Option<&SeriesState> {
        self.state(key, measure)
            .filter(|s| s.baseline.state(&self.limits.baseline) == BaselineState::Ready)
    }

    pub(crate) fn state_mut(&mut self, key: &SeriesKey, measure: &str) -> Option<&mut SeriesState> {
        self.map
            .get_mut(&series_id(key, measure))
            .filter(|(k, m, _)| k == key && m == measure)
            .map(|(_, _, s)| s)
    }

    /// The series' univariate detector, created if the table has room for one.
    pub(crate) fn univariate(
        &mut self,
        key: &SeriesKey,
        measure: &str,
    ) -> Option<&mut SeriesState> {
        let room = self.univariates < self.limits.max_univariate;
        let params = self.limits.univariate.clone();
        let state = self.state_mut(key, measure)?;
        if state.univariate.is_none() {
            if !room {
                return None;
            }
            state.univariate = Some(Box::new(Univariate::new(params)));
            self.univariates += 1;
        }
        self.state_mut(key, measure)
    }

    /// Learns `value` at window `t` into the series (tracking it if there is room).
    pub(crate) fn learn(&mut self, key: SeriesKey, measure: String, t: i64, value: f64) {
        let history = self.limits.history;
        let params = self.limits.baseline.clone();
        if let Some(state) = self.state_mut(&key, &measure) {
            // A series' first window is partial (the service or the engine
            // started during it): the baseline starts over from the second.
            // (A new series keeps no recent value until its second window.)
            if state.recent.is_empty() {
                state.baseline = Baseline::new(t, value);
                state.recent.push_back((t, value));
                return;
            }
            if let Some(coarse) = state.coarse.as_mut() {
                coarse.push(t, value - state.baseline.seasonal(t));
            }
            state.baseline.learn(t, value, &params);
            state.recent.push_back((t, value));
            while state.recent.len() > history {
                state.recent.pop_front();
            }
            if state.baseline.windows() == params.warmup {
                let values: Vec<f64> = state.recent.iter().map(|(_, v)| *v).collect();
                state.baseline.restart_from(&values);
            }
            return;
        }
        if self.map.len() >= self.limits.max_series {
            self.untracked += 1;
            if self.untracked == 1 {
                warn!(
                    max_series = self.limits.max_series,
                    "detect.max_series reached; new series are not tracked"
                );
            }
            return;
        }
        let recent = VecDeque::with_capacity(history + 1);
        let state = SeriesState {
            baseline: Baseline::new(t, value),
            recent,
            univariate: None,
            coarse: None,
        };
        self.map
            .insert(series_id(&key, &measure), (key, measure, state));
    }

    /// Every series, for a snapshot.
    pub(crate) fn entries(&self) -> Vec<(SeriesKey, String, SeriesState)> {
        self.map.values().cloned().collect()
    }

    /// Restores series from a snapshot, within the limits; a univariate detector
    /// learned with other parameters is dropped (it relearns).
    pub(crate) fn restore(&mut self, entries: Vec<(SeriesKey, String, SeriesState)>) {
        for (key, measure, mut state) in entries.into_iter().take(self.limits.max_series) {
            if let Some(u) = &state.univariate {
                if u.params() != &self.limits.univariate
                    || self.univariates >= self.limits.max_univariate
                {
                    state.univariate = None;
                } else {
                    self.univariates += 1;
                }
            }
            self.map
                .insert(series_id(&key, &measure), (key, measure, state));
        }
    }
}

/// A series' identity as a hash (the map verifies the full key).
pub(crate) fn series_id(key: &SeriesKey, measure: &str) -> u64 {
    use std::hash::BuildHasher;
    SERIES_HASH.hash_one((
        &key.service,
        &key.signal,
        &key.name,
        &key.attributes,
        measure,
    ))
}

static SERIES_HASH: foldhash::fast::FixedState =
    foldhash::fast::FixedState::with_seed(0x5eed_de7e_c7ed);

/// The key of a metric row's series.
pub(crate) fn metric_key(row: &Row) -> SeriesKey {
    SeriesKey {
        service: row.service.clone(),
        signal: SeriesKind::Metric.as_str().to_string(),
        name: row.metric.clone(),
        attributes: row.attributes.clone(),
    }
}

/// The key of the series `pattern` watches in `row`.
pub(crate) fn key_for(row: &Row, pattern: &Pattern) -> SeriesKey {
    match row.kind {
        SeriesKind::Metric => metric_key(row),
        SeriesKind::LogTemplate => SeriesKey {
            service: row.service.clone(),
            signal: row.kind.as_str().to_string(),
            name: row.tag.clone(),
            attributes: row.attributes.clone(),
        },
        _ => SeriesKey {
            service: row.service.clone(),
            signal: row.kind.as_str().to_string(),
            name: pattern.measure.clone(),
            attributes: row.attributes.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::baseline::BaselineParams;
    use crate::detect::univariate::UnivariateParams;

    #[test]
    fn a_partial_first_window_is_not_learned() {
        let baseline = BaselineParams {
            warmup: 8,
            ..BaselineParams::default()
        };
        let mut table = SeriesTable::new(SeriesLimits {
            baseline,
            univariate: UnivariateParams::default(),
            window_ms: 5_000,
            max_series: 10,
            max_univariate: 0,
            history: 13,
        });
        let key = SeriesKey {
            service: "checkout".into(),
            signal: "service".into(),
            name: "error_rate".into(),
            attributes: String::new(),
        };
        // 1 error in the 3 requests of the first, partial window; then 1 %.
        let mut t = 0;
        for v in [0.33, 0.0, 0.02, 0.0, 0.01, 0.0, 0.02, 0.0, 0.01, 0.0] {
            table.learn(key.clone(), "error_rate".into(), t, v);
            t += 5_000;
        }
        let state = table.ready(&key, "error_rate").expect("ready");
        let jump = state.baseline.deviation(t, 0.15, 0.0);
        assert!(jump.score() > 0.9999, "{jump:?}");
    }
}
