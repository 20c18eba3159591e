//! KPIs: plan each KPI's SQL against the registered tables, check it against the
//! KPI contract, run the KPIs concurrently and return typed values with their
//! period comparisons.

mod compare;
pub mod contract;
pub mod incremental;
pub mod period;
mod share;
pub mod views;

use std::path::PathBuf;
use std::sync::Arc;

use chrono::NaiveDate;
use datafusion::common::ScalarValue;
use datafusion::common::runtime::SpawnedTask;
use datafusion::error::DataFusionError;
use datafusion::execution::SessionState;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use futures::future::{join_all, try_join_all};
use tracing::Instrument;

pub use contract::{KpiRow, Measure};
pub use incremental::Incremental;
pub use share::SharedPlan;

use crate::config::{Kpi, Pipeline};
use crate::quality::QualityStatus;
use crate::score::Status;

#[derive(Debug, thiserror::Error)]
pub enum KpiError {
    /// The query does not return what a KPI must.
    #[error("KPI `{kpi}` ({}): {message}", file.display())]
    Contract {
        kpi: String,
        file: PathBuf,
        message: String,
    },
    /// The SQL does not plan against the tables: a definition error.
    #[error("KPI `{kpi}` ({}): {source}", file.display())]
    Plan {
        kpi: String,
        file: PathBuf,
        #[source]
        source: DataFusionError,
    },
    /// The SQL fails while running.
    #[error("KPI `{kpi}` ({}): {source}", file.display())]
    Sql {
        kpi: String,
        file: PathBuf,
        #[source]
        source: DataFusionError,
    },
    #[error("view `{view}` ({}): {source}", file.display())]
    View {
        view: String,
        file: PathBuf,
        #[source]
        source: DataFusionError,
    },
    /// A bug in kpiforge, not in the pipeline.
    #[error("internal error: {0}; please report it")]
    Internal(String),
    #[error("views read each other in a cycle: {views}")]
    ViewCycle { views: String },
    /// Several KPIs failed to plan: each is listed.
    #[error("{} KPIs cannot be planned:\n  {}", .0.len(), .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n  "))]
    Many(Vec<KpiError>),
}

impl KpiError {
    /// Whether the pipeline's definitions are at fault (as opposed to the data or the run).
    pub fn is_definition_error(&self) -> bool {
        match self {
            KpiError::Contract { .. } | KpiError::Plan { .. } | KpiError::ViewCycle { .. } => true,
            KpiError::Many(all) => all.iter().all(KpiError::is_definition_error),
            _ => false,
        }
    }
}

/// A KPI whose SQL has been planned and checked.
#[derive(Debug, Clone)]
pub struct PlannedKpi {
    pub kpi: Kpi,
    pub measure: Measure,
    plan: LogicalPlan,
}

impl PlannedKpi {
    /// The KPI's query, as planned (not yet optimised).
    pub fn plan(&self) -> &LogicalPlan {
        &self.plan
    }
}

/// The computed rows of one KPI, with comparisons, ready to score and publish.
#[derive(Debug, Clone)]
pub struct KpiSeries {
    pub kpi: Kpi,
    pub measure: Measure,
    pub values: Vec<KpiValue>,
    /// The quality of the sources it reads, set by the quality gate.
    pub quality: QualityStatus,
}

/// The KPIs' results, and the sub-plans they shared.
#[derive(Debug)]
pub struct Computed {
    pub series: Vec<KpiSeries>,
    pub shared: Vec<SharedPlan>,
    /// New aggregate states (`incremental: true`), to commit once the run publishes.
    pub kept: incremental::Pending,
}

/// One KPI value for one period and segment.
#[derive(Debug, Clone, PartialEq)]
pub struct KpiValue {
    pub period_start: NaiveDate,
    pub period_end: NaiveDate,
    /// `dim=value` pairs in declared order, `, `-separated; `None` without dimensions.
    pub segment: Option<String>,
    /// The dimension values in declared order (what `segment` spells out).
    pub dimensions: Vec<Option<String>>,
    pub value: Option<f64>,
    pub numerator: Option<f64>,
    pub denominator: Option<f64>,
    pub previous_value: Option<f64>,
    pub change_abs: Option<f64>,
    pub change_pct: Option<f64>,
    pub last_year_value: Option<f64>,
    /// Filled by the score stage: the goals of this period and segment, the
    /// value's distance from the target, and its score and status.
    pub target: Option<f64>,
    pub red_flag: Option<f64>,
    pub target_gap: Option<f64>,
    pub score: Option<f64>,
    pub status: Option<Status>,
}

impl KpiValue {
    /// A period with nothing in it yet.
    pub fn empty(period_start: NaiveDate, period_end: NaiveDate) -> KpiValue {
        KpiValue {
            period_start,
            period_end,
            segment: None,
            dimensions: Vec::new(),
            value: None,
            numerator: None,
            denominator: None,
            previous_value: None,
            change_abs: None,
            change_pct: None,
            last_year_value: None,
            target: None,
            red_flag: None,
            target_gap: None,
            score: None,
            status: None,
        }
    }
}

/// Plans every KPI of `pipeline` against the tables registered in `ctx` and checks
/// each against the contract, without running anything. `$as_of` in KPI SQL is the run date.
pub async fn plan_all(
    ctx: &SessionContext,
    pipeline: &Pipeline,
    as_of: NaiveDate,
) -> Result<Vec<PlannedKpi>, KpiError> {
    // Side by side, each on a task of its own: planning SQL is CPU work, and it
    // comes before anything else of the run can start. One snapshot of the
    // session for all of them: each `ctx.state()` copies its settings and
    // function registries.
    let state = Arc::new(ctx.state());
    let tasks = pipeline.kpis.iter().map(|kpi| {
        let (state, kpi) = (state.clone(), kpi.clone());
        let task = async move { plan(&state, &kpi, as_of).await };
        SpawnedTask::spawn(task.instrument(tracing::Span::current())).join_unwind()
    });
    let mut planned = Vec::new();
    let mut errors = Vec::new();
    for (kpi, result) in pipeline.kpis.iter().zip(join_all(tasks).await) {
        match result {
            Ok(Ok(p)) => planned.push(p),
            Ok(Err(e)) => errors.push(e),
            // Cancelled: the runtime is shutting down.
            Err(_) => errors.push(KpiError::Plan {
                kpi: kpi.id.clone(),
                file: kpi.sql_file.clone(),
                source: DataFusionError::Execution("planning was cancelled".into()),
            }),
        }
    }
    match errors.len() {
        0 => Ok(planned),
        1 => Err(errors.remove(0)),
        _ => Err(KpiError::Many(errors)),
    }
}

async fn plan(state: &SessionState, kpi: &Kpi, as_of: NaiveDate) -> Result<PlannedKpi, KpiError> {
    let sql_error = |source| KpiError::Plan {
        kpi: kpi.id.clone(),
        file: kpi.sql_file.clone(),
        source,
    };
    let plan = state
        .create_logical_plan(&kpi.sql)
        .await
        .map_err(sql_error)?;
    let plan = plan
        .with_param_values(vec![(
            "as_of",
            ScalarValue::Date32(Some(epoch_days(as_of))),
        )])
        .map_err(sql_error)?;
    tracing::debug!(kpi = %kpi.id, plan = %plan.display_indent(), "KPI planned");
    let measure =
        contract::check(kpi, plan.schema().as_arrow()).map_err(|message| KpiError::Contract {
            kpi: kpi.id.clone(),
            file: kpi.sql_file.clone(),
            message,
        })?;
    Ok(PlannedKpi {
        kpi: kpi.clone(),
        measure,
        plan,
    })
}

/// Days since 1970-01-01, Arrow's `Date32`.
pub fn epoch_days(date: NaiveDate) -> i32 {
    (date - NaiveDate::default()).num_days() as i32
}

/// Runs the planned KPIs concurrently and returns their values, periods after
/// `as_of` left out.
pub async fn compute(
    ctx: &SessionContext,
    planned: Vec<PlannedKpi>,
    as_of: NaiveDate,
    incremental: Option<&Incremental>,
) -> Result<Computed, KpiError> {
    // The plans as written, for a KPI whose kept states fail it (a kept file
    // cut short, read only when the KPI runs): computed in full instead.
    let originals: Vec<LogicalPlan> = match incremental {
        Some(_) => planned.iter().map(|p| p.plan.clone()).collect(),
        None => Vec::new(),
    };
    let (planned, mut kept, outputs) = match incremental {
        Some(inc) => maintain(ctx, inc, planned).await,
        None => (planned, incremental::Pending::default(), Vec::new()),
    };
    let (planned, shared) = share_work(ctx, planned).await;
    let mut outputs = outputs.into_iter();
    let mut originals = originals.into_iter();
    // A KPI recomputing some periods over kept states reads little: it runs
    // split as the states are brought up to date, not as a full run.
    let narrowed = incremental.map(|_| incremental::narrow(ctx));
    let tasks = planned.into_iter().map(|p| {
        let output = outputs.next().flatten();
        let recomputed = output.as_ref().and_then(incremental::Output::recomputed_periods);
        let ctx = match (&narrowed, recomputed) {
            (Some(narrowed), Some(_)) => narrowed.clone(),
            _ => ctx.clone(),
        };
        let original = originals.next();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let sql_error = |source| KpiError::Sql { kpi: p.kpi.id.clone(), file: p.kpi.sql_file.clone(), source };
            let run = |plan| async {
                let frame = ctx.execute_logical_plan(plan).await?;
                crate::session::collect(frame, &p.kpi.id).await
            };
            let mut fell_back = false;
            let mut staged = Vec::new();
            let batches = match (run(p.plan).await, original) {
                (Ok(batches), _) => match output {
                    Some(output) => {
                        let finished;
                        (finished, staged) = output.finish(batches).map_err(sql_error)?;
                        finished
                    }
                    None => batches,
                },
                (Err(e), Some(original)) => {
                    tracing::warn!(kpi = %p.kpi.id, error = %e, "a KPI over kept aggregates failed; computing it in full (`kpiforge run --full` rebuilds the kept states)");
                    fell_back = true;
                    run(original).await.map_err(sql_error)?
                }
                (Err(e), None) => return Err(sql_error(e)),
            };
            let rows = contract::rows(&p.kpi, p.measure, &batches).map_err(sql_error)?;
            let values = series(&p.kpi, rows, as_of)?;
            tracing::info!(kpi = %p.kpi.id, rows = values.len(), periods_recomputed = recomputed, ms = started.elapsed().as_millis() as u64, "KPI computed");
            Ok::<_, KpiError>((KpiSeries { kpi: p.kpi, measure: p.measure, values, quality: QualityStatus::default() }, staged, fell_back))
        })
    });
    let joined = try_join_all(tasks)
        .await
        .map_err(|e| KpiError::Internal(e.to_string()))?;
    let mut series = Vec::new();
    for result in joined {
        let (kpi, staged, fell_back) = result?;
        if fell_back && let Some(inc) = incremental {
            inc.incomplete();
        }
        series.push(kpi);
        kept.add(staged);
    }
    Ok(Computed {
        series,
        shared,
        kept,
    })
}

/// Rewrites the KPIs' plans to read their aggregates brought up to date from
/// the kept states (`incremental.rs`), and each to compute only the periods
/// its kept output lacks. That only saves work: if it fails, the KPIs are
/// computed in full.
async fn maintain(
    ctx: &SessionContext,
    incremental: &Incremental,
    planned: Vec<PlannedKpi>,
) -> (
    Vec<PlannedKpi>,
    incremental::Pending,
    Vec<Option<incremental::Output>>,
) {
    let plans = planned.iter().map(|p| p.plan.clone()).collect();
    let rewritten = match incremental.maintain(ctx, plans, "").await {
        Ok(rewritten) => rewritten,
        Err(e) => {
            tracing::warn!(error = %e, "could not bring the kept aggregates up to date; computing the KPIs in full");
            return (planned, incremental::Pending::default(), Vec::new());
        }
    };
    let mut outputs = Vec::new();
    let mut rewritten_kpis = Vec::new();
    for (p, plan) in planned.into_iter().zip(rewritten.plans) {
        let mut output = incremental
            .output(ctx, &p.kpi.id, &plan, &rewritten.reads)
            .await;
        let plan = match &mut output {
            Some(output) => output.plan(plan),
            None => plan,
        };
        outputs.push(output);
        rewritten_kpis.push(PlannedKpi { plan, ..p });
    }
    (rewritten_kpis, rewritten.pending, outputs)
}

/// Rewrites the KPIs' plans so that work they share is computed once
/// (`share.rs`). Sharing only saves work: if it fails, the KPIs run as planned.
async fn share_work(
    ctx: &SessionContext,
    planned: Vec<PlannedKpi>,
) -> (Vec<PlannedKpi>, Vec<SharedPlan>) {
    if planned.len() < 2 {
        return (planned, Vec::new());
    }
    let plans = planned.iter().map(|p| p.plan.clone()).collect();
    match share::share(ctx, plans).await {
        Ok((plans, shared)) => {
            let planned = planned
                .into_iter()
                .zip(plans)
                .map(|(p, plan)| PlannedKpi { plan, ..p })
                .collect();
            (planned, shared)
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not share work between KPIs; running each on its own");
            (planned, Vec::new())
        }
    }
}

/// Checks periods against the grain, drops periods after `as_of`, sorts, and adds comparisons.
fn series(kpi: &Kpi, rows: Vec<KpiRow>, as_of: NaiveDate) -> Result<Vec<KpiValue>, KpiError> {
    let contract_error = |message| KpiError::Contract {
        kpi: kpi.id.clone(),
        file: kpi.sql_file.clone(),
        message,
    };
    let mut values = Vec::with_capacity(rows.len());
    for row in rows {
        if period::start_of(kpi.grain, row.period) != row.period {
            return Err(contract_error(format!(
                "period {} is not the start of a {} (grain: {}); truncate it: `CAST(date_trunc('{}', d) AS DATE) AS period`",
                row.period,
                kpi.grain.as_str(),
                kpi.grain.as_str(),
                kpi.grain.as_str()
            )));
        }
        if row.period > as_of {
            continue;
        }
        let segment = (!kpi.dimensions.is_empty()).then(|| {
            kpi.dimensions
                .iter()
                .zip(&row.dimensions)
                .map(|(d, v)| format!("{d}={}", v.as_deref().unwrap_or("NULL")))
                .collect::<Vec<_>>()
                .join(", ")
        });
        values.push(KpiValue {
            segment,
            dimensions: row.dimensions,
            value: row.value,
            numerator: row.numerator,
            denominator: row.denominator,
            ..KpiValue::empty(row.period, period::end_of(kpi.grain, row.period))
        });
    }
    values.sort_by(|a, b| (&a.segment, a.period_start).cmp(&(&b.segment, b.period_start)));
    if let Some(pair) = values
        .windows(2)
        .find(|w| w[0].segment == w[1].segment && w[0].period_start == w[1].period_start)
    {
        return Err(contract_error(format!(
            "period {} appears twice{}; return one row per period{}",
            pair[0].period_start,
            pair[0]
                .segment
                .as_ref()
                .map(|s| format!(" for {s}"))
                .unwrap_or_default(),
            if kpi.dimensions.is_empty() {
                " (or declare the segment columns under `dimensions:`)"
            } else {
                " and segment"
            }
        )));
    }
    compare::fill(kpi.grain, &mut values);
    Ok(values)
}

/// The tables a SQL statement reads, lower-cased as DataFusion resolves them.
pub fn tables_read(ctx: &SessionContext, sql: &str) -> Result<Vec<String>, DataFusionError> {
    // Borrowed, not cloned as `ctx.state()` would: this runs for every KPI.
    let state = ctx.state_ref();
    let state = state.read();
    let dialect = state.config().options().sql_parser.dialect;
    let statement = state.sql_to_statement(sql, &dialect)?;
    Ok(state
        .resolve_table_references(&statement)?
        .into_iter()
        .map(|t| t.table().to_string())
        .collect())
}
