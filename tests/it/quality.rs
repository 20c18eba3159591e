//! Data-quality checks: each type with its edge cases, judged as the established
//! tools judge them, against counts worked out by hand; the gate end to end;
//! history checks over several runs; invalid definitions; one scan per source.

use std::path::Path;

use super::util::{Row, assert_fails, kpiforge, num, project, rows, stderr, stdout, text};

/// Runs `pipelines/p.yaml` for `as_of` and returns (exit code, quality rows).
fn run(dir: &Path, as_of: &str) -> (i32, Vec<Row>) {
    let out = kpiforge(dir, &["run", "pipelines/p.yaml", "--as-of", as_of]);
    let code = out.status.code().unwrap_or(-1);
    assert!(
        code == 0 || code == 3,
        "run failed ({code}):\n{}",
        stderr(&out)
    );
    let file = dir.join(format!(
        "out/quality/pipeline=p/as_of={as_of}/part-0.parquet"
    ));
    (code, rows(&file))
}

/// A project whose one source `t` is `csv` (columns typed by `columns`), with `checks`.
fn one_source(csv: &str, columns: &str, checks: &str) -> tempfile::TempDir {
    let yaml = format!(
        "name: p\noutput: out\nsources:\n  t:\n    file: data/t.csv\n    columns: {{{columns}}}\n    checks:\n{checks}"
    );
    project(&[("pipelines/p.yaml", &yaml), ("data/t.csv", csv)])
}

/// The whole-check row of `check` (not a segment's).
fn result<'a>(rows: &'a [Row], check: &str) -> &'a Row {
    rows.iter()
        .find(|r| text(r, "check") == Some(check) && text(r, "segment").is_none())
        .unwrap_or_else(|| panic!("no result for {check}: {rows:?}"))
}

/// (outcome, unexpected, rows checked) of a check.
fn verdict(rows: &[Row], check: &str) -> (String, Option<f64>, Option<f64>) {
    let r = result(rows, check);
    (
        text(r, "outcome").unwrap().to_string(),
        num(r, "unexpected_count"),
        num(r, "rows_checked"),
    )
}

fn v(
    outcome: &str,
    unexpected: Option<u64>,
    checked: Option<u64>,
) -> (String, Option<f64>, Option<f64>) {
    (
        outcome.to_string(),
        unexpected.map(|x| x as f64),
        checked.map(|x| x as f64),
    )
}

#[test]
fn value_checks_ignore_nulls_and_mostly_divides_by_non_null_rows() {
    // x: 1, NULL, 7, NULL, 3; s: a, NULL, c, NULL, a.
    let csv = "id,x,s,empty\n1,1,a,\n2,,,\n3,7,c,\n4,,,\n5,3,a,\n";
    let checks = "      - not_null: x
      - not_null: {column: x, mostly: 0.6, name: x_mostly_present}
      - not_null: {column: x, max_unexpected: 1, name: x_one_null_allowed}
      - accepted_values: {column: s, values: [a, b]}
      - accepted_values: {column: s, values: [a, b], mostly: 0.6, name: s_mostly}
      - accepted_values: {column: s, values: [], name: nothing_accepted}
      - accepted_values: {column: empty, values: [z], name: all_null_values}
      - unique: empty
      - regex: {column: empty, pattern: '^z$'}
      - regex: {column: s, pattern: '^[ab]$'}
      - between: {column: x, min: 1, max: 7}
      - between: {column: x, min: 1, max: 7, strict_min: true, name: x_strict_min}
      - between: {column: x, min: 1, max: 7, strict_min: true, strict_max: true, name: x_strict}
";
    let dir = one_source(csv, "x: double, s: varchar, empty: varchar", checks);
    let (code, rows) = run(dir.path(), "2026-01-31");
    assert_eq!(code, 3, "error checks failed");
    // not_null counts NULLs over all rows: 2 of 5.
    assert_eq!(verdict(&rows, "not_null_x"), v("failed", Some(2), Some(5)));
    assert_eq!(
        num(result(&rows, "not_null_x"), "unexpected_fraction"),
        Some(0.4)
    );
    assert_eq!(
        verdict(&rows, "x_mostly_present"),
        v("passed", Some(2), Some(5))
    );
    assert_eq!(verdict(&rows, "x_one_null_allowed").0, "failed");
    // accepted_values judges the 3 non-null values: c fails.
    assert_eq!(
        verdict(&rows, "accepted_values_s"),
        v("failed", Some(1), Some(3))
    );
    assert_eq!(
        verdict(&rows, "s_mostly"),
        v("passed", Some(1), Some(3)),
        "2/3 >= 0.6"
    );
    // Samples of failing rows carry the checked column (no `key:` declared here).
    assert_eq!(
        text(result(&rows, "accepted_values_s"), "sample"),
        Some("[s=c]")
    );
    // An empty accepted-value set fails; an all-null column passes.
    assert_eq!(verdict(&rows, "nothing_accepted").0, "failed");
    assert_eq!(
        verdict(&rows, "all_null_values"),
        v("passed", Some(0), Some(0))
    );
    assert_eq!(
        verdict(&rows, "unique_empty"),
        v("passed", Some(0), Some(0))
    );
    assert_eq!(verdict(&rows, "regex_empty"), v("passed", Some(0), Some(0)));
    assert_eq!(verdict(&rows, "regex_s"), v("failed", Some(1), Some(3)));
    // Bounds are inclusive unless strict: x = 1, 7, 3.
    assert_eq!(verdict(&rows, "between_x"), v("passed", Some(0), Some(3)));
    assert_eq!(
        verdict(&rows, "x_strict_min"),
        v("failed", Some(1), Some(3))
    );
    assert_eq!(verdict(&rows, "x_strict"), v("failed", Some(2), Some(3)));
}

#[test]
fn unique_reports_every_duplicated_occurrence() {
    // k: 1 three times, 2, 3, NULL. (a, b): (1, NULL) twice, (NULL, NULL) twice, (2, 3).
    let csv = "id,k,a,b\n1,1,1,\n2,1,1,\n3,1,,\n4,2,,\n5,3,2,3\n6,,9,9\n";
    let checks = "      - unique: k
      - unique: [a, b]
";
    let dir = one_source(csv, "k: bigint, a: bigint, b: bigint", checks);
    let (_, rows) = run(dir.path(), "2026-01-31");
    assert_eq!(verdict(&rows, "unique_k"), v("failed", Some(3), Some(5)));
    let sample = text(result(&rows, "unique_k"), "sample")
        .unwrap()
        .to_string();
    assert!(sample.contains("k=1, duplicates=3"), "{sample}");
    // Rows whose key columns are all NULL are skipped; (1, NULL) twice is a duplicate.
    assert_eq!(verdict(&rows, "unique_a_b"), v("failed", Some(2), Some(4)));
}

#[test]
fn filters_segments_counts_and_empty_tables() {
    let csv = "id,region,kind,x\n1,north,a,\n2,north,b,\n3,south,a,5\n4,south,a,\n5,east,a,1\n";
    let checks = "      - not_null: {column: x, where: \"kind = 'a'\", name: x_for_kind_a}
      - row_count: {min: 2, group_by: [region], name: two_per_region}
      - not_null: {column: x, group_by: [region], severity: warn, name: x_per_region}
      - expression: {sql: \"x > 2\", name: x_above_two}
      - metric: {sql: \"avg(x)\", min: 2, max: 4}
      - completeness: {column: x, min: 0.5, name: x_half_complete}
";
    let dir = one_source(csv, "x: double", checks);
    let (_, rows) = run(dir.path(), "2026-01-31");
    // kind = 'a': rows 1, 3, 4, 5; x NULL in rows 1 and 4.
    assert_eq!(
        verdict(&rows, "x_for_kind_a"),
        v("failed", Some(2), Some(4))
    );
    // Regions: north 2, south 2, east 1: east fails, and is reported on its own row.
    let segments: Vec<&str> = rows
        .iter()
        .filter(|r| text(r, "check") == Some("two_per_region") && text(r, "segment").is_some())
        .map(|r| text(r, "segment").unwrap())
        .collect();
    assert_eq!(segments, ["region=east"]);
    assert_eq!(
        text(result(&rows, "two_per_region"), "outcome"),
        Some("failed")
    );
    // warn never fails the check: north has 2 NULLs, south 1, east 0.
    assert_eq!(
        text(result(&rows, "x_per_region"), "outcome"),
        Some("warned")
    );
    let north = rows
        .iter()
        .find(|r| {
            text(r, "check") == Some("x_per_region") && text(r, "segment") == Some("region=north")
        })
        .unwrap();
    assert_eq!(num(north, "unexpected_count"), Some(2.0));
    // NULL passes an expression (as in dbt): only x = 1 fails.
    assert_eq!(verdict(&rows, "x_above_two"), v("failed", Some(1), Some(5)));
    assert_eq!(num(result(&rows, "metric"), "observed_value"), Some(3.0));
    assert_eq!(text(result(&rows, "metric"), "outcome"), Some("passed"));
    assert_eq!(
        num(result(&rows, "x_half_complete"), "observed_value"),
        Some(0.4)
    );
    assert_eq!(
        text(result(&rows, "x_half_complete"), "outcome"),
        Some("failed")
    );

    // An empty table: row_count fails, value checks have nothing to judge.
    let dir = one_source(
        "id,x\n",
        "id: bigint, x: double",
        "      - row_count: {min: 1}\n      - not_null: x\n      - completeness: {column: x, min: 0.9}\n      - unique: id\n",
    );
    let (_, rows) = run(dir.path(), "2026-01-31");
    assert_eq!(verdict(&rows, "row_count").0, "failed");
    assert_eq!(verdict(&rows, "not_null_x"), v("passed", Some(0), Some(0)));
    assert_eq!(verdict(&rows, "completeness_x").0, "passed");
    assert_eq!(verdict(&rows, "unique_id").0, "passed");
}

#[test]
fn freshness_is_judged_at_the_end_of_the_as_of_day_in_the_pipeline_time_zone() {
    // 2026-01-30 22:00 in Amsterdam (21:00 UTC); the as-of day ends at
    // 2026-01-31 24:00 Amsterdam = 23:00 UTC: 26 hours later.
    let csv = "id,at\n1,2026-01-29 10:00:00\n2,2026-01-30 22:00:00\n";
    let yaml = "name: p\ntimezone: Europe/Amsterdam\noutput: out\nsources:\n  t:\n    file: data/t.csv\n    columns: {at: timestamp}\n    checks:\n      - freshness: {column: at, max_age: 26h, name: fresh_26h}\n      - freshness: {column: at, max_age: 25h, name: fresh_25h}\n";
    let dir = project(&[("pipelines/p.yaml", yaml), ("data/t.csv", csv)]);
    let (_, rows) = run(dir.path(), "2026-01-31");
    assert_eq!(
        num(result(&rows, "fresh_26h"), "observed_value"),
        Some(26.0)
    );
    assert_eq!(text(result(&rows, "fresh_26h"), "outcome"), Some("passed"));
    assert_eq!(text(result(&rows, "fresh_25h"), "outcome"), Some("failed"));
}

#[test]
fn schema_relationship_and_reconcile() {
    let orders = "order_id,customer_id,amount\n1,10,5.0\n2,11,7.5\n3,99,1.0\n4,,2.0\n";
    let customers = "customer_id,name\n10,a\n11,b\n";
    let ledger = "entry,total\n1,12.5\n2,3.0\n";
    let yaml = "name: p
output: out
sources:
  orders:
    file: data/orders.csv
    key: [order_id]
    checks:
      - schema: {required: [order_id, amount], types: {amount: double, customer_id: varchar}, forbidden: [ssn]}
  customers:
    file: data/customers.csv
  ledger:
    file: data/ledger.csv
checks:
  - relationship: {from: orders.customer_id, to: customers.customer_id}
  - reconcile: {name: books_agree, left: 'SELECT sum(amount) FROM orders', right: 'SELECT sum(total) FROM ledger', tolerance: 0.01}
  - reconcile: {name: books_agree_exactly, left: 'SELECT sum(amount) FROM orders', right: 'SELECT sum(total) FROM ledger', severity: warn}
";
    let dir = project(&[
        ("pipelines/p.yaml", yaml),
        ("data/orders.csv", orders),
        ("data/customers.csv", customers),
        ("data/ledger.csv", "entry,total\n1,12.5\n2,3.05\n"),
    ]);
    let _ = ledger;
    let (_, rows) = run(dir.path(), "2026-01-31");
    let schema = result(&rows, "schema");
    assert_eq!(text(schema, "outcome"), Some("failed"));
    assert_eq!(
        text(schema, "message"),
        Some("column `customer_id` is Int64, expected Utf8")
    );
    // Customer 99 has no match; the NULL is not judged.
    let rel = result(&rows, "relationship_orders_customer_id_customers");
    assert_eq!(
        verdict(&rows, "relationship_orders_customer_id_customers"),
        v("failed", Some(1), Some(3))
    );
    assert_eq!(text(rel, "source"), Some("orders"));
    assert_eq!(text(rel, "sample"), Some("[customer_id=99]"));
    // 15.5 against 15.55: 0.32% apart.
    let books = result(&rows, "books_agree");
    assert_eq!(text(books, "outcome"), Some("passed"));
    assert!((num(books, "observed_value").unwrap() - 0.05 / 15.55).abs() < 1e-12);
    assert_eq!(
        text(result(&rows, "books_agree_exactly"), "outcome"),
        Some("warned")
    );
}

#[test]
fn change_and_anomaly_compare_with_earlier_runs() {
    let checks = "      - change: {sql: \"count(*)\", max_change: 0.2, name: volume}
      - anomaly: {sql: \"sum(x)\", max_z: 3, runs: 5, min_runs: 3, name: total}
";
    let dir = one_source("x\n10\n", "x: double", checks);
    let data = dir.path().join("data/t.csv");
    let write = |xs: &[u32]| {
        let body: String = xs.iter().map(|x| format!("{x}\n")).collect();
        std::fs::write(&data, format!("x\n{body}")).unwrap();
    };
    let judge = |day: &str| {
        let (_, rows) = run(dir.path(), day);
        (
            text(result(&rows, "volume"), "outcome")
                .unwrap()
                .to_string(),
            text(result(&rows, "total"), "outcome").unwrap().to_string(),
        )
    };
    // Day 1: nothing to compare with.
    write(&[10; 10]);
    assert_eq!(judge("2026-01-01"), ("skipped".into(), "skipped".into()));
    // Days 2 to 4: 11, 10, 11 rows (+10%, -9%, +10%); sums 110, 100, 110.
    write(&[10; 11]);
    assert_eq!(judge("2026-01-02").0, "passed");
    write(&[10; 10]);
    assert_eq!(judge("2026-01-03"), ("passed".into(), "skipped".into()));
    write(&[10; 11]);
    assert_eq!(
        judge("2026-01-04"),
        ("passed".into(), "passed".into()),
        "z of 110 over 100, 110, 100"
    );
    // Day 5: 20 rows: +82% and a sum of 200, far outside 100-110.
    write(&[10; 20]);
    let (_, rows) = run(dir.path(), "2026-01-05");
    assert_eq!(text(result(&rows, "volume"), "outcome"), Some("failed"));
    assert_eq!(text(result(&rows, "total"), "outcome"), Some("failed"));
    assert!(
        text(result(&rows, "total"), "message")
            .unwrap()
            .contains("over 4 runs"),
        "{:?}",
        result(&rows, "total")
    );
    // A rerun of day 3 compares with days 1 and 2 only, not with later days.
    write(&[10; 10]);
    let (_, rows) = run(dir.path(), "2026-01-03");
    assert!(
        text(result(&rows, "volume"), "message")
            .unwrap()
            .contains("11 on 2026-01-02")
    );
}

/// A pipeline with two sources, a KPI on each, and a check on `orders` that fails.
fn gated(on_failure: &str, severity: &str) -> tempfile::TempDir {
    let yaml = format!(
        "name: p
output: out
quality: {{on_failure: {on_failure}}}
sources:
  orders:
    file: data/orders.csv
    columns: {{d: date}}
    key: [id]
    quarantine: true
    checks:
      - between: {{column: amount, min: 0, severity: {severity}}}
      - not_null: {{column: amount, severity: warn}}
  visits:
    file: data/visits.csv
    columns: {{d: date}}
views:
  order_totals:
    query: SELECT d, sum(amount) AS amount FROM orders GROUP BY d
scorecard:
  objectives:
    - {{id: o, perspective: financial}}
kpis:
  - {{id: revenue, objective: o, sql: sql/revenue.sql, grain: month, target: 10, red_flag: 5}}
  - {{id: visits, objective: o, sql: sql/visits.sql, grain: month, target: 10, red_flag: 5}}
"
    );
    project(&[
        ("pipelines/p.yaml", &yaml),
        (
            "data/orders.csv",
            "id,d,amount\n1,2026-01-05,10\n2,2026-01-06,-3\n3,2026-01-07,\n",
        ),
        ("data/visits.csv", "id,d\n1,2026-01-05\n"),
        (
            "sql/revenue.sql",
            "SELECT CAST(date_trunc('month', d) AS DATE) AS period, sum(amount) AS value FROM order_totals GROUP BY 1",
        ),
        (
            "sql/visits.sql",
            "SELECT CAST(date_trunc('month', d) AS DATE) AS period, CAST(count(*) AS DOUBLE) AS value FROM visits GROUP BY 1",
        ),
    ])
}

#[test]
fn a_failed_error_check_blocks_the_kpis_that_read_its_source() {
    let dir = gated("flag", "error");
    let out = kpiforge(
        dir.path(),
        &["run", "pipelines/p.yaml", "--as-of", "2026-01-31"],
    );
    assert_fails(
        &out,
        3,
        &["1 check(s) failed; the KPIs reading orders are published as blocked"],
    );
    let part = |d: &str| {
        dir.path().join(format!(
            "out/{d}/pipeline=p/as_of=2026-01-31/part-0.parquet"
        ))
    };
    let values = rows(&part("kpi_values"));
    let kpi = |id: &str| {
        values
            .iter()
            .find(|r| text(r, "kpi_id") == Some(id))
            .unwrap()
    };
    // revenue reads orders through the view: blocked, its value kept, no score.
    assert_eq!(text(kpi("revenue"), "quality_status"), Some("failed"));
    assert_eq!(text(kpi("revenue"), "status"), Some("blocked"));
    assert_eq!(num(kpi("revenue"), "score"), None);
    assert_eq!(num(kpi("revenue"), "value"), Some(7.0));
    assert_eq!(text(kpi("visits"), "quality_status"), Some("not_checked"));
    assert!(num(kpi("visits"), "score").is_some());
    let card = rows(&part("scorecard"));
    let node = |id: &str| card.iter().find(|r| text(r, "id") == Some(id)).unwrap();
    assert_eq!(text(node("revenue"), "status"), Some("blocked"));
    assert_eq!(text(node("o"), "children_scored"), Some("1"));
    // The run is recorded as such.
    let runs_dir = dir.path().join("out/runs/pipeline=p/as_of=2026-01-31");
    let run_file = std::fs::read_dir(&runs_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let run = &rows(&run_file)[0];
    assert_eq!(text(run, "status"), Some("quality_failed"));
    assert_eq!(
        (num(run, "checks_failed"), num(run, "checks_warned")),
        (Some(1.0), Some(1.0))
    );
    // The failing rows are quarantined, with the checks they failed.
    let quarantined = rows(
        &dir.path()
            .join("out/quarantine/orders/pipeline=p/as_of=2026-01-31/part-0.parquet"),
    );
    let failed: Vec<(Option<&str>, Option<&str>)> = quarantined
        .iter()
        .map(|r| (text(r, "id"), text(r, "failed_checks")))
        .collect();
    assert_eq!(
        failed,
        [
            (Some("2"), Some("between_amount")),
            (Some("3"), Some("not_null_amount"))
        ]
    );
    // The terminal names the failed check.
    assert!(
        stdout(&out).contains("failed   between_amount"),
        "{}",
        stdout(&out)
    );

    // Withheld: no values for the blocked KPI at all.
    let dir = gated("withhold", "error");
    let out = kpiforge(
        dir.path(),
        &["run", "pipelines/p.yaml", "--as-of", "2026-01-31"],
    );
    assert_eq!(out.status.code(), Some(3));
    let values = rows(
        &dir.path()
            .join("out/kpi_values/pipeline=p/as_of=2026-01-31/part-0.parquet"),
    );
    let ids: Vec<&str> = values.iter().filter_map(|r| text(r, "kpi_id")).collect();
    assert_eq!(ids, ["visits"]);

    // A warn check never blocks.
    let dir = gated("flag", "warn");
    let out = kpiforge(
        dir.path(),
        &["run", "pipelines/p.yaml", "--as-of", "2026-01-31"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let values = rows(
        &dir.path()
            .join("out/kpi_values/pipeline=p/as_of=2026-01-31/part-0.parquet"),
    );
    let revenue = values
        .iter()
        .find(|r| text(r, "kpi_id") == Some("revenue"))
        .unwrap();
    assert_eq!(text(revenue, "quality_status"), Some("warned"));
    assert!(num(revenue, "score").is_some());
}

#[test]
fn check_command_reports_and_publishes_nothing() {
    let dir = gated("flag", "error");
    let out = kpiforge(
        dir.path(),
        &["check", "pipelines/p.yaml", "--as-of", "2026-01-31"],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let shown = stdout(&out);
    assert!(
        shown.contains("checks: 0 passed, 1 warned, 1 failed, 0 skipped"),
        "{shown}"
    );
    assert!(shown.contains("source orders"), "{shown}");
    assert!(shown.contains("sample: id=2, amount=-3"), "{shown}");
    assert!(!dir.path().join("out").exists(), "check publishes nothing");
}

#[test]
fn invalid_check_definitions_are_configuration_errors_with_their_line() {
    let case = |checks: &str| {
        let dir = one_source("id,amount,email\n1,2,a@b\n", "amount: double", checks);
        kpiforge(dir.path(), &["validate", "pipelines/p.yaml"])
    };
    assert_fails(
        &case("      - not_null: amout\n"),
        2,
        &[
            "pipelines/p.yaml:8:9: sources.t.checks[0].not_null: source `t` has no column `amout`",
            "did you mean `amount`?",
        ],
    );
    assert_fails(
        &case("      - regex: {column: email, pattern: '([a-z'}\n"),
        2,
        &[
            "p.yaml:8:",
            "sources.t.checks[0].regex.pattern: the regex `([a-z` does not compile",
        ],
    );
    assert_fails(
        &case("      - between: {column: amount, min: 5, max: 1}\n"),
        2,
        &["sources.t.checks[0].between.min: min 5 is above max 1"],
    );
    assert_fails(
        &case("      - not_null: {column: amount, mostly: 1.5}\n"),
        2,
        &["mostly 1.5 is not in (0, 1]"],
    );
    assert_fails(
        &case("      - between: {column: amount, pattern: x}\n"),
        2,
        &[
            "`pattern` does not apply to a `between` check",
            "a `between` check takes: column, min, max",
        ],
    );
    assert_fails(
        &case("      - unqiue: id\n"),
        2,
        &["unknown value 'unqiue'", "did you mean 'unique'?"],
    );
    assert_fails(
        &case("      - expression: {sql: \"amout > 0\"}\n"),
        2,
        &[
            "sources.t.checks[0].expression: the check's SQL does not plan",
            "amout",
        ],
    );
    assert_fails(
        &case("      - freshness: {column: amount, max_age: 3 fortnights}\n"),
        2,
        &["unknown unit `fortnights`"],
    );
}

/// N scalar checks on a source cost one scan of it: a table provider that
/// counts its scans stands in for the source while the checks run.
#[tokio::test]
async fn scalar_checks_of_a_source_share_one_scan() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use datafusion::arrow::datatypes::SchemaRef;
    use datafusion::catalog::{Session, TableProvider};
    use datafusion::datasource::TableType;
    use datafusion::logical_expr::Expr;
    use datafusion::physical_plan::ExecutionPlan;

    #[derive(Debug)]
    struct Counting {
        inner: Arc<dyn TableProvider>,
        scans: Arc<AtomicUsize>,
    }

    #[async_trait::async_trait]
    impl TableProvider for Counting {
        fn schema(&self) -> SchemaRef {
            self.inner.schema()
        }
        fn table_type(&self) -> TableType {
            TableType::Base
        }
        async fn scan(
            &self,
            state: &dyn Session,
            projection: Option<&Vec<usize>>,
            filters: &[Expr],
            limit: Option<usize>,
        ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
            self.scans.fetch_add(1, Ordering::SeqCst);
            self.inner.scan(state, projection, filters, limit).await
        }
    }

    let checks = "      - row_count: {min: 1}
      - not_null: [id, amount]
      - completeness: {column: email, min: 0.5}
      - accepted_values: {column: kind, values: [a, b], max_unexpected: 1}
      - between: {column: amount, min: 0, where: \"kind = 'a'\"}
      - regex: {column: email, pattern: '@'}
      - expression: {sql: \"amount < 1000\"}
      - metric: {sql: \"sum(amount)\", min: 0}
      - freshness: {column: d, max_age: 400d}
";
    let dir = one_source(
        "id,kind,amount,email,d\n1,a,5,x@y,2026-01-01\n2,b,7,,2026-01-02\n3,c,9,z@y,2026-01-03\n",
        "amount: double, d: date",
        checks,
    );
    let pipeline = kpiforge::config::load(&dir.path().join("pipelines/p.yaml")).unwrap();
    let out = dir.path().to_path_buf();
    let scans_with = |pipeline: kpiforge::config::Pipeline| {
        let out = out.clone();
        async move {
            let ctx = kpiforge::run::session();
            kpiforge::source::register_all(&ctx, &pipeline, kpiforge::source::Mode::Load)
                .await
                .unwrap();
            let scans = Arc::new(AtomicUsize::new(0));
            let inner = ctx.deregister_table("t").unwrap().unwrap();
            ctx.register_table(
                "t",
                Arc::new(Counting {
                    inner,
                    scans: scans.clone(),
                }),
            )
            .unwrap();
            let compiled = kpiforge::quality::compile::compile(&ctx, &pipeline)
                .await
                .unwrap();
            let as_of = chrono::NaiveDate::from_ymd_opt(2026, 1, 31).unwrap();
            let report = kpiforge::quality::run(&ctx, &pipeline, &compiled, as_of, &out, None)
                .await
                .0;
            (scans.load(Ordering::SeqCst), report)
        }
    };
    let (scans, report) = scans_with(pipeline.clone()).await;
    assert_eq!(report.results.len(), 10, "{report:#?}");
    assert!(
        report
            .results
            .iter()
            .all(|r| r.outcome == kpiforge::quality::Outcome::Passed),
        "{report:#?}"
    );
    assert_eq!(scans, 1, "ten scalar checks, one scan");

    // A uniqueness check adds its GROUP BY; accepted values on the same column share it.
    let mut with_unique = pipeline;
    let mut extra = kpiforge::config::load(&{
        let yaml = std::fs::read_to_string(dir.path().join("pipelines/p.yaml")).unwrap()
            + "      - unique: kind\n";
        let p = dir.path().join("pipelines/q.yaml");
        std::fs::write(&p, yaml).unwrap();
        p
    })
    .unwrap();
    with_unique.sources = std::mem::take(&mut extra.sources);
    let (scans, report) = scans_with(with_unique).await;
    let accepted = report
        .results
        .iter()
        .find(|r| r.check == "accepted_values_kind")
        .unwrap();
    // kind c is outside the set; the GROUP BY of `unique: kind` measured it.
    assert_eq!(
        (accepted.unexpected, accepted.rows_checked),
        (Some(1), Some(3))
    );
    assert_eq!(scans, 2, "the scalar pass and one GROUP BY");
}

#[test]
fn shared_measurements_stay_right_at_the_edges() {
    // Two unique checks on one column: the accepted values they share are counted once.
    let csv = "id,k\n1,x\n2,x\n3,y\n4,z\n5,\n6,\n";
    let checks = "      - unique: k
      - unique: {column: k, mostly: 0.5, severity: warn, name: k_mostly_unique}
      - accepted_values: {column: k, values: [x, y], mostly: 0.7}
      - row_count: {min: 1, group_by: [k], where: \"id > 100\", name: per_k}
      - expression: {sql: \"CAST(k AS INT) > 0\", severity: warn, name: k_is_a_number}
";
    let dir = one_source(csv, "k: varchar", checks);
    let (_, rows) = run(dir.path(), "2026-01-31");
    // x twice; the two NULLs are neither duplicates nor sampled.
    assert_eq!(verdict(&rows, "unique_k"), v("failed", Some(2), Some(4)));
    assert_eq!(
        text(result(&rows, "unique_k"), "sample"),
        Some("[k=x, duplicates=2]")
    );
    assert_eq!(verdict(&rows, "k_mostly_unique").0, "passed");
    // z is the one value outside the set: 3 of 4 pass, 0.75 >= 0.7.
    assert_eq!(
        verdict(&rows, "accepted_values_k"),
        v("passed", Some(1), Some(4))
    );
    // No segment at all: judged as a whole over no rows, so row_count fails.
    assert_eq!(text(result(&rows, "per_k"), "outcome"), Some("failed"));
    // A check whose SQL fails on the data fails alone (here as a warning),
    // without taking the checks it shares a scan with down.
    let broken = result(&rows, "k_is_a_number");
    assert_eq!(text(broken, "outcome"), Some("warned"));
    assert!(
        text(broken, "message")
            .unwrap()
            .starts_with("the check could not run"),
        "{broken:?}"
    );
    assert_eq!(verdict(&rows, "accepted_values_k").0, "passed");
}

#[test]
fn sql_that_does_not_plan_is_pointed_at_its_check_among_many() {
    let checks = "      - not_null: amount
      - expression: {sql: \"amount > 0\"}
      - expression: {sql: \"amout > 0\", name: typo}
";
    let dir = one_source("id,amount\n1,2\n", "amount: double", checks);
    let out = kpiforge(dir.path(), &["validate", "pipelines/p.yaml"]);
    assert_fails(
        &out,
        2,
        &[
            "pipelines/p.yaml:10:9: sources.t.checks[2].expression: the check's SQL does not plan",
            "1 problem",
        ],
    );
    assert_fails(
        &kpiforge(
            one_source(
                "id,d\n1,x\n",
                "d: varchar",
                "      - freshness: {column: d, max_age: 1d}\n",
            )
            .path(),
            &["validate", "pipelines/p.yaml"],
        ),
        2,
        &["freshness needs a date or timestamp column; `d` is not one"],
    );
}

#[test]
fn integer_keys_are_judged_alike_by_bitmap_and_by_sql() {
    // Small ranges go through bitmaps, a range of 2^40 through SQL: same answers.
    for (base, big) in [(0i64, false), (1i64 << 40, true)] {
        let a = |k: i64| if big && k > 1 { base + k } else { k };
        let csv = format!(
            "id,k,ref\n1,{},{}\n2,{},{}\n3,{},\n4,{},{}\n5,,{}\n",
            a(1),
            a(2),
            a(1),
            a(9),
            a(2),
            a(3),
            a(3),
            a(5)
        );
        let checks = "      - unique: k\n      - unique: {column: k, where: \"id < 3\", name: k_first_two}\n";
        let yaml = format!(
            "name: p\noutput: out\nsources:\n  t:\n    file: data/t.csv\n    columns: {{k: bigint, ref: bigint}}\n    checks:\n{checks}checks:\n  - relationship: {{from: t.ref, to: t.k}}\n"
        );
        let dir = project(&[("pipelines/p.yaml", &yaml), ("data/t.csv", &csv)]);
        let (_, rows) = run(dir.path(), "2026-01-31");
        // k: 1, 1, 2, 3, NULL: key 1 twice.
        assert_eq!(
            verdict(&rows, "unique_k"),
            v("failed", Some(2), Some(4)),
            "base {base}"
        );
        assert_eq!(
            verdict(&rows, "k_first_two"),
            v("failed", Some(2), Some(2)),
            "base {base}"
        );
        // ref: 2, 9, NULL, 3, 5 against k {1, 2, 3}: 9 and 5 have no match.
        assert_eq!(
            verdict(&rows, "relationship_t_ref_t"),
            v("failed", Some(2), Some(4)),
            "base {base}"
        );
    }
}

#[test]
fn between_takes_dates_and_text_bounds() {
    let csv = "id,d,s\n1,2019-12-31,b\n2,2020-01-01,c\n3,2020-06-30,z\n4,,\n";
    let checks = "      - between: {column: d, min: 2020-01-01, max: '2020-12-31'}
      - between: {column: d, min: 2020-01-01, strict_min: true, name: after_new_year}
      - between: {column: s, min: a, max: c}
";
    let dir = one_source(csv, "d: date", checks);
    let (_, rows) = run(dir.path(), "2026-01-31");
    assert_eq!(verdict(&rows, "between_d"), v("failed", Some(1), Some(3)));
    assert_eq!(
        verdict(&rows, "after_new_year"),
        v("failed", Some(2), Some(3))
    );
    assert_eq!(verdict(&rows, "between_s"), v("failed", Some(1), Some(3)));
    let bad = one_source(csv, "d: date", "      - row_count: {min: many}\n");
    assert_fails(
        &kpiforge(bad.path(), &["validate", "pipelines/p.yaml"]),
        2,
        &["`min` of a `row_count` check must be a number"],
    );
}
