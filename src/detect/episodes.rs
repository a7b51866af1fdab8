//! Hysteresis: a pattern's condition must hold `consecutive` windows in a row to
//! open an episode (one [`Anomaly`]), which is updated while the condition holds
//! and ends the first window it does not; the series is then quiet for
//! `cooldown` windows, so a failure that flaps raises one anomaly, not one per
//! flap. A new failure on a series that recovered minutes ago is not a flap: a
//! run in the cooldown still opens an episode when every window of it is
//! decisive ([`Candidate::decisive`]) and deviates at least [`ESCALATION`] times
//! as far as the last episode did at its peak, or, past the first third
//! ([`FLAP_PART`]) of the cooldown, when it holds [`SUSTAINED`] window more than
//! `consecutive`. Each change is an [`AnomalyEvent`].
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
    /// The largest deviation (|observed - expected|) of the last episode, and
    /// of the run of windows under way.
    peak: f64,
    run_peak: f64,
    /// Whether every window of the run under way was escalated (decisive and
    /// [`ESCALATION`] times the last peak).
    run_escalated: bool,
    /// The series and pattern of an open episode on a signal that may go silent.
    silent_end: Option<(SeriesKey, String, i64)>,
}

/// Windows an edge or operation may be absent before its open episode ends.
pub(crate) const SILENT_WINDOWS: i64 = 2;

/// How many times as far as the last episode's peak a decisive run in the
/// cooldown must deviate to open a new episode: a flap of the same failure
/// deviates about as far again; a different, worse failure much further.
pub(crate) const ESCALATION: f64 = 2.0;

/// How many windows more than `consecutive` a run that is not escalated must
/// hold to open an episode once the first third ([`FLAP_PART`]) of the cooldown has
/// passed: a flap is brief and follows the end closely (on and off around the
/// bar); a run that comes later and holds this long is a failure (the same one
/// back, or a new one on a series that was a bystander of the last) and must
/// not wait out the cooldown.
pub(crate) const SUSTAINED: u32 = 1;
/// The part of the cooldown (1 / this), right after an episode ends, in
/// which only an escalated run opens an episode: the first third.
pub(crate) const FLAP_PART: i64 = 3;

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
            episode.peak = episode.peak.max((c.observed - c.expected).abs());
            return Some(AnomalyEvent::Updated {
                key,
                pattern: pattern.name.clone(),
                onset_ms: onset,
                at_ms: t,
                windows: episode.windows,
            });
        }
        open(episode, pattern, key, c, t, window_ms)
    }

    /// Whether pattern `index` has a run under way on `key` that one more
    /// window may complete: nothing open, and at least one window held.
    pub(crate) fn pending(&self, index: usize, key: &SeriesKey) -> bool {
        self.map
            .get(&(index, series_id(key, "")))
            .is_some_and(|e| e.active.is_none() && e.run > 0)
    }

    /// Counts `candidate`, held in the first part of the open window `t`, as
    /// the window that completes the run under way on `key`: opens the
    /// episode when it does; otherwise changes nothing (the window is judged
    /// again when it closes). The episode counts the windows closed so far.
    pub(crate) fn confirm_early(
        &mut self,
        (index, pattern): (usize, &Pattern),
        key: SeriesKey,
        candidate: Candidate,
        t: i64,
        window_ms: i64,
    ) -> Option<AnomalyEvent> {
        let episode = self.map.get_mut(&(index, series_id(&key, "")))?;
        if episode.active.is_some() || episode.run == 0 {
            return None;
        }
        let mut trial = episode.clone();
        let mut event = open(&mut trial, pattern, key, candidate, t, window_ms)?;
        trial.run -= 1;
        trial.windows = u64::from(trial.run);
        if let AnomalyEvent::Opened(anomaly) = &mut event {
            anomaly.windows = trial.windows;
        }
        *episode = trial;
        Some(event)
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

/// Counts window `t`'s candidate `c` into the run of an episode with nothing
/// open; opens the episode when the run is long enough.
fn open(
    episode: &mut Episode,
    pattern: &Pattern,
    key: SeriesKey,
    c: Candidate,
    t: i64,
    window_ms: i64,
) -> Option<AnomalyEvent> {
    let deviation = (c.observed - c.expected).abs();
    if episode.run == 0 {
        episode.run_onset = c.onset.unwrap_or(t).min(t);
        episode.run_peak = 0.0;
        episode.run_escalated = true;
    }
    episode.run_peak = episode.run_peak.max(deviation);
    episode.run += 1;
    episode.run_escalated &= c.decisive && deviation >= ESCALATION * episode.peak;
    let cooldown = i64::from(pattern.cooldown) * window_ms;
    let ended = episode.quiet_until - cooldown;
    let flapping = t < ended + cooldown / FLAP_PART;
    let needed = match (t < episode.quiet_until && !episode.run_escalated, flapping) {
        (false, _) => pattern.consecutive,
        (true, false) => pattern.consecutive + SUSTAINED,
        (true, true) => {
            episode.run = 0;
            return None;
        }
    };
    if episode.run < needed {
        return None;
    }
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
        detected_ms: t,
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
    Some(AnomalyEvent::Opened(anomaly))
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
        assert_eq!(opened(&[held, held, calm, worse, held, calm]), vec![1]);
        // A worse run that is not decisive waits for the cooldown's end.
        let far = Some((0.3, false));
        assert_eq!(opened(&[held, held, calm, far, far]), vec![1]);
        let mut long = vec![held, held];
        long.extend(std::iter::repeat_n(calm, 31));
        long.extend([held, held]);
        assert_eq!(opened(&long), vec![1, 34]);
    }

    #[test]
    fn a_run_that_holds_in_the_cooldown_is_no_flap() {
        // A bystander of another service's failure recovers (windows 0-1, ended
        // in 2); 15 windows later its own failure holds, no further than the
        // last: one window past `consecutive` it opens, cooldown or not.
        let (calm, held) = (None, Some((0.1, false)));
        let mut windows = vec![held, held];
        windows.extend([calm; 15]);
        windows.extend([held; 3]);
        assert_eq!(opened(&windows), vec![1, 19]);
        // On and off around the bar: a flap.
        let mut windows = vec![held, held];
        windows.extend([calm; 15]);
        windows.extend([held, held, calm, held, held, calm, held]);
        assert_eq!(opened(&windows), vec![1]);
        // Held as long right after the end (the first third of the cooldown):
        // the same failure flapping.
        let mut windows = vec![held, held, calm, calm];
        windows.extend([held; 4]);
        assert_eq!(opened(&windows), vec![1]);
    }

    #[test]
    fn a_look_into_the_open_window_completes_a_run_under_way() {
        let catalogue = Catalogue::built_in().expect("the built-in catalogue loads");
        let pattern = &catalogue.patterns[0];
        let key = SeriesKey {
            service: "api".into(),
            signal: "service".into(),
            name: "error_rate".into(),
            attributes: String::new(),
        };
        let held = || Candidate {
            observed: 0.3,
            expected: 0.01,
            score: 1.0,
            onset: None,
            detail: String::new(),
            decisive: false,
        };
        let mut episodes = Episodes::default();
        // Nothing under way: a look opens nothing.
        assert!(!episodes.pending(0, &key));
        assert!(
            episodes
                .confirm_early((0, pattern), key.clone(), held(), 0, W)
                .is_none()
        );
        // One window held: the look into the next opens the episode, counting
        // the closed window only; the next close updates it.
        assert!(
            episodes
                .step((0, pattern), key.clone(), Some(held()), 0, W)
                .is_none()
        );
        assert!(episodes.pending(0, &key));
        let opened = episodes.confirm_early((0, pattern), key.clone(), held(), W, W);
        let Some(AnomalyEvent::Opened(anomaly)) = opened else {
            panic!("not opened: {opened:?}");
        };
        assert_eq!(
            (anomaly.onset_ms, anomaly.detected_ms, anomaly.windows),
            (0, W, 1)
        );
        assert!(!episodes.pending(0, &key));
        let closed = episodes.step((0, pattern), key.clone(), Some(held()), W, W);
        assert!(
            matches!(closed, Some(AnomalyEvent::Updated { windows: 2, .. })),
            "{closed:?}"
        );
        // A window that does not hold when it closes ends it.
        let ended = episodes.step((0, pattern), key.clone(), None, 2 * W, W);
        assert!(
            matches!(ended, Some(AnomalyEvent::Ended { .. })),
            "{ended:?}"
        );
        // In the cooldown a look is held to what its close would be: past the
        // first third, a run one window longer than `consecutive`. A look
        // that does not complete the run leaves it as it was.
        let later = 2 * W + 15 * W;
        assert!(
            episodes
                .step((0, pattern), key.clone(), Some(held()), later, W)
                .is_none()
        );
        let short = episodes.confirm_early((0, pattern), key.clone(), held(), later + W, W);
        assert!(short.is_none(), "{short:?}");
        assert!(episodes.pending(0, &key));
        assert!(
            episodes
                .step((0, pattern), key.clone(), Some(held()), later + W, W)
                .is_none()
        );
        let opened = episodes.confirm_early((0, pattern), key.clone(), held(), later + 2 * W, W);
        assert!(
            matches!(opened, Some(AnomalyEvent::Opened(_))),
            "{opened:?}"
        );
    }
}
