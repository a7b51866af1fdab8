//! Hysteresis: a pattern's condition must hold `consecutive` windows in a row to
//! open an episode (one [`Anomaly`]), which is updated while the condition holds
//! and ends the first window it does not; the series is then quiet for
//! `cooldown` windows.

use tracing::info;

use super::anomaly::{Anomaly, AnomalyLog, SeriesKey};
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

/// The episodes of every (pattern, series), writing to the anomaly log.
#[derive(Debug, Default)]
pub(crate) struct Episodes {
    map: FastMap<(usize, u64), Episode>,
}

impl Episodes {
    /// Steps pattern `index`'s episode on `key` with this window's `candidate`;
    /// returns the anomaly it opened, if it opened one.
    pub(crate) fn step(
        &mut self,
        (index, pattern): (usize, &Pattern),
        key: SeriesKey,
        candidate: Option<Candidate>,
        t: i64,
        window_ms: i64,
        log: &AnomalyLog,
    ) -> Option<Anomaly> {
        let episode = self.map.entry((index, series_id(&key, ""))).or_default();
        let Some(c) = candidate else {
            episode.run = 0;
            if let Some(onset) = episode.active.take() {
                episode.quiet_until = t + i64::from(pattern.cooldown) * window_ms;
                log.update(&key, &pattern.name, onset, |a| a.ended_ms = Some(t));
                info!(class = %pattern.class, pattern = %pattern.name, series = %key, "anomaly ended");
            }
            return None;
        };
        if let Some(onset) = episode.active {
            episode.windows += 1;
            let windows = episode.windows;
            log.update(&key, &pattern.name, onset, |a| a.windows = windows);
            return None;
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
        log.push(anomaly.clone());
        Some(anomaly)
    }

    /// Forgets episodes with nothing running, open or cooling down after `t`.
    pub(crate) fn prune(&mut self, t: i64) {
        self.map
            .retain(|_, e| e.active.is_some() || e.run > 0 || e.quiet_until > t);
    }
}
