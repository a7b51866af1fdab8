//! Closed windows retained in memory for SQL, bounded by `window.retain`.

use std::collections::VecDeque;
use std::sync::{Arc, RwLock};

use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

use crate::read_model::{DuplicateTable, ReadModel, TableSource};
use crate::window::tables::schemas;
use crate::window::{TABLE_NAMES, WindowTables};

/// Shared, cheaply cloneable history of closed windows.
#[derive(Debug, Clone, Default)]
pub struct History {
    windows: Arc<RwLock<VecDeque<WindowTables>>>,
}

/// One window table (`service_stats`, ...) over the retained windows.
struct WindowTable {
    history: History,
    index: usize,
}

impl TableSource for WindowTable {
    fn name(&self) -> &str {
        TABLE_NAMES[self.index]
    }

    fn schema(&self) -> SchemaRef {
        schemas()[self.index].clone()
    }

    fn batches(&self) -> Result<Vec<RecordBatch>, ArrowError> {
        Ok(self.history.table(self.name()))
    }
}

impl History {
    /// Publishes the window tables in `model`.
    pub fn register(&self, model: &ReadModel) -> Result<(), DuplicateTable> {
        for index in 0..TABLE_NAMES.len() {
            model.register(Arc::new(WindowTable {
                history: self.clone(),
                index,
            }))?;
        }
        Ok(())
    }

    /// Appends closed windows (in order).
    pub fn extend(&self, closed: impl IntoIterator<Item = WindowTables>) {
        if let Ok(mut windows) = self.windows.write() {
            windows.extend(closed);
        }
    }

    /// Drops windows ending at or before `horizon_ms`.
    pub fn retain_after(&self, horizon_ms: i64) {
        if let Ok(mut windows) = self.windows.write() {
            while windows.front().is_some_and(|w| w.end_ms <= horizon_ms) {
                windows.pop_front();
            }
        }
    }

    /// Number of windows held.
    pub fn len(&self) -> usize {
        self.windows.read().map(|w| w.len()).unwrap_or(0)
    }

    /// Windows held and the bytes of their Arrow buffers.
    pub fn footprint(&self) -> (usize, usize) {
        let Ok(windows) = self.windows.read() else {
            return (0, 0);
        };
        let bytes = windows
            .iter()
            .flat_map(|w| w.batches.iter())
            .map(RecordBatch::get_array_memory_size)
            .sum();
        (windows.len(), bytes)
    }

    /// Whether no window is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The batches of one table across all windows (Arrow arrays are shared, not copied).
    pub fn table(&self, name: &str) -> Vec<RecordBatch> {
        let Some(index) = TABLE_NAMES.iter().position(|t| *t == name) else {
            return Vec::new();
        };
        self.windows
            .read()
            .map(|windows| {
                windows
                    .iter()
                    .map(|w| w.batches[index].clone())
                    .filter(|b| b.num_rows() > 0)
                    .collect()
            })
            .unwrap_or_default()
    }
}
