//! The checked pipeline: every reference resolved, every path found, every type
//! parsed. Only this model crosses into the later stages.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use chrono_tz::Tz;
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use sha2::{Digest, Sha256};

use super::checks::{Check, OnFailure, check_checks};
use super::connect::{
    DatabaseKind, DatabaseSource, HttpSource, Incremental, check_database, check_http,
};
use super::env::interpolate;
use super::error::{ConfigError, Problem};
use super::raw::{
    self, CsvOptions, FileFormat, RawKpi, RawPipeline, RawScorecard, RawSource, ScoringMethod,
};
pub use super::raw::{Aggregation, CatchUp, Direction, Grain, LintRule, Overlap, Rollup};

/// The four perspectives of the Balanced Scorecard, in the order a map is drawn
/// (top to bottom), with their display names. Custom perspectives follow them.
pub const PERSPECTIVES: [(&str, &str); 4] = [
    ("financial", "Financial"),
    ("customer", "Customer"),
    ("internal_process", "Internal process"),
    ("learning_growth", "Learning & growth"),
];

#[derive(Debug, Clone)]
pub struct Pipeline {
    pub name: String,
    pub description: Option<String>,
    /// Cron with seconds (checked), and what the scheduler does around it.
    pub schedule: Option<String>,
    pub scheduling: Scheduling,
    pub timezone: Tz,
    /// The pipeline file.
    pub file: PathBuf,
    /// Folder that relative paths resolve against (see `project_root`).
    pub root: PathBuf,
    pub output: PathBuf,
    /// Write the HTML scorecard after each run (`report: true`).
    pub report: bool,
    /// Keep KPI aggregates between runs and update them with the files appended
    /// since (`incremental: true`; `kpi/incremental.rs`).
    pub incremental: bool,
    /// The state store: source watermarks, the incremental cache and the run
    /// history (`.kpiforge/state.db` under the project root unless `state:`
    /// names another file or a `postgres://` URL).
    pub state: crate::state::StateLocation,
    pub sources: Vec<Source>,
    pub views: Vec<View>,
    pub scorecard: Scorecard,
    pub kpis: Vec<Kpi>,
    pub exports: Vec<Export>,
    /// Checks across sources (relationships, reconciliations).
    pub checks: Vec<Check>,
    pub quality: QualitySettings,
}

/// What the quality gate does, and how much it keeps of failing rows.
#[derive(Debug, Clone)]
pub struct QualitySettings {
    pub on_failure: OnFailure,
    pub sample_size: usize,
}

/// The strategy map and how scores roll up it.
#[derive(Debug, Clone)]
pub struct Scorecard {
    /// The grain of the `scorecard/` rows; KPIs of other grains are rolled to it.
    pub grain: Grain,
    /// How the overall score combines the perspectives.
    pub rollup: Rollup,
    /// The four classic perspectives, then custom ones, in map order.
    pub perspectives: Vec<Perspective>,
    pub objectives: Vec<Objective>,
    pub lint: LintSettings,
}

#[derive(Debug, Clone)]
pub struct Perspective {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub weight: f64,
    pub rollup: Rollup,
}

#[derive(Debug, Clone)]
pub struct LintSettings {
    pub max_kpis_per_perspective: usize,
    pub max_objectives: usize,
    pub stale_periods: u32,
    pub allow: Vec<LintRule>,
}

impl Default for LintSettings {
    fn default() -> Self {
        LintSettings {
            max_kpis_per_perspective: 7,
            max_objectives: 20,
            stale_periods: 3,
            allow: Vec::new(),
        }
    }
}

/// How a KPI's value becomes a score from 0 to 100 (`score/method.rs`).
#[derive(Debug, Clone, PartialEq)]
pub enum Scoring {
    /// Red flag scores 33.3, target 66.7, linear through both, clamped.
    GoalRedFlag,
    /// `(value, score)` points, values strictly increasing, linear between them.
    Thresholds(Vec<(f64, f64)>),
    /// Proportional to the share of the target reached; the target scores 66.7.
    PercentOfTarget,
}

/// A flat extract of the run's KPI values (`exports:`).
#[derive(Debug, Clone)]
pub struct Export {
    pub file: PathBuf,
    pub query: String,
}

/// How the scheduler treats a pipeline besides its cron.
#[derive(Debug, Clone, PartialEq)]
pub struct Scheduling {
    pub overlap: Overlap,
    pub catch_up: CatchUp,
    pub retries: u32,
    pub retry_delay: std::time::Duration,
}

/// Parses a cron with seconds (`sec min hour day month weekday`), as the scheduler does.
pub fn parse_cron(text: &str) -> Result<croner::Cron, String> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .build()
        .parse(text)
        .map_err(|e| format!("`{text}` is not a cron with seconds: {e}"))
}

#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub description: Option<String>,
    pub kind: SourceKind,
    /// Columns identifying a row, shown in samples of failing rows.
    pub key: Vec<String>,
    pub checks: Vec<Check>,
    /// Write rows failing its row-level checks to `quarantine/`.
    pub quarantine: bool,
    /// Pull only rows past a watermark (database and HTTP sources).
    pub incremental: Option<Incremental>,
}

/// One variant per kind of source; `source::register` matches on it exhaustively.
// A handful per pipeline, built once: their sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum SourceKind {
    File(FileSource),
    Database(DatabaseSource),
    Http(HttpSource),
}

#[derive(Debug, Clone)]
pub struct FileSource {
    /// As written (after `${VAR}` interpolation), for messages.
    pub pattern: String,
    /// The matching files, sorted.
    pub paths: Vec<PathBuf>,
    pub format: FileFormat,
    pub csv: CsvOptions,
    /// Declared column types, overriding inference.
    pub columns: Vec<(String, DataType)>,
}

#[derive(Debug, Clone)]
pub struct View {
    pub name: String,
    pub sql: String,
    pub sql_file: Option<PathBuf>,
    pub description: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Objective {
    pub id: String,
    pub name: String,
    pub perspective: String,
    pub description: Option<String>,
    pub causes: Vec<String>,
    pub weight: f64,
    pub rollup: Rollup,
}

#[derive(Debug, Clone)]
pub struct Kpi {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub objective: Option<String>,
    pub perspective: Option<String>,
    pub sql: String,
    pub sql_file: PathBuf,
    pub grain: Grain,
    pub dimensions: Vec<String>,
    pub unit: Option<String>,
    pub owner: Option<String>,
    pub direction: Option<Direction>,
    pub target: Option<f64>,
    pub red_flag: Option<f64>,
    pub weight: f64,
    pub scoring: Scoring,
    /// A source or view holding this KPI's targets per period (and segment).
    pub targets: Option<String>,
    /// How values combine into a coarser period; `None` for ratio KPIs.
    pub aggregation: Option<Aggregation>,
    /// Hash of what determines the KPI's values: its SQL, grain and dimensions.
    pub definition_hash: String,
}

/// Relative paths in a pipeline resolve from the project root: the folder above
/// `pipelines/` when the file lives in a folder of that name, else the file's own folder.
/// So `kpiforge run` gives the same answer from any working directory.
pub fn project_root(pipeline_file: &Path) -> PathBuf {
    let dir = pipeline_file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    match (dir.file_name(), dir.parent()) {
        (Some(name), Some(parent)) if name == "pipelines" => {
            if parent.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                parent.to_path_buf()
            }
        }
        _ => dir.to_path_buf(),
    }
}

impl Pipeline {
    /// Checks `raw` and resolves it against the file system. Returns every problem found.
    pub fn from_raw(raw: RawPipeline, file: &Path) -> Result<Pipeline, Vec<Problem>> {
        let mut problems = Vec::new();
        let root = project_root(file);

        if !is_identifier(&raw.name) {
            problems.push(
                Problem::new(
                    "name",
                    format!("`{}` is not a valid pipeline name", raw.name),
                )
                .hint("use letters, digits and `_` (it names output partitions)"),
            );
        }
        let timezone = match raw.timezone.as_deref() {
            None => Tz::UTC,
            Some(tz) => tz.parse::<Tz>().unwrap_or_else(|_| {
                problems.push(
                    Problem::new("timezone", format!("unknown time zone `{tz}`"))
                        .hint("use an IANA name such as `Europe/Amsterdam` or `UTC`"),
                );
                Tz::UTC
            }),
        };
        let output = match interpolate(&raw.output, "output") {
            Ok(out) => root.join(out),
            Err(p) => {
                problems.push(p);
                PathBuf::new()
            }
        };

        let mut sources = Vec::new();
        for (name, source) in raw.sources {
            match check_source(&name, source, &root) {
                Ok(s) => sources.push(s),
                Err(mut p) => problems.append(&mut p),
            }
        }
        if sources.is_empty() && problems.is_empty() {
            problems.push(Problem::new(
                "sources",
                "a pipeline needs at least one source",
            ));
        }

        let mut views = Vec::new();
        for (name, view) in raw.views {
            let path = format!("views.{name}");
            if sources.iter().any(|s| s.name == name) {
                problems.push(
                    Problem::new(&path, format!("`{name}` is already a source name"))
                        .hint("give the view its own name"),
                );
            }
            if !is_identifier(&name) {
                problems.push(identifier_problem(&path, &name));
            }
            let sql = match (view.sql, view.query) {
                (Some(file), None) => read_sql(&root, &file, &format!("{path}.sql"))
                    .map(|(sql, file)| (sql, Some(file))),
                (None, Some(query)) => Ok((query, None)),
                _ => Err(Problem::new(
                    &path,
                    "a view needs exactly one of `sql:` (a file) or `query:` (inline SQL)",
                )),
            };
            match sql {
                Ok((sql, sql_file)) => views.push(View {
                    name,
                    sql,
                    sql_file,
                    description: view.description,
                }),
                Err(p) => problems.push(p),
            }
        }

        let kpi_grains: HashSet<Grain> = raw.kpis.iter().map(|k| k.grain).collect();
        let mut scorecard = check_scorecard(raw.scorecard, &mut problems);
        if let Some(&only) = kpi_grains.iter().next().filter(|_| kpi_grains.len() == 1)
            && !scorecard.grain_declared
        {
            scorecard.model.grain = only;
        }
        let scorecard = scorecard.model;

        let tables: Vec<&str> = sources
            .iter()
            .map(|s| s.name.as_str())
            .chain(views.iter().map(|v| v.name.as_str()))
            .collect();
        let mut kpis: Vec<Kpi> = Vec::new();
        for (i, kpi) in raw.kpis.into_iter().enumerate() {
            let path = format!("kpis[{i}]");
            if kpis.iter().any(|k| k.id == kpi.id) {
                problems.push(Problem::new(
                    format!("{path}.id"),
                    format!("KPI id `{}` is used twice", kpi.id),
                ));
            }
            if let Some(t) = &kpi.targets
                && !tables.contains(&t.as_str())
            {
                let mut problem = unknown(
                    &format!("{path}.targets"),
                    "source or view",
                    t,
                    tables.iter().copied(),
                );
                let what = "`targets:` names a source or view with columns period and target (optionally red_flag, kpi_id and the KPI's dimensions)";
                problem.hint = Some(
                    match problem.hint.filter(|h| h.starts_with("did you mean")) {
                        Some(near) => format!("{near} {what}"),
                        None => what.to_string(),
                    },
                );
                problems.push(problem);
            }
            match check_kpi(kpi, &path, &root, &scorecard) {
                Ok(k) => kpis.push(k),
                Err(mut p) => problems.append(&mut p),
            }
        }

        let checks = check_checks(raw.checks, "checks", None, &mut problems);
        let quality = QualitySettings {
            on_failure: raw
                .quality
                .as_ref()
                .and_then(|q| q.on_failure)
                .unwrap_or_default(),
            sample_size: raw
                .quality
                .as_ref()
                .and_then(|q| q.sample_size)
                .unwrap_or(5),
        };

        let mut exports = Vec::new();
        for (i, export) in raw.exports.into_iter().enumerate() {
            let path = format!("exports[{i}].file");
            match interpolate(&export.file, &path) {
                Ok(file) if file.ends_with(".parquet") || file.ends_with(".json") => {
                    exports.push(Export {
                        file: root.join(file),
                        query: export.query,
                    })
                }
                Ok(file) => problems.push(
                    Problem::new(path, format!("`{file}` is neither .parquet nor .json"))
                        .hint("exports are written as Parquet (*.parquet) or a JSON array of rows (*.json)"),
                ),
                Err(p) => problems.push(p),
            }
        }

        if !problems.is_empty() {
            return Err(problems);
        }
        let state = match raw.state.as_deref() {
            None => crate::state::StateLocation::Sqlite(root.join(".kpiforge/state.db")),
            Some(text) => state_location(text, &root)?,
        };
        let scheduling = Scheduling {
            overlap: raw.overlap.unwrap_or_default(),
            catch_up: raw.catch_up.unwrap_or_default(),
            retries: raw.retries.unwrap_or(0),
            retry_delay: match raw
                .retry_delay
                .as_deref()
                .map(super::checks::parse_duration)
            {
                None => std::time::Duration::from_secs(30),
                Some(Ok(d)) => d,
                Some(Err(message)) => {
                    return Err(vec![
                        Problem::new("retry_delay", message).hint("write it like 30s or 5m"),
                    ]);
                }
            },
        };
        if let Some(cron) = &raw.schedule
            && let Err(message) = parse_cron(cron)
        {
            return Err(vec![Problem::new("schedule", message).hint(
                "six fields: second minute hour day-of-month month day-of-week, e.g. \"0 30 2 * * *\" for 02:30:00 daily",
            )]);
        }
        Ok(Pipeline {
            name: raw.name,
            description: raw.description,
            schedule: raw.schedule,
            scheduling,
            timezone,
            file: file.to_path_buf(),
            root,
            output,
            report: raw.report,
            incremental: raw.incremental,
            state,
            sources,
            views,
            scorecard,
            kpis,
            exports,
            checks,
            quality,
        })
    }

    /// The files its KPIs' and views' SQL is read from.
    pub fn sql_files(&self) -> Vec<PathBuf> {
        let kpis = self.kpis.iter().map(|k| k.sql_file.clone());
        kpis.chain(self.views.iter().filter_map(|v| v.sql_file.clone()))
            .collect()
    }

    /// This pipeline with each file source's pattern matched again: the files
    /// are those there now, not when the pipeline was loaded. A scheduler keeps
    /// a pipeline loaded for days; each of its runs must see the day's new
    /// files. Borrowed when no file list changed.
    pub fn relist_files(&self) -> Result<Cow<'_, Pipeline>, ConfigError> {
        let mut lists = Vec::new();
        let mut problems = Vec::new();
        for (i, source) in self.sources.iter().enumerate() {
            let SourceKind::File(file) = &source.kind else {
                continue;
            };
            match expand(&self.root, &file.pattern) {
                Ok(paths) if paths == file.paths => {}
                Ok(paths) => lists.push((i, paths)),
                Err(message) => problems.push(
                    Problem::new(format!("sources.{}.file", source.name), message).hint(
                        "the files are listed again when each run starts: put them back, or change the pattern",
                    ),
                ),
            }
        }
        if !problems.is_empty() {
            super::locate(&self.file, &mut problems);
            return Err(ConfigError {
                file: self.file.clone(),
                pipeline: Some(self.name.clone()),
                problems,
            });
        }
        if lists.is_empty() {
            return Ok(Cow::Borrowed(self));
        }
        let mut pipeline = self.clone();
        for (i, paths) in lists {
            if let SourceKind::File(file) = &mut pipeline.sources[i].kind {
                file.paths = paths;
            }
        }
        Ok(Cow::Owned(pipeline))
    }
}

fn check_source(name: &str, mut raw: RawSource, root: &Path) -> Result<Source, Vec<Problem>> {
    let path = format!("sources.{name}");
    let mut problems = Vec::new();
    if !is_identifier(name) {
        problems.push(identifier_problem(&path, name));
    }
    let kinds = [
        raw.file.is_some(),
        raw.postgres.is_some(),
        raw.mysql.is_some(),
        raw.sqlite.is_some(),
        raw.http.is_some(),
    ];
    match kinds.iter().filter(|k| **k).count() {
        1 => {}
        0 => {
            problems.push(Problem::new(&path, "the source names no kind").hint(
                "add one of `file: data.csv`, `postgres: {url, table}`, `mysql: {url, table}`, \
                 `sqlite: {path, table}` or `http: {url}`",
            ));
            return Err(problems);
        }
        _ => {
            problems.push(
                Problem::new(&path, "a source names exactly one kind")
                    .hint("split it into two sources"),
            );
            return Err(problems);
        }
    }
    let incremental = raw.incremental.take().map(|i| Incremental {
        column: i.column,
        param: i.param,
    });
    if raw.file.is_none() {
        return check_remote_source(name, raw, incremental, &path, root, problems);
    }
    if incremental.is_some() {
        problems.push(
            Problem::new(format!("{path}.incremental"), "file sources are read whole")
                .hint("`incremental:` applies to database and HTTP sources"),
        );
    }
    let Some(pattern) = raw.file else {
        return Err(problems);
    };
    let file_path = format!("{path}.file");
    let pattern = interpolate(&pattern, &file_path).map_err(|p| vec![p])?;
    let format = match raw.format.or_else(|| format_from_extension(&pattern)) {
        Some(f) => f,
        None => {
            problems.push(
                Problem::new(
                    &file_path,
                    format!("cannot tell the format of `{pattern}` from its extension"),
                )
                .hint("add `format: csv` (or parquet, json, ndjson)"),
            );
            FileFormat::Csv
        }
    };
    let paths = match expand(root, &pattern) {
        Ok(paths) => paths,
        Err(message) => {
            problems
                .push(Problem::new(&file_path, message).hint(
                    "paths are relative to the project root (the folder above `pipelines/`)",
                ));
            Vec::new()
        }
    };
    if raw.csv.is_some() && format != FileFormat::Csv {
        problems.push(Problem::new(
            format!("{path}.csv"),
            "`csv:` options apply only to CSV files",
        ));
    }
    if !raw.columns.is_empty() && format == FileFormat::Parquet {
        problems.push(
            Problem::new(
                format!("{path}.columns"),
                "Parquet files carry their own column types",
            )
            .hint("remove `columns:`, or cast in a view: `SELECT CAST(x AS DOUBLE) AS x FROM ...`"),
        );
    }
    let mut csv = raw.csv.unwrap_or(CsvOptions {
        header: true,
        delimiter: None,
        quote: None,
        escape: None,
        null_values: None,
    });
    if csv.delimiter.is_none() && pattern.ends_with(".tsv") {
        csv.delimiter = Some('\t');
    }
    for (field, c) in [
        ("delimiter", csv.delimiter),
        ("quote", csv.quote),
        ("escape", csv.escape),
    ] {
        if c.is_some_and(|c| !c.is_ascii()) {
            problems.push(Problem::new(
                format!("{path}.csv.{field}"),
                "must be a single ASCII character",
            ));
        }
    }
    let mut columns = Vec::new();
    for (column, type_name) in raw.columns {
        match parse_type(&type_name) {
            Ok(t) => columns.push((column, t)),
            Err(message) => problems.push(Problem::new(format!("{path}.columns.{column}"), message)
                .hint("use one of: boolean, int, bigint, double, decimal(p,s), varchar, date, timestamp, timestamptz")),
        }
    }
    let checks = check_checks(
        raw.checks,
        &format!("{path}.checks"),
        Some(name),
        &mut problems,
    );
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Source {
        name: name.to_string(),
        description: raw.description,
        key: raw.key,
        checks,
        quarantine: raw.quarantine,
        incremental: None,
        kind: SourceKind::File(FileSource {
            pattern,
            paths,
            format,
            csv,
            columns,
        }),
    })
}

/// A database or HTTP source (exactly one of their keys is set).
fn check_remote_source(
    name: &str,
    raw: RawSource,
    incremental: Option<Incremental>,
    path: &str,
    root: &Path,
    mut problems: Vec<Problem>,
) -> Result<Source, Vec<Problem>> {
    let database = [
        (DatabaseKind::Postgres, raw.postgres),
        (DatabaseKind::Mysql, raw.mysql),
        (DatabaseKind::Sqlite, raw.sqlite),
    ]
    .into_iter()
    .find_map(|(kind, cfg)| cfg.map(|cfg| (kind, cfg)));
    let kind = match (database, raw.http) {
        (Some((kind, cfg)), _) => {
            let here = format!("{path}.{}", kind.name());
            if !raw.columns.is_empty() {
                problems.push(
                    Problem::new(format!("{path}.columns"), "database columns carry their own types")
                        .hint("cast in the query instead: `query: SELECT CAST(x AS numeric(12,2)) AS x FROM t`"),
                );
            }
            check_database(kind, cfg, &here, root, &mut problems).map(SourceKind::Database)
        }
        (None, Some(cfg)) => {
            let here = format!("{path}.http");
            check_http(cfg, &raw.columns, &here, &mut problems).map(SourceKind::Http)
        }
        (None, None) => None,
    };
    if let Some(inc) = &incremental
        && inc.param.is_some()
        && !matches!(kind, Some(SourceKind::Http(_)))
    {
        problems.push(Problem::new(
            format!("{path}.incremental.param"),
            "`param:` applies to HTTP sources (databases get a WHERE clause)",
        ));
    }
    if raw.csv.is_some() || raw.format.is_some() {
        problems.push(Problem::new(
            path,
            "`csv:` and `format:` apply only to file sources",
        ));
    }
    let checks = check_checks(
        raw.checks,
        &format!("{path}.checks"),
        Some(name),
        &mut problems,
    );
    match kind {
        Some(kind) if problems.is_empty() => Ok(Source {
            name: name.to_string(),
            description: raw.description,
            key: raw.key,
            checks,
            quarantine: raw.quarantine,
            incremental,
            kind,
        }),
        _ => Err(problems),
    }
}

fn format_from_extension(path: &str) -> Option<FileFormat> {
    let ext = Path::new(path).extension()?.to_str()?.to_ascii_lowercase();
    match ext.as_str() {
        "csv" | "tsv" => Some(FileFormat::Csv),
        "parquet" | "pq" => Some(FileFormat::Parquet),
        "json" => Some(FileFormat::Json),
        "ndjson" | "jsonl" => Some(FileFormat::Ndjson),
        _ => None,
    }
}

/// The files a path or glob names, sorted; an error when there are none.
fn expand(root: &Path, pattern: &str) -> Result<Vec<PathBuf>, String> {
    let full = root.join(pattern);
    let text = full.to_string_lossy();
    if !text.contains(['*', '?', '[']) {
        return if full.is_file() {
            Ok(vec![full])
        } else {
            Err(format!(
                "file `{pattern}` not found (looked at {})",
                full.display()
            ))
        };
    }
    let entries =
        glob::glob(&text).map_err(|e| format!("`{pattern}` is not a valid glob: {}", e.msg))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(format!(
            "no file matches `{pattern}` (looked in {})",
            root.display()
        ));
    }
    Ok(paths)
}

/// Parses a declared column type: SQL names (`bigint`, `decimal(12,2)`, `timestamp`).
pub fn parse_type(name: &str) -> Result<DataType, String> {
    let lower = name.trim().to_ascii_lowercase();
    let t = match lower.as_str() {
        "boolean" | "bool" => DataType::Boolean,
        "smallint" | "int16" => DataType::Int16,
        "int" | "integer" | "int32" => DataType::Int32,
        "bigint" | "int64" | "long" => DataType::Int64,
        "real" | "float" | "float32" => DataType::Float32,
        "double" | "float64" => DataType::Float64,
        "varchar" | "text" | "string" | "utf8" => DataType::Utf8,
        "date" => DataType::Date32,
        "timestamp" => DataType::Timestamp(TimeUnit::Microsecond, None),
        "timestamptz" | "timestamp with time zone" => {
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        }
        _ => return parse_decimal(&lower).ok_or_else(|| format!("unknown column type `{name}`")),
    };
    Ok(t)
}

fn parse_decimal(lower: &str) -> Option<DataType> {
    let inner = lower
        .strip_prefix("decimal")
        .or_else(|| lower.strip_prefix("numeric"))?;
    let inner = inner.trim().strip_prefix('(')?.strip_suffix(')')?;
    let (p, s) = inner.split_once(',')?;
    let (p, s): (u8, i8) = (p.trim().parse().ok()?, s.trim().parse().ok()?);
    (1..=38).contains(&p).then_some(())?;
    (0..=p as i8)
        .contains(&s)
        .then_some(DataType::Decimal128(p, s))
}

/// The checked scorecard, and whether its grain was declared (else the KPIs decide it).
struct CheckedScorecard {
    model: Scorecard,
    grain_declared: bool,
}

fn check_scorecard(raw: Option<RawScorecard>, problems: &mut Vec<Problem>) -> CheckedScorecard {
    let raw = raw.unwrap_or(RawScorecard {
        grain: None,
        rollup: None,
        perspectives: Vec::new(),
        objectives: Vec::new(),
        lint: None,
    });
    let mut perspectives: Vec<Perspective> = PERSPECTIVES
        .iter()
        .map(|(id, name)| Perspective {
            id: id.to_string(),
            name: name.to_string(),
            description: None,
            weight: 1.0,
            rollup: Rollup::default(),
        })
        .collect();
    let mut declared_ids: Vec<String> = Vec::new();
    for (i, p) in raw.perspectives.into_iter().enumerate() {
        let path = format!("scorecard.perspectives[{i}]");
        if !is_identifier(&p.id) {
            problems.push(identifier_problem(&format!("{path}.id"), &p.id));
        }
        let weight = check_weight(p.weight, &format!("{path}.weight"), problems);
        let existing = perspectives.iter().position(|q| q.id == p.id);
        if declared_ids.contains(&p.id) {
            problems.push(Problem::new(
                format!("{path}.id"),
                format!("perspective `{}` is declared twice", p.id),
            ));
        }
        declared_ids.push(p.id.clone());
        let declared = Perspective {
            name: p.name.unwrap_or_else(|| {
                existing.map_or_else(|| p.id.clone(), |i| perspectives[i].name.clone())
            }),
            id: p.id,
            description: p.description,
            weight,
            rollup: p.rollup.unwrap_or_default(),
        };
        match existing {
            Some(i) => perspectives[i] = declared,
            None => perspectives.push(declared),
        }
    }

    let objectives = raw.objectives;
    let ids: HashSet<&str> = objectives.iter().map(|o| o.id.as_str()).collect();
    for (i, o) in objectives.iter().enumerate() {
        let path = format!("scorecard.objectives[{i}]");
        if objectives[..i].iter().any(|p| p.id == o.id) {
            problems.push(Problem::new(
                format!("{path}.id"),
                format!("objective id `{}` is used twice", o.id),
            ));
        }
        if !perspectives.iter().any(|p| p.id == o.perspective) {
            let mut problem = unknown(
                &format!("{path}.perspective"),
                "perspective",
                &o.perspective,
                perspectives.iter().map(|p| p.id.as_str()),
            );
            if let Some(known) = problem
                .hint
                .as_deref()
                .and_then(|h| h.strip_prefix("known: "))
            {
                problem.hint = Some(format!(
                    "known: {known}; a custom perspective is declared under `scorecard: perspectives:`"
                ));
            }
            problems.push(problem);
        }
        for (j, cause) in o.causes.iter().enumerate() {
            if !ids.contains(cause.as_str()) {
                problems.push(unknown(
                    &format!("{path}.causes[{j}]"),
                    "objective",
                    cause,
                    ids.iter().copied(),
                ));
            }
        }
    }
    if let Some(cycle) = find_cycle(&objectives) {
        let index = objectives
            .iter()
            .position(|o| o.id == cycle[0])
            .unwrap_or(0);
        problems.push(
            Problem::new(
                format!("scorecard.objectives[{index}].causes"),
                format!("the strategy map has a cycle: {}", cycle.join(" -> ")),
            )
            .hint("cause-and-effect links must flow one way; remove one link of the cycle"),
        );
    }
    let objectives = objectives
        .into_iter()
        .enumerate()
        .map(|(i, o)| Objective {
            weight: check_weight(
                o.weight,
                &format!("scorecard.objectives[{i}].weight"),
                problems,
            ),
            rollup: o.rollup.unwrap_or_default(),
            name: o.name.unwrap_or_else(|| o.id.clone()),
            id: o.id,
            perspective: o.perspective,
            description: o.description,
            causes: o.causes,
        })
        .collect();

    let defaults = LintSettings::default();
    let lint = match raw.lint {
        None => defaults,
        Some(l) => {
            if l.stale_periods.is_some_and(|n| !(1..=1000).contains(&n)) {
                problems.push(Problem::new(
                    "scorecard.lint.stale_periods",
                    "must be from 1 to 1000",
                ));
            }
            LintSettings {
                max_kpis_per_perspective: l
                    .max_kpis_per_perspective
                    .unwrap_or(defaults.max_kpis_per_perspective),
                max_objectives: l.max_objectives.unwrap_or(defaults.max_objectives),
                stale_periods: l.stale_periods.unwrap_or(defaults.stale_periods),
                allow: l.allow,
            }
        }
    };
    CheckedScorecard {
        model: Scorecard {
            grain: raw.grain.unwrap_or(Grain::Month),
            rollup: raw.rollup.unwrap_or_default(),
            perspectives,
            objectives,
            lint,
        },
        grain_declared: raw.grain.is_some(),
    }
}

/// A roll-up weight: a number from 0 to 1e6 (weights are relative), default 1.
fn check_weight(weight: Option<f64>, path: &str, problems: &mut Vec<Problem>) -> f64 {
    match weight {
        None => 1.0,
        Some(w) if (0.0..=1e6).contains(&w) => w,
        Some(w) => {
            problems.push(
                Problem::new(
                    path,
                    format!("weight {w} must be a number from 0 to 1000000"),
                )
                .hint("weights are relative: 2 counts twice as much as 1"),
            );
            1.0
        }
    }
}

/// A cycle of `causes:` links, as `[a, b, c, a]`, if there is one.
fn find_cycle(objectives: &[raw::RawObjective]) -> Option<Vec<String>> {
    let edges: HashMap<&str, &[String]> = objectives
        .iter()
        .map(|o| (o.id.as_str(), o.causes.as_slice()))
        .collect();
    // 0 = unvisited, 1 = on the current path, 2 = done.
    let mut state: HashMap<&str, u8> = HashMap::new();
    fn visit<'a>(
        node: &'a str,
        edges: &HashMap<&'a str, &'a [String]>,
        state: &mut HashMap<&'a str, u8>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        match state.get(node) {
            Some(2) => return None,
            Some(1) => {
                let start = path.iter().position(|n| *n == node)?;
                let mut cycle: Vec<String> = path[start..].iter().map(|s| s.to_string()).collect();
                cycle.push(node.to_string());
                return Some(cycle);
            }
            _ => {}
        }
        state.insert(node, 1);
        path.push(node);
        for next in edges.get(node).copied().unwrap_or_default() {
            if let Some(c) = visit(next, edges, state, path) {
                return Some(c);
            }
        }
        path.pop();
        state.insert(node, 2);
        None
    }
    objectives
        .iter()
        .find_map(|o| visit(&o.id, &edges, &mut state, &mut Vec::new()))
}

fn check_kpi(
    raw: RawKpi,
    path: &str,
    root: &Path,
    scorecard: &Scorecard,
) -> Result<Kpi, Vec<Problem>> {
    let objectives = &scorecard.objectives;
    let mut problems = Vec::new();
    if !is_identifier(&raw.id) {
        problems.push(identifier_problem(&format!("{path}.id"), &raw.id));
    }
    let perspective = match &raw.objective {
        None => None,
        Some(id) => match objectives.iter().find(|o| &o.id == id) {
            Some(o) => Some(o.perspective.clone()),
            None => {
                let mut p = unknown(
                    &format!("{path}.objective"),
                    "objective",
                    id,
                    objectives.iter().map(|o| o.id.as_str()),
                );
                if objectives.is_empty() {
                    p = p.hint("declare it under `scorecard: objectives:`");
                }
                problems.push(p);
                None
            }
        },
    };
    let sql = read_sql(root, &raw.sql, &format!("{path}.sql"));
    let weight = check_weight(raw.weight, &format!("{path}.weight"), &mut problems);
    for (key, v) in [("target", raw.target), ("red_flag", raw.red_flag)] {
        if v.is_some_and(|v| !v.is_finite()) {
            problems.push(Problem::new(
                format!("{path}.{key}"),
                format!("{key} must be a finite number"),
            ));
        }
    }
    let scoring = check_scoring(&raw, path, &mut problems);
    for (i, d) in raw.dimensions.iter().enumerate() {
        if ["period", "value", "numerator", "denominator"].contains(&d.as_str())
            || raw.dimensions[..i].contains(d)
        {
            problems.push(Problem::new(format!("{path}.dimensions[{i}]"), format!("`{d}` cannot be a dimension here"))
                .hint("dimensions are distinct columns other than period, value, numerator and denominator"));
        }
    }
    let (sql, sql_file) = match sql {
        Ok(ok) => ok,
        Err(p) => {
            problems.push(p);
            return Err(problems);
        }
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    let definition_hash = {
        let mut h = Sha256::new();
        h.update(sql.as_bytes());
        h.update(raw.grain.as_str().as_bytes());
        for d in &raw.dimensions {
            h.update(b"\0");
            h.update(d.as_bytes());
        }
        h.finalize()
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    Ok(Kpi {
        name: raw.name.unwrap_or_else(|| raw.id.clone()),
        id: raw.id,
        description: raw.description,
        objective: raw.objective,
        perspective,
        sql,
        sql_file,
        grain: raw.grain,
        dimensions: raw.dimensions,
        unit: raw.unit,
        owner: raw.owner,
        direction: raw.direction,
        target: raw.target,
        red_flag: raw.red_flag,
        weight,
        scoring,
        targets: raw.targets,
        aggregation: raw.aggregation,
        definition_hash,
    })
}

/// Checks that a KPI's scoring method has what it needs and that its settings agree.
fn check_scoring(raw: &RawKpi, path: &str, problems: &mut Vec<Problem>) -> Scoring {
    let method = raw.scoring.unwrap_or(if raw.thresholds.is_some() {
        ScoringMethod::Thresholds
    } else {
        ScoringMethod::GoalRedFlag
    });
    let at = |key: &str| format!("{path}.{key}");
    let mut fail = |key: &str, message: String, hint: &str| {
        problems.push(Problem::new(at(key), message).hint(hint));
    };
    if raw.targets.is_some() && raw.target.is_some() {
        fail(
            "target",
            "`target:` and `targets:` both give this KPI's target".into(),
            "keep one: a constant `target:`, or `targets:` naming a table of targets per period",
        );
    }
    if raw.thresholds.is_some() && method != ScoringMethod::Thresholds {
        fail(
            "thresholds",
            format!(
                "`thresholds:` is not used by `scoring: {}`",
                method_name(method)
            ),
            "remove `thresholds:`, or set `scoring: thresholds`",
        );
    }
    match method {
        ScoringMethod::GoalRedFlag => {
            if raw.direction == Some(Direction::TargetBand) {
                fail(
                    "direction",
                    "a target band needs `scoring: thresholds`".into(),
                    "list the band as points, best score in the middle: `thresholds: [[90, 0], [100, 100], [110, 0]]`",
                );
            }
            let table = raw.targets.is_some();
            match (raw.target, raw.red_flag) {
                (Some(_), None) if !table => fail(
                    "red_flag",
                    "goal/red-flag scoring needs a `red_flag:` beside `target:`".into(),
                    "add `red_flag:` (the value where the KPI turns red), or use `scoring: percent_of_target`",
                ),
                (None, Some(_)) if !table => fail(
                    "target",
                    "`red_flag:` is set but `target:` is not".into(),
                    "add `target:` (the value where the KPI turns green)",
                ),
                (Some(t), Some(r)) if t == r => fail(
                    "red_flag",
                    format!("target and red flag are both {t}: the score has no slope"),
                    "set the red flag where the KPI turns red, apart from the target",
                ),
                (Some(t), Some(r)) => {
                    let implied = if t > r {
                        Direction::HigherIsBetter
                    } else {
                        Direction::LowerIsBetter
                    };
                    if let Some(d) = raw
                        .direction
                        .filter(|d| *d != implied && *d != Direction::TargetBand)
                    {
                        fail(
                            "direction",
                            format!(
                                "direction is {} but target {t} and red flag {r} say {}",
                                d.as_str(),
                                implied.as_str()
                            ),
                            "for higher-is-better the target is above the red flag; for lower-is-better below it",
                        );
                    }
                }
                _ => {}
            }
            Scoring::GoalRedFlag
        }
        ScoringMethod::PercentOfTarget => {
            if raw.direction == Some(Direction::TargetBand) {
                fail(
                    "direction",
                    "a target band needs `scoring: thresholds`".into(),
                    "list the band as points, best score in the middle: `thresholds: [[90, 0], [100, 100], [110, 0]]`",
                );
            }
            if raw.red_flag.is_some() {
                fail(
                    "red_flag",
                    "`red_flag:` is not used by `scoring: percent_of_target`".into(),
                    "remove it, or use `scoring: goal_red_flag`",
                );
            }
            Scoring::PercentOfTarget
        }
        ScoringMethod::Thresholds => {
            let points = raw.thresholds.clone().unwrap_or_default();
            if points.len() < 2 {
                fail(
                    "thresholds",
                    "`scoring: thresholds` needs at least two `[value, score]` points".into(),
                    "e.g. `thresholds: [[80, 0], [95, 66.7], [100, 100]]`",
                );
            }
            if let Some(w) = points
                .windows(2)
                .find(|w| w[0].0.partial_cmp(&w[1].0) != Some(std::cmp::Ordering::Less))
            {
                fail(
                    "thresholds",
                    format!(
                        "threshold values must increase: {} is followed by {}",
                        w[0].0, w[1].0
                    ),
                    "list the points from the lowest value to the highest; the scores say which way is better",
                );
            }
            if let Some((v, s)) = points
                .iter()
                .find(|(v, s)| !v.is_finite() || !(0.0..=100.0).contains(s))
            {
                fail(
                    "thresholds",
                    format!("point [{v}, {s}]: scores run from 0 to 100"),
                    "red is below 33.3, amber below 66.7, green from 66.7",
                );
            }
            if raw.red_flag.is_some() {
                fail(
                    "red_flag",
                    "`red_flag:` is not used by `scoring: thresholds`".into(),
                    "put the red flag among the threshold points, at score 33.3",
                );
            }
            Scoring::Thresholds(points)
        }
    }
}

fn method_name(method: ScoringMethod) -> &'static str {
    match method {
        ScoringMethod::GoalRedFlag => "goal_red_flag",
        ScoringMethod::Thresholds => "thresholds",
        ScoringMethod::PercentOfTarget => "percent_of_target",
    }
}

fn read_sql(root: &Path, file: &str, path: &str) -> Result<(String, PathBuf), Problem> {
    let full = root.join(interpolate(file, path)?);
    match std::fs::read_to_string(&full) {
        Ok(sql) if sql.trim().is_empty() => {
            Err(Problem::new(path, format!("SQL file `{file}` is empty")))
        }
        Ok(sql) => Ok((sql, full)),
        Err(e) => Err(Problem::new(
            path,
            format!("cannot read SQL file `{file}` ({}): {e}", full.display()),
        )
        .hint("paths are relative to the project root (the folder above `pipelines/`)")),
    }
}

/// "unknown X `y`", with the closest known name when one is near.
pub(crate) fn unknown<'a>(
    path: &str,
    what: &str,
    name: &str,
    known: impl Iterator<Item = &'a str>,
) -> Problem {
    let known: Vec<&str> = {
        let mut k: Vec<&str> = known.collect();
        k.sort_unstable();
        k
    };
    let problem = Problem::new(path, format!("unknown {what} `{name}`"));
    match closest(name, known.iter().copied()) {
        Some(best) => problem.hint(format!("did you mean `{best}`?")),
        None if known.is_empty() => problem,
        None => problem.hint(format!("known: {}", known.join(", "))),
    }
}

/// The candidate nearest to `name`, if it is near enough to be a typo.
pub(crate) fn closest<'a>(
    name: &str,
    candidates: impl Iterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .map(|c| (strsim::jaro_winkler(name, c), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

fn identifier_problem(path: &str, name: &str) -> Problem {
    Problem::new(path, format!("`{name}` is not a valid name")).hint(
        "names are letters, digits and `_`, starting with a letter: they become SQL table names",
    )
}

/// `state:`: a file path or a `postgres://` URL, `${VAR}` interpolated.
fn state_location(text: &str, root: &Path) -> Result<crate::state::StateLocation, Vec<Problem>> {
    let text = interpolate(text, "state").map_err(|p| vec![p])?;
    crate::state::StateLocation::parse(&text, root).map_err(|message| {
        vec![Problem::new("state", message).hint(
            "write a file path such as .kpiforge/state.db, or postgres://user:password@host:5432/database",
        )]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_declared_types() {
        assert_eq!(
            parse_type("decimal(12, 2)"),
            Ok(DataType::Decimal128(12, 2))
        );
        assert_eq!(parse_type("BIGINT"), Ok(DataType::Int64));
        assert_eq!(parse_type("date"), Ok(DataType::Date32));
        assert!(parse_type("decimal(40,2)").is_err());
        assert!(parse_type("money").is_err());
    }

    #[test]
    fn relisting_sees_new_and_lost_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("data")).unwrap();
        std::fs::write(root.join("data/s1.csv"), "a\n1\n").unwrap();
        let yaml = "name: p\noutput: out\nsources:\n  s: {file: data/s*.csv}\nkpis: []\n";
        let pipeline = crate::config::parse(yaml, &root.join("pipelines/p.yaml")).unwrap();
        let paths = |p: &Pipeline| match &p.sources[0].kind {
            SourceKind::File(f) => f.paths.clone(),
            _ => unreachable!(),
        };
        assert!(matches!(pipeline.relist_files(), Ok(Cow::Borrowed(_))));
        std::fs::write(root.join("data/s2.csv"), "a\n2\n").unwrap();
        let relisted = pipeline.relist_files().unwrap();
        assert_eq!(
            paths(&relisted),
            [root.join("data/s1.csv"), root.join("data/s2.csv")]
        );
        std::fs::remove_file(root.join("data/s1.csv")).unwrap();
        std::fs::remove_file(root.join("data/s2.csv")).unwrap();
        let error = pipeline.relist_files().unwrap_err();
        assert_eq!(error.problems[0].path, "sources.s.file");
        assert!(
            error.problems[0]
                .message
                .contains("no file matches `data/s*.csv`")
        );
    }

    #[test]
    fn state_is_a_path_or_a_postgres_url() {
        use crate::state::StateLocation;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        std::fs::write(dir.path().join("data/s.csv"), "a\n1\n").unwrap();
        let root = dir.path();
        let file = root.join("pipelines/p.yaml");
        let state = |line: &str| {
            let yaml = format!(
                "name: p\noutput: out\n{line}sources:\n  s: {{file: data/s.csv}}\nkpis: []\n"
            );
            crate::config::parse(&yaml, &file)
                .map(|p| p.state)
                .map_err(|(_, problems)| format!("{problems:?}"))
        };
        assert_eq!(
            state(""),
            Ok(StateLocation::Sqlite(root.join(".kpiforge/state.db")))
        );
        assert_eq!(
            state("state: var/kpf.db\n"),
            Ok(StateLocation::Sqlite(root.join("var/kpf.db")))
        );
        let pg = state("state: \"postgres://kpf:s3cret@db:5432/ops\"\n").unwrap();
        assert_eq!(
            pg,
            StateLocation::Postgres {
                url: "postgres://kpf:s3cret@db:5432/ops".into(),
                cache: root.join(".kpiforge"),
            }
        );
        assert_eq!(pg.to_string(), "postgres://kpf@db:5432/ops");
        assert!(matches!(
            state("state: postgresql://db/ops\n"),
            Ok(StateLocation::Postgres { .. })
        ));
        let mysql = state("state: \"mysql://root:pw@db/ops\"\n").unwrap_err();
        assert!(mysql.contains("mysql://root@db/ops"), "{mysql}");
        assert!(!mysql.contains("pw"), "{mysql}");
        let unset = state("state: \"${KPF_UNIT_STATE_UNSET_VAR}\"\n").unwrap_err();
        assert!(unset.contains("KPF_UNIT_STATE_UNSET_VAR"), "{unset}");
    }

    #[test]
    fn project_root_is_above_pipelines() {
        assert_eq!(
            project_root(Path::new("pipelines/demo.yaml")),
            PathBuf::from(".")
        );
        assert_eq!(
            project_root(Path::new("/a/b/pipelines/x.yaml")),
            PathBuf::from("/a/b")
        );
        assert_eq!(
            project_root(Path::new("/a/b/x.yaml")),
            PathBuf::from("/a/b")
        );
        assert_eq!(project_root(Path::new("x.yaml")), PathBuf::from("."));
    }

    #[test]
    fn closest_finds_typos_only() {
        let keys = ["target", "red_flag", "weight"];
        assert_eq!(closest("tagret", keys.iter().copied()), Some("target"));
        assert_eq!(closest("zzz", keys.iter().copied()), None);
    }
}
