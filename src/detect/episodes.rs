//! Hysteresis: a pattern's condition must hold `consecutive` windows in a row to
//! open an episode (one [`Anomaly`]), which is updated while the condition holds
//! and ends the first window it does not; the series is then quiet for
//! `cooldown` windows, so a failure that flaps raises one anomaly, not one per
//! flap. A new failure on a series that recovered minutes ago is not a flap: a
//! run in the cooldown still opens an episode when every window of it is
//! decisive ([`Candidate::decisive`]) and deviates at least [`ESCALATION`] times
//! as far as the last episode did at its peak. A run one window short opens
//! early when a second reporter holds its subject decisively in the same window
//! ([`Episodes::corroborate`]). Each change is an [`AnomalyEvent`].
//!
//! An open episode on a call edge or an operation that stops appearing in the
//! windows (the callers were rerouted away from a failed dependency, the
//! endpoint was retired) ends after [`SILENT_WINDOWS`] windows without it: the
//! calls it measured no longer happen. A service or metric series that goes
//! silent stays open: a service that stopped reporting is not a recovered one
//! (the stall pattern speaks for it).

use tracing::info;

use std::collections::{HashMap, HashSet};

use super::anomaly::{Anomaly, AnomalyEvent, SeriesKey, attribute};
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
    /// The largest deviation (|observed - expected|) of the last episode, and
    /// of the run of windows under way.
    peak: f64,
    run_peak: f64,
    /// The series and pattern of an open episode on a signal that may go silent.
    silent_end: Option<(SeriesKey, String, i64)>,
}

/// Windows an edge or operation may be absent before its open episode ends.
pub(crate) const SILENT_WINDOWS: i64 = 2;

/// How many times as far as the last episode's peak a decisive run in the
/// cooldown must deviate to open a new episode: a flap of the same failure
/// deviates about as far again; a different, worse failure much further.
pub(crate) const ESCALATION: f64 = 2.0;

/// Signals whose series end when they stop appearing.
fn may_go_silent(key: &SeriesKey) -> bool {
    matches!(key.signal.as_str(), "edge" | "operation")
}

/// The episodes of every (pattern, series).
#[derive(Debug, Default)]
pub(crate) struct Episodes {
    map: FastMap<(usize, u64), Episode>,
    /// Decisive runs this window left one window short of their pattern's
    /// `consecutive`, for [`Episodes::corroborate`].
    pending: Vec<Pending>,
}

/// A run one window short of opening, held decisively in this window.
#[derive(Debug)]
struct Pending {
    slot: (usize, u64),
    key: SeriesKey,
    candidate: Candidate,
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
        let slot = (index, series_id(&key, ""));
        let episode = self.map.entry(slot).or_default();
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
        let deviation = (c.observed - c.expected).abs();
        if let Some(onset) = episode.active {
            episode.windows += 1;
            episode.peak = episode.peak.max(deviation);
            return Some(AnomalyEvent::Updated {
                key,
                pattern: pattern.name.clone(),
                onset_ms: onset,
                at_ms: t,
                windows: episode.windows,
            });
        }
        let escalated = c.decisive && deviation >= ESCALATION * episode.peak;
        if t < episode.quiet_until && !escalated {
            episode.run = 0;
            return None;
        }
        if episode.run == 0 {
            episode.run_onset = c.onset.unwrap_or(t).min(t);
            episode.run_peak = 0.0;
        }
        episode.run_peak = episode.run_peak.max(deviation);
        episode.run += 1;
        if episode.run < pattern.consecutive {
            if c.decisive && episode.run + 1 == pattern.consecutive {
                self.pending.push(Pending {
                    slot,
                    key,
                    candidate: c,
                });
            }
            return None;
        }
        Some(open(episode, pattern, key, c, window_ms))
    }

    /// Opens, after every series of window `t` has been stepped, the pending
    /// runs whose subject (a service, or the callee of an edge) is held
    /// decisively in this window by series of at least two reporters: the
    /// service's own spans and a caller's, or two callers. Hysteresis asks for
    /// a second window because one window at the threshold may be chance; one
    /// decisive window is already as unlikely as the whole run (`decisive`),
    /// and a second reporter seeing it at once rules out one service's
    /// instrumentation (a stalled exporter, a skewed clock) as the cause. The
    /// incident then opens a window earlier, while a lone series still waits.
    /// What it does not rule out is a real failure that lasts one window: on
    /// nezha-ob's real traces it let 4 such blips more through (incidents
    /// resolved within a minute: 6 -> 10 of 67 -> 71).
    pub(crate) fn corroborate(
        &mut self,
        patterns: &[Pattern],
        t: i64,
        window_ms: i64,
    ) -> Vec<AnomalyEvent> {
        let pending = std::mem::take(&mut self.pending);
        let mut reporters: HashMap<[&str; 3], HashSet<[&str; 3]>> = HashMap::new();
        for p in &pending {
            reporters
                .entry(p.key.subject())
                .or_default()
                .insert(reporter_of(&p.key));
        }
        let corroborated: HashSet<[String; 3]> = reporters
            .into_iter()
            .filter(|(_, r)| r.len() >= 2)
            .map(|(s, _)| s.map(str::to_string))
            .collect();
        let mut opened = Vec::new();
        for p in pending {
            let subject = p.key.subject().map(str::to_string);
            let (Some(pattern), Some(episode)) =
                (patterns.get(p.slot.0), self.map.get_mut(&p.slot))
            else {
                continue;
            };
            if !corroborated.contains(&subject) || episode.active.is_some() || episode.seen != t {
                continue;
            }
            opened.push(open(episode, pattern, p.key, p.candidate, window_ms));
        }
        opened
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

/// Opens `episode` with its run so far, confirmed by `c` in the window it was
/// last seen in.
fn open(
    episode: &mut Episode,
    pattern: &Pattern,
    key: SeriesKey,
    c: Candidate,
    window_ms: i64,
) -> AnomalyEvent {
    episode.active = Some(episode.run_onset);
    episode.windows = u64::from(episode.run);
    episode.peak = episode.run_peak;
    if may_go_silent(&key) {
        let cooldown = i64::from(pattern.cooldown) * window_ms;
        episode.silent_end = Some((key.clone(), pattern.name.clone(), cooldown));
    }
    let anomaly = Anomaly {
        key,
        class: pattern.class,
        pattern: pattern.name.clone(),
        onset_ms: episode.run_onset,
        detected_ms: episode.seen,
        ended_ms: None,
        observed: c.observed,
        expected: c.expected,
        score: c.score,
        windows: episode.windows,
        detail: c.detail,
        decisive: c.decisive,
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
    AnomalyEvent::Opened(anomaly)
}

/// Who reports a series: its own service, as (namespace, name, environment).
fn reporter_of(key: &SeriesKey) -> [&str; 3] {
    let own = |name| attribute(&key.attributes, name).unwrap_or("");
    [own("namespace"), &key.service, own("environment")]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::catalogue::Catalogue;

    const W: i64 = 10_000;

    /// A window of one series: None, the condition did not hold; else how far
    /// it deviated and whether decisively.
    type Window = Option<(f64, bool)>;

    /// Steps one series through `windows`; returns those an episode opened in.
    fn opened(windows: &[Window]) -> Vec<usize> {
        let catalogue = Catalogue::built_in().expect("the built-in catalogue loads");
        let pattern = &catalogue.patterns[0];
        assert_eq!((pattern.consecutive, pattern.cooldown), (2, 30));
        let key = SeriesKey {
            service: "api".into(),
            signal: "service".into(),
            name: "error_rate".into(),
            attributes: String::new(),
        };
        let mut episodes = Episodes::default();
        let mut out = Vec::new();
        for (i, w) in windows.iter().enumerate() {
            let c = w.map(|(deviation, decisive)| Candidate {
                observed: deviation,
                expected: 0.0,
                score: 1.0,
                onset: None,
                detail: String::new(),
                decisive,
            });
            let event = episodes.step((0, pattern), key.clone(), c, i as i64 * W, W);
            if matches!(event, Some(AnomalyEvent::Opened(_))) {
                out.push(i);
            }
        }
        out
    }

    #[test]
    fn the_cooldown_mutes_flaps_but_not_a_worse_failure() {
        let (calm, held, strong) = (None, Some((0.1, false)), Some((0.1, true)));
        let worse = Some((0.3, true));
        // An episode in windows 0-1, ended in 2: a like run in 5-6 is a flap,
        // muted even when decisive.
        assert_eq!(opened(&[held, held, calm, calm, calm, held, held]), vec![1]);
        assert_eq!(
            opened(&[strong, strong, calm, calm, strong, strong]),
            vec![1]
        );
        // A decisive run three times as far opens a new episode; half of one
        // does not.
        assert_eq!(opened(&[held, held, calm, calm, worse, worse]), vec![1, 5]);
        assert_eq!(
            opened(&[held, held, calm, worse, held, worse, calm]),
            vec![1]
        );
        // A worse run that is not decisive waits for the cooldown's end.
        let far = Some((0.3, false));
        assert_eq!(opened(&[held, held, calm, far, far]), vec![1]);
        let mut long = vec![held, held];
        long.extend(std::iter::repeat_n(calm, 31));
        long.extend([held, held]);
        assert_eq!(opened(&long), vec![1, 34]);
    }

    fn key(service: &str, signal: &str, attributes: &str) -> SeriesKey {
        SeriesKey {
            service: service.into(),
            signal: signal.into(),
            name: "error_rate".into(),
            attributes: attributes.into(),
        }
    }

    /// Steps each series with `decisive` in windows 0 and 1, corroborating
    /// after each window; returns the window each series opened in.
    fn opened_together(series: &[(SeriesKey, bool)]) -> Vec<Option<i64>> {
        let catalogue = Catalogue::built_in().expect("the built-in catalogue loads");
        let patterns = &catalogue.patterns[..1];
        let mut episodes = Episodes::default();
        let mut out = vec![None; series.len()];
        for window in 0..2 {
            let t = window * W;
            let mut events = Vec::new();
            for (key, decisive) in series {
                let c = Candidate {
                    observed: 1.0,
                    expected: 0.0,
                    score: 1.0,
                    onset: None,
                    detail: String::new(),
                    decisive: *decisive,
                };
                events.extend(episodes.step((0, &patterns[0]), key.clone(), Some(c), t, W));
            }
            events.extend(episodes.corroborate(patterns, t, W));
            for event in events {
                if let AnomalyEvent::Opened(a) = event {
                    let i = series
                        .iter()
                        .position(|(k, _)| *k == a.key)
                        .expect("a known series");
                    out[i].get_or_insert(window);
                }
            }
        }
        out
    }

    #[test]
    fn a_second_reporter_opens_a_decisive_run_a_window_early() {
        let own = key("api", "service", "namespace=shop");
        let caller = key(
            "web",
            "edge",
            "callee=api,callee_kind=service,namespace=shop",
        );
        let other_caller = key(
            "jobs",
            "edge",
            "callee=api,callee_kind=service,namespace=shop",
        );
        // The service and a caller, or two callers: at once.
        assert_eq!(
            opened_together(&[(own.clone(), true), (caller.clone(), true)]),
            vec![Some(0), Some(0)]
        );
        assert_eq!(
            opened_together(&[(caller.clone(), true), (other_caller, true)]),
            vec![Some(0), Some(0)]
        );
        // Alone, or with a series that is not decisive: the second window.
        assert_eq!(opened_together(&[(own.clone(), true)]), vec![Some(1)]);
        assert_eq!(
            opened_together(&[(own.clone(), true), (caller.clone(), false)]),
            vec![Some(1), Some(1)]
        );
        // Two series of one reporter are one witness.
        let operation = key("api", "operation", "namespace=shop,operation=/pay");
        assert_eq!(
            opened_together(&[(own.clone(), true), (operation, true)]),
            vec![Some(1), Some(1)]
        );
        // A caller of `api` in another namespace speaks of another node.
        let elsewhere = key(
            "web",
            "edge",
            "callee=api,callee_kind=service,namespace=lab",
        );
        assert_eq!(
            opened_together(&[(own, true), (elsewhere, true)]),
            vec![Some(1), Some(1)]
        );
    }
}
