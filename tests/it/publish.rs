//! Published datasets: atomic and idempotent, the previous results kept when a
//! run fails, and readable by an independent reader (pyarrow).

use std::collections::BTreeMap;
use std::path::Path;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::Int64Type;

use super::util::{
    assert_fails, have_python_module, kpiforge, project, published_values, read_parquet, repo,
    stderr,
};

const SQL: &str = "SELECT CAST(date_trunc('month', d) AS DATE) AS period, CAST(sum(amount) AS DOUBLE) AS value FROM t GROUP BY CAST(date_trunc('month', d) AS DATE)";
const YAML: &str = "name: p\noutput: out\nsources:\n  t:\n    file: data/t.csv\n    columns: {d: date}\nkpis:\n  - id: total\n    sql: sql/k.sql\n    grain: month\n";

/// Every file under `dir` (hidden ones included) with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.insert(
                    path.strip_prefix(dir).unwrap().display().to_string(),
                    std::fs::read(&path).unwrap(),
                );
            }
        }
    }
    out
}

#[test]
fn failed_run_leaves_previous_results_unchanged_and_is_recorded() {
    let dir = project(&[
        ("pipelines/p.yaml", YAML),
        ("sql/k.sql", SQL),
        ("data/t.csv", "d,amount\n2026-01-03,1\n"),
    ]);
    let ok = kpiforge(
        dir.path(),
        &["run", "pipelines/p.yaml", "--as-of", "2026-02-01"],
    );
    assert!(ok.status.success(), "{}", stderr(&ok));
    let values = dir.path().join("out/kpi_values");
    let before = snapshot(&values);
    assert_eq!(before.len(), 1, "{:?}", before.keys());

    // Same pipeline and date, now with a broken file: the run fails...
    std::fs::write(
        dir.path().join("data/t.csv"),
        "d,amount\n2026-01-03,1\n2026-01-04\n",
    )
    .unwrap();
    let failed = kpiforge(
        dir.path(),
        &["run", "pipelines/p.yaml", "--as-of", "2026-02-01"],
    );
    assert_fails(&failed, 1, &["line 3: expected 2 fields, found 1"]);
    // ...and the previous values are byte for byte what they were.
    assert_eq!(snapshot(&values), before);
    // The runs dataset holds both runs, the failure with its error.
    let runs_dir = dir.path().join("out/runs/pipeline=p/as_of=2026-02-01");
    let mut records: Vec<(String, Option<String>, i64)> = Vec::new();
    for name in snapshot(&runs_dir).keys() {
        for b in read_parquet(&runs_dir.join(name)) {
            let text = |c: &str| {
                b.column(b.schema().index_of(c).unwrap())
                    .as_string::<i32>()
                    .clone()
            };
            let (status, error) = (text("status"), text("error"));
            let values = b
                .column(b.schema().index_of("values_published").unwrap())
                .as_primitive::<Int64Type>()
                .value(0);
            records.push((
                status.value(0).to_string(),
                error.is_valid(0).then(|| error.value(0).to_string()),
                values,
            ));
        }
    }
    records.sort();
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!((records[0].0.as_str(), records[0].2), ("failed", 0));
    assert!(
        records[0]
            .1
            .as_deref()
            .unwrap()
            .contains("line 3: expected 2 fields, found 1"),
        "{records:?}"
    );
    assert_eq!(
        (records[1].0.as_str(), records[1].1.as_deref(), records[1].2),
        ("succeeded", None, 1)
    );
}

#[test]
fn rerun_replaces_exactly_its_own_partition() {
    let dir = project(&[
        ("pipelines/p.yaml", YAML),
        ("sql/k.sql", SQL),
        ("data/t.csv", "d,amount\n2026-01-03,1\n"),
    ]);
    for as_of in ["2026-02-01", "2026-03-01"] {
        assert!(
            kpiforge(dir.path(), &["run", "pipelines/p.yaml", "--as-of", as_of])
                .status
                .success()
        );
    }
    let values = dir.path().join("out/kpi_values");
    let other = snapshot(&values.join("pipeline=p/as_of=2026-02-01"));
    std::fs::write(dir.path().join("data/t.csv"), "d,amount\n2026-01-03,5\n").unwrap();
    assert!(
        kpiforge(
            dir.path(),
            &["run", "pipelines/p.yaml", "--as-of", "2026-03-01"]
        )
        .status
        .success()
    );
    let after = snapshot(&values);
    // Still one file per partition, no temporary files left; the other date untouched.
    assert_eq!(
        after.keys().cloned().collect::<Vec<_>>(),
        vec![
            "pipeline=p/as_of=2026-02-01/part-0.parquet".to_string(),
            "pipeline=p/as_of=2026-03-01/part-0.parquet".to_string(),
        ]
    );
    assert_eq!(snapshot(&values.join("pipeline=p/as_of=2026-02-01")), other);
    // The rerun's own partition holds the new value.
    let value = |date: &str| {
        published_values(&values.join(format!("pipeline=p/as_of={date}/part-0.parquet")))
    };
    assert_eq!(value("2026-03-01"), vec![Some(5.0)]);
    assert_eq!(value("2026-02-01"), vec![Some(1.0)]);
}

/// Reads every dataset of a demo run with pyarrow as Hive-partitioned tables and
/// checks schemas, partition keys and a value.
#[test]
fn pyarrow_reads_every_dataset() {
    if !have_python_module("pyarrow", "pyarrow_reads_every_dataset") {
        return;
    }
    let (out_dir, _) = super::util::run_demo();
    let script = r#"
import sys, json
import pyarrow.dataset as ds
root = sys.argv[1]
out = {}
for name in ["kpi_values", "scorecard", "quality", "runs"]:
    t = ds.dataset(f"{root}/{name}", format="parquet", partitioning="hive").to_table()
    out[name] = {"rows": t.num_rows, "columns": t.column_names,
                 "pipelines": sorted(set(t.column("pipeline").to_pylist()))}
t = ds.dataset(f"{root}/kpi_values", format="parquet", partitioning="hive").to_table().to_pylist()
rev = [r for r in t if r["kpi_id"] == "monthly_revenue" and str(r["period_start"]) == "2025-12-01"]
out["revenue_dec_2025"] = rev[0]["value"]
runs = ds.dataset(f"{root}/runs", format="parquet", partitioning="hive").to_table().to_pylist()
out["run_status"] = runs[0]["status"]
out["rows_read_orders"] = [r["rows"] for r in runs[0]["rows_read"] if r["source"] == "orders"][0]
out["types"] = {f.name: str(f.type) for f in ds.dataset(f"{root}/kpi_values", format="parquet", partitioning="hive").schema}
card = ds.dataset(f"{root}/scorecard", format="parquet", partitioning="hive").to_table().to_pylist()
out["quality_types"] = {f.name: str(f.type) for f in ds.dataset(f"{root}/quality", format="parquet", partitioning="hive").schema}
quality = ds.dataset(f"{root}/quality", format="parquet", partitioning="hive").to_table().to_pylist()
out["outcomes"] = sorted(set(r["outcome"] for r in quality))
out["scorecard_types"] = {f.name: str(f.type) for f in ds.dataset(f"{root}/scorecard", format="parquet", partitioning="hive").schema}
out["overall_oct_2026"] = [(r["score"], r["status"], r["children_scored"]) for r in card
    if r["level"] == "overall" and str(r["period_start"]) == "2026-10-01"][0]
print(json.dumps(out))
"#;
    let got = super::util::python_json(script, out_dir.path());
    let kv = &got["kpi_values"];
    assert_eq!(kv["rows"], 7 * 24 + 2 * 24 + 7, "{kv}");
    assert_eq!(kv["pipelines"], serde_json::json!(["demo"]));
    let names = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect()
    };
    let columns = names(&kv["columns"]);
    for c in [
        "run_id",
        "kpi_id",
        "kpi_name",
        "perspective",
        "objective",
        "grain",
        "period_start",
        "period_end",
        "segment",
        "value",
        "numerator",
        "denominator",
        "unit",
        "direction",
        "target",
        "red_flag",
        "score",
        "status",
        "previous_value",
        "change_abs",
        "change_pct",
        "last_year_value",
        "target_gap",
        "quality_status",
        "computed_at",
        "definition_hash",
        "pipeline",
        "as_of",
    ] {
        assert!(
            columns.iter().any(|x| x == c),
            "kpi_values lacks {c}: {columns:?}"
        );
    }
    assert_eq!(got["types"]["period_start"], "date32[day]");
    assert_eq!(got["types"]["computed_at"], "timestamp[us, tz=UTC]");
    // The scorecard: one tree per month, typed as docs/outputs.md says.
    let card = &got["scorecard"];
    assert_eq!(card["pipelines"], serde_json::json!(["demo"]));
    assert_eq!(
        card["rows"],
        24 * 18,
        "24 months of 1 overall + 4 perspectives + 4 objectives + 9 KPIs"
    );
    for (c, t) in [
        ("period_start", "date32[day]"),
        ("level", "string"),
        ("score", "double"),
        ("children_scored", "int32"),
        ("children_total", "int32"),
        ("weight", "double"),
    ] {
        assert_eq!(got["scorecard_types"][c], t, "scorecard.{c}");
    }
    let overall = &got["overall_oct_2026"];
    assert_eq!(
        (overall[1].as_str(), overall[2].as_u64()),
        (Some("green"), Some(4))
    );
    assert_eq!(
        (overall[0].as_f64().unwrap() * 10.0).round(),
        844.0,
        "{overall}"
    );
    // Every demo check, one row each (none is split by segment).
    assert_eq!(got["quality"]["rows"], 33);
    assert_eq!(
        got["outcomes"],
        serde_json::json!(["passed", "skipped", "warned"])
    );
    for (c, t) in [
        ("sample", "list<item: string>"),
        ("unexpected_count", "int64"),
        ("observed_value", "double"),
        ("checked_at", "timestamp[us, tz=UTC]"),
    ] {
        assert_eq!(got["quality_types"][c], t, "quality.{c}");
    }
    assert_eq!(got["runs"]["rows"], 1);
    let run_columns = names(&got["runs"]["columns"]);
    for c in [
        "run_id",
        "started_at",
        "finished_at",
        "status",
        "rows_read",
        "kpis_published",
        "values_published",
        "checks_failed",
        "checks_warned",
        "error",
        "kpiforge_version",
        "pipeline",
        "as_of",
    ] {
        assert!(
            run_columns.iter().any(|x| x == c),
            "runs lacks {c}: {run_columns:?}"
        );
    }
    assert_eq!(got["run_status"], "succeeded");
    assert_eq!(got["rows_read_orders"], 14000);
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("fixtures/retail/expected.json")).unwrap(),
    )
    .unwrap();
    let want = expected["monthly_revenue"]["2025-12-01"].as_f64().unwrap();
    assert!(
        (got["revenue_dec_2025"].as_f64().unwrap() - want).abs() < 1e-6,
        "{got}"
    );
}

/// Killed at any moment, a run leaves the previous results readable: the
/// partition holds the old file or a complete new one, never a part.
#[test]
fn killed_run_leaves_results_readable() {
    let mut csv = String::from("d,amount\n");
    for i in 0..300_000 {
        csv.push_str(&format!(
            "2026-{:02}-{:02},{}\n",
            1 + i % 12,
            1 + i % 28,
            i % 100
        ));
    }
    let dir = project(&[
        ("pipelines/p.yaml", YAML),
        ("sql/k.sql", SQL),
        ("data/t.csv", &csv),
    ]);
    let ok = kpiforge(
        dir.path(),
        &["run", "pipelines/p.yaml", "--as-of", "2026-12-31"],
    );
    assert!(ok.status.success(), "{}", stderr(&ok));
    let partition = dir
        .path()
        .join("out/kpi_values/pipeline=p/as_of=2026-12-31");
    let before = snapshot(&partition);
    for delay_ms in [50, 150, 300, 600] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kpiforge"))
            .args(["-q", "run", "pipelines/p.yaml", "--as-of", "2026-12-31"])
            .current_dir(dir.path())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        let after = snapshot(&partition);
        // Only the data file is visible; anything else is a hidden temporary file.
        let visible: Vec<&String> = after.keys().filter(|k| !k.starts_with('.')).collect();
        assert_eq!(visible, vec!["part-0.parquet"], "{:?}", after.keys());
        // Old or new, it is a whole file with the same 12 values.
        assert_eq!(
            published_values(&partition.join("part-0.parquet")).len(),
            12
        );
        assert_eq!(before.len(), 1);
    }
}

#[test]
fn exports_write_a_flat_file_with_their_own_columns() {
    let yaml = format!(
        "{YAML}exports:\n  - file: extracts/latest.parquet\n    query: \"SELECT kpi_id AS kpi, period_start AS month, value, as_of FROM kpi_values ORDER BY kpi, month\"\n"
    );
    let csv = "d,amount\n2026-01-03,1\n2026-02-04,2\n2026-02-05,3\n";
    let dir = project(&[
        ("pipelines/p.yaml", &yaml),
        ("sql/k.sql", SQL),
        ("data/t.csv", csv),
    ]);
    let out = kpiforge(
        dir.path(),
        &["run", "pipelines/p.yaml", "--as-of", "2026-03-01"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let batches = read_parquet(&dir.path().join("extracts/latest.parquet"));
    let schema = batches[0].schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, vec!["kpi", "month", "value", "as_of"]);
    assert_eq!(
        published_values(&dir.path().join("extracts/latest.parquet")),
        vec![Some(1.0), Some(5.0)]
    );
    // A bad export beside a good one fails the run with the export's file
    // named, and leaves every dataset (but `runs/`, which records the failure)
    // and export as it was, with no staged file behind (they were flushed while
    // the exports ran).
    let published = || {
        let mut out = snapshot(&dir.path().join("out"));
        out.retain(|path, _| !path.starts_with("runs/"));
        (out, snapshot(&dir.path().join("extracts")))
    };
    let before = published();
    let yaml =
        format!("{yaml}  - file: extracts/bad.parquet\n    query: SELECT nope FROM kpi_values\n");
    std::fs::write(dir.path().join("pipelines/p.yaml"), yaml).unwrap();
    let out = kpiforge(
        dir.path(),
        &["run", "pipelines/p.yaml", "--as-of", "2026-03-01"],
    );
    assert_fails(&out, 1, &["export ", "extracts/bad.parquet", "nope"]);
    assert_eq!(published(), before);
}
