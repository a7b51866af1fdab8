//! Small state files under `store.path` (incidents, deployments): JSON with a
//! format version, written atomically (a temporary file renamed over the old
//! one), read at start. A file that cannot be read or parsed stops the engine at
//! start with an error naming it: an empty history must never be the silent
//! consequence of a damaged file.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::warn;

/// A state file that could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason} (move the file away to start without it)")]
pub struct StateFileError {
    pub path: PathBuf,
    pub reason: String,
}

#[derive(serde::Deserialize)]
struct Versioned<T> {
    version: u32,
    data: T,
}

#[derive(Serialize)]
struct VersionedRef<'a, T> {
    version: u32,
    data: &'a T,
}

/// The state stored at `path` in format `version`; `None` when there is none.
pub fn load<T: DeserializeOwned>(path: &Path, version: u32) -> Result<Option<T>, StateFileError> {
    let error = |reason: String| StateFileError {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(error(format!("cannot read it: {e}"))),
    };
    let stored: Versioned<serde_json::Value> =
        serde_json::from_slice(&bytes).map_err(|e| error(format!("not valid: {e}")))?;
    if stored.version != version {
        return Err(error(format!(
            "format version {} (this engine reads {version})",
            stored.version
        )));
    }
    serde_json::from_value(stored.data)
        .map(Some)
        .map_err(|e| error(format!("not valid: {e}")))
}

/// Writes `bytes` to `path` atomically: to `<path>.partial`, then renamed over it,
/// so a crash leaves the old file or the new one, never half of one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let partial = path.with_extension("json.partial");
    std::fs::write(&partial, bytes)?;
    std::fs::rename(&partial, path)
}

/// Writes `data` in format `version`; a failure is logged and returns false (the
/// caller retries at its next change).
pub fn save<T: Serialize>(path: &Path, version: u32, data: &T) -> bool {
    let result = serde_json::to_vec(&VersionedRef { version, data })
        .map_err(std::io::Error::other)
        .and_then(|bytes| write_atomic(path, &bytes));
    if let Err(error) = &result {
        warn!(%error, path = %path.display(), "failed to write a state file");
    }
    result.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_absence_damage_and_version() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("state.json");
        assert_eq!(load::<Vec<u32>>(&path, 1).expect("absent"), None);
        assert!(save(&path, 1, &vec![1u32, 2]));
        assert_eq!(load::<Vec<u32>>(&path, 1).expect("read"), Some(vec![1, 2]));
        let error = load::<Vec<u32>>(&path, 2).expect_err("other version");
        assert!(error.to_string().contains("format version 1"), "{error}");
        std::fs::write(&path, b"{ damaged").expect("damage");
        let error = load::<Vec<u32>>(&path, 1).expect_err("damaged");
        assert!(error.to_string().contains("state.json"), "{error}");
    }
}
