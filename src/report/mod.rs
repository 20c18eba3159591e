//! Reports of a run for people: the scorecard and the check results as text on
//! the terminal, and the scorecard as a self-contained HTML file read back from
//! the published datasets.

pub mod html;
pub mod quality;
pub mod runs;
pub mod snapshot;
pub mod terminal;

use std::path::{Path, PathBuf};

use chrono::NaiveDate;

use crate::error::Error;

/// Where `run` (with `report: true`) and `kpiforge report` put the HTML scorecard.
pub fn default_path(output: &Path, pipeline: &str, as_of: NaiveDate) -> PathBuf {
    crate::publish::partition(output, "report", pipeline, as_of).join("scorecard.html")
}

/// Writes the HTML scorecard of a published run to `to` (atomically) and
/// returns where it went.
pub fn write_html(
    output: &Path,
    pipeline: Option<&str>,
    as_of: Option<NaiveDate>,
    to: Option<&Path>,
) -> Result<PathBuf, Error> {
    let snapshot = snapshot::load(output, pipeline, as_of)?;
    let html = html::render(&snapshot);
    let path = to.map_or_else(
        || default_path(output, &snapshot.pipeline, snapshot.as_of),
        Path::to_path_buf,
    );
    crate::publish::write_text(&path, &html)?;
    Ok(path)
}
