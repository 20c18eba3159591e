//! Kept KPI outputs: a KPI that reads maintained aggregates keeps its output
//! rows, and the next run recomputes only the periods whose rows may differ.
//!
//! Which periods those are follows from the plan: each maintained aggregate
//! says how its result changed ([`Change`]: not at all, only in some days of a
//! date grouping column, or anywhere), and [`affected`] carries that up through
//! the operators that keep rows apart by a column (projections, filters, joins,
//! aggregates grouped by it) to the KPI's `period`. The KPI then runs with
//! `period IN (...)` on top, which DataFusion pushes down to the maintained
//! results, so a lazily read state (`incremental.rs`) reads only those periods'
//! files. Anything else (a window, a limit, a scan of a source, a global
//! aggregate that changed) means every period, as without kept outputs.
//!
//! A kept output is used only if it was computed from the very state versions
//! this run started from; otherwise, the KPI is computed in full.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, BooleanArray, RecordBatch, RecordBatchReader};
use datafusion::arrow::compute::{cast, concat_batches, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, Date32Type, Schema, SchemaRef};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, JoinType, ScalarValue};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{Expr, Join, LogicalPlan, LogicalPlanBuilder, col, lit};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::prelude::SessionContext;

use super::stored::{Manifest, Store, hash};
use super::{Change, Incremental, Reads};
use crate::publish::Staged;

/// Which rows of a plan's output may differ from the last run's.
#[derive(Debug, Clone)]
enum Affect {
    Unchanged,
    /// Only rows that meet one of these conditions.
    Within(Vec<Cond>),
    All,
}

impl Affect {
    /// Rows meeting any of `conditions`: none may differ when there are none.
    fn within(conditions: Vec<Cond>) -> Affect {
        if conditions.is_empty() {
            Affect::Unchanged
        } else {
            Affect::Within(conditions)
        }
    }
}

/// A condition on the rows of a plan's output.
#[derive(Debug, Clone)]
enum Cond {
    /// The column holds one of these days.
    Days(Column, BTreeSet<i32>),
    /// The columns hold one of the rows of `keys` (a changed group).
    Keys(Vec<Column>, RecordBatch),
    /// The column holds one of the days that `lookup` finds.
    Lookup(Column, Box<Lookup>),
    /// Each of these tells the same rows (lookups in different columns).
    OneOf(Vec<Cond>),
}

/// The days of a date column of `input` in its rows whose `columns` hold one
/// of the `keys`: where changed groups went, found by a query.
#[derive(Debug, Clone)]
struct Lookup {
    input: LogicalPlan,
    day: Column,
    columns: Vec<Column>,
    keys: RecordBatch,
}

impl Cond {
    /// Whether all its columns are in `schema`.
    fn within(&self, schema: &datafusion::common::DFSchema) -> bool {
        match self {
            Cond::Days(c, _) | Cond::Lookup(c, _) => schema.has_column(c),
            Cond::Keys(columns, _) => columns.iter().all(|c| schema.has_column(c)),
            Cond::OneOf(any) => any.iter().all(|c| c.within(schema)),
        }
    }

    /// The condition on other columns: `to` of each of its columns, if all
    /// have one (of one alternative at least).
    fn moved(self, to: &impl Fn(&Column) -> Option<Column>) -> Option<Cond> {
        Some(match self {
            Cond::Days(c, days) => Cond::Days(to(&c)?, days),
            Cond::Lookup(c, lookup) => Cond::Lookup(to(&c)?, lookup),
            Cond::Keys(columns, keys) => {
                Cond::Keys(columns.iter().map(to).collect::<Option<Vec<_>>>()?, keys)
            }
            Cond::OneOf(any) => {
                let moved: Vec<Cond> = any.into_iter().filter_map(|c| c.moved(to)).collect();
                if moved.is_empty() {
                    return None;
                }
                Cond::OneOf(moved)
            }
        })
    }
}

/// Changed groups of more than one column followed to their periods at most.
const MULTI_COLUMN_KEYS: usize = 64;

/// How one KPI's output is computed this run.
#[derive(Debug)]
pub struct Output {
    store: Store,
    key: String,
    fingerprint: String,
    /// The version of each state read, after this run.
    inputs: BTreeMap<String, String>,
    /// Some state read changed version this run.
    changed: bool,
    /// The KPI's columns, all nullable: kept and computed rows are cast to it.
    schema: SchemaRef,
    /// The kept rows and the periods to recompute; `None`: compute them all.
    kept: Option<(RecordBatch, BTreeSet<i32>)>,
}

impl Incremental {
    /// How to compute the output of KPI `id`, whose `plan` was rewritten by
    /// `maintain` to read the maintained aggregates in `reads`. `None` when the
    /// plan reads none.
    pub async fn output(
        &self,
        ctx: &SessionContext,
        id: &str,
        plan: &LogicalPlan,
        reads: &Reads,
    ) -> Option<Output> {
        let mut used = BTreeSet::new();
        let _ = plan.apply(|node| {
            if let LogicalPlan::TableScan(scan) = node
                && reads.contains_key(scan.table_name.table())
            {
                used.insert(scan.table_name.table().to_string());
            }
            Ok(TreeNodeRecursion::Continue)
        });
        if used.is_empty() {
            return None;
        }
        // Without the schema: a lazily read state's columns may be nullable
        // where a computed one's are not. With the version: another kpiforge
        // may compute the same plan otherwise.
        let fingerprint = format!(
            "kpi output {id} (kpiforge {})\n{}",
            env!("CARGO_PKG_VERSION"),
            plan.display_indent()
        );
        let key = hash(&fingerprint);
        self.uses(&key);
        let inputs: BTreeMap<String, String> = used
            .iter()
            .map(|name| (reads[name].key.clone(), reads[name].now.clone()))
            .collect();
        let changed = used.iter().any(|name| {
            let read = &reads[name];
            read.kept.as_deref() != Some(read.now.as_str())
        });
        let kept = (!self.full)
            .then(|| self.store.manifest(&key, &fingerprint))
            .flatten()
            // Computed from the states this run started from, and no other.
            .filter(|m| {
                m.inputs.len() == used.len()
                    && used.iter().all(|name| {
                        let read = &reads[name];
                        read.kept.as_ref() == m.inputs.get(&read.key)
                    })
            });
        let schema = Arc::new(Schema::new(
            plan.schema()
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true))
                .collect::<Vec<_>>(),
        ));
        let kept = match kept {
            Some(m) => match periods(ctx, plan, reads).await {
                Some(periods) => read_kept(&self.store, &key, &m)
                    .and_then(|rows| conform(&rows, &schema).ok())
                    .map(|rows| (rows, periods)),
                None => None,
            },
            None => None,
        };
        Some(Output {
            store: self.store.clone(),
            key,
            fingerprint,
            inputs,
            changed,
            schema,
            kept,
        })
    }
}

impl Output {
    /// The plan to run: `plan` itself, or restricted to the periods to recompute.
    pub fn plan(&mut self, plan: LogicalPlan) -> LogicalPlan {
        let Some((_, periods)) = &self.kept else {
            return plan;
        };
        let days = periods
            .iter()
            .map(|d| lit(ScalarValue::Date32(Some(*d))))
            .collect();
        let restricted = LogicalPlanBuilder::from(plan.clone())
            .filter(col("period").in_list(days, false))
            .and_then(|b| b.build());
        match restricted {
            Ok(restricted) => restricted,
            Err(_) => {
                self.kept = None;
                plan
            }
        }
    }

    /// How many periods are recomputed, kept rows standing in for the others;
    /// `None` when all are.
    pub fn recomputed_periods(&self) -> Option<usize> {
        self.kept.as_ref().map(|(_, periods)| periods.len())
    }

    /// The KPI's output: the kept rows of the periods not recomputed, then the
    /// `computed` ones; and the output staged to be kept, when it changed. A
    /// failure to stage it only costs the next run a full recompute.
    pub fn finish(
        self,
        computed: Vec<RecordBatch>,
    ) -> Result<(Vec<RecordBatch>, Vec<Staged>), DataFusionError> {
        let mut rows = Vec::new();
        for batch in &computed {
            rows.push(conform(batch, &self.schema)?);
        }
        if let Some((kept, periods)) = &self.kept {
            let period = kept
                .column_by_name("period")
                .and_then(|c| c.as_primitive_opt::<Date32Type>())
                .ok_or_else(|| {
                    DataFusionError::Internal("kept output without a DATE `period`".into())
                })?;
            let keep: BooleanArray = (0..period.len())
                .map(|i| Some(period.is_null(i) || !periods.contains(&period.value(i))))
                .collect();
            rows.insert(0, filter_record_batch(kept, &keep)?);
        }
        let unchanged = !self.changed && self.kept.as_ref().is_some_and(|(_, p)| p.is_empty());
        if unchanged {
            return Ok((rows, Vec::new()));
        }
        let all = concat_batches(&self.schema, &rows)?;
        let manifest = |name: String| Manifest {
            plan: self.fingerprint.clone(),
            sources: BTreeMap::new(),
            groups: BTreeMap::from([("all".to_string(), name)]),
            partitioned: false,
            pairs: Vec::new(),
            counts: Vec::new(),
            inputs: self.inputs.clone(),
        };
        let staged = self
            .store
            .stage(&self.key, "output", &all)
            .and_then(|(name, file)| {
                Ok(vec![
                    file,
                    self.store.stage_manifest(&self.key, &manifest(name))?,
                ])
            });
        match staged {
            Ok(staged) => Ok((vec![all], staged)),
            Err(e) => {
                tracing::warn!(error = %e, "could not keep a KPI's output; the next run computes it in full");
                Ok((vec![all], Vec::new()))
            }
        }
    }
}

/// The kept rows, if readable; `period` must be a `DATE`.
fn read_kept(store: &Store, key: &str, manifest: &Manifest) -> Option<RecordBatch> {
    let name = manifest.groups.get("all")?;
    let path = store.paths(key, std::slice::from_ref(name))?.pop()?;
    let file = std::fs::File::open(path).ok()?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .ok()?
        .build()
        .ok()?;
    let schema = reader.schema();
    let batches = reader.collect::<Result<Vec<_>, _>>().ok()?;
    let rows = concat_batches(&schema, &batches).ok()?;
    let period = rows.column_by_name("period")?;
    (period.data_type() == &DataType::Date32).then_some(rows)
}

/// `batch` with the columns and types of `schema`.
fn conform(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, DataFusionError> {
    let columns = schema
        .fields()
        .iter()
        .map(|f| {
            let column = batch.column_by_name(f.name()).ok_or_else(|| {
                DataFusionError::Internal(format!("kept output without `{}`", f.name()))
            })?;
            Ok(cast(column, f.data_type())?)
        })
        .collect::<Result<Vec<Arc<dyn Array>>, DataFusionError>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// The periods of `plan`'s output that may differ from the last run's, if the
/// plan tells: every row that may differ has its `period` in the set.
async fn periods(ctx: &SessionContext, plan: &LogicalPlan, reads: &Reads) -> Option<BTreeSet<i32>> {
    let conditions = match affected(plan, reads) {
        Affect::Unchanged => return Some(BTreeSet::new()),
        Affect::All => return None,
        Affect::Within(conditions) => conditions,
    };
    let mut days = BTreeSet::new();
    for condition in conditions {
        days.extend(period_days(ctx, condition).await?);
    }
    Some(days)
}

/// The periods a condition on `plan`'s output names, if it is on `period`.
async fn period_days(ctx: &SessionContext, condition: Cond) -> Option<BTreeSet<i32>> {
    match condition {
        Cond::Days(column, days) if column.name == "period" => Some(days),
        Cond::Lookup(column, lookup) if column.name == "period" => lookup.days(ctx).await,
        Cond::OneOf(any) => {
            for condition in any {
                if let Some(days) = Box::pin(period_days(ctx, condition)).await {
                    return Some(days);
                }
            }
            None
        }
        _ => None,
    }
}

impl Lookup {
    /// The days, or `None` if the query fails or finds a NULL day.
    async fn days(&self, ctx: &SessionContext) -> Option<BTreeSet<i32>> {
        let value = |k: usize, i: usize| {
            ScalarValue::try_from_array(self.keys.column(k), i)
                .ok()
                .filter(|v| !v.is_null())
                .map(lit)
        };
        let rows = 0..self.keys.num_rows();
        let matches = match self.columns.as_slice() {
            [column] => Expr::Column(column.clone())
                .in_list(rows.map(|i| value(0, i)).collect::<Option<_>>()?, false),
            // A disjunction per key: kept short.
            columns if rows.len() <= MULTI_COLUMN_KEYS => {
                let mut any: Option<Expr> = None;
                for i in rows {
                    let mut row: Option<Expr> = None;
                    for (k, column) in columns.iter().enumerate() {
                        let equal = Expr::Column(column.clone()).eq(value(k, i)?);
                        row = Some(row.map_or(equal.clone(), |r| r.and(equal)));
                    }
                    let row = row?;
                    any = Some(any.map_or(row.clone(), |a| a.or(row)));
                }
                any?
            }
            _ => return None,
        };
        let query = LogicalPlanBuilder::from(self.input.clone())
            .filter(matches)
            .and_then(|b| b.aggregate(vec![Expr::Column(self.day.clone())], Vec::<Expr>::new()))
            .and_then(|b| b.build())
            .ok()?;
        let frame = ctx.execute_logical_plan(query).await.ok()?;
        let batches = crate::session::collect(frame, "changed groups' periods")
            .await
            .ok()?;
        let mut days = BTreeSet::new();
        for batch in batches {
            let column = batch.column(0);
            if column.data_type() != &DataType::Date32 || column.null_count() > 0 {
                return None;
            }
            days.extend(column.as_primitive::<Date32Type>().values().iter().copied());
        }
        Some(days)
    }
}

/// Which rows of `plan`'s output may differ from the last run's.
fn affected(plan: &LogicalPlan, reads: &Reads) -> Affect {
    use LogicalPlan as P;
    let inputs = plan.inputs();
    // Expressions that may read other data, or give another answer next time.
    let opaque = plan
        .expressions()
        .iter()
        .any(|e| e.is_volatile() || has_subquery(e));
    if opaque {
        return Affect::All;
    }
    match plan {
        P::TableScan(scan) => match reads.get(scan.table_name.table()) {
            Some(read) => {
                let column = |k: usize| Column::new(Some(scan.table_name.clone()), format!("g{k}"));
                match &read.change {
                    Change::None => Affect::Unchanged,
                    Change::All => Affect::All,
                    Change::Days { column: k, days } => {
                        Affect::Within(vec![Cond::Days(column(*k), days.clone())])
                    }
                    Change::Keys { keys } => Affect::Within(vec![Cond::Keys(
                        (0..keys.num_columns()).map(column).collect(),
                        keys.clone(),
                    )]),
                }
            }
            None => Affect::All,
        },
        P::EmptyRelation(_) | P::Values(_) => Affect::Unchanged,
        P::Filter(_) | P::Sort(datafusion::logical_expr::Sort { fetch: None, .. }) => {
            affected(inputs[0], reads)
        }
        P::Repartition(_) => affected(inputs[0], reads),
        P::SubqueryAlias(_) | P::Distinct(datafusion::logical_expr::Distinct::All(_)) => {
            positional(affected(inputs[0], reads), inputs[0], plan)
        }
        P::Projection(p) => map_columns(affected(inputs[0], reads), plan, |c| {
            p.expr.iter().position(|e| is_column(e, c))
        }),
        P::Aggregate(a) => match affected(inputs[0], reads) {
            Affect::Within(_) if a.group_expr.is_empty() => Affect::All,
            affect => map_columns(affect, plan, |c| {
                a.group_expr.iter().position(|e| is_column(e, c))
            }),
        },
        P::Join(j) => {
            let left = affected(inputs[0], reads);
            let right = affected(inputs[1], reads);
            // A row of one side, unchanged, meets the same rows of the other
            // side, unchanged: its output rows are unchanged. Outer joins and
            // anti joins also answer for rows that did not meet.
            let (keeps_left, keeps_right) = match j.join_type {
                JoinType::Inner => (true, true),
                JoinType::Left | JoinType::LeftSemi | JoinType::LeftAnti => (true, false),
                JoinType::Right | JoinType::RightSemi | JoinType::RightAnti => (false, true),
                _ => (false, false),
            };
            let mut within = Vec::new();
            for (i, (side, keeps)) in [(left, keeps_left), (right, keeps_right)]
                .into_iter()
                .enumerate()
            {
                match side {
                    Affect::Unchanged => {}
                    Affect::Within(c) if keeps => {
                        within.extend(c.into_iter().map(|c| follow_keys(c, j, i, inputs[1 - i])))
                    }
                    _ => return Affect::All,
                }
            }
            // Semi and anti joins keep one side's columns.
            let schema = plan.schema();
            if !within.iter().all(|c| c.within(schema)) {
                return Affect::All;
            }
            Affect::within(within)
        }
        P::Union(_) => {
            let mut within = Vec::new();
            for input in &inputs {
                match positional(affected(input, reads), input, plan) {
                    Affect::Unchanged => {}
                    Affect::Within(c) => within.extend(c),
                    Affect::All => return Affect::All,
                }
            }
            Affect::within(within)
        }
        _ => Affect::All,
    }
}

/// A condition from side `side` (0: left) of an inner join: changed groups
/// keyed by that side's join keys also name the rows of the `other` side they
/// meet, whose days (in each `DATE` column of that side) a lookup finds. The
/// other side's rows are looked up, not the join's: its rows with those keys
/// are there before and after (its own changes have conditions of their own),
/// while join rows may come and go with the changed values.
fn follow_keys(condition: Cond, j: &Join, side: usize, other: &LogicalPlan) -> Cond {
    let Cond::Keys(columns, keys) = &condition else {
        return condition;
    };
    if j.join_type != JoinType::Inner {
        return condition;
    }
    let key_of = |c: &Column| {
        j.on.iter().find_map(|(l, r)| {
            let (mine, theirs) = if side == 0 { (l, r) } else { (r, l) };
            match (mine, theirs) {
                (Expr::Column(m), Expr::Column(t)) if m == c => Some(t.clone()),
                _ => None,
            }
        })
    };
    let Some(theirs) = columns.iter().map(key_of).collect::<Option<Vec<_>>>() else {
        return condition;
    };
    let lookups: Vec<Cond> = other
        .schema()
        .iter()
        .filter(|(_, f)| f.data_type() == &DataType::Date32)
        .map(|day| {
            let day = Column::from(day);
            let lookup = Lookup {
                input: other.clone(),
                day: day.clone(),
                columns: theirs.clone(),
                keys: keys.clone(),
            };
            Cond::Lookup(day, Box::new(lookup))
        })
        .collect();
    if lookups.is_empty() {
        return condition;
    }
    Cond::OneOf(std::iter::once(condition).chain(lookups).collect())
}

fn has_subquery(e: &Expr) -> bool {
    e.exists(|e| {
        Ok(matches!(
            e,
            Expr::ScalarSubquery(_) | Expr::Exists(_) | Expr::InSubquery(_)
        ))
    })
    .unwrap_or(true)
}

/// Whether `e` is column `c`, perhaps renamed.
fn is_column(e: &Expr, c: &Column) -> bool {
    match e {
        Expr::Alias(a) => is_column(&a.expr, c),
        Expr::Column(x) => x == c,
        _ => false,
    }
}

/// The conditions of `affect` on the output of `plan`, whose column `i` is
/// `position(input column)`; a condition on a column not passed on is `All`.
fn map_columns(
    affect: Affect,
    plan: &LogicalPlan,
    position: impl Fn(&Column) -> Option<usize>,
) -> Affect {
    let Affect::Within(conditions) = affect else {
        return affect;
    };
    let schema = plan.schema();
    let to = |c: &Column| position(c).map(|i| Column::from(schema.qualified_field(i)));
    match conditions
        .into_iter()
        .map(|c| c.moved(&to))
        .collect::<Option<Vec<_>>>()
    {
        Some(within) => Affect::Within(within),
        None => Affect::All,
    }
}

/// The conditions of `affect` on `input`, moved to the same positions of `plan`.
fn positional(affect: Affect, input: &LogicalPlan, plan: &LogicalPlan) -> Affect {
    let schema = input.schema();
    map_columns(affect, plan, |c| schema.maybe_index_of_column(c))
}
