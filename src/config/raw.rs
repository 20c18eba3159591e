//! The pipeline file as written: serde types that reject unknown keys. Nothing
//! here is checked beyond its shape; `model.rs` turns it into a checked `Pipeline`.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPipeline {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Cron with seconds; read by the scheduler.
    #[serde(default)]
    pub schedule: Option<String>,
    #[serde(default)]
    pub timezone: Option<String>,
    pub output: String,
    pub sources: BTreeMap<String, RawSource>,
    #[serde(default)]
    pub views: BTreeMap<String, RawView>,
    #[serde(default)]
    pub scorecard: Option<RawScorecard>,
    #[serde(default)]
    pub kpis: Vec<RawKpi>,
    #[serde(default)]
    pub exports: Vec<RawExport>,
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

/// A source names exactly one kind key (`file:` today; databases and APIs add theirs).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    #[serde(default)]
    pub description: Option<String>,
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
    #[serde(default)]
    pub objectives: Vec<RawObjective>,
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
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

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::HigherIsBetter => "higher_is_better",
            Direction::LowerIsBetter => "lower_is_better",
            Direction::TargetBand => "target_band",
        }
    }
}
