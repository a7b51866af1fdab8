//! The read model: the tables stages publish for SQL. A stage registers each of
//! its tables once at start ([`ReadModel::register`]); the API queries whatever
//! is registered, so a new stage adds a table without editing the API.

use std::sync::{Arc, RwLock};

use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

/// A table a stage publishes: its name, its schema and its rows now.
pub trait TableSource: Send + Sync {
    /// The SQL name (unique in the read model).
    fn name(&self) -> &str;
    /// The schema, also when there are no rows.
    fn schema(&self) -> SchemaRef;
    /// The rows as they stand (Arrow arrays are shared, not copied, where the
    /// source keeps them as batches).
    fn batches(&self) -> Result<Vec<RecordBatch>, ArrowError>;
}

/// A UTC millisecond timestamp column, as every table's times are.
pub fn timestamp_field(name: &str, nullable: bool) -> arrow::datatypes::Field {
    arrow::datatypes::Field::new(
        name,
        arrow::datatypes::DataType::Timestamp(
            arrow::datatypes::TimeUnit::Millisecond,
            Some("UTC".into()),
        ),
        nullable,
    )
}

/// A second table of the same name was registered (a wiring defect).
#[derive(Debug, thiserror::Error)]
#[error("table `{0}` is registered twice")]
pub struct DuplicateTable(pub String);

/// The registered tables, shared by the stages (writers of their own tables)
/// and the API (reader of all).
#[derive(Clone, Default)]
pub struct ReadModel {
    tables: Arc<RwLock<Vec<Arc<dyn TableSource>>>>,
}

impl std::fmt::Debug for ReadModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

impl ReadModel {
    /// Publishes `table`.
    pub fn register(&self, table: Arc<dyn TableSource>) -> Result<(), DuplicateTable> {
        let Ok(mut tables) = self.tables.write() else {
            return Ok(());
        };
        if tables.iter().any(|t| t.name() == table.name()) {
            return Err(DuplicateTable(table.name().to_string()));
        }
        tables.push(table);
        Ok(())
    }

    /// Every registered table, in registration order.
    pub fn tables(&self) -> Vec<Arc<dyn TableSource>> {
        self.tables.read().map(|t| t.clone()).unwrap_or_default()
    }

    /// The registered names.
    pub fn names(&self) -> Vec<String> {
        self.tables().iter().map(|t| t.name().to_string()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::UInt64Array;
    use arrow::datatypes::{DataType, Field, Schema};

    struct Numbers(&'static str);

    impl TableSource for Numbers {
        fn name(&self) -> &str {
            self.0
        }
        fn schema(&self) -> SchemaRef {
            Arc::new(Schema::new(vec![Field::new("n", DataType::UInt64, false)]))
        }
        fn batches(&self) -> Result<Vec<RecordBatch>, ArrowError> {
            let column = Arc::new(UInt64Array::from(vec![1, 2, 3]));
            Ok(vec![RecordBatch::try_new(self.schema(), vec![column])?])
        }
    }

    #[test]
    fn tables_register_once_by_name() {
        let model = ReadModel::default();
        model.register(Arc::new(Numbers("a"))).expect("first");
        model.register(Arc::new(Numbers("b"))).expect("second");
        let error = model.register(Arc::new(Numbers("a"))).expect_err("twice");
        assert_eq!(error.to_string(), "table `a` is registered twice");
        assert_eq!(model.names(), vec!["a", "b"]);
    }
}
