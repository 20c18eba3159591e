//! One run of a pipeline, top to bottom: pull sources, materialise shared views,
//! compute KPIs, score them, publish. Also `validate`, the same path without
//! computing.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, Utc};
use datafusion::arrow::array::RecordBatch;
use datafusion::prelude::SessionContext;

use crate::config::Pipeline;
use crate::error::Error;
use crate::kpi::{self, Computed, KpiSeries, PlannedKpi, SharedPlan};
use crate::progress::Stage;
use crate::publish::{self, RunRecord, RunStatus};
use crate::quality::{self, Compiled, Outcome, QualityError, QualityReport};
use crate::score::{self, Lint, ScorecardRow};
use crate::source::{self, Mode, SourceError, SourceTable};
use crate::state::{RunEntry, StateLocation, StateStore, Trigger};
use tracing::Instrument;

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// The run date; defaults to today in the pipeline's time zone.
    pub as_of: Option<NaiveDate>,
    /// Overrides the pipeline's `output:` folder.
    pub output: Option<PathBuf>,
    /// What started the run, for the run history.
    pub trigger: Trigger,
    /// The run's id; a new one by default. A scheduler that may cancel the run
    /// sets it, to record the cancellation under the same id.
    pub run_id: Option<String>,
    /// Progress shown as the run goes (a terminal's bars); none by default.
    pub progress: crate::progress::Hook,
    /// With `incremental: true`: rebuild the kept aggregates from all the files.
    pub full: bool,
}

/// What a successful run did.
#[derive(Debug)]
pub struct RunReport {
    pub run_id: String,
    pub as_of: NaiveDate,
    pub output: PathBuf,
    pub sources: Vec<SourceTable>,
    pub series: Vec<KpiSeries>,
    /// Sub-plans that several KPIs shared, each computed once.
    pub shared: Vec<SharedPlan>,
    /// The scorecard tree per period; empty without a strategy map.
    pub scorecard: Vec<ScorecardRow>,
    /// Every check's result; `quality.failed()` when an `error` check failed.
    pub quality: QualityReport,
    /// Sources with a failed `error` check: the KPIs reading them are blocked.
    pub quality_failed_sources: Vec<String>,
    /// Lint found on the run's data: KPIs without recent values.
    pub lints: Vec<Lint>,
    /// The HTML scorecard, with `report: true`.
    pub report: Option<PathBuf>,
    /// The published tables of this run, as written.
    pub tables: Published,
    pub elapsed: Duration,
}

/// A run's published rows: its `kpi_values`, `scorecard` and `quality` partitions.
#[derive(Debug, Clone)]
pub struct Published {
    pub kpi_values: RecordBatch,
    pub scorecard: RecordBatch,
    pub quality: RecordBatch,
}

/// What `validate` learned: every source's schema, every KPI planned, and the
/// scorecard's lint warnings.
#[derive(Debug)]
pub struct Validation {
    pub sources: Vec<SourceTable>,
    pub kpis: Vec<PlannedKpi>,
    pub lints: Vec<Lint>,
}

pub use crate::session::session;

/// Today in the pipeline's time zone: the default run date.
pub fn today(pipeline: &Pipeline) -> NaiveDate {
    Utc::now().with_timezone(&pipeline.timezone).date_naive()
}

/// Parses the config's sources and plans every KPI and check against them,
/// computing nothing.
pub async fn validate(pipeline: &Pipeline) -> Result<Validation, Error> {
    let ctx = session();
    let sources = source::register_all(&ctx, pipeline, Mode::Plan).await?;
    kpi::views::register_all(&ctx, pipeline, Mode::Plan).await?;
    let kpis = kpi::plan_all(&ctx, pipeline, today(pipeline)).await?;
    score::check(&ctx, pipeline, &kpis).await?;
    compile_checks(&ctx, pipeline).await?;
    Ok(Validation {
        sources,
        kpis,
        lints: score::lint::check_config(pipeline),
    })
}

/// Runs `pipeline` once. A run that fails publishes no KPI values (the previous
/// ones stay as they were) and records its failure in the `runs` dataset.
pub async fn run(pipeline: &Pipeline, options: &RunOptions) -> Result<RunReport, Error> {
    let started = Instant::now();
    let started_at = Utc::now();
    let as_of = options.as_of.unwrap_or_else(|| today(pipeline));
    let output = options
        .output
        .clone()
        .unwrap_or_else(|| pipeline.output.clone());
    let run_id = options
        .run_id
        .clone()
        .unwrap_or_else(|| new_run_id(started_at));
    let span = tracing::info_span!("run", pipeline = %pipeline.name, %run_id);
    span.in_scope(|| {
        tracing::info!(%as_of, output = %output.display(), trigger = options.trigger.as_str(), "run started")
    });
    // The start is recorded on a blocking thread while the sources are read:
    // opening a SQLite store recreates and flushes its write-ahead log, 1-3 ms
    // otherwise spent before the run's first read. Should this record land
    // after the run's end (a run cancelled at once), it replaces nothing
    // (`StateStore::record_run`).
    let starting = {
        let mut history = History::new(&pipeline.state);
        let entry = RunEntry::started(pipeline, &run_id, as_of, options.trigger, started_at);
        let span = span.clone();
        tokio::task::spawn_blocking(move || {
            span.in_scope(|| history.record(&entry));
            history
        })
    };

    let mut sources = Vec::new();
    let progress = &options.progress;
    let result = async {
        let relisted = pipeline.relist_files().map_err(SourceError::Listing)?;
        let pipeline: &Pipeline = &relisted;
        let ctx = session();
        sources = source::prepare_all(&ctx, pipeline, progress).await?;
        let columns = columns_read(&ctx, pipeline, &sources, Some(as_of)).await;
        source::parse_text(&ctx, pipeline, &mut sources, columns.as_ref(), progress).await?;
        kpi::views::register_all(&ctx, pipeline, Mode::Load).await?;
        let planned = kpi::plan_all(&ctx, pipeline, as_of).await?;
        score::check(&ctx, pipeline, &planned).await?;
        let checks = compile_checks(&ctx, pipeline).await?;
        // Checks and KPIs run side by side; the gate applies once both are done.
        progress.begin(Stage::Checks, "");
        progress.begin(Stage::Kpis, "");
        // Kept states (`incremental: true`) are updated under one lock, held
        // until they are committed with the run's outputs.
        let incremental = kpi::Incremental::new(pipeline, options.full);
        let ((report, kept_checks), computed) = tokio::join!(
            async {
                let checked = quality::run(
                    &ctx,
                    pipeline,
                    &checks,
                    as_of,
                    &output,
                    incremental.as_ref(),
                )
                .await;
                progress.end(Stage::Checks, "", !checked.0.failed());
                checked
            },
            async {
                let computed = kpi::compute(&ctx, planned, as_of, incremental.as_ref()).await;
                progress.end(Stage::Kpis, "", computed.is_ok());
                computed
            }
        );
        let mut computed = computed?;
        computed.kept.extend(kept_checks);
        let targets = score::load_targets(&ctx, pipeline).await?;
        score::score_values(&mut computed.series, &targets);
        let gate = quality::Gate::new(&ctx, pipeline, &report);
        quality::apply_gate(&ctx, pipeline, &gate, &mut computed.series);
        let scorecard = score::scorecard(pipeline, &computed.series, &targets, as_of);
        let quarantined = quality::quarantine(&ctx, pipeline)
            .await
            .map_err(QualityError::Quarantine)?;
        // Stage every file, then put them all in place: an error while writing
        // any of them leaves every dataset as it was.
        let publishing = progress.stage(Stage::Publish, "");
        let (values, values_file) = publish::stage_kpi_values(
            &output,
            pipeline,
            &run_id,
            as_of,
            started_at,
            &computed.series,
        )?;
        let (card, card_file) =
            publish::stage_scorecard(&output, pipeline, &run_id, as_of, &scorecard)?;
        let (checked, checked_file) =
            publish::stage_quality(&output, pipeline, &run_id, as_of, started_at, &report)?;
        let mut files = vec![values_file, card_file, checked_file];
        for (source, schema, batches) in &quarantined {
            files.push(publish::stage_quarantine(
                &output,
                pipeline,
                &run_id,
                as_of,
                source,
                schema.clone(),
                batches,
            )?);
        }
        let tables = [
            ("kpi_values", &values),
            ("scorecard", &card),
            ("quality", &checked),
        ];
        // Every file on disk before any is put in place. The files staged so
        // far are flushed in one wave on a blocking thread while the exports
        // run, then the exports' files; then all go in place in order: the
        // datasets, the pulls, the kept states' manifests.
        let mut kept = std::mem::take(&mut computed.kept);
        let flushing = tokio::task::spawn_blocking(move || {
            let flushed = publish::flush_all(files.iter_mut().chain(kept.files_mut()));
            (files, kept, flushed)
        });
        let exports = publish::stage_exports(pipeline, as_of, &tables, &run_id).await;
        let (mut files, kept, flushed) = flushing.await.map_err(|e| publish::PublishError::Io {
            path: output.clone(),
            source: std::io::Error::other(e),
        })?;
        flushed?;
        let mut exports = exports?;
        publish::flush_all(exports.iter_mut())?;
        files.extend(exports);
        publish::commit_all(files)?;
        source::commit_pulls(&sources, &run_id)?;
        kept.commit()?;
        if let Some(incremental) = &incremental {
            incremental.sweep();
        }
        publishing.done();
        let failed_sources: Vec<String> = gate
            .failed_sources()
            .iter()
            .map(|s| s.to_string())
            .collect();
        let tables = Published {
            kpi_values: values,
            scorecard: card,
            quality: checked,
        };
        Ok::<_, Error>((computed, scorecard, report, failed_sources, tables))
    }
    .instrument(span.clone())
    .await;

    let record = RunRecord {
        run_id: run_id.clone(),
        pipeline: pipeline.name.clone(),
        as_of,
        started_at,
        finished_at: Utc::now(),
        status: match &result {
            Ok((_, _, q, _, _)) if q.failed() => RunStatus::QualityFailed,
            Ok(_) => RunStatus::Succeeded,
            Err(_) => RunStatus::Failed,
        },
        rows_read: sources.iter().map(|s| (s.name.clone(), s.rows)).collect(),
        kpis_published: result.as_ref().map_or(0, |(c, _, _, _, _)| {
            c.series.iter().filter(|s| !s.values.is_empty()).count()
        }),
        values_published: result.as_ref().map_or(0, |(c, _, _, _, _)| {
            c.series.iter().map(|k| k.values.len()).sum()
        }),
        checks_failed: result
            .as_ref()
            .map_or(0, |(_, _, q, _, _)| q.count(Outcome::Failed)),
        checks_warned: result
            .as_ref()
            .map_or(0, |(_, _, q, _, _)| q.count(Outcome::Warned)),
        error: result
            .as_ref()
            .err()
            .map(|e| crate::config::env::redact(&e.to_string())),
    };
    let mut history = starting
        .await
        .unwrap_or_else(|_| History::new(&pipeline.state));
    span.in_scope(|| history.record(&RunEntry::finished(&record, options.trigger)));
    let recorded = publish::write_run_record(&output, &record);
    if let Err(e) = &recorded {
        tracing::error!(error = %e, "the run could not be recorded in the runs dataset");
    }
    let (Computed { series, shared, .. }, scorecard, quality, quality_failed_sources, tables) =
        result?;
    recorded?;
    let lints = score::lint::check_stale(pipeline, &series, as_of);
    let report = if pipeline.report {
        let path = crate::report::write_html(&output, Some(&pipeline.name), Some(as_of), None)?;
        Some(path)
    } else {
        None
    };
    span.in_scope(|| {
        tracing::info!(
            status = record.status.as_str(),
            ms = started.elapsed().as_millis() as u64,
            "run finished"
        )
    });
    Ok(RunReport {
        run_id,
        as_of,
        output,
        sources,
        series,
        shared,
        scorecard,
        quality,
        quality_failed_sources,
        lints,
        report,
        tables,
        elapsed: started.elapsed(),
    })
}

/// Pulls the sources and runs only the checks (`kpiforge check`); publishes nothing.
pub async fn check(pipeline: &Pipeline, options: &RunOptions) -> Result<QualityReport, Error> {
    let as_of = options.as_of.unwrap_or_else(|| today(pipeline));
    let output = options
        .output
        .clone()
        .unwrap_or_else(|| pipeline.output.clone());
    let ctx = session();
    let progress = &options.progress;
    let mut sources = source::prepare_all(&ctx, pipeline, progress).await?;
    let columns = columns_read(&ctx, pipeline, &sources, None).await;
    source::parse_text(&ctx, pipeline, &mut sources, columns.as_ref(), progress).await?;
    // Views stay lazy: only a reconciliation's SQL may read them.
    kpi::views::register_all(&ctx, pipeline, Mode::Plan).await?;
    let checks = compile_checks(&ctx, pipeline).await?;
    Ok(quality::run(&ctx, pipeline, &checks, as_of, &output, None)
        .await
        .0)
}

/// The columns of each source that the run's KPIs (as of `kpis_as_of`; none
/// without it), views and checks read, found by planning them against the
/// lazily registered sources. `None` if any of them does not plan: the run's own
/// planning then reports why, and text sources are parsed whole.
async fn columns_read(
    ctx: &SessionContext,
    pipeline: &Pipeline,
    sources: &[SourceTable],
    kpis_as_of: Option<NaiveDate>,
) -> Option<source::ColumnsRead> {
    if !pipeline
        .sources
        .iter()
        .any(|s| source::text_file(s).is_some())
    {
        return None;
    }
    match plan_reads(ctx, pipeline, sources, kpis_as_of).await {
        Ok(read) => Some(read),
        Err(e) => {
            tracing::debug!(error = %e, "text sources parsed whole: not every query plans yet");
            None
        }
    }
}

async fn plan_reads(
    ctx: &SessionContext,
    pipeline: &Pipeline,
    sources: &[SourceTable],
    kpis_as_of: Option<NaiveDate>,
) -> Result<source::ColumnsRead, Box<dyn std::error::Error>> {
    kpi::views::register_all(ctx, pipeline, Mode::Plan).await?;
    let mut plans = Vec::new();
    if let Some(as_of) = kpis_as_of {
        for kpi in kpi::plan_all(ctx, pipeline, as_of).await? {
            plans.push(kpi.plan().clone());
        }
    }
    let checks = quality::compile::compile(ctx, pipeline)
        .await
        .map_err(|problems| format!("{} check problems", problems.len()))?;
    // After compiling: the state is a snapshot, and checks register functions.
    let state = ctx.state();
    for view in &pipeline.views {
        plans.push(state.create_logical_plan(&view.sql).await?);
    }
    for query in &checks.queries {
        plans.push(state.create_logical_plan(&query.sql).await?);
    }
    let mut read = source::ColumnsRead::default();
    let names: Vec<&str> = pipeline.sources.iter().map(|s| s.name.as_str()).collect();
    for plan in plans {
        read.add_plan(&state.optimize(&plan)?, &names);
    }
    // What checks name (their samples show it) and keys; and whole tables for
    // what reads whole rows: targets tables and quarantined sources.
    for (source, checks) in quality::all_checks(pipeline) {
        for check in checks {
            for column in check.kind.columns() {
                read.add(source.unwrap_or_default(), column);
            }
            if let crate::config::CheckKind::Relationship { from, to } = &check.kind {
                read.add(&from.0, &from.1);
                read.add(&to.0, &to.1);
            }
        }
    }
    for (s, table) in pipeline.sources.iter().zip(sources) {
        let targets = pipeline
            .kpis
            .iter()
            .any(|k| k.targets.as_ref() == Some(&s.name));
        let whole = s.quarantine || targets;
        let columns = table.schema.fields().iter().map(|f| f.name());
        for column in columns.filter(|c| whole || s.key.contains(c)) {
            read.add(&s.name, column);
        }
    }
    Ok(read)
}

/// Compiles the checks; problems are configuration errors with file positions.
async fn compile_checks(ctx: &SessionContext, pipeline: &Pipeline) -> Result<Compiled, Error> {
    quality::compile::compile(ctx, pipeline)
        .await
        .map_err(|mut problems| {
            crate::config::locate(&pipeline.file, &mut problems);
            Error::Config(crate::config::ConfigError {
                file: pipeline.file.clone(),
                pipeline: Some(pipeline.name.clone()),
                problems,
            })
        })
}

/// The run history, written twice a run over one connection: each open of a
/// SQLite store recreates and checkpoints its write-ahead log (five flushes),
/// and a PostgreSQL one connects. After an error the next record reconnects.
struct History {
    location: StateLocation,
    store: Option<StateStore>,
}

impl History {
    fn new(location: &StateLocation) -> History {
        History {
            location: location.clone(),
            store: None,
        }
    }

    /// Records `entry`; a failure is logged, not returned: the run goes on.
    fn record(&mut self, entry: &RunEntry) {
        if self.store.is_none() {
            match StateStore::open(&self.location) {
                Ok(opened) => self.store = Some(opened),
                Err(e) => {
                    tracing::error!(error = %e, "the run history cannot be opened");
                    return;
                }
            }
        }
        if let Some(Err(e)) = self.store.as_ref().map(|s| s.record_run(entry)) {
            tracing::error!(error = %e, "the run could not be recorded in the run history");
            self.store = None;
        }
    }
}

/// A run id that sorts by start time and is unique across processes.
pub fn new_run_id(started_at: DateTime<Utc>) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_i64(started_at.timestamp_nanos_opt().unwrap_or_default());
    format!(
        "{}-{:06x}",
        started_at.format("%Y%m%dT%H%M%SZ"),
        h.finish() & 0xff_ffff
    )
}
