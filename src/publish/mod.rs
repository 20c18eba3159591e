//! Publishing: the run's results as Hive-partitioned Parquet datasets under the
//! pipeline's `output:` folder, written atomically and idempotently.
//!
//! ```text
//! <output>/kpi_values/pipeline=<name>/as_of=<date>/part-0.parquet   replaced by a rerun
//! <output>/scorecard/pipeline=<name>/as_of=<date>/part-0.parquet    replaced by a rerun
//! <output>/quality/pipeline=<name>/as_of=<date>/part-0.parquet      replaced by a rerun
//! <output>/quarantine/<source>/pipeline=<name>/as_of=<date>/part-0.parquet
//! <output>/runs/pipeline=<name>/as_of=<date>/run-<run_id>.parquet   one per run, kept
//! ```

mod commit;
mod exports;
mod kpi_values;
mod quality;
mod runs;
mod scorecard;

use std::path::{Path, PathBuf};

use chrono::NaiveDate;

pub use commit::{
    Staged, commit_all, each_in_parallel, flush_all, stage_parquet_in_place, stage_text,
};
pub use exports::stage_exports;
pub use kpi_values::{kpi_values_schema, stage_kpi_values};
pub use quality::{quality_schema, stage_quality, stage_quarantine};
pub use runs::{RunRecord, RunStatus, runs_schema, write_run_record};
pub use scorecard::{scorecard_schema, stage_scorecard};

use datafusion::arrow::array::RecordBatch;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("cannot write {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write Parquet file {}: {source}", path.display())]
    Parquet {
        path: PathBuf,
        #[source]
        source: datafusion::parquet::errors::ParquetError,
    },
    #[error("export {}: {source}", file.display())]
    Export {
        file: PathBuf,
        #[source]
        source: datafusion::error::DataFusionError,
    },
    #[error("cannot build the {dataset} table: {source}")]
    Arrow {
        dataset: &'static str,
        #[source]
        source: datafusion::arrow::error::ArrowError,
    },
}

/// Builds a dataset's batch from its columns and stages it as the run's
/// partition (`part-0.parquet`, replacing a previous run's for the same date
/// when committed).
fn stage_partition(
    output: &Path,
    dataset: &'static str,
    pipeline: &str,
    as_of: NaiveDate,
    run_id: &str,
    schema: datafusion::arrow::datatypes::SchemaRef,
    columns: Vec<datafusion::arrow::array::ArrayRef>,
) -> Result<(RecordBatch, Staged), PublishError> {
    let batch = RecordBatch::try_new(schema, columns)
        .map_err(|source| PublishError::Arrow { dataset, source })?;
    let dir = partition(output, dataset, pipeline, as_of);
    let staged = commit::stage_parquet(&dir, "part-0.parquet", &batch, run_id)?;
    Ok((batch, staged))
}

/// Writes a text file atomically (the HTML scorecard).
pub fn write_text(path: &Path, text: &str) -> Result<PathBuf, PublishError> {
    let (dir, name) = match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => (dir, name.to_string_lossy()),
        _ => {
            return Err(PublishError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::other("not a file path"),
            });
        }
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    commit::stage_text(dir, &name, text)?.commit()
}

/// The folder of one dataset's partition for a pipeline and run date.
pub fn partition(output: &Path, dataset: &str, pipeline: &str, as_of: NaiveDate) -> PathBuf {
    output
        .join(dataset)
        .join(format!("pipeline={pipeline}"))
        .join(format!("as_of={as_of}"))
}
