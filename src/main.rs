//! The `kpiforge` command line: parse arguments, call the library, print, and map
//! errors to the documented exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use chrono::NaiveDate;
use clap::{Parser, Subcommand, ValueEnum};
use kpiforge::config::env::redact;
use kpiforge::error::exit;
use kpiforge::report::terminal::Colour;
use kpiforge::{Error, RunOptions, config};

/// Prints a line to stdout with environment-variable values redacted.
macro_rules! out {
    ($($arg:tt)*) => { println!("{}", redact(&format!($($arg)*))) };
}

/// Prints a line to stderr with environment-variable values redacted.
macro_rules! err {
    ($($arg:tt)*) => { eprintln!("{}", redact(&format!($($arg)*))) };
}

/// Scheduled KPI computation: pull, check, compute in DataFusion, publish Parquet.
#[derive(Parser)]
#[command(name = "kpiforge", version, about, long_about = None)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// More logging (-v: debug, -vv: trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Less logging (-q: warnings only, -qq: errors only).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "verbose")]
    quiet: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Scaffold a working example project in DIR.
    Init { dir: PathBuf },
    /// Check a pipeline's config and plan every KPI query, computing nothing;
    /// also lint the scorecard (warnings).
    Validate {
        pipeline: PathBuf,
        /// Treat scorecard lint warnings as errors.
        #[arg(long)]
        strict: bool,
    },
    /// Pull the sources and run only their checks; print a report, publish nothing.
    Check {
        pipeline: PathBuf,
        /// The run date (YYYY-MM-DD) freshness and history are judged at.
        #[arg(long, value_parser = parse_date)]
        as_of: Option<NaiveDate>,
        /// Read check history from here instead of the pipeline's `output:`.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Write the HTML scorecard of a published run (self-contained, no network).
    Report {
        /// The output folder a pipeline published to.
        output: PathBuf,
        /// The pipeline, when the folder holds several.
        #[arg(long)]
        pipeline: Option<String>,
        /// The run date to show; defaults to the latest.
        #[arg(long, value_parser = parse_date)]
        as_of: Option<NaiveDate>,
        /// Where to write it; defaults to OUTPUT/report/pipeline=P/as_of=D/scorecard.html.
        #[arg(short, long)]
        out: Option<PathBuf>,
    },
    /// The run history: what ran, when, how it ended and why.
    Runs {
        /// Only this pipeline's runs.
        #[arg(long)]
        pipeline: Option<String>,
        /// Only runs that ended so: running, succeeded, quality_failed, failed, cancelled.
        #[arg(long)]
        status: Option<String>,
        /// At most this many, newest first.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// One JSON object per run, one per line.
        #[arg(long)]
        json: bool,
        /// The state store (a pipeline's `state:`): a file, or a postgres:// URL.
        #[arg(long, default_value = ".kpiforge/state.db")]
        state: String,
    },
    /// Run a pipeline once per period (of the scorecard's grain) between two
    /// dates, oldest first; periods already published are skipped.
    Backfill {
        pipeline: PathBuf,
        /// The first day to cover (YYYY-MM-DD): its period is the first run.
        #[arg(long, value_parser = parse_date)]
        from: NaiveDate,
        /// The last day to cover (YYYY-MM-DD): the last period runs as of it.
        #[arg(long, value_parser = parse_date)]
        to: NaiveDate,
        /// At most this many periods at a time.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
        parallel: u16,
        /// Rerun periods already published.
        #[arg(long)]
        force: bool,
        /// Write results here instead of the pipeline's `output:`.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Run pipelines on their `schedule:` until SIGTERM/SIGINT (docs/schedule.md).
    Schedule {
        /// Pipeline files, or folders whose *.yaml / *.yml files are pipelines.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// How long runs in flight may finish on shutdown before they are cancelled.
        #[arg(long, default_value = "30s", value_parser = kpiforge::schedule::parse_duration)]
        grace: std::time::Duration,
        /// How often pipeline files are checked for changes.
        #[arg(long, default_value = "1s", value_parser = kpiforge::schedule::parse_duration)]
        poll: std::time::Duration,
        /// Serve /healthz, /metrics, /runs and scorecards at this address (e.g. 127.0.0.1:9184).
        #[arg(long)]
        http: Option<std::net::SocketAddr>,
        /// The environment variable holding the bearer token the HTTP endpoints
        /// require; needed to bind a non-loopback address.
        #[arg(long)]
        http_token_env: Option<String>,
    },
    /// Pull sources, check them, compute KPIs and publish the results.
    Run {
        pipeline: PathBuf,
        /// The run date (YYYY-MM-DD); defaults to today in the pipeline's time zone.
        #[arg(long, value_parser = parse_date)]
        as_of: Option<NaiveDate>,
        /// Write results here instead of the pipeline's `output:`.
        #[arg(long)]
        output: Option<PathBuf>,
        /// With `incremental: true`, recompute every aggregate from all the files
        /// and keep the results as the new state.
        #[arg(long)]
        full: bool,
    },
}

fn parse_date(s: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map_err(|_| format!("`{s}` is not a date; write YYYY-MM-DD"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            err!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::RUN_FAILED as u8);
        }
    };
    let result = runtime.block_on(execute(cli.command));
    // A run the scheduler cancelled may leave a blocking task (a file read, a
    // query) behind: exit without waiting for it indefinitely.
    runtime.shutdown_timeout(std::time::Duration::from_secs(10));
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err((context, e)) => {
            match context {
                Some(pipeline) if !e.names_pipeline() => {
                    err!("error: pipeline `{pipeline}`: {e}")
                }
                _ => err!("error: {e}"),
            }
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

/// Runs a command and returns its exit code; an error comes with the pipeline's
/// name when one was loaded.
async fn execute(command: Command) -> Result<i32, (Option<String>, Error)> {
    match command {
        Command::Init { dir } => {
            let files = kpiforge::init::scaffold(&dir).map_err(|e| (None, e))?;
            for f in &files {
                out!("created {}", f.display());
            }
            out!(
                "\nnext: kpiforge run {}",
                dir.join("pipelines/example.yaml").display()
            );
            Ok(exit::SUCCESS)
        }
        Command::Validate { pipeline, strict } => {
            let (pipeline, name) = load(&pipeline)?;
            let checked = kpiforge::validate(&pipeline)
                .await
                .map_err(|e| (name.clone(), e))?;
            for s in &checked.sources {
                out!(
                    "source {:<28} {:<8} {} columns",
                    s.name,
                    s.kind,
                    s.schema.fields().len()
                );
            }
            for k in &checked.kpis {
                out!(
                    "kpi    {:<28} {:<8} {:?}",
                    k.kpi.id,
                    k.kpi.grain.as_str(),
                    k.measure
                );
            }
            for lint in &checked.lints {
                err!("{lint}");
            }
            if strict && !checked.lints.is_empty() {
                let n = checked.lints.len();
                return Err((
                    name,
                    Error::Usage(format!(
                        "{n} scorecard lint warning{} (errors under --strict); fix them or allow the rules under `scorecard: lint: allow:`",
                        if n == 1 { "" } else { "s" }
                    )),
                ));
            }
            out!(
                "pipeline `{}` is valid: {} sources, {} views, {} KPIs, {} lint warnings",
                pipeline.name,
                checked.sources.len(),
                pipeline.views.len(),
                checked.kpis.len(),
                checked.lints.len()
            );
            Ok(exit::SUCCESS)
        }
        Command::Check {
            pipeline,
            as_of,
            output,
        } => {
            let (pipeline, name) = load(&pipeline)?;
            let report = kpiforge::check(
                &pipeline,
                &RunOptions {
                    as_of,
                    output,
                    ..RunOptions::default()
                },
            )
            .await
            .map_err(|e| (name, e))?;
            if report.results.is_empty() {
                out!("pipeline `{}` declares no checks", pipeline.name);
            }
            out!(
                "{}",
                kpiforge::report::quality::checks(&report, true, colour()).trim_end()
            );
            Ok(if report.failed() {
                exit::CHECKS_FAILED
            } else {
                exit::SUCCESS
            })
        }
        Command::Report {
            output,
            pipeline,
            as_of,
            out,
        } => {
            let path =
                kpiforge::report::write_html(&output, pipeline.as_deref(), as_of, out.as_deref())
                    .map_err(|e| (pipeline.clone(), e))?;
            out!("scorecard: {}", path.display());
            Ok(exit::SUCCESS)
        }
        Command::Runs {
            pipeline,
            status,
            limit,
            json,
            state,
        } => {
            let cwd = std::path::Path::new("");
            let state = match kpiforge::state::StateLocation::parse(&state, cwd) {
                Ok(location) => location,
                Err(message) => {
                    err!("error: --state: {message}");
                    return Ok(exit::CONFIG);
                }
            };
            if !state.exists() {
                err!(
                    "error: no state store at {state}: runs are recorded there by `kpiforge run` in the project root; pass --state PATH or a postgres:// URL"
                );
                return Ok(exit::CONFIG);
            }
            let filter = kpiforge::state::RunFilter {
                pipeline,
                status,
                limit: Some(limit),
            };
            let runs = kpiforge::state::StateStore::open(&state)
                .and_then(|store| store.runs(&filter))
                .map_err(|e| (None, kpiforge::Error::Source(e.into())))?;
            if json {
                for r in &runs {
                    out!("{}", serde_json::to_string(r).unwrap_or_default());
                }
            } else {
                print!("{}", kpiforge::report::runs::table(&runs));
            }
            Ok(exit::SUCCESS)
        }
        Command::Backfill {
            pipeline,
            from,
            to,
            parallel,
            force,
            output,
        } => {
            use kpiforge::backfill::{BackfillOptions, Event, PeriodOutcome};
            let (pipeline, name) = load(&pipeline)?;
            let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let flag = cancel.clone();
            tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    flag.store(true, std::sync::atomic::Ordering::SeqCst);
                    kpiforge::progress::suspend(|| {
                        err!(
                            "interrupted: no new periods start; waiting for the running ones (Ctrl-C again to quit now)"
                        )
                    });
                }
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(kpiforge::backfill::INTERRUPTED);
                }
            });
            let bar = std::sync::Mutex::new(None::<indicatif::ProgressBar>);
            let running = std::sync::Mutex::new(std::collections::BTreeSet::new());
            let on_event = |event: Event| {
                let Ok(mut bar) = bar.lock() else { return };
                match event {
                    Event::Planned { total, skipped } => {
                        if skipped > 0 {
                            err!(
                                "{skipped} of {total} periods already published: skipped (--force reruns them)"
                            );
                        }
                        *bar = kpiforge::progress::periods_bar((total - skipped) as u64);
                    }
                    Event::Started(as_of) | Event::Finished(as_of, _) => {
                        let Ok(mut running) = running.lock() else {
                            return;
                        };
                        if let Event::Finished(_, outcome) = event {
                            running.remove(&as_of);
                            if let Some(b) = bar.as_ref() {
                                b.inc(1);
                            }
                            if let PeriodOutcome::Failed(e) = outcome {
                                kpiforge::progress::suspend(|| err!("as of {as_of}: failed: {e}"));
                            }
                        } else {
                            running.insert(as_of);
                        }
                        if let Some(b) = bar.as_ref() {
                            let list: Vec<String> = running.iter().map(|d| d.to_string()).collect();
                            b.set_message(format!("running {}", list.join(", ")));
                        }
                    }
                }
            };
            let options = BackfillOptions {
                from,
                to,
                parallel: parallel as usize,
                force,
                output,
            };
            let summary = kpiforge::backfill::backfill(&pipeline, &options, cancel, &on_event)
                .await
                .map_err(|e| (name, e));
            if let Some(b) = bar.lock().ok().and_then(|mut b| b.take()) {
                b.finish_and_clear();
            }
            kpiforge::progress::clear();
            let summary = summary?;
            out!("{}", summary.render().trim_end());
            Ok(summary.exit_code())
        }
        Command::Schedule {
            paths,
            grace,
            poll,
            http,
            http_token_env,
        } => {
            kpiforge::schedule::serve(kpiforge::schedule::ScheduleOptions {
                paths,
                grace,
                poll,
                http,
                http_token_env,
            })
            .await
            .map_err(|e| (None, e))?;
            Ok(exit::SUCCESS)
        }
        Command::Run {
            pipeline,
            as_of,
            output,
            full,
        } => {
            let (pipeline, name) = load(&pipeline)?;
            let multi = kpiforge::progress::multi();
            let progress = match &multi {
                Some(m) => {
                    kpiforge::progress::Hook::new(kpiforge::progress::RunBars::new(m.clone()))
                }
                None => kpiforge::progress::Hook::default(),
            };
            let report = kpiforge::run(
                &pipeline,
                &RunOptions {
                    as_of,
                    output,
                    progress,
                    full,
                    ..RunOptions::default()
                },
            )
            .await;
            if let Some(m) = multi {
                let _ = m.clear();
                kpiforge::progress::clear();
            }
            let report = report.map_err(|e| (name, e))?;
            print_report(&report);
            if report.quality.failed() {
                err!(
                    "error: pipeline `{}`: {} check(s) failed; the KPIs reading {} are {}",
                    pipeline.name,
                    report.quality.count(kpiforge::quality::Outcome::Failed),
                    report.quality_failed_sources.join(", "),
                    match pipeline.quality.on_failure {
                        config::OnFailure::Flag => "published as blocked, without scores",
                        config::OnFailure::Withhold => "withheld",
                    }
                );
                return Ok(exit::CHECKS_FAILED);
            }
            Ok(exit::SUCCESS)
        }
    }
}

fn print_report(report: &kpiforge::RunReport) {
    out!(
        "run {} (as of {}) finished in {:.2}s",
        report.run_id,
        report.as_of,
        report.elapsed.as_secs_f64()
    );
    for s in &report.sources {
        match s.rows {
            Some(rows) if s.pull.is_some() => {
                out!(
                    "  source {:<28} {:>10} new rows  {} (incremental)",
                    s.name,
                    rows,
                    s.kind
                )
            }
            Some(rows) => out!("  source {:<28} {:>10} rows  {}", s.name, rows, s.kind),
            None => out!(
                "  source {:<28} {:>10}       {} (read in place by each query)",
                s.name,
                "",
                s.kind
            ),
        }
    }
    for lint in &report.lints {
        err!("{lint}");
    }
    let colour = colour();
    for series in &report.series {
        let latest = series
            .values
            .iter()
            .filter(|v| v.segment.is_none())
            .max_by_key(|v| v.period_start);
        let latest = match latest {
            Some(v) => format!(
                "{} = {}",
                v.period_start,
                v.value.map_or("null".into(), |x| format!("{x:.4}"))
            ),
            None if series.values.is_empty() => "no rows".to_string(),
            None => "per segment".to_string(),
        };
        out!(
            "  kpi    {:<28} {:>4} values  latest {latest}",
            series.kpi.id,
            series.values.len()
        );
    }
    for s in &report.shared {
        out!(
            "  shared {:<28} {:>10} rows  computed once, read {} times",
            s.table,
            s.rows,
            s.users
        );
    }
    let checks = kpiforge::report::quality::checks(&report.quality, false, colour);
    if !checks.is_empty() {
        out!("\n{}", checks.trim_end());
    }
    let card = kpiforge::report::terminal::scorecard(&report.scorecard, &report.series, colour);
    if !card.is_empty() {
        out!("\n{}", card.trim_end());
    }
    out!("results: {}", report.output.display());
    if let Some(path) = &report.report {
        out!("scorecard: {}", path.display());
    }
}

/// Loads a pipeline; later errors carry its name.
fn load(
    path: &std::path::Path,
) -> Result<(config::Pipeline, Option<String>), (Option<String>, Error)> {
    let pipeline = config::load(path).map_err(|e| (None, e.into()))?;
    let name = Some(pipeline.name.clone());
    Ok((pipeline, name))
}

/// Colour on a terminal, unless NO_COLOR is set.
fn colour() -> Colour {
    if std::io::IsTerminal::is_terminal(&std::io::stdout())
        && std::env::var_os("NO_COLOR").is_none()
    {
        Colour::Always
    } else {
        Colour::Never
    }
}

fn init_logging(cli: &Cli) {
    let level = match (cli.verbose, cli.quiet) {
        (0, 0) => "info",
        (1, _) => "debug",
        (v, _) if v >= 2 => "trace",
        (_, 1) => "warn",
        _ => "error",
    };
    // KPIFORGE_LOG overrides, e.g. `KPIFORGE_LOG=kpiforge=debug,datafusion=info`.
    let filter = tracing_subscriber::EnvFilter::try_from_env("KPIFORGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("kpiforge={level},warn")));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| RedactingStderr)
        .with_ansi(ansi);
    match cli.log_format {
        LogFormat::Text => builder.with_target(false).init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Log output on stderr with environment-variable values redacted.
struct RedactingStderr;

impl std::io::Write for RedactingStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = redact(&String::from_utf8_lossy(buf));
        kpiforge::progress::suspend(|| std::io::stderr().write_all(text.as_bytes()))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
