//! `exports:`: flat extracts of a run's results, each one SQL query over the
//! run's `kpi_values` and `scorecard` rows written to one Parquet file, for a tool
//! that wants a single file with its own column names (a BI extract, a benchmark
//! contract).

use std::sync::Arc;

use chrono::NaiveDate;
use datafusion::arrow::array::{ArrayRef, Date32Array, RecordBatch, StringArray};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;

use super::{PublishError, Staged, commit};
use crate::config::Pipeline;
use crate::kpi::epoch_days;

/// Stages every export of `pipeline` from the run's result tables (`kpi_values`,
/// `scorecard`, ...). Each table also has the partition columns `pipeline` and
/// `as_of`, as a reader of the datasets sees them.
pub async fn stage_exports(
    pipeline: &Pipeline,
    as_of: NaiveDate,
    tables: &[(&str, &RecordBatch)],
    run_id: &str,
) -> Result<Vec<Staged>, PublishError> {
    let mut staged = Vec::new();
    if pipeline.exports.is_empty() {
        return Ok(staged);
    }
    let arrow = |source| PublishError::Arrow {
        dataset: "exports",
        source,
    };
    let engine = |file: &std::path::Path| {
        let file = file.to_path_buf();
        move |source| PublishError::Export {
            file: file.clone(),
            source,
        }
    };
    let ctx = SessionContext::new();
    for &(name, batch) in tables {
        let n = batch.num_rows();
        let mut fields: Vec<Field> = batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new("pipeline", DataType::Utf8, false));
        fields.push(Field::new("as_of", DataType::Date32, false));
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        columns.push(Arc::new(StringArray::from(vec![pipeline.name.as_str(); n])));
        columns.push(Arc::new(Date32Array::from(vec![epoch_days(as_of); n])));
        let schema = Arc::new(Schema::new(fields));
        let table = RecordBatch::try_new(schema.clone(), columns).map_err(arrow)?;
        let provider =
            MemTable::try_new(schema, vec![vec![table]]).map_err(|e| engine(&pipeline.file)(e))?;
        ctx.register_table(name, Arc::new(provider))
            .map_err(|e| engine(&pipeline.file)(e))?;
    }
    // Side by side: each is a small query, mostly planning.
    let exports = pipeline.exports.iter().map(|export| {
        let ctx = &ctx;
        async move {
            let frame = ctx.sql(&export.query).await.map_err(engine(&export.file))?;
            let schema = Arc::new(frame.schema().as_arrow().clone());
            let batches = frame.collect().await.map_err(engine(&export.file))?;
            let batch = concat_batches(&schema, &batches).map_err(arrow)?;
            let (dir, name) = match (export.file.parent(), export.file.file_name()) {
                (Some(dir), Some(name)) => (dir, name.to_string_lossy()),
                _ => {
                    return Err(PublishError::Export {
                        file: export.file.clone(),
                        source: datafusion::error::DataFusionError::Plan("not a file path".into()),
                    });
                }
            };
            if name.ends_with(".json") {
                commit::stage_json(dir, &name, &batch, run_id)
            } else {
                commit::stage_parquet(dir, &name, &batch, run_id)
            }
        }
    });
    staged.extend(futures::future::try_join_all(exports).await?);
    Ok(staged)
}
