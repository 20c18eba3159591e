//! The demo pipeline end to end: the binary's results against values computed
//! by `fixtures/generate.py` in plain Python from the generated rows, not by SQL.

use std::collections::HashMap;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{Date32Type, Float64Type};

use super::util::{kpiforge, read_parquet, repo, stderr, stdout};

/// (kpi_id, period, segment) -> (value, numerator, denominator), read from a published file.
type Values = HashMap<(String, String, Option<String>), (Option<f64>, Option<f64>, Option<f64>)>;

fn published(path: &std::path::Path) -> Values {
    let mut out = Values::new();
    for b in read_parquet(path) {
        let col = |n: &str| b.column(b.schema().index_of(n).unwrap()).clone();
        let (ids, periods, segments) = (col("kpi_id"), col("period_start"), col("segment"));
        let (ids, periods, segments) = (
            ids.as_string::<i32>(),
            periods.as_primitive::<Date32Type>(),
            segments.as_string::<i32>(),
        );
        let floats: Vec<_> = ["value", "numerator", "denominator"]
            .iter()
            .map(|n| col(n))
            .collect();
        let f = |i: usize, r: usize| {
            let a = floats[i].as_primitive::<Float64Type>();
            a.is_valid(r).then(|| a.value(r))
        };
        for r in 0..b.num_rows() {
            let period = periods.value_as_date(r).unwrap().to_string();
            let segment = segments.is_valid(r).then(|| segments.value(r).to_string());
            out.insert(
                (ids.value(r).to_string(), period, segment),
                (f(0, r), f(1, r), f(2, r)),
            );
        }
    }
    out
}

#[test]
fn demo_values_match_independent_computation() {
    let (out_dir, out) = super::util::run_demo();
    assert!(
        stdout(&out).contains("kpi    monthly_revenue"),
        "{}",
        stdout(&out)
    );

    let file = out_dir
        .path()
        .join("kpi_values/pipeline=demo/as_of=2026-11-27/part-0.parquet");
    let values = published(&file);
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("fixtures/retail/expected.json")).unwrap(),
    )
    .unwrap();

    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
    let mut compared = 0;
    for (kpi, by_period) in expected.as_object().unwrap() {
        for (period, want) in by_period.as_object().unwrap() {
            let key = (kpi.clone(), period.clone(), None);
            let (value, numerator, denominator) = *values
                .get(&key)
                .unwrap_or_else(|| panic!("{kpi} {period} not published"));
            if let Some(v) = want.as_f64() {
                assert!(
                    close(value.unwrap(), v),
                    "{kpi} {period}: published {value:?}, expected {v}"
                );
            } else {
                let (n, d) = (
                    want["numerator"].as_f64().unwrap(),
                    want["denominator"].as_f64().unwrap(),
                );
                assert!(
                    close(numerator.unwrap(), n) && close(denominator.unwrap(), d),
                    "{kpi} {period}: {numerator:?}/{denominator:?}, expected {n}/{d}"
                );
                assert!(close(value.unwrap(), n / d), "{kpi} {period}: ratio value");
            }
            compared += 1;
        }
    }
    assert!(compared >= 16, "compared only {compared} values");

    // Every KPI of the demo published, the segmented one per segment.
    for kpi in [
        "monthly_revenue",
        "average_order_value",
        "return_rate",
        "customer_satisfaction",
        "on_time_delivery_rate",
        "ticket_resolution_hours",
        "training_hours_per_employee",
        "staff_retention",
    ] {
        assert!(values.keys().any(|(k, _, _)| k == kpi), "{kpi} missing");
    }
    // The segmented KPI against a count made here from the CSV files.
    for (segment, count) in active_customers_october_2026() {
        let key = (
            "active_customers".to_string(),
            "2026-10-01".to_string(),
            Some(format!("segment={segment}")),
        );
        assert_eq!(values[&key].0, Some(count as f64), "{key:?}");
    }
    assert!(
        values.contains_key(&("staff_retention".into(), "2026-07-01".into(), None)),
        "quarterly KPI keyed by quarter start"
    );
}

#[test]
fn demo_validates() {
    let out = kpiforge(&repo(), &["validate", "pipelines/demo.yaml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out)
            .contains("pipeline `demo` is valid: 7 sources, 1 views, 9 KPIs, 0 lint warnings"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn init_scaffolds_a_project_that_runs() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("scorecard");
    let out = kpiforge(dir.path(), &["init", "scorecard"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let run = kpiforge(
        &project,
        &["run", "pipelines/example.yaml", "--as-of", "2026-06-30"],
    );
    assert!(run.status.success(), "{}", stderr(&run));
    let file =
        project.join("out/example/kpi_values/pipeline=example/as_of=2026-06-30/part-0.parquet");
    let values = published(&file);
    // Six months of two KPIs.
    assert_eq!(values.len(), 12, "{values:?}");
    // Refuses to overwrite a project.
    let again = kpiforge(dir.path(), &["init", "scorecard"]);
    super::util::assert_fails(&again, 2, &["already exists and is not empty"]);
}

/// Distinct customers with an order in October 2026, per segment, counted from the
/// CSV files directly (their fields hold no commas or quotes).
fn active_customers_october_2026() -> HashMap<String, usize> {
    let read =
        |name: &str| std::fs::read_to_string(repo().join("fixtures/retail").join(name)).unwrap();
    let customers = read("customers.csv");
    let segment_of: HashMap<&str, &str> = customers
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0], f[1])
        })
        .collect();
    let orders = read("orders.csv");
    let mut seen: HashMap<String, std::collections::HashSet<&str>> = HashMap::new();
    for line in orders.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        if f[2].starts_with("2026-10-") {
            seen.entry(segment_of[f[1]].to_string())
                .or_default()
                .insert(f[1]);
        }
    }
    assert_eq!(seen.len(), 2, "both segments ordered");
    seen.into_iter().map(|(s, c)| (s, c.len())).collect()
}
