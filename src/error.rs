//! The library's error: one variant per stage, and the exit code each maps to.

use crate::config::ConfigError;
use crate::kpi::KpiError;
use crate::publish::PublishError;
use crate::quality::QualityError;
use crate::score::ScoreError;
use crate::source::SourceError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Kpi(#[from] KpiError),
    #[error(transparent)]
    Score(#[from] ScoreError),
    #[error(transparent)]
    Quality(#[from] QualityError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// A command-line value that cannot be used.
    #[error("{0}")]
    Usage(String),
}

/// Exit codes, a documented contract (README.md).
pub mod exit {
    pub const SUCCESS: i32 = 0;
    /// The run started but failed: unreadable data, a query that fails, an unwritable output.
    pub const RUN_FAILED: i32 = 1;
    /// Bad arguments or configuration: nothing was run.
    pub const CONFIG: i32 = 2;
    /// The run finished, but an `error` check failed: the KPIs reading the
    /// failed sources were published as blocked (or withheld).
    pub const CHECKS_FAILED: i32 = 3;
}

impl Error {
    /// Whether the message names the pipeline already, as a config error's
    /// does (`pipeline `p` (pipelines/p.yaml): ...`).
    pub fn names_pipeline(&self) -> bool {
        matches!(
            self,
            Error::Config(_) | Error::Source(SourceError::Listing(_))
        )
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) | Error::Usage(_) => exit::CONFIG,
            Error::Kpi(e) if e.is_definition_error() => exit::CONFIG,
            Error::Score(e) if e.is_definition_error() => exit::CONFIG,
            Error::Source(e) if e.is_config() => exit::CONFIG,
            _ => exit::RUN_FAILED,
        }
    }
}
