//! kpiforge's integration tests: one binary, one module per area. They run the
//! real `kpiforge` binary on files in temporary folders.

mod backfill;
mod config_errors;
mod databases;
mod demo;
mod files;
mod http;
mod incremental;
mod maintained;
mod postgres;
mod publish;
mod quality;
mod report;
mod schedule;
mod scorecard;
mod state;
mod util;
