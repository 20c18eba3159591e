//! Kept counts: results that add up over rows but are not one aggregate over
//! one source's rows (a uniqueness count, a relationship's orphans), kept as
//! numbers. The caller writes the query over the old and the new files whose
//! results, added to the kept counts, give the counts over all files.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::view::ViewTable;
use datafusion::datasource::provider_as_source;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::LogicalPlanBuilder;
use datafusion::prelude::SessionContext;

use super::rows::{linear, narrowed, substitute};
use super::stored::{Manifest, hash};
use super::{Incremental, Split, run};
use crate::publish::Staged;

/// Which files of a source a delta query reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Files {
    /// The files the kept counts cover.
    Old,
    /// The files appended since.
    New,
    /// All of them: the source as registered.
    All,
}

impl Incremental {
    /// The counts `fingerprint` names, over all files of `sources` now: the kept
    /// ones plus what `delta` measures of the new files (its SQL gets the names
    /// of each source's old and new files, and the kept counts), or `full()`
    /// when nothing usable is kept. Returns the counts and the new state to
    /// commit; sources that are not Parquet files are always counted in full.
    pub async fn counts(
        &self,
        ctx: &SessionContext,
        fingerprint: &str,
        sources: &[String],
        full: impl AsyncFnOnce() -> Result<Vec<i64>, DataFusionError>,
        delta: impl FnOnce(&dyn Fn(&str, Files) -> String, &[i64]) -> String,
    ) -> Result<(Vec<i64>, Vec<Staged>), DataFusionError> {
        let started = std::time::Instant::now();
        let mut sources: Vec<String> = sources.iter().map(|s| s.to_lowercase()).collect();
        sources.sort();
        sources.dedup();
        if let Some(s) = sources.iter().find(|s| !self.files.contains_key(*s)) {
            tracing::debug!(source = %s, "counted in full: not a Parquet file source");
            return Ok((full().await?, Vec::new()));
        }
        let _lock = self.lock().map_err(DataFusionError::Execution)?;
        let key = hash(fingerprint);
        let kept = if self.full {
            None
        } else {
            self.store.manifest(&key, fingerprint)
        };
        let split = kept.as_ref().and_then(|m| self.delta(m, &sources));
        let (mode, counts) = match (kept, split) {
            (Some(m), Some(split)) if split.values().all(|(_, new)| new.is_empty()) => {
                return Ok((m.counts, Vec::new()));
            }
            (Some(m), Some(split)) => {
                let added = self
                    .run_delta(
                        ctx,
                        &key,
                        &split,
                        delta(&|s, f| name(&key, s, f), &m.counts),
                    )
                    .await?;
                if added.len() != m.counts.len() {
                    return Err(DataFusionError::Internal(format!(
                        "{} counts kept, {} measured",
                        m.counts.len(),
                        added.len()
                    )));
                }
                let counts = m.counts.iter().zip(&added).map(|(k, a)| k + a).collect();
                ("incremental", counts)
            }
            _ => ("full", full().await?),
        };
        let manifest = Manifest {
            plan: fingerprint.to_string(),
            sources: sources
                .iter()
                .map(|s| (s.clone(), self.files[s].clone()))
                .collect(),
            groups: BTreeMap::new(),
            partitioned: false,
            pairs: Vec::new(),
            counts: counts.clone(),
        };
        let staged = self.store.stage_manifest(&key, &manifest)?;
        tracing::info!(mode, sources = %sources.join(","), ms = started.elapsed().as_millis() as u64, "kept counts");
        Ok((counts, vec![staged]))
    }

    /// Runs `sql` with each source's old and new files registered under
    /// [`name`], and returns its one row as integers.
    async fn run_delta(
        &self,
        ctx: &SessionContext,
        key: &str,
        split: &Split,
        sql: String,
    ) -> Result<Vec<i64>, DataFusionError> {
        let mut registered = Vec::new();
        let result = async {
            for (source, (old, new)) in split {
                // A source is registered as a view over its files' scan.
                let provider = ctx.table_provider(source.as_str()).await?;
                let plan = match provider.get_logical_plan() {
                    Some(plan) => plan.into_owned(),
                    None => LogicalPlanBuilder::scan(source, provider_as_source(provider), None)?
                        .build()?,
                };
                let mut scans = Vec::new();
                linear(&plan, Some(source), &self.files, &mut scans).map_err(|why| {
                    DataFusionError::Plan(format!("source `{source}` cannot be split: {why}"))
                })?;
                for (files, which) in [(old, Files::Old), (new, Files::New)] {
                    let table_name = name(key, source, which);
                    let narrowed = substitute(&plan, &mut 0, &mut |_, table| {
                        narrowed(table, files).map(Some)
                    })?;
                    ctx.register_table(
                        table_name.as_str(),
                        Arc::new(ViewTable::new(narrowed, None)),
                    )?;
                    registered.push(table_name);
                }
            }
            let plan = ctx.state().create_logical_plan(&sql).await?;
            let batches = run(ctx, plan, "kept counts").await?;
            row(&batches)
        }
        .await;
        for table in registered {
            let _ = ctx.deregister_table(table.as_str());
        }
        result
    }
}

/// The name a delta query reads a source's `files` under.
fn name(key: &str, source: &str, files: Files) -> String {
    match files {
        Files::All => source.to_string(),
        Files::Old => format!("__kpiforge_{key}_old_{}", source.to_lowercase()),
        Files::New => format!("__kpiforge_{key}_new_{}", source.to_lowercase()),
    }
}

/// The one row of `batches` as integers (NULL as 0).
pub fn row(batches: &[RecordBatch]) -> Result<Vec<i64>, DataFusionError> {
    let Some(batch) = batches.iter().find(|b| b.num_rows() > 0) else {
        return Err(DataFusionError::Internal(
            "a count query returned no row".into(),
        ));
    };
    batch
        .columns()
        .iter()
        .map(|c| {
            let c = cast(c, &DataType::Int64)?;
            let c = c.as_primitive::<Int64Type>();
            Ok(if c.is_valid(0) { c.value(0) } else { 0 })
        })
        .collect()
}
