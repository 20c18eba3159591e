//! The scorecard on the terminal after `run`: the latest period's overall score,
//! each perspective and objective, and each KPI with value, target, status and
//! change. The status is always spelled out; colour only adds to it, and only
//! on a terminal.

use std::fmt::Write;

use crate::kpi::KpiSeries;
use crate::score::{Level, ScorecardRow, Status};

/// ANSI colours, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Colour {
    Always,
    Never,
}

/// The scorecard of the latest period that has an overall score (else the
/// latest period), as lines of text. Empty when there is no scorecard.
pub fn scorecard(rows: &[ScorecardRow], series: &[KpiSeries], colour: Colour) -> String {
    let latest = rows
        .iter()
        .filter(|r| r.level == Level::Overall)
        .filter(|r| r.score.is_some())
        .map(|r| r.period_start)
        .max()
        .or_else(|| rows.iter().map(|r| r.period_start).max());
    let Some(latest) = latest else {
        return String::new();
    };
    let all = rows;
    let rows: Vec<&ScorecardRow> = rows.iter().filter(|r| r.period_start == latest).collect();
    let mut out = String::new();
    for r in rows {
        let indent = match r.level {
            Level::Overall => 0,
            Level::Perspective => 2,
            Level::Objective => 4,
            Level::Kpi => 6,
        };
        let label = match r.level {
            Level::Overall => format!(
                "scorecard {} ({} to {})",
                r.name, r.period_start, r.period_end
            ),
            Level::Kpi => r.id.clone(),
            _ => r.name.clone(),
        };
        let score = r.score.map_or("    -".to_string(), |s| format!("{s:5.1}"));
        let status = paint(r.status, colour);
        let pad = 44usize.saturating_sub(indent);
        let mut line = format!("{:indent$}{label:<pad$} {score}  {status}", "");
        if r.level == Level::Kpi {
            line.push_str(&kpi_details(r, all, series));
        } else if r.children_scored < r.children_total {
            let _ = write!(
                line,
                "  ({} of {} scored)",
                r.children_scored, r.children_total
            );
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Value, target and change of a KPI row; the change is against the KPI's row
/// of the previous scorecard period, so it compares like with like at any grain.
fn kpi_details(r: &ScorecardRow, all: &[ScorecardRow], series: &[KpiSeries]) -> String {
    let kpi = series.iter().find(|s| s.kpi.id == r.id);
    let unit = kpi
        .and_then(|s| s.kpi.unit.as_deref())
        .map(|u| format!(" {u}"))
        .unwrap_or_default();
    if r.children_total > 0 {
        return format!(
            "  {} of {} segments scored",
            r.children_scored, r.children_total
        );
    }
    let mut text = String::new();
    if let Some(v) = r.value {
        let _ = write!(text, "  {}{unit}", number(v));
    }
    if let Some(t) = r.target {
        let _ = write!(text, "  target {}", number(t));
    }
    let previous = all
        .iter()
        .filter(|p| p.level == Level::Kpi && p.id == r.id && p.period_start < r.period_start)
        .max_by_key(|p| p.period_start)
        .and_then(|p| p.value);
    let change = r
        .value
        .zip(previous)
        .filter(|(_, before)| *before != 0.0)
        .map(|(now, before)| (now - before) / before.abs());
    if let Some(c) = change {
        let _ = write!(text, "  {:+.1}% vs previous", c * 100.0);
    }
    text
}

fn paint(status: Status, colour: Colour) -> String {
    let text = format!("{:<9}", status.as_str());
    if colour == Colour::Never {
        return text;
    }
    let code = match status {
        Status::Green => "32",
        Status::Amber => "33",
        Status::Red => "31",
        Status::NoData | Status::NoTarget => "2",
        Status::Blocked => "35",
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}

/// A number as a reader wants it: grouped thousands, few decimals.
pub fn number(v: f64) -> String {
    if v.abs() >= 1000.0 {
        let digits = format!("{:.0}", v.abs());
        let mut grouped = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                grouped.push(',');
            }
            grouped.push(c);
        }
        format!("{}{grouped}", if v < 0.0 { "-" } else { "" })
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(number(152340.4), "152,340");
        assert_eq!(number(-1234.0), "-1,234");
        assert_eq!(number(999.0), "999.00");
        assert_eq!(number(0.0512), "0.0512");
    }
}
