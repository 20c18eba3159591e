//! Publishing: the run's results as Hive-partitioned Parquet datasets under the
//! pipeline's `output:` folder, written atomically and idempotently.
//!
//! ```text
//! <output>/kpi_values/pipeline=<name>/as_of=<date>/part-0.parquet   replaced by a rerun
//! <output>/scorecard/pipeline=<name>/as_of=<date>/part-0.parquet    replaced by a rerun
//! <output>/runs/pipeline=<name>/as_of=<date>/run-<run_id>.parquet   one per run, kept
//! ```

mod commit;
mod exports;
mod kpi_values;
mod runs;
mod scorecard;

use std::path::{Path, PathBuf};

use chrono::NaiveDate;

pub use exports::write_exports;
pub use kpi_values::{kpi_values_schema, write_kpi_values};
pub use runs::{RunRecord, RunStatus, runs_schema, write_run_record};
pub use scorecard::{scorecard_schema, write_scorecard};

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

/// The folder of one dataset's partition for a pipeline and run date.
pub fn partition(output: &Path, dataset: &str, pipeline: &str, as_of: NaiveDate) -> PathBuf {
    output
        .join(dataset)
        .join(format!("pipeline={pipeline}"))
        .join(format!("as_of={as_of}"))
}
