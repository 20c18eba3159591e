//! Scorecard lint: the Balanced Scorecard's known pitfalls, as warnings with the
//! file position to fix (`validate`, `--strict` makes them errors). A team can
//! allow a rule under `scorecard: lint: allow:`.

use std::fmt;
use std::path::PathBuf;

use chrono::NaiveDate;

use crate::config::{LintRule, Pipeline, Problem, Scoring};
use crate::kpi::{KpiSeries, period};

/// One lint warning.
#[derive(Debug, Clone)]
pub struct Lint {
    pub rule: LintRule,
    pub file: PathBuf,
    pub problem: Problem,
}

impl fmt::Display for Lint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "warning[{}]: {}",
            self.rule.as_str(),
            self.file.display()
        )?;
        if let Some(pos) = self.problem.position {
            write!(f, ":{}:{}", pos.line, pos.column)?;
        }
        write!(f, ": {}", self.problem.message)?;
        if let Some(hint) = &self.problem.hint {
            write!(f, "\n    hint: {hint}")?;
        }
        Ok(())
    }
}

/// The lint warnings of a pipeline's definitions, positioned in its file.
pub fn check_config(pipeline: &Pipeline) -> Vec<Lint> {
    let card = &pipeline.scorecard;
    let mut found: Vec<(LintRule, Problem)> = Vec::new();
    let mut warn = |rule, path: String, message: String, hint: &str| {
        found.push((rule, Problem::new(path, message).hint(hint)));
    };

    for (i, kpi) in pipeline.kpis.iter().enumerate() {
        let path = format!("kpis[{i}].id");
        let id = &kpi.id;
        if kpi.owner.is_none() {
            warn(
                LintRule::KpiWithoutOwner,
                path.clone(),
                format!("KPI `{id}` has no owner"),
                "add `owner:`: a KPI nobody answers for is not managed",
            );
        }
        let has_target = kpi.target.is_some()
            || kpi.targets.is_some()
            || matches!(kpi.scoring, Scoring::Thresholds(_));
        if !has_target {
            warn(
                LintRule::KpiWithoutTarget,
                path.clone(),
                format!("KPI `{id}` has no target: it cannot be scored"),
                "add `target:` and `red_flag:`, `targets:` (a table per period) or `thresholds:`",
            );
        }
        let implied = match kpi.scoring {
            Scoring::Thresholds(_) => true,
            Scoring::GoalRedFlag => kpi.target.is_some() && kpi.red_flag.is_some(),
            Scoring::PercentOfTarget => false,
        };
        if kpi.direction.is_none() && !implied {
            warn(
                LintRule::KpiWithoutDirection,
                path.clone(),
                format!("KPI `{id}` has no direction"),
                "add `direction: higher_is_better` (or lower_is_better, target_band)",
            );
        }
        if kpi.unit.is_none() {
            warn(
                LintRule::KpiWithoutUnit,
                path.clone(),
                format!("KPI `{id}` has no unit"),
                "add `unit:` (EUR, ratio, hours, customers, ...) so a reader knows what the number is",
            );
        }
        if kpi.objective.is_none() {
            warn(
                LintRule::KpiWithoutObjective,
                path,
                format!("KPI `{id}` serves no objective: it is not in the scorecard"),
                "add `objective:` naming an objective of `scorecard: objectives:`",
            );
        }
    }

    let objective_index = |id: &str| card.objectives.iter().position(|o| o.id == id);
    let perspective_path = |id: &str| {
        card.objectives
            .iter()
            .position(|o| o.perspective == id)
            .map_or("scorecard".to_string(), |j| {
                format!("scorecard.objectives[{j}].perspective")
            })
    };
    if card.objectives.len() > card.lint.max_objectives {
        warn(
            LintRule::TooManyObjectives,
            "scorecard.objectives".into(),
            format!(
                "the strategy map has {} objectives, more than {}",
                card.objectives.len(),
                card.lint.max_objectives
            ),
            "a strategy map the leadership can hold in mind has at most about 20 objectives; merge or drop some, or raise `scorecard: lint: max_objectives:`",
        );
    }
    for p in &card.perspectives {
        let kpis: Vec<&str> = pipeline
            .kpis
            .iter()
            .filter(|k| k.perspective.as_deref() == Some(&p.id))
            .map(|k| k.id.as_str())
            .collect();
        if kpis.is_empty() {
            warn(
                LintRule::EmptyPerspective,
                perspective_path(&p.id),
                format!("perspective `{}` has no KPI", p.id),
                "a balanced scorecard measures every perspective; add an objective with a KPI, or allow `empty_perspective`",
            );
        } else if kpis.len() > card.lint.max_kpis_per_perspective {
            warn(
                LintRule::TooManyKpis,
                perspective_path(&p.id),
                format!(
                    "perspective `{}` has {} KPIs, more than {}",
                    p.id,
                    kpis.len(),
                    card.lint.max_kpis_per_perspective
                ),
                "keep the few that drive decisions, or raise `scorecard: lint: max_kpis_per_perspective:`",
            );
        }
    }
    for o in &card.objectives {
        if !pipeline
            .kpis
            .iter()
            .any(|k| k.objective.as_deref() == Some(&o.id))
        {
            let j = objective_index(&o.id).unwrap_or(0);
            warn(
                LintRule::EmptyObjective,
                format!("scorecard.objectives[{j}].id"),
                format!("objective `{}` has no KPI: nothing measures it", o.id),
                "give it a KPI (`objective: <id>` on the KPI), or remove it",
            );
        }
    }
    let perspectives: Vec<&str> = pipeline
        .kpis
        .iter()
        .filter_map(|k| k.perspective.as_deref())
        .collect();
    if !perspectives.is_empty() && perspectives.iter().all(|p| *p == "financial") {
        warn(
            LintRule::FinancialOnly,
            "kpis".into(),
            "every KPI is financial: the scorecard sees results, not what drives them".into(),
            "add KPIs for customers, internal processes and learning & growth",
        );
    }

    finish(pipeline, found)
}

/// KPIs with no value in any of their last `stale_periods` periods up to `as_of`.
pub fn check_stale(pipeline: &Pipeline, series: &[KpiSeries], as_of: NaiveDate) -> Vec<Lint> {
    let n = pipeline.scorecard.lint.stale_periods;
    let mut found = Vec::new();
    // A KPI withheld by the quality gate has its values, just not published.
    for s in series
        .iter()
        .filter(|s| s.quality != crate::quality::QualityStatus::Failed)
    {
        let kpi = &s.kpi;
        // The period in progress counts when it has a value, but is not one of
        // the `n`: a KPI that reports complete periods only is not stale.
        let latest = period::start_of(kpi.grain, as_of);
        let first = period::shift(kpi.grain, latest, -(n as i32));
        let fresh = s
            .values
            .iter()
            .any(|v| v.value.is_some() && v.period_start >= first && v.period_start <= latest);
        if !fresh {
            let i = pipeline
                .kpis
                .iter()
                .position(|k| k.id == kpi.id)
                .unwrap_or(0);
            let last = s
                .values
                .iter()
                .filter(|v| v.value.is_some())
                .map(|v| v.period_start)
                .max();
            found.push((
                LintRule::StaleKpi,
                Problem::new(
                    format!("kpis[{i}].id"),
                    format!(
                        "KPI `{}` has no value in its last {n} {}s (since {first}); {}",
                        kpi.id,
                        kpi.grain.as_str(),
                        last.map_or("it has never had one".to_string(), |d| format!(
                            "the latest is for {d}"
                        ))
                    ),
                )
                .hint("check that its sources still deliver data, or retire the KPI"),
            ));
        }
    }
    finish(pipeline, found)
}

/// Drops the allowed rules and finds each warning's place in the file.
fn finish(pipeline: &Pipeline, found: Vec<(LintRule, Problem)>) -> Vec<Lint> {
    let (rules, mut problems): (Vec<LintRule>, Vec<Problem>) = found
        .into_iter()
        .filter(|(rule, _)| !pipeline.scorecard.lint.allow.contains(rule))
        .unzip();
    crate::config::locate(&pipeline.file, &mut problems);
    rules
        .into_iter()
        .zip(problems)
        .map(|(rule, problem)| Lint {
            rule,
            file: pipeline.file.clone(),
            problem,
        })
        .collect()
}
