//! Scoring: each KPI value against its target (`method.rs`, `targets.rs`), then
//! the Balanced Scorecard rolled up from KPIs through objectives and perspectives
//! to one overall score per period (`rollup.rs`), and the scorecard's own hygiene
//! checked (`lint.rs`).

pub mod lint;
pub mod method;
mod rollup;
mod targets;

use std::path::PathBuf;

use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;

pub use lint::Lint;
pub use method::{Goals, Status};
pub use rollup::{Level, ScorecardRow, scorecard};
pub use targets::{Targets, load as load_targets};

use chrono::NaiveDate;

use crate::config::{Kpi, Pipeline};
use crate::kpi::{KpiSeries, Measure, PlannedKpi};

#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    /// A KPI's scoring settings do not fit what its query returns.
    #[error("KPI `{kpi}` ({}): {message}", file.display())]
    Definition {
        kpi: String,
        file: PathBuf,
        message: String,
    },
    /// The targets table lacks a column the KPI needs.
    #[error("KPI `{kpi}`: targets table `{table}`: {message}")]
    TargetsSchema {
        kpi: String,
        table: String,
        message: String,
    },
    #[error("KPI `{kpi}`: targets table `{table}`: {message}")]
    TargetsData {
        kpi: String,
        table: String,
        message: String,
    },
    #[error("KPI `{kpi}`: cannot read targets table `{table}`: {source}")]
    TargetsRead {
        kpi: String,
        table: String,
        #[source]
        source: DataFusionError,
    },
}

impl ScoreError {
    /// Whether the pipeline's definitions are at fault (as opposed to the data).
    pub fn is_definition_error(&self) -> bool {
        matches!(
            self,
            ScoreError::Definition { .. } | ScoreError::TargetsSchema { .. }
        )
    }
}

/// Checks what scoring needs of the planned KPIs, before anything runs: a value
/// KPI that rolls up to a coarser scorecard grain declares its aggregation, and
/// every targets table has the columns targets are read from.
pub async fn check(
    ctx: &SessionContext,
    pipeline: &Pipeline,
    planned: &[PlannedKpi],
) -> Result<(), ScoreError> {
    let grain = pipeline.scorecard.grain;
    for p in planned {
        let kpi = &p.kpi;
        let fail = |message: String| ScoreError::Definition {
            kpi: kpi.id.clone(),
            file: pipeline.file.clone(),
            message,
        };
        match (p.measure, kpi.aggregation) {
            (Measure::Ratio, Some(a)) => {
                return Err(fail(format!(
                    "`aggregation: {}` does not apply to a ratio KPI: its numerators and denominators are summed, then divided; remove it",
                    a.as_str()
                )));
            }
            (Measure::Value, None) if kpi.objective.is_some() && kpi.grain < grain => {
                return Err(fail(format!(
                    "its {} values roll up to the scorecard's {}: declare how they combine with `aggregation: sum`, `average` or `last` (or return `numerator` and `denominator`)",
                    kpi.grain.as_str(),
                    grain.as_str()
                )));
            }
            _ => {}
        }
        if let Some(table) = &kpi.targets {
            let df = ctx
                .table(table.as_str())
                .await
                .map_err(|source| ScoreError::TargetsRead {
                    kpi: kpi.id.clone(),
                    table: table.clone(),
                    source,
                })?;
            let schema = df.schema().as_arrow();
            targets::check_schema(kpi, table, schema)?;
            if kpi.scoring == crate::config::Scoring::GoalRedFlag
                && kpi.red_flag.is_none()
                && schema.field_with_name("red_flag").is_err()
            {
                return Err(ScoreError::TargetsSchema {
                    kpi: kpi.id.clone(),
                    table: table.clone(),
                    message: "goal/red-flag scoring needs a red flag: the table has no `red_flag` column and the KPI no `red_flag:`".into(),
                });
            }
        }
    }
    Ok(())
}

/// Scores every value against its goals: the KPI's constant target and red
/// flag, or its row of the targets table for the period and segment.
pub fn score_values(series: &mut [KpiSeries], targets: &Targets) {
    for s in series {
        let kpi = &s.kpi;
        for v in &mut s.values {
            let (target, red_flag) = match targets.lookup(&kpi.id, v.period_start, &v.dimensions) {
                Some((target, red_flag)) => (target, red_flag.or(kpi.red_flag)),
                None => (kpi.target, kpi.red_flag),
            };
            let goals = Goals {
                target,
                red_flag,
                threshold_scale: 1.0,
            };
            v.target = target;
            v.red_flag = red_flag;
            v.target_gap = v.value.zip(target).map(|(v, t)| v - t);
            (v.score, v.status) = score_one(&kpi.scoring, kpi.direction, v.value, goals);
        }
    }
}

/// A KPI's target and red flag for a period and segment: its row of the
/// targets table (a `red_flag:` constant filling in), or its constants.
pub fn goals_of(
    targets: &Targets,
    kpi: &Kpi,
    period: NaiveDate,
    dimensions: &[Option<String>],
) -> (Option<f64>, Option<f64>) {
    match targets.lookup(&kpi.id, period, dimensions) {
        Some((target, red_flag)) => (target, red_flag.or(kpi.red_flag)),
        None => (kpi.target, kpi.red_flag),
    }
}

/// A score and its status; a value without a score has no target.
fn score_one(
    scoring: &crate::config::Scoring,
    direction: Option<crate::config::Direction>,
    value: Option<f64>,
    goals: Goals,
) -> (Option<f64>, Option<Status>) {
    let Some(value) = value else {
        return (None, Some(Status::NoData));
    };
    match method::score(scoring, direction, value, goals) {
        Some(score) => (Some(score), Some(Status::from_score(score))),
        None => (None, Some(Status::NoTarget)),
    }
}
