//! The ranking's correlation signal: how closely a candidate's anomalous
//! series move with the symptoms (the series of the incident's most upstream
//! anomalous nodes), Pearson's r over the recent windows (`ndarray`),
//! discounted by its significance (Student's t, `statrs`).

use std::collections::{BTreeMap, HashSet};

use ndarray::{Array1, Array2, Axis};
use statrs::distribution::{ContinuousCDF, StudentsT};

use super::{Candidate, Evidence, Inputs, Signal, evidence};
use crate::detect::SeriesKey;
use crate::incident::history::History;

/// Fewest windows a correlation is computed over.
const MIN_CORRELATION_WINDOWS: usize = 5;

/// The nodes no other anomalous node calls (the most upstream symptoms), with
/// the keys of their anomalous series.
pub(super) fn symptom_series<'a>(
    inputs: &Inputs<'_>,
    candidates: &'a BTreeMap<String, Candidate<'a>>,
) -> Vec<(&'a str, SeriesKey)> {
    let nodes: Vec<&str> = candidates.keys().map(String::as_str).collect();
    let front: HashSet<&str> = nodes
        .iter()
        .copied()
        .filter(|n| {
            !nodes
                .iter()
                .any(|o| o != n && inputs.graph.callees(o).any(|c| c == *n))
        })
        .collect();
    candidates
        .iter()
        .filter(|(n, _)| front.contains(n.as_str()))
        .flat_map(|(n, c)| c.anomalies.iter().map(move |a| (n.as_str(), a.key.clone())))
        .collect()
}

/// The rows of `keys` over the windows every one of them covers, z-scored
/// (missing values at the row mean, so they weigh nothing).
fn standardised(history: &History, keys: &[&SeriesKey]) -> Option<Array2<f64>> {
    let n = history.starts().len();
    let mut m = Array2::<f64>::from_elem((keys.len(), n), f64::NAN);
    for (i, key) in keys.iter().enumerate() {
        let values = history.values(key)?;
        for (j, v) in values.iter().enumerate().take(n) {
            m[[i, j]] = *v;
        }
    }
    for mut row in m.axis_iter_mut(Axis(0)) {
        let finite: Vec<f64> = row.iter().copied().filter(|v| v.is_finite()).collect();
        if finite.len() < MIN_CORRELATION_WINDOWS {
            return None;
        }
        let mean = finite.iter().sum::<f64>() / finite.len() as f64;
        let sd =
            (finite.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / finite.len() as f64).sqrt();
        row.mapv_inplace(|v| {
            if v.is_finite() && sd > 0.0 {
                (v - mean) / sd
            } else {
                0.0
            }
        });
    }
    Some(m)
}

/// Pearson's r between one standardised row and the mean symptom row, and its
/// two-sided p-value under Student's t with n - 2 degrees of freedom.
fn pearson(a: &Array1<f64>, b: &Array1<f64>) -> Option<(f64, f64)> {
    let n = a.len() as f64;
    let (sa, sb) = (a.dot(a).sqrt(), b.dot(b).sqrt());
    if sa == 0.0 || sb == 0.0 || n < MIN_CORRELATION_WINDOWS as f64 {
        return None;
    }
    let r = (a.dot(b) / (sa * sb)).clamp(-1.0, 1.0);
    let t = r * ((n - 2.0) / (1.0 - r * r).max(1e-12)).sqrt();
    let dist = StudentsT::new(0.0, 1.0, n - 2.0).ok()?;
    Some((r, 2.0 * (1.0 - dist.cdf(t.abs()))))
}

pub(super) fn correlation_signal(
    history: &History,
    node: &str,
    c: &Candidate<'_>,
    symptoms: &[(&str, SeriesKey)],
) -> Evidence {
    let others: Vec<&SeriesKey> = symptoms
        .iter()
        .filter(|(n, _)| *n != node)
        .map(|(_, k)| k)
        .collect();
    let own: Vec<&SeriesKey> = c.anomalies.iter().map(|a| &a.key).collect();
    if others.is_empty() {
        return evidence(Signal::Correlation, 0.0, String::new());
    }
    let mut best: Option<(f64, f64, &SeriesKey)> = None;
    for key in own {
        let mut keys = vec![key];
        keys.extend(others.iter().copied());
        let Some(m) = standardised(history, &keys) else {
            continue;
        };
        let symptom = m
            .slice_axis(Axis(0), ndarray::Slice::from(1..))
            .mean_axis(Axis(0));
        let Some((r, p)) = symptom.and_then(|s| pearson(&m.row(0).to_owned(), &s)) else {
            continue;
        };
        if best.is_none_or(|(b, _, _)| r.abs() > b.abs()) {
            best = Some((r, p, key));
        }
    }
    match best {
        Some((r, p, key)) => evidence(
            Signal::Correlation,
            r.abs() * (1.0 - p),
            format!("{key} moves with the symptoms: r = {r:.2} (p = {p:.3})"),
        ),
        None => evidence(Signal::Correlation, 0.0, String::new()),
    }
}
