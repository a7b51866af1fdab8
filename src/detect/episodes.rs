//! Hysteresis: a pattern's condition must hold `consecutive` windows in a row to
//! open an episode (one [`Anomaly`]), which is updated while the condition holds
//! and ends the first window it does not; the series is then quiet for
//! `cooldown` windows. Each change is an [`AnomalyEvent`].
//!
//! An open episode on a call edge or an operation that stops appearing in the
//! windows (the callers were rerouted away from a failed dependency, the
//! endpoint was retired) ends after [`SILENT_WINDOWS`] windows without it: the
//! calls it measured no longer happen. A service or metric series that goes
//! silent stays open: a service that stopped reporting is not a recovered one
//! (the stall pattern speaks for it).

use tracing::info;

use super::anomaly::{Anomaly, AnomalyEvent, SeriesKey};
use super::catalogue::Pattern;
use super::detectors::Candidate;
use super::series::series_id;
use crate::window::FastMap;

/// An open or recent episode of one pattern on one series.
#[derive(Debug, Clone, Default)]
struct Episode {
    run: u32,
    run_onset: i64,
    active: Option<i64>,
    quiet_until: i64,
    windows: u64,
    /// Start of the last window the series appeared in.
    seen: i64,
    /// The series and pattern of an open episode on a signal that may go silent.
    silent_end: Option<(SeriesKey, String, i64)>,
}

/// Windows an edge or operation may be absent before its open episode ends.
pub(crate) const SILENT_WINDOWS: i64 = 2;

/// Signals whose series end when they stop appearing.
fn may_go_silent(key: &SeriesKey) -> bool {
    matches!(key.signal.as_str(), "edge" | "operation")
}

/// The episodes of every (pattern, series).
#[derive(Debug, Default)]
pub(crate) struct Episodes {
    map: FastMap<(usize, u64), Episode>,
}

impl Episodes {
    /// Steps pattern `index`'s episode on `key` with this window's `candidate`;
    /// returns how the episode changed, if it did.
    pub(crate) fn step(
        &mut self,
        (index, pattern): (usize, &Pattern),
        key: SeriesKey,
        candidate: Option<Candidate>,
        t: i64,
        window_ms: i64,
    ) -> Option<AnomalyEvent> {
        let episode = self.map.entry((index, series_id(&key, ""))).or_default();
        episode.seen = t;
        let Some(c) = candidate else {
            episode.run = 0;
            episode.silent_end = None;
            let onset = episode.active.take()?;
            episode.quiet_until = t + i64::from(pattern.cooldown) * window_ms;
            info!(class = %pattern.class, pattern = %pattern.name, series = %key, "anomaly ended");
            return Some(AnomalyEvent::Ended {
                key,
                pattern: pattern.name.clone(),
                onset_ms: onset,
                ended_ms: t,
            });
        };
        if let Some(onset) = episode.active {
            episode.windows += 1;
            return Some(AnomalyEvent::Updated {
                key,
                pattern: pattern.name.clone(),
                onset_ms: onset,
                at_ms: t,
                windows: episode.windows,
            });
        }
        if t < episode.quiet_until {
            return None;
        }
        if episode.run == 0 {
            episode.run_onset = c.onset.unwrap_or(t).min(t);
        }
        episode.run += 1;
        if episode.run < pattern.consecutive {
            return None;
        }
        episode.active = Some(episode.run_onset);
        episode.windows = u64::from(episode.run);
        if may_go_silent(&key) {
            let cooldown = i64::from(pattern.cooldown) * window_ms;
            episode.silent_end = Some((key.clone(), pattern.name.clone(), cooldown));
        }
        let anomaly = Anomaly {
            key,
            class: pattern.class,
            pattern: pattern.name.clone(),
            onset_ms: episode.run_onset,
            detected_ms: t,
            ended_ms: None,
            observed: c.observed,
            expected: c.expected,
            score: c.score,
            windows: episode.windows,
            detail: c.detail,
        };
        info!(
            class = %anomaly.class,
            pattern = %anomaly.pattern,
            series = %anomaly.key,
            observed = anomaly.observed,
            expected = anomaly.expected,
            score = anomaly.score,
            detail = %anomaly.detail,
            "anomaly detected"
        );
        Some(AnomalyEvent::Opened(anomaly))
    }

    /// Ends the open episodes of edges and operations absent from the windows
    /// since `t - SILENT_WINDOWS` windows.
    pub(crate) fn end_silent(&mut self, t: i64, window_ms: i64) -> Vec<AnomalyEvent> {
        let mut ended = Vec::new();
        for episode in self.map.values_mut() {
            if episode.seen > t - SILENT_WINDOWS * window_ms {
                continue;
            }
            let Some((key, pattern, cooldown)) = episode.silent_end.take() else {
                continue;
            };
            let Some(onset) = episode.active.take() else {
                continue;
            };
            episode.run = 0;
            episode.quiet_until = t + cooldown;
            info!(%pattern, series = %key, "anomaly ended: the series went silent");
            ended.push(AnomalyEvent::Ended {
                key,
                pattern,
                onset_ms: onset,
                ended_ms: t,
            });
        }
        ended
    }

    /// Forgets episodes with nothing running, open or cooling down after `t`.
    pub(crate) fn prune(&mut self, t: i64) {
        self.map
            .retain(|_, e| e.active.is_some() || e.run > 0 || e.quiet_until > t);
    }
}
