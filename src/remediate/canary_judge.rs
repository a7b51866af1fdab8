//! Whether a canary recovered, judged per instance: the instances acted on
//! against the instances left alone, before and after acting.
//!
//! The measures are those of the incident's own anomalies on the target
//! (error rate, request duration, gauges by metric name), read from the
//! window stage's per-instance health. For each, the canary's value relative
//! to the rest's after acting is compared with the same ratio before acting
//! (a difference in differences: what the instances had in common, such as
//! load or time of day, cancels out). A remedy that works takes the canary
//! back to its healthy level while the rest keep the fault, so the ratio
//! falls; one that does nothing leaves it where it was. The canary passes
//! when one measure improved by [`FACTOR`] and none worsened by it; it fails
//! when it improved on none, or its instances fell silent. Restarted or rolled
//! back pods often come back under new names: every instance not in the rest
//! counts as the canary.

use serde::{Deserialize, Serialize};

use crate::detect::SeriesKey;
use crate::window::instance_health::InstanceRow;

/// The change of the canary-to-rest ratio that counts as a difference: the
/// faults the playbooks remedy move their measures by 1.5x or more (the
/// catalogue's `min_ratio`), and a remedied canary returns the whole way.
pub const FACTOR: f64 = 1.5;
/// Requests a group needs in a window for its error rate or duration to count.
const MIN_REQUESTS: u64 = 5;
/// Added to error rates before taking ratios: a change from 0.1 % to 0 % is
/// not a tenfold improvement.
const ERROR_RATE_FLOOR: f64 = 0.01;

/// What a canary is judged on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Measure {
    ErrorRate,
    /// Mean request duration.
    Duration,
    /// The mean of a gauge, by metric name.
    Gauge(String),
}

impl Measure {
    /// The measure an anomaly of `key` speaks of, if instances report it.
    pub fn of(key: &SeriesKey) -> Option<Measure> {
        match key.signal.as_str() {
            "metric" => Some(Measure::Gauge(key.name.clone())),
            "service" | "operation" if key.name == "error_rate" => Some(Measure::ErrorRate),
            "service" | "operation" if key.name.ends_with("_ms") => Some(Measure::Duration),
            _ => None,
        }
    }

    fn name(&self) -> &str {
        match self {
            Measure::ErrorRate => "error rate",
            Measure::Duration => "mean duration (ms)",
            Measure::Gauge(name) => name,
        }
    }

    /// The measure over `rows`, when they say enough.
    fn value<'a>(&self, rows: impl Iterator<Item = &'a InstanceRow>) -> Option<f64> {
        let rows: Vec<&InstanceRow> = rows.collect();
        let requests: u64 = rows.iter().map(|r| r.requests).sum();
        match self {
            Measure::ErrorRate | Measure::Duration if requests < MIN_REQUESTS => None,
            Measure::ErrorRate => {
                Some(rows.iter().map(|r| r.errors).sum::<u64>() as f64 / requests as f64)
            }
            Measure::Duration => {
                Some(rows.iter().map(|r| r.duration_ms).sum::<f64>() / requests as f64)
            }
            Measure::Gauge(name) => {
                let values: Vec<f64> = rows
                    .iter()
                    .filter_map(|r| r.gauges.iter().find(|g| &g.0 == name).map(|g| g.1))
                    .collect();
                (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
            }
        }
    }
}

/// The measures of `incident`'s own anomalies on node `node` (not those its
/// callers see of it).
pub fn measures(incident: &crate::incident::Incident, node: &str) -> Vec<Measure> {
    let mut out: Vec<Measure> = incident
        .anomalies()
        .filter(|a| {
            let (own, pointed) = crate::incident::rank::implicated(&a.key);
            !pointed && own == node
        })
        .filter_map(|a| Measure::of(&a.key))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The verdict on a canary.
#[derive(Debug, Clone, PartialEq)]
pub enum Judgement {
    /// Better than the rest, by the measures in the text.
    Recovered(String),
    /// Not better, worse, or silent.
    Failed(String),
    /// No per-instance data for the measures.
    Unobserved,
}

/// Judges the canary: `rest` are the instances not acted on, `before` the
/// target's instance rows of the window before acting, `after` of a window
/// since.
pub fn judge(
    measures: &[Measure],
    rest: &[String],
    before: &[InstanceRow],
    after: &[InstanceRow],
) -> Judgement {
    let in_rest = |r: &&InstanceRow| rest.contains(&r.instance);
    let in_canary = |r: &&InstanceRow| !rest.contains(&r.instance);
    if before.iter().any(|r| in_canary(&r)) && !after.iter().any(|r| in_canary(&r)) {
        return Judgement::Failed("the canary instances sent nothing since".into());
    }
    let mut better = Vec::new();
    let mut worse = Vec::new();
    let mut same = Vec::new();
    for m in measures {
        let values = [
            m.value(before.iter().filter(in_canary)),
            m.value(before.iter().filter(in_rest)),
            m.value(after.iter().filter(in_canary)),
            m.value(after.iter().filter(in_rest)),
        ];
        let [Some(kb), Some(rb), Some(k), Some(r)] = values else {
            continue;
        };
        let floor = if *m == Measure::ErrorRate {
            ERROR_RATE_FLOOR
        } else {
            0.0
        };
        let (kb, rb, k, r) = (kb + floor, rb + floor, k + floor, r + floor);
        if [kb, rb, k, r].iter().any(|v| *v <= 0.0 || !v.is_finite()) {
            continue;
        }
        let change = (k / r) / (kb / rb);
        let text = format!(
            "{}: canary {:.3} -> {:.3}, rest {:.3} -> {:.3}",
            m.name(),
            kb - floor,
            k - floor,
            rb - floor,
            r - floor
        );
        if change <= 1.0 / FACTOR {
            better.push(text);
        } else if change >= FACTOR {
            worse.push(text);
        } else {
            same.push(text);
        }
    }
    if !worse.is_empty() {
        Judgement::Failed(format!("worse than the rest ({})", worse.join("; ")))
    } else if !better.is_empty() {
        Judgement::Recovered(better.join("; "))
    } else if !same.is_empty() {
        Judgement::Failed(format!("no better than the rest ({})", same.join("; ")))
    } else {
        Judgement::Unobserved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(instance: &str, requests: u64, errors: u64, ms: f64, memory: f64) -> InstanceRow {
        InstanceRow {
            service: "cart".into(),
            instance: instance.into(),
            requests,
            errors,
            duration_ms: ms * requests as f64,
            gauges: vec![("process.memory.usage".into(), memory)],
            ..Default::default()
        }
    }

    fn rest() -> Vec<String> {
        vec!["cart-1".into(), "cart-2".into()]
    }

    fn leaking() -> Vec<InstanceRow> {
        ["cart-0", "cart-1", "cart-2"]
            .iter()
            .map(|i| row(i, 100, 1, 40.0, 900.0))
            .collect()
    }

    fn memory() -> Vec<Measure> {
        vec![Measure::Gauge("process.memory.usage".into())]
    }

    #[test]
    fn a_restarted_pod_back_under_a_new_name_with_low_memory_recovered() {
        let mut after = leaking();
        after[0] = row("cart-7f9", 100, 1, 40.0, 200.0);
        after[1].gauges[0].1 = 950.0;
        let j = judge(&memory(), &rest(), &leaking(), &after);
        let Judgement::Recovered(text) = j else {
            panic!("{j:?}")
        };
        assert!(text.contains("canary 900.000 -> 200.000"), "{text}");
    }

    #[test]
    fn a_canary_no_better_than_the_rest_failed() {
        let mut after = leaking();
        for r in &mut after {
            r.gauges[0].1 = 980.0;
        }
        let j = judge(&memory(), &rest(), &leaking(), &after);
        assert!(
            matches!(&j, Judgement::Failed(t) if t.starts_with("no better")),
            "{j:?}"
        );
    }

    #[test]
    fn a_canary_better_on_one_measure_but_failing_on_another_failed() {
        let mut after = leaking();
        after[0] = row("cart-0", 100, 40, 40.0, 200.0);
        let both = [memory(), vec![Measure::ErrorRate]].concat();
        let j = judge(&both, &rest(), &leaking(), &after);
        assert!(
            matches!(&j, Judgement::Failed(t) if t.contains("worse") && t.contains("error rate")),
            "{j:?}"
        );
    }

    #[test]
    fn errors_gone_on_the_rolled_back_canary_while_the_rest_fail() {
        let before: Vec<InstanceRow> = ["cart-0", "cart-1", "cart-2"]
            .iter()
            .map(|i| row(i, 100, 30, 40.0, 500.0))
            .collect();
        let mut after = before.clone();
        after[0].errors = 0;
        let j = judge(&[Measure::ErrorRate], &rest(), &before, &after);
        assert!(matches!(j, Judgement::Recovered(_)), "{j:?}");
        // Differences the instances had before do not count as the canary's.
        let mut uneven = before.clone();
        uneven[0].errors = 0;
        let j = judge(&[Measure::ErrorRate], &rest(), &uneven, &after);
        assert!(matches!(j, Judgement::Failed(_)), "{j:?}");
    }

    #[test]
    fn silence_fails_and_missing_data_is_unobserved() {
        let after: Vec<InstanceRow> = leaking().into_iter().skip(1).collect();
        let j = judge(&memory(), &rest(), &leaking(), &after);
        assert_eq!(
            j,
            Judgement::Failed("the canary instances sent nothing since".into())
        );
        let j = judge(
            &[Measure::Gauge("other".into())],
            &rest(),
            &leaking(),
            &leaking(),
        );
        assert_eq!(j, Judgement::Unobserved);
        assert_eq!(
            judge(&memory(), &rest(), &[], &leaking()),
            Judgement::Unobserved
        );
        // Too few requests for a rate.
        let few: Vec<InstanceRow> = leaking()
            .into_iter()
            .map(|mut r| {
                r.requests = 1;
                r
            })
            .collect();
        assert_eq!(
            judge(&[Measure::ErrorRate], &rest(), &few, &few),
            Judgement::Unobserved
        );
    }

    #[test]
    fn measures_come_from_the_anomalies_series() {
        let key = |signal: &str, name: &str| SeriesKey {
            service: "cart".into(),
            signal: signal.into(),
            name: name.into(),
            attributes: String::new(),
        };
        assert_eq!(
            Measure::of(&key("service", "error_rate")),
            Some(Measure::ErrorRate)
        );
        assert_eq!(
            Measure::of(&key("operation", "p95_ms")),
            Some(Measure::Duration)
        );
        assert_eq!(
            Measure::of(&key("metric", "jvm.memory.used")),
            Some(Measure::Gauge("jvm.memory.used".into()))
        );
        assert_eq!(Measure::of(&key("service", "requests")), None);
        assert_eq!(Measure::of(&key("log", "error")), None);
    }
}
