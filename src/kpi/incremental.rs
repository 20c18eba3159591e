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
//! - merges them into the kept state, and computes the aggregate's output from it
//!   (a state kept in one file per period is read lazily: a query over some
//!   periods reads only their files);
//! - runs the rest of the KPI's plan on that output, for the periods whose rows
//!   may have changed only, when the KPI's output is kept too (`outputs.rs`).
//!
//! The new state is written when the run publishes, and only then becomes the
//! one the next run starts from (`Pending::commit`). Aggregates of another shape
//! are computed in full every run, as without `incremental:`.

mod aggregate;
mod counts;
mod lazy;
mod merge;
mod outputs;
mod rows;
mod stored;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BooleanArray, UInt32Array};
use datafusion::arrow::compute::kernels::boolean::not;
use datafusion::arrow::compute::{cast, concat_batches, filter_record_batch, take};
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchReader};
use datafusion::arrow::row::{Row, RowConverter, SortField};
use datafusion::catalog::TableProvider;
use datafusion::common::hash_utils::{RandomState as HashState, create_hashes};
use datafusion::common::runtime::SpawnedTask;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, JoinType, NullEquality};
use datafusion::datasource::physical_plan::parquet::{
    transform_binary_to_string, transform_schema_to_view,
};
use datafusion::datasource::{MemTable, provider_as_source};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, TableScanBuilder};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use futures::future::try_join_all;
use tracing::Instrument;

use super::share;
use crate::config::{FileFormat, Pipeline, SourceKind};
use crate::publish::Staged;
use aggregate::Maintained;
pub use counts::{DeltaInput, Files, row};
use merge::typed_as;
pub use outputs::Output;
pub use stored::Pending;
use stored::{Manifest, Stamp, Store};

/// Per source, the files a kept state covers and the files new since.
type Split = BTreeMap<String, (Vec<Stamp>, Vec<Stamp>)>;

/// The scans standing in for maintained aggregates are named this and the
/// state's key.
pub const MAINTAINED: &str = "__kpiforge_maintained_";

/// Plans rewritten to read maintained aggregates (`Incremental::maintain`).
#[derive(Debug)]
pub struct Rewritten {
    pub plans: Vec<LogicalPlan>,
    /// Their new states, to commit when the run publishes.
    pub pending: Pending,
    /// Per maintained scan (by table name), how its rows changed since the last run.
    pub reads: Reads,
}

pub type Reads = HashMap<String, Read>;

/// A maintained aggregate's result as this run reads it.
#[derive(Debug, Clone)]
pub struct Read {
    pub key: String,
    /// The version of the kept state the run started from; `None` when rebuilt.
    pub kept: Option<String>,
    /// Its version once the run commits.
    pub now: String,
    pub change: Change,
}

/// How a maintained aggregate's result differs from the one the last run read.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// The same rows.
    None,
    /// Only rows whose grouping column `g{column}` holds one of these days.
    Days { column: usize, days: BTreeSet<i32> },
    /// Only the groups in `keys` (columns `g0`, `g1`, ...) of an aggregate
    /// without a `DATE` grouping column.
    Keys { keys: RecordBatch },
    /// Any row.
    All,
}

/// Changed groups followed through a KPI's plan (`Change::Keys`) at most;
/// beyond, every period is recomputed.
const FOLLOWED_KEYS: usize = 10_000;

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
    /// The lock on the kept states, once taken: the KPIs and the checks of a
    /// run update theirs under one lock, released when the run is done.
    lock: std::sync::Mutex<Option<Arc<std::fs::File>>>,
    /// The states this run read or wrote; the others are left over from SQL
    /// since changed, and [`Incremental::sweep`] removes them.
    used: std::sync::Mutex<BTreeSet<String>>,
    /// Some state could not be brought up to date: nothing is swept.
    incomplete: std::sync::atomic::AtomicBool,
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
            lock: std::sync::Mutex::new(None),
            used: std::sync::Mutex::new(BTreeSet::new()),
            incomplete: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Records that the state `key` is in use this run.
    fn uses(&self, key: &str) {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        used.insert(key.to_string());
    }

    /// Records that some kept state was not brought up to date this run (its
    /// work was done in full), so states not used this run may still be needed.
    pub fn incomplete(&self) {
        self.incomplete
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Removes the states this run did not use: those of aggregates and checks
    /// whose SQL has changed since, which would otherwise stay on disk. Called
    /// after the run's states are committed, under its lock; does nothing if
    /// the run did not hold the lock or could not update every state.
    pub fn sweep(&self) {
        let held = self
            .lock
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some();
        if !held || self.incomplete.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        let Ok(entries) = std::fs::read_dir(self.store.dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.path().is_dir() && !used.contains(&name) {
                tracing::debug!(state = %name, "removing a kept state no longer used");
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    /// Takes the pipeline's lock on its kept states, or the one this run holds.
    fn lock(&self) -> Result<Arc<std::fs::File>, String> {
        let mut held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(lock) = held.as_ref() {
            return Ok(lock.clone());
        }
        let lock = Arc::new(self.store.lock()?);
        *held = Some(lock.clone());
        Ok(lock)
    }

    /// The files `manifest` covers and the new ones, per source; `None` when a
    /// covered file is gone or changed (the state must be rebuilt).
    fn delta(&self, manifest: &Manifest, sources: &[String]) -> Option<Split> {
        let mut delta = BTreeMap::new();
        for source in sources {
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
    }

    /// Rewrites `plans` so that every maintainable aggregate in them reads its
    /// result, brought up to date from the kept state. What it stages is
    /// returned, to be committed once the run publishes. `scope` keeps the
    /// states of one caller (the KPIs, the checks) apart from another's, which
    /// may run at the same time over the same aggregate.
    pub async fn maintain(
        &self,
        ctx: &SessionContext,
        plans: Vec<LogicalPlan>,
        scope: &str,
    ) -> Result<Rewritten, DataFusionError> {
        let maintained = self.maintain_all(ctx, plans, scope).await;
        if maintained.is_err() {
            self.incomplete();
        }
        maintained
    }

    async fn maintain_all(
        &self,
        ctx: &SessionContext,
        plans: Vec<LogicalPlan>,
        scope: &str,
    ) -> Result<Rewritten, DataFusionError> {
        // Optimised side by side, each on a task of its own (see `run`).
        let analysis = Arc::new(super::share::analysis_state(ctx));
        let plans: Vec<LogicalPlan> = try_join_all(plans.into_iter().map(|plan| {
            let analysis = analysis.clone();
            let task = async move { analysis.optimize(&plan) };
            SpawnedTask::spawn(task.instrument(tracing::Span::current())).join()
        }))
        .await
        .map_err(|e| DataFusionError::Execution(format!("a plan's analysis stopped: {e}")))?
        .into_iter()
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
            let union = share::union_of(nodes.iter().flat_map(|(_, exprs)| exprs));
            let node = LogicalPlanBuilder::from(rows)
                .aggregate(share::named("g", &groups), share::named("c", &union))?
                .build()?;
            let LogicalPlan::Aggregate(agg) = &node else {
                unreachable!("an aggregate was built")
            };
            match Maintained::analyse(agg, &node, &self.files) {
                Ok(m) => {
                    let uses = nodes
                        .into_iter()
                        .map(|(node, exprs)| {
                            let aggregates = exprs
                                .iter()
                                .map(|e| union.iter().position(|u| u == e))
                                .collect::<Option<Vec<_>>>()
                                .ok_or_else(|| {
                                    DataFusionError::Internal(
                                        "a fused aggregate lacks one of its uses' aggregates"
                                            .into(),
                                    )
                                })?;
                            Ok::<_, DataFusionError>(Use { node, aggregates })
                        })
                        .collect::<Result<_, _>>()?;
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

        for (m, _) in &mut fused {
            m.fingerprint.insert_str(0, scope);
        }
        let lock = self.lock().map_err(DataFusionError::Execution)?;
        let narrowed = narrow(ctx);
        let results =
            try_join_all(fused.iter().map(|(m, _)| self.update(ctx, &narrowed, m))).await?;
        let mut pending = Pending::locked(lock);
        let mut reads: HashMap<LogicalPlan, LogicalPlan> = HashMap::new();
        let mut read_by_name = Reads::new();
        for ((m, uses), (table, staged, read)) in fused.iter().zip(results) {
            let name = format!("{MAINTAINED}{}", read.key);
            for u in uses {
                reads.insert(u.node.clone(), u.read(&name, m.groups.len(), &table)?);
            }
            read_by_name.insert(name, read);
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
        Ok(Rewritten {
            plans,
            pending,
            reads: read_by_name,
        })
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

    /// Brings one aggregate's state up to date and returns its output as a
    /// table: a state built afresh in the run's session `ctx`, one kept
    /// updated in the `narrowed` one.
    async fn update(
        &self,
        ctx: &SessionContext,
        narrowed: &SessionContext,
        m: &Maintained,
    ) -> Result<(Arc<dyn TableProvider>, Vec<Staged>, Read), DataFusionError> {
        let started = std::time::Instant::now();
        let key = m.key();
        self.uses(&key);
        let kept = if self.full {
            None
        } else {
            self.store.manifest(&key, &m.fingerprint)
        };
        // The new files of each source, or why the kept state cannot be used.
        let delta = kept
            .as_ref()
            .and_then(|manifest| self.delta(manifest, &m.sources));
        let mode = if delta.is_some() {
            "incremental"
        } else {
            "full"
        };
        let kept = kept.filter(|_| delta.is_some());
        let kept_version = kept.as_ref().map(stored::version);
        let ctx = if kept.is_some() { narrowed } else { ctx };
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
        let mut change = if building { Change::All } else { Change::None };
        // The partitions of the state the new rows touch, brought up to date.
        let mut fresh: Option<(RecordBatch, BTreeSet<String>)> = None;
        'merge: {
            if terms.is_empty() {
                break 'merge;
            }
            let partials = terms
                .iter()
                .map(|t| m.partial_plan(t.clone()))
                .collect::<Result<Vec<_>, _>>()?;
            // Optimised: the terms' scans read only the columns they use.
            let new =
                one_batch(&run(ctx, m.merge_plan(partials, None)?, "new partial results").await?)?;
            let touched = m.partitions(&new, layout)?;
            if !building {
                change = match m.partition {
                    Some(p) => m
                        .days(&new, p)?
                        .map_or(Change::All, |days| Change::Days { column: p, days }),
                    None => Change::All,
                };
            }
            let mut parts = vec![new];
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
                parts.push(m.pair_ones(&pairs, i)?);
            }
            let kept_touched: Vec<String> = touched
                .iter()
                .filter_map(|p| groups.get(p).cloned())
                .collect();
            let merged = match self.store.paths(&key, &kept_touched) {
                // Without a period to tell, the groups that changed tell.
                Some(files) if !building && m.partition.is_none() && !m.groups.is_empty() => {
                    match merge_whole(ctx, m, parts, files).await? {
                        Some((merged, changed)) => {
                            change = changed;
                            Some(merged)
                        }
                        None => {
                            change = Change::None;
                            None
                        }
                    }
                }
                before => {
                    if let Some(files) = before {
                        parts.push(kept_batch(ctx, &files, None)?);
                    }
                    Some(m.merge(ctx, &parts, layout).await?)
                }
            };
            // Unchanged: the kept file stays, and only the manifest is new.
            let Some(merged) = merged else {
                break 'merge;
            };
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
        let untouched: Vec<(String, String)> = groups
            .iter()
            .filter(|(p, _)| {
                fresh
                    .as_ref()
                    .is_none_or(|(_, touched)| !touched.contains(*p))
            })
            .map(|(p, file)| (p.clone(), file.clone()))
            .collect();
        let kept_files = self.store.paths(
            &key,
            &untouched.iter().map(|(_, f)| f.clone()).collect::<Vec<_>>(),
        );
        let states = fresh.as_ref().map_or(0, |(merged, _)| merged.num_rows());
        let fresh = fresh.map(|(merged, _)| merged);
        let table: Arc<dyn TableProvider> = match kept_files {
            // A partitioned state's kept files are read when a query reads
            // them, those of the partitions it reads only.
            Some(files) if layout.is_some() => {
                let schema = match &fresh {
                    Some(fresh) => fresh.schema(),
                    None => kept_schema(ctx, &files[0])?,
                };
                let files = untouched.into_iter().map(|(p, _)| p).zip(files).collect();
                let fresh = fresh.map(in_memory).transpose()?;
                Arc::new(lazy::LazyState::new(
                    Arc::new(m.clone()),
                    fresh,
                    files,
                    schema,
                )?)
            }
            kept_files => {
                let kept = match kept_files {
                    Some(files) => {
                        let schema = fresh.as_ref().map(|f| f.schema());
                        Some(kept_batch(ctx, &files, schema.as_deref())?)
                    }
                    None => None,
                };
                let state = match (kept, fresh) {
                    (Some(kept), Some(fresh)) => append(&kept, &fresh)?,
                    (Some(rows), None) | (None, Some(rows)) => rows,
                    (None, None) => {
                        return Err(DataFusionError::Internal(format!(
                            "aggregate state {key} has no files"
                        )));
                    }
                };
                let output = m.finish(ctx, &state)?;
                Arc::new(MemTable::try_new(output.schema(), vec![vec![output]])?)
            }
        };

        let mut now = kept_version.clone();
        // New files covered: a new manifest, even when no group changed.
        if !terms.is_empty() {
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
                counts: Vec::new(),
                inputs: BTreeMap::new(),
            };
            now = Some(stored::version(&manifest));
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
        let read = Read {
            key,
            kept: kept_version,
            now: now.unwrap_or_default(),
            change,
        };
        Ok((table, staged, read))
    }
}

/// Brings a state kept in one file (no `DATE` grouping) up to date from the
/// groups the new partial results (the first of `parts`) touch: their kept
/// rows are read and merged with the new `parts`, and the file is rewritten,
/// as the untouched rows and the merged ones, only if some group's state
/// changed. Returns the new state and the groups that changed (`Change::All`
/// beyond [`FOLLOWED_KEYS`]), or `None` if none did. A new day seldom changes
/// a first order or a maximum: then the file is not rewritten.
async fn merge_whole(
    ctx: &SessionContext,
    m: &Maintained,
    mut parts: Vec<RecordBatch>,
    files: Vec<String>,
) -> Result<Option<(RecordBatch, Change)>, DataFusionError> {
    let names: Vec<String> = (0..m.groups.len()).map(|k| format!("g{k}")).collect();
    // Read once and split in memory: two joins with the touched groups read
    // the file twice, and cost more to plan than the split to run.
    let kept = kept_batch(ctx, &files, None)?;
    let (touched, untouched) = split_by_keys(&kept, &parts[0], &names)?;
    // Merged alone, as they are merged with the new parts below: `merge`
    // types the state columns as its last part does, here the kept rows.
    let before = m.merge(ctx, &[touched], None).await?;
    parts.push(before.clone());
    let after = m.merge(ctx, &parts, None).await?;
    let changed = changed_keys(&after, &before, &names, FOLLOWED_KEYS + 1)?;
    if changed.num_rows() == 0 {
        return Ok(None);
    }
    let state = append(&untouched, &after)?;
    let change = if changed.num_rows() > FOLLOWED_KEYS {
        Change::All
    } else {
        Change::Keys { keys: changed }
    };
    Ok(Some((state, change)))
}

/// The rows of `kept` and then those of `merged`, in `kept`'s types
/// (`merge` gives `merged` the kept rows' types, but for a string read
/// back as a view), as a union query would but without planning one.
fn append(kept: &RecordBatch, merged: &RecordBatch) -> Result<RecordBatch, DataFusionError> {
    if kept.num_columns() != merged.num_columns() {
        return Err(DataFusionError::Internal(
            "a merged state has other columns than the kept one".into(),
        ));
    }
    let fields: Vec<Field> = kept
        .schema()
        .fields()
        .iter()
        .zip(merged.schema().fields())
        .map(|(k, m)| {
            k.as_ref()
                .clone()
                .with_nullable(k.is_nullable() || m.is_nullable())
        })
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let kept = RecordBatch::try_new(schema.clone(), kept.columns().to_vec())?;
    let merged = typed_as(merged, &schema)?;
    Ok(concat_batches(&schema, [&kept, &merged])?)
}

/// The rows of `kept` whose `keys` columns hold a group of `new`, and the
/// others. Keys compare in Arrow's row format, a NULL key equal to a NULL one,
/// as the groups of a `GROUP BY` do.
fn split_by_keys(
    kept: &RecordBatch,
    new: &RecordBatch,
    keys: &[String],
) -> Result<(RecordBatch, RecordBatch), DataFusionError> {
    let columns = |batch: &RecordBatch| -> Result<Vec<_>, DataFusionError> {
        keys.iter()
            .map(|k| Ok(batch.column(batch.schema().index_of(k)?).clone()))
            .collect()
    };
    let mask: BooleanArray = found_in(&columns(kept)?, &columns(new)?)?
        .into_iter()
        .map(Some)
        .collect();
    Ok((
        filter_record_batch(kept, &mask)?,
        filter_record_batch(kept, &not(&mask)?)?,
    ))
}

/// Per row of `rows`, whether `set` holds an equal row, NULL equal to NULL;
/// `set` is cast to `rows`' types first (a string read back from Parquet as a
/// view, a count typed otherwise). A whole kept state, 100,000 rows at SF1, is
/// probed here on every run for a few hundred new groups: its rows are hashed
/// column by column (DataFusion's vectorised hashing), and only those whose
/// hash the set holds are compared, in Arrow's row format.
fn found_in(rows: &[ArrayRef], set: &[ArrayRef]) -> Result<Vec<bool>, DataFusionError> {
    let Some(first) = rows.first() else {
        return Err(DataFusionError::Internal(
            "rows compared on no columns".into(),
        ));
    };
    let set = set
        .iter()
        .zip(rows)
        .map(|(c, r)| cast(c, r.data_type()))
        .collect::<Result<Vec<_>, _>>()?;
    let hashes = |columns: &[ArrayRef]| -> Result<Vec<u64>, DataFusionError> {
        let mut hashes = vec![0; columns[0].len()];
        create_hashes(columns, &HashState::with_seed(0), &mut hashes)?;
        Ok(hashes)
    };
    let hashed: datafusion::common::HashSet<u64> = hashes(&set)?.into_iter().collect();
    let candidates: Vec<u32> = hashes(rows)?
        .iter()
        .enumerate()
        .filter(|(_, h)| hashed.contains(*h))
        .map(|(i, _)| i as u32)
        .collect();
    let mut found = vec![false; first.len()];
    if candidates.is_empty() {
        return Ok(found);
    }
    let fields = rows
        .iter()
        .map(|c| SortField::new(c.data_type().clone()))
        .collect();
    let converter = RowConverter::new(fields)?;
    let set = converter.convert_columns(&set)?;
    let set: datafusion::common::HashSet<Row> = set.iter().collect();
    let indices = UInt32Array::from(candidates);
    let taken = rows
        .iter()
        .map(|c| take(c, &indices, None))
        .collect::<Result<Vec<_>, _>>()?;
    let taken = converter.convert_columns(&taken)?;
    for (row, i) in taken.iter().zip(indices.values()) {
        found[*i as usize] = set.contains(&row);
    }
    Ok(found)
}

/// The `keys` columns of the rows of `after` that are not rows of `before`,
/// at most `limit` of them. Compared in Arrow's row format, in memory: both
/// hold only the touched groups, and a query here cost more to plan than to
/// run. Values equal but for their bits (`-0.0` and `0.0`) count as changed,
/// which only widens what is recomputed.
fn changed_keys(
    after: &RecordBatch,
    before: &RecordBatch,
    keys: &[String],
    limit: usize,
) -> Result<RecordBatch, DataFusionError> {
    // Typed alike by `merge`; `found_in` casts should a type still differ.
    let kept = found_in(after.columns(), before.columns())?;
    let changed: Vec<u32> = (0..after.num_rows())
        .filter(|&i| !kept[i])
        .take(limit)
        .map(|i| i as u32)
        .collect();
    let rows = UInt32Array::from(changed);
    let columns = keys
        .iter()
        .map(|k| after.schema().index_of(k))
        .collect::<Result<Vec<_>, _>>()?;
    let keys = after.project(&columns)?;
    let taken = keys
        .columns()
        .iter()
        .map(|c| take(c, &rows, None))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(keys.schema(), taken)?)
}

/// `new` without the pairs already kept in `files`, of which only those
/// `within` (the touched partitions) are read.
async fn anti_join(
    ctx: &SessionContext,
    new: LogicalPlan,
    files: Vec<String>,
    within: Option<Expr>,
) -> Result<LogicalPlan, DataFusionError> {
    let mut kept = read_parquet(ctx, files, None).await?;
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
        name: &str,
        groups: usize,
        table: &Arc<dyn TableProvider>,
    ) -> Result<LogicalPlan, DataFusionError> {
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
        // A scan, not the lazily read state's plan inlined (as
        // `LogicalPlanBuilder::scan` would): kept KPI outputs find it by name.
        let scan = TableScanBuilder::new(name, provider_as_source(table.clone())).build()?;
        LogicalPlanBuilder::from(LogicalPlan::TableScan(scan))
            .project(columns)?
            .build()
    }
}

/// The state in `files`; with its `schema`, when known, no file is opened yet.
async fn read_parquet(
    ctx: &SessionContext,
    files: Vec<String>,
    schema: Option<&Schema>,
) -> Result<LogicalPlan, DataFusionError> {
    let mut options = ParquetReadOptions::default();
    if let Some(schema) = schema {
        options = options.schema(schema);
    }
    Ok(ctx
        .read_parquet(files, options)
        .await?
        .into_unoptimized_plan())
}

/// The rows of a kept state's `files`, read whole with the Parquet reader and
/// typed as `SessionContext::read_parquet` types them (strings as views, by
/// the session's settings), or as `schema`. A state's files are small and
/// read whole: listed, their footers read for a schema, and a scan planned
/// and run, they cost more than the rows (BENCHMARKS.md).
fn kept_batch(
    ctx: &SessionContext,
    files: &[String],
    schema: Option<&Schema>,
) -> Result<RecordBatch, DataFusionError> {
    let mut batches = Vec::new();
    let mut read_as: Option<SchemaRef> = schema.map(nullable);
    for path in files {
        // In one batch per row group, not the reader's default 1,024 rows:
        // fewer, larger batches to cast and concatenate.
        let file = kept_file(path)?;
        let rows = file.metadata().row_groups().iter().map(|g| g.num_rows());
        let rows = rows.max().unwrap_or(0).max(1) as usize;
        let reader = file.with_batch_size(rows).build()?;
        let target = read_as
            .get_or_insert_with(|| kept_types(ctx, &reader.schema()))
            .clone();
        for batch in reader {
            batches.push(typed_as(&batch?, &target)?);
        }
    }
    let Some(schema) = read_as else {
        return Err(DataFusionError::Internal(
            "a kept state read from no files".into(),
        ));
    };
    Ok(concat_batches(&schema, &batches)?)
}

/// The schema [`kept_batch`] reads a kept state's `file` as, from its footer alone.
fn kept_schema(ctx: &SessionContext, file: &str) -> Result<SchemaRef, DataFusionError> {
    Ok(kept_types(ctx, kept_file(file)?.schema()))
}

fn kept_file(path: &str) -> Result<ParquetRecordBatchReaderBuilder<File>, DataFusionError> {
    let file = File::open(path)
        .map_err(|e| DataFusionError::Execution(format!("cannot read {path}: {e}")))?;
    Ok(ParquetRecordBatchReaderBuilder::try_new(file)?)
}

/// A kept file's `schema` as `SessionContext::read_parquet` types it, by the
/// session's settings, with every column nullable.
fn kept_types(ctx: &SessionContext, schema: &Schema) -> SchemaRef {
    let state = ctx.state_ref();
    let state = state.read();
    let options = &state.config_options().execution.parquet;
    let mut schema = schema.clone();
    if options.binary_as_string {
        schema = transform_binary_to_string(&schema);
    }
    if options.schema_force_view_types {
        schema = transform_schema_to_view(&schema);
    }
    nullable(&schema)
}

/// `schema` with every column nullable: a kept file's rows may hold NULLs
/// where the freshly merged rows' schema says there are none.
fn nullable(schema: &Schema) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect();
    Arc::new(Schema::new(fields))
}

/// A plan that scans `batch`, as `SessionContext::read_batch` builds one but
/// without its copy of the whole session, which costs more than the scan.
fn in_memory(batch: RecordBatch) -> Result<LogicalPlan, DataFusionError> {
    let table = MemTable::try_new(batch.schema(), vec![vec![batch]])?;
    LogicalPlanBuilder::scan("rows", provider_as_source(Arc::new(table)), None)?.build()
}

/// The session that brings a kept state up to date: at most one partition
/// per core, not the run's four. Its queries read the new rows and the kept
/// state, small beside the sources, and on 2 cores the finer split cost more
/// to plan and run than it saved (BENCHMARKS.md). A state built from all the
/// files is built in the run's own session. KPIs that recompute some periods
/// run in it too. Nor does it look for common subexpressions: on these small
/// inputs computing one twice costs nothing, while the search cost about a
/// third of the logical optimiser's work in an incremental run (BENCHMARKS.md).
pub fn narrow(ctx: &SessionContext) -> SessionContext {
    let mut state = ctx.state();
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let execution = &mut state.config_mut().options_mut().execution;
    execution.target_partitions = execution.target_partitions.min(cores);
    let narrowed = SessionContext::new_with_state(state);
    narrowed.remove_optimizer_rule("common_sub_expression_eliminate");
    narrowed
}

/// Plans and runs `plan` on a task of its own. The states are brought up to
/// date side by side, from one task; their queries are small, so planning is
/// much of their time, and on its own task it runs on any core, not only on
/// the one polling the caller.
async fn run(
    ctx: &SessionContext,
    plan: LogicalPlan,
    what: &str,
) -> Result<Vec<RecordBatch>, DataFusionError> {
    let (ctx, what) = (ctx.clone(), what.to_string());
    spawned(async move {
        let frame = ctx.execute_logical_plan(plan).await?;
        let schema = Arc::new(frame.schema().as_arrow().clone());
        let batches = crate::session::collect(frame, &what).await?;
        Ok((batches, schema))
    })
    .await
}

/// Runs a query on a task of its own, aborted when dropped, as the caller's
/// future would be (a failed run, a cancelled one). An empty result is one
/// empty batch.
async fn spawned(
    query: impl Future<Output = Result<(Vec<RecordBatch>, SchemaRef), DataFusionError>> + Send + 'static,
) -> Result<Vec<RecordBatch>, DataFusionError> {
    let (mut batches, schema) = SpawnedTask::spawn(query.instrument(tracing::Span::current()))
        .join_unwind()
        .await
        .map_err(|e| DataFusionError::Execution(format!("a query stopped: {e}")))??;
    if batches.is_empty() {
        batches.push(RecordBatch::new_empty(schema));
    }
    Ok(batches)
}

fn one_batch(batches: &[RecordBatch]) -> Result<RecordBatch, DataFusionError> {
    Ok(concat_batches(&batches[0].schema(), batches)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, Float64Array, Int32Array, Int64Array};

    fn state(keys: Vec<Option<i64>>, values: Vec<Option<f64>>) -> RecordBatch {
        RecordBatch::try_from_iter([
            ("g0", Arc::new(Int64Array::from(keys)) as Arc<dyn Array>),
            ("m0", Arc::new(Float64Array::from(values)) as Arc<dyn Array>),
        ])
        .unwrap()
    }

    fn keys(batch: &RecordBatch) -> Vec<Option<i64>> {
        let column = batch.column(0).as_any().downcast_ref::<Int64Array>();
        column.unwrap().iter().collect()
    }

    #[test]
    fn changed_keys_are_those_of_new_or_different_rows() {
        let before = state(
            vec![Some(1), Some(2), None],
            vec![Some(1.0), None, Some(3.0)],
        );
        // 1 as it was, 2 from NULL to a value, the NULL key as it was, 4 new.
        let after = state(
            vec![Some(1), Some(2), None, Some(4)],
            vec![Some(1.0), Some(2.0), Some(3.0), Some(4.0)],
        );
        let g0 = ["g0".to_string()];
        let changed = changed_keys(&after, &before, &g0, 10).unwrap();
        assert_eq!(changed.schema().field(0).name(), "g0");
        assert_eq!(keys(&changed), [Some(2), Some(4)]);
        assert_eq!(
            keys(&changed_keys(&after, &before, &g0, 1).unwrap()),
            [Some(2)]
        );
        assert_eq!(
            changed_keys(&before, &before, &g0, 10).unwrap().num_rows(),
            0
        );
    }

    #[test]
    fn kept_rows_split_by_the_groups_the_new_rows_touch() {
        use datafusion::arrow::array::{StringArray, StringViewArray};
        // Kept: keys read back from Parquet as views; a NULL key is a group too.
        let kept = RecordBatch::try_from_iter([
            (
                "g0",
                Arc::new(StringViewArray::from(vec![
                    Some("a"),
                    Some("b"),
                    None,
                    Some("c"),
                ])) as Arc<dyn Array>,
            ),
            (
                "m0",
                Arc::new(Int64Array::from(vec![1, 2, 3, 4])) as Arc<dyn Array>,
            ),
        ])
        .unwrap();
        let new = RecordBatch::try_from_iter([
            (
                "g0",
                Arc::new(StringArray::from(vec![None, Some("c"), Some("d")])) as Arc<dyn Array>,
            ),
            (
                "m0",
                Arc::new(Int64Array::from(vec![9, 9, 9])) as Arc<dyn Array>,
            ),
        ])
        .unwrap();
        let (touched, untouched) = split_by_keys(&kept, &new, &["g0".to_string()]).unwrap();
        let values = |b: &RecordBatch| -> Vec<i64> {
            let column = b.column(1).as_any().downcast_ref::<Int64Array>();
            column.unwrap().values().to_vec()
        };
        assert_eq!(values(&touched), [3, 4]);
        assert_eq!(values(&untouched), [1, 2]);
    }

    #[tokio::test]
    async fn kept_files_are_read_as_read_parquet_reads_them() {
        use datafusion::arrow::array::StringArray;
        use datafusion::arrow::datatypes::DataType;
        let dir = tempfile::tempdir().unwrap();
        let written = RecordBatch::try_from_iter([
            (
                "g0",
                Arc::new(StringArray::from(vec![Some("a"), None, Some("c")])) as Arc<dyn Array>,
            ),
            (
                "m0",
                Arc::new(Int64Array::from(vec![Some(1), Some(2), None])) as Arc<dyn Array>,
            ),
        ])
        .unwrap();
        for name in ["groups-1.parquet", "groups-2.parquet"] {
            crate::publish::stage_parquet_in_place(dir.path(), name, &written, None)
                .unwrap()
                .commit()
                .unwrap();
        }
        let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
        let ctx = crate::session::session();
        let types = |b: &RecordBatch| -> Vec<DataType> {
            b.schema()
                .fields()
                .iter()
                .map(|f| f.data_type().clone())
                .collect()
        };
        let files = vec![path("groups-1.parquet")];
        let read = ctx
            .read_parquet(files.clone(), ParquetReadOptions::default())
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let read = one_batch(&read).unwrap();
        let kept = kept_batch(&ctx, &files, None).unwrap();
        assert_eq!(types(&kept), [DataType::Utf8View, DataType::Int64]);
        assert_eq!(types(&kept), types(&read));
        assert_eq!(kept.columns(), read.columns());
        assert_eq!(kept_schema(&ctx, &files[0]).unwrap(), kept.schema());
        // Several files, in order; typed as the rows they join when given.
        let both = [path("groups-1.parquet"), path("groups-2.parquet")];
        let kept = kept_batch(&ctx, &both, Some(written.schema().as_ref())).unwrap();
        assert_eq!(types(&kept), types(&written));
        assert_eq!(kept.slice(3, 3).columns(), written.columns());
        assert!(kept.schema().fields().iter().all(|f| f.is_nullable()));
    }

    #[test]
    fn merged_rows_are_appended_in_the_kept_types() {
        use datafusion::arrow::array::{StringArray, StringViewArray};
        use datafusion::arrow::datatypes::DataType;
        let kept_schema = Arc::new(Schema::new(vec![
            Field::new("g0", DataType::Utf8View, false),
            Field::new("m0", DataType::Int64, false),
        ]));
        let kept = RecordBatch::try_new(
            kept_schema,
            vec![
                Arc::new(StringViewArray::from(vec!["a", "b"])),
                Arc::new(Int64Array::from(vec![1, 2])),
            ],
        )
        .unwrap();
        let merged = RecordBatch::try_from_iter([
            (
                "g0",
                Arc::new(StringArray::from(vec!["c"])) as Arc<dyn Array>,
            ),
            (
                "m0",
                Arc::new(Int64Array::from(vec![None])) as Arc<dyn Array>,
            ),
        ])
        .unwrap();
        let state = append(&kept, &merged).unwrap();
        assert_eq!(state.num_rows(), 3);
        assert_eq!(state.schema().field(0).data_type(), &DataType::Utf8View);
        assert!(state.schema().field(1).is_nullable());
        assert_eq!(state.column(1).null_count(), 1);
    }

    #[test]
    fn changed_keys_compare_kept_rows_cast_to_the_merged_types() {
        let before = RecordBatch::try_from_iter([
            (
                "g0",
                Arc::new(Int64Array::from(vec![1, 2])) as Arc<dyn Array>,
            ),
            (
                "m0",
                Arc::new(Int32Array::from(vec![5, 6])) as Arc<dyn Array>,
            ),
        ])
        .unwrap();
        let after = state(vec![Some(1), Some(2)], vec![Some(5.0), Some(7.0)]);
        let changed = changed_keys(&after, &before, &["g0".to_string()], 10).unwrap();
        assert_eq!(keys(&changed), [Some(2)]);
    }

    #[test]
    fn the_state_session_splits_by_cores_and_skips_common_subexpressions() {
        let ctx = SessionContext::new_with_config(
            datafusion::prelude::SessionConfig::new().with_target_partitions(64),
        );
        let rules = |ctx: &SessionContext| -> Vec<String> {
            let state = ctx.state();
            let rules = &state.optimizer().rules;
            rules.iter().map(|r| r.name().to_string()).collect()
        };
        let cse = "common_sub_expression_eliminate";
        // The rule's name as DataFusion spells it: removing an unknown name
        // would change nothing, silently.
        assert!(rules(&ctx).iter().any(|r| r == cse));
        let narrowed = narrow(&ctx);
        assert!(!rules(&narrowed).iter().any(|r| r == cse));
        assert_eq!(rules(&narrowed).len(), rules(&ctx).len() - 1);
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let partitions = narrowed.state().config().target_partitions();
        assert_eq!(partitions, cores.min(64));
    }
}
