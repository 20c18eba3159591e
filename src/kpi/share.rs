//! Automatic reuse of identical sub-plans across KPIs.
//!
//! KPIs written independently repeat the same expensive work: six of the TPC-H
//! workload's eleven KPIs join `lineitem` with `orders` and group the result by
//! order month, each computing other aggregates. Before the KPIs run, their
//! optimised plans are searched for two kinds of shared work:
//!
//! 1. **Aggregates over the same rows with the same grouping.** The chain of
//!    projections and aliases under each aggregate is folded into its expressions,
//!    down to the first node that changes rows (a join, a filter, a scan). Two
//!    aggregates whose row sources are equal apart from the columns they keep, and
//!    whose grouping expressions are equal, are computed as **one** aggregate with
//!    the union of their aggregate expressions: one pass over the data, however
//!    many KPIs read it. So the TPC-H join runs once, straight into one `GROUP BY`.
//! 2. **Joins** that still appear more than once (for example under different
//!    groupings) are computed once, with the projection right above them, keeping
//!    the union of the columns and expressions their users need.
//!
//! Each shared result is held in memory for the run (like a view) and the users'
//! plans are rewritten to read it. Work used once is left alone, as is anything
//! with a volatile function (`random()`). Shared work that the plans do not show
//! (or that an author wants to name) is declared as a view (`views:`).

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::catalog::TableProvider;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchemaRef, internal_err};
use datafusion::datasource::empty::EmptyTable;
use datafusion::datasource::{MemTable, provider_as_source};
use datafusion::error::DataFusionError;
use datafusion::execution::{SessionState, SessionStateBuilder};
use datafusion::logical_expr::{
    Expr, LogicalPlan, LogicalPlanBuilder, SubqueryAlias, TableScanBuilder,
};
use datafusion::prelude::SessionContext;

/// A shared sub-plan, computed once for several users.
#[derive(Debug, Clone)]
pub struct SharedPlan {
    /// Name of the in-memory table holding it.
    pub table: String,
    /// `aggregate` or `join`.
    pub kind: &'static str,
    /// How many places in the plans read it (two or more).
    pub users: usize,
    pub rows: usize,
}

/// Work found in several plans: computed once into `table`.
struct Pending {
    table: String,
    kind: &'static str,
    plan: LogicalPlan,
    users: usize,
}

impl Pending {
    /// Whether its result is small by construction: an aggregate grouped by
    /// nothing, or by `DATE`s only (a row per day or combination of days, as a
    /// KPI's periods are). Grouped by a key or a timestamp, it may have a row
    /// per input row.
    fn bounded(&self) -> bool {
        let LogicalPlan::Aggregate(agg) = &self.plan else {
            return false;
        };
        let mut groups = agg.schema.fields().iter().take(agg.group_expr.len());
        groups.all(|f| matches!(f.data_type(), DataType::Date32 | DataType::Date64))
    }
}

/// What identifies a unit of shared work: its row source (scans widened to all
/// columns) and, for an aggregate, its grouping expressions.
pub(super) type Key = (LogicalPlan, Vec<Expr>);

/// Per unit of work found, when it was first seen and what each use needs of it.
type Uses = HashMap<Key, (usize, Vec<Vec<Expr>>)>;

/// A shared unit's table, the union of what its users need, and the table's
/// source (a placeholder until it is computed).
type SharedTable = (String, Vec<Expr>, Arc<dyn TableProvider>);

/// A shareable node, normalised: `key` identifies the work, `exprs` are what
/// this use needs of it, `schema` is what the use must still output.
pub(super) struct Unit {
    pub(super) key: Key,
    pub(super) exprs: Vec<Expr>,
    schema: DFSchemaRef,
}

/// Optimises `plans`, computes the work that several of them share once, and
/// returns the plans rewritten to read the shared results.
pub async fn share(
    ctx: &SessionContext,
    plans: Vec<LogicalPlan>,
) -> Result<(Vec<LogicalPlan>, Vec<SharedPlan>), DataFusionError> {
    let analysis = analysis_state(ctx);
    let mut plans: Vec<LogicalPlan> = plans
        .iter()
        .map(|p| analysis.optimize(p))
        .collect::<Result<_, _>>()?;

    let mut pending: Vec<Pending> = Vec::new();
    for kind in ["aggregate", "join"] {
        // Shared work found so far may itself contain work to share.
        let mut all: Vec<LogicalPlan> = plans
            .iter()
            .chain(pending.iter().map(|p| &p.plan))
            .cloned()
            .collect();
        let found = share_units(kind, &mut all, pending.len())?;
        let kpis = plans.len();
        for (p, plan) in pending.iter_mut().zip(all.drain(kpis..)) {
            p.plan = plan;
        }
        plans = all;
        pending.extend(found);
    }

    // Count the reads of each shared table. One that nothing reads any more (its
    // users were all inside other shared work) is dropped; one read once is put
    // back in place of its read: there is nothing to share.
    loop {
        let reads = |table: &str| -> usize {
            plans
                .iter()
                .chain(pending.iter().map(|p| &p.plan))
                .map(|plan| scans_of(plan, table))
                .sum()
        };
        let counts: Vec<usize> = pending.iter().map(|p| reads(&p.table)).collect();
        for (p, n) in pending.iter_mut().zip(&counts) {
            p.users = *n;
        }
        let Some(single) = pending.iter().position(|p| p.users < 2) else {
            break;
        };
        let p = pending.remove(single);
        if p.users == 1 {
            let inlined = LogicalPlan::SubqueryAlias(SubqueryAlias::try_new(
                Arc::new(p.plan),
                p.table.as_str(),
            )?);
            for plan in plans
                .iter_mut()
                .chain(pending.iter_mut().map(|p| &mut p.plan))
            {
                *plan = replace_scan(plan.clone(), &p.table, &inlined)?;
            }
        }
    }

    // Compute the shared tables, each once the tables it reads are computed, and
    // point every plan at the results. One at a time, each parallel inside itself:
    // several at once held their hash tables together and contended for the
    // caches (TPC-H SF10: 1.7-1.9 GB and 10.4-11.3 s at once, 1.1 GB and 9.5-9.9 s
    // one at a time; SF1 no slower). The checks still run beside them.
    //
    // Results small by construction first: each is held until the KPIs have run,
    // and one that may be large, computed early, is held through the others'
    // hash tables (TPC-H SF10: the 13.6 M groups of `month, o_custkey` before
    // the `lineitem ⋈ orders` aggregate peaked at 1445-1494 MiB, after it at
    // 1092-1234 MiB; BENCHMARKS.md).
    let mut report = Vec::new();
    while !pending.is_empty() {
        let names: Vec<String> = pending.iter().map(|p| p.table.clone()).collect();
        let (mut ready, mut waiting): (Vec<Pending>, Vec<Pending>) = pending
            .into_iter()
            .partition(|p| !reads_table(&p.plan, &names));
        if ready.is_empty() {
            return internal_err!("shared sub-plans read each other in a cycle");
        }
        ready.sort_by_key(|p| !p.bounded());
        for p in ready {
            let (p, table, rows, ms) = compute(ctx, p).await?;
            for plan in plans
                .iter_mut()
                .chain(waiting.iter_mut().map(|w| &mut w.plan))
            {
                *plan = swap_source(plan.clone(), &p.table, &table)?;
            }
            tracing::info!(table = %p.table, kind = p.kind, users = p.users, rows, ms, "shared work computed once");
            report.push(SharedPlan {
                table: p.table,
                kind: p.kind,
                users: p.users,
                rows,
            });
        }
        pending = waiting;
    }
    for (i, plan) in plans.iter().enumerate() {
        tracing::debug!(plan = i, rewritten = %plan.display_indent(), "KPI plan after sharing");
    }
    Ok((plans, report))
}

/// The session's optimiser for analysing plans that are rewritten and then
/// optimised again, without three rules:
/// - the one that rewrites `count(DISTINCT x)` into a two-level GROUP BY: it would
///   give each such KPI a grouping of its own, and hide the count from `incremental`;
/// - common subexpression elimination: run again on its own output, it names a new
///   common expression `__common_expr_1` beside the one already there, and the two mix;
/// - kpiforge's own swap of that count for its bitmap count (`session::CountKeys`),
///   for the same reason as the first: it runs when the rewritten plans execute.
pub fn analysis_state(ctx: &SessionContext) -> SessionState {
    let state = ctx.state();
    let rules = state
        .optimizers()
        .iter()
        .filter(|r| {
            !matches!(
                r.name(),
                "single_distinct_aggregation_to_group_by"
                    | "common_sub_expression_eliminate"
                    | "kpiforge_count_distinct_keys"
            )
        })
        .cloned()
        .collect();
    SessionStateBuilder::new_from_existing(state)
        .with_optimizer_rules(rules)
        .build()
}

/// Finds the units of `kind` used more than once in `plans` (at any depth),
/// rewrites their uses to read a shared table (a placeholder until it is
/// computed) and returns the work to compute.
fn share_units(
    kind: &'static str,
    plans: &mut [LogicalPlan],
    numbered_from: usize,
) -> Result<Vec<Pending>, DataFusionError> {
    let mut uses = Uses::new();
    for plan in plans.iter() {
        collect_units(kind, plan, &mut uses)?;
    }
    // Numbered and computed in the order first seen, the same every run.
    let mut uses: Vec<_> = uses.into_iter().filter(|(_, (_, u))| u.len() > 1).collect();
    uses.sort_by_key(|(_, (seen, _))| *seen);

    // The work of each shared unit: its grouping (if any) and the union of what
    // its users need, over its row source.
    let work = |base: &LogicalPlan,
                groups: &[Expr],
                union: &[Expr]|
     -> Result<LogicalPlan, DataFusionError> {
        let builder = LogicalPlanBuilder::from(base.clone());
        let builder = if kind == "aggregate" {
            builder.aggregate(named("g", groups), named("c", union))?
        } else {
            builder.project(named("c", union))?
        };
        builder.build()
    };
    let mut shared: HashMap<Key, SharedTable> = HashMap::new();
    let mut keys = Vec::with_capacity(uses.len());
    for (key, (_, users)) in uses {
        let union = union_of(users.iter().flatten());
        let table = format!("__kpiforge_shared_{}", numbered_from + shared.len());
        let schema = work(&key.0, &key.1, &union)?.schema().as_arrow().clone();
        let placeholder: Arc<dyn TableProvider> = Arc::new(EmptyTable::new(Arc::new(schema)));
        keys.push(key.clone());
        shared.insert(key, (table, union, placeholder));
    }
    // Shared work may contain other shared work: its row source reads that too.
    let mut found = Vec::new();
    for key in &keys {
        let (base, groups) = key;
        let (table, union, _) = &shared[key];
        // A join's row source is the join itself: only its inputs may read other work.
        let base = if kind == "aggregate" {
            rewrite(kind, base.clone(), &shared)?
        } else {
            let inputs = |c: LogicalPlan| rewrite(kind, c, &shared).map(Transformed::yes);
            base.clone().map_children(inputs)?.data
        };
        let plan = work(&base, groups, union)?;
        found.push(Pending {
            table: table.clone(),
            kind,
            plan,
            users: 0,
        });
    }
    for plan in plans.iter_mut() {
        *plan = rewrite(kind, plan.clone(), &shared)?;
    }
    Ok(found)
}

/// `exprs` named `{prefix}0`, `{prefix}1`, ...: the columns of shared work.
pub(super) fn named(prefix: &str, exprs: &[Expr]) -> Vec<Expr> {
    exprs
        .iter()
        .enumerate()
        .map(|(i, e)| e.clone().alias(format!("{prefix}{i}")))
        .collect()
}

/// The distinct expressions of `exprs`, in first-seen order.
pub(super) fn union_of<'a>(exprs: impl Iterator<Item = &'a Expr>) -> Vec<Expr> {
    let mut union: Vec<Expr> = Vec::new();
    for e in exprs {
        if !union.contains(e) {
            union.push(e.clone());
        }
    }
    union
}

/// The shareable unit of `kind` at `node`, if it is one.
fn unit(kind: &str, node: &LogicalPlan) -> Result<Option<Unit>, DataFusionError> {
    if kind == "aggregate" {
        aggregate_unit(node)
    } else {
        join_unit(node)
    }
}

/// Records every unit of `kind` in `plan` with what it needs, at any depth. A
/// projection over a join is one unit: the join under it is not counted again.
fn collect_units(kind: &str, plan: &LogicalPlan, uses: &mut Uses) -> Result<(), DataFusionError> {
    let mut below = plan.inputs();
    if let Some(u) = unit(kind, plan)? {
        let seen = uses.len();
        uses.entry(u.key)
            .or_insert((seen, Vec::new()))
            .1
            .push(u.exprs);
        if matches!(plan, LogicalPlan::Projection(_)) {
            below = below.iter().flat_map(|join| join.inputs()).collect();
        }
    }
    for input in below {
        collect_units(kind, input, uses)?;
    }
    Ok(())
}

/// `plan` with every use of a shared unit replaced by a read of its table.
fn rewrite(
    kind: &str,
    plan: LogicalPlan,
    shared: &HashMap<Key, SharedTable>,
) -> Result<LogicalPlan, DataFusionError> {
    let below = |plan: LogicalPlan| -> Result<LogicalPlan, DataFusionError> {
        plan.map_children(|c| rewrite(kind, c, shared).map(Transformed::yes))
            .map(|t| t.data)
    };
    let Some(u) = unit(kind, &plan)? else {
        return below(plan);
    };
    let Some((table, union, source)) = shared.get(&u.key) else {
        // Not shared: look below it, except at the join of a projection-over-join unit.
        return match plan {
            LogicalPlan::Projection(_) => plan
                .map_children(|join| below(join).map(Transformed::yes))
                .map(|t| t.data),
            other => below(other),
        };
    };
    // The use's output, field by field: grouping columns first (aggregates), then
    // its expressions.
    let groups = if kind == "aggregate" {
        u.key.1.len()
    } else {
        0
    };
    let mut columns = Vec::with_capacity(u.schema.fields().len());
    for (i, (qualifier, field)) in u.schema.iter().enumerate() {
        let name = if i < groups {
            format!("g{i}")
        } else {
            let Some(at) = union.iter().position(|x| *x == u.exprs[i - groups]) else {
                return internal_err!("shared table {table} lacks {}", u.exprs[i - groups]);
            };
            format!("c{at}")
        };
        columns.push(
            Expr::Column(Column::new(Some(table.as_str()), name))
                .alias_qualified(qualifier.cloned(), field.name()),
        );
    }
    let scan = LogicalPlanBuilder::scan(table.as_str(), provider_as_source(source.clone()), None)?;
    scan.project(columns)?.build()
}

/// An aggregate, with the projections and aliases under it folded into its
/// expressions, keyed by its row source and grouping.
pub(super) fn aggregate_unit(node: &LogicalPlan) -> Result<Option<Unit>, DataFusionError> {
    let LogicalPlan::Aggregate(agg) = node else {
        return Ok(None);
    };
    let groups = agg.group_expr.len();
    // Grouping sets add an internal column; leave them alone.
    if agg.schema.fields().len() != groups + agg.aggr_expr.len()
        || agg
            .group_expr
            .iter()
            .any(|e| matches!(e, Expr::GroupingSet(_)))
    {
        return Ok(None);
    }
    let (base, columns) = fold(&agg.input)?;
    let inline = |e: &Expr| -> Result<Expr, DataFusionError> {
        Ok(e.clone()
            .unalias()
            .transform(|e| match &e {
                Expr::Column(c) => Ok(columns
                    .get(c)
                    .map_or(Transformed::no(e.clone()), |r| Transformed::yes(r.clone()))),
                _ => Ok(Transformed::no(e)),
            })?
            .data)
    };
    let group_exprs = agg
        .group_expr
        .iter()
        .map(inline)
        .collect::<Result<Vec<_>, _>>()?;
    let aggr_exprs = agg
        .aggr_expr
        .iter()
        .map(inline)
        .collect::<Result<Vec<_>, _>>()?;
    if group_exprs.iter().chain(&aggr_exprs).any(Expr::is_volatile) || is_volatile(&base)? {
        return Ok(None);
    }
    Ok(Some(Unit {
        key: (scans_of_all_columns(&base)?, group_exprs),
        exprs: aggr_exprs,
        schema: agg.schema.clone(),
    }))
}

/// The first node under `plan` that changes rows, and each column of `plan`'s
/// output as an expression over that node's columns.
fn fold(plan: &LogicalPlan) -> Result<(LogicalPlan, HashMap<Column, Expr>), DataFusionError> {
    let outputs = |plan: &LogicalPlan| -> Vec<Column> { plan.schema().columns() };
    match plan {
        LogicalPlan::Projection(p) => {
            let (base, inner) = fold(&p.input)?;
            let mut map = HashMap::new();
            for (column, expr) in outputs(plan).into_iter().zip(&p.expr) {
                let folded = expr.clone().unalias().transform(|e| match &e {
                    Expr::Column(c) => Ok(inner
                        .get(c)
                        .map_or(Transformed::no(e.clone()), |r| Transformed::yes(r.clone()))),
                    _ => Ok(Transformed::no(e)),
                })?;
                map.insert(column, folded.data);
            }
            Ok((base, map))
        }
        LogicalPlan::SubqueryAlias(s) => {
            let (base, inner) = fold(&s.input)?;
            let map = outputs(plan)
                .into_iter()
                .zip(outputs(&s.input))
                .map(|(outer, inner_column)| {
                    let expr = inner
                        .get(&inner_column)
                        .cloned()
                        .unwrap_or(Expr::Column(inner_column));
                    (outer, expr)
                })
                .collect();
            Ok((base, map))
        }
        other => {
            let identity = outputs(other)
                .into_iter()
                .map(|c| (c.clone(), Expr::Column(c)))
                .collect();
            Ok((other.clone(), identity))
        }
    }
}

/// A join, possibly with the projection right above it.
fn join_unit(node: &LogicalPlan) -> Result<Option<Unit>, DataFusionError> {
    let (join, exprs) = match node {
        LogicalPlan::Projection(p) if matches!(p.input.as_ref(), LogicalPlan::Join(_)) => (
            p.input.as_ref(),
            p.expr.iter().map(|e| e.clone().unalias()).collect(),
        ),
        LogicalPlan::Join(_) => (
            node,
            node.schema()
                .columns()
                .into_iter()
                .map(Expr::Column)
                .collect(),
        ),
        _ => return Ok(None),
    };
    if is_volatile(node)? {
        return Ok(None);
    }
    Ok(Some(Unit {
        key: (scans_of_all_columns(join)?, Vec::new()),
        exprs,
        schema: node.schema().clone(),
    }))
}

/// `plan` with every table scan reading all its columns and the pure column
/// selections between them dropped, so that plans differing only in the columns
/// they keep compare equal (the schemas above are derived again).
fn scans_of_all_columns(plan: &LogicalPlan) -> Result<LogicalPlan, DataFusionError> {
    plan.clone()
        .transform_up(|node| match node {
            LogicalPlan::TableScan(scan) => {
                let full = TableScanBuilder::new(scan.table_name, scan.source)
                    .with_filters(scan.filters)
                    .with_fetch(scan.fetch)
                    .build()?;
                Ok(Transformed::yes(LogicalPlan::TableScan(full)))
            }
            LogicalPlan::Projection(p) if p.expr.iter().all(|e| matches!(e, Expr::Column(_))) => {
                Ok(Transformed::yes(Arc::unwrap_or_clone(p.input)))
            }
            other => other.recompute_schema().map(Transformed::yes),
        })
        .map(|t| t.data)
}

/// Whether any expression anywhere in `plan` is volatile (`random()`): such work
/// must run once per use.
fn is_volatile(plan: &LogicalPlan) -> Result<bool, DataFusionError> {
    plan.exists(|node| Ok(node.expressions().iter().any(Expr::is_volatile)))
}

/// `plan` with the scans of `table` replaced by `with`.
fn replace_scan(
    plan: LogicalPlan,
    table: &str,
    with: &LogicalPlan,
) -> Result<LogicalPlan, DataFusionError> {
    plan.transform_up(|node| match node {
        LogicalPlan::TableScan(scan) if scan.table_name.table() == table => {
            Ok(Transformed::yes(with.clone()))
        }
        other => Ok(Transformed::no(other)),
    })
    .map(|t| t.data)
}

/// How many times `plan` scans `table`.
fn scans_of(plan: &LogicalPlan, table: &str) -> usize {
    let mut n = 0;
    let _ = plan.apply(|node| {
        if matches!(node, LogicalPlan::TableScan(s) if s.table_name.table() == table) {
            n += 1;
        }
        Ok(TreeNodeRecursion::Continue)
    });
    n
}

/// Whether `plan` reads any of `tables`.
fn reads_table(plan: &LogicalPlan, tables: &[String]) -> bool {
    plan.exists(|node| {
        Ok(matches!(node, LogicalPlan::TableScan(s) if tables.iter().any(|t| s.table_name.table() == t)))
    })
    .unwrap_or(true)
}

/// Runs one piece of shared work and holds its result in memory.
async fn compute(
    ctx: &SessionContext,
    p: Pending,
) -> Result<(Pending, Arc<dyn TableProvider>, usize, u64), DataFusionError> {
    let started = std::time::Instant::now();
    tracing::debug!(table = %p.table, plan = %p.plan.display_indent(), "computing shared work");
    let frame = ctx.execute_logical_plan(p.plan.clone()).await?;
    let schema = Arc::new(frame.schema().as_arrow().clone());
    let partitions = crate::session::collect_partitioned(frame, &p.table).await?;
    let rows = partitions.iter().flatten().map(|b| b.num_rows()).sum();
    let table: Arc<dyn TableProvider> = Arc::new(MemTable::try_new(schema, partitions)?);
    Ok((p, table, rows, started.elapsed().as_millis() as u64))
}

/// `plan` with the scans of `table` reading `provider` instead of its placeholder.
fn swap_source(
    plan: LogicalPlan,
    table: &str,
    provider: &Arc<dyn TableProvider>,
) -> Result<LogicalPlan, DataFusionError> {
    plan.transform_up(|node| match node {
        LogicalPlan::TableScan(scan) if scan.table_name.table() == table => {
            let scan = TableScanBuilder::new(scan.table_name, provider_as_source(provider.clone()))
                .with_projection(scan.projection)
                .with_filters(scan.filters)
                .with_fetch(scan.fetch)
                .build()?;
            Ok(Transformed::yes(LogicalPlan::TableScan(scan)))
        }
        other => Ok(Transformed::no(other)),
    })
    .map(|t| t.data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, RecordBatch};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::arrow::util::pretty::pretty_format_batches;

    fn table(columns: &[(&str, Vec<i64>)]) -> Arc<MemTable> {
        let schema = Arc::new(Schema::new(
            columns
                .iter()
                .map(|(n, _)| Field::new(*n, DataType::Int64, false))
                .collect::<Vec<_>>(),
        ));
        let arrays = columns
            .iter()
            .map(|(_, v)| Arc::new(Int64Array::from(v.clone())) as _)
            .collect();
        let batch = RecordBatch::try_new(schema.clone(), arrays).unwrap();
        Arc::new(MemTable::try_new(schema, vec![vec![batch]]).unwrap())
    }

    async fn run(ctx: &SessionContext, plan: LogicalPlan) -> String {
        let batches = ctx
            .execute_logical_plan(plan)
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        pretty_format_batches(&batches).unwrap().to_string()
    }

    #[tokio::test]
    async fn shared_work_is_computed_once_with_the_same_results() {
        let ctx = SessionContext::new();
        ctx.register_table(
            "a",
            table(&[
                ("k", vec![1, 1, 2, 3]),
                ("x", vec![10, 20, 30, 40]),
                ("y", vec![1, 2, 2, 4]),
            ]),
        )
        .unwrap();
        ctx.register_table(
            "b",
            table(&[("k", vec![1, 2, 3]), ("d", vec![100, 100, 200])]),
        )
        .unwrap();
        let sql = [
            // Three aggregates over the same join and grouping: one shared aggregate.
            "SELECT b.d AS period, sum(a.x) AS value FROM a JOIN b ON a.k = b.k GROUP BY b.d ORDER BY 1",
            "SELECT t.d AS period, avg(t.y * 2) AS value FROM (SELECT b.d, a.y FROM a JOIN b ON a.k = b.k) t GROUP BY t.d ORDER BY 1",
            "SELECT b.d AS period, count(DISTINCT a.y) AS value, sum(a.x) AS total FROM a JOIN b ON a.k = b.k GROUP BY b.d ORDER BY 1",
            // The same join without grouping: with the shared aggregate, a shared join.
            "SELECT b.d AS period, a.x AS value FROM a JOIN b ON a.k = b.k ORDER BY 2",
            // Same tables, another join condition: other rows, not shared.
            "SELECT b.d AS period, count(*) AS value FROM a JOIN b ON a.k = b.k AND a.x > 15 GROUP BY b.d ORDER BY 1",
            // A volatile function is never shared.
            "SELECT b.d AS period, sum(a.x * random()) * 0 AS value FROM a JOIN b ON a.k = b.k GROUP BY b.d ORDER BY 1",
        ];
        let mut plans = Vec::new();
        let mut expected = Vec::new();
        for q in sql {
            let plan = ctx.state().create_logical_plan(q).await.unwrap();
            expected.push(run(&ctx, plan.clone()).await);
            plans.push(plan);
        }
        let (rewritten, shared) = share(&ctx, plans).await.unwrap();
        let mut summary: Vec<(&str, usize, usize)> =
            shared.iter().map(|s| (s.kind, s.users, s.rows)).collect();
        summary.sort();
        // The aggregate: 2 groups. The join: 4 rows, read by the shared aggregate,
        // query 3 and query 5 (whose random() comes after the join, per row).
        assert_eq!(
            summary,
            vec![("aggregate", 3, 2), ("join", 3, 4)],
            "{shared:?}"
        );
        for (i, plan) in rewritten.into_iter().enumerate() {
            let text = format!("{}", plan.display_indent());
            assert_eq!(
                text.contains("__kpiforge_shared_"),
                i != 4,
                "plan {i}:\n{text}"
            );
            assert_eq!(run(&ctx, plan).await, expected[i], "query {i}");
        }
    }

    #[tokio::test]
    async fn shared_work_is_numbered_alike_every_run_and_small_results_come_first() {
        use datafusion::arrow::array::Date32Array;
        let ctx = SessionContext::new();
        let schema = Arc::new(Schema::new(vec![
            Field::new("d", DataType::Date32, false),
            Field::new("c", DataType::Int64, false),
            Field::new("x", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Date32Array::from(vec![0, 0, 31, 31])),
                Arc::new(Int64Array::from(vec![1, 2, 1, 1])),
                Arc::new(Int64Array::from(vec![10, 20, 30, 40])),
            ],
        )
        .unwrap();
        let table = MemTable::try_new(schema, vec![vec![batch]]).unwrap();
        ctx.register_table("o", Arc::new(table)).unwrap();
        let sql = [
            // Shared first: grouped by a date and a key, one row per pair.
            "SELECT d AS period, count(*) AS value FROM (SELECT d, c, count(*) AS n FROM o GROUP BY d, c) t GROUP BY d",
            "SELECT d AS period, max(n) AS value FROM (SELECT d, c, sum(x) AS n FROM o GROUP BY d, c) t GROUP BY d",
            // Grouped by the date only: at most a row per date.
            "SELECT d AS period, sum(x) AS value FROM o GROUP BY d",
            "SELECT d AS period, avg(x) AS value FROM o GROUP BY d",
        ];
        // Each run's maps hash differently: the order must not depend on them.
        for _ in 0..8 {
            let mut plans = Vec::new();
            for q in sql {
                plans.push(ctx.state().create_logical_plan(q).await.unwrap());
            }
            let (_, shared) = share(&ctx, plans).await.unwrap();
            let computed: Vec<(&str, usize)> =
                shared.iter().map(|s| (s.table.as_str(), s.rows)).collect();
            assert_eq!(
                computed,
                [("__kpiforge_shared_1", 2), ("__kpiforge_shared_0", 3)]
            );
        }
    }
}
