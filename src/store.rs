//! Embedded persistence of closed windows (Arrow IPC files) and the window checkpoint.
//!
//! Layout under `store.path`:
//!
//! ```text
//! windows/<start_ms>/<table>.arrow   one IPC file per table of each closed window
//! checkpoint.json                    closed_through_ms + cumulative metric state
//! ```
//!
//! Window directories are written first (to a temporary name, then renamed), the
//! checkpoint last: it is the commit point. On open, directories at or beyond the
//! checkpoint's `closed_through_ms` are leftovers of a crash and are removed.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::FileWriter;
use arrow::record_batch::RecordBatch;
use serde::Deserialize;

use crate::window::{Checkpoint, TABLE_NAMES, WindowTables};

/// Storage failures; all are the operator's to fix (disk full, permissions), and a
/// retry helps once they are.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Filesystem failure.
    #[error("store i/o at {path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Arrow IPC failure.
    #[error("store arrow ipc at {path}: {source}")]
    Arrow {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: arrow::error::ArrowError,
    },
    /// The checkpoint is unreadable.
    #[error("store checkpoint {path}: {reason}")]
    Checkpoint {
        /// The path involved.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn arrow_err(path: &Path) -> impl FnOnce(arrow::error::ArrowError) -> StoreError + '_ {
    move |source| StoreError::Arrow {
        path: path.to_path_buf(),
        source,
    }
}

/// The on-disk store.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Opens (creating) the store at `root`.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        fs::create_dir_all(root.join("windows")).map_err(io(root))?;
        Ok(Store {
            root: root.to_path_buf(),
        })
    }

    fn checkpoint_path(&self) -> PathBuf {
        self.root.join("checkpoint.json")
    }

    /// Loads the checkpoint and every committed window, oldest first (`size_ms` is the
    /// window length to assume for windows with no rows).
    pub fn load(
        &self,
        size_ms: i64,
    ) -> Result<(Option<Checkpoint>, Vec<WindowTables>), StoreError> {
        let path = self.checkpoint_path();
        let checkpoint: Option<Checkpoint> = match fs::read(&path) {
            Ok(bytes) => {
                Some(
                    serde_json::from_slice(&bytes).map_err(|e| StoreError::Checkpoint {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?,
                )
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(&path)(e)),
        };
        let closed_through = checkpoint
            .as_ref()
            .map_or(i64::MIN, |c| c.closed_through_ms);
        let dir = self.root.join("windows");
        let mut starts = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io(&dir))? {
            let entry = entry.map_err(io(&dir))?;
            let name = entry.file_name().to_string_lossy().to_string();
            match name.parse::<i64>() {
                Ok(start) => starts.push(start),
                Err(_) => {
                    // A temporary directory of an interrupted write.
                    let _ = fs::remove_dir_all(entry.path());
                }
            }
        }
        starts.sort_unstable();
        let mut windows = Vec::new();
        for start in starts {
            let path = dir.join(start.to_string());
            if start >= closed_through {
                let _ = fs::remove_dir_all(&path);
                continue;
            }
            windows.push(read_window(&path, start, size_ms)?);
        }
        Ok((checkpoint, windows))
    }

    /// Writes `closed` windows, then the checkpoint that commits them.
    pub fn persist(
        &self,
        closed: &[WindowTables],
        checkpoint: &Checkpoint,
    ) -> Result<(), StoreError> {
        for window in closed {
            let final_dir = self.root.join("windows").join(window.start_ms.to_string());
            let tmp_dir = self
                .root
                .join("windows")
                .join(format!("tmp-{}", window.start_ms));
            let _ = fs::remove_dir_all(&tmp_dir);
            fs::create_dir_all(&tmp_dir).map_err(io(&tmp_dir))?;
            for (name, batch) in TABLE_NAMES.iter().zip(window.batches.iter()) {
                let path = tmp_dir.join(format!("{name}.arrow"));
                let file = fs::File::create(&path).map_err(io(&path))?;
                let mut writer =
                    FileWriter::try_new(file, &batch.schema()).map_err(arrow_err(&path))?;
                writer.write(batch).map_err(arrow_err(&path))?;
                writer.finish().map_err(arrow_err(&path))?;
                let file = writer.into_inner().map_err(arrow_err(&path))?;
                file.sync_all().map_err(io(&path))?;
            }
            let _ = fs::remove_dir_all(&final_dir);
            fs::rename(&tmp_dir, &final_dir).map_err(io(&final_dir))?;
        }
        let path = self.checkpoint_path();
        let tmp = self.root.join("checkpoint.json.tmp");
        let bytes = serde_json::to_vec(checkpoint).map_err(|e| StoreError::Checkpoint {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let mut file = fs::File::create(&tmp).map_err(io(&tmp))?;
        file.write_all(&bytes).map_err(io(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
        fs::rename(&tmp, &path).map_err(io(&path))?;
        Ok(())
    }

    /// Deletes windows that start before `before_ms`.
    pub fn prune(&self, before_ms: i64) -> Result<(), StoreError> {
        let dir = self.root.join("windows");
        for entry in fs::read_dir(&dir).map_err(io(&dir))? {
            let entry = entry.map_err(io(&dir))?;
            if let Ok(start) = entry.file_name().to_string_lossy().parse::<i64>()
                && start < before_ms
            {
                fs::remove_dir_all(entry.path()).map_err(io(&entry.path()))?;
            }
        }
        Ok(())
    }
}

fn read_window(dir: &Path, start_ms: i64, size_ms: i64) -> Result<WindowTables, StoreError> {
    let schemas = crate::window::tables::schemas();
    let mut batches: Vec<RecordBatch> = Vec::with_capacity(TABLE_NAMES.len());
    let mut end_ms = start_ms + size_ms;
    for (name, schema) in TABLE_NAMES.iter().zip(schemas.iter()) {
        let path = dir.join(format!("{name}.arrow"));
        let file = fs::File::open(&path).map_err(io(&path))?;
        let reader = FileReader::try_new(file, None).map_err(arrow_err(&path))?;
        let mut parts = Vec::new();
        for batch in reader {
            let batch = batch.map_err(arrow_err(&path))?;
            parts.push(conform(batch, schema).map_err(arrow_err(&path))?);
        }
        let batch = arrow::compute::concat_batches(schema, &parts).map_err(arrow_err(&path))?;
        if let Some(column) = batch.column_by_name("window_end")
            && let Some(ends) = column
                .as_any()
                .downcast_ref::<arrow::array::TimestampMillisecondArray>()
            && !ends.is_empty()
        {
            end_ms = ends.value(0);
        }
        batches.push(batch);
    }
    let batches: [RecordBatch; 5] = batches.try_into().map_err(|_| StoreError::Checkpoint {
        path: dir.to_path_buf(),
        reason: "window directory lacks a table".to_string(),
    })?;
    Ok(WindowTables {
        start_ms,
        end_ms,
        batches,
    })
}

/// `batch` in `schema`: a window stored by an older release lacks the columns
/// added since (nullable, as every added column is), which read as null.
fn conform(batch: RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, ArrowError> {
    if batch.schema() == *schema {
        return Ok(batch);
    }
    let columns = schema
        .fields()
        .iter()
        .map(|field| match batch.column_by_name(field.name()) {
            Some(column) => Ok(column.clone()),
            None if field.is_nullable() => Ok(arrow::array::new_null_array(
                field.data_type(),
                batch.num_rows(),
            )),
            None => Err(ArrowError::SchemaError(format!(
                "stored table lacks column {}",
                field.name()
            ))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(schema.clone(), columns)
}

/// Embedded persistence of closed windows.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Directory for closed windows and the checkpoint; empty keeps history in memory only.
    pub path: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::window::Windows;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    #[test]
    fn a_table_stored_before_a_column_was_added_reads_it_as_null() {
        use crate::window::tables::{LAST_CALLS, TableBuilder};
        let schema = crate::window::tables::schemas()[2].clone();
        let mut edge = TableBuilder::new(2, 0, 10_000);
        edge.row(
            &["", "web", "", "", "cart", "", "service", ""],
            &crate::incident::testing::healthy_calls(),
        );
        let new = edge.finish().expect("edge");
        // The same table as an older release wrote it: without `last_calls`.
        let keep: Vec<usize> = (0..schema.fields().len())
            .filter(|&i| schema.field(i).name() != LAST_CALLS)
            .collect();
        let old = new.project(&keep).expect("project");
        let read = conform(old, &schema).expect("conform");
        assert_eq!(read.schema(), schema);
        assert!(read.column_by_name(LAST_CALLS).expect("column").is_null(0));
        assert_eq!(conform(new.clone(), &schema).expect("same"), new);
        // A column that may not be null cannot be made up.
        let keep: Vec<usize> = (1..schema.fields().len()).collect();
        let err = conform(new.project(&keep).expect("project"), &schema)
            .expect_err("a column that may not be null");
        assert!(err.to_string().contains("window_start"), "{err}");
    }

    fn closed_windows(count: u64) -> (Vec<WindowTables>, Checkpoint) {
        let config = Config::from_toml_str("").expect("config");
        let mut windows = Windows::new(&config.window);
        let base = 1_700_000_000_000_000_000u64;
        let spans = (0..count)
            .map(|i| Span {
                trace_id: vec![1; 16],
                span_id: (i + 1).to_be_bytes().to_vec(),
                kind: 2,
                start_time_unix_nano: base + i * 10_000_000_000,
                end_time_unix_nano: base + i * 10_000_000_000 + 1_000_000,
                ..Default::default()
            })
            .collect();
        let decoded = crate::columnar::spans::to_arrow(&[ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }])
        .expect("spans");
        windows.ingest(&decoded, 0, u64::MAX / 2).expect("ingest");
        let closed = windows.close_all().expect("close");
        (closed, windows.checkpoint())
    }

    #[test]
    fn windows_survive_a_reopen_and_crash_leftovers_are_dropped() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path()).expect("open");
        let (closed, checkpoint) = closed_windows(3);
        assert_eq!(closed.len(), 3);
        store
            .persist(
                &closed[..2],
                &Checkpoint {
                    closed_through_ms: closed[1].end_ms,
                    ..checkpoint.clone()
                },
            )
            .expect("persist");
        // A crash after writing window 3 but before its checkpoint: window 3 is not committed.
        let dir3 = dir
            .path()
            .join("windows")
            .join(closed[2].start_ms.to_string());
        fs::create_dir_all(&dir3).expect("leftover");
        let (restored_checkpoint, restored) = Store::open(dir.path())
            .expect("reopen")
            .load(10_000)
            .expect("load");
        assert_eq!(
            restored_checkpoint.expect("checkpoint").closed_through_ms,
            closed[1].end_ms
        );
        assert_eq!(restored.len(), 2);
        assert!(!dir3.exists());
        for (a, b) in restored.iter().zip(&closed) {
            assert_eq!((a.start_ms, a.end_ms), (b.start_ms, b.end_ms));
            assert_eq!(a.batches, b.batches);
        }
        store.prune(closed[1].start_ms).expect("prune");
        let (_, restored) = store.load(10_000).expect("load");
        assert_eq!(restored.len(), 1);
    }
}
