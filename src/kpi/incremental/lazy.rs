//! A state kept in one file per partition (a date), read when a query reads it:
//! a scan opens only the files of the partitions its filters can match. A KPI
//! that recomputes one month then reads that month's file alone; with every
//! file in one Parquet scan, each other file's footer was opened just to prune
//! its row groups (80 footers for a month of the TPC-H `(month, customer)` state).

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::file_format::options::ReadOptions;
use datafusion::datasource::listing::{ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::datasource::{MemTable, TableType, provider_as_source};
use datafusion::error::Result;
use datafusion::logical_expr::{
    BinaryExpr, Expr, LogicalPlan, LogicalPlanBuilder, Operator, TableProviderFilterPushDown, col,
};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::ParquetReadOptions;

use super::aggregate::Maintained;

#[derive(Debug)]
pub(super) struct LazyState {
    /// The aggregate's output: what a scan returns.
    schema: SchemaRef,
    /// The state's rows merged this run, in memory.
    fresh: Option<LogicalPlan>,
    /// The kept files, by partition name (`aggregate::partition_name`).
    files: Vec<(String, String)>,
    /// The kept files' schema.
    kept: SchemaRef,
    aggregate: Arc<Maintained>,
}

impl LazyState {
    pub(super) fn new(
        aggregate: Arc<Maintained>,
        fresh: Option<LogicalPlan>,
        files: Vec<(String, String)>,
        kept: SchemaRef,
    ) -> Result<LazyState> {
        let empty = MemTable::try_new(kept.clone(), vec![vec![]])?;
        let plan = aggregate.final_plan(scan(Arc::new(empty))?)?;
        Ok(LazyState {
            schema: Arc::new(plan.schema().as_arrow().clone()),
            fresh,
            files,
            kept,
            aggregate,
        })
    }

    /// The state's rows in the partitions `keep` names (all of them for `None`).
    fn state(&self, session: &dyn Session, keep: Option<&BTreeSet<String>>) -> Result<LogicalPlan> {
        let files: Vec<ListingTableUrl> = self
            .files
            .iter()
            .filter(|(partition, _)| keep.is_none_or(|k| k.contains(partition)))
            .map(|(_, path)| ListingTableUrl::parse(path))
            .collect::<Result<_>>()?;
        tracing::debug!(
            files = files.len(),
            of = self.files.len(),
            "kept state read by partition"
        );
        let kept: Arc<dyn TableProvider> = if files.is_empty() {
            Arc::new(MemTable::try_new(self.kept.clone(), vec![vec![]])?)
        } else {
            // As `SessionContext::read_parquet` would read them.
            let options = ParquetReadOptions::default()
                .to_listing_options(session.config(), session.table_options().clone());
            let config = ListingTableConfig::new_with_multi_paths(files)
                .with_listing_options(options)
                .with_schema(self.kept.clone());
            Arc::new(ListingTable::try_new(config)?)
        };
        let kept = scan(kept)?;
        match &self.fresh {
            None => Ok(kept),
            Some(fresh) => LogicalPlanBuilder::from(fresh.clone()).union(kept)?.build(),
        }
    }
}

fn scan(table: Arc<dyn TableProvider>) -> Result<LogicalPlan> {
    LogicalPlanBuilder::scan("state", provider_as_source(table), None)?.build()
}

#[async_trait]
impl TableProvider for LazyState {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        session: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let keep = match self.aggregate.partition {
            Some(p) => partitions(filters, &format!("g{p}")),
            None => None,
        };
        let state = self.state(session, keep.as_ref())?;
        // Then as a view: the filters, the columns and the limit over the output.
        let mut plan = LogicalPlanBuilder::from(self.aggregate.final_plan(state)?);
        if let Some(filter) = filters.iter().cloned().reduce(Expr::and) {
            plan = plan.filter(filter)?;
        }
        if let Some(projection) = projection {
            plan = plan.project(projection.iter().map(|&i| col(self.schema.field(i).name())))?;
        }
        if let Some(limit) = limit {
            plan = plan.limit(0, Some(limit))?;
        }
        session.create_physical_plan(&plan.build()?).await
    }
}

/// The partitions (days, or `null`) that rows passing every filter can be in,
/// as far as the filters on `column` tell; `None`: any.
fn partitions(filters: &[Expr], column: &str) -> Option<BTreeSet<String>> {
    filters
        .iter()
        .filter_map(|f| matching(f, column))
        .reduce(|a, b| a.intersection(&b).cloned().collect())
}

fn matching(filter: &Expr, column: &str) -> Option<BTreeSet<String>> {
    let is_column = |e: &Expr| matches!(e, Expr::Column(c) if c.name == column);
    let day = |e: &Expr| match e {
        Expr::Literal(ScalarValue::Date32(Some(d)), _) => Some(d.to_string()),
        _ => None,
    };
    match filter {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
            Operator::Eq if is_column(left) => day(right).map(|d| BTreeSet::from([d])),
            Operator::Eq if is_column(right) => day(left).map(|d| BTreeSet::from([d])),
            Operator::Or => {
                let (a, b) = (matching(left, column)?, matching(right, column)?);
                Some(a.union(&b).cloned().collect())
            }
            Operator::And => match (matching(left, column), matching(right, column)) {
                (Some(a), Some(b)) => Some(a.intersection(&b).cloned().collect()),
                (a, b) => a.or(b),
            },
            _ => None,
        },
        Expr::InList(list) if !list.negated && is_column(&list.expr) => {
            list.list.iter().map(day).collect()
        }
        Expr::IsNull(e) if is_column(e) => Some(BTreeSet::from(["null".to_string()])),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::logical_expr::lit;

    fn day(d: i32) -> Expr {
        lit(ScalarValue::Date32(Some(d)))
    }

    fn names(days: &[&str]) -> Option<BTreeSet<String>> {
        Some(days.iter().map(|d| d.to_string()).collect())
    }

    #[test]
    fn filters_on_the_partition_column_name_its_files() {
        let g = || col("g0");
        assert_eq!(partitions(&[g().eq(day(10))], "g0"), names(&["10"]));
        assert_eq!(partitions(&[day(10).eq(g())], "g0"), names(&["10"]));
        assert_eq!(
            partitions(&[g().in_list(vec![day(10), day(40)], false)], "g0"),
            names(&["10", "40"])
        );
        assert_eq!(
            partitions(&[g().eq(day(10)).or(g().is_null())], "g0"),
            names(&["10", "null"])
        );
        // Every filter holds: the partitions both allow.
        assert_eq!(
            partitions(
                &[
                    g().in_list(vec![day(10), day(40)], false),
                    g().eq(day(40)).and(col("a0").gt(lit(1)))
                ],
                "g0"
            ),
            names(&["40"])
        );
        assert_eq!(partitions(&[g().in_list(vec![], false)], "g0"), names(&[]));
    }

    #[test]
    fn other_filters_read_every_file() {
        let g = || col("g0");
        assert_eq!(partitions(&[], "g0"), None);
        assert_eq!(partitions(&[col("g1").eq(day(10))], "g0"), None);
        assert_eq!(partitions(&[g().gt(day(10))], "g0"), None);
        assert_eq!(partitions(&[g().in_list(vec![day(1)], true)], "g0"), None);
        // One side of an OR may match any row.
        assert_eq!(
            partitions(&[g().eq(day(10)).or(col("a0").eq(lit(1)))], "g0"),
            None
        );
    }
}
