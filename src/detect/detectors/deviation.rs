//! `kind = "deviation"`: the value against its baseline.

use serde::Deserialize;

use statrs::function::factorial::binomial;

use super::{Candidate, Detect, Eval, Scope, resolution, short};
use crate::detect::call_mix::{
    POOLED_CALLER_LAST_CALLS, POOLED_CALLS, POOLED_LAST_CALLS, POOLED_REQUESTS,
    RECENT_CALLER_LAST_CALLS, RECENT_CALLS, RECENT_LAST_CALLS, RECENT_REQUESTS,
};
use crate::detect::catalogue::{Direction, SeriesKind};
use crate::detect::rows::{CALLS_PER_REQUEST, LAST_CALL_SHARE, Row};

/// Fires when the deviation's score reaches `min_score` in `direction`, the
/// change is at least `min_delta` (absolute) and `min_ratio` (observed /
/// expected, or its inverse going down), the window's volume (requests or
/// calls; for `calls_per_request`, the caller's requests) is at least
/// `min_volume` and the expectation at least `min_expected`; a rise must also
/// go beyond the series' own recent bursts (`detect::excursion`). Below
/// `min_volume`, a latency rise over two calls or more is judged by the
/// window's median call (`Deviation::median_of_few`), and a call mix by the
/// edge's last windows pooled, once they hold `min_volume` requests, and only
/// when decisive (`Deviation::pool`); any other window below it is not
/// judged (`Detect::judges`).
///
/// It is decisive when its two-sided tail, `1 - score`, is at most
/// `(1 - min_score)^consecutive`: this window alone is as unlikely under the
/// baseline as the pattern's whole run at the threshold (z >= 5.7 for 0.9999
/// and two windows).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deviation {
    pub direction: Direction,
    pub min_score: f64,
    #[serde(default)]
    pub min_delta: f64,
    #[serde(default)]
    pub min_ratio: f64,
    #[serde(default)]
    pub min_volume: f64,
    #[serde(default)]
    pub min_expected: f64,
}

impl Deviation {
    /// Whether `row`'s window has fewer calls (or requests) behind `measure`
    /// than `min_volume`; metric and log rows count no calls.
    fn few(&self, row: &Row, measure: &str) -> bool {
        !matches!(
            row.kind,
            SeriesKind::Metric | SeriesKind::Log | SeriesKind::LogTemplate
        ) && row.volume_for(measure) < self.min_volume
    }

    /// What `row`'s window is judged by: its value and basis, or (calls,
    /// requests) of its whole pool, from which [`Deviation::sharper_pool`]
    /// chooses once the expectation is known; `None` when the window is
    /// below `min_volume` and cannot be judged.
    fn judged_value(&self, row: &Row, measure: &str, value: f64) -> Option<Judged> {
        if !self.few(row, measure) {
            return Some(Judged::Value(value, Basis::Window));
        }
        if let Some(median) = self.median_of_few(row, measure, row.volume_for(measure)) {
            return Some(Judged::Value(median, Basis::MedianOfFew));
        }
        self.pool(row, measure, Pool::Whole).map(Judged::Pool)
    }

    /// A call mix too thin to judge in its window, pooled over the edge's last
    /// windows ([`crate::detect::call_mix`]) once they hold `min_volume` of
    /// the caller's requests: (calls, requests). [`Pool::Recent`] is the
    /// fewest newest of those windows holding enough.
    ///
    /// Where requests end ([`LAST_CALL_SHARE`]) is pooled the same way: the
    /// edge's last calls over the caller's last calls.
    fn pool(&self, row: &Row, measure: &str, pool: Pool) -> Option<(f64, f64)> {
        let (count, base) = pool_columns(measure, pool)?;
        let calls = row.values.get(count).copied()?;
        let requests = row.values.get(base).copied()?;
        (requests > 0.0 && requests >= self.min_volume).then_some((calls, requests))
    }

    /// Judges a pooled window by its whole pool or its recent one, whichever
    /// deviates in this detector's direction the less likely under
    /// `expected`: a step shows undiluted in the recent pool. Two pools are
    /// two tests: the chosen one's tail is doubled (`tests`).
    fn sharper_pool(
        &self,
        row: &Row,
        measure: &str,
        expected: f64,
        whole: (f64, f64),
    ) -> (f64, Basis) {
        let rate = pooled_rate(measure, expected);
        let fits = |(calls, requests): (f64, f64)| match self.direction {
            Direction::Up => calls > rate * requests,
            Direction::Down => calls < rate * requests,
            Direction::Both => true,
        };
        let tail = |(calls, requests): (f64, f64)| 1.0 - pooled_score(calls, rate * requests);
        let (chosen, tests) = match self.pool(row, measure, Pool::Recent) {
            Some(recent) if fits(recent) && (!fits(whole) || tail(recent) < tail(whole)) => {
                (recent, 2.0)
            }
            Some(_) => (whole, 2.0),
            None => (whole, 1.0),
        };
        let (calls, requests) = chosen;
        (
            calls / requests,
            Basis::Pooled {
                calls,
                requests,
                tests,
            },
        )
    }

    /// A latency rise on a series below `min_volume`: its quantiles are those of a
    /// few calls, so the window is judged by its median call (`p50_ms`) against
    /// the usual tail, and only upward (a few fast calls say nothing). `None`
    /// for any other measure or direction, and below two calls: one call's own
    /// tail is unknown (latencies are heavy-tailed), so one slow call is no
    /// evidence, however slow.
    fn median_of_few(&self, row: &Row, measure: &str, volume: f64) -> Option<f64> {
        let latency = measure.ends_with("_ms") && measure != "p50_ms";
        (latency && volume >= 2.0 && self.direction == Direction::Up)
            .then(|| row.measure("p50_ms"))
            .flatten()
    }
}

/// Which of an edge row's pools ([`crate::detect::call_mix`]).
#[derive(Debug, Clone, Copy)]
enum Pool {
    /// The edge's last windows.
    Whole,
    /// The fewest newest of them holding enough.
    Recent,
}

/// The (count, base) columns of `measure`'s `pool`; `None` for a measure
/// that is not pooled.
fn pool_columns(measure: &str, pool: Pool) -> Option<(&'static str, &'static str)> {
    Some(match (measure, pool) {
        (CALLS_PER_REQUEST, Pool::Whole) => (POOLED_CALLS, POOLED_REQUESTS),
        (CALLS_PER_REQUEST, Pool::Recent) => (RECENT_CALLS, RECENT_REQUESTS),
        (LAST_CALL_SHARE, Pool::Whole) => (POOLED_LAST_CALLS, POOLED_CALLER_LAST_CALLS),
        (LAST_CALL_SHARE, Pool::Recent) => (RECENT_LAST_CALLS, RECENT_CALLER_LAST_CALLS),
        _ => return None,
    })
}

/// What [`Deviation::judged_value`] finds a window judged by.
enum Judged {
    /// A value, on a basis other than a pool.
    Value(f64, Basis),
    /// The whole pool's (calls, requests); the pool is chosen later.
    Pool((f64, f64)),
}

/// What a window is judged by.
#[derive(Debug, Clone, Copy)]
enum Basis {
    /// Its own value.
    Window,
    /// The median of its few calls ([`Deviation::median_of_few`]).
    MedianOfFew,
    /// The calls per request of the edge's last windows, pooled
    /// ([`Deviation::pool`], [`Deviation::sharper_pool`]), and how many
    /// pools were tested.
    Pooled {
        calls: f64,
        requests: f64,
        tests: f64,
    },
}

/// The two-sided score of `calls` counted where `expected` were: calls of
/// independent requests are Poisson, so its exact tail (statrs) on the side
/// of the deviation, doubled. The normal approximation the other bases use
/// understates how unlikely few calls are where many were expected (1 call
/// where 21 were: 3e-8, against 1e-5 at its z of -4.4).
fn pooled_score(calls: f64, expected: f64) -> f64 {
    use statrs::distribution::{DiscreteCDF, Poisson};
    let Ok(poisson) = Poisson::new(expected) else {
        return 0.0;
    };
    let k = calls.round().max(0.0) as u64;
    let tail = if calls < expected {
        poisson.cdf(k)
    } else if k == 0 {
        1.0
    } else {
        poisson.sf(k - 1)
    };
    1.0 - (2.0 * tail).min(1.0)
}

/// The rate a pool's count is expected at: the baseline's; a share, like
/// a rate's resolution (`detectors::resolution`), at least 1% (a callee never
/// seen last becomes last by chance now and then: 0 would make any count
/// infinitely unlikely).
fn pooled_rate(measure: &str, expected: f64) -> f64 {
    if measure == LAST_CALL_SHARE {
        expected.clamp(0.01, 0.99)
    } else {
        expected.max(0.0)
    }
}

/// The score of a window whose median of `calls` calls deviates with `score`
/// against the baseline of the window's tail quantile. A window's tail is at
/// least any of its calls, so one call goes as far with probability at most
/// `p = 1 - score`. The median is the nearest-rank one (`window::quantiles`):
/// `m = floor(n / 2) + 1` of the `n` calls are at or above it, all of them that
/// far with probability at most C(n, m) p^m (calls taken as independent).
fn few_calls_score(score: f64, calls: f64) -> f64 {
    let n = calls.round().max(1.0) as u64;
    let m = n / 2 + 1;
    let tail = binomial(n, m) * (1.0 - score).powi(i32::try_from(m).unwrap_or(i32::MAX));
    1.0 - tail.min(1.0)
}

impl Detect for Deviation {
    fn problems(&self, _series: SeriesKind) -> Vec<String> {
        let mut out = Vec::new();
        if !(0.0..=1.0).contains(&self.min_score) {
            out.push("min_score must be in [0, 1]".to_string());
        }
        if self.min_ratio < 0.0 {
            out.push("min_ratio must not be negative".to_string());
        }
        out
    }

    /// Below `min_volume`, only a latency rise over two calls or more is judged
    /// ([`Deviation::median_of_few`]).
    fn judges(&self, eval: &Eval<'_>) -> bool {
        self.judged_value(eval.row, eval.measure, eval.value)
            .is_some()
    }

    fn evaluate(&self, eval: &Eval<'_>, scope: &mut Scope<'_>) -> Option<Candidate> {
        let series = &mut *scope.series;
        let (row, t, value, measure) = (eval.row, eval.t, eval.value, eval.measure);
        let state = series.ready(eval.key, measure)?;
        let expected = state.baseline.expected(t);
        let (value, basis) = match self.judged_value(row, measure, value)? {
            Judged::Value(value, basis) => (value, basis),
            Judged::Pool(whole) => self.sharper_pool(row, measure, expected, whole),
        };
        let volume = match basis {
            Basis::Pooled { requests, .. } => requests,
            _ => row.volume_for(measure),
        };
        let floor = resolution(measure, expected, volume);
        let d = state.baseline.deviation(t, value, floor);
        let up = value > d.expected;
        let ok_direction = match self.direction {
            Direction::Up => up,
            Direction::Down => !up,
            Direction::Both => true,
        };
        let ratio_ok = self.min_ratio <= 0.0
            || if up {
                value >= d.expected.max(0.0) * self.min_ratio
            } else {
                value * self.min_ratio <= d.expected
            };
        // A rise no higher than the series' own recent bursts is one more of
        // them (see `detect::excursion`).
        let usual_burst = up && state.baseline.burst_peak().is_some_and(|p| value <= p);
        let score = match basis {
            Basis::Window => d.score(),
            Basis::MedianOfFew => few_calls_score(d.score(), volume),
            Basis::Pooled {
                calls,
                requests,
                tests,
            } => {
                let tail = 1.0 - pooled_score(calls, pooled_rate(measure, d.expected) * requests);
                1.0 - (tests * tail).min(1.0)
            }
        };
        let run = i32::try_from(eval.pattern.consecutive.max(1)).unwrap_or(i32::MAX);
        let decisive = 1.0 - score <= (1.0 - self.min_score).powi(run);
        // A pool shares its windows with the pools before it: only a decisive
        // one is evidence of its own.
        let pooled_weak = matches!(basis, Basis::Pooled { .. }) && !decisive;
        (!pooled_weak
            && ok_direction
            && !usual_burst
            && score >= self.min_score
            && (value - d.expected).abs() >= self.min_delta
            && ratio_ok
            && d.expected.abs() >= self.min_expected)
            .then(|| Candidate {
                observed: value,
                expected: d.expected,
                score,
                onset: None,
                detail: match basis {
                    Basis::MedianOfFew => format!(
                        "the median of {volume:.0} calls up to {} ({measure} expected {}, z {:.1})",
                        short(value),
                        short(d.expected),
                        d.z
                    ),
                    Basis::Pooled { calls, requests, .. } => format!(
                        "{measure} {} to {} over the last {requests:.0} requests, too few for one window ({calls:.0} calls where {:.1} were expected, P {:.0e})",
                        if up { "up" } else { "down" },
                        short(value),
                        pooled_rate(measure, d.expected) * requests,
                        1.0 - score
                    ),
                    Basis::Window => {
                    format!(
                        "{measure} {} to {} (expected {}, z {:.1})",
                        if up { "up" } else { "down" },
                        short(value),
                        short(d.expected),
                        d.z
                    )
                    }
                },
                decisive,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::catalogue::SeriesKind;
    use std::collections::HashMap;

    fn up_by_share() -> Deviation {
        Deviation {
            direction: Direction::Up,
            min_score: 0.9999,
            min_delta: 0.1,
            min_ratio: 2.0,
            min_volume: 20.0,
            min_expected: 0.0,
        }
    }

    fn edge(values: &[(&'static str, f64)]) -> Row {
        Row {
            kind: SeriesKind::Edge,
            service: "web".into(),
            metric: String::new(),
            metric_type: String::new(),
            unit: String::new(),
            attributes: "callee=catalog".into(),
            tag: "service".into(),
            values: HashMap::from_iter(values.iter().copied()),
        }
    }

    fn pool_of(basis: Basis) -> (f64, f64, f64) {
        match basis {
            Basis::Pooled {
                calls,
                requests,
                tests,
            } => (calls, requests, tests),
            other => panic!("not pooled: {other:?}"),
        }
    }

    #[test]
    fn a_step_is_judged_by_the_recent_pool_once_it_is_the_less_likely() {
        // The whole pool: 18 of 96 last calls ended at the callee.
        let row = |recent_last, recent_caller_last| {
            edge(&[
                (POOLED_LAST_CALLS, 18.0),
                (POOLED_CALLER_LAST_CALLS, 96.0),
                (RECENT_LAST_CALLS, recent_last),
                (RECENT_CALLER_LAST_CALLS, recent_caller_last),
            ])
        };
        let d = up_by_share();
        let judge = |row: &Row| {
            let whole = d.pool(row, LAST_CALL_SHARE, Pool::Whole).expect("pooled");
            d.sharper_pool(row, LAST_CALL_SHARE, 0.02, whole)
        };
        // The share was 0.02; the last 20 last calls (3 windows) ended there
        // 16 times: the recent pool is the sharper evidence, tested twice.
        let (value, basis) = judge(&row(16.0, 20.0));
        assert_eq!(value, 0.8);
        assert_eq!(pool_of(basis), (16.0, 20.0, 2.0));
        // A recent pool going the other way is not chosen, though still a test.
        assert_eq!(pool_of(judge(&row(0.0, 20.0)).1), (18.0, 96.0, 2.0));
        // Below `min_volume`, only the whole pool: one test.
        assert_eq!(pool_of(judge(&row(10.0, 12.0)).1), (18.0, 96.0, 1.0));
    }

    #[test]
    fn a_pooled_call_mix_is_scored_by_its_exact_poisson_tail() {
        // 1 call where 21 were expected: 2 e^-21 (1 + 21) = 3.3e-8.
        let tail = 1.0 - pooled_score(1.0, 21.0);
        assert!((tail - 3.336e-8).abs() < 1e-11, "{tail}");
        // No call where 20 were: 2 e^-20, decisive at 0.9999 over two windows.
        assert!(1.0 - pooled_score(0.0, 20.0) < 1e-8);
        // What was expected is no evidence; nor is anything against nothing.
        assert_eq!(pooled_score(20.0, 20.0), 0.0);
        assert_eq!(pooled_score(0.0, 0.0), 0.0);
        // Upwards too: 45 calls where 20 were expected.
        assert!(1.0 - pooled_score(45.0, 20.0) < 1e-5);
    }

    #[test]
    fn more_calls_at_the_median_are_stronger_evidence() {
        // A window tail that deviates with a tail of 1e-3: two calls both that
        // far (the nearest-rank median of two is the lower) have at most 1e-6.
        let p = 1e-3;
        let two = 1.0 - few_calls_score(1.0 - p, 2.0);
        assert!((two - 1e-6).abs() < 1e-12, "{two}");
        // Five calls: three at or above the median, C(5, 3) = 10 ways.
        let five = 1.0 - few_calls_score(1.0 - p, 5.0);
        assert!((five - 1e-8).abs() < 1e-13, "{five}");
        // Weak deviations stay weak: no score above 0 from a tail of 1.
        assert_eq!(few_calls_score(0.0, 4.0), 0.0);
    }
}
