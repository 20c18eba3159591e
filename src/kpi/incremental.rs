//! Incremental KPIs (`incremental: true`): aggregates kept between runs and
//! brought up to date with the files appended since, instead of recomputed.
//!
//! Each `GROUP BY` in a KPI's optimised plan whose input only selects, projects,
//! joins (inner) and unions rows of Parquet file sources is **maintained**. Its
//! state, one row per group of mergeable partial results (a sum and a count for
//! `avg`, the distinct `(group, value)` pairs for `count(DISTINCT)`), is kept in
//! `.kpiforge/incremental/` with the list of files it covers. The next run:
//!
//! - finds each source's **new files** (every file the state covers must still be
//!   there, unchanged in size and modification time, or the state is rebuilt);
//! - computes the aggregate's partial results over the new rows only. For a join
//!   of sources that both grew, the new rows of `A ⋈ B` are `ΔA ⋈ B` plus
//!   `A_old ⋈ ΔB`: each term reads one source's new files, so a hash join
//!   builds on the few new rows and prunes the other side's row groups;
//! - merges them into the kept state, and computes the aggregate's output from it;
//! - runs the rest of the KPI's plan on that output as usual.
//!
//! The new state is written when the run publishes, and only then becomes the
//! one the next run starts from (`Pending::commit`). Aggregates of another shape
//! are computed in full every run, as without `incremental:`.

mod stored;

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, Date32Array};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::compute::kernels::partition::partition;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::datatypes::Date32Type;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::TableProvider;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, JoinType, NullEquality, ScalarValue};
use datafusion::datasource::listing::{ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::datasource::{MemTable, provider_as_source, source_as_provider};
use datafusion::error::DataFusionError;
use datafusion::functions_aggregate::expr_fn::{count, max, min, sum};
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::{
    Aggregate, Expr, ExprSchemable, LogicalPlan, LogicalPlanBuilder, TableScan, cast, col, lit,
    when,
};
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use futures::future::try_join_all;

use super::share;
use crate::config::{FileFormat, Pipeline, SourceKind};
use crate::publish::Staged;
pub use stored::Pending;
use stored::{Manifest, Stamp, Store};

/// States with at least this many groups are kept in one file per partition.
const PARTITIONED_ROWS: usize = 100_000;

/// What an incremental run knows: the files of each Parquet source now, and
/// where the kept states are.
#[derive(Debug)]
pub struct Incremental {
    store: Store,
    /// Lower-cased source name -> its files now.
    files: HashMap<String, Vec<Stamp>>,
    /// Ignore kept states (`kpiforge run --full`): rebuild them all.
    full: bool,
}

impl Incremental {
    /// `None` unless the pipeline says `incremental: true`.
    pub fn new(pipeline: &Pipeline, full: bool) -> Option<Incremental> {
        if !pipeline.incremental {
            return None;
        }
        let files = pipeline
            .sources
            .iter()
            .filter_map(|s| match &s.kind {
                SourceKind::File(f) if f.format == FileFormat::Parquet => {
                    let stamps = f
                        .paths
                        .iter()
                        .map(|p| Stamp::of(p))
                        .collect::<Option<Vec<_>>>()?;
                    Some((s.name.to_lowercase(), stamps))
                }
                _ => None,
            })
            .collect();
        Some(Incremental {
            store: Store::new(pipeline),
            files,
            full,
        })
    }

    /// Rewrites `plans` so that every maintainable aggregate in them reads its
    /// result, brought up to date from the kept state. What it stages is
    /// returned, to be committed once the run publishes.
    pub async fn maintain(
        &self,
        ctx: &SessionContext,
        plans: Vec<LogicalPlan>,
    ) -> Result<(Vec<LogicalPlan>, Pending), DataFusionError> {
        let analysis = super::share::analysis_state(ctx);
        let plans: Vec<LogicalPlan> = plans
            .iter()
            .map(|p| analysis.optimize(p))
            .collect::<Result<_, _>>()?;
        let mut found: Vec<Maintained> = Vec::new();
        for plan in &plans {
            self.find(plan, &mut found);
        }
        // Aggregates over the same rows with the same grouping (as `share.rs`
        // finds them) are kept as one: one state, one pass over the new rows.
        let mut fused: Vec<(Maintained, Vec<Use>)> = Vec::new();
        let mut by_rows: HashMap<share::Key, Vec<(LogicalPlan, Vec<Expr>)>> = HashMap::new();
        for m in found {
            match share::aggregate_unit(&m.node)? {
                Some(unit) => by_rows
                    .entry(unit.key)
                    .or_default()
                    .push((m.node, unit.exprs)),
                None => {
                    let uses = vec![Use::whole(&m)];
                    fused.push((m, uses));
                }
            }
        }
        for ((rows, groups), nodes) in by_rows {
            let mut union: Vec<Expr> = Vec::new();
            for e in nodes.iter().flat_map(|(_, exprs)| exprs) {
                if !union.contains(e) {
                    union.push(e.clone());
                }
            }
            let named = |prefix: &str, exprs: &[Expr]| -> Vec<Expr> {
                exprs
                    .iter()
                    .enumerate()
                    .map(|(i, e)| e.clone().alias(format!("{prefix}{i}")))
                    .collect()
            };
            let node = LogicalPlanBuilder::from(rows)
                .aggregate(named("g", &groups), named("c", &union))?
                .build()?;
            let LogicalPlan::Aggregate(agg) = &node else {
                unreachable!("an aggregate was built")
            };
            match Maintained::analyse(agg, &node, &self.files) {
                Ok(m) => {
                    let uses = nodes
                        .into_iter()
                        .map(|(node, exprs)| Use {
                            node,
                            aggregates: exprs
                                .iter()
                                .map(|e| union.iter().position(|u| u == e).unwrap_or(0))
                                .collect(),
                        })
                        .collect();
                    fused.push((m, uses));
                }
                // Each on its own, as found.
                Err(_) => {
                    for (node, _) in nodes {
                        let LogicalPlan::Aggregate(agg) = &node else {
                            continue;
                        };
                        if let Ok(m) = Maintained::analyse(agg, &node, &self.files) {
                            let uses = vec![Use::whole(&m)];
                            fused.push((m, uses));
                        }
                    }
                }
            }
        }

        let results = try_join_all(fused.iter().map(|(m, _)| self.update(ctx, m))).await?;
        let mut pending = Pending::default();
        let mut reads: HashMap<LogicalPlan, LogicalPlan> = HashMap::new();
        for ((m, uses), (table, staged)) in fused.iter().zip(results) {
            for u in uses {
                reads.insert(u.node.clone(), u.read(m.groups.len(), &table)?);
            }
            pending.add(staged);
        }
        let plans = plans
            .into_iter()
            .map(|plan| {
                plan.transform_down(|node| match reads.get(&node) {
                    Some(read) => Ok(Transformed::yes(read.clone())),
                    None => Ok(Transformed::no(node)),
                })
                .map(|t| t.data)
            })
            .collect::<Result<_, _>>()?;
        Ok((plans, pending))
    }

    /// Collects the maintainable aggregates of `plan`, outermost first: an
    /// aggregate that cannot be maintained may hold ones that can.
    fn find(&self, plan: &LogicalPlan, found: &mut Vec<Maintained>) {
        if let LogicalPlan::Aggregate(agg) = plan {
            match Maintained::analyse(agg, plan, &self.files) {
                Ok(m) => {
                    if !found.iter().any(|f| f.node == m.node) {
                        found.push(m);
                    }
                    return;
                }
                Err(why) => {
                    tracing::debug!(%why, aggregate = %plan.display(), "aggregate computed in full")
                }
            }
        }
        for input in plan.inputs() {
            self.find(input, found);
        }
    }

    /// Brings one aggregate's state up to date and returns its output as a table.
    async fn update(
        &self,
        ctx: &SessionContext,
        m: &Maintained,
    ) -> Result<(Arc<dyn TableProvider>, Vec<Staged>), DataFusionError> {
        let started = std::time::Instant::now();
        let key = m.key();
        let kept = if self.full {
            None
        } else {
            self.store.manifest(&key, &m.fingerprint)
        };
        // The new files of each source, or why the kept state cannot be used.
        let delta = kept.as_ref().and_then(|manifest| {
            let mut delta = BTreeMap::new();
            for source in m.sources.iter() {
                let now = &self.files[source];
                let then = manifest.sources.get(source)?;
                if let Some(lost) = then.iter().find(|s| !now.contains(s)) {
                    tracing::info!(%source, file = %lost.path, "a file the kept state covers is gone or changed: rebuilding it");
                    return None;
                }
                let new: Vec<Stamp> = now.iter().filter(|s| !then.contains(s)).cloned().collect();
                delta.insert(source.clone(), (then.clone(), new));
            }
            Some(delta)
        });
        let mode = if delta.is_some() {
            "incremental"
        } else {
            "full"
        };
        let kept = kept.filter(|_| delta.is_some());
        // The rows not in the state yet (all of them for a full build).
        let terms = match &delta {
            None => vec![m.input.clone()],
            Some(delta) => m.delta_terms(delta)?,
        };
        // Kept in one file per partition only when large: a small state is
        // cheaper rewritten whole than read from many files.
        let mut layout = match &kept {
            Some(k) => m.partition.filter(|_| k.partitioned),
            None => m.partition,
        };
        let building = kept.is_none();
        let mut groups = kept.as_ref().map(|k| k.groups.clone()).unwrap_or_default();
        let mut pair_files = kept
            .map(|k| k.pairs)
            .unwrap_or_else(|| vec![Vec::new(); m.distinct_count()]);
        let mut staged = Vec::new();
        // The partitions of the state the new rows touch, brought up to date.
        let mut fresh: Option<(RecordBatch, BTreeSet<String>)> = None;
        if !terms.is_empty() {
            let partials = terms
                .iter()
                .map(|t| m.partial_plan(t.clone()))
                .collect::<Result<Vec<_>, _>>()?;
            let new =
                one_batch(&run(ctx, m.merge_plan(partials, None)?, "new partial results").await?)?;
            let touched = m.partitions(&new, layout)?;
            let mut parts = vec![ctx.read_batch(new)?.into_unoptimized_plan()];
            for (d, (i, _)) in m.distinct().enumerate() {
                let mut pairs = m.pairs_plan(&terms, i)?;
                if let Some(files) = self.store.paths(&key, &pair_files[d]) {
                    pairs =
                        anti_join(ctx, pairs, files, m.partition_filter(&touched, layout)).await?;
                }
                // Sorted by the candidate partition column even when the state is
                // not partitioned: the pairs are read back filtered by it.
                let pairs = m.sorted(pairs, m.partition)?;
                let pairs = one_batch(&run(ctx, pairs, "new distinct pairs").await?)?;
                if pairs.num_rows() > 0 {
                    let (name, file) = self.store.stage(&key, &format!("pairs{d}"), &pairs)?;
                    pair_files[d].push(name);
                    staged.push(file);
                }
                parts.push(m.pair_counts(ctx.read_batch(pairs)?.into_unoptimized_plan(), i)?);
            }
            let kept_touched: Vec<String> = touched
                .iter()
                .filter_map(|p| groups.get(p).cloned())
                .collect();
            if let Some(files) = self.store.paths(&key, &kept_touched) {
                parts.push(read_parquet(ctx, files).await?);
            }
            let merged =
                one_batch(&run(ctx, m.merge_plan(parts, layout)?, "aggregate state").await?)?;
            if building && merged.num_rows() < PARTITIONED_ROWS {
                layout = None;
            }
            let touched = if building {
                m.partitions(&merged, layout)?
            } else {
                touched
            };
            for (partition, rows) in m.split(&merged, layout)? {
                let (name, file) = self
                    .store
                    .stage(&key, &format!("groups-{partition}"), &rows)?;
                groups.insert(partition, name);
                staged.push(file);
            }
            fresh = Some((merged, touched));
        }

        // The output: from the partitions just merged and the ones kept as they were.
        let untouched: Vec<String> = groups
            .iter()
            .filter(|(p, _)| {
                fresh
                    .as_ref()
                    .is_none_or(|(_, touched)| !touched.contains(*p))
            })
            .map(|(_, file)| file.clone())
            .collect();
        let mut state: Option<LogicalPlanBuilder> = None;
        let mut states = 0;
        if let Some((merged, _)) = &fresh {
            states += merged.num_rows();
            state = Some(LogicalPlanBuilder::from(
                ctx.read_batch(merged.clone())?.into_unoptimized_plan(),
            ));
        }
        if let Some(files) = self.store.paths(&key, &untouched) {
            let kept = read_parquet(ctx, files).await?;
            state = Some(match state {
                None => LogicalPlanBuilder::from(kept),
                Some(s) => s.union(kept)?,
            });
        }
        let Some(state) = state else {
            return Err(DataFusionError::Internal(format!(
                "aggregate state {key} has no files"
            )));
        };
        let result = run(ctx, m.final_plan(state.build()?)?, "aggregate result").await?;
        let schema = result[0].schema();

        if !staged.is_empty() {
            let manifest = Manifest {
                plan: m.fingerprint.clone(),
                sources: m
                    .sources
                    .iter()
                    .map(|s| (s.clone(), self.files[s].clone()))
                    .collect(),
                groups,
                partitioned: layout.is_some(),
                pairs: pair_files,
            };
            staged.push(self.store.stage_manifest(&key, &manifest)?);
        }
        tracing::info!(
            mode,
            sources = %m.sources.join(","),
            new_rows = !terms.is_empty(),
            groups_merged = states,
            ms = started.elapsed().as_millis() as u64,
            "maintained aggregate"
        );
        Ok((Arc::new(MemTable::try_new(schema, vec![result])?), staged))
    }
}

/// An aggregate whose result can be kept and brought up to date.
#[derive(Debug)]
struct Maintained {
    /// The aggregate node, as found in the optimised plan.
    node: LogicalPlan,
    /// Its input, which selects, projects, joins and unions source rows only.
    input: LogicalPlan,
    groups: Vec<Expr>,
    aggs: Vec<Partial>,
    /// The first `DATE` grouping column: the state is kept in one file per
    /// value of it (a period, usually), so new rows rewrite only their periods.
    partition: Option<usize>,
    /// The source of each scan in `input`, in the order `substitute` visits them.
    scans: Vec<String>,
    /// Distinct sources read, sorted.
    sources: Vec<String>,
    /// The node as text: a kept state is used only for the same aggregate.
    fingerprint: String,
}

/// How one aggregate function is split into mergeable parts.
#[derive(Debug, Clone)]
enum Partial {
    /// `sum(x)`: the sum and the count of non-null values (a sum of none is NULL).
    Sum(Expr),
    /// `count(x)`, `count(*)`.
    Count(Expr),
    /// `avg(x)` of a float or an integer: sum and count as `DOUBLE`.
    Avg(Expr),
    Min(Expr),
    Max(Expr),
    /// `count(DISTINCT x)`: the `(group, x)` pairs are kept; the state counts them.
    CountDistinct(Expr),
}

impl Maintained {
    fn analyse(
        agg: &Aggregate,
        node: &LogicalPlan,
        files: &HashMap<String, Vec<Stamp>>,
    ) -> Result<Maintained, String> {
        if agg
            .group_expr
            .iter()
            .any(|g| matches!(g, Expr::GroupingSet(_)))
        {
            return Err("GROUPING SETS".into());
        }
        let input_schema = agg.input.schema();
        let aggs = agg
            .aggr_expr
            .iter()
            .map(|e| Partial::of(e, input_schema))
            .collect::<Result<Vec<_>, _>>()?;
        let mut scans = Vec::new();
        linear(&agg.input, None, files, &mut scans)?;
        if scans.is_empty() {
            return Err("reads no source".into());
        }
        let mut sources = scans.clone();
        sources.sort();
        sources.dedup();
        let partition = (0..agg.group_expr.len())
            .find(|&k| node.schema().field(k).data_type() == &DataType::Date32);
        Ok(Maintained {
            node: node.clone(),
            input: agg.input.as_ref().clone(),
            groups: agg.group_expr.clone(),
            aggs,
            partition,
            scans,
            sources,
            fingerprint: format!("{}", node.display_indent_schema()),
        })
    }

    fn key(&self) -> String {
        stored::hash(&self.fingerprint)
    }

    fn distinct(&self) -> impl Iterator<Item = (usize, &Expr)> {
        self.aggs.iter().enumerate().filter_map(|(i, a)| match a {
            Partial::CountDistinct(x) => Some((i, x)),
            _ => None,
        })
    }

    fn distinct_count(&self) -> usize {
        self.distinct().count()
    }

    fn group_names(&self) -> Vec<Expr> {
        (0..self.groups.len())
            .map(|k| col(format!("g{k}")))
            .collect()
    }

    /// The state's columns after the groups, with their merge.
    fn state_columns(&self) -> Vec<(String, fn(Expr) -> Expr)> {
        let mut columns: Vec<(String, fn(Expr) -> Expr)> = Vec::new();
        for (i, a) in self.aggs.iter().enumerate() {
            match a {
                Partial::Sum(_) | Partial::Avg(_) => {
                    columns.push((format!("s{i}"), sum));
                    columns.push((format!("n{i}"), sum));
                }
                Partial::Count(_) | Partial::CountDistinct(_) => {
                    columns.push((format!("n{i}"), sum))
                }
                Partial::Min(_) => columns.push((format!("m{i}"), min)),
                Partial::Max(_) => columns.push((format!("m{i}"), max)),
            }
        }
        columns
    }

    /// The input grouped as the aggregate groups it, with partial results.
    fn partial_plan(&self, input: LogicalPlan) -> Result<LogicalPlan, DataFusionError> {
        let groups: Vec<Expr> = self
            .groups
            .iter()
            .enumerate()
            .map(|(k, g)| g.clone().alias(format!("g{k}")))
            .collect();
        let mut partials = Vec::new();
        for (i, a) in self.aggs.iter().enumerate() {
            match a {
                Partial::Sum(x) => {
                    partials.push(sum(x.clone()).alias(format!("s{i}")));
                    partials.push(count(x.clone()).alias(format!("n{i}")));
                }
                Partial::Avg(x) => {
                    partials.push(sum(cast(x.clone(), DataType::Float64)).alias(format!("s{i}")));
                    partials.push(count(x.clone()).alias(format!("n{i}")));
                }
                Partial::Count(x) => partials.push(count(x.clone()).alias(format!("n{i}"))),
                Partial::Min(x) => partials.push(min(x.clone()).alias(format!("m{i}"))),
                Partial::Max(x) => partials.push(max(x.clone()).alias(format!("m{i}"))),
                // Counted from the new pairs (`pair_counts`).
                Partial::CountDistinct(_) => {
                    partials.push(lit(ScalarValue::Int64(None)).alias(format!("n{i}")))
                }
            }
        }
        LogicalPlanBuilder::from(input)
            .aggregate(groups, partials)?
            .build()
    }

    /// The distinct `(group, x)` pairs of the `terms` for the `i`th aggregate.
    fn pairs_plan(&self, terms: &[LogicalPlan], i: usize) -> Result<LogicalPlan, DataFusionError> {
        let Partial::CountDistinct(x) = &self.aggs[i] else {
            unreachable!("pairs of a count(DISTINCT) only")
        };
        let mut columns: Vec<Expr> = self
            .groups
            .iter()
            .enumerate()
            .map(|(k, g)| g.clone().alias(format!("g{k}")))
            .collect();
        columns.push(x.clone().alias("x"));
        let mut union: Option<LogicalPlanBuilder> = None;
        for term in terms {
            let pairs = LogicalPlanBuilder::from(term.clone())
                .filter(x.clone().is_not_null())?
                .aggregate(columns.clone(), Vec::<Expr>::new())?
                .build()?;
            union = Some(match union {
                None => LogicalPlanBuilder::from(pairs),
                Some(u) => u.union(pairs)?,
            });
        }
        let Some(union) = union else {
            unreachable!("pairs of at least one term")
        };
        if terms.len() == 1 {
            return union.build();
        }
        union.distinct()?.build()
    }

    /// New pairs counted per group, as state rows (other columns NULL).
    fn pair_counts(&self, pairs: LogicalPlan, i: usize) -> Result<LogicalPlan, DataFusionError> {
        let counted = LogicalPlanBuilder::from(pairs)
            .aggregate(
                self.group_names(),
                vec![count(lit(1)).alias(format!("n{i}"))],
            )?
            .build()?;
        Ok(counted)
    }

    /// The partitions (values of the partition column, as text) of state rows.
    fn partitions(
        &self,
        state: &RecordBatch,
        p: Option<usize>,
    ) -> Result<BTreeSet<String>, DataFusionError> {
        let Some(p) = p else {
            return Ok(BTreeSet::from(["all".to_string()]));
        };
        let column = state.column_by_name(&format!("g{p}")).ok_or_else(|| {
            DataFusionError::Internal("a state without its partition column".into())
        })?;
        let dates = column.as_primitive::<Date32Type>();
        Ok((0..dates.len()).map(|i| partition_name(dates, i)).collect())
    }

    /// A filter on state rows (or pairs) keeping the `touched` partitions.
    fn partition_filter(&self, touched: &BTreeSet<String>, p: Option<usize>) -> Option<Expr> {
        let p = p?;
        let column = col(format!("g{p}"));
        let dates: Vec<Expr> = touched
            .iter()
            .filter_map(|t| t.parse::<i32>().ok())
            .map(|d| lit(ScalarValue::Date32(Some(d))))
            .collect();
        let mut filter = column.clone().in_list(dates, false);
        if touched.contains("null") {
            filter = filter.or(column.is_null());
        }
        Some(filter)
    }

    /// Sorts rows of the state (or pairs) by partition, when there is one.
    fn sorted(&self, plan: LogicalPlan, p: Option<usize>) -> Result<LogicalPlan, DataFusionError> {
        match p {
            None => Ok(plan),
            Some(p) => LogicalPlanBuilder::from(plan)
                .sort(vec![col(format!("g{p}")).sort(true, true)])?
                .build(),
        }
    }

    /// Rows of the state sorted by partition, cut into one batch per partition.
    fn split(
        &self,
        state: &RecordBatch,
        p: Option<usize>,
    ) -> Result<Vec<(String, RecordBatch)>, DataFusionError> {
        let Some(p) = p else {
            return Ok(vec![("all".to_string(), state.clone())]);
        };
        if state.num_rows() == 0 {
            return Ok(vec![("none".to_string(), state.clone())]);
        }
        let column = state.column(p);
        let dates = column.as_primitive::<Date32Type>();
        Ok(partition(&[column.clone()])?
            .ranges()
            .into_iter()
            .map(|r| {
                (
                    partition_name(dates, r.start),
                    state.slice(r.start, r.end - r.start),
                )
            })
            .collect())
    }

    /// The state rows of every part merged per group (sorted by the grouping
    /// column `sort`, if any). Parts may lack state columns (pair counts have only theirs):
    /// those are NULL, which merges as nothing.
    fn merge_plan(
        &self,
        parts: Vec<LogicalPlan>,
        sort: Option<usize>,
    ) -> Result<LogicalPlan, DataFusionError> {
        let columns = self.state_columns();
        // The column types come from the partial plan of the first part's kind.
        let types: HashMap<String, DataType> = parts
            .iter()
            .flat_map(|p| {
                p.schema()
                    .fields()
                    .iter()
                    .map(|f| (f.name().clone(), f.data_type().clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut union: Option<LogicalPlanBuilder> = None;
        for part in parts {
            let has = |name: &str| part.schema().fields().iter().any(|f| f.name() == name);
            let mut exprs = self.group_names();
            for (name, _) in &columns {
                let data_type = types.get(name).cloned().unwrap_or(DataType::Int64);
                exprs.push(if has(name) {
                    cast(col(name.as_str()), data_type).alias(name)
                } else {
                    lit(ScalarValue::try_from(&data_type)?).alias(name)
                });
            }
            let projected = LogicalPlanBuilder::from(part).project(exprs)?.build()?;
            union = Some(match union {
                None => LogicalPlanBuilder::from(projected),
                Some(u) => u.union(projected)?,
            });
        }
        let Some(union) = union else {
            unreachable!("a state merges at least one part")
        };
        let merged = columns
            .iter()
            .map(|(name, merge)| {
                let data_type = types.get(name).cloned().unwrap_or(DataType::Int64);
                cast(merge(col(name.as_str())), data_type).alias(name)
            })
            .collect::<Vec<_>>();
        let merged = union.aggregate(self.group_names(), merged)?.build()?;
        self.sorted(merged, sort)
    }

    /// The aggregate's output from its merged state, typed as the node's.
    fn final_plan(&self, state: LogicalPlan) -> Result<LogicalPlan, DataFusionError> {
        let fields = self.node.schema().fields().clone();
        let mut exprs = self.group_names();
        for (i, a) in self.aggs.iter().enumerate() {
            let (s, n, m) = (
                col(format!("s{i}")),
                col(format!("n{i}")),
                col(format!("m{i}")),
            );
            let some = n.clone().gt(lit(0i64));
            let value = match a {
                Partial::Sum(_) => when(some, s).end()?,
                Partial::Avg(_) => when(some, s / cast(n, DataType::Float64)).end()?,
                Partial::Count(_) | Partial::CountDistinct(_) => {
                    when(n.clone().is_null(), lit(0i64)).otherwise(n)?
                }
                Partial::Min(_) | Partial::Max(_) => m,
            };
            let field = &fields[self.groups.len() + i];
            exprs.push(cast(value, field.data_type().clone()).alias(format!("a{i}")));
        }
        LogicalPlanBuilder::from(state).project(exprs)?.build()
    }

    /// The rows of the input not in the state yet, as terms whose rows add up
    /// to them: for scans `0..n`, term `i` is the input with scan `i` reading
    /// its source's new files, scans before it the files the state covers, scans
    /// after it all files. No terms when no source has new files. (Terms are
    /// aggregated one by one: a union would lose the qualifiers of their columns.)
    fn delta_terms(
        &self,
        delta: &BTreeMap<String, (Vec<Stamp>, Vec<Stamp>)>,
    ) -> Result<Vec<LogicalPlan>, DataFusionError> {
        let mut terms = Vec::new();
        for (i, source) in self.scans.iter().enumerate() {
            if delta[source].1.is_empty() {
                continue;
            }
            let mut next = 0;
            let term = substitute(&self.input, &mut next, &mut |j, table| {
                let (old, new) = &delta[&self.scans[j]];
                let files = match j.cmp(&i) {
                    std::cmp::Ordering::Less if !delta[&self.scans[j]].1.is_empty() => old,
                    std::cmp::Ordering::Equal => new,
                    _ => return Ok(None),
                };
                narrowed(table, files).map(Some)
            })?;
            terms.push(term);
        }
        Ok(terms)
    }
}

impl Partial {
    fn of(e: &Expr, input: &datafusion::common::DFSchema) -> Result<Partial, String> {
        let e = match e {
            Expr::Alias(a) => a.expr.as_ref(),
            e => e,
        };
        let Expr::AggregateFunction(AggregateFunction { func, params }) = e else {
            return Err(format!("`{e}` is not an aggregate function"));
        };
        if params.filter.is_some() || !params.order_by.is_empty() || params.args.len() != 1 {
            return Err(format!(
                "`{e}` has a FILTER, an ORDER BY or several arguments"
            ));
        }
        let x = params.args[0].clone();
        if x.is_volatile() {
            return Err(format!("`{e}` is volatile"));
        }
        let name = func.name().to_lowercase();
        Ok(match (name.as_str(), params.distinct) {
            ("count", true) => Partial::CountDistinct(x),
            (_, true) => return Err(format!("`{e}`: DISTINCT is kept for count only")),
            ("sum", _) => Partial::Sum(x),
            ("count", _) => Partial::Count(x),
            ("min", _) => Partial::Min(x),
            ("max", _) => Partial::Max(x),
            ("avg" | "mean", _) => {
                let t = x.get_type(input).map_err(|e| e.to_string())?;
                if !(t.is_floating() || t.is_integer()) {
                    return Err(format!(
                        "`{e}`: the average of {t} is kept only for floats and integers"
                    ));
                }
                Partial::Avg(x)
            }
            _ => return Err(format!("`{e}`: {name} cannot be merged from parts")),
        })
    }
}

/// Checks that `plan` only selects, projects, joins (inner) and unions rows of
/// Parquet sources, and lists its scans' sources in visiting order.
fn linear(
    plan: &LogicalPlan,
    within: Option<&str>,
    files: &HashMap<String, Vec<Stamp>>,
    scans: &mut Vec<String>,
) -> Result<(), String> {
    let within = match plan {
        LogicalPlan::SubqueryAlias(a) if files.contains_key(&a.alias.table().to_lowercase()) => {
            Some(a.alias.table())
        }
        _ => within,
    };
    let mut subquery = false;
    let _ = plan.apply_expressions(|e| {
        subquery |= e.exists(|e| {
            Ok(matches!(
                e,
                Expr::ScalarSubquery(_) | Expr::Exists(_) | Expr::InSubquery(_)
            ))
        })?;
        subquery |= e.is_volatile();
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    });
    if subquery {
        return Err("a subquery or a volatile function".into());
    }
    match plan {
        LogicalPlan::TableScan(scan) => {
            let source = within
                .map(str::to_lowercase)
                .filter(|s| files.contains_key(s))
                .ok_or_else(|| {
                    format!(
                        "reads `{}`, which is not a Parquet file source",
                        scan.table_name
                    )
                })?;
            if scan.fetch.is_some() {
                return Err("a scan with a LIMIT".into());
            }
            let provider = source_as_provider(&scan.source).map_err(|e| e.to_string())?;
            let Some(table) = (provider.as_ref() as &dyn Any).downcast_ref::<ListingTable>() else {
                return Err(format!("source `{source}` is not read from its files"));
            };
            if table.table_paths().len() != files[&source].len()
                || !table.options().table_partition_cols.is_empty()
            {
                return Err(format!(
                    "source `{source}`: its table does not list its files one by one"
                ));
            }
            scans.push(source);
            return Ok(());
        }
        LogicalPlan::Join(join) if join.join_type != JoinType::Inner => {
            return Err(format!("a {} join", join.join_type));
        }
        LogicalPlan::Limit(_) => return Err("a LIMIT".into()),
        LogicalPlan::Distinct(_) => return Err("a DISTINCT".into()),
        LogicalPlan::Projection(_)
        | LogicalPlan::Filter(_)
        | LogicalPlan::SubqueryAlias(_)
        | LogicalPlan::Join(_)
        | LogicalPlan::Union(_)
        | LogicalPlan::Sort(_)
        | LogicalPlan::EmptyRelation(_)
        | LogicalPlan::Values(_) => {}
        other => return Err(format!("a {} node", other.display())),
    }
    if let LogicalPlan::Sort(sort) = plan
        && sort.fetch.is_some()
    {
        return Err("an ORDER BY with a LIMIT".into());
    }
    for input in plan.inputs() {
        linear(input, within, files, scans)?;
    }
    Ok(())
}

/// `plan` with each Parquet scan `j` (in visiting order) reading what `pick`
/// returns for it, or its files as they are when `pick` returns `None`.
fn substitute(
    plan: &LogicalPlan,
    next: &mut usize,
    pick: &mut dyn FnMut(
        usize,
        &ListingTable,
    ) -> Result<Option<Arc<dyn TableProvider>>, DataFusionError>,
) -> Result<LogicalPlan, DataFusionError> {
    if let LogicalPlan::TableScan(scan) = plan {
        let j = *next;
        *next += 1;
        let provider = source_as_provider(&scan.source)?;
        let table = (provider.as_ref() as &dyn Any)
            .downcast_ref::<ListingTable>()
            .ok_or_else(|| {
                DataFusionError::Internal("a maintained scan is not a listing table".into())
            })?;
        return Ok(match pick(j, table)? {
            Some(p) => LogicalPlan::TableScan(TableScan {
                source: provider_as_source(p),
                ..scan.clone()
            }),
            None => plan.clone(),
        });
    }
    plan.clone()
        .map_children(|c| substitute(&c, next, pick).map(Transformed::yes))
        .map(|t| t.data)
}

/// `table` over `files` only, with the same schema and options.
fn narrowed(
    table: &ListingTable,
    files: &[Stamp],
) -> Result<Arc<dyn TableProvider>, DataFusionError> {
    let urls = files
        .iter()
        .map(|f| ListingTableUrl::parse(&f.path))
        .collect::<Result<Vec<_>, _>>()?;
    if urls.is_empty() {
        let empty = datafusion::datasource::empty::EmptyTable::new(table.schema());
        return Ok(Arc::new(empty));
    }
    let config = ListingTableConfig::new_with_multi_paths(urls)
        .with_listing_options(table.options().clone())
        .with_schema(table.schema());
    Ok(Arc::new(ListingTable::try_new(config)?))
}

/// `new` without the pairs already kept in `files`, of which only those
/// `within` (the touched partitions) are read.
async fn anti_join(
    ctx: &SessionContext,
    new: LogicalPlan,
    files: Vec<String>,
    within: Option<Expr>,
) -> Result<LogicalPlan, DataFusionError> {
    let mut kept = read_parquet(ctx, files).await?;
    if let Some(within) = within {
        kept = LogicalPlanBuilder::from(kept).filter(within)?.build()?;
    }
    let names: Vec<String> = new
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let on =
        |side: &str| -> Vec<Column> { names.iter().map(|n| Column::new(Some(side), n)).collect() };
    let joined = LogicalPlanBuilder::from(new)
        .alias("new")?
        .join_detailed(
            LogicalPlanBuilder::from(kept).alias("kept")?.build()?,
            JoinType::LeftAnti,
            (on("new"), on("kept")),
            None,
            NullEquality::NullEqualsNull,
        )?
        .project(
            on("new")
                .into_iter()
                .zip(&names)
                .map(|(c, n)| Expr::Column(c).alias(n)),
        )?
        .build()?;
    Ok(joined)
}

/// An aggregate of a KPI's plan answered by a maintained one: its groups, and
/// which of the maintained aggregate's results are its own.
struct Use {
    node: LogicalPlan,
    aggregates: Vec<usize>,
}

impl Use {
    fn whole(m: &Maintained) -> Use {
        Use {
            node: m.node.clone(),
            aggregates: (0..m.aggs.len()).collect(),
        }
    }

    /// A read of the maintained result standing in for the node, with the
    /// node's schema (names and qualifiers) unchanged.
    fn read(
        &self,
        groups: usize,
        table: &Arc<dyn TableProvider>,
    ) -> Result<LogicalPlan, DataFusionError> {
        let name = "__kpiforge_maintained";
        let stored = (0..groups)
            .map(|k| format!("g{k}"))
            .chain(self.aggregates.iter().map(|i| format!("a{i}")));
        let columns = self
            .node
            .schema()
            .iter()
            .zip(stored)
            .map(|((qualifier, field), stored)| {
                Expr::Column(Column::new(Some(name), stored))
                    .alias_qualified(qualifier.cloned(), field.name())
            })
            .collect::<Vec<_>>();
        LogicalPlanBuilder::scan(name, provider_as_source(table.clone()), None)?
            .project(columns)?
            .build()
    }
}

async fn read_parquet(
    ctx: &SessionContext,
    files: Vec<String>,
) -> Result<LogicalPlan, DataFusionError> {
    Ok(ctx
        .read_parquet(files, ParquetReadOptions::default())
        .await?
        .into_unoptimized_plan())
}

/// A partition's name: its date as days since 1970, or `null`.
fn partition_name(dates: &Date32Array, i: usize) -> String {
    if dates.is_null(i) {
        "null".to_string()
    } else {
        dates.value(i).to_string()
    }
}

async fn run(
    ctx: &SessionContext,
    plan: LogicalPlan,
    what: &str,
) -> Result<Vec<RecordBatch>, DataFusionError> {
    let frame = ctx.execute_logical_plan(plan).await?;
    let schema = Arc::new(frame.schema().as_arrow().clone());
    let mut batches = crate::session::collect(frame, what).await?;
    if batches.is_empty() {
        batches.push(RecordBatch::new_empty(schema));
    }
    Ok(batches)
}

fn one_batch(batches: &[RecordBatch]) -> Result<RecordBatch, DataFusionError> {
    Ok(concat_batches(&batches[0].schema(), batches)?)
}

/// Where kept states live, for messages and `kpiforge` docs.
pub fn state_dir(pipeline: &Pipeline) -> PathBuf {
    Store::new(pipeline).dir().to_path_buf()
}
