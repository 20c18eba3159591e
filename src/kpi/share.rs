//! Automatic reuse of identical sub-plans across KPIs.
//!
//! KPIs written independently often repeat the same expensive work: seven of the
//! TPC-H workload's eleven KPIs join `lineitem` with `orders`, each keeping other
//! columns. Before the KPIs run, their optimised plans are searched for joins that
//! are the same apart from which columns they keep (the *same rows*: identical join
//! keys, filters and inputs). Each such join, together with the projection right
//! above it, is computed **once**, keeping the union of the columns and
//! expressions its users need, and held in memory; each KPI then reads it instead
//! of joining again. A join used once is left alone; only the outermost join of a
//! join tree is considered; a sub-plan with a volatile function (`random()`) is
//! never shared. The shared result is held in memory for the run, like a view.
//!
//! Shared work that is not a join (or that a pipeline author wants to name) is
//! declared as a view (`views:`), which is computed once as well.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::catalog::TableProvider;
use datafusion::common::internal_err;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchemaRef};
use datafusion::datasource::{MemTable, provider_as_source};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, TableScanBuilder};
use datafusion::prelude::SessionContext;

/// A shared sub-plan that was computed once for several KPIs.
#[derive(Debug, Clone)]
pub struct SharedPlan {
    /// Name of the in-memory table holding it.
    pub table: String,
    /// How many places in the KPIs' plans read it (two or more).
    pub users: usize,
    pub rows: usize,
}

/// A join, possibly with the projection right above it: the unit that is shared.
struct Unit {
    /// The join with every table scan reading all columns: equal keys, equal rows.
    key: LogicalPlan,
    /// The unit's output expressions, in order, without aliases.
    exprs: Vec<Expr>,
    schema: DFSchemaRef,
}

/// Optimises `plans`, computes each join that two or more of them share once, and
/// returns the plans rewritten to read the shared results.
pub async fn share_joins(
    ctx: &SessionContext,
    plans: Vec<LogicalPlan>,
) -> Result<(Vec<LogicalPlan>, Vec<SharedPlan>), DataFusionError> {
    let state = ctx.state();
    let plans: Vec<LogicalPlan> = plans
        .iter()
        .map(|p| state.optimize(p))
        .collect::<Result<_, _>>()?;

    // Find the units and count their uses by key.
    let mut uses: HashMap<LogicalPlan, Vec<Vec<Expr>>> = HashMap::new();
    for plan in &plans {
        plan.apply(|node| {
            Ok(match unit(node)? {
                Some(u) => {
                    uses.entry(u.key).or_default().push(u.exprs);
                    TreeNodeRecursion::Jump
                }
                None => TreeNodeRecursion::Continue,
            })
        })?;
    }

    // Compute each shared unit once, with the union of what its users need.
    let mut shared: HashMap<LogicalPlan, (String, Arc<dyn TableProvider>, Vec<Expr>)> =
        HashMap::new();
    let mut report = Vec::new();
    for (key, users) in uses.into_iter().filter(|(_, u)| u.len() > 1) {
        let mut union: Vec<Expr> = Vec::new();
        for e in users.iter().flatten() {
            if !union.contains(e) {
                union.push(e.clone());
            }
        }
        let table = format!("__kpiforge_shared_{}", report.len());
        let projection = union
            .iter()
            .enumerate()
            .map(|(i, e)| e.clone().alias(format!("c{i}")));
        let plan = LogicalPlanBuilder::from(key.clone())
            .project(projection)?
            .build()?;
        let frame = ctx.execute_logical_plan(plan).await?;
        let schema = Arc::new(frame.schema().as_arrow().clone());
        let partitions = frame.collect_partitioned().await?;
        let rows = partitions.iter().flatten().map(|b| b.num_rows()).sum();
        let provider: Arc<dyn TableProvider> = Arc::new(MemTable::try_new(schema, partitions)?);
        ctx.register_table(table.as_str(), provider.clone())?;
        tracing::info!(table = %table, users = users.len(), rows, "shared sub-plan computed once");
        report.push(SharedPlan {
            table: table.clone(),
            users: users.len(),
            rows,
        });
        shared.insert(key, (table, provider, union));
    }
    if shared.is_empty() {
        return Ok((plans, report));
    }

    // Point every use at its shared table.
    let rewritten = plans
        .into_iter()
        .map(|plan| {
            plan.transform_down(|node| {
                let Some(u) = unit(&node)? else {
                    return Ok(Transformed::no(node));
                };
                let Some((table, provider, union)) = shared.get(&u.key) else {
                    return Ok(Transformed::new(node, false, TreeNodeRecursion::Jump));
                };
                let scan = LogicalPlanBuilder::scan(
                    table.as_str(),
                    provider_as_source(provider.clone()),
                    None,
                )?;
                let mut columns = Vec::with_capacity(u.exprs.len());
                for (e, (qualifier, field)) in u.exprs.iter().zip(u.schema.iter()) {
                    let Some(i) = union.iter().position(|x| x == e) else {
                        return internal_err!("shared sub-plan {table} lacks {e}");
                    };
                    columns.push(
                        Expr::Column(Column::new(Some(table.as_str()), format!("c{i}")))
                            .alias_qualified(qualifier.cloned(), field.name()),
                    );
                }
                let replacement = scan.project(columns)?.build()?;
                Ok(Transformed::new(replacement, true, TreeNodeRecursion::Jump))
            })
            .map(|t| t.data)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((rewritten, report))
}

/// The shareable unit at `node`, if it is one: a join, or a projection over a join.
fn unit(node: &LogicalPlan) -> Result<Option<Unit>, DataFusionError> {
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
        key: scans_of_all_columns(join)?,
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

    async fn context() -> SessionContext {
        let ctx = SessionContext::new();
        ctx.register_table(
            "a",
            table(&[
                ("k", vec![1, 1, 2, 3]),
                ("x", vec![10, 20, 30, 40]),
                ("y", vec![1, 2, 3, 4]),
            ]),
        )
        .unwrap();
        ctx.register_table(
            "b",
            table(&[("k", vec![1, 2, 3]), ("d", vec![100, 100, 200])]),
        )
        .unwrap();
        ctx
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
    async fn a_join_used_twice_is_computed_once_with_the_same_results() {
        let ctx = context().await;
        let sql = [
            "SELECT b.d AS period, sum(a.x) AS value FROM a JOIN b ON a.k = b.k GROUP BY b.d ORDER BY 1",
            "SELECT t.d AS period, avg(t.y * 2) AS value FROM (SELECT b.d, a.y FROM a JOIN b ON a.k = b.k) t GROUP BY t.d ORDER BY 1",
            // Same tables, other join condition: other rows, not shared.
            "SELECT b.d AS period, count(*) AS value FROM a JOIN b ON a.k = b.k AND a.x > 15 GROUP BY b.d ORDER BY 1",
        ];
        let mut plans = Vec::new();
        let mut expected = Vec::new();
        for q in sql {
            let plan = ctx.state().create_logical_plan(q).await.unwrap();
            expected.push(run(&ctx, plan.clone()).await);
            plans.push(plan);
        }
        let (rewritten, shared) = share_joins(&ctx, plans).await.unwrap();
        assert_eq!(shared.len(), 1, "{shared:?}");
        assert_eq!((shared[0].users, shared[0].rows), (2, 4));
        for (i, plan) in rewritten.into_iter().enumerate() {
            let reads_shared = format!("{}", plan.display_indent()).contains("__kpiforge_shared_0");
            assert_eq!(reads_shared, i < 2, "plan {i}:\n{}", plan.display_indent());
            assert_eq!(run(&ctx, plan).await, expected[i], "query {i}");
        }
    }
}
