//! Where incidents (with their member anomalies, root causes and evidence) are
//! kept across restarts: an embedded redb database, `incidents.redb` under
//! `store.path`. One row per incident (id -> JSON), so a window that changes one
//! incident writes one row, in one transaction (redb commits are atomic and
//! durable: a crash leaves the last commit). A file that cannot be opened or
//! read, or a row that cannot be decoded, stops the start with an error naming
//! the file: never a silent empty history.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tracing::warn;

use super::Incident;
use crate::persist::StateFileError;

/// Row format of the incidents table (JSON of [`Incident`]).
const FORMAT: u64 = 1;
const INCIDENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("incidents");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The incident database.
pub struct IncidentStore {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for IncidentStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncidentStore")
            .field("path", &self.path)
            .finish()
    }
}

fn failed(path: &Path, what: &str, error: impl std::fmt::Display) -> StateFileError {
    StateFileError {
        path: path.to_path_buf(),
        reason: format!("{what}: {error}"),
    }
}

impl IncidentStore {
    /// Opens (or creates) the database at `path` and reads what it holds: the
    /// next incident id and every incident, oldest first.
    pub fn open(path: &Path) -> Result<(Self, u64, Vec<Incident>), StateFileError> {
        let db = Database::create(path).map_err(|e| failed(path, "cannot open it", e))?;
        let store = Self {
            db,
            path: path.to_path_buf(),
        };
        let (next_id, incidents) = store.read()?;
        Ok((store, next_id, incidents))
    }

    fn read(&self) -> Result<(u64, Vec<Incident>), StateFileError> {
        let path = &self.path;
        let tx = self
            .db
            .begin_read()
            .map_err(|e| failed(path, "cannot read it", e))?;
        let meta = match tx.open_table(META) {
            Ok(table) => Some(table),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(failed(path, "cannot read it", e)),
        };
        let Some(meta) = meta else {
            return Ok((1, Vec::new()));
        };
        let get = |key: &str| -> Result<Option<u64>, StateFileError> {
            Ok(meta
                .get(key)
                .map_err(|e| failed(path, "cannot read it", e))?
                .map(|v| v.value()))
        };
        if let Some(format) = get("format")?
            && format != FORMAT
        {
            return Err(failed(
                path,
                "unknown format",
                format!("{format} (this engine reads {FORMAT})"),
            ));
        }
        let next_id = get("next_id")?.unwrap_or(1);
        let table = tx
            .open_table(INCIDENTS)
            .map_err(|e| failed(path, "cannot read it", e))?;
        let mut incidents = Vec::new();
        for row in table
            .iter()
            .map_err(|e| failed(path, "cannot read it", e))?
        {
            let (id, bytes) = row.map_err(|e| failed(path, "cannot read it", e))?;
            let incident: Incident = serde_json::from_slice(bytes.value())
                .map_err(|e| failed(path, &format!("incident {} is not valid", id.value()), e))?;
            incidents.push(incident);
        }
        Ok((next_id, incidents))
    }

    /// Writes `changed` incidents, deletes `removed` ids, records `next_id`, in
    /// one transaction. A failure is logged and returns false (the caller keeps
    /// the changes and retries at the next window).
    pub fn write(&self, next_id: u64, changed: &[&Incident], removed: &[u64]) -> bool {
        let result = (|| -> Result<(), Box<dyn std::error::Error>> {
            let tx = self.db.begin_write()?;
            {
                let mut table = tx.open_table(INCIDENTS)?;
                for incident in changed {
                    table.insert(incident.id, serde_json::to_vec(incident)?.as_slice())?;
                }
                for id in removed {
                    table.remove(*id)?;
                }
                let mut meta = tx.open_table(META)?;
                meta.insert("format", FORMAT)?;
                meta.insert("next_id", next_id)?;
            }
            tx.commit()?;
            Ok(())
        })();
        if let Err(error) = &result {
            warn!(%error, path = %self.path.display(), "failed to write incidents");
        }
        result.is_ok()
    }
}
