//! The `quality/` dataset: one row per check per run (and per failing segment),
//! and `quarantine/<source>/`: the rows that failed a source's row-level checks.

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use datafusion::arrow::array::{
    ArrayRef, Float64Array, Int64Array, ListBuilder, RecordBatch, StringArray, StringBuilder,
    TimestampMicrosecondArray,
};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use super::{PublishError, Staged, commit, partition, stage_partition};
use crate::config::{Pipeline, Severity};
use crate::quality::{CheckResult, QualityReport};

/// Columns of the `quality` files; `pipeline` and `as_of` are partition keys.
pub fn quality_schema() -> SchemaRef {
    let text = |n: &str, null: bool| Field::new(n, DataType::Utf8, null);
    Arc::new(Schema::new(vec![
        text("run_id", false),
        text("source", true),
        text("check", false),
        text("check_type", false),
        text("column", true),
        text("segment", true),
        text("severity", false),
        text("outcome", false),
        Field::new("observed_value", DataType::Float64, true),
        Field::new("unexpected_count", DataType::Int64, true),
        Field::new("unexpected_fraction", DataType::Float64, true),
        Field::new("rows_checked", DataType::Int64, true),
        text("threshold", false),
        text("message", false),
        Field::new(
            "sample",
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            false,
        ),
        Field::new(
            "checked_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
    ]))
}

/// Stages the run's check results as its `quality` partition.
pub fn stage_quality(
    output: &Path,
    pipeline: &Pipeline,
    run_id: &str,
    as_of: NaiveDate,
    checked_at: DateTime<Utc>,
    report: &QualityReport,
) -> Result<(RecordBatch, Staged), PublishError> {
    let rows = &report.results;
    let n = rows.len();
    let text = |f: &dyn Fn(&CheckResult) -> Option<&str>| -> ArrayRef {
        Arc::new(rows.iter().map(f).collect::<StringArray>())
    };
    let float = |f: &dyn Fn(&CheckResult) -> Option<f64>| -> ArrayRef {
        Arc::new(rows.iter().map(f).collect::<Float64Array>())
    };
    let int = |f: &dyn Fn(&CheckResult) -> Option<u64>| -> ArrayRef {
        Arc::new(
            rows.iter()
                .map(|r| f(r).map(|v| v.min(i64::MAX as u64) as i64))
                .collect::<Int64Array>(),
        )
    };
    let mut sample = ListBuilder::new(StringBuilder::new());
    for r in rows {
        for line in &r.sample {
            sample.values().append_value(line);
        }
        sample.append(true);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![run_id; n])),
        text(&|r| r.source.as_deref()),
        text(&|r| Some(&r.check)),
        text(&|r| Some(r.check_type)),
        text(&|r| r.column.as_deref()),
        text(&|r| r.segment.as_deref()),
        text(&|r| {
            Some(match r.severity {
                Severity::Error => "error",
                Severity::Warn => "warn",
            })
        }),
        text(&|r| Some(r.outcome.as_str())),
        float(&|r| r.observed),
        int(&|r| r.unexpected),
        float(&|r| r.unexpected_fraction),
        int(&|r| r.rows_checked),
        text(&|r| Some(&r.threshold)),
        text(&|r| Some(&r.message)),
        Arc::new(sample.finish()),
        Arc::new(
            TimestampMicrosecondArray::from(vec![checked_at.timestamp_micros(); n])
                .with_timezone("UTC"),
        ),
    ];
    stage_partition(
        output,
        "quality",
        &pipeline.name,
        as_of,
        run_id,
        quality_schema(),
        columns,
    )
}

/// Stages a source's quarantined rows as `quarantine/<source>/pipeline=../as_of=../`.
pub fn stage_quarantine(
    output: &Path,
    pipeline: &Pipeline,
    run_id: &str,
    as_of: NaiveDate,
    source: &str,
    schema: SchemaRef,
    batches: &[RecordBatch],
) -> Result<Staged, PublishError> {
    let batch = concat_batches(&schema, batches).map_err(|source| PublishError::Arrow {
        dataset: "quarantine",
        source,
    })?;
    let dir = partition(&output.join("quarantine"), source, &pipeline.name, as_of);
    commit::stage_parquet(&dir, "part-0.parquet", &batch, run_id)
}
