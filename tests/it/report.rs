//! The HTML scorecard, opened in a real headless Chromium; and every published
//! dataset read by DuckDB, as a BI user would.

use std::process::Command;

use super::util::{have, have_python_module, kpiforge, repo, stderr, stdout};

fn demo_output() -> tempfile::TempDir {
    super::util::run_demo().0
}

const KPIS: [&str; 9] = [
    "monthly_revenue",
    "average_order_value",
    "return_rate",
    "customer_satisfaction",
    "active_customers",
    "on_time_delivery_rate",
    "ticket_resolution_hours",
    "training_hours_per_employee",
    "staff_retention",
];

#[test]
fn the_html_scorecard_renders_in_chromium() {
    let out = demo_output();
    let html = out.path().join("scorecard.html");
    let report = kpiforge(
        &repo(),
        &[
            "report",
            out.path().to_str().unwrap(),
            "-o",
            html.to_str().unwrap(),
        ],
    );
    assert!(report.status.success(), "{}", stderr(&report));
    assert!(stdout(&report).contains("scorecard.html"));
    let text = std::fs::read_to_string(&html).unwrap();
    // Self-contained: nothing is fetched from anywhere.
    for remote in ["http://", "https://", "<script", "<link"] {
        assert!(!text.contains(remote), "the report refers to {remote}");
    }
    if !have(
        "chromium",
        "the_html_scorecard_renders_in_chromium",
        "apt-get install chromium",
    ) {
        return;
    }
    let chromium = |extra: &[&str]| {
        let profile = tempfile::tempdir().unwrap();
        let mut args = vec![
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-background-networking".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(format!("file://{}", html.display()));
        let output = Command::new("chromium")
            .args(&args)
            .output()
            .expect("chromium runs");
        assert!(
            output.status.success(),
            "chromium failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output
    };
    let dom = String::from_utf8(chromium(&["--dump-dom"]).stdout).unwrap();
    for kpi in KPIS {
        assert!(
            dom.contains(&format!("id=\"kpi-{kpi}\"")),
            "KPI {kpi} missing from the DOM"
        );
    }
    for p in [
        "financial",
        "customer",
        "internal_process",
        "learning_growth",
    ] {
        assert!(
            dom.contains(&format!("id=\"perspective-{p}\"")),
            "perspective {p} missing"
        );
    }
    for o in [
        "grow_revenue",
        "delight_customers",
        "ship_on_time",
        "skilled_team",
    ] {
        assert!(
            dom.contains(&format!("id=\"map-{o}\"")),
            "strategy-map node {o} missing"
        );
    }
    assert!(
        dom.contains("freshness_order_date"),
        "the warned check is in the quality panel"
    );
    assert_eq!(
        dom.matches("class=\"cause\"").count(),
        3,
        "three cause -> effect arrows"
    );
    let png = out.path().join("scorecard.png");
    chromium(&[
        "--window-size=1200,2400",
        &format!("--screenshot={}", png.display()),
    ]);
    let image = std::fs::read(&png).unwrap();
    assert!(
        image.starts_with(b"\x89PNG") && image.len() > 10_000,
        "a screenshot of {} bytes",
        image.len()
    );
}

#[test]
fn report_true_writes_the_scorecard_with_the_run() {
    let project = tempfile::tempdir().unwrap();
    let init = kpiforge(project.path(), &["init", "p"]);
    assert!(init.status.success(), "{}", stderr(&init));
    let dir = project.path().join("p");
    let yaml = dir.join("pipelines/example.yaml");
    let text = std::fs::read_to_string(&yaml).unwrap().replace(
        "output: out/example\n",
        "output: out/example\nreport: true\n",
    );
    std::fs::write(&yaml, text).unwrap();
    let run = kpiforge(
        &dir,
        &["run", "pipelines/example.yaml", "--as-of", "2026-06-30"],
    );
    assert!(run.status.success(), "{}", stderr(&run));
    let html = dir.join("out/example/report/pipeline=example/as_of=2026-06-30/scorecard.html");
    assert!(stdout(&run).contains("scorecard: "), "{}", stdout(&run));
    let text = std::fs::read_to_string(&html).unwrap();
    assert!(text.contains("id=\"kpi-monthly_revenue\"") && text.contains("id=\"run\""));
}

/// Every dataset read with DuckDB's hive partitioning: types and row counts.
#[test]
fn duckdb_reads_every_dataset() {
    if !have_python_module("duckdb", "duckdb_reads_every_dataset") {
        return;
    }
    let out = demo_output();
    let script = r#"
import sys, json, duckdb
root = sys.argv[1]
out = {}
for name in ["kpi_values", "scorecard", "quality", "runs"]:
    rel = duckdb.sql(f"SELECT * FROM read_parquet('{root}/{name}/**/*.parquet', hive_partitioning = true)")
    out[name] = {"rows": len(rel.fetchall()), "types": {c: str(t) for c, t in zip(rel.columns, rel.types)}}
out["overall"] = duckdb.sql(f"SELECT round(score, 1), status FROM read_parquet('{root}/scorecard/**/*.parquet', hive_partitioning = true) WHERE level = 'overall' AND period_start = DATE '2026-10-01'").fetchall()
print(json.dumps(out, default=str))
"#;
    let got = super::util::python_json(script, out.path());
    // 7 monthly KPIs x 24 months, active customers x 2 segments, 7 quarters.
    assert_eq!(got["kpi_values"]["rows"], 7 * 24 + 2 * 24 + 7, "{got}");
    assert_eq!(got["scorecard"]["rows"], 24 * 18);
    assert_eq!(got["quality"]["rows"], 33);
    assert_eq!(got["runs"]["rows"], 1);
    for (dataset, column, t) in [
        ("kpi_values", "period_start", "DATE"),
        ("kpi_values", "value", "DOUBLE"),
        ("kpi_values", "computed_at", "TIMESTAMP WITH TIME ZONE"),
        ("kpi_values", "as_of", "DATE"),
        ("scorecard", "children_scored", "INTEGER"),
        ("scorecard", "causes", "VARCHAR[]"),
        ("quality", "unexpected_count", "BIGINT"),
        ("quality", "sample", "VARCHAR[]"),
        (
            "runs",
            "rows_read",
            "STRUCT(\"source\" VARCHAR, \"rows\" BIGINT)[]",
        ),
    ] {
        assert_eq!(got[dataset]["types"][column], t, "{dataset}.{column}");
    }
    assert_eq!(got["overall"], serde_json::json!([[84.4, "green"]]));
}
