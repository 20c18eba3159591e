//! Hash joins built on the side with one row per key. DataFusion builds a
//! `CollectLeft` hash join on the smaller input by row count, but a grouped
//! aggregate's row count is only known as an upper bound (its input's rows),
//! so a join of a large materialised result (a shared aggregate, millions of
//! exact rows) with a per-key aggregate (`GROUP BY customer`) was built on the
//! large result, by one thread. When the other side is an aggregate grouped by
//! exactly the join keys, it has one row per key and is built on instead: on
//! SF10 TPC-H `new_customer_share`, a 1 M-row hash table instead of 13.6 M.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::common::JoinType;
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::config::ConfigOptions;
use datafusion::error::DataFusionError;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::statistics::{StatisticsArgs, StatisticsContext};

/// Build sides at least this large, in exact rows, are worth swapping.
const LARGE_BUILD: usize = 1_000_000;

/// Runs after DataFusion's join selection, before dynamic filters are built.
#[derive(Debug, Default)]
pub struct BuildOnKeys;

impl PhysicalOptimizerRule for BuildOnKeys {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>, DataFusionError> {
        plan.transform_up(|node| {
            let Some(join) = node.downcast_ref::<HashJoinExec>() else {
                return Ok(Transformed::no(node));
            };
            if *join.partition_mode() != PartitionMode::CollectLeft
                || *join.join_type() != JoinType::Inner
                || join.filter().is_some()
            {
                return Ok(Transformed::no(node));
            }
            // Without statistics, the join stays as DataFusion chose it.
            let large = StatisticsContext::new()
                .compute(join.left().as_ref(), &StatisticsArgs::new())
                .is_ok_and(|s| matches!(s.num_rows, Precision::Exact(n) if n >= LARGE_BUILD));
            let keys: Vec<&Arc<dyn PhysicalExpr>> = join.on().iter().map(|(_, r)| r).collect();
            if !large || !one_row_per_key(join.right(), &keys) {
                return Ok(Transformed::no(node));
            }
            // A join that cannot be swapped (it already feeds a dynamic filter) stays.
            match join.swap_inputs(PartitionMode::CollectLeft) {
                Ok(swapped) => Ok(Transformed::yes(swapped)),
                Err(_) => Ok(Transformed::no(node)),
            }
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "kpiforge_build_on_keys"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Whether `plan` is (under projections that pass the keys through) an
/// aggregate grouped by exactly the columns `keys` name.
fn one_row_per_key(plan: &Arc<dyn ExecutionPlan>, keys: &[&Arc<dyn PhysicalExpr>]) -> bool {
    let mut columns: Option<HashSet<usize>> = keys
        .iter()
        .map(|k| k.downcast_ref::<Column>().map(Column::index))
        .collect();
    let mut plan = Arc::clone(plan);
    loop {
        let Some(indices) = columns.take() else {
            return false;
        };
        if let Some(projection) = plan.downcast_ref::<ProjectionExec>() {
            columns = indices
                .iter()
                .map(|&i| {
                    projection
                        .expr()
                        .get(i)
                        .and_then(|e| e.expr.downcast_ref::<Column>().map(Column::index))
                })
                .collect();
            plan = Arc::clone(projection.input());
            continue;
        }
        let Some(aggregate) = plan.downcast_ref::<AggregateExec>() else {
            return false;
        };
        let group = aggregate.group_expr();
        let groups = group.expr().len();
        return *aggregate.mode() != AggregateMode::Partial
            && !group.has_grouping_set()
            && groups > 0
            && indices.len() == groups
            && indices.iter().all(|&i| i < groups);
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch};
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::physical_plan::collect;
    use datafusion::prelude::SessionContext;

    use super::*;

    /// 1.1 M facts over 1,000 keys, and 1.5 M orders: the aggregate per key has
    /// 1,000 rows, but DataFusion only knows it has at most 1.5 M.
    async fn tables(ctx: &SessionContext) {
        let column = |values: Vec<i64>| Arc::new(Int64Array::from(values)) as ArrayRef;
        let facts = RecordBatch::try_from_iter([
            ("k", column((0..1_100_000).map(|i| i % 1000).collect())),
            ("v", column((0..1_100_000).map(|i| i % 7).collect())),
        ])
        .unwrap();
        let orders = RecordBatch::try_from_iter([
            (
                "k",
                column((0..1_500_000).map(|i| (i * 7) % 1000).collect()),
            ),
            ("d", column((0..1_500_000).map(|i| i % 365).collect())),
        ])
        .unwrap();
        ctx.register_batch("facts", facts).unwrap();
        ctx.register_batch("orders", orders).unwrap();
    }

    const SQL: &str = "SELECT count(*) AS n, sum(f.v * m.first) AS s FROM facts f \
        JOIN (SELECT k, min(d) AS first FROM orders GROUP BY k) m ON f.k = m.k";

    /// The build side (left input) of the plan's hash join.
    fn build_side(plan: &Arc<dyn ExecutionPlan>) -> Arc<dyn ExecutionPlan> {
        if let Some(join) = plan.downcast_ref::<HashJoinExec>() {
            return Arc::clone(join.left());
        }
        plan.children()
            .into_iter()
            .map(build_side)
            .next()
            .expect("a hash join")
    }

    fn has_aggregate(plan: &Arc<dyn ExecutionPlan>) -> bool {
        plan.downcast_ref::<AggregateExec>().is_some()
            || plan.children().into_iter().any(has_aggregate)
    }

    #[tokio::test]
    async fn a_join_is_built_on_the_aggregate_with_one_row_per_key() {
        let ctx = crate::session::session();
        tables(&ctx).await;
        let frame = ctx.sql(SQL).await.unwrap();
        let task = Arc::new(frame.task_ctx());
        let plan = frame.create_physical_plan().await.unwrap();
        assert!(has_aggregate(&build_side(&plan)), "built on the facts");
        let got = collect(plan, task).await.unwrap();

        // DataFusion alone builds on the 1.1 M facts; the answer is the same.
        let plain = SessionContext::new();
        tables(&plain).await;
        let frame = plain.sql(SQL).await.unwrap();
        let plan = frame.clone().create_physical_plan().await.unwrap();
        assert!(!has_aggregate(&build_side(&plan)));
        let want = frame.collect().await.unwrap();
        assert_eq!(
            pretty_format_batches(&got).unwrap().to_string(),
            pretty_format_batches(&want).unwrap().to_string()
        );
    }
}
