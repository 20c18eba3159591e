//! A maintained aggregate: how its functions split into mergeable partial
//! results, and the plans that compute, merge and finish them.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, Date32Array};
use datafusion::arrow::compute::kernels::partition::partition;
use datafusion::arrow::datatypes::{DataType, Date32Type, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::error::DataFusionError;
use datafusion::functions_aggregate::expr_fn::{count, max, min, sum};
use datafusion::functions_aggregate::min_max::{max_udaf, min_udaf};
use datafusion::functions_aggregate::sum::sum_udaf;
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::{
    Aggregate, AggregateUDF, Expr, ExprSchemable, LogicalPlan, LogicalPlanBuilder, cast, col, lit,
    when,
};

use super::Split;
use super::rows::{linear, narrowed, substitute};
use super::stored::{Stamp, hash};

/// How a state column merges: `sum`, `min` or `max`.
type Merge = fn() -> Arc<AggregateUDF>;

/// An aggregate whose result can be kept and brought up to date.
#[derive(Debug, Clone)]
pub(super) struct Maintained {
    /// The aggregate node, as found in the optimised plan.
    pub(super) node: LogicalPlan,
    /// Its input, which selects, projects, joins and unions source rows only.
    pub(super) input: LogicalPlan,
    pub(super) groups: Vec<Expr>,
    pub(super) aggs: Vec<Partial>,
    /// The first `DATE` grouping column: the state is kept in one file per
    /// value of it (a period, usually), so new rows rewrite only their periods.
    pub(super) partition: Option<usize>,
    /// The source of each scan in `input`, in the order `substitute` visits them.
    pub(super) scans: Vec<String>,
    /// Distinct sources read, sorted.
    pub(super) sources: Vec<String>,
    /// The node as text: a kept state is used only for the same aggregate.
    pub(super) fingerprint: String,
}

/// How one aggregate function is split into mergeable parts.
#[derive(Debug, Clone)]
pub(super) enum Partial {
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
    pub(super) fn analyse(
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
        if agg.group_expr.iter().any(Expr::is_volatile) {
            return Err("a volatile grouping".into());
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
            fingerprint: format!(
                "kpiforge {}\n{}",
                env!("CARGO_PKG_VERSION"),
                node.display_indent_schema()
            ),
        })
    }

    pub(super) fn key(&self) -> String {
        hash(&self.fingerprint)
    }

    pub(super) fn distinct(&self) -> impl Iterator<Item = (usize, &Expr)> {
        self.aggs.iter().enumerate().filter_map(|(i, a)| match a {
            Partial::CountDistinct(x) => Some((i, x)),
            _ => None,
        })
    }

    pub(super) fn distinct_count(&self) -> usize {
        self.distinct().count()
    }

    pub(super) fn group_names(&self) -> Vec<Expr> {
        (0..self.groups.len())
            .map(|k| col(format!("g{k}")))
            .collect()
    }

    /// The state's columns after the groups, with their merge.
    pub(super) fn state_columns(&self) -> Vec<(String, Merge)> {
        let mut columns: Vec<(String, Merge)> = Vec::new();
        for (i, a) in self.aggs.iter().enumerate() {
            match a {
                Partial::Sum(_) | Partial::Avg(_) => {
                    columns.push((format!("s{i}"), sum_udaf));
                    columns.push((format!("n{i}"), sum_udaf));
                }
                Partial::Count(_) | Partial::CountDistinct(_) => {
                    columns.push((format!("n{i}"), sum_udaf))
                }
                Partial::Min(_) => columns.push((format!("m{i}"), min_udaf)),
                Partial::Max(_) => columns.push((format!("m{i}"), max_udaf)),
            }
        }
        columns
    }

    /// The columns of parts merged: the groups `g0`, `g1`, ... and the state
    /// columns, in [`Maintained::state_columns`]' order. Each takes its type
    /// from the last part that has it, the kept state's, which callers list
    /// last (a sum of decimals read back keeps its type); one that no part has
    /// is a count's, `Int64`.
    pub(super) fn merged_schema(&self, parts: &[&Schema]) -> Schema {
        let groups = (0..self.groups.len()).map(|k| format!("g{k}"));
        let states = self.state_columns().into_iter().map(|(name, _)| name);
        let fields: Vec<Field> = groups
            .chain(states)
            .map(|name| {
                let data_type = parts
                    .iter()
                    .rev()
                    .find_map(|p| p.field_with_name(&name).ok())
                    .map_or(DataType::Int64, |f| f.data_type().clone());
                Field::new(name, data_type, true)
            })
            .collect();
        Schema::new(fields)
    }

    /// The input grouped as the aggregate groups it, with partial results.
    pub(super) fn partial_plan(&self, input: LogicalPlan) -> Result<LogicalPlan, DataFusionError> {
        let groups: Vec<Expr> = self
            .groups
            .iter()
            .enumerate()
            .map(|(k, g)| g.clone().alias(format!("g{k}")))
            .collect();
        // Aggregate functions only in the aggregate, the rest in a projection
        // above it, as DataFusion's physical planner takes them.
        let mut partials = Vec::new();
        let mut columns = self.group_names();
        for (i, a) in self.aggs.iter().enumerate() {
            let mut partial = |e: Expr, name: String| {
                partials.push(e.alias(&name));
                columns.push(col(name));
            };
            match a {
                Partial::Sum(x) => {
                    partial(sum(x.clone()), format!("s{i}"));
                    partial(count(x.clone()), format!("n{i}"));
                }
                Partial::Avg(x) => {
                    partial(sum(cast(x.clone(), DataType::Float64)), format!("s{i}"));
                    partial(count(x.clone()), format!("n{i}"));
                }
                Partial::Count(x) => partial(count(x.clone()), format!("n{i}")),
                Partial::Min(x) => partial(min(x.clone()), format!("m{i}")),
                Partial::Max(x) => partial(max(x.clone()), format!("m{i}")),
                // Counted from the new pairs (`pair_ones`).
                Partial::CountDistinct(_) => {
                    columns.push(lit(ScalarValue::Int64(None)).alias(format!("n{i}")))
                }
            }
        }
        LogicalPlanBuilder::from(input)
            .aggregate(groups, partials)?
            .project(columns)?
            .build()
    }

    /// The distinct `(group, x)` pairs of the `terms` for the `i`th aggregate.
    pub(super) fn pairs_plan(
        &self,
        terms: &[LogicalPlan],
        i: usize,
    ) -> Result<LogicalPlan, DataFusionError> {
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

    /// The partitions (values of the partition column, as text) of state rows.
    pub(super) fn partitions(
        &self,
        state: &RecordBatch,
        p: Option<usize>,
    ) -> Result<BTreeSet<String>, DataFusionError> {
        let Some(p) = p else {
            return Ok(BTreeSet::from(["all".to_string()]));
        };
        let dates = partition_column(state, p)?;
        Ok((0..dates.len()).map(|i| partition_name(dates, i)).collect())
    }

    /// The days in grouping column `g{p}` of state rows; `None` if one is NULL.
    pub(super) fn days(
        &self,
        state: &RecordBatch,
        p: usize,
    ) -> Result<Option<BTreeSet<i32>>, DataFusionError> {
        let dates = partition_column(state, p)?;
        if dates.null_count() > 0 {
            return Ok(None);
        }
        Ok(Some(dates.values().iter().copied().collect()))
    }

    /// A filter on state rows (or pairs) keeping the `touched` partitions.
    pub(super) fn partition_filter(
        &self,
        touched: &BTreeSet<String>,
        p: Option<usize>,
    ) -> Option<Expr> {
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
    pub(super) fn sorted(
        &self,
        plan: LogicalPlan,
        p: Option<usize>,
    ) -> Result<LogicalPlan, DataFusionError> {
        match p {
            None => Ok(plan),
            Some(p) => LogicalPlanBuilder::from(plan)
                .sort(vec![col(format!("g{p}")).sort(true, true)])?
                .build(),
        }
    }

    /// Rows of the state sorted by partition, cut into one batch per partition.
    pub(super) fn split(
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
        Ok(partition(std::slice::from_ref(column))?
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

    /// The partial results of every part merged per group (sorted by the
    /// grouping column `sort`, if any): the plan of [`Maintained::merge`], for
    /// parts that are plans over the sources. A part may lack state columns:
    /// those are NULL, which merges as nothing.
    pub(super) fn merge_plan(
        &self,
        parts: Vec<LogicalPlan>,
        sort: Option<usize>,
    ) -> Result<LogicalPlan, DataFusionError> {
        let columns = self.state_columns();
        let groups = self.groups.len();
        let schemas: Vec<&Schema> = parts.iter().map(|p| p.schema().as_arrow()).collect();
        let merged_schema = self.merged_schema(&schemas);
        let data_type = |c: usize| merged_schema.field(groups + c).data_type().clone();
        let mut union: Option<LogicalPlanBuilder> = None;
        for part in parts {
            let has = |name: &str| part.schema().fields().iter().any(|f| f.name() == name);
            let mut exprs = self.group_names();
            for (c, (name, _)) in columns.iter().enumerate() {
                let data_type = data_type(c);
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
        // Cast in a projection above the aggregate, not around its functions.
        let merged = columns
            .iter()
            .map(|(name, merge)| merge().call(vec![col(name.as_str())]).alias(name))
            .collect::<Vec<_>>();
        let mut typed = self.group_names();
        typed.extend(
            columns
                .iter()
                .enumerate()
                .map(|(c, (name, _))| cast(col(name.as_str()), data_type(c)).alias(name)),
        );
        let merged = union
            .aggregate(self.group_names(), merged)?
            .project(typed)?
            .build()?;
        self.sorted(merged, sort)
    }

    /// The aggregate's output from its merged state, typed as the node's.
    pub(super) fn final_plan(&self, state: LogicalPlan) -> Result<LogicalPlan, DataFusionError> {
        let exprs = self.final_exprs()?;
        let exprs = exprs.into_iter().map(|(name, e)| e.alias(name));
        LogicalPlanBuilder::from(state).project(exprs)?.build()
    }

    /// The output's columns, by name, as expressions over the merged state.
    pub(super) fn final_exprs(&self) -> Result<Vec<(String, Expr)>, DataFusionError> {
        let fields = self.node.schema().fields().clone();
        let mut exprs: Vec<(String, Expr)> = (0..self.groups.len())
            .map(|k| (format!("g{k}"), col(format!("g{k}"))))
            .collect();
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
            exprs.push((format!("a{i}"), cast(value, field.data_type().clone())));
        }
        Ok(exprs)
    }

    /// The rows of the input not in the state yet, as terms whose rows add up
    /// to them: for scans `0..n`, term `i` is the input with scan `i` reading
    /// its source's new files, scans before it the files the state covers, scans
    /// after it all files. No terms when no source has new files. (Terms are
    /// aggregated one by one: a union would lose the qualifiers of their columns.)
    pub(super) fn delta_terms(&self, delta: &Split) -> Result<Vec<LogicalPlan>, DataFusionError> {
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
    fn of(e: &Expr, input: &DFSchema) -> Result<Partial, String> {
        let e = match e {
            Expr::Alias(a) => a.expr.as_ref(),
            e => e,
        };
        let Expr::AggregateFunction(AggregateFunction { func, params }) = e else {
            return Err(format!("`{e}` is not an aggregate function"));
        };
        if !params.order_by.is_empty() || params.args.len() != 1 {
            return Err(format!("`{e}` has an ORDER BY or several arguments"));
        }
        // These aggregates skip NULLs: `f(x) FILTER (WHERE c)` is `f(CASE WHEN c THEN x END)`.
        let x = match &params.filter {
            None => params.args[0].clone(),
            Some(c) => when(c.as_ref().clone(), params.args[0].clone())
                .end()
                .map_err(|e| e.to_string())?,
        };
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

/// Grouping column `g{p}` of state rows, a `DATE`.
fn partition_column(state: &RecordBatch, p: usize) -> Result<&Date32Array, DataFusionError> {
    let column = state
        .column_by_name(&format!("g{p}"))
        .ok_or_else(|| DataFusionError::Internal("a state without its partition column".into()))?;
    Ok(column.as_primitive::<Date32Type>())
}

/// A partition's name: its date as days since 1970, or `null`.
fn partition_name(dates: &Date32Array, i: usize) -> String {
    if dates.is_null(i) {
        "null".to_string()
    } else {
        dates.value(i).to_string()
    }
}
