//! Data quality: every check of every source measured in as few scans as
//! possible (`compile.rs`), judged with the semantics of the established tools
//! (`judge.rs`), compared with its own history where asked (`history.rs`), and
//! the gate that keeps KPIs computed from failed data from being reported
//! (`gate.rs`).

pub mod compile;
mod gate;
mod history;
mod judge;
mod keys;

use std::collections::HashMap;
use std::path::Path;

use chrono::NaiveDate;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type, SchemaRef};
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::common::ScalarValue;
use datafusion::common::tree_node::TreeNode;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{Expr, Volatility};
use datafusion::prelude::SessionContext;
use futures::future::join_all;

pub use compile::{CheckRef, Compiled};
pub use gate::{Gate, QualityStatus, apply as apply_gate};

use crate::config::{Check, CheckKind, Pipeline, Severity};
use crate::kpi::Incremental;
use crate::kpi::incremental::Pending;
use compile::{Delta, Query, Slot};

#[derive(Debug, thiserror::Error)]
pub enum QualityError {
    #[error("cannot collect the quarantined rows: {0}")]
    Quarantine(#[source] DataFusionError),
}

/// What a check concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    /// Failed, with `severity: warn`: reported, never blocking.
    Warned,
    /// Failed, with `severity: error`: blocks the KPIs that read the source.
    Failed,
    /// Could not be judged yet (a history check without enough history).
    Skipped,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::Warned => "warned",
            Outcome::Failed => "failed",
            Outcome::Skipped => "skipped",
        }
    }
}

/// One check's result (for one segment, with `group_by:`).
#[derive(Debug, Clone, PartialEq)]
pub struct CheckResult {
    /// The source checked; `None` for checks across sources.
    pub source: Option<String>,
    pub check: String,
    pub check_type: &'static str,
    pub column: Option<String>,
    /// `col=value` pairs of a `group_by:` segment; `None` for the whole check.
    pub segment: Option<String>,
    pub severity: Severity,
    pub outcome: Outcome,
    /// The measured value: a count, a fraction, an age in hours, a metric.
    pub observed: Option<f64>,
    pub unexpected: Option<u64>,
    pub unexpected_fraction: Option<f64>,
    pub rows_checked: Option<u64>,
    /// The threshold as written, e.g. `= 0`, `mostly >= 0.99`, `<= 36h`.
    pub threshold: String,
    pub message: String,
    /// Failing rows, each as `col=value` pairs (key columns first).
    pub sample: Vec<String>,
}

/// The quality of one run: every check's result.
#[derive(Debug, Clone, Default)]
pub struct QualityReport {
    pub results: Vec<CheckResult>,
}

impl QualityReport {
    /// Checks (whole, not per segment) with this outcome.
    pub fn count(&self, outcome: Outcome) -> usize {
        self.results
            .iter()
            .filter(|r| r.segment.is_none() && r.outcome == outcome)
            .count()
    }

    pub fn failed(&self) -> bool {
        self.count(Outcome::Failed) > 0
    }
}

/// What the queries measured for one check (one segment).
#[derive(Debug, Clone, Default)]
pub struct Measured {
    pub rows: Option<u64>,
    pub checked: Option<u64>,
    pub bad: Option<u64>,
    pub keys: Option<u64>,
    pub metric: Option<f64>,
    pub right: Option<f64>,
    pub latest: Option<ScalarValue>,
    /// The query failed while running.
    pub error: Option<String>,
}

/// Runs every compiled query concurrently, judges every check, and samples the
/// failing rows of the checks that did not pass. With `incremental`, the counts
/// that add up over rows are kept and brought up to date from the files
/// appended since (`keep`); the new states are returned, to commit once the
/// run publishes.
pub async fn run(
    ctx: &SessionContext,
    pipeline: &Pipeline,
    compiled: &Compiled,
    as_of: NaiveDate,
    output: &Path,
    incremental: Option<&Incremental>,
) -> (QualityReport, Pending) {
    let started = std::time::Instant::now();
    let ctx = &checks_session(ctx);
    let (kept, queries): (Vec<Query>, Vec<Query>) = compiled
        .queries
        .iter()
        .cloned()
        .partition(|q| incremental.is_some() && (q.fused_scan() || q.delta.is_some()));
    // Queries that call a relationship's key bitmap wait for it to be built;
    // the others start at once.
    let (later, now): (Vec<Query>, Vec<Query>) = queries
        .into_iter()
        .partition(|q| matches!(q.fast, Some(keys::FastKeys::Relationship { .. })));
    let (now, later, (kept, pending)) = tokio::join!(
        run_queries(ctx, now),
        async {
            let later = with_key_sets(ctx, later).await;
            run_queries(ctx, later).await
        },
        async {
            match incremental {
                Some(inc) => keep(ctx, inc, kept).await,
                None => (Vec::new(), Pending::default()),
            }
        }
    );
    let now: Vec<_> = now.into_iter().chain(kept).collect();
    // (check, segment) -> measurements; segment `None` for whole checks.
    let mut measured: HashMap<(CheckRef, Option<String>), Measured> = HashMap::new();
    let mut retry = Vec::new();
    for (q, result) in now.into_iter().chain(later) {
        match result {
            Ok(batches) => read(&q, &batches, &mut measured),
            // A fused query that fails is split: each check runs on its own, so
            // one failing expression (a cast of bad text) fails only its check.
            Err(_) if q.checks().len() > 1 => retry.extend(q.split()),
            Err(e) => fail(&q, &e, &mut measured),
        }
    }
    for (q, result) in run_queries(ctx, retry).await {
        match result {
            Ok(batches) => read(&q, &batches, &mut measured),
            Err(e) => fail(&q, &e, &mut measured),
        }
    }
    let history = history::History::load(output, pipeline, as_of);
    let mut results = Vec::new();
    for (source, checks) in all_checks(pipeline) {
        for (i, check) in checks.iter().enumerate() {
            let at: CheckRef = (source.map(str::to_string), i);
            let mut segments: Vec<(&Option<String>, &Measured)> = measured
                .iter()
                .filter(|((c, s), _)| *c == at && s.is_some())
                .map(|((_, s), m)| (s, m))
                .collect();
            segments.sort_by(|a, b| a.0.cmp(b.0));
            let whole = measured
                .get(&(at.clone(), None))
                .cloned()
                .unwrap_or_default();
            let ctx_judge = judge::Context {
                pipeline,
                source,
                schema: source.and_then(|s| compiled.schemas.get(s)),
                as_of,
                history: &history,
            };
            results.extend(judge::judge(&ctx_judge, check, &whole, &segments));
        }
    }
    sample_failures(ctx, pipeline, &mut results).await;
    tracing::info!(
        checks = results.iter().filter(|r| r.segment.is_none()).count(),
        queries = compiled.queries.len(),
        failed = results
            .iter()
            .filter(|r| r.segment.is_none() && r.outcome == Outcome::Failed)
            .count(),
        ms = started.elapsed().as_millis() as u64,
        "checks done"
    );
    (QualityReport { results }, pending)
}

/// Runs the queries whose results an incremental run keeps. A fused query is
/// one aggregate over one source's rows: it is maintained as a KPI's
/// aggregate is (`kpi::incremental`). A uniqueness or relationship count is
/// kept as numbers and brought up to date by its `Delta` query. Whatever cannot
/// be kept is measured in full.
async fn keep(
    ctx: &SessionContext,
    inc: &Incremental,
    queries: Vec<Query>,
) -> (Vec<(Query, Result<Vec<RecordBatch>, String>)>, Pending) {
    let (fused, counted): (Vec<Query>, Vec<Query>) =
        queries.into_iter().partition(Query::fused_scan);
    let mut pending = Pending::default();
    let mut results = Vec::new();
    let mut plans = Vec::new();
    for q in &fused {
        match ctx.state().create_logical_plan(&q.sql).await {
            Ok(plan) => plans.push(plan),
            Err(_) => break,
        }
    }
    if plans.len() != fused.len() {
        inc.incomplete();
    }
    let maintained = if plans.len() == fused.len() && !fused.is_empty() {
        inc.maintain(ctx, plans, "checks\n")
            .await
            .inspect_err(|e| tracing::warn!(error = %e, "could not bring the checks' kept aggregates up to date; measuring them in full"))
            .ok()
    } else {
        None
    };
    match maintained {
        Some(crate::kpi::incremental::Rewritten {
            plans,
            pending: kept,
            ..
        }) => {
            pending.extend(kept);
            let work = fused.into_iter().zip(plans).map(|(q, plan)| {
                let (ctx, sql) = (ctx.clone(), q.sql.clone());
                let measure = async move {
                    let df = ctx.execute_logical_plan(plan).await?;
                    crate::session::collect(df, &sql).await
                };
                (q, measure)
            });
            results.extend(in_tasks(work.collect()).await);
        }
        None => results.extend(run_queries(ctx, fused).await),
    }

    // Checks with the same delta (the same check twice, with other thresholds)
    // share one kept state.
    let mut by_delta: Vec<(Delta, Vec<Query>)> = Vec::new();
    for q in counted {
        let Some(delta) = q.delta.clone() else {
            results.extend(run_queries(ctx, vec![q]).await);
            continue;
        };
        match by_delta.iter_mut().find(|(d, _)| *d == delta) {
            Some((_, same)) => same.push(q),
            None => by_delta.push((delta, vec![q])),
        }
    }
    let counts = by_delta.into_iter().map(|(delta, queries)| async move {
        let q = &queries[0];
        let measure_in_full = async || {
            let ready = with_key_sets(ctx, queries.clone()).await;
            run_queries(ctx, ready).await
        };
        if let Some((source, filter)) = delta.filter()
            && !stable_filter(ctx, source, filter).await
        {
            tracing::debug!(sql = %q.sql, "counted in full: its `where:` may judge old rows differently");
            return (measure_in_full().await, Vec::new());
        }
        let full = async || -> Result<Vec<i64>, DataFusionError> {
            let ready = with_key_sets(ctx, vec![q.clone()]).await;
            match run_queries(ctx, ready).await.pop() {
                Some((_, Ok(batches))) => crate::kpi::incremental::row(&batches),
                Some((_, Err(e))) => Err(DataFusionError::Execution(e)),
                None => Err(DataFusionError::Internal("no count query ran".into())),
            }
        };
        let what = format!("{delta:?}");
        match inc
            .counts(ctx, &what, &delta.sources(), full, |input| delta.sql(input))
            .await
        {
            Ok((counts, staged)) => {
                let batch = counts_batch(&counts);
                let done = queries
                    .into_iter()
                    .map(|q| (q, batch.clone().map(|b| vec![b])))
                    .collect();
                (done, staged)
            }
            Err(e) => {
                tracing::warn!(error = %e, sql = %q.sql, "could not keep a check's counts; measuring it in full");
                (measure_in_full().await, Vec::new())
            }
        }
    });
    for (done, staged) in join_all(counts).await {
        results.extend(done);
        pending.add(staged);
    }
    (results, pending)
}

/// Whether `filter` over `source` judges a row the same on every run: no
/// subquery (another table may change) and only immutable functions (`now()`
/// and `current_date` are not).
async fn stable_filter(ctx: &SessionContext, source: &str, filter: &str) -> bool {
    let sql = format!("SELECT 1 FROM {source} WHERE {filter}");
    let Ok(plan) = ctx.state().create_logical_plan(&sql).await else {
        return false;
    };
    let changing = plan.exists(|node| {
        Ok(node.expressions().iter().any(|e| {
            e.exists(|e| {
                Ok(match e {
                    Expr::ScalarSubquery(_) | Expr::Exists(_) | Expr::InSubquery(_) => true,
                    Expr::ScalarFunction(f) => {
                        f.func.signature().volatility != Volatility::Immutable
                    }
                    _ => false,
                })
            })
            .unwrap_or(true)
        }))
    });
    !changing.unwrap_or(true)
}

/// Counts as a one-row result with columns `m0`, `m1`...
fn counts_batch(counts: &[i64]) -> Result<RecordBatch, String> {
    let columns: Vec<(String, ArrayRef)> = counts
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let column: ArrayRef =
                std::sync::Arc::new(datafusion::arrow::array::Int64Array::from(vec![*n]));
            (format!("m{i}"), column)
        })
        .collect();
    RecordBatch::try_from_iter(columns).map_err(|e| e.to_string())
}

/// The session check queries run in: the run's tables and settings, except that
/// a relationship's key side is hashed once for all probing partitions rather
/// than both sides being repartitioned (its build side is one column of keys),
/// and each query takes fewer partitions: the checks run side by side with each
/// other and with the KPIs, which keep the cores busy. Measured on SF1 TPC-H
/// (BENCHMARKS.md). `DATAFUSION_*` variables set by the user win.
fn checks_session(ctx: &SessionContext) -> SessionContext {
    let mut state = ctx.state();
    let options = state.config_mut().options_mut();
    let set = |var: &str| std::env::var_os(var).is_none();
    if set("DATAFUSION_OPTIMIZER_HASH_JOIN_SINGLE_PARTITION_THRESHOLD_ROWS") {
        options.optimizer.hash_join_single_partition_threshold_rows = 16 << 20;
    }
    if set("DATAFUSION_OPTIMIZER_HASH_JOIN_SINGLE_PARTITION_THRESHOLD") {
        options.optimizer.hash_join_single_partition_threshold = 256 << 20;
    }
    if set("DATAFUSION_EXECUTION_TARGET_PARTITIONS") {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        options.execution.target_partitions = cores.max(2);
    }
    SessionContext::new_with_state(state)
}

/// Builds the key bitmaps of integer relationships and registers them as the
/// `in_keys` functions their queries call; a relationship whose keys do not
/// fit a bitmap runs its anti-join instead.
async fn with_key_sets(ctx: &SessionContext, queries: Vec<Query>) -> Vec<Query> {
    let built = join_all(queries.iter().map(|q| async move {
        match &q.fast {
            Some(keys::FastKeys::Relationship { index, to, .. }) => {
                Some((*index, keys::key_set(ctx, &to.0, &to.1).await))
            }
            _ => None,
        }
    }))
    .await;
    let mut ready = Vec::new();
    for (mut q, built) in queries.into_iter().zip(built) {
        match (built, &q.fast) {
            (Some((index, Ok(Some(set)))), _) => {
                let udf = keys::in_keys(&keys::in_keys_name(index), Some(std::sync::Arc::new(set)));
                ctx.register_udf(udf);
            }
            (Some((_, result)), Some(keys::FastKeys::Relationship { fallback, .. })) => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "no key bitmap; the relationship runs as a join");
                }
                q.sql = fallback.clone();
            }
            _ => {}
        }
        ready.push(q);
    }
    ready
}

/// Runs queries concurrently, each by its bitmap path (`keys.rs`) or its SQL.
async fn run_queries(
    ctx: &SessionContext,
    queries: Vec<Query>,
) -> Vec<(Query, Result<Vec<RecordBatch>, String>)> {
    let work = queries.into_iter().map(|q| {
        let ctx = ctx.clone();
        let (sql, fast) = (q.sql.clone(), q.fast.clone());
        let measure = async move {
            let fast = match &fast {
                Some(f) => keys::measure(&ctx, f).await.transpose(),
                None => None,
            };
            match fast {
                Some(result) => result,
                None => match ctx.sql(&sql).await {
                    Ok(df) => crate::session::collect(df, &sql).await,
                    Err(e) => Err(e),
                },
            }
        };
        (q, measure)
    });
    in_tasks(work.collect()).await
}

/// Runs each query's work concurrently, in a task of its own; each comes back
/// with its result (a task that panicked is an error of its query, never a
/// silent pass).
async fn in_tasks<F>(work: Vec<(Query, F)>) -> Vec<(Query, Result<Vec<RecordBatch>, String>)>
where
    F: std::future::Future<Output = Result<Vec<RecordBatch>, DataFusionError>> + Send + 'static,
{
    let (queries, tasks): (Vec<Query>, Vec<_>) = work
        .into_iter()
        .map(|(q, measure)| {
            let sql = q.sql.clone();
            let task = tokio::spawn(async move {
                let started = std::time::Instant::now();
                let result = measure.await;
                tracing::debug!(ms = started.elapsed().as_millis() as u64, %sql, "check query");
                result.map_err(|e| e.to_string())
            });
            (q, task)
        })
        .unzip();
    let results = join_all(tasks).await;
    queries
        .into_iter()
        .zip(results)
        .map(|(q, joined)| {
            let result = joined.unwrap_or_else(|e| Err(format!("the check query stopped: {e}")));
            (q, result)
        })
        .collect()
}

/// Records a query's error on every check it serves.
fn fail(q: &Query, error: &str, measured: &mut HashMap<(CheckRef, Option<String>), Measured>) {
    for check in q.checks() {
        measured.entry((check, None)).or_default().error = Some(error.to_string());
    }
}

/// Every check with its source (`None` for the pipeline's cross-source checks).
pub fn all_checks(pipeline: &Pipeline) -> Vec<(Option<&str>, &[Check])> {
    pipeline
        .sources
        .iter()
        .map(|s| (Some(s.name.as_str()), s.checks.as_slice()))
        .chain(std::iter::once((None, pipeline.checks.as_slice())))
        .collect()
}

/// Reads a query's result into the measurements of the checks it serves.
fn read(
    q: &Query,
    batches: &[RecordBatch],
    measured: &mut HashMap<(CheckRef, Option<String>), Measured>,
) {
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    if q.group_by.is_empty() && rows != 1 {
        // A scalar query (a reconciliation's side) must give exactly one value.
        let error = format!("the query returned {rows} rows where one value was expected");
        return fail(q, &error, measured);
    }
    for batch in batches {
        // Each result column cast once, to integers and to floats.
        let columns: Vec<(Option<ArrayRef>, Option<ArrayRef>, Option<ArrayRef>)> = q
            .slots
            .iter()
            .map(|(alias, _, _)| {
                let raw = batch
                    .schema()
                    .index_of(alias)
                    .ok()
                    .map(|i| batch.column(i).clone());
                let int = raw.as_ref().and_then(|a| cast(a, &DataType::Int64).ok());
                let float = raw.as_ref().and_then(|a| cast(a, &DataType::Float64).ok());
                (raw, int, float)
            })
            .collect();
        for row in 0..batch.num_rows() {
            let segment = (!q.group_by.is_empty()).then(|| {
                q.group_by
                    .iter()
                    .enumerate()
                    .map(|(i, g)| format!("{g}={}", cell(batch.column(i), row)))
                    .collect::<Vec<_>>()
                    .join(", ")
            });
            for ((_, check, slot), (raw, int, float)) in q.slots.iter().zip(&columns) {
                let m = measured
                    .entry((check.clone(), segment.clone()))
                    .or_default();
                let int = int.as_ref().and_then(|a| {
                    let a = a.as_primitive::<Int64Type>();
                    a.is_valid(row).then(|| a.value(row).max(0) as u64)
                });
                let float = float.as_ref().and_then(|a| {
                    let a = a.as_primitive::<Float64Type>();
                    a.is_valid(row).then(|| a.value(row))
                });
                match slot {
                    Slot::Rows => m.rows = int,
                    Slot::Checked => m.checked = int,
                    Slot::Bad => m.bad = int,
                    Slot::Keys => m.keys = int,
                    Slot::Metric => m.metric = float,
                    Slot::Right => m.right = float,
                    Slot::Latest => {
                        m.latest = raw
                            .as_ref()
                            .and_then(|a| ScalarValue::try_from_array(a, row).ok())
                    }
                }
            }
        }
    }
}

/// One cell as text, `NULL` for a null.
fn cell(array: &ArrayRef, row: usize) -> String {
    if array.is_null(row) {
        "NULL".to_string()
    } else {
        array_value_to_string(array, row).unwrap_or_default()
    }
}

/// Adds samples of failing rows to the results that did not pass, each from a
/// small query run only for them.
async fn sample_failures(ctx: &SessionContext, pipeline: &Pipeline, results: &mut [CheckResult]) {
    let size = pipeline.quality.sample_size;
    if size == 0 {
        return;
    }
    for r in results.iter_mut().filter(|r| r.segment.is_none()) {
        if !matches!(r.outcome, Outcome::Failed | Outcome::Warned) {
            continue;
        }
        let Some(sql) = sample_sql(pipeline, r, size) else {
            continue;
        };
        match ctx.sql(&sql).await {
            Ok(df) => match df.collect().await {
                Ok(batches) => r.sample = render(&batches),
                Err(e) => {
                    tracing::warn!(check = %r.check, error = %e, "could not sample failing rows")
                }
            },
            Err(e) => tracing::warn!(check = %r.check, error = %e, "could not sample failing rows"),
        }
    }
}

fn sample_sql(pipeline: &Pipeline, r: &CheckResult, size: usize) -> Option<String> {
    let (source, check) = find(pipeline, r)?;
    let key_and = |columns: Vec<&str>| -> String {
        let mut cols: Vec<String> = source
            .map(|s| s.key.iter().map(|k| compile::ident(k)).collect())
            .unwrap_or_default();
        for c in columns {
            let c = compile::ident(c);
            if !cols.contains(&c) {
                cols.push(c);
            }
        }
        if cols.is_empty() {
            "*".to_string()
        } else {
            cols.join(", ")
        }
    };
    match &check.kind {
        CheckKind::Unique { columns } => {
            let keys: Vec<String> = columns.iter().map(|c| compile::ident(c)).collect();
            Some(format!(
                "SELECT {k}, count(*) AS duplicates FROM {t} WHERE {w} GROUP BY {k} HAVING count(*) > 1 ORDER BY count(*) DESC LIMIT {size}",
                k = keys.join(", "),
                t = source?.name,
                w = compile::unique_rows(check),
            ))
        }
        CheckKind::Relationship { from, .. } => {
            let (_, orphans) = compile::relationship_conditions(check);
            Some(format!(
                "SELECT DISTINCT f.{c} FROM {t} AS f WHERE {orphans} LIMIT {size}",
                c = compile::ident(&from.1),
                t = from.0
            ))
        }
        kind if kind.is_row_level() => {
            let (_, bad) = compile::row_conditions(check)?;
            Some(format!(
                "SELECT {} FROM {} WHERE {bad} LIMIT {size}",
                key_and(kind.columns()),
                source?.name
            ))
        }
        _ => None,
    }
}

/// The source (if any) and check definition behind a result.
fn find<'a>(
    pipeline: &'a Pipeline,
    r: &CheckResult,
) -> Option<(Option<&'a crate::config::Source>, &'a Check)> {
    match &r.source {
        Some(name) if !matches!(r.check_type, "relationship" | "reconcile") => {
            let s = pipeline.sources.iter().find(|s| &s.name == name)?;
            Some((Some(s), s.checks.iter().find(|c| c.id == r.check)?))
        }
        _ => Some((None, pipeline.checks.iter().find(|c| c.id == r.check)?)),
    }
}

/// The rows of each `quarantine: true` source that fail any of its row-level
/// checks, with a `failed_checks` column naming them.
pub async fn quarantine(
    ctx: &SessionContext,
    pipeline: &Pipeline,
) -> Result<Vec<(String, SchemaRef, Vec<RecordBatch>)>, DataFusionError> {
    let mut out = Vec::new();
    for source in pipeline.sources.iter().filter(|s| s.quarantine) {
        let rules: Vec<(String, String)> = source
            .checks
            .iter()
            .filter_map(|c| compile::row_conditions(c).map(|(_, bad)| (c.id.clone(), bad)))
            .collect();
        if rules.is_empty() {
            continue;
        }
        let names: Vec<String> = rules
            .iter()
            .map(|(id, bad)| format!("CASE WHEN {bad} THEN {} END", compile::quote(id)))
            .collect();
        let any: Vec<String> = rules.iter().map(|(_, bad)| format!("({bad})")).collect();
        let sql = format!(
            "SELECT *, concat_ws(', ', {}) AS failed_checks FROM {} WHERE {}",
            names.join(", "),
            source.name,
            any.join(" OR ")
        );
        let df = ctx.sql(&sql).await?;
        let schema: SchemaRef = std::sync::Arc::new(df.schema().as_arrow().clone());
        let batches = df.collect().await?;
        out.push((source.name.clone(), schema, batches));
    }
    Ok(out)
}

/// Rows as `col=value, ...` lines.
fn render(batches: &[RecordBatch]) -> Vec<String> {
    let mut out = Vec::new();
    for b in batches {
        for row in 0..b.num_rows() {
            let cells: Vec<String> = b
                .schema()
                .fields()
                .iter()
                .zip(b.columns())
                .map(|(f, a)| format!("{}={}", f.name(), cell(a, row)))
                .collect();
            out.push(cells.join(", "));
        }
    }
    out
}
