//! Partial results held in memory, merged per group and finished into the
//! aggregate's output without planning a query: an incremental run makes a
//! dozen or more of these merges, most over a few hundred rows, and planning
//! each as a query (analyzer, physical planner and its rules, an aggregate
//! split around a repartition) cost more than running it: dropping that cut
//! 8% of the TPC-H incremental run's instructions (BENCHMARKS.md). The merge is one
//! physical aggregate built by hand over the rows, DataFusion's own, so its
//! functions behave as they do in a query.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int64Array, new_null_array};
use datafusion::arrow::compute::{
    SortOptions, cast, concat_batches, sort_to_indices, take_record_batch,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::DFSchema;
use datafusion::common::runtime::SpawnedTask;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::physical_expr::aggregate::AggregateExprBuilder;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode, PhysicalGroupBy};
use datafusion::physical_plan::{collect, expressions};
use datafusion::prelude::SessionContext;
use tracing::Instrument;

use super::aggregate::Maintained;

impl Maintained {
    /// The state rows of every part merged per group, as [`Maintained::merge_plan`]
    /// merges plans (sorted by the grouping column `sort`, if any), in the
    /// session `ctx` (its memory pool, its batch size). A part may
    /// lack state columns (pair counts have only theirs): those are NULL, which
    /// merges as nothing. The columns are typed as [`Maintained::merged_schema`] says.
    pub(super) async fn merge(
        &self,
        ctx: &SessionContext,
        parts: &[RecordBatch],
        sort: Option<usize>,
    ) -> Result<RecordBatch, DataFusionError> {
        // On a task of its own, as the states' queries are: the states are
        // brought up to date side by side from one task, and a rebuild merges
        // every group (a million or more) on one core otherwise.
        let (m, parts, task) = (self.clone(), parts.to_vec(), ctx.task_ctx());
        let merging = async move { m.merge_in(task, &parts, sort).await };
        SpawnedTask::spawn(merging.instrument(tracing::Span::current()))
            .join_unwind()
            .await
            .map_err(|e| DataFusionError::Execution(format!("a merge stopped: {e}")))?
    }

    async fn merge_in(
        &self,
        task: Arc<TaskContext>,
        parts: &[RecordBatch],
        sort: Option<usize>,
    ) -> Result<RecordBatch, DataFusionError> {
        let groups = self.groups.len();
        let columns = self.state_columns();
        let schemas: Vec<&Schema> = parts.iter().map(|p| p.schema_ref().as_ref()).collect();
        let schema = Arc::new(self.merged_schema(&schemas));
        let typed = parts
            .iter()
            .map(|part| part_typed_as(part, &schema))
            .collect::<Result<Vec<_>, _>>()?;
        let rows = concat_batches(&schema, &typed)?;

        let column = |k: usize| expressions::col(schema.field(k).name(), &schema);
        let group_by = PhysicalGroupBy::new_single(
            (0..groups)
                .map(|k| Ok((column(k)?, schema.field(k).name().clone())))
                .collect::<Result<_, DataFusionError>>()?,
        );
        let aggregates = columns
            .iter()
            .enumerate()
            .map(|(c, (name, merge))| {
                AggregateExprBuilder::new(merge(), vec![column(groups + c)?])
                    .schema(schema.clone())
                    .alias(name)
                    .build()
                    .map(Arc::new)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let filters = vec![None; aggregates.len()];
        let input = MemorySourceConfig::try_new_exec(&[vec![rows]], schema.clone(), None)?;
        let merged = AggregateExec::try_new(
            AggregateMode::Single,
            group_by,
            aggregates,
            filters,
            input,
            schema.clone(),
        )?;
        let batches = collect(Arc::new(merged), task).await?;
        // The merged columns back in the parts' types (a sum of decimals widens).
        let merged = batches
            .iter()
            .map(|b| typed_as(b, &schema))
            .collect::<Result<Vec<_>, _>>()?;
        let merged = concat_batches(&schema, &merged)?;
        match sort {
            None => Ok(merged),
            Some(p) => {
                let ascending = SortOptions {
                    descending: false,
                    nulls_first: true,
                };
                let order = sort_to_indices(merged.column(p), Some(ascending), None)?;
                Ok(take_record_batch(&merged, &order)?)
            }
        }
    }

    /// The distinct pairs of a `count(DISTINCT)`, the `i`th aggregate, as
    /// state rows to merge: one per pair, counting 1.
    pub(super) fn pair_ones(
        &self,
        pairs: &RecordBatch,
        i: usize,
    ) -> Result<RecordBatch, DataFusionError> {
        let mut fields: Vec<Field> = Vec::new();
        let mut columns: Vec<ArrayRef> = Vec::new();
        for k in 0..self.groups.len() {
            let name = format!("g{k}");
            let column = pairs.column_by_name(&name).ok_or_else(|| {
                DataFusionError::Internal(format!("distinct pairs without their column {name}"))
            })?;
            fields.push(Field::new(name, column.data_type().clone(), true));
            columns.push(column.clone());
        }
        fields.push(Field::new(format!("n{i}"), DataType::Int64, false));
        columns.push(Arc::new(Int64Array::from_value(1, pairs.num_rows())));
        Ok(RecordBatch::try_new(
            Arc::new(Schema::new(fields)),
            columns,
        )?)
    }

    /// The aggregate's output from its merged `state`, as
    /// [`Maintained::final_plan`] computes it, its expressions evaluated on the
    /// rows in memory.
    pub(super) fn finish(
        &self,
        ctx: &SessionContext,
        state: &RecordBatch,
    ) -> Result<RecordBatch, DataFusionError> {
        let input = DFSchema::try_from(state.schema())?;
        let mut fields = Vec::new();
        let mut columns = Vec::new();
        for (name, expr) in self.final_exprs()? {
            let column = ctx
                .create_physical_expr(expr, &input)?
                .evaluate(state)?
                .into_array(state.num_rows())?;
            fields.push(Field::new(name, column.data_type().clone(), true));
            columns.push(column);
        }
        Ok(RecordBatch::try_new(
            Arc::new(Schema::new(fields)),
            columns,
        )?)
    }
}

/// `batch`'s columns by name, cast to `schema`'s types. A column it lacks is
/// an error: a kept state's file, or a merged one, holds every column.
pub(super) fn typed_as(
    batch: &RecordBatch,
    schema: &SchemaRef,
) -> Result<RecordBatch, DataFusionError> {
    cast_by_name(batch, schema, |name| {
        Err(DataFusionError::Internal(format!(
            "a state without its column {name}; `kpiforge run --full` rebuilds the kept states"
        )))
    })
}

/// [`typed_as`] for a part of a merge, which may lack state columns (pair
/// counts have only theirs): those are NULL, which merges as nothing.
fn part_typed_as(part: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, DataFusionError> {
    cast_by_name(part, schema, |_| Ok(None))
}

/// `batch`'s columns cast to `schema`'s types by name; `missing` decides for
/// a column it lacks (`Ok(None)`: NULL).
fn cast_by_name(
    batch: &RecordBatch,
    schema: &SchemaRef,
    missing: impl Fn(&str) -> Result<Option<ArrayRef>, DataFusionError>,
) -> Result<RecordBatch, DataFusionError> {
    let columns = schema
        .fields()
        .iter()
        .map(|f| match batch.column_by_name(f.name()) {
            Some(c) => Ok(cast(c, f.data_type())?),
            None => Ok(missing(f.name())?
                .unwrap_or_else(|| new_null_array(f.data_type(), batch.num_rows()))),
        })
        .collect::<Result<Vec<_>, DataFusionError>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use datafusion::arrow::array::{Date32Array, Decimal128Array, StringArray};
    use datafusion::arrow::compute::{SortColumn, lexsort_to_indices};
    use datafusion::functions_aggregate::expr_fn::{avg, count, count_distinct, max, min, sum};
    use datafusion::logical_expr::{Expr, LogicalPlan, col};
    use datafusion::prelude::ParquetReadOptions;

    use super::*;
    use crate::kpi::incremental::{in_memory, one_batch, stored::Stamp};

    /// A source file: key (with a NULL), day, a decimal amount and a count.
    fn source(
        keys: Vec<Option<&str>>,
        days: Vec<i32>,
        amounts: Vec<i128>,
        counts: Vec<Option<i64>>,
    ) -> RecordBatch {
        RecordBatch::try_from_iter([
            ("k", Arc::new(StringArray::from(keys)) as ArrayRef),
            ("d", Arc::new(Date32Array::from(days)) as ArrayRef),
            (
                "x",
                Arc::new(
                    Decimal128Array::from(amounts)
                        .with_precision_and_scale(15, 2)
                        .unwrap(),
                ) as ArrayRef,
            ),
            ("y", Arc::new(Int64Array::from(counts)) as ArrayRef),
        ])
        .unwrap()
    }

    /// Rows sorted by every column, to compare results whose order is free.
    fn sorted(batch: &RecordBatch) -> RecordBatch {
        let columns: Vec<SortColumn> = batch
            .columns()
            .iter()
            .map(|c| SortColumn {
                values: c.clone(),
                options: None,
            })
            .collect();
        take_record_batch(batch, &lexsort_to_indices(&columns, None).unwrap()).unwrap()
    }

    async fn planned(ctx: &SessionContext, plan: LogicalPlan) -> RecordBatch {
        one_batch(
            &ctx.execute_logical_plan(plan)
                .await
                .unwrap()
                .collect()
                .await
                .unwrap(),
        )
        .unwrap()
    }

    /// The aggregate of `rows`, written as the Parquet source `t`, grouped by
    /// `groups` into `aggs`, as maintained. The directory holds the file.
    async fn maintained(
        rows: RecordBatch,
        groups: Vec<Expr>,
        aggs: Vec<Expr>,
    ) -> (tempfile::TempDir, SessionContext, Maintained) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        crate::publish::stage_parquet_in_place(dir.path(), "t.parquet", &rows, None)
            .unwrap()
            .commit()
            .unwrap();
        let ctx = crate::session::session();
        let frame = ctx
            .read_parquet(
                path.to_string_lossy().into_owned(),
                ParquetReadOptions::default(),
            )
            .await
            .unwrap()
            .aggregate(groups, aggs)
            .unwrap();
        let node = frame.logical_plan().clone();
        let LogicalPlan::Aggregate(agg) = &node else {
            panic!("an aggregate: {node}")
        };
        let files = HashMap::from([("t".to_string(), vec![Stamp::of(&path).unwrap()])]);
        let m = Maintained::analyse(agg, &node, &files).unwrap();
        (dir, ctx, m)
    }

    /// The partial results of all of the source's rows, by the planned merge.
    async fn partials(ctx: &SessionContext, m: &Maintained) -> RecordBatch {
        let partial = m.partial_plan(m.input.clone()).unwrap();
        planned(ctx, m.merge_plan(vec![partial], None).unwrap()).await
    }

    #[tokio::test]
    async fn merges_in_memory_equal_the_planned_merges() {
        let rows = source(
            vec![Some("a"), Some("a"), None, Some("b"), Some("b")],
            vec![10, 10, 10, 11, 12],
            vec![150, 250, 5, 1, 2],
            vec![Some(1), Some(2), None, Some(7), Some(7)],
        );
        let aggs = vec![
            sum(col("x")),
            avg(col("y")),
            count(col("y")),
            min(col("d")),
            max(col("k")),
            count_distinct(col("y")),
        ];
        let (_dir, ctx, m) = maintained(rows, vec![col("k"), col("d")], aggs).await;

        // Partial results of the file, twice over (as a kept state and new
        // rows would be), and the distinct pairs counted as ones.
        let partials = partials(&ctx, &m).await;
        let pairs = planned(
            &ctx,
            m.pairs_plan(std::slice::from_ref(&m.input), 5).unwrap(),
        )
        .await;
        let parts = vec![partials.clone(), m.pair_ones(&pairs, 5).unwrap(), partials];

        let merged = m.merge(&ctx, &parts, Some(1)).await.unwrap();
        let plans = parts
            .iter()
            .map(|p| in_memory(p.clone()).unwrap())
            .collect();
        let expected = planned(&ctx, m.merge_plan(plans, Some(1)).unwrap()).await;
        // Sorted by the day (g1) as asked, and the same rows and types.
        let days = merged
            .column(1)
            .as_any()
            .downcast_ref::<Date32Array>()
            .unwrap();
        assert!(days.values().windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(merged.num_rows(), 4);
        assert_eq!(sorted(&merged).columns(), sorted(&expected).columns());

        let finished = m.finish(&ctx, &merged).unwrap();
        let expected = planned(
            &ctx,
            m.final_plan(in_memory(merged.clone()).unwrap()).unwrap(),
        )
        .await;
        assert_eq!(sorted(&finished).columns(), sorted(&expected).columns());
        // Typed as the aggregate's own output.
        for (got, want) in finished
            .schema()
            .fields()
            .iter()
            .zip(m.node.schema().fields().iter())
        {
            assert_eq!(got.data_type(), want.data_type(), "{}", want.name());
        }
    }

    #[tokio::test]
    async fn merged_columns_take_the_last_part_types() {
        let rows = source(vec![Some("a")], vec![1], vec![100], vec![Some(3)]);
        let aggs = vec![sum(col("x")), count(col("y"))];
        let (_dir, _ctx, m) = maintained(rows, vec![col("k")], aggs).await;
        // New rows (a wider sum, a string view), then the kept state, which
        // lacks the count `n1`; `n0` is the sum's count.
        let new = Schema::new(vec![
            Field::new("g0", DataType::Utf8View, true),
            Field::new("s0", DataType::Decimal128(25, 2), true),
        ]);
        let kept = Schema::new(vec![
            Field::new("g0", DataType::Utf8, true),
            Field::new("s0", DataType::Decimal128(15, 2), true),
            Field::new("n0", DataType::Int64, false),
        ]);
        let typed = |parts: &[&Schema]| -> Vec<(String, DataType, bool)> {
            let merged = m.merged_schema(parts);
            let fields = merged.fields().iter();
            fields
                .map(|f| (f.name().clone(), f.data_type().clone(), f.is_nullable()))
                .collect()
        };
        let column = |name: &str, data_type| (name.to_string(), data_type, true);
        // Whichever part comes last types the columns both have.
        let orders = [
            ([&new, &kept], DataType::Utf8, DataType::Decimal128(15, 2)),
            (
                [&kept, &new],
                DataType::Utf8View,
                DataType::Decimal128(25, 2),
            ),
        ];
        for (parts, key, sum) in orders {
            assert_eq!(
                typed(&parts),
                [
                    column("g0", key),
                    column("s0", sum),
                    column("n0", DataType::Int64),
                    column("n1", DataType::Int64),
                ]
            );
        }
    }

    #[tokio::test]
    async fn an_aggregate_without_groups_merges_to_one_row() {
        let rows = source(vec![Some("a")], vec![1], vec![100], vec![Some(3)]);
        let aggs = vec![sum(col("y")), count(col("y"))];
        let (_dir, ctx, m) = maintained(rows, vec![], aggs).await;
        let partials = partials(&ctx, &m).await;
        let merged = m
            .merge(&ctx, &[partials.clone(), partials], None)
            .await
            .unwrap();
        let finished = m.finish(&ctx, &merged).unwrap();
        assert_eq!(finished.num_rows(), 1);
        let value = |b: &RecordBatch, i: usize| {
            b.column(i)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .value(0)
        };
        assert_eq!((value(&finished, 0), value(&finished, 1)), (6, 2));
        // Nothing to merge: one row still, the sum NULL and the count 0.
        let empty = m.merge(&ctx, &[merged.slice(0, 0)], None).await.unwrap();
        let finished = m.finish(&ctx, &empty).unwrap();
        assert_eq!(finished.num_rows(), 1);
        assert!(finished.column(0).is_null(0));
        assert_eq!(value(&finished, 1), 0);
    }
}
