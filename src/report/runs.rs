//! The run history as a terminal table (`kpiforge runs`).

use crate::state::RunEntry;

/// One line per run, newest first: when, what, how it ended and why.
pub fn table(runs: &[RunEntry]) -> String {
    if runs.is_empty() {
        return "no runs recorded\n".to_string();
    }
    let mut out = format!(
        "{:<26} {:<16} {:<10} {:<9} {:<20} {:>8}  {:<14} {:>6} {:>5}  {}\n",
        "run",
        "pipeline",
        "as_of",
        "trigger",
        "started (UTC)",
        "took",
        "status",
        "failed",
        "kpis",
        "error"
    );
    for r in runs {
        let started = chrono::DateTime::parse_from_rfc3339(&r.started_at).ok();
        let took = match (started, r.finished_at.as_deref()) {
            (Some(s), Some(f)) => chrono::DateTime::parse_from_rfc3339(f)
                .map(|f| format!("{:.1}s", (f - s).num_milliseconds() as f64 / 1000.0))
                .unwrap_or_default(),
            _ => "-".to_string(),
        };
        let started = started.map_or(r.started_at.clone(), |s| {
            s.with_timezone(&chrono::Utc)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        });
        let error = r
            .error
            .as_deref()
            .unwrap_or("")
            .lines()
            .next()
            .unwrap_or("");
        let error: String = error.chars().take(100).collect();
        out.push_str(&format!(
            "{:<26} {:<16} {:<10} {:<9} {:<20} {:>8}  {:<14} {:>6} {:>5}  {}\n",
            r.run_id,
            r.pipeline,
            r.as_of,
            r.trigger,
            started,
            took,
            r.status,
            r.checks_failed,
            r.kpis_published,
            error
        ));
    }
    out
}
