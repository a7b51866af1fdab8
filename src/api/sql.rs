//! SQL over the retained window tables, through DataFusion.

use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::execution::context::{SQLOptions, SessionContext};

use crate::read_model::ReadModel;

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// The query is invalid or refers to unknown tables/columns. The user's fault.
    #[error("{0}")]
    Query(String),
    /// The engine failed to run a valid query.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The answer to a query.
#[derive(Debug)]
pub struct QueryResult {
    /// Result batches (at most `max_rows` rows in all).
    pub batches: Vec<RecordBatch>,
    /// The schema (also for empty results).
    pub schema: arrow::datatypes::SchemaRef,
    /// Whether rows beyond `max_rows` were cut off.
    pub truncated: bool,
}

/// Runs one read-only query over the tables registered in `tables`.
pub async fn query(
    tables: &ReadModel,
    sql: &str,
    max_rows: usize,
) -> Result<QueryResult, SqlError> {
    let ctx = SessionContext::new();
    let internal = |e: &dyn std::fmt::Display| SqlError::Internal(e.to_string());
    for source in tables.tables() {
        let batches = source.batches().map_err(|e| internal(&e))?;
        let table = MemTable::try_new(source.schema(), vec![batches]).map_err(|e| internal(&e))?;
        ctx.register_table(source.name(), Arc::new(table))
            .map_err(|e| internal(&e))?;
    }
    let options = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let frame = ctx
        .sql_with_options(sql, options)
        .await
        .map_err(|e| SqlError::Query(e.to_string()))?;
    let schema = Arc::new(frame.schema().as_arrow().clone());
    // Ask for one row more than allowed, to know whether the answer was cut.
    let frame = frame
        .limit(0, Some(max_rows + 1))
        .map_err(|e| SqlError::Query(e.to_string()))?;
    let mut batches = frame
        .collect()
        .await
        .map_err(|e| SqlError::Query(e.to_string()))?;
    let total: usize = batches.iter().map(|b| b.num_rows()).sum();
    let truncated = total > max_rows;
    if truncated {
        let mut remaining = max_rows;
        for batch in batches.iter_mut() {
            let take = batch.num_rows().min(remaining);
            *batch = batch.slice(0, take);
            remaining -= take;
        }
    }
    Ok(QueryResult {
        batches,
        schema,
        truncated,
    })
}

/// Renders batches as a JSON array of row objects.
pub fn to_json(batches: &[RecordBatch]) -> Result<Vec<u8>, SqlError> {
    let mut writer = arrow::json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, arrow::json::writer::JsonArray>(Vec::new());
    let refs: Vec<&RecordBatch> = batches.iter().collect();
    writer
        .write_batches(&refs)
        .map_err(|e| SqlError::Internal(e.to_string()))?;
    writer
        .finish()
        .map_err(|e| SqlError::Internal(e.to_string()))?;
    let mut out = writer.into_inner();
    if out.is_empty() {
        out.extend_from_slice(b"[]");
    }
    Ok(out)
}

/// Renders batches as an aligned text table.
pub fn to_table(result: &QueryResult) -> Result<String, SqlError> {
    let text = if result.batches.iter().all(|b| b.num_rows() == 0) {
        let header: Vec<&str> = result
            .schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        format!("{}\n(0 rows)", header.join(" | "))
    } else {
        arrow::util::pretty::pretty_format_batches(&result.batches)
            .map_err(|e| SqlError::Internal(e.to_string()))?
            .to_string()
    };
    Ok(text)
}
