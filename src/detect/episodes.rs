//! Hysteresis: a pattern's condition must hold `consecutive` windows in a row to
//! open an episode (one [`Anomaly`]), which is updated while the condition holds
//! and ends the first window it does not; the series is then quiet for
//! `cooldown` windows. Each change is an [`AnomalyEvent`].

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
        let Some(c) = candidate else {
            episode.run = 0;
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

    /// Forgets episodes with nothing running, open or cooling down after `t`.
    pub(crate) fn prune(&mut self, t: i64) {
        self.map
            .retain(|_, e| e.active.is_some() || e.run > 0 || e.quiet_until > t);
    }
}
