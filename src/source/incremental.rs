//! Incremental pulls: a database or API source with `incremental: {column}`
//! fetches only rows whose column is past the watermark, streams them into a
//! Parquet file beside the state store, and is read as every file pulled so far
//! (the newest row per `key:` when the source declares one: an updated row
//! replaces its older copy).
//!
//! The new file and watermark stay staged until the run publishes
//! ([`Pull::commit`]); a run that fails deletes the file and the next run pulls
//! the same rows again.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use datafusion::arrow::array::{Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::catalog::TableProvider;
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{cast, ident, lit};
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
    state: crate::state::StateLocation,
    /// The staged file and the name it takes on commit; `None` when no rows came.
    staged: Option<(PathBuf, PathBuf)>,
    rows: u64,
    watermark: Option<Watermark>,
    committed: AtomicBool,
    /// Held from the pull to its commit or drop: one run at a time per source.
    _lock: File,
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
                std::fs::rename(staged, done)
                    .and_then(|_| sync_dir(done))
                    .map_err(|e| SourceError::Config {
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
    let config = |message: String| SourceError::Config {
        name: name.to_string(),
        message,
    };
    std::fs::create_dir_all(&dir).map_err(|e| {
        config(format!(
            "cannot create the cache folder {}: {e}",
            dir.display()
        ))
    })?;
    let lock = crate::state::lock_dir(&dir, "is pulling this source now: wait for it to finish")
        .map_err(config)?;
    let parts = store.cache_parts(&pipeline.name, name)?;
    // Safe under the lock: no other run is pulling this source.
    remove_strays(&dir, &parts);
    let mut files = Vec::new();
    for part in &parts {
        let path = dir.join(part);
        if !path.is_file() {
            return Err(config(format!(
                "the cache file {} that the state store lists is missing: restore it, or start over \
                 by deleting the folder {} and this source's rows in the tables `{}watermarks` and \
                 `{}cache_parts` of {}",
                path.display(),
                dir.display(),
                pipeline.state.table_prefix(),
                pipeline.state.table_prefix(),
                pipeline.state
            )));
        }
        files.push(path.to_string_lossy().into_owned());
    }

    let schema = remote.schema();
    let Ok(field) = schema.field_with_name(&incremental.column) else {
        let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        return Err(config(format!(
            "the incremental column `{}` is not in the source; {}",
            incremental.column,
            crate::config::checks::column_hint(&incremental.column, &columns)
        )));
    };
    if !orderable(field.data_type()) {
        return Err(config(format!(
            "the incremental column `{}` is {}: a watermark needs an integer, decimal, date or \
             timestamp column that grows with new and changed rows",
            incremental.column,
            field.data_type()
        )));
    }
    let mut fresh = ctx.read_table(remote.clone()).map_err(engine)?;
    if let Some(w) = &previous {
        if w.column != incremental.column {
            return Err(config(format!(
                "the watermark was kept for column `{}`, not `{}`: start over by deleting the folder \
                 {} and this source's rows in the tables `{}watermarks` and `{}cache_parts` of {}",
                w.column,
                incremental.column,
                dir.display(),
                pipeline.state.table_prefix(),
                pipeline.state.table_prefix(),
                pipeline.state
            )));
        }
        // Pushed into the database's WHERE clause by its provider. With a key,
        // rows at the watermark itself are fetched again (a row committed late
        // with the same value is not lost) and replace their copies.
        let column = ident(&incremental.column);
        let bound = cast(lit(w.value.clone()), field.data_type().clone());
        let past = if source.key.is_empty() {
            column.gt(bound)
        } else {
            column.gt_eq(bound)
        };
        fresh = fresh.filter(past).map_err(engine)?;
    }

    // Sorts in pull order: it breaks ties between copies of a row.
    let token = format!(
        "{}-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%S%.6fZ"),
        std::process::id()
    );
    let staged = dir.join(format!("staged-{token}.parquet"));
    let done = dir.join(format!("part-{token}.parquet"));
    let written = write_parquet(ctx, fresh, &staged, &schema, &token, &incremental.column).await;
    let (rows, max) = match written {
        Ok(written) => written,
        Err(e) => {
            let _ = std::fs::remove_file(&staged);
            return Err(engine(e));
        }
    };
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
        _lock: lock,
    };

    if files.is_empty() {
        let empty = MemTable::try_new(schema.clone(), vec![vec![]]).map_err(engine)?;
        ctx.register_table(name, Arc::new(empty)).map_err(engine)?;
        return Ok(SourceTable {
            name: name.to_string(),
            kind: "incremental",
            schema,
            rows: Some(0),
            in_memory: false,
            pull: Some(Arc::new(pull)),
        });
    }
    let cached = cached_schema(&schema);
    let options = ParquetReadOptions::default().schema(&cached);
    let history = ctx.read_parquet(files, options).await.map_err(engine)?;
    let table = if source.key.is_empty() {
        history.drop_columns(&[PULL_COLUMN]).map_err(engine)?
    } else {
        latest_per_key(
            ctx,
            history,
            name,
            &schema,
            &source.key,
            &incremental.column,
        )
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
    token: &str,
    column: &str,
) -> Result<(u64, Option<String>), DataFusionError> {
    let file = File::create(path)?;
    let cached = cached_schema(schema);
    let mut writer = ArrowWriter::try_new(file, cached.clone(), None)?;
    let mut stream = frame.execute_stream().await?;
    let mut rows = 0u64;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        rows += batch.num_rows() as u64;
        // The remote's batches may carry a narrower schema (nullability, metadata).
        let mut columns = batch.columns().to_vec();
        columns.push(Arc::new(StringArray::from(vec![token; batch.num_rows()])));
        writer.write(&RecordBatch::try_new(cached.clone(), columns)?)?;
    }
    writer.into_inner()?.sync_all()?;
    if rows == 0 {
        return Ok((0, None));
    }
    let options = ParquetReadOptions::default().schema(&cached);
    let max = ctx
        .read_parquet(path.to_string_lossy().into_owned(), options)
        .await?
        .aggregate(
            vec![],
            vec![datafusion::functions_aggregate::expr_fn::max(ident(column))],
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
    schema: &SchemaRef,
    key: &[String],
    column: &str,
) -> Result<datafusion::prelude::DataFrame, DataFusionError> {
    let quote = |c: &str| format!("\"{}\"", c.replace('"', "\"\""));
    let view = format!("__kpiforge_history_{source}");
    ctx.register_table(&view, history.into_view())?;
    let partition: Vec<String> = key.iter().map(|k| quote(k)).collect();
    let null_key = partition
        .iter()
        .map(|k| format!("{k} IS NULL"))
        .collect::<Vec<_>>()
        .join(" OR ");
    let columns: Vec<String> = schema.fields().iter().map(|f| quote(f.name())).collect();
    // Per key, the copy with the greatest value (NULLs last: a copy without a
    // value never beats one with a value), then the latest pull. Rows whose key
    // is NULL cannot be told apart by it: identical copies count once.
    let sql = format!(
        "SELECT {columns} FROM (SELECT *, row_number() OVER (PARTITION BY {partition} \
         ORDER BY {order} DESC NULLS LAST, {PULL_COLUMN} DESC) AS __kpiforge_rank FROM {view}) \
         WHERE __kpiforge_rank = 1 AND NOT ({null_key}) \
         UNION ALL SELECT DISTINCT {columns} FROM {view} WHERE {null_key}",
        columns = columns.join(", "),
        partition = partition.join(", "),
        order = quote(column)
    );
    let frame = ctx.sql(&sql).await?;
    // The view stays reachable through the plan; the name is no longer needed.
    ctx.deregister_table(&view)?;
    Ok(frame)
}

/// A column of the cache files: the pull that brought the row.
const PULL_COLUMN: &str = "__kpiforge_pull";

/// The source's schema plus [`PULL_COLUMN`].
fn cached_schema(schema: &SchemaRef) -> SchemaRef {
    let mut fields: Vec<_> = schema.fields().iter().cloned().collect();
    fields.push(Arc::new(Field::new(PULL_COLUMN, DataType::Utf8, false)));
    Arc::new(Schema::new(fields))
}

/// Types whose order is the same in DataFusion and in every database (text
/// collations and float comparisons differ), and whose text form casts back
/// exactly.
fn orderable(t: &DataType) -> bool {
    t.is_integer()
        || matches!(
            t,
            DataType::Decimal128(..)
                | DataType::Decimal256(..)
                | DataType::Date32
                | DataType::Date64
                | DataType::Timestamp(..)
        )
}

/// Makes a rename durable: the folder's entry is written out too.
fn sync_dir(file: &Path) -> std::io::Result<()> {
    match file.parent() {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// Files a crashed or failed run left behind: staged pulls, and parts the store
/// does not list.
fn remove_strays(dir: &Path, parts: &[String]) {
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
