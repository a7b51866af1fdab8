//! `[window]`: the window stage's configuration.

use std::time::Duration;

use serde::Deserialize;

/// Event-time windows.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    /// Tumbling window length.
    #[serde(with = "humantime_serde")]
    pub size: Duration,
    /// How far behind the newest event time a record may be and still count.
    #[serde(with = "humantime_serde")]
    pub allowed_lateness: Duration,
    /// Processing time without input after which open windows close.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How much event-time history of closed windows is kept.
    #[serde(with = "humantime_serde")]
    pub retain: Duration,
    /// Event time a span waits in the pairing store for its parent or child.
    #[serde(with = "humantime_serde")]
    pub pair_ttl: Duration,
    /// Most spans held in the pairing store; overflow is counted and not paired.
    pub max_pending_pairs: usize,
    /// Most series (rows) per table per window; overflow is counted and dropped.
    pub max_series: usize,
    /// Most record identities remembered per window for de-duplication.
    pub max_dedup_keys: usize,
    /// Records stamped further than this in the future are rejected.
    #[serde(with = "humantime_serde")]
    pub max_future_skew: Duration,
    /// Share of a window after which (by the watermark) its request and call
    /// statistics so far are offered to detection once, before it closes, so
    /// a failure already seen in the last closed window is confirmed without
    /// waiting for the next to close (0: never).
    pub early_look: f64,
}

impl WindowConfig {
    /// Every rule the section breaks, one line each.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.size < Duration::from_millis(1) {
            problems.push("window.size must be at least 1ms".to_string());
        }
        if self.idle_timeout.is_zero() {
            problems.push("window.idle_timeout must be positive".to_string());
        }
        if self.retain < self.size {
            problems.push("window.retain must be at least window.size".to_string());
        }
        if !(0.0..1.0).contains(&self.early_look) {
            problems.push("window.early_look must be at least 0 and below 1".to_string());
        }
        if self.max_series == 0 {
            problems.push("window.max_series must be positive".to_string());
        }
        problems
    }
}
