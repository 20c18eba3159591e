//! The Balanced Scorecard end to end: scores, roll-ups and statuses in the
//! published `kpi_values/` and `scorecard/` datasets, against numbers worked out
//! by hand in each test (or, for the demo, recomputed here from its values).

use std::path::Path;

use super::util::{
    Row, assert_close, assert_fails, kpiforge, num, project, rows, stderr, stdout, text,
};

const TARGET: f64 = 200.0 / 3.0;
const RED_FLAG: f64 = 100.0 / 3.0;

/// Runs `pipelines/p.yaml` of a scratch project for `as_of`; returns its
/// (kpi_values, scorecard) rows.
fn run(dir: &Path, as_of: &str) -> (Vec<Row>, Vec<Row>) {
    let out = kpiforge(dir, &["run", "pipelines/p.yaml", "--as-of", as_of]);
    assert!(out.status.success(), "run failed:\n{}", stderr(&out));
    let part = |dataset: &str| {
        dir.join(format!(
            "out/{dataset}/pipeline=p/as_of={as_of}/part-0.parquet"
        ))
    };
    (rows(&part("kpi_values")), rows(&part("scorecard")))
}

/// The row of `id` for the period starting `period` (and `segment`, for kpi_values).
fn find<'a>(rows: &'a [Row], id: &str, period: &str, segment: Option<&str>) -> &'a Row {
    rows.iter()
        .find(|r| {
            [r.get("id"), r.get("kpi_id")]
                .into_iter()
                .any(|k| k.is_some_and(|k| k.as_deref() == Some(id)))
                && text(r, "period_start") == Some(period)
                && r.get("segment").is_none_or(|s| s.as_deref() == segment)
        })
        .unwrap_or_else(|| panic!("no row for {id} {period} {segment:?}"))
}

/// A value KPI's SQL over the shared data file.
fn value_sql(kpi: &str) -> String {
    format!("SELECT period, value FROM v WHERE kpi = '{kpi}'")
}

const SOURCES: &str = "sources:\n  v:\n    file: data/v.csv\n    columns: {period: date, value: double, num: double, den: double}\n";

#[test]
fn scores_roll_up_from_kpis_to_overall() {
    // January: a = 800 and c = 300 against target 700 / red flag 500 (the worked
    // example), b has no January value, d sits in a band, e is lower-is-better
    // percent-of-target at target 0, f is lower-is-better goal/red flag, g has no
    // target, and the custom perspective holds only g.
    let data = "kpi,period,segment,value,num,den\n\
                a,2026-01-01,,800,,\nb,2026-02-01,,1,,\nc,2026-01-01,,300,,\n\
                d,2026-01-01,,95,,\ne,2026-01-01,,0,,\nf,2026-01-01,,12.5,,\ng,2026-01-01,,5,,\n";
    let yaml = format!(
        "name: p\noutput: out\n{SOURCES}\
scorecard:
  perspectives:
    - {{id: financial, weight: 2}}
    - {{id: sustainability, name: Sustainability}}
  objectives:
    - {{id: o1, perspective: financial}}
    - {{id: o2, perspective: customer, rollup: worst_child, causes: [o1]}}
    - {{id: o3, perspective: internal_process, causes: [o2]}}
    - {{id: o4, perspective: sustainability}}
kpis:
  - {{id: a, objective: o1, sql: sql/a.sql, grain: month, target: 700, red_flag: 500, weight: 1}}
  - {{id: b, objective: o1, sql: sql/b.sql, grain: month, target: 700, red_flag: 500, weight: 5}}
  - {{id: c, objective: o1, sql: sql/c.sql, grain: month, target: 700, red_flag: 500, weight: 3}}
  - {{id: d, objective: o2, sql: sql/d.sql, grain: month, direction: target_band, thresholds: [[90, 0], [100, 100], [110, 0]]}}
  - {{id: e, objective: o2, sql: sql/e.sql, grain: month, scoring: percent_of_target, direction: lower_is_better, target: 0}}
  - {{id: f, objective: o3, sql: sql/f.sql, grain: month, target: 10, red_flag: 15}}
  - {{id: g, objective: o4, sql: sql/g.sql, grain: month}}
"
    );
    let sql: Vec<(String, String)> = ["a", "b", "c", "d", "e", "f", "g"]
        .iter()
        .map(|k| (format!("sql/{k}.sql"), value_sql(k)))
        .collect();
    let mut files: Vec<(&str, &str)> = vec![("pipelines/p.yaml", &yaml), ("data/v.csv", data)];
    files.extend(sql.iter().map(|(p, s)| (p.as_str(), s.as_str())));
    let dir = project(&files);
    let (values, card) = run(dir.path(), "2026-02-15");
    let jan = "2026-01-01";

    // KPI scores and statuses in kpi_values.
    let kpi = |id| find(&values, id, jan, None);
    assert_close(
        num(kpi("a"), "score"),
        Some(RED_FLAG + 300.0 / 200.0 * RED_FLAG),
        "a",
    );
    assert_eq!(text(kpi("a"), "status"), Some("green"));
    assert_close(num(kpi("a"), "target_gap"), Some(100.0), "a gap");
    assert_close(num(kpi("c"), "score"), Some(0.0), "c");
    assert_eq!(text(kpi("c"), "status"), Some("red"));
    assert_close(num(kpi("d"), "score"), Some(50.0), "band");
    assert_eq!(text(kpi("d"), "status"), Some("amber"));
    assert_close(num(kpi("e"), "score"), Some(TARGET), "target 0, on target");
    assert_close(num(kpi("f"), "score"), Some(50.0), "lower is better");
    assert_eq!(num(kpi("g"), "score"), None);
    assert_eq!(text(kpi("g"), "status"), Some("no_target"));

    // Roll-up: o1 leaves out b (no data) and weighs a 1 : c 3.
    let node = |id| find(&card, id, jan, None);
    let o1 = (83.0 + 1.0 / 3.0) / 4.0;
    assert_close(num(node("o1"), "score"), Some(o1), "o1");
    assert_eq!(
        (
            text(node("o1"), "children_scored"),
            text(node("o1"), "children_total")
        ),
        (Some("2"), Some("3"))
    );
    assert_eq!(text(node("b"), "status"), Some("no_data"));
    // o2 is its worst child: the band's 50, not the mean with e's 66.7.
    assert_close(num(node("o2"), "score"), Some(50.0), "worst child");
    assert_close(num(node("o3"), "score"), Some(50.0), "o3");
    assert_eq!(text(node("o4"), "status"), Some("no_data"));
    assert_eq!(text(node("sustainability"), "status"), Some("no_data"));
    assert_eq!(text(node("sustainability"), "name"), Some("Sustainability"));
    assert_eq!(text(node("learning_growth"), "children_total"), Some("0"));
    assert_close(num(node("financial"), "score"), Some(o1), "financial");
    // Overall: financial weighs 2; learning & growth and sustainability have no score.
    let overall = (2.0 * o1 + 50.0 + 50.0) / 4.0;
    assert_close(num(node("overall"), "score"), Some(overall), "overall");
    assert_eq!(
        (
            text(node("overall"), "children_scored"),
            text(node("overall"), "children_total")
        ),
        (Some("3"), Some("5"))
    );
    assert_eq!(text(node("overall"), "status"), Some("amber"));
    assert_eq!(text(node("o2"), "parent"), Some("customer"));
    assert_eq!(text(node("d"), "parent"), Some("o2"));
}

#[test]
fn ratio_kpis_roll_up_as_the_ratio_of_sums() {
    // A quarterly scorecard over monthly KPIs: the ratio r is 2/4 in January and
    // 2/100 in February, so 4/104 for the quarter (not the mean, 26%). Value KPIs
    // combine by their declared aggregation, and so do their targets.
    let data = "kpi,period,segment,value,num,den\n\
                r,2026-01-01,,,2,4\nr,2026-02-01,,,2,100\n\
                s,2026-01-01,,10,,\ns,2026-02-01,,20,,\n\
                t,2026-01-01,,10,,\nt,2026-02-01,,20,,\n\
                u,2026-01-01,,10,,\nu,2026-02-01,,20,,\n";
    let yaml = format!(
        "name: p\noutput: out\n{SOURCES}\
scorecard:
  grain: quarter
  objectives:
    - {{id: o, perspective: financial}}
kpis:
  - {{id: r, objective: o, sql: sql/r.sql, grain: month, target: 0.05, red_flag: 0.10}}
  - {{id: s, objective: o, sql: sql/s.sql, grain: month, aggregation: sum, target: 12, red_flag: 8}}
  - {{id: t, objective: o, sql: sql/t.sql, grain: month, aggregation: average, target: 12, red_flag: 8}}
  - {{id: u, objective: o, sql: sql/u.sql, grain: month, aggregation: last, target: 12, red_flag: 8}}
"
    );
    let ratio = "SELECT period, num AS numerator, den AS denominator FROM v WHERE kpi = 'r'";
    let (s, t, u) = (value_sql("s"), value_sql("t"), value_sql("u"));
    let dir = project(&[
        ("pipelines/p.yaml", &yaml),
        ("data/v.csv", data),
        ("sql/r.sql", ratio),
        ("sql/s.sql", &s),
        ("sql/t.sql", &t),
        ("sql/u.sql", &u),
    ]);
    let (values, card) = run(dir.path(), "2026-03-31");
    assert_close(
        num(find(&values, "r", "2026-01-01", None), "value"),
        Some(0.5),
        "Jan",
    );
    assert_close(
        num(find(&values, "r", "2026-02-01", None), "value"),
        Some(0.02),
        "Feb",
    );

    let q1 = |id| find(&card, id, "2026-01-01", None);
    assert_close(num(q1("r"), "value"), Some(4.0 / 104.0), "4/104");
    assert_close(num(q1("r"), "target"), Some(0.05), "rate target");
    let r_score = RED_FLAG + (4.0 / 104.0 - 0.10) * (TARGET - RED_FLAG) / (0.05 - 0.10);
    assert_close(num(q1("r"), "score"), Some(r_score), "r score");
    // Sum: 30 over the quarter's three months (March has no row: 0), against
    // 12 a month, red flag 8 a month.
    assert_close(num(q1("s"), "value"), Some(30.0), "sum");
    assert_close(num(q1("s"), "target"), Some(36.0), "summed target");
    let s_score = RED_FLAG + (30.0 - 24.0) * (TARGET - RED_FLAG) / 12.0;
    assert_close(num(q1("s"), "score"), Some(s_score), "s score");
    assert_close(num(q1("t"), "value"), Some(15.0), "average");
    assert_close(num(q1("t"), "target"), Some(12.0), "average target");
    assert_close(num(q1("u"), "value"), Some(20.0), "last");
    assert_eq!(text(q1("overall"), "period_end"), Some("2026-03-31"));
    assert_eq!(text(q1("overall"), "grain"), Some("quarter"));
}

#[test]
fn targets_per_period_and_segment_from_a_table() {
    // Segment north has a target for January only (and a red flag for every
    // period from a wildcard row); south has a target for every period. February
    // for north has no target: `no_target`, not a made-up score.
    let data = "kpi,period,segment,value,num,den\n\
                k,2026-01-01,north,110,,\nk,2026-02-01,north,110,,\n\
                k,2026-01-01,south,50,,\nk,2026-02-01,south,40,,\n";
    let targets = "kpi_id,period,segment,target,red_flag,note\n\
                   k,2026-01-15,north,100,,mid-month dates count for their month\n\
                   k,,north,,80,\n\
                   k,,south,50,30,\n\
                   other,2026-01-01,north,1,2,\n";
    let yaml = format!(
        "name: p\noutput: out\n{SOURCES}  targets:\n    file: data/targets.csv\n    columns: {{period: date}}\n\
scorecard:
  objectives:
    - {{id: o, perspective: customer}}
kpis:
  - {{id: k, objective: o, sql: sql/k.sql, grain: month, dimensions: [segment], targets: targets, red_flag: 1}}
"
    );
    let dir = project(&[
        ("pipelines/p.yaml", &yaml),
        ("data/v.csv", data),
        ("data/targets.csv", targets),
        (
            "sql/k.sql",
            "SELECT period, segment, value FROM v WHERE kpi = 'k'",
        ),
    ]);
    let (values, card) = run(dir.path(), "2026-02-28");
    let row = |period, segment| find(&values, "k", period, Some(segment));
    let north_jan = row("2026-01-01", "segment=north");
    assert_close(num(north_jan, "target"), Some(100.0), "north Jan target");
    assert_close(
        num(north_jan, "red_flag"),
        Some(80.0),
        "red flag from the wildcard row",
    );
    assert_close(
        num(north_jan, "score"),
        Some(RED_FLAG + 30.0 / 20.0 * RED_FLAG),
        "north Jan score",
    );
    let north_feb = row("2026-02-01", "segment=north");
    assert_eq!(num(north_feb, "target"), None);
    assert_eq!(text(north_feb, "status"), Some("no_target"));
    let south_feb = row("2026-02-01", "segment=south");
    assert_close(
        num(south_feb, "score"),
        Some(RED_FLAG + 10.0 / 20.0 * RED_FLAG),
        "south Feb",
    );
    // The KPI counts once in its objective: the mean of its segments' scores.
    let k_feb = find(&card, "k", "2026-02-01", None);
    assert_close(
        num(k_feb, "score"),
        num(south_feb, "score"),
        "only south scored",
    );
    assert_eq!(
        (
            text(k_feb, "children_scored"),
            text(k_feb, "children_total")
        ),
        (Some("1"), Some("2"))
    );
}

#[test]
fn definitions_that_cannot_be_scored_are_rejected_before_running() {
    let data = "kpi,period,segment,value,num,den\nd,2026-01-05,,1,,\n";
    let case = |kpi_line: &str, grain: &str| {
        let yaml = format!(
            "name: p\noutput: out\n{SOURCES}scorecard:\n  grain: {grain}\n  objectives:\n    - {{id: o, perspective: financial}}\nkpis:\n  - {kpi_line}\n"
        );
        let dir = project(&[
            ("pipelines/p.yaml", &yaml),
            ("data/v.csv", data),
            ("sql/d.sql", "SELECT period, value FROM v"),
            (
                "sql/r.sql",
                "SELECT period, value AS numerator, value AS denominator FROM v",
            ),
        ]);
        kpiforge(dir.path(), &["validate", "pipelines/p.yaml"])
    };
    assert_fails(
        &case(
            "{id: d, objective: o, sql: sql/d.sql, grain: day, target: 2, red_flag: 1}",
            "month",
        ),
        2,
        &[
            "KPI `d`",
            "its day values roll up to the scorecard's month",
            "aggregation: sum",
        ],
    );
    assert_fails(
        &case(
            "{id: r, objective: o, sql: sql/r.sql, grain: day, aggregation: sum, target: 2, red_flag: 1}",
            "month",
        ),
        2,
        &["KPI `r`", "does not apply to a ratio KPI"],
    );
    let ok = case(
        "{id: d, objective: o, sql: sql/d.sql, grain: day, aggregation: sum, target: 2, red_flag: 1}",
        "month",
    );
    assert!(ok.status.success(), "{}", stderr(&ok));
}

/// The demo's scorecard, recomputed here from its published KPI values with the
/// weights and roll-up rules of `pipelines/demo.yaml`.
#[test]
fn demo_scorecard_matches_a_recomputation() {
    let as_of = "2026-11-27";
    let (out_dir, out) = super::util::run_demo();
    let part = |d: &str| {
        out_dir
            .path()
            .join(format!("{d}/pipeline=demo/as_of={as_of}/part-0.parquet"))
    };
    let (values, card) = (rows(&part("kpi_values")), rows(&part("scorecard")));

    // Scores by hand from each KPI's value and goals, for every month.
    let goal_red_flag = |v: f64, t: f64, r: f64| {
        (RED_FLAG + (v - r) * (TARGET - RED_FLAG) / (t - r)).clamp(0.0, 100.0)
    };
    let satisfaction = |v: f64| {
        let points = [(3.5, 0.0), (3.9, 33.3), (4.1, 66.7), (4.5, 100.0)];
        if v <= 3.5 {
            return 0.0;
        }
        if v >= 4.5 {
            return 100.0;
        }
        let i = points.iter().position(|(x, _)| v < *x).unwrap();
        let ((x0, y0), (x1, y1)) = (points[i - 1], points[i]);
        y0 + (v - x0) * (y1 - y0) / (x1 - x0)
    };
    let mut checked = 0;
    for r in values.iter().filter(|r| text(r, "segment").is_none()) {
        let id = text(r, "kpi_id").unwrap();
        let Some(v) = num(r, "value") else { continue };
        let expected = match id {
            "customer_satisfaction" => Some(satisfaction(v)),
            "training_hours_per_employee" => Some((TARGET * v / 4.0).clamp(0.0, 100.0)),
            "monthly_revenue" => {
                num(r, "target").map(|t| goal_red_flag(v, t, num(r, "red_flag").unwrap()))
            }
            _ => Some(goal_red_flag(
                v,
                num(r, "target").unwrap(),
                num(r, "red_flag").unwrap(),
            )),
        };
        assert_close(
            num(r, "score"),
            expected,
            &format!("{id} {:?}", text(r, "period_start")),
        );
        checked += 1;
    }
    assert!(checked > 150, "only {checked} scores checked");
    // No target for revenue before 2025 in fixtures/retail/targets.csv.
    assert_eq!(
        text(
            find(&values, "monthly_revenue", "2024-12-01", None),
            "status"
        ),
        Some("no_target")
    );

    // The roll-up of every month, by hand.
    let score = |id: &str, period: &str| -> Option<f64> {
        let segments: Vec<f64> = values
            .iter()
            .filter(|r| text(r, "kpi_id") == Some(id) && text(r, "period_start") == Some(period))
            .filter_map(|r| num(r, "score"))
            .collect();
        (!segments.is_empty()).then(|| segments.iter().sum::<f64>() / segments.len() as f64)
    };
    let mean = |children: &[(Option<f64>, f64)]| {
        let (s, w) = children
            .iter()
            .filter_map(|(s, w)| s.map(|s| (s * w, *w)))
            .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
        (w > 0.0).then(|| s / w)
    };
    let months: Vec<String> = card
        .iter()
        .filter(|r| text(r, "level") == Some("overall"))
        .map(|r| text(r, "period_start").unwrap().to_string())
        .collect();
    assert_eq!(months.len(), 24, "{months:?}");
    for m in &months {
        let quarter = {
            let (y, month) = (&m[..4], m[5..7].parse::<u32>().unwrap());
            format!("{y}-{:02}-01", (month - 1) / 3 * 3 + 1)
        };
        let kpi = |id: &str| score(id, m);
        let grow = mean(&[
            (kpi("monthly_revenue"), 2.0),
            (kpi("average_order_value"), 1.0),
        ]);
        let delight = mean(&[
            (kpi("return_rate"), 1.0),
            (kpi("customer_satisfaction"), 2.0),
            (kpi("active_customers"), 1.0),
        ]);
        let ship = [kpi("on_time_delivery_rate"), kpi("ticket_resolution_hours")]
            .into_iter()
            .flatten()
            .min_by(f64::total_cmp);
        let skilled = mean(&[
            (kpi("training_hours_per_employee"), 1.0),
            (score("staff_retention", &quarter), 1.0),
        ]);
        let overall = mean(&[(grow, 1.0), (delight, 1.0), (ship, 1.0), (skilled, 1.0)]);
        let node = |id| find(&card, id, m, None);
        assert_close(
            num(node("grow_revenue"), "score"),
            grow,
            &format!("grow_revenue {m}"),
        );
        assert_close(
            num(node("delight_customers"), "score"),
            delight,
            &format!("delight {m}"),
        );
        assert_close(
            num(node("ship_on_time"), "score"),
            ship,
            &format!("ship {m}"),
        );
        assert_close(
            num(node("skilled_team"), "score"),
            skilled,
            &format!("skilled {m}"),
        );
        assert_close(
            num(node("learning_growth"), "score"),
            skilled,
            &format!("learning {m}"),
        );
        assert_close(
            num(node("overall"), "score"),
            overall,
            &format!("overall {m}"),
        );
    }

    // The terminal shows the latest month's scorecard, plain when piped.
    let shown = stdout(&out);
    assert!(
        shown.contains("scorecard demo (2026-10-01 to 2026-10-31)"),
        "{shown}"
    );
    for line in [
        "Financial",
        "Learning & growth",
        "monthly_revenue",
        "staff_retention",
    ] {
        assert!(shown.contains(line), "{line} missing:\n{shown}");
    }
    assert!(!shown.contains('\x1b'), "colour codes when piped:\n{shown}");
}

/// A scratch project that breaks every lint rule but `stale_kpi` (which needs a run).
fn lint_project(allow: &str) -> tempfile::TempDir {
    let yaml = format!(
        "name: p
output: out
{SOURCES}scorecard:
  lint: {{max_kpis_per_perspective: 1, max_objectives: 1, stale_periods: 2, allow: [{allow}]}}
  objectives:
    - {{id: o1, perspective: financial}}
    - {{id: o2, perspective: financial}}
kpis:
  - {{id: a, objective: o1, sql: sql/a.sql, grain: month, owner: x, unit: EUR, target: 2, red_flag: 1}}
  - {{id: b, objective: o1, sql: sql/a.sql, grain: month}}
  - {{id: c, sql: sql/a.sql, grain: month, owner: x, unit: EUR, target: 2, red_flag: 1}}
"
    );
    project(&[
        ("pipelines/p.yaml", &yaml),
        (
            "data/v.csv",
            "kpi,period,segment,value,num,den\na,2026-01-01,,1,,\n",
        ),
        ("sql/a.sql", "SELECT period, value FROM v"),
    ])
}

#[test]
fn lint_warns_of_each_scorecard_pitfall_with_its_line() {
    let dir = lint_project("");
    let out = kpiforge(dir.path(), &["validate", "pipelines/p.yaml"]);
    assert!(out.status.success(), "lint only warns:\n{}", stderr(&out));
    let err = stderr(&out);
    for needle in [
        "warning[kpi_without_owner]: pipelines/p.yaml:14:6: KPI `b` has no owner",
        "warning[kpi_without_target]: pipelines/p.yaml:14:6: KPI `b` has no target",
        "warning[kpi_without_direction]: pipelines/p.yaml:14:6: KPI `b` has no direction",
        "warning[kpi_without_unit]: pipelines/p.yaml:14:6: KPI `b` has no unit",
        "warning[kpi_without_objective]: pipelines/p.yaml:15:6: KPI `c` serves no objective",
        "warning[too_many_kpis]: pipelines/p.yaml:10:16: perspective `financial` has 2 KPIs, more than 1",
        "warning[too_many_objectives]: pipelines/p.yaml:9:3:",
        "the strategy map has 2 objectives, more than 1",
        "warning[empty_perspective]: pipelines/p.yaml:7:1: perspective `customer` has no KPI",
        "perspective `learning_growth` has no KPI",
        "warning[empty_objective]: pipelines/p.yaml:11:8: objective `o2` has no KPI",
        "warning[financial_only]: pipelines/p.yaml:12:1: every KPI is financial",
        "hint: add `owner:`",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    assert!(
        stdout(&out).contains("12 lint warnings"),
        "{}",
        stdout(&out)
    );

    let strict = kpiforge(dir.path(), &["validate", "--strict", "pipelines/p.yaml"]);
    assert_fails(
        &strict,
        2,
        &["12 scorecard lint warnings (errors under --strict)"],
    );

    let allowed = lint_project("empty_perspective, financial_only, kpi_without_unit");
    let out = kpiforge(
        allowed.path(),
        &["validate", "--strict", "pipelines/p.yaml"],
    );
    assert_fails(&out, 2, &["7 scorecard lint warnings"]);
    assert!(
        !stderr(&out).contains("empty_perspective"),
        "{}",
        stderr(&out)
    );

    // On a run: a KPI with no value in its last 2 months is stale; the month
    // in progress (April) does not count as one of the 2.
    let out = kpiforge(
        dir.path(),
        &["run", "pipelines/p.yaml", "--as-of", "2026-04-10"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    for kpi in ["a", "b", "c"] {
        let needle = format!(
            "KPI `{kpi}` has no value in its last 2 months (since 2026-02-01); the latest is for 2026-01-01"
        );
        assert!(err.contains(&needle), "{kpi}: {err}");
    }
    assert!(
        err.contains("warning[stale_kpi]: pipelines/p.yaml:13:6: KPI `a`"),
        "{err}"
    );
    assert_eq!(
        err.matches("KPI `a` has no value").count(),
        1,
        "printed once: {err}"
    );
    let out = kpiforge(
        dir.path(),
        &["run", "pipelines/p.yaml", "--as-of", "2026-03-10"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("stale_kpi"), "{}", stderr(&out));
}

#[test]
fn a_targets_period_that_is_not_a_date_is_an_error() {
    let data = "kpi,period,segment,value,num,den\nk,2026-01-01,,1,,\n";
    let yaml = format!(
        "name: p\noutput: out\n{SOURCES}  targets:\n    file: data/targets.csv\n    columns: {{period: varchar}}\n\
scorecard:\n  objectives:\n    - {{id: o, perspective: customer}}\n\
kpis:\n  - {{id: k, objective: o, sql: sql/k.sql, grain: month, targets: targets, red_flag: 1}}\n"
    );
    let dir = project(&[
        ("pipelines/p.yaml", &yaml),
        ("data/v.csv", data),
        ("data/targets.csv", "period,target\n2026-01,5\n"),
        ("sql/k.sql", "SELECT period, value FROM v"),
    ]);
    let out = kpiforge(
        dir.path(),
        &["run", "pipelines/p.yaml", "--as-of", "2026-02-01"],
    );
    assert_fails(
        &out,
        1,
        &[
            "KPI `k`: targets table `targets`: column `period`",
            "2026-01",
        ],
    );
}

#[test]
fn daily_sums_roll_up_over_the_days_elapsed() {
    // A daily KPI summed into a monthly scorecard with a daily target of 10: by
    // March 3 the month has had 3 days (target 30) whatever rows the query
    // returns; the day without a row counts as 0.
    let data = "kpi,period,segment,value,num,den\nd,2026-03-01,,12,,\nd,2026-03-03,,15,,\n";
    let yaml = format!(
        "name: p\noutput: out\n{SOURCES}scorecard:\n  grain: month\n  objectives:\n    - {{id: o, perspective: financial}}\n\
kpis:\n  - {{id: d, objective: o, sql: sql/d.sql, grain: day, aggregation: sum, target: 10, red_flag: 5}}\n"
    );
    let dir = project(&[
        ("pipelines/p.yaml", &yaml),
        ("data/v.csv", data),
        ("sql/d.sql", "SELECT period, value FROM v"),
    ]);
    let (_, card) = run(dir.path(), "2026-03-03");
    let d = find(&card, "d", "2026-03-01", None);
    assert_close(num(d, "value"), Some(27.0), "sum");
    assert_close(num(d, "target"), Some(30.0), "3 days of targets");
    assert_close(
        num(d, "score"),
        Some(RED_FLAG + 12.0 * (TARGET - RED_FLAG) / 15.0),
        "score",
    );
}
