//! The `runs/` dataset: one row per run, failed runs included, so a BI tool can
//! show what ran, when, and why it failed. Each run adds its own file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use datafusion::arrow::array::{
    ArrayRef, Int64Array, Int64Builder, ListBuilder, RecordBatch, StringArray, StringBuilder,
    StructBuilder, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};

use super::{PublishError, commit, partition};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    Succeeded,
    /// Ran to the end, but an `error` check failed: the KPIs it blocks were not reported.
    QualityFailed,
    Failed,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Succeeded => "succeeded",
            RunStatus::QualityFailed => "quality_failed",
            RunStatus::Failed => "failed",
        }
    }
}

/// What happened in one run.
#[derive(Debug, Clone)]
pub struct RunRecord {
    pub run_id: String,
    pub pipeline: String,
    pub as_of: NaiveDate,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub status: RunStatus,
    /// Rows read per source, where known.
    pub rows_read: Vec<(String, Option<u64>)>,
    pub kpis_published: usize,
    pub values_published: usize,
    pub checks_failed: usize,
    pub checks_warned: usize,
    pub error: Option<String>,
}

fn source_rows_fields() -> Fields {
    Fields::from(vec![
        Field::new("source", DataType::Utf8, false),
        Field::new("rows", DataType::Int64, true),
    ])
}

/// Columns of the `runs` files; `pipeline` and `as_of` are partition keys.
pub fn runs_schema() -> SchemaRef {
    let ts = |n: &str| {
        Field::new(
            n,
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        )
    };
    Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Utf8, false),
        ts("started_at"),
        ts("finished_at"),
        Field::new("status", DataType::Utf8, false),
        Field::new(
            "rows_read",
            DataType::List(Arc::new(Field::new(
                "item",
                DataType::Struct(source_rows_fields()),
                true,
            ))),
            false,
        ),
        Field::new("kpis_published", DataType::Int64, false),
        Field::new("values_published", DataType::Int64, false),
        Field::new("checks_failed", DataType::Int64, false),
        Field::new("checks_warned", DataType::Int64, false),
        Field::new("error", DataType::Utf8, true),
        Field::new("kpiforge_version", DataType::Utf8, false),
    ]))
}

/// Adds the run's record to the `runs` dataset.
pub fn write_run_record(output: &Path, record: &RunRecord) -> Result<PathBuf, PublishError> {
    let ts = |t: DateTime<Utc>| -> ArrayRef {
        Arc::new(TimestampMicrosecondArray::from(vec![t.timestamp_micros()]).with_timezone("UTC"))
    };
    let mut rows_read = ListBuilder::new(StructBuilder::from_fields(
        source_rows_fields(),
        record.rows_read.len(),
    ));
    for (source, rows) in &record.rows_read {
        let entry = rows_read.values();
        entry
            .field_builder::<StringBuilder>(0)
            .expect("field 0 is Utf8")
            .append_value(source);
        entry
            .field_builder::<Int64Builder>(1)
            .expect("field 1 is Int64")
            .append_option(rows.map(|r| r as i64));
        entry.append(true);
    }
    rows_read.append(true);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![record.run_id.as_str()])),
        ts(record.started_at),
        ts(record.finished_at),
        Arc::new(StringArray::from(vec![record.status.as_str()])),
        Arc::new(rows_read.finish()),
        Arc::new(Int64Array::from(vec![record.kpis_published as i64])),
        Arc::new(Int64Array::from(vec![record.values_published as i64])),
        Arc::new(Int64Array::from(vec![record.checks_failed as i64])),
        Arc::new(Int64Array::from(vec![record.checks_warned as i64])),
        Arc::new(StringArray::from(vec![record.error.as_deref()])),
        Arc::new(StringArray::from(vec![env!("CARGO_PKG_VERSION")])),
    ];
    let batch =
        RecordBatch::try_new(runs_schema(), columns).map_err(|source| PublishError::Arrow {
            dataset: "runs",
            source,
        })?;
    let dir = partition(output, "runs", &record.pipeline, record.as_of);
    commit::write_parquet(
        &dir,
        &format!("run-{}.parquet", record.run_id),
        &batch,
        &record.run_id,
    )
}
