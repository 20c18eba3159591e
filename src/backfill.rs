//! `kpiforge backfill`: one run per period of the scorecard's grain between two
//! dates, oldest first, a few at a time, skipping periods already published.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::NaiveDate;
use tokio::task::JoinSet;

use crate::config::{CheckKind, Grain, Pipeline};
use crate::error::{Error, exit};
use crate::kpi::period;
use crate::run::{RunOptions, run};
use crate::state::Trigger;

/// The exit code of a backfill interrupted (Ctrl-C) before every period started.
pub const INTERRUPTED: i32 = 130;

/// What to backfill.
#[derive(Debug, Clone)]
pub struct BackfillOptions {
    pub from: NaiveDate,
    pub to: NaiveDate,
    /// At most this many runs at a time (at least 1).
    pub parallel: usize,
    /// Rerun periods already published.
    pub force: bool,
    /// Overrides the pipeline's `output:` folder.
    pub output: Option<PathBuf>,
}

/// How one period ended.
#[derive(Debug, Clone, PartialEq)]
pub enum PeriodOutcome {
    /// Published, every check passed.
    Done,
    /// Published, but an `error` check failed.
    ChecksFailed,
    /// The run failed: the error, as the run history records it.
    Failed(String),
    /// Already published (no `--force`): not run.
    Skipped,
    /// Not started: the backfill was interrupted first.
    NotStarted,
}

/// Every period's as-of date and outcome, oldest first.
#[derive(Debug, Clone)]
pub struct Summary {
    pub periods: Vec<(NaiveDate, PeriodOutcome)>,
}

impl Summary {
    pub fn count(&self, f: impl Fn(&PeriodOutcome) -> bool) -> usize {
        self.periods.iter().filter(|(_, o)| f(o)).count()
    }

    /// 1 when a period failed, else 130 when interrupted before every period
    /// started, else 3 when one only failed checks, else 0.
    pub fn exit_code(&self) -> i32 {
        if self.count(|o| matches!(o, PeriodOutcome::Failed(_))) > 0 {
            exit::RUN_FAILED
        } else if self.count(|o| *o == PeriodOutcome::NotStarted) > 0 {
            INTERRUPTED
        } else if self.count(|o| *o == PeriodOutcome::ChecksFailed) > 0 {
            exit::CHECKS_FAILED
        } else {
            exit::SUCCESS
        }
    }

    /// The summary as printed at the end: counts, then each failure.
    pub fn render(&self) -> String {
        let done = self.count(|o| *o == PeriodOutcome::Done);
        let checks = self.count(|o| *o == PeriodOutcome::ChecksFailed);
        let failed = self.count(|o| matches!(o, PeriodOutcome::Failed(_)));
        let skipped = self.count(|o| *o == PeriodOutcome::Skipped);
        let not_started = self.count(|o| *o == PeriodOutcome::NotStarted);
        let mut out = format!(
            "backfill: {} periods: {done} done, {checks} checks failed, {failed} failed, {skipped} skipped",
            self.periods.len()
        );
        if not_started > 0 {
            out.push_str(&format!(", {not_started} not started (interrupted)"));
        }
        out.push('\n');
        for (as_of, outcome) in &self.periods {
            match outcome {
                PeriodOutcome::Failed(e) => {
                    out.push_str(&format!("  failed        as of {as_of}: {e}\n"))
                }
                PeriodOutcome::ChecksFailed => out.push_str(&format!(
                    "  checks failed as of {as_of}: published with blocked KPIs\n"
                )),
                _ => {}
            }
        }
        let not_started: Vec<NaiveDate> = self
            .periods
            .iter()
            .filter(|(_, o)| *o == PeriodOutcome::NotStarted)
            .map(|(d, _)| *d)
            .collect();
        match not_started.as_slice() {
            [] => {}
            [one] => out.push_str(&format!("  not started   as of {one}\n")),
            [first, .., last] => out.push_str(&format!(
                "  not started   as of {first} to {last} ({} periods); run the same command again to resume\n",
                not_started.len()
            )),
        }
        out
    }
}

/// The as-of dates a backfill runs: for each period of `grain` that overlaps
/// `from..=to`, its last day, the last one clamped to `to`; oldest first.
pub fn as_of_dates(grain: Grain, from: NaiveDate, to: NaiveDate) -> Vec<NaiveDate> {
    let mut dates = Vec::new();
    let mut start = period::start_of(grain, from);
    while start <= to {
        dates.push(period::end_of(grain, start).min(to));
        let next = period::shift(grain, start, 1);
        if next <= start {
            break;
        }
        start = next;
    }
    dates
}

/// Runs the backfill. `cancel` stops starting new periods (running ones
/// finish); `on_event` hears each period start and end (for a progress bar).
pub async fn backfill(
    pipeline: &Pipeline,
    options: &BackfillOptions,
    cancel: Arc<AtomicBool>,
    on_event: &(dyn Fn(Event) + Sync),
) -> Result<Summary, Error> {
    if options.from > options.to {
        return Err(Error::Usage(format!(
            "--from {} is after --to {}",
            options.from, options.to
        )));
    }
    let dates = as_of_dates(pipeline.scorecard.grain, options.from, options.to);
    // A period is done when its KPI values are in the output this backfill
    // writes to (`--output` or the pipeline's): the dataset, not the history,
    // is what a rerun would replace.
    let output = options.output.as_ref().unwrap_or(&pipeline.output);
    let published: HashSet<String> = if options.force {
        HashSet::new()
    } else {
        dates
            .iter()
            .filter(|d| {
                crate::publish::partition(output, "kpi_values", &pipeline.name, **d)
                    .join("part-0.parquet")
                    .is_file()
            })
            .map(|d| d.format("%Y-%m-%d").to_string())
            .collect()
    };
    let mut outcomes: Vec<(NaiveDate, PeriodOutcome)> = dates
        .iter()
        .map(|d| {
            let skipped = published.contains(&d.format("%Y-%m-%d").to_string());
            (
                *d,
                if skipped {
                    PeriodOutcome::Skipped
                } else {
                    PeriodOutcome::NotStarted
                },
            )
        })
        .collect();
    let todo: Vec<usize> = (0..outcomes.len())
        .filter(|&i| outcomes[i].1 == PeriodOutcome::NotStarted)
        .collect();
    // Incremental sources pull "since the last run": runs side by side would
    // race on the watermark, so those pipelines backfill one period at a time.
    // Periods side by side must not depend on one another. Incremental sources
    // pull "since the last run" (they would race on the watermark); `change`
    // and `anomaly` checks read earlier periods' results; `exports:` write one
    // file that the latest period must win.
    let sequential = if pipeline.sources.iter().any(|s| s.incremental.is_some()) {
        Some("incremental sources")
    } else if pipeline.incremental {
        Some("`incremental: true`, whose kept aggregates each run updates")
    } else if pipeline
        .sources
        .iter()
        .flat_map(|s| &s.checks)
        .chain(&pipeline.checks)
        .any(|c| matches!(c.kind, CheckKind::Change { .. } | CheckKind::Anomaly { .. }))
    {
        Some("`change` or `anomaly` checks, which compare with earlier periods")
    } else if !pipeline.exports.is_empty() {
        Some("`exports:`, which the latest period must write last")
    } else {
        None
    };
    let parallel = match sequential {
        Some(why) => {
            if options.parallel > 1 {
                tracing::warn!("the pipeline has {why}: backfilling one period at a time");
            }
            1
        }
        None => options.parallel.max(1),
    };
    tracing::info!(
        pipeline = %pipeline.name,
        periods = dates.len(),
        skipped = dates.len() - todo.len(),
        parallel,
        "backfill started"
    );
    on_event(Event::Planned {
        total: dates.len(),
        skipped: dates.len() - todo.len(),
    });

    let pipeline = Arc::new(pipeline.clone());
    let mut next = todo.into_iter();
    let mut running = JoinSet::new();
    let mut tasks = std::collections::HashMap::new();
    loop {
        while running.len() < parallel && !cancel.load(Ordering::SeqCst) {
            let Some(i) = next.next() else { break };
            let as_of = outcomes[i].0;
            on_event(Event::Started(as_of));
            let pipeline = pipeline.clone();
            let output = options.output.clone();
            let task = running.spawn(async move {
                let options = RunOptions {
                    as_of: Some(as_of),
                    output,
                    trigger: Trigger::Backfill,
                    ..RunOptions::default()
                };
                let outcome = match run(&pipeline, &options).await {
                    Ok(report) if report.quality.failed() => PeriodOutcome::ChecksFailed,
                    Ok(_) => PeriodOutcome::Done,
                    Err(e) => PeriodOutcome::Failed(crate::config::env::redact(&e.to_string())),
                };
                (i, outcome)
            });
            tasks.insert(task.id(), i);
        }
        let (i, outcome) = match running.join_next_with_id().await {
            None => break,
            Some(Ok((_, done))) => done,
            // A run that panicked fails its period.
            Some(Err(e)) => match tasks.get(&e.id()) {
                Some(&i) => (i, PeriodOutcome::Failed(format!("the run panicked: {e}"))),
                None => continue,
            },
        };
        on_event(Event::Finished(outcomes[i].0, &outcome));
        outcomes[i].1 = outcome;
    }
    let summary = Summary { periods: outcomes };
    tracing::info!(
        pipeline = %pipeline.name,
        done = summary.count(|o| *o == PeriodOutcome::Done),
        checks_failed = summary.count(|o| *o == PeriodOutcome::ChecksFailed),
        failed = summary.count(|o| matches!(o, PeriodOutcome::Failed(_))),
        skipped = summary.count(|o| *o == PeriodOutcome::Skipped),
        not_started = summary.count(|o| *o == PeriodOutcome::NotStarted),
        "backfill finished"
    );
    Ok(summary)
}

/// What a backfill reports as it goes.
#[derive(Debug)]
pub enum Event<'a> {
    Planned { total: usize, skipped: usize },
    Started(NaiveDate),
    Finished(NaiveDate, &'a PeriodOutcome),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    #[test]
    fn as_of_dates_are_period_ends_clamped_to_to() {
        assert_eq!(
            as_of_dates(Grain::Month, d(2026, 1, 15), d(2026, 3, 10)),
            vec![d(2026, 1, 31), d(2026, 2, 28), d(2026, 3, 10)]
        );
        assert_eq!(
            as_of_dates(Grain::Quarter, d(2026, 1, 1), d(2026, 12, 31)),
            vec![
                d(2026, 3, 31),
                d(2026, 6, 30),
                d(2026, 9, 30),
                d(2026, 12, 31)
            ]
        );
        assert_eq!(
            as_of_dates(Grain::Week, d(2026, 11, 25), d(2026, 12, 1)),
            vec![d(2026, 11, 29), d(2026, 12, 1)]
        );
        assert_eq!(
            as_of_dates(Grain::Day, d(2026, 1, 1), d(2026, 1, 3)).len(),
            3
        );
        assert!(as_of_dates(Grain::Month, d(2026, 3, 1), d(2026, 2, 1)).is_empty());
    }
}
