//! The small arithmetic the univariate detector's views share: clipping what
//! is learned to the body of a history, the views' p-values combined, and a
//! window's mean and spread.

use crate::detect::tail::TailWindow;

/// `v` clipped to `history`'s body stretched `m`-fold (see
/// [`TailWindow::body_range`]). `m = 0` clips nothing.
pub(super) fn clipped(history: &TailWindow, v: f64, m: f64) -> f64 {
    match history.body_range(m) {
        Some((lo, hi)) if m > 0.0 => v.clamp(lo.min(hi), hi.max(lo)),
        _ => v,
    }
}

/// The views' p-values combined by a weighted Bonferroni bound: `min p / w`
/// with the weights summing to 1. A view with a fixed weight (> 0) gets it;
/// the others share what is left alike (all alike when none is fixed).
pub(super) fn combine(views: &[(f64, f64)]) -> f64 {
    let fixed: f64 = views.iter().map(|(_, w)| w.max(0.0)).sum();
    let shared = views.iter().filter(|(_, w)| *w <= 0.0).count();
    let rest = if shared > 0 {
        ((1.0 - fixed) / shared as f64).max(f64::MIN_POSITIVE)
    } else {
        0.0
    };
    views
        .iter()
        .map(|(p, w)| p / if *w > 0.0 { *w } else { rest })
        .fold(1.0f64, f64::min)
}

/// Mean and root of the summed squared deviations.
pub(super) fn mean_and_spread(values: impl Iterator<Item = f64> + Clone) -> (f64, f64) {
    let n = values.clone().count().max(1) as f64;
    let mean = values.clone().sum::<f64>() / n;
    let spread = values.map(|v| (v - mean).powi(2)).sum::<f64>().sqrt();
    (mean, spread)
}
