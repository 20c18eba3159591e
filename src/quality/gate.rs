//! The quality gate: a failed `error` check blocks the KPIs that read its
//! source, directly or through views. `warn` checks are reported, never blocking.

use std::collections::{HashMap, HashSet};

use datafusion::prelude::SessionContext;

use super::{Outcome, QualityReport};
use crate::config::{CheckKind, Kpi, OnFailure, Pipeline};
use crate::kpi::{KpiSeries, tables_read};
use crate::score::Status;

/// The quality of the data behind a KPI value (`kpi_values.quality_status`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum QualityStatus {
    /// No check ran on any source it reads.
    #[default]
    NotChecked,
    Passed,
    /// A `warn` check failed on a source it reads.
    Warned,
    /// An `error` check failed on a source it reads: the value is not reported.
    Failed,
}

impl QualityStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            QualityStatus::NotChecked => "not_checked",
            QualityStatus::Passed => "passed",
            QualityStatus::Warned => "warned",
            QualityStatus::Failed => "failed",
        }
    }
}

/// Each source's quality, worst check first.
#[derive(Debug, Default)]
pub struct Gate {
    by_source: HashMap<String, QualityStatus>,
}

impl Gate {
    pub fn new(ctx: &SessionContext, pipeline: &Pipeline, report: &QualityReport) -> Gate {
        let mut gate = Gate::default();
        for r in report.results.iter().filter(|r| r.segment.is_none()) {
            let status = match r.outcome {
                Outcome::Failed => QualityStatus::Failed,
                Outcome::Warned => QualityStatus::Warned,
                Outcome::Passed | Outcome::Skipped => QualityStatus::Passed,
            };
            // A reconciliation judges every source its two queries read.
            let sources: Vec<String> = match pipeline.checks.iter().find(|c| c.id == r.check) {
                Some(c) if r.check_type == "reconcile" => match &c.kind {
                    CheckKind::Reconcile { left, right, .. } => {
                        sources_read(ctx, pipeline, &format!("{left}\n;\n{right}"))
                    }
                    _ => Vec::new(),
                },
                _ => r.source.iter().cloned().collect(),
            };
            for s in sources {
                let entry = gate.by_source.entry(s).or_default();
                *entry = (*entry).max(status);
            }
        }
        gate
    }

    /// The quality of the sources a KPI reads (through views too).
    pub fn kpi_status(
        &self,
        ctx: &SessionContext,
        pipeline: &Pipeline,
        kpi: &Kpi,
    ) -> QualityStatus {
        sources_read(ctx, pipeline, &kpi.sql)
            .iter()
            .filter_map(|s| self.by_source.get(s))
            .copied()
            .max()
            .unwrap_or_default()
    }

    /// Sources with a failed `error` check.
    pub fn failed_sources(&self) -> Vec<&str> {
        let mut failed: Vec<&str> = self
            .by_source
            .iter()
            .filter(|(_, s)| **s == QualityStatus::Failed)
            .map(|(n, _)| n.as_str())
            .collect();
        failed.sort_unstable();
        failed
    }
}

/// Sets each KPI's quality from the sources it reads. A KPI blocked by a failed
/// check keeps its values without score (`status = blocked`), or loses them
/// (`quality: {on_failure: withhold}`). Call after scoring.
pub fn apply(ctx: &SessionContext, pipeline: &Pipeline, gate: &Gate, series: &mut [KpiSeries]) {
    for s in series.iter_mut() {
        s.quality = gate.kpi_status(ctx, pipeline, &s.kpi);
        if s.quality != QualityStatus::Failed {
            continue;
        }
        match pipeline.quality.on_failure {
            OnFailure::Withhold => s.values.clear(),
            OnFailure::Flag => {
                for v in &mut s.values {
                    v.score = None;
                    v.status = Some(Status::Blocked);
                }
            }
        }
    }
}

/// The sources SQL reads, following views to the sources under them.
fn sources_read(ctx: &SessionContext, pipeline: &Pipeline, sql: &str) -> Vec<String> {
    let mut found = HashSet::new();
    let mut seen = HashSet::new();
    let mut todo: Vec<String> = sql
        .split("\n;\n")
        .flat_map(|s| tables_read(ctx, s).unwrap_or_default())
        .collect();
    while let Some(table) = todo.pop() {
        if !seen.insert(table.clone()) {
            continue;
        }
        if let Some(s) = pipeline
            .sources
            .iter()
            .find(|s| s.name.eq_ignore_ascii_case(&table))
        {
            found.insert(s.name.clone());
        } else if let Some(v) = pipeline
            .views
            .iter()
            .find(|v| v.name.eq_ignore_ascii_case(&table))
        {
            todo.extend(tables_read(ctx, &v.sql).unwrap_or_default());
        }
    }
    let mut found: Vec<String> = found.into_iter().collect();
    found.sort();
    found
}
