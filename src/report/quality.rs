//! Check results on the terminal: per source, each check's outcome with what was
//! observed, and samples of the failing rows.

use std::fmt::Write;

use super::terminal::Colour;
use crate::quality::{CheckResult, Outcome, QualityReport};

/// A summary line, then per source the checks (all of them, or only those that
/// did not pass).
pub fn checks(report: &QualityReport, all: bool, colour: Colour) -> String {
    let mut out = String::new();
    if report.results.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "checks: {} passed, {} warned, {} failed, {} skipped",
        report.count(Outcome::Passed),
        report.count(Outcome::Warned),
        report.count(Outcome::Failed),
        report.count(Outcome::Skipped)
    );
    let mut sources: Vec<Option<&str>> = Vec::new();
    for r in &report.results {
        if !sources.contains(&r.source.as_deref()) {
            sources.push(r.source.as_deref());
        }
    }
    for source in sources {
        let shown: Vec<&CheckResult> = report
            .results
            .iter()
            .filter(|r| r.source.as_deref() == source)
            .filter(|r| all || r.outcome != Outcome::Passed)
            .collect();
        if shown.is_empty() {
            continue;
        }
        let _ = writeln!(
            out,
            "  {}",
            source.map_or("across sources".to_string(), |s| format!("source {s}"))
        );
        for r in shown {
            let name = match &r.segment {
                Some(s) => format!("{} [{s}]", r.check),
                None => r.check.clone(),
            };
            let _ = writeln!(
                out,
                "    {}  {name:<32} {}  ({})",
                paint(r.outcome, colour),
                r.message,
                r.threshold
            );
            if !r.sample.is_empty() {
                let _ = writeln!(out, "             sample: {}", r.sample.join("; "));
            }
        }
    }
    out
}

fn paint(outcome: Outcome, colour: Colour) -> String {
    let text = format!("{:<7}", outcome.as_str());
    let code = match outcome {
        Outcome::Passed => "32",
        Outcome::Warned => "33",
        Outcome::Failed => "31",
        Outcome::Skipped => "2",
    };
    match colour {
        Colour::Never => text,
        Colour::Always => format!("\x1b[{code}m{text}\x1b[0m"),
    }
}
