//! The pipeline file as written: serde types that reject unknown keys. Nothing
//! here is checked beyond its shape; `model.rs` turns it into a checked `Pipeline`.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::connect::{RawDatabase, RawHttp, RawIncremental};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPipeline {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Cron with seconds; read by the scheduler.
    #[serde(default)]
    pub schedule: Option<String>,
    /// A fire while the previous run is still going: `skip` (default) or `queue`.
    #[serde(default)]
    pub overlap: Option<Overlap>,
    /// Fires missed while the scheduler was down: `none` (default), `latest` or `all`.
    #[serde(default)]
    pub catch_up: Option<CatchUp>,
    /// Scheduled runs that fail are tried again this many times (default 0).
    #[serde(default)]
    pub retries: Option<u32>,
    /// The wait before the first retry, doubling after each (default 30s).
    #[serde(default)]
    pub retry_delay: Option<String>,
    #[serde(default)]
    pub timezone: Option<String>,
    pub output: String,
    /// Write the HTML scorecard beside the datasets after each run.
    #[serde(default)]
    pub report: bool,
    /// Keep KPI aggregates between runs and bring them up to date with the
    /// Parquet files appended since, instead of recomputing them.
    #[serde(default)]
    pub incremental: bool,
    /// The state store: a file relative to the project root (default
    /// `.kpiforge/state.db`) or a `postgres://` URL; `${VAR}` is interpolated.
    #[serde(default)]
    pub state: Option<String>,
    pub sources: BTreeMap<String, RawSource>,
    #[serde(default)]
    pub views: BTreeMap<String, RawView>,
    #[serde(default)]
    pub scorecard: Option<RawScorecard>,
    #[serde(default)]
    pub kpis: Vec<RawKpi>,
    #[serde(default)]
    pub exports: Vec<RawExport>,
    /// Checks across sources (relationships, reconciliations).
    #[serde(default)]
    pub checks: Vec<RawCheck>,
    #[serde(default)]
    pub quality: Option<RawQuality>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// The fire is skipped (and logged) while the previous run goes on.
    #[default]
    Skip,
    /// The fire waits for the previous run, then runs.
    Queue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// Missed fires are forgotten.
    #[default]
    None,
    /// One run for the most recent missed fire.
    Latest,
    /// One run per missed fire, oldest first.
    All,
}

/// What a failed `error` check does to the KPIs that read its source.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQuality {
    #[serde(default)]
    pub on_failure: Option<OnFailure>,
    /// Failing rows kept as a sample per check (default 5).
    #[serde(default)]
    pub sample_size: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Publish the blocked KPIs' values with `quality_status = failed` and no score.
    #[default]
    Flag,
    /// Publish no values for the blocked KPIs.
    Withhold,
}

/// One check: a single key naming its type, with a column, a list of columns,
/// or its settings: `not_null: id`, `unique: [a, b]`, `between: {column: x, min: 0}`.
#[derive(Debug, Clone)]
pub struct RawCheck {
    /// One of [`CHECK_TYPES`].
    pub kind: &'static str,
    pub body: CheckBody,
}

/// The check types, by the key that names them.
pub const CHECK_TYPES: [&str; 15] = [
    "row_count",
    "not_null",
    "completeness",
    "unique",
    "accepted_values",
    "between",
    "regex",
    "freshness",
    "schema",
    "relationship",
    "reconcile",
    "expression",
    "metric",
    "change",
    "anomaly",
];

impl<'de> Deserialize<'de> for RawCheck {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct OneKey;
        impl<'de> serde::de::Visitor<'de> for OneKey {
            type Value = RawCheck;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a check: one key naming its type, e.g. `unique: order_id`")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<RawCheck, A::Error> {
                use serde::de::Error;
                let Some(key) = map.next_key::<String>()? else {
                    return Err(A::Error::custom(
                        "a check needs its type as a key, e.g. `unique: order_id`",
                    ));
                };
                let kind = CHECK_TYPES
                    .iter()
                    .find(|k| **k == key)
                    .ok_or_else(|| A::Error::unknown_variant(&key, &CHECK_TYPES))?;
                let body = map.next_value::<CheckBody>()?;
                if let Some(extra) = map.next_key::<String>()? {
                    return Err(A::Error::custom(format!(
                        "`{extra}` beside `{kind}`: one check per list item; put settings inside it: `{kind}: {{column: ..., {extra}: ...}}`"
                    )));
                }
                Ok(RawCheck { kind, body })
            }
        }
        d.deserialize_map(OneKey)
    }
}

/// A check's body: shorthand (a column or a list of columns) or its settings.
#[derive(Debug, Clone)]
pub enum CheckBody {
    Column(String),
    Columns(Vec<String>),
    Args(Box<CheckArgs>),
}

/// Every setting any check takes; `model.rs` rejects those a type does not use.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckArgs {
    /// Names the check in results and history; defaults to `<type>_<column>`.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub severity: Option<Severity>,
    /// A SQL predicate: only the rows it holds for are checked.
    #[serde(default, rename = "where")]
    pub filter: Option<String>,
    /// Check each segment of these columns on its own.
    #[serde(default)]
    pub group_by: Vec<String>,
    /// Fraction of the checked rows that must pass (0 < mostly <= 1).
    #[serde(default)]
    pub mostly: Option<f64>,
    /// Rows allowed to fail, as a count.
    #[serde(default)]
    pub max_unexpected: Option<u64>,
    #[serde(default)]
    pub column: Option<String>,
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    #[serde(default)]
    pub values: Option<Vec<Literal>>,
    /// A number; for `between` also a date or text (`"2020-01-01"`).
    #[serde(default)]
    pub min: Option<Literal>,
    #[serde(default)]
    pub max: Option<Literal>,
    #[serde(default)]
    pub strict_min: bool,
    #[serde(default)]
    pub strict_max: bool,
    #[serde(default)]
    pub pattern: Option<String>,
    /// `36h`, `2d`, `90m`, `45s`.
    #[serde(default)]
    pub max_age: Option<String>,
    #[serde(default)]
    pub required: Vec<String>,
    #[serde(default)]
    pub types: BTreeMap<String, String>,
    #[serde(default)]
    pub forbidden: Vec<String>,
    /// `source.column`.
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default)]
    pub left: Option<String>,
    #[serde(default)]
    pub right: Option<String>,
    /// Relative tolerance of a reconciliation (0.001 = 0.1%).
    #[serde(default)]
    pub tolerance: Option<f64>,
    /// A row-level predicate (`expression`) or an aggregate (`metric`, `change`, `anomaly`).
    #[serde(default)]
    pub sql: Option<String>,
    /// Largest allowed relative change against the previous run (0.2 = 20%).
    #[serde(default)]
    pub max_change: Option<f64>,
    /// Largest allowed |z-score| against the last `runs` runs.
    #[serde(default)]
    pub max_z: Option<f64>,
    #[serde(default)]
    pub runs: Option<usize>,
    #[serde(default)]
    pub min_runs: Option<usize>,
}

/// An accepted value as written: text, a number or a boolean.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Literal {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    #[default]
    Error,
    Warn,
}

impl<'de> Deserialize<'de> for CheckBody {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Body;
        impl<'de> serde::de::Visitor<'de> for Body {
            type Value = CheckBody;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a column, a list of columns, or the check's settings")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<CheckBody, E> {
                Ok(CheckBody::Column(v.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> Result<CheckBody, A::Error> {
                Vec::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
                    .map(CheckBody::Columns)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<CheckBody, A::Error> {
                CheckArgs::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(|a| CheckBody::Args(Box::new(a)))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<CheckBody, E> {
                Ok(CheckBody::Args(Box::default()))
            }
        }
        d.deserialize_any(Body)
    }
}

/// A flat extract of the run's results for a tool that wants one file with its
/// own column names: SQL over the run's `kpi_values`, written to `file`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExport {
    /// A `.parquet` file, relative to the project root.
    pub file: String,
    /// SQL over the table `kpi_values` (this run's rows).
    pub query: String,
}

/// A source names exactly one kind key: `file:`, `postgres:`, `mysql:`, `sqlite:` or `http:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub postgres: Option<RawDatabase>,
    #[serde(default)]
    pub mysql: Option<RawDatabase>,
    #[serde(default)]
    pub sqlite: Option<RawDatabase>,
    #[serde(default)]
    pub http: Option<RawHttp>,
    /// Pull only rows past a watermark, appending them to a local cache.
    #[serde(default)]
    pub incremental: Option<RawIncremental>,
    /// A path or a glob, relative to the project root.
    #[serde(default)]
    pub file: Option<String>,
    #[serde(default)]
    pub format: Option<FileFormat>,
    #[serde(default)]
    pub csv: Option<CsvOptions>,
    /// Declared column types, overriding inference: `{amount: "decimal(12,2)"}`.
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
    /// The columns that identify a row, shown in samples of failing rows.
    #[serde(default)]
    pub key: Vec<String>,
    #[serde(default)]
    pub checks: Vec<RawCheck>,
    /// Write the rows that fail this source's row-level `error` checks to `quarantine/`.
    #[serde(default)]
    pub quarantine: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    Csv,
    Parquet,
    /// One JSON array of objects, or NDJSON: the first character decides.
    Json,
    Ndjson,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvOptions {
    #[serde(default = "yes")]
    pub header: bool,
    #[serde(default)]
    pub delimiter: Option<char>,
    #[serde(default)]
    pub quote: Option<char>,
    #[serde(default)]
    pub escape: Option<char>,
    /// Strings read as NULL, besides the empty field, which always is.
    #[serde(default)]
    pub null_values: Option<Vec<String>>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawView {
    /// A SQL file, relative to the project root.
    #[serde(default)]
    pub sql: Option<String>,
    /// Inline SQL instead of a file.
    #[serde(default)]
    pub query: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScorecard {
    /// The grain the scorecard is rolled up at; defaults to the KPIs' grain when
    /// they share one, else month.
    #[serde(default)]
    pub grain: Option<Grain>,
    /// How the overall score combines the perspectives.
    #[serde(default)]
    pub rollup: Option<Rollup>,
    /// Custom perspectives, or settings for the four classic ones.
    #[serde(default)]
    pub perspectives: Vec<RawPerspective>,
    #[serde(default)]
    pub objectives: Vec<RawObjective>,
    #[serde(default)]
    pub lint: Option<RawLint>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPerspective {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub weight: Option<f64>,
    #[serde(default)]
    pub rollup: Option<Rollup>,
}

/// Scorecard lint settings: the limits, and the rules a team has chosen to allow.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLint {
    #[serde(default)]
    pub max_kpis_per_perspective: Option<usize>,
    #[serde(default)]
    pub max_objectives: Option<usize>,
    /// A KPI with no value in this many of its latest periods is stale.
    #[serde(default)]
    pub stale_periods: Option<u32>,
    #[serde(default)]
    pub allow: Vec<LintRule>,
}

/// The scorecard lint rules, by the name a warning prints and `allow:` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LintRule {
    KpiWithoutOwner,
    KpiWithoutTarget,
    KpiWithoutDirection,
    KpiWithoutUnit,
    KpiWithoutObjective,
    TooManyKpis,
    TooManyObjectives,
    EmptyPerspective,
    EmptyObjective,
    FinancialOnly,
    StaleKpi,
}

/// How a node of the scorecard combines its children's scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rollup {
    /// Weighted mean of the children that have a score (weights are relative).
    #[default]
    WeightedMean,
    /// The lowest child score: a chain is as strong as its weakest link.
    WorstChild,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawObjective {
    pub id: String,
    pub perspective: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// Objectives this one drives (cause -> effect).
    #[serde(default)]
    pub causes: Vec<String>,
    #[serde(default)]
    pub weight: Option<f64>,
    #[serde(default)]
    pub rollup: Option<Rollup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKpi {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub objective: Option<String>,
    pub sql: String,
    pub grain: Grain,
    #[serde(default)]
    pub dimensions: Vec<String>,
    #[serde(default)]
    pub unit: Option<String>,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub direction: Option<Direction>,
    #[serde(default)]
    pub target: Option<f64>,
    #[serde(default)]
    pub red_flag: Option<f64>,
    #[serde(default)]
    pub weight: Option<f64>,
    /// How a value becomes a score (default `goal_red_flag`).
    #[serde(default)]
    pub scoring: Option<ScoringMethod>,
    /// `[[value, score], ...]` for `scoring: thresholds`, values increasing.
    #[serde(default)]
    pub thresholds: Option<Vec<(f64, f64)>>,
    /// A source or view with targets per period (and segment).
    #[serde(default)]
    pub targets: Option<String>,
    /// How values combine into a coarser period (ratio KPIs sum their parts).
    #[serde(default)]
    pub aggregation: Option<Aggregation>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScoringMethod {
    GoalRedFlag,
    Thresholds,
    PercentOfTarget,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    Sum,
    Average,
    Last,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Grain {
    Day,
    Week,
    Month,
    Quarter,
    Year,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    HigherIsBetter,
    LowerIsBetter,
    TargetBand,
}

impl Grain {
    pub fn as_str(self) -> &'static str {
        match self {
            Grain::Day => "day",
            Grain::Week => "week",
            Grain::Month => "month",
            Grain::Quarter => "quarter",
            Grain::Year => "year",
        }
    }
}

impl Rollup {
    pub fn as_str(self) -> &'static str {
        match self {
            Rollup::WeightedMean => "weighted_mean",
            Rollup::WorstChild => "worst_child",
        }
    }
}

impl Aggregation {
    pub fn as_str(self) -> &'static str {
        match self {
            Aggregation::Sum => "sum",
            Aggregation::Average => "average",
            Aggregation::Last => "last",
        }
    }
}

impl LintRule {
    pub fn as_str(self) -> &'static str {
        match self {
            LintRule::KpiWithoutOwner => "kpi_without_owner",
            LintRule::KpiWithoutTarget => "kpi_without_target",
            LintRule::KpiWithoutDirection => "kpi_without_direction",
            LintRule::KpiWithoutUnit => "kpi_without_unit",
            LintRule::KpiWithoutObjective => "kpi_without_objective",
            LintRule::TooManyKpis => "too_many_kpis",
            LintRule::TooManyObjectives => "too_many_objectives",
            LintRule::EmptyPerspective => "empty_perspective",
            LintRule::EmptyObjective => "empty_objective",
            LintRule::FinancialOnly => "financial_only",
            LintRule::StaleKpi => "stale_kpi",
        }
    }
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::HigherIsBetter => "higher_is_better",
            Direction::LowerIsBetter => "lower_is_better",
            Direction::TargetBand => "target_band",
        }
    }
}
