//! `[detect]`: the detection stage's configuration.

use std::path::PathBuf;

use serde::Deserialize;

use super::baseline::BaselineParams;
use super::univariate::UnivariateParams;

/// Detection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectConfig {
    /// Whether closed windows are run through the detectors.
    pub enabled: bool,
    /// The failure-pattern catalogue: a TOML file or a directory of them. The
    /// default `models` falls back to the built-in copy when it does not exist;
    /// empty always uses the built-in copy.
    pub catalogue: PathBuf,
    /// Most series with a baseline (about 1.3 KB each); more are counted, not tracked.
    pub max_series: usize,
    /// Most series run through the univariate detector (about 55 KB each).
    pub max_univariate_series: usize,
    /// Most mined log templates.
    pub max_templates: usize,
    /// Share of equal tokens for a log message to join a template.
    pub template_similarity: f64,
    /// Windows of a service's logs mined before its new templates are anomalies.
    pub template_warmup: u32,
    /// Windows after a service's version change within which its anomalies are
    /// classed `faulty_deployment`.
    pub deploy_windows: u32,
    /// Closed windows between snapshots of the baselines (with `store.path`).
    pub snapshot_every: u32,
    /// Most anomalies kept for the `anomalies` table.
    pub max_anomalies: usize,
    /// How long an ended anomaly stays in the `anomalies` table (event time),
    /// independent of `window.retain`.
    #[serde(with = "humantime_serde")]
    pub anomaly_retain: std::time::Duration,
    /// Baseline learning.
    pub baseline: BaselineParams,
    /// The univariate detector's parameters, one set for every series (and for
    /// `homeostat replay`).
    pub univariate: UnivariateParams,
}

impl DetectConfig {
    /// Every rule the section breaks, one line each.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = self.univariate.problems("detect.univariate");
        problems.extend(self.baseline.problems("detect.baseline"));
        if !(self.template_similarity > 0.0 && self.template_similarity <= 1.0) {
            problems.push("detect.template_similarity must be in (0, 1]".to_string());
        }
        for (key, value) in [
            ("detect.max_series", self.max_series),
            ("detect.max_templates", self.max_templates),
            ("detect.max_anomalies", self.max_anomalies),
            ("detect.snapshot_every", self.snapshot_every as usize),
        ] {
            if value == 0 {
                problems.push(format!("{key} must be positive"));
            }
        }
        problems
    }
}
