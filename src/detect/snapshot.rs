//! The detection state that survives a restart: baselines and per-series detector
//! state, the log template miner, and the anomaly log, written atomically (a
//! temporary file renamed over the old one) as JSON.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tracing::warn;

use super::anomaly::{Anomaly, SeriesKey};
use super::drain::Drain;
use super::series::SeriesState;

/// 2: seasonal profiles hold mean values per slot (1 held offsets against a
/// moving daily mean); an older snapshot is ignored and the baselines relearn.
const SNAPSHOT_VERSION: u32 = 2;

/// The persisted part of the detection stage.
#[derive(Serialize, Deserialize)]
pub(crate) struct Snapshot {
    version: u32,
    window_ms: i64,
    pub(crate) series: Vec<(SeriesKey, String, SeriesState)>,
    pub(crate) drain: Drain,
    pub(crate) template_windows: HashMap<String, u32>,
    /// The anomaly log, so the `anomalies` table survives a restart.
    #[serde(default)]
    pub(crate) anomalies: Vec<Anomaly>,
    /// Humans' verdicts (see `detect::feedback`).
    #[serde(default)]
    pub(crate) tolerances: Vec<super::feedback::Tolerance>,
}

impl Snapshot {
    pub(crate) fn new(
        window_ms: i64,
        series: Vec<(SeriesKey, String, SeriesState)>,
        drain: Drain,
        template_windows: HashMap<String, u32>,
        anomalies: Vec<Anomaly>,
        tolerances: Vec<super::feedback::Tolerance>,
    ) -> Self {
        Self {
            version: SNAPSHOT_VERSION,
            window_ms,
            series,
            drain,
            template_windows,
            anomalies,
            tolerances,
        }
    }

    /// Writes the snapshot to `path`; a failure is logged (detection goes on).
    pub(crate) fn write(&self, path: &Path) {
        let result = serde_json::to_vec(self)
            .map_err(std::io::Error::other)
            .and_then(|bytes| crate::persist::write_atomic(path, &bytes));
        if let Err(error) = result {
            warn!(%error, path = %path.display(), "failed to write the detection snapshot");
        }
    }

    /// The snapshot at `path` if there is a usable one for windows of `window_ms`;
    /// why not is logged.
    pub(crate) fn read(path: &Path, window_ms: i64) -> Option<Snapshot> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(error) => {
                warn!(%error, path = %path.display(), "cannot read the detection snapshot; baselines start from zero");
                return None;
            }
        };
        match serde_json::from_slice::<Snapshot>(&bytes) {
            Ok(s) if s.version == SNAPSHOT_VERSION && s.window_ms == window_ms => Some(s),
            Ok(_) => {
                warn!(path = %path.display(), "detection snapshot is from another version or window size; ignored");
                None
            }
            Err(error) => {
                warn!(%error, path = %path.display(), "detection snapshot is unreadable; ignored");
                None
            }
        }
    }
}
