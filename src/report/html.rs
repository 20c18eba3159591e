//! The scorecard as one self-contained HTML file: inline CSS and SVG, no script,
//! no network. The overall score; each perspective, objective and KPI with its
//! value, target, status, changes and a sparkline; the strategy map; the checks
//! that did not pass; the run's facts. Status is always written out with an
//! icon beside the colour (Okabe–Ito colours, readable with colour-blindness).

use std::collections::BTreeSet;
use std::fmt::Write;

use chrono::{Datelike, NaiveDate};

use super::snapshot::{NodeRow, Snapshot};
use super::terminal::number;

/// Renders the scorecard of the latest period with an overall score.
pub fn render(s: &Snapshot) -> String {
    let periods: BTreeSet<NaiveDate> = s.nodes.iter().map(|n| n.period_start).collect();
    let latest = s
        .nodes
        .iter()
        .filter(|n| n.level == "overall" && n.score.is_some())
        .map(|n| n.period_start)
        .max()
        .or_else(|| periods.iter().max().copied());
    let mut h = String::new();
    let title = format!("{} scorecard, as of {}", s.pipeline, s.as_of);
    let _ = writeln!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{CSS}</style></head><body>",
        esc(&title)
    );
    let _ = write!(h, "<header><h1>{}</h1>", esc(&s.pipeline));
    let at = |level: &str, id: &str, period: NaiveDate| {
        s.nodes
            .iter()
            .find(|n| n.level == level && n.id == id && n.period_start == period)
    };
    match latest {
        None => {
            let _ = write!(
                h,
                "<p>No scorecard: the pipeline declares no objectives.</p></header>"
            );
        }
        Some(period) => {
            let overall = at("overall", "overall", period);
            let end = overall.map_or(period, |o| o.period_end);
            let _ = writeln!(
                h,
                "<p class=\"period\">{} to {} &middot; as of {}</p><div class=\"overall\">{}<span class=\"label\">overall</span></div></header>",
                period,
                end,
                s.as_of,
                overall.map_or(String::new(), |o| score_badge(o.score, &o.status))
            );
            perspectives(&mut h, s, period, &periods);
            strategy_map(&mut h, s, period);
        }
    }
    quality(&mut h, s);
    run_facts(&mut h, s);
    h.push_str("</body></html>\n");
    h
}

/// Each perspective, its objectives and their KPIs.
fn perspectives(h: &mut String, s: &Snapshot, period: NaiveDate, periods: &BTreeSet<NaiveDate>) {
    let in_period: Vec<&NodeRow> = s
        .nodes
        .iter()
        .filter(|n| n.period_start == period)
        .collect();
    let children = |parent: &str, level: &str| -> Vec<&NodeRow> {
        in_period
            .iter()
            .copied()
            .filter(|n| n.level == level && n.parent.as_deref() == Some(parent))
            .collect()
    };
    h.push_str("<main>\n");
    for p in children("overall", "perspective") {
        let _ = writeln!(
            h,
            "<section class=\"perspective\" id=\"perspective-{}\"><h2>{} {}</h2>{}",
            esc(&p.id),
            esc(&p.name),
            score_badge(p.score, &p.status),
            coverage(p)
        );
        for o in children(&p.id, "objective") {
            let _ = writeln!(
                h,
                "<div class=\"objective\" id=\"objective-{}\"><h3>{} {}</h3>{}\n<table><thead><tr><th>KPI</th><th>value</th><th>target</th><th>status</th><th>vs previous</th><th>vs last year</th><th>last 12</th></tr></thead><tbody>",
                esc(&o.id),
                esc(&o.name),
                score_badge(o.score, &o.status),
                coverage(o)
            );
            for k in children(&o.id, "kpi") {
                kpi_row(h, s, k, periods);
            }
            h.push_str("</tbody></table></div>\n");
        }
        h.push_str("</section>\n");
    }
    h.push_str("</main>\n");
}

fn kpi_row(h: &mut String, s: &Snapshot, k: &NodeRow, periods: &BTreeSet<NaiveDate>) {
    let series: Vec<&NodeRow> = s
        .nodes
        .iter()
        .filter(|n| n.level == "kpi" && n.id == k.id && n.period_start <= k.period_start)
        .collect();
    let at = |p: NaiveDate| {
        series
            .iter()
            .find(|n| n.period_start == p)
            .and_then(|n| n.value)
    };
    let previous = periods
        .range(..k.period_start)
        .next_back()
        .copied()
        .and_then(at);
    let last_year = k
        .period_start
        .with_year(k.period_start.year() - 1)
        .and_then(at);
    let unit = s
        .values
        .iter()
        .find(|v| v.kpi_id == k.id)
        .and_then(|v| v.unit.clone())
        .unwrap_or_default();
    let name = s
        .values
        .iter()
        .find(|v| v.kpi_id == k.id)
        .map_or(k.name.clone(), |v| v.kpi_name.clone());
    let value = match k.value {
        Some(v) => format!("{} {}", number(v), esc(&unit)),
        None if k.children_total > 0 => format!(
            "{} of {} segments scored",
            k.children_scored, k.children_total
        ),
        None => "&ndash;".into(),
    };
    let mut last12: Vec<Option<f64>> = series
        .iter()
        .rev()
        .take(12)
        .map(|n| n.value.or(n.score))
        .collect();
    last12.reverse();
    let _ = writeln!(
        h,
        "<tr class=\"kpi\" id=\"kpi-{}\"><td>{}<br><code>{}</code></td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
        esc(&k.id),
        esc(&name),
        esc(&k.id),
        value,
        k.target.map_or("&ndash;".into(), number),
        score_badge(k.score, &k.status),
        change(k.value, previous),
        change(k.value, last_year),
        sparkline(&last12)
    );
}

fn change(now: Option<f64>, before: Option<f64>) -> String {
    match (now, before) {
        (Some(n), Some(b)) if b != 0.0 => format!("{:+.1}%", (n - b) / b.abs() * 100.0),
        _ => "&ndash;".into(),
    }
}

/// An inline SVG line of up to 12 values; gaps where a period has none.
fn sparkline(values: &[Option<f64>]) -> String {
    let known: Vec<f64> = values.iter().flatten().copied().collect();
    if known.len() < 2 {
        return String::new();
    }
    let (lo, hi) = known
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    let span = if hi > lo { hi - lo } else { 1.0 };
    let (w, ht) = (96.0, 24.0);
    let step = w / (values.len().max(2) - 1) as f64;
    let mut path = String::new();
    let mut pen_up = true;
    for (i, v) in values.iter().enumerate() {
        match v {
            Some(v) => {
                let (x, y) = (i as f64 * step, ht - 2.0 - (v - lo) / span * (ht - 4.0));
                let _ = write!(path, "{}{x:.1},{y:.1} ", if pen_up { "M" } else { "L" });
                pen_up = false;
            }
            None => pen_up = true,
        }
    }
    format!(
        "<svg class=\"spark\" width=\"96\" height=\"24\" viewBox=\"0 0 96 24\" role=\"img\" aria-label=\"last {} periods\"><path d=\"{}\"/></svg>",
        values.len(),
        path.trim_end()
    )
}

/// The strategy map: perspectives as bands, objectives as nodes coloured by
/// status, cause -> effect arrows.
fn strategy_map(h: &mut String, s: &Snapshot, period: NaiveDate) {
    let bands: Vec<&NodeRow> = s
        .nodes
        .iter()
        .filter(|n| n.level == "perspective" && n.period_start == period)
        .collect();
    let (width, band_h, node_w, node_h) = (960.0, 90.0, 180.0, 44.0);
    let mut places: Vec<(&str, f64, f64)> = Vec::new();
    let mut svg = String::new();
    for (b, p) in bands.iter().enumerate() {
        let y = b as f64 * band_h;
        let _ = write!(
            svg,
            "<rect class=\"band\" x=\"0\" y=\"{y}\" width=\"{width}\" height=\"{band_h}\"/><text class=\"band-label\" x=\"8\" y=\"{}\">{}</text>",
            y + 16.0,
            esc(&p.name)
        );
        let objectives: Vec<&NodeRow> = s
            .nodes
            .iter()
            .filter(|n| {
                n.level == "objective"
                    && n.period_start == period
                    && n.parent.as_deref() == Some(&p.id)
            })
            .collect();
        let slot = (width - 140.0) / objectives.len().max(1) as f64;
        for (i, o) in objectives.iter().enumerate() {
            let x = 140.0 + slot * i as f64 + (slot - node_w).max(0.0) / 2.0;
            let ny = y + (band_h - node_h) / 2.0 + 6.0;
            places.push((&o.id, x, ny));
            let _ = write!(
                svg,
                "<g class=\"node {}\" id=\"map-{}\"><rect x=\"{x:.0}\" y=\"{ny:.0}\" width=\"{node_w}\" height=\"{node_h}\" rx=\"8\"/><text x=\"{:.0}\" y=\"{:.0}\">{}</text><text class=\"sub\" x=\"{:.0}\" y=\"{:.0}\">{}</text></g>",
                esc(&o.status),
                esc(&o.id),
                x + node_w / 2.0,
                ny + 18.0,
                esc(&truncate(&o.name, 24)),
                x + node_w / 2.0,
                ny + 36.0,
                esc(&format!(
                    "{} {}",
                    icon(&o.status),
                    o.score.map_or("–".into(), |v| format!("{v:.1}"))
                ))
            );
        }
    }
    let mut arrows = String::new();
    for o in s
        .nodes
        .iter()
        .filter(|n| n.level == "objective" && n.period_start == period)
    {
        let Some(&(_, x1, y1)) = places.iter().find(|(id, _, _)| *id == o.id) else {
            continue;
        };
        for effect in &o.causes {
            let Some(&(_, x2, y2)) = places.iter().find(|(id, _, _)| id == effect) else {
                continue;
            };
            // From the cause's edge towards the effect's facing edge.
            let (sy, ey) = if y2 < y1 {
                (y1, y2 + node_h)
            } else {
                (y1 + node_h, y2)
            };
            let _ = write!(
                arrows,
                "<line class=\"cause\" x1=\"{:.0}\" y1=\"{sy:.0}\" x2=\"{:.0}\" y2=\"{ey:.0}\" marker-end=\"url(#arrow)\"><title>{} drives {}</title></line>",
                x1 + node_w / 2.0,
                x2 + node_w / 2.0,
                esc(&o.id),
                esc(effect)
            );
        }
    }
    let height = bands.len() as f64 * band_h;
    let _ = writeln!(
        h,
        "<section id=\"strategy-map\"><h2>Strategy map</h2><svg viewBox=\"0 0 {width} {height}\" width=\"100%\" role=\"img\" aria-label=\"strategy map\"><defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto-start-reverse\"><path d=\"M0,0 L10,5 L0,10 z\"/></marker></defs>{svg}{arrows}</svg></section>"
    );
}

fn quality(h: &mut String, s: &Snapshot) {
    if s.checks.is_empty() {
        return;
    }
    let whole: Vec<_> = s.checks.iter().filter(|c| c.segment.is_none()).collect();
    let count = |o: &str| whole.iter().filter(|c| c.outcome == o).count();
    let _ = write!(
        h,
        "<section id=\"quality\"><h2>Data quality</h2><p>{} passed &middot; {} warned &middot; {} failed &middot; {} skipped</p>",
        count("passed"),
        count("warned"),
        count("failed"),
        count("skipped")
    );
    let shown: Vec<_> = s
        .checks
        .iter()
        .filter(|c| c.outcome == "failed" || c.outcome == "warned")
        .collect();
    if !shown.is_empty() {
        h.push_str("<table><thead><tr><th>outcome</th><th>source</th><th>check</th><th>what was seen</th><th>threshold</th><th>sample</th></tr></thead><tbody>");
        for c in shown {
            let _ = write!(
                h,
                "<tr class=\"check {}\"><td>{} {}</td><td>{}</td><td><code>{}</code>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&c.outcome),
                if c.outcome == "failed" {
                    "&#x2716;"
                } else {
                    "&#x25B2;"
                },
                esc(&c.outcome),
                esc(c.source.as_deref().unwrap_or("across sources")),
                esc(&c.check),
                c.segment
                    .as_ref()
                    .map_or(String::new(), |seg| format!(" [{}]", esc(seg))),
                esc(&c.message),
                esc(&c.threshold),
                c.sample
                    .iter()
                    .map(|x| format!("<code>{}</code>", esc(x)))
                    .collect::<Vec<_>>()
                    .join("<br>")
            );
        }
        h.push_str("</tbody></table>");
    }
    h.push_str("</section>\n");
}

fn run_facts(h: &mut String, s: &Snapshot) {
    let Some(r) = &s.run else { return };
    let took = match (r.started_at, r.finished_at) {
        (Some(a), Some(b)) => format!("{:.2} s", (b - a).num_milliseconds() as f64 / 1000.0),
        _ => "&ndash;".into(),
    };
    let rows: Vec<String> = r
        .rows_read
        .iter()
        .map(|(source, n)| format!("{} {}", esc(source), n.map_or("&ndash;".into(), count)))
        .collect();
    let _ = writeln!(
        h,
        "<footer id=\"run\"><h2>Run</h2><dl><dt>as of</dt><dd>{}</dd><dt>run</dt><dd><code>{}</code> ({})</dd><dt>started</dt><dd>{}</dd><dt>took</dt><dd>{took}</dd><dt>rows read</dt><dd>{}</dd></dl></footer>",
        s.as_of,
        esc(&r.run_id),
        esc(&r.status),
        r.started_at.map_or("&ndash;".into(), |t| t
            .format("%Y-%m-%d %H:%M:%S UTC")
            .to_string()),
        rows.join(" &middot; ")
    );
}

/// A count with grouped thousands.
fn count(n: i64) -> String {
    if n.abs() >= 1000 {
        number(n as f64)
    } else {
        n.to_string()
    }
}

fn coverage(n: &NodeRow) -> String {
    if n.children_scored < n.children_total {
        format!(
            "<p class=\"coverage\">{} of {} scored</p>",
            n.children_scored, n.children_total
        )
    } else {
        String::new()
    }
}

fn score_badge(score: Option<f64>, status: &str) -> String {
    format!(
        "<span class=\"badge {}\">{} {}{}</span>",
        esc(status),
        icon(status),
        esc(status),
        score.map_or(String::new(), |v| format!(" <b>{v:.1}</b>"))
    )
}

fn icon(status: &str) -> &'static str {
    match status {
        "green" => "\u{2714}",
        "amber" => "\u{25B2}",
        "red" => "\u{2716}",
        "blocked" => "\u{26D4}",
        _ => "\u{2013}",
    }
}

fn truncate(text: &str, n: usize) -> String {
    if text.chars().count() <= n {
        text.to_string()
    } else {
        format!("{}\u{2026}", text.chars().take(n - 1).collect::<String>())
    }
}

/// Text safe inside HTML and SVG.
fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const CSS: &str = "
:root{--green:#009E73;--amber:#E69F00;--red:#D55E00;--none:#8a8a8a;--blocked:#CC79A7;--ink:#1d1d1f;--soft:#f4f4f6}
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:var(--ink);margin:0 auto;max-width:1100px;padding:24px}
header{display:flex;flex-wrap:wrap;align-items:center;gap:16px;border-bottom:2px solid var(--soft);padding-bottom:12px}
h1{margin:0;font-size:26px}.period{margin:0;color:#555}.overall{margin-left:auto;font-size:22px}.overall .label{margin-left:8px;color:#555;font-size:14px}
h2{font-size:19px;margin:24px 0 8px}h3{font-size:16px;margin:14px 0 6px}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;font-size:13px;white-space:nowrap}
.badge.green{background:var(--green)}.badge.amber{background:var(--amber);color:#1d1d1f}.badge.red{background:var(--red)}
.badge.no_data,.badge.no_target{background:var(--none)}.badge.blocked{background:var(--blocked)}
section.perspective{border-left:4px solid var(--soft);padding-left:14px}
table{border-collapse:collapse;width:100%;font-size:14px}th,td{text-align:left;padding:5px 8px;border-bottom:1px solid var(--soft);vertical-align:top}
td.num{text-align:right;font-variant-numeric:tabular-nums}code{font-size:12px;color:#555}.coverage{margin:0;color:#555;font-size:13px}
svg.spark path{fill:none;stroke:#0072B2;stroke-width:1.5}
#strategy-map svg{border:1px solid var(--soft);border-radius:6px}
rect.band{fill:#fafafa;stroke:#e6e6e6}text.band-label{font-size:13px;font-weight:600;fill:#555}
g.node rect{stroke:#1d1d1f;stroke-width:1}g.node text{font-size:12px;text-anchor:middle;fill:#fff}g.node text.sub{font-size:11px}
g.node.green rect{fill:var(--green)}g.node.amber rect{fill:var(--amber)}g.node.amber text{fill:#1d1d1f}g.node.red rect{fill:var(--red)}
g.node.no_data rect,g.node.no_target rect{fill:var(--none)}g.node.blocked rect{fill:var(--blocked)}
line.cause{stroke:#333;stroke-width:1.5}marker path{fill:#333}
tr.check.failed td:first-child{color:var(--red);font-weight:600}tr.check.warned td:first-child{color:#8a5a00;font-weight:600}
footer dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px}footer dt{color:#555}footer dd{margin:0}
";
