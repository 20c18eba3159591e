//! Incremental pulls: a database or API source with `incremental: {column}`
//! fetches only rows whose column is past the watermark, streams them into a
//! Parquet file beside the state store, and is read as every file pulled so far
//! (the newest row per `key:` when the source declares one: an updated row
//! replaces its older copy).
//!
//! The new file and watermark stay staged until the run publishes
//! ([`Pull::commit`]); a run that fails deletes the file and the next run pulls
//! the same rows again.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use datafusion::arrow::array::Array;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::catalog::TableProvider;
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{cast, col, lit};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use futures::StreamExt;

use super::{SourceError, SourceTable};
use crate::config::{Incremental, Pipeline, Source};
use crate::state::{StateStore, Watermark};

/// A pull waiting for the run to publish.
#[derive(Debug)]
pub struct Pull {
    pipeline: String,
    source: String,
    state: PathBuf,
    /// The staged file and the name it takes on commit; `None` when no rows came.
    staged: Option<(PathBuf, PathBuf)>,
    rows: u64,
    watermark: Option<Watermark>,
    committed: AtomicBool,
}

impl Pull {
    /// Puts the pulled file in place and advances the watermark, in that order:
    /// a crash between the two leaves a file the store does not list, ignored
    /// and removed by the next pull.
    pub fn commit(&self, run_id: &str) -> Result<(), SourceError> {
        let Some(watermark) = &self.watermark else {
            return Ok(());
        };
        let part = match &self.staged {
            Some((staged, done)) => {
                std::fs::rename(staged, done).map_err(|e| SourceError::Config {
                    name: self.source.clone(),
                    message: format!("cannot move {} into the cache: {e}", staged.display()),
                })?;
                done.file_name().map(|f| f.to_string_lossy().into_owned())
            }
            None => None,
        };
        let mut store = StateStore::open(&self.state)?;
        store.record_pull(
            &self.pipeline,
            &self.source,
            part.as_deref().map(|p| (p, self.rows)),
            watermark,
            run_id,
        )?;
        self.committed.store(true, Ordering::SeqCst);
        tracing::info!(source = %self.source, rows = self.rows, watermark = %watermark.value, "watermark advanced");
        Ok(())
    }
}

impl Drop for Pull {
    fn drop(&mut self) {
        if !self.committed.load(Ordering::SeqCst)
            && let Some((staged, _)) = &self.staged
        {
            let _ = std::fs::remove_file(staged);
        }
    }
}

/// Pulls what is new from `remote` (the source's table, or the API's records)
/// and registers the source as its whole cached history.
pub async fn register(
    ctx: &SessionContext,
    pipeline: &Pipeline,
    source: &Source,
    incremental: &Incremental,
    remote: Arc<dyn TableProvider>,
    previous: Option<Watermark>,
) -> Result<SourceTable, SourceError> {
    let name = source.name.as_str();
    let engine = |e: DataFusionError| SourceError::Engine {
        name: name.to_string(),
        source: e,
    };
    let store = StateStore::open(&pipeline.state)?;
    let dir = store.cache_dir(&pipeline.name, name);
    std::fs::create_dir_all(&dir).map_err(|e| SourceError::Config {
        name: name.to_string(),
        message: format!("cannot create the cache folder {}: {e}", dir.display()),
    })?;
    let parts = store.cache_parts(&pipeline.name, name)?;
    remove_strays(&dir, &parts);

    let schema = remote.schema();
    let Ok(field) = schema.field_with_name(&incremental.column) else {
        let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        return Err(SourceError::Config {
            name: name.to_string(),
            message: format!(
                "the incremental column `{}` is not in the source; {}",
                incremental.column,
                crate::config::checks::column_hint(&incremental.column, &columns)
            ),
        });
    };
    let mut fresh = ctx.read_table(remote.clone()).map_err(engine)?;
    if let Some(w) = &previous {
        if w.column != incremental.column {
            return Err(SourceError::Config {
                name: name.to_string(),
                message: format!(
                    "the watermark was kept for column `{}`, not `{}`: run `kpiforge reset-watermark` or delete the source's rows in {}",
                    w.column,
                    incremental.column,
                    pipeline.state.display()
                ),
            });
        }
        // Pushed into the database's WHERE clause by its provider.
        let bound = cast(lit(w.value.clone()), field.data_type().clone());
        fresh = fresh
            .filter(col(format!("\"{}\"", incremental.column)).gt(bound))
            .map_err(engine)?;
    }

    let token = format!(
        "{}-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%S%.6fZ"),
        std::process::id()
    );
    let staged = dir.join(format!("staged-{token}.parquet"));
    let done = dir.join(format!("part-{token}.parquet"));
    let (rows, max) = write_parquet(ctx, fresh, &staged, &schema, &incremental.column)
        .await
        .map_err(engine)?;
    let watermark = match max {
        Some(value) => Some(Watermark {
            column: incremental.column.clone(),
            value,
        }),
        None => previous.clone(),
    };
    tracing::info!(
        source = name,
        rows,
        since = previous.as_ref().map(|w| w.value.as_str()),
        "incremental pull"
    );

    let mut files: Vec<String> = parts
        .iter()
        .map(|p| dir.join(p))
        .filter(|p| p.is_file())
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let staged = if rows > 0 {
        files.push(staged.to_string_lossy().into_owned());
        Some((staged, done))
    } else {
        let _ = std::fs::remove_file(&staged);
        None
    };
    let pull = Pull {
        pipeline: pipeline.name.clone(),
        source: name.to_string(),
        state: pipeline.state.clone(),
        staged,
        rows,
        watermark,
        committed: AtomicBool::new(false),
    };

    let history = if files.is_empty() {
        ctx.read_table(Arc::new(
            MemTable::try_new(schema.clone(), vec![vec![]]).map_err(engine)?,
        ))
        .map_err(engine)?
    } else {
        let options = ParquetReadOptions::default().schema(&schema);
        ctx.read_parquet(files, options).await.map_err(engine)?
    };
    let table = if source.key.is_empty() {
        history
    } else {
        latest_per_key(ctx, history, name, &source.key, &incremental.column)
            .await
            .map_err(engine)?
    };
    ctx.register_table(name, table.into_view())
        .map_err(engine)?;
    Ok(SourceTable {
        name: name.to_string(),
        kind: "incremental",
        schema,
        rows: Some(rows),
        in_memory: false,
        pull: Some(Arc::new(pull)),
    })
}

/// Streams `frame` into a Parquet file; returns its row count and the greatest
/// value of `column`, as text.
async fn write_parquet(
    ctx: &SessionContext,
    frame: datafusion::prelude::DataFrame,
    path: &std::path::Path,
    schema: &SchemaRef,
    column: &str,
) -> Result<(u64, Option<String>), DataFusionError> {
    let file = std::fs::File::create(path)?;
    let mut writer = ArrowWriter::try_new(file, schema.clone(), None)?;
    let mut stream = frame.execute_stream().await?;
    let mut rows = 0u64;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        rows += batch.num_rows() as u64;
        // The remote's batches may carry a narrower schema (nullability, metadata).
        let batch = datafusion::arrow::record_batch::RecordBatch::try_new(
            schema.clone(),
            batch.columns().to_vec(),
        )?;
        writer.write(&batch)?;
    }
    writer.close()?;
    if rows == 0 {
        return Ok((0, None));
    }
    let options = ParquetReadOptions::default().schema(schema);
    let max = ctx
        .read_parquet(path.to_string_lossy().into_owned(), options)
        .await?
        .aggregate(
            vec![],
            vec![datafusion::functions_aggregate::expr_fn::max(col(format!(
                "\"{column}\""
            )))],
        )?
        .collect()
        .await?;
    let value = max.first().and_then(|b| {
        let array = b.column(0);
        if array.is_null(0) {
            return None;
        }
        let f = ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default()).ok()?;
        Some(f.value(0).to_string())
    });
    Ok((rows, value))
}

/// The newest row per key: an updated row pulled again replaces its older copy.
async fn latest_per_key(
    ctx: &SessionContext,
    history: datafusion::prelude::DataFrame,
    source: &str,
    key: &[String],
    column: &str,
) -> Result<datafusion::prelude::DataFrame, DataFusionError> {
    let quote = |c: &str| format!("\"{}\"", c.replace('"', "\"\""));
    let view = format!("__kpiforge_history_{source}");
    ctx.register_table(&view, history.into_view())?;
    let partition: Vec<String> = key.iter().map(|k| quote(k)).collect();
    let sql = format!(
        "SELECT * EXCLUDE (__kpiforge_rank) FROM (SELECT *, row_number() OVER (PARTITION BY {} ORDER BY {} DESC) AS __kpiforge_rank FROM {view}) WHERE __kpiforge_rank = 1",
        partition.join(", "),
        quote(column)
    );
    let frame = ctx.sql(&sql).await?;
    // The view stays reachable through the plan; the name is no longer needed.
    ctx.deregister_table(&view)?;
    Ok(frame)
}

/// Files a crashed or failed run left behind: staged pulls, and parts the store
/// does not list.
fn remove_strays(dir: &std::path::Path, parts: &[String]) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("staged-") || (name.starts_with("part-") && !parts.contains(&name)) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
