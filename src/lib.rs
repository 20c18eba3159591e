//! kpiforge: scheduled KPI computation for data teams.
//!
//! A pipeline (YAML beside plain SQL files) pulls source tables, computes KPI
//! values with SQL in Apache DataFusion, scores them on a Balanced Scorecard and
//! publishes them as Parquet. The modules follow the data: [`config`] ->
//! [`source`] -> [`kpi`] -> [`score`] -> [`publish`], with [`report`] printing the
//! result; [`run`] strings them together, so one run reads top to bottom in
//! [`run::run`].

pub mod backfill;
pub mod config;
pub mod error;
#[cfg(feature = "polars")]
pub mod frames;
pub mod init;
pub mod kpi;
pub mod progress;
pub mod publish;
pub mod quality;
pub mod report;
pub mod run;
pub mod schedule;
pub mod score;
pub mod session;
pub mod source;
pub mod state;

pub use error::Error;
pub use run::{RunOptions, RunReport, check, run, validate};
