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
use datafusion::arrow::datatypes::{DataType, Date32Type, SchemaRef};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, JoinType, ScalarValue};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, col, lit};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::stored::{Manifest, Store, hash};
use super::{Change, Incremental, Reads};
use crate::publish::Staged;

/// Which rows of a plan's output may differ from the last run's.
#[derive(Debug, Clone, PartialEq)]
enum Affect {
    Unchanged,
    /// Only rows where one of these columns holds one of its days.
    Within(Vec<(Column, BTreeSet<i32>)>),
    All,
}

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
    /// The kept rows and the periods to recompute; `None`: compute them all.
    kept: Option<(RecordBatch, BTreeSet<i32>)>,
}

impl Incremental {
    /// How to compute the output of KPI `id`, whose `plan` was rewritten by
    /// `maintain` to read the maintained aggregates in `reads`. `None` when the
    /// plan reads none.
    pub fn output(&self, id: &str, plan: &LogicalPlan, reads: &Reads) -> Option<Output> {
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
        let fingerprint = format!("kpi output {id}\n{}", plan.display_indent());
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
            })
            .and_then(|m| {
                let periods = periods(plan, reads)?;
                let rows = read_kept(&self.store, &key, &m)?;
                Some((rows, periods))
            });
        Some(Output {
            store: self.store.clone(),
            key,
            fingerprint,
            inputs,
            changed,
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

    /// Whether kept rows stand in for some periods.
    pub fn reused(&self) -> Option<usize> {
        self.kept.as_ref().map(|(_, periods)| periods.len())
    }

    /// The KPI's output: the kept rows of the periods not recomputed, then the
    /// `computed` ones (of `schema`); and the output staged to be kept, when it
    /// changed.
    pub fn finish(
        self,
        schema: SchemaRef,
        computed: Vec<RecordBatch>,
    ) -> Result<(Vec<RecordBatch>, Vec<Staged>), DataFusionError> {
        let mut rows = Vec::new();
        if let Some((kept, periods)) = &self.kept {
            let kept = conform(kept, &schema)?;
            let period = kept
                .column_by_name("period")
                .ok_or_else(|| DataFusionError::Internal("kept output without `period`".into()))?
                .as_primitive::<Date32Type>();
            let keep: BooleanArray = (0..period.len())
                .map(|i| Some(period.is_null(i) || !periods.contains(&period.value(i))))
                .collect();
            rows.push(filter_record_batch(&kept, &keep)?);
        }
        rows.extend(computed);
        let unchanged = !self.changed && self.kept.as_ref().is_some_and(|(_, p)| p.is_empty());
        if unchanged {
            return Ok((rows, Vec::new()));
        }
        let all = concat_batches(&schema, &rows)?;
        let (name, file) = self.store.stage(&self.key, "output", &all)?;
        let manifest = Manifest {
            plan: self.fingerprint,
            sources: BTreeMap::new(),
            groups: BTreeMap::from([("all".to_string(), name)]),
            partitioned: false,
            pairs: Vec::new(),
            counts: Vec::new(),
            inputs: self.inputs,
        };
        let manifest = self.store.stage_manifest(&self.key, &manifest)?;
        Ok((vec![all], vec![file, manifest]))
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
fn periods(plan: &LogicalPlan, reads: &Reads) -> Option<BTreeSet<i32>> {
    match affected(plan, reads) {
        Affect::Unchanged => Some(BTreeSet::new()),
        Affect::All => None,
        Affect::Within(conditions) => {
            let mut days = BTreeSet::new();
            for (column, some) in conditions {
                if column.name != "period" {
                    return None;
                }
                days.extend(some);
            }
            Some(days)
        }
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
            Some(read) => match &read.change {
                Change::None => Affect::Unchanged,
                Change::All => Affect::All,
                Change::Days { column, days } => {
                    let column = Column::new(Some(scan.table_name.clone()), format!("g{column}"));
                    Affect::Within(vec![(column, days.clone())])
                }
            },
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
            Affect::Unchanged => Affect::Unchanged,
            _ if a.group_expr.is_empty() => Affect::All,
            input => map_columns(input, plan, |c| {
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
            for (side, keeps) in [(left, keeps_left), (right, keeps_right)] {
                match side {
                    Affect::Unchanged => {}
                    Affect::Within(c) if keeps => within.extend(c),
                    _ => return Affect::All,
                }
            }
            // Semi and anti joins keep one side's columns.
            let schema = plan.schema();
            if within.iter().any(|(c, _)| !schema.has_column(c)) {
                return Affect::All;
            }
            if within.is_empty() {
                Affect::Unchanged
            } else {
                Affect::Within(within)
            }
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
            if within.is_empty() {
                Affect::Unchanged
            } else {
                Affect::Within(within)
            }
        }
        _ => Affect::All,
    }
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
    let mut within = Vec::new();
    for (column, days) in conditions {
        let Some(i) = position(&column) else {
            return Affect::All;
        };
        within.push((Column::from(schema.qualified_field(i)), days));
    }
    Affect::Within(within)
}

/// The conditions of `affect` on `input`, moved to the same positions of `plan`.
fn positional(affect: Affect, input: &LogicalPlan, plan: &LogicalPlan) -> Affect {
    let schema = input.schema();
    map_columns(affect, plan, |c| schema.maybe_index_of_column(c))
}
