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
use datafusion::logical_expr::{LogicalPlan, LogicalPlanBuilder};
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

/// What a delta query is given: the name under which a source's files are
/// read, whether a source has new files, and the kept counts.
pub struct DeltaInput<'a> {
    pub table: &'a dyn Fn(&str, Files) -> String,
    pub grew: &'a dyn Fn(&str) -> bool,
    pub kept: &'a [i64],
}

impl Incremental {
    /// The counts `what` names, over all files of `sources` now: the kept ones
    /// plus what the query `delta` writes measures of the new files, or
    /// `full()` when nothing usable is kept. `what` must name everything the
    /// counts depend on besides the sources' rows; the sources' definitions
    /// (their views' plans) are added to it here. Returns the counts and the new
    /// state to commit; sources that are not Parquet files are always counted
    /// in full.
    pub async fn counts(
        &self,
        ctx: &SessionContext,
        what: &str,
        sources: &[String],
        full: impl AsyncFnOnce() -> Result<Vec<i64>, DataFusionError>,
        delta: impl FnOnce(&DeltaInput) -> String,
    ) -> Result<(Vec<i64>, Vec<Staged>), DataFusionError> {
        let counted = self.count(ctx, what, sources, full, delta).await;
        if counted.is_err() {
            self.incomplete();
        }
        counted
    }

    async fn count(
        &self,
        ctx: &SessionContext,
        what: &str,
        sources: &[String],
        full: impl AsyncFnOnce() -> Result<Vec<i64>, DataFusionError>,
        delta: impl FnOnce(&DeltaInput) -> String,
    ) -> Result<(Vec<i64>, Vec<Staged>), DataFusionError> {
        let started = std::time::Instant::now();
        let mut sources: Vec<String> = sources.iter().map(|s| s.to_lowercase()).collect();
        sources.sort();
        sources.dedup();
        let mut plans = BTreeMap::new();
        for source in &sources {
            match self.source_plan(ctx, source).await {
                Ok(plan) => plans.insert(source.clone(), plan),
                Err(why) => {
                    tracing::debug!(%source, %why, "counted in full");
                    return Ok((full().await?, Vec::new()));
                }
            };
        }
        let fingerprint = plans
            .values()
            .fold(format!("check counts\n{what}"), |f, p| {
                format!("{f}\n{}", p.display_indent())
            });
        let _lock = self.lock().map_err(DataFusionError::Execution)?;
        let key = hash(&fingerprint);
        self.uses(&key);
        let kept = if self.full {
            None
        } else {
            self.store.manifest(&key, &fingerprint)
        };
        let split = kept.as_ref().and_then(|m| self.delta(m, &sources));
        let (mode, counts) = match (kept, split) {
            (Some(m), Some(split))
                if split.values().all(|(_, new)| new.is_empty()) && !m.counts.is_empty() =>
            {
                return Ok((m.counts, Vec::new()));
            }
            (Some(m), Some(split)) => {
                let sql = delta(&DeltaInput {
                    table: &|s, f| name(&key, s, f),
                    grew: &|s| {
                        split
                            .get(&s.to_lowercase())
                            .is_some_and(|(_, new)| !new.is_empty())
                    },
                    kept: &m.counts,
                });
                let added = self.run_delta(ctx, &key, &plans, &split, sql).await?;
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
            plan: fingerprint,
            sources: sources
                .iter()
                .map(|s| (s.clone(), self.files[s].clone()))
                .collect(),
            groups: BTreeMap::new(),
            partitioned: false,
            pairs: Vec::new(),
            counts: counts.clone(),
            inputs: BTreeMap::new(),
        };
        let staged = self.store.stage_manifest(&key, &manifest)?;
        tracing::info!(mode, sources = %sources.join(","), ms = started.elapsed().as_millis() as u64, "kept counts");
        Ok((counts, vec![staged]))
    }

    /// The plan of a source's view, when it only reads its Parquet files.
    async fn source_plan(&self, ctx: &SessionContext, source: &str) -> Result<LogicalPlan, String> {
        if !self.files.contains_key(source) {
            return Err("not a Parquet file source".into());
        }
        let provider = ctx
            .table_provider(source)
            .await
            .map_err(|e| e.to_string())?;
        let plan = match provider.get_logical_plan() {
            Some(plan) => plan.into_owned(),
            None => LogicalPlanBuilder::scan(source, provider_as_source(provider), None)
                .and_then(|b| b.build())
                .map_err(|e| e.to_string())?,
        };
        linear(&plan, Some(source), &self.files, &mut Vec::new())?;
        Ok(plan)
    }

    /// Runs `sql` with each source's old and new files registered under
    /// [`name`], and returns its one row as integers.
    async fn run_delta(
        &self,
        ctx: &SessionContext,
        key: &str,
        plans: &BTreeMap<String, LogicalPlan>,
        split: &Split,
        sql: String,
    ) -> Result<Vec<i64>, DataFusionError> {
        let mut registered = Vec::new();
        let result = async {
            for (source, (old, new)) in split {
                for (files, which) in [(old, Files::Old), (new, Files::New)] {
                    let table_name = name(key, source, which);
                    let narrowed = substitute(&plans[source], &mut 0, &mut |_, table| {
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
            // `run` plans it in a task of its own: a panic is this query's error.
            let batches = run(&super::narrow(ctx), plan, "kept counts").await?;
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
