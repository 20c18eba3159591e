//! The history `change` and `anomaly` checks compare with: the observed values
//! of earlier runs, read back from the pipeline's own `quality/` dataset (one
//! partition per as-of date), so no service beyond the output folder is needed.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use chrono::NaiveDate;
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::Float64Type;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::config::{CheckKind, Pipeline};

/// A check, by its source (`None` across sources) and id.
type CheckKey = (Option<String>, String);

/// Earlier observed values per check, newest first.
#[derive(Debug, Default)]
pub struct History {
    values: HashMap<CheckKey, Vec<(NaiveDate, f64)>>,
}

impl History {
    /// Reads the partitions before `as_of`, if any check needs history.
    pub fn load(output: &Path, pipeline: &Pipeline, as_of: NaiveDate) -> History {
        let mut history = History::default();
        let needed = super::all_checks(pipeline).iter().any(|(_, checks)| {
            checks
                .iter()
                .any(|c| matches!(c.kind, CheckKind::Change { .. } | CheckKind::Anomaly { .. }))
        });
        if !needed {
            return history;
        }
        let dir = output
            .join("quality")
            .join(format!("pipeline={}", pipeline.name));
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return history;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(date) = name
                .strip_prefix("as_of=")
                .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
            else {
                continue;
            };
            if date >= as_of {
                continue;
            }
            if let Err(e) = history.read(&entry.path().join("part-0.parquet"), date) {
                tracing::warn!(partition = %entry.path().display(), error = %e, "skipping an unreadable quality partition");
            }
        }
        for v in history.values.values_mut() {
            v.sort_by_key(|(date, _)| std::cmp::Reverse(*date));
        }
        history
    }

    fn read(&mut self, file: &Path, date: NaiveDate) -> Result<(), Box<dyn std::error::Error>> {
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(file)?)?.build()?;
        for batch in reader {
            let batch = batch?;
            let col = |n: &str| batch.schema().index_of(n).map(|i| batch.column(i).clone());
            let (source, check, segment, observed) = (
                col("source")?,
                col("check")?,
                col("segment")?,
                col("observed_value")?,
            );
            let (Some(source), Some(check), Some(segment), Some(observed)) = (
                source.as_string_opt::<i32>(),
                check.as_string_opt::<i32>(),
                segment.as_string_opt::<i32>(),
                observed.as_primitive_opt::<Float64Type>(),
            ) else {
                return Err("columns of unexpected types".into());
            };
            for i in 0..batch.num_rows() {
                if segment.is_valid(i) || observed.is_null(i) {
                    continue;
                }
                let key = (
                    source.is_valid(i).then(|| source.value(i).to_string()),
                    check.value(i).to_string(),
                );
                self.values
                    .entry(key)
                    .or_default()
                    .push((date, observed.value(i)));
            }
        }
        Ok(())
    }

    /// Earlier values of a check, newest first.
    pub fn values(&self, source: Option<&str>, check: &str) -> &[(NaiveDate, f64)] {
        self.values
            .get(&(source.map(str::to_string), check.to_string()))
            .map_or(&[], Vec::as_slice)
    }
}
