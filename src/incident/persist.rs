//! The incidents survive a restart: `incidents.json` under `store.path`, written
//! atomically (a temporary file renamed over the old one) when they change and at
//! stop, read at start. A file that cannot be read or parsed stops the engine at
//! start with an error naming it: an empty incident history must never be a
//! silent consequence of a damaged file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::warn;

use super::Incident;

/// The file's format version.
const VERSION: u32 = 1;

/// Why the stored incidents could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("incident store {path}: {reason} (move the file away to start with no incident history)")]
pub struct IncidentStoreError {
    pub path: PathBuf,
    pub reason: String,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    version: u32,
    next_id: u64,
    incidents: Vec<Incident>,
}

/// The incidents stored at `path` and the next id (none stored: empty, 1).
pub(super) fn load(path: &Path) -> Result<(Vec<Incident>, u64), IncidentStoreError> {
    let error = |reason: String| IncidentStoreError {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 1)),
        Err(e) => return Err(error(format!("cannot read it: {e}"))),
    };
    let stored: Stored =
        serde_json::from_slice(&bytes).map_err(|e| error(format!("not valid: {e}")))?;
    if stored.version != VERSION {
        return Err(error(format!(
            "format version {} (this engine reads {VERSION})",
            stored.version
        )));
    }
    Ok((stored.incidents, stored.next_id.max(1)))
}

/// Writes the incidents; a failure is logged (the engine goes on, and retries at
/// the next change).
pub(super) fn save(path: &Path, incidents: &[Incident], next_id: u64) -> bool {
    let stored = Stored {
        version: VERSION,
        next_id,
        incidents: incidents.to_vec(),
    };
    let result = serde_json::to_vec(&stored)
        .map_err(std::io::Error::other)
        .and_then(|bytes| {
            let partial = path.with_extension("json.partial");
            std::fs::write(&partial, bytes)?;
            std::fs::rename(&partial, path)
        });
    if let Err(error) = &result {
        warn!(%error, path = %path.display(), "failed to write the incidents");
    }
    result.is_ok()
}
