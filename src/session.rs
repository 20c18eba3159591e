//! The DataFusion session every query of a run executes in: its settings, tuned
//! for KPI work, and kpiforge's own optimizer rules.

mod build_side;
mod count_distinct;
mod dates;

use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::execution::SessionStateBuilder;
use datafusion::physical_optimizer::optimizer::PhysicalOptimizer;
use datafusion::physical_plan::{self, ExecutionPlan, display::DisplayableExecutionPlan};
use datafusion::prelude::{DataFrame, SessionConfig, SessionContext};

pub use build_side::BuildOnKeys;
pub use count_distinct::{CountDistinct, CountKeys};
pub use dates::{TruncDate, TruncateDates, Unit};

/// Build sides of hash joins up to this many rows are hashed once and shared by
/// every partition of the probe side (DataFusion's `CollectLeft`), rather than
/// both sides being re-partitioned by key. On 2 cores that measured faster at
/// both TPC-H scales, for the 1.5 M- and the 15 M-row `orders` (1.3× and 1.25×
/// on the shared join), and used less memory; BENCHMARKS.md has the figures.
const SHARED_BUILD_ROWS: usize = 32_000_000;
/// ... and up to this many bytes.
const SHARED_BUILD_BYTES: usize = 1 << 30;

/// A new session for one run.
///
/// DataFusion's settings can be tuned through its `DATAFUSION_*` environment
/// variables (e.g. `DATAFUSION_EXECUTION_TARGET_PARTITIONS=16`); kpiforge's
/// defaults below apply only where none is set. By default a query is split
/// into four partitions per core, at least eight: on a 2-core machine that
/// measured faster than one per core (more row groups in flight while others
/// decode; see BENCHMARKS.md).
pub fn session() -> SessionContext {
    let mut config = SessionConfig::from_env()
        .unwrap_or_default()
        .with_information_schema(true);
    let unset = |name: &str| std::env::var_os(name).is_none();
    if unset("DATAFUSION_EXECUTION_TARGET_PARTITIONS") {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        config = config.with_target_partitions((cores * 4).max(8));
    }
    let optimizer = &mut config.options_mut().optimizer;
    // One pass of the logical optimizer, not up to three: a second pass finds
    // nothing more to do in KPI plans and costs as much as the first. An
    // incremental run plans ~40 small queries, and was 14% faster; the full
    // run's plans and time were unchanged (BENCHMARKS.md).
    if unset("DATAFUSION_OPTIMIZER_MAX_PASSES") {
        optimizer.max_passes = 1;
    }
    if unset("DATAFUSION_OPTIMIZER_HASH_JOIN_SINGLE_PARTITION_THRESHOLD_ROWS") {
        optimizer.hash_join_single_partition_threshold_rows = SHARED_BUILD_ROWS;
    }
    if unset("DATAFUSION_OPTIMIZER_HASH_JOIN_SINGLE_PARTITION_THRESHOLD") {
        optimizer.hash_join_single_partition_threshold = SHARED_BUILD_BYTES;
    }
    // After DataFusion's join selection, which picks build sides by row counts,
    // and before the rules that build on its choice (distribution, dynamic filters).
    let mut rules = PhysicalOptimizer::new().rules;
    let at = rules
        .iter()
        .position(|r| r.name() == "join_selection")
        .map_or(rules.len(), |i| i + 1);
    rules.insert(at, Arc::new(BuildOnKeys));
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_default_features()
        .with_physical_optimizer_rules(rules)
        .build();
    let ctx = SessionContext::new_with_state(state);
    ctx.add_optimizer_rule(Arc::new(TruncateDates));
    ctx.add_optimizer_rule(Arc::new(CountKeys));
    ctx
}

/// Runs `frame` and returns its batches, one `Vec` per output partition.
///
/// The query profile: at `KPIFORGE_LOG=kpiforge::profile=trace` (or `-vv`), each
/// query's time and its executed plan with DataFusion's metrics (what `EXPLAIN
/// ANALYZE` shows: rows, time and memory per operator) are logged under `what`.
pub async fn collect_partitioned(
    frame: DataFrame,
    what: &str,
) -> Result<Vec<Vec<RecordBatch>>, DataFusionError> {
    let started = Instant::now();
    let task = Arc::new(frame.task_ctx());
    let plan = frame.create_physical_plan().await?;
    let partitions = physical_plan::collect_partitioned(plan.clone(), task).await?;
    profile(what, started, &plan);
    Ok(partitions)
}

/// [`collect_partitioned`] into one list of batches, partition after partition
/// (a sorted result has one partition).
pub async fn collect(frame: DataFrame, what: &str) -> Result<Vec<RecordBatch>, DataFusionError> {
    Ok(collect_partitioned(frame, what)
        .await?
        .into_iter()
        .flatten()
        .collect())
}

fn profile(what: &str, started: Instant, plan: &Arc<dyn ExecutionPlan>) {
    if tracing::enabled!(target: "kpiforge::profile", tracing::Level::TRACE) {
        let ms = started.elapsed().as_secs_f64() * 1e3;
        let metrics = DisplayableExecutionPlan::with_metrics(plan.as_ref()).indent(true);
        tracing::trace!(target: "kpiforge::profile", query = what, ms, "query profile\n{metrics}");
    }
}
