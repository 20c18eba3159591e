//! Sources: each configured source becomes a DataFusion table named after it.
//! One file per kind; `register` holds the one exhaustive match over kinds, so a
//! new kind does not compile until it is handled here.
//!
//! Text formats are parsed once per run into memory ([`Mode::Load`]); checks and
//! KPIs then read Arrow data. A run parses only the columns its queries read
//! ([`prepare_all`], [`parse_text`]). Columnar files are scanned in place.

mod file;
mod http;
pub mod incremental;
mod mysql;
mod parsed;
mod postgres;
mod sql;
mod sqlite;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use datafusion::catalog::TableProvider;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::runtime::SpawnedTask;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use futures::FutureExt;
use futures::future::try_join_all;
use tracing::Instrument;

use datafusion::datasource::MemTable;

use crate::config::{
    DatabaseKind, DatabaseSource, FileFormat, FileSource, HttpSource, Pipeline, Source, SourceKind,
};

/// How much work registering a source may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Only learn the schema (for `validate`): read no more than inference needs.
    Plan,
    /// Make the data ready for the run: parse text formats once, into memory.
    Load,
}

/// A source as registered: what the rest of the run needs to know about it.
#[derive(Debug, Clone)]
pub struct SourceTable {
    pub name: String,
    /// `csv`, `parquet`, `json`, ...
    pub kind: &'static str,
    pub schema: SchemaRef,
    /// Rows read, known after a load.
    pub rows: Option<u64>,
    /// Held in memory for the run (parsed once), as opposed to scanned in place.
    pub in_memory: bool,
    /// An incremental pull, committed when the run publishes.
    pub pull: Option<Arc<incremental::Pull>>,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The data itself is malformed or unreadable.
    #[error("source `{name}`: {}: {message}", path.display())]
    Read {
        name: String,
        path: PathBuf,
        message: String,
    },
    /// The source's configuration does not fit its data.
    #[error("source `{name}`: {message}")]
    Config { name: String, message: String },
    /// A database or API could not be reached or read: the message names the
    /// host, port, database and user (never a password) and what to check.
    #[error("source `{name}`: {message}")]
    Remote { name: String, message: String },
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// A file source's pattern, matched again as the run started, matches
    /// no file: the data is missing, and the run has started (and is recorded
    /// as failed), unlike the same error when the pipeline is loaded.
    #[error(transparent)]
    Listing(crate::config::ConfigError),
    /// Any of the above, with where the source is defined in the pipeline file.
    #[error("{error}\n  (source defined at {}:{}:{})", file.display(), position.line, position.column)]
    Located {
        error: Box<SourceError>,
        file: PathBuf,
        position: crate::config::Position,
    },
    #[error("source `{name}`: {source}")]
    Engine {
        name: String,
        #[source]
        source: DataFusionError,
    },
}

/// Registers every source of `pipeline` in `ctx`, concurrently.
pub async fn register_all(
    ctx: &SessionContext,
    pipeline: &Pipeline,
    mode: Mode,
) -> Result<Vec<SourceTable>, SourceError> {
    register_all_with(ctx, pipeline, mode, &crate::progress::Hook::default()).await
}

/// [`register_all`], reporting each source's start and end to `progress`.
pub async fn register_all_with(
    ctx: &SessionContext,
    pipeline: &Pipeline,
    mode: Mode,
    progress: &crate::progress::Hook,
) -> Result<Vec<SourceTable>, SourceError> {
    register_each(ctx, pipeline, mode, false, progress).await
}

/// Registers every source for a run: as [`Mode::Load`] does, except text files,
/// which are registered lazily (as in [`Mode::Plan`]) for [`parse_text`] to
/// parse once the run knows which of their columns it reads.
pub async fn prepare_all(
    ctx: &SessionContext,
    pipeline: &Pipeline,
    progress: &crate::progress::Hook,
) -> Result<Vec<SourceTable>, SourceError> {
    register_each(ctx, pipeline, Mode::Load, true, progress).await
}

async fn register_each(
    ctx: &SessionContext,
    pipeline: &Pipeline,
    mode: Mode,
    defer_text: bool,
    progress: &crate::progress::Hook,
) -> Result<Vec<SourceTable>, SourceError> {
    use crate::progress::Stage;
    try_join_all(pipeline.sources.iter().map(|s| async move {
        if let Some(cfg) = text_file(s).filter(|_| defer_text) {
            // Reported (progress, log) by `parse_text`, which reads it.
            return file::register(ctx, &s.name, cfg, Mode::Plan)
                .await
                .map_err(|error| locate(error, pipeline, &s.name));
        }
        // Ends as failed if this source fails, or is dropped when another does.
        let reading = progress.stage(Stage::Source, &s.name);
        let table = match (&s.incremental, mode) {
            (Some(inc), Mode::Load) => register_incremental(ctx, pipeline, s, inc).await,
            _ => register_on_own_task(ctx, s, mode).await,
        }
        .map_err(|error| locate(error, pipeline, &s.name));
        if table.is_ok() {
            reading.done();
        }
        table
    }))
    .await
}

/// A source's file settings, if it is a text file (parsed rather than scanned).
pub fn text_file(source: &Source) -> Option<&FileSource> {
    match &source.kind {
        SourceKind::File(cfg) if cfg.format != FileFormat::Parquet => Some(cfg),
        _ => None,
    }
}

/// Parses the text sources [`prepare_all`] registered lazily, each once and
/// concurrently: only `columns[source]` where given, else every column.
pub async fn parse_text(
    ctx: &SessionContext,
    pipeline: &Pipeline,
    sources: &mut [SourceTable],
    columns: Option<&ColumnsRead>,
    progress: &crate::progress::Hook,
) -> Result<(), SourceError> {
    use crate::progress::Stage;
    let text = pipeline
        .sources
        .iter()
        .filter_map(|s| text_file(s).map(|cfg| (s, cfg)));
    let parsed = try_join_all(text.map(|(s, cfg)| async move {
        let reading = progress.stage(Stage::Source, &s.name);
        let started = std::time::Instant::now();
        let wanted = columns.map(|c| c.of(&s.name));
        let table = file::load(ctx, &s.name, cfg, wanted.as_ref())
            .instrument(tracing::info_span!("source", name = %s.name))
            .await
            .map_err(|error| locate(error, pipeline, &s.name))?;
        tracing::info!(
            source = %table.name,
            kind = table.kind,
            rows = table.rows,
            in_memory = table.in_memory,
            columns = wanted.as_ref().map_or(table.schema.fields().len(), |w| w.len()),
            ms = started.elapsed().as_millis() as u64,
            "source ready"
        );
        reading.done();
        Ok::<_, SourceError>(table)
    }))
    .await?;
    for table in parsed {
        if let Some(slot) = sources.iter_mut().find(|s| s.name == table.name) {
            *slot = table;
        }
    }
    Ok(())
}

/// The columns a run's queries read, per table.
#[derive(Debug, Default, Clone)]
pub struct ColumnsRead(HashMap<String, BTreeSet<String>>);

impl ColumnsRead {
    /// Adds what the scans of `plan` (optimised, so scans carry their
    /// projections) and of its subqueries read. A source registered as a view
    /// is inlined by the optimiser as an unnamed scan under an alias with the
    /// source's name: such scans are counted for the nearest of `sources`
    /// they are under.
    pub fn add_plan(&mut self, plan: &LogicalPlan, sources: &[&str]) {
        self.walk(plan, sources, None);
    }

    fn walk(&mut self, plan: &LogicalPlan, sources: &[&str], within: Option<&str>) {
        let within = match plan {
            LogicalPlan::SubqueryAlias(a) => sources
                .iter()
                .find(|s| s.eq_ignore_ascii_case(a.alias.table()))
                .copied()
                .or(within),
            _ => within,
        };
        if let LogicalPlan::TableScan(scan) = plan {
            let table = within.unwrap_or(scan.table_name.table());
            let read = self.0.entry(table.to_string()).or_default();
            read.extend(
                scan.projected_schema
                    .fields()
                    .iter()
                    .map(|f| f.name().clone()),
            );
            for filter in &scan.filters {
                read.extend(filter.column_refs().into_iter().map(|c| c.name.clone()));
            }
        }
        for input in plan.inputs() {
            self.walk(input, sources, within);
        }
        let _ = plan.apply_subqueries(|subquery| {
            self.walk(subquery, sources, None);
            Ok(TreeNodeRecursion::Continue)
        });
    }

    /// Adds `column` of `table`.
    pub fn add(&mut self, table: &str, column: &str) {
        self.0
            .entry(table.to_string())
            .or_default()
            .insert(column.to_string());
    }

    /// What is read of `table`, whose name DataFusion may have lower-cased.
    pub fn of(&self, table: &str) -> BTreeSet<String> {
        let by_name = self.0.get(table);
        let lower = self.0.get(&table.to_lowercase());
        by_name
            .into_iter()
            .chain(lower)
            .flatten()
            .cloned()
            .collect()
    }
}

/// Adds the source's place in the pipeline file to an error about it.
fn locate(error: SourceError, pipeline: &Pipeline, source: &str) -> SourceError {
    let mut problems = [crate::config::Problem::new(format!("sources.{source}"), "")];
    crate::config::locate(&pipeline.file, &mut problems);
    match problems[0].position {
        Some(position) => SourceError::Located {
            error: Box::new(error),
            file: pipeline.file.clone(),
            position,
        },
        None => error,
    }
}

impl SourceError {
    /// The source's configuration does not fit its data (exit code 2).
    pub fn is_config(&self) -> bool {
        match self {
            SourceError::Config { .. } => true,
            SourceError::Located { error, .. } => error.is_config(),
            _ => false,
        }
    }
}

/// Commits the run's incremental pulls (after it has published).
pub fn commit_pulls(sources: &[SourceTable], run_id: &str) -> Result<(), SourceError> {
    sources
        .iter()
        .filter_map(|s| s.pull.as_ref())
        .try_for_each(|pull| pull.commit(run_id))
}

async fn register_incremental(
    ctx: &SessionContext,
    pipeline: &Pipeline,
    source: &Source,
    inc: &crate::config::Incremental,
) -> Result<SourceTable, SourceError> {
    let name = &source.name;
    let started = std::time::Instant::now();
    let previous =
        crate::state::StateStore::open(&pipeline.state)?.watermark(&pipeline.name, name)?;
    let remote: Arc<dyn TableProvider> = match &source.kind {
        SourceKind::Database(cfg) => database_provider(name, cfg).await?,
        SourceKind::Http(cfg) => {
            let since = previous.as_ref().map(|w| http::Since {
                column: &inc.column,
                param: inc.param.as_deref(),
                value: &w.value,
            });
            let (schema, batches) = http::fetch(name, cfg, Mode::Load, since).await?;
            Arc::new(MemTable::try_new(schema, vec![batches]).map_err(|source| {
                SourceError::Engine {
                    name: name.clone(),
                    source,
                }
            })?)
        }
        SourceKind::File(_) => return register(ctx, source, Mode::Load).await,
    };
    let table = incremental::register(ctx, pipeline, source, inc, remote, previous)
        .instrument(tracing::info_span!("source", name = %name))
        .await?;
    tracing::info!(source = %name, kind = table.kind, rows = table.rows, ms = started.elapsed().as_millis() as u64, "source ready");
    Ok(table)
}

/// [`register`] on a task of its own. The sources are registered side by
/// side from one task, and registering a file source is mostly CPU work
/// (its footers decoded, its row count planned): on its own task it runs on
/// any core, not only on the one polling the caller.
async fn register_on_own_task(
    ctx: &SessionContext,
    source: &Source,
    mode: Mode,
) -> Result<SourceTable, SourceError> {
    let (ctx, source) = (ctx.clone(), source.clone());
    let name = source.name.clone();
    let registering = async move { register(&ctx, &source, mode).await };
    SpawnedTask::spawn(registering.instrument(tracing::Span::current()))
        .join_unwind()
        .await
        .map_err(|e| SourceError::Engine {
            name,
            source: DataFusionError::Execution(format!("registering the source stopped: {e}")),
        })?
}

/// Registers one source as a table named after it. The single place that decides
/// how a source becomes a DataFusion table (a distributed mode swaps it here).
pub async fn register(
    ctx: &SessionContext,
    source: &Source,
    mode: Mode,
) -> Result<SourceTable, SourceError> {
    let started = std::time::Instant::now();
    let table = match &source.kind {
        SourceKind::File(cfg) => file::register(ctx, &source.name, cfg, mode).boxed(),
        SourceKind::Database(cfg) => register_database(ctx, &source.name, cfg).boxed(),
        SourceKind::Http(cfg) => register_http(ctx, &source.name, cfg, mode).boxed(),
    }
    .instrument(tracing::info_span!("source", name = %source.name))
    .await?;
    tracing::info!(
        source = %table.name,
        kind = table.kind,
        rows = table.rows,
        in_memory = table.in_memory,
        ms = started.elapsed().as_millis() as u64,
        "source ready"
    );
    Ok(table)
}

/// A database table or query, scanned in place by every query that reads it:
/// each pushes its projection and filters into the database.
async fn register_database(
    ctx: &SessionContext,
    name: &str,
    cfg: &DatabaseSource,
) -> Result<SourceTable, SourceError> {
    let provider = database_provider(name, cfg).await?;
    let schema = provider.schema();
    ctx.register_table(name, provider)
        .map_err(|source| SourceError::Engine {
            name: name.to_string(),
            source,
        })?;
    Ok(SourceTable {
        name: name.to_string(),
        kind: cfg.kind.name(),
        schema,
        rows: None,
        in_memory: false,
        pull: None,
    })
}

async fn database_provider(
    name: &str,
    cfg: &DatabaseSource,
) -> Result<Arc<dyn TableProvider>, SourceError> {
    match cfg.kind {
        DatabaseKind::Postgres => postgres::provider(name, cfg).await,
        DatabaseKind::Mysql => mysql::provider(name, cfg).await,
        DatabaseKind::Sqlite => sqlite::provider(name, cfg).await,
    }
}

/// An API's records, fetched once and held in memory for the run.
async fn register_http(
    ctx: &SessionContext,
    name: &str,
    cfg: &HttpSource,
    mode: Mode,
) -> Result<SourceTable, SourceError> {
    let (schema, batches) = http::fetch(name, cfg, mode, None).await?;
    let rows = batches.iter().map(|b| b.num_rows() as u64).sum();
    let engine = |source| SourceError::Engine {
        name: name.to_string(),
        source,
    };
    let table = MemTable::try_new(schema.clone(), vec![batches]).map_err(engine)?;
    ctx.register_table(name, Arc::new(table)).map_err(engine)?;
    Ok(SourceTable {
        name: name.to_string(),
        kind: "http",
        schema,
        rows: (mode == Mode::Load).then_some(rows),
        in_memory: true,
        pull: None,
    })
}
