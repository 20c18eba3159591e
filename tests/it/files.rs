//! File sources: CSV options, declared types, JSON, NDJSON, Parquet, globs, and
//! malformed input named by file and line.

use super::util::{assert_fails, kpiforge, project, published_values, stderr};

const KPI_SQL: &str = "SELECT CAST(date_trunc('month', d) AS DATE) AS period, CAST(sum(amount) AS DOUBLE) AS value FROM t GROUP BY CAST(date_trunc('month', d) AS DATE) ORDER BY 1";

fn pipeline(source: &str) -> String {
    format!(
        "name: p\noutput: out\nsources:\n  t:\n{source}\nkpis:\n  - id: total\n    sql: sql/k.sql\n    grain: month\n"
    )
}

/// Runs the one-KPI pipeline and returns the published monthly values.
fn run(
    files: &[(&str, &str)],
    source: &str,
    sql: &str,
) -> Result<Vec<Option<f64>>, std::process::Output> {
    let yaml = pipeline(source);
    let mut all = vec![("pipelines/p.yaml", yaml.as_str()), ("sql/k.sql", sql)];
    all.extend_from_slice(files);
    let dir = project(&all);
    let out = kpiforge(
        dir.path(),
        &["run", "pipelines/p.yaml", "--as-of", "2026-12-31"],
    );
    if !out.status.success() {
        return Err(out);
    }
    Ok(published_values(&dir.path().join(
        "out/kpi_values/pipeline=p/as_of=2026-12-31/part-0.parquet",
    )))
}

#[test]
fn csv_with_options_and_null_markers() {
    // `;` delimiter, `'` quotes (around a field holding the delimiter), two null markers
    // (`NA` and `-`) on a text and a numeric column, and an empty numeric field.
    let csv = "d;amount;qty;note\n2026-01-03;1,5;2;x\n2026-01-09;NA;-;'a;b'\n2026-02-01;2;;-\n2026-02-02;3;4;y\n";
    let source = "    file: data/t.csv\n    csv: {delimiter: ';', quote: \"'\", null_values: ['NA', '-']}\n    columns: {d: date, amount: varchar, qty: int}";
    // Decimal commas are not a CSV feature: `amount` is text, converted in SQL.
    // value = sum(amount) + 100 * count(qty) + 1000 * count(note)
    let sql = "SELECT CAST(date_trunc('month', d) AS DATE) AS period, \
               CAST(sum(CAST(replace(amount, ',', '.') AS DOUBLE)) + 100 * count(qty) + 1000 * count(note) AS DOUBLE) AS value \
               FROM t GROUP BY CAST(date_trunc('month', d) AS DATE) ORDER BY 1";
    // January: 1.5 + 100 * 1 + 1000 * 2; February: 5 + 100 * 1 + 1000 * 1.
    assert_eq!(
        run(&[("data/t.csv", csv)], source, sql).unwrap(),
        vec![Some(2101.5), Some(1105.0)]
    );
}

#[test]
fn extra_result_column_is_a_contract_error() {
    let csv = "d,amount\n2026-01-03,1\n";
    let sql = "SELECT CAST(date_trunc('month', d) AS DATE) AS period, CAST(sum(amount) AS DOUBLE) AS value, count(*) AS n FROM t GROUP BY 1";
    breaks_contract(csv, sql, "column `n` is not part of the KPI contract");
}

/// Runs the one-KPI pipeline on `csv` with `sql` and asserts a contract error.
#[track_caller]
fn breaks_contract(csv: &str, sql: &str, message: &str) {
    let source = "    file: data/t.csv\n    columns: {d: date}";
    let err = run(&[("data/t.csv", csv)], source, sql).unwrap_err();
    assert_fails(&err, 2, &["KPI `total`", message]);
}

#[test]
fn csv_declared_types_override_inference() {
    // `amount` looks like integers in the first rows; the declared decimal keeps 2.5.
    let csv = "d,amount\n2026-01-03,1\n2026-01-04,2.5\n";
    let source = "    file: data/t.csv\n    columns: {d: date, amount: \"decimal(10,2)\"}";
    assert_eq!(
        run(&[("data/t.csv", csv)], source, KPI_SQL).unwrap(),
        vec![Some(3.5)]
    );
}

#[test]
fn csv_without_header() {
    let csv = "2026-01-03,4\n2026-03-04,6\n";
    let source = "    file: data/t.csv\n    csv: {header: false}";
    let sql = "SELECT CAST(date_trunc('month', CAST(column_1 AS DATE)) AS DATE) AS period, CAST(sum(column_2) AS DOUBLE) AS value FROM t GROUP BY 1 ORDER BY 1";
    assert_eq!(
        run(&[("data/t.csv", csv)], source, sql).unwrap(),
        vec![Some(4.0), Some(6.0)]
    );
}

#[test]
fn files_gone_when_the_run_starts_fail_the_run_not_the_config() {
    // Loaded with its files there; they are gone when the run lists them again
    // (as a scheduler's pipeline, loaded days before). The run has started:
    // exit 1 (failed), not 2 (nothing run), and the history says why.
    let yaml = pipeline("    file: data/*.csv");
    let dir = project(&[
        ("pipelines/p.yaml", yaml.as_str()),
        ("sql/k.sql", KPI_SQL),
        ("data/a.csv", "d,amount\n2026-01-03,1\n"),
    ]);
    let pipeline = kpiforge::config::load(&dir.path().join("pipelines/p.yaml")).unwrap();
    std::fs::remove_file(dir.path().join("data/a.csv")).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let error = runtime
        .block_on(kpiforge::run(&pipeline, &Default::default()))
        .unwrap_err();
    assert_eq!(error.exit_code(), kpiforge::error::exit::RUN_FAILED);
    // Its message names the pipeline: the CLI does not name it again.
    assert!(error.names_pipeline());
    let message = error.to_string();
    assert!(
        message.contains("sources.t.file: no file matches `data/*.csv`")
            && message.contains("p.yaml:"),
        "{message}"
    );
    let store = kpiforge::state::StateStore::open(&pipeline.state).unwrap();
    let runs = store.runs(&Default::default()).unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].status, "failed");
    assert!(
        runs[0]
            .error
            .as_deref()
            .unwrap()
            .contains("no file matches")
    );
}

#[test]
fn glob_reads_every_matching_file() {
    let files = [
        ("data/a.csv", "d,amount\n2026-01-03,1\n"),
        ("data/b.csv", "d,amount\n2026-01-04,2\n"),
        ("data/c.txt", "ignored"),
    ];
    assert_eq!(
        run(&files, "    file: data/*.csv", KPI_SQL).unwrap(),
        vec![Some(3.0)]
    );
}

#[test]
fn json_array_and_ndjson() {
    let array = r#"[{"d": "2026-01-03", "amount": 1.5}, {"d": "2026-02-03", "amount": 2}]"#;
    let source = "    file: data/t.json\n    columns: {d: date}";
    assert_eq!(
        run(&[("data/t.json", array)], source, KPI_SQL).unwrap(),
        vec![Some(1.5), Some(2.0)]
    );
    let lines =
        "{\"d\": \"2026-01-03\", \"amount\": 1.5}\n{\"d\": \"2026-01-05\", \"amount\": null}\n";
    let source = "    file: data/t.ndjson\n    columns: {d: date}";
    assert_eq!(
        run(&[("data/t.ndjson", lines)], source, KPI_SQL).unwrap(),
        vec![Some(1.5)]
    );
}

#[test]
fn parquet_is_scanned_in_place() {
    // Write a Parquet source with kpiforge itself: a first pipeline's output is the
    // second one's input, as in a chain of pipelines.
    let csv = "d,amount\n2026-01-03,1\n2026-02-04,2\n";
    let dir = project(&[
        ("pipelines/p.yaml", &pipeline("    file: data/t.csv")),
        ("sql/k.sql", KPI_SQL),
        ("data/t.csv", csv),
    ]);
    let out = kpiforge(
        dir.path(),
        &["run", "pipelines/p.yaml", "--as-of", "2026-12-31"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let second = "name: q\noutput: out2\nsources:\n  t:\n    file: out/kpi_values/**/*.parquet\nkpis:\n  - id: again\n    sql: sql/k2.sql\n    grain: month\n";
    std::fs::write(dir.path().join("pipelines/q.yaml"), second).unwrap();
    std::fs::write(
        dir.path().join("sql/k2.sql"),
        "SELECT period_start AS period, value * 10 AS value FROM t",
    )
    .unwrap();
    let out = kpiforge(
        dir.path(),
        &["run", "pipelines/q.yaml", "--as-of", "2026-12-31"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(super::util::stdout(&out).contains("parquet"));
    let values = published_values(
        &dir.path()
            .join("out2/kpi_values/pipeline=q/as_of=2026-12-31/part-0.parquet"),
    );
    assert_eq!(values, vec![Some(10.0), Some(20.0)]);
}

#[test]
fn ragged_csv_row_names_file_and_line_and_publishes_nothing() {
    let mut csv = String::from("d,amount,extra\n");
    for i in 0..50 {
        csv.push_str(&format!("2026-01-{:02},{i},x\n", 1 + i % 28));
    }
    csv.push_str("2026-02-01,7\n");
    let yaml = pipeline("    file: data/t.csv\n    columns: {d: date}");
    let dir = project(&[
        ("pipelines/p.yaml", &yaml),
        ("sql/k.sql", KPI_SQL),
        ("data/t.csv", &csv),
    ]);
    let out = kpiforge(
        dir.path(),
        &["run", "pipelines/p.yaml", "--as-of", "2026-12-31"],
    );
    assert_fails(
        &out,
        1,
        &[
            "pipeline `p`",
            "source `t`",
            "data/t.csv",
            "line 52: expected 3 fields, found 2",
        ],
    );
    assert!(
        !dir.path().join("out/kpi_values").exists(),
        "nothing published"
    );
}

#[test]
fn ragged_row_past_type_inference_is_found_on_its_line() {
    // Inference reads the first 1000 rows; this row is found by the parallel read,
    // and reported with its line in the whole file.
    let mut csv = String::from("d,amount\n");
    for i in 0..3000 {
        csv.push_str(&format!("2026-01-{:02},{i}\n", 1 + i % 28));
    }
    csv.push_str("2026-02-01,7,9\n");
    let err = run(
        &[("data/t.csv", &csv)],
        "    file: data/t.csv\n    columns: {d: date}",
        KPI_SQL,
    )
    .unwrap_err();
    assert_fails(
        &err,
        1,
        &[
            "source `t`",
            "data/t.csv",
            "line 3002: expected 2 fields, found 3",
        ],
    );
}

#[test]
fn unparsable_value_names_file_line_and_column() {
    let csv = "d,amount\n2026-01-03,1\n2026-01-04,lots\n";
    let source = "    file: data/t.csv\n    columns: {d: date, amount: double}";
    let err = run(&[("data/t.csv", csv)], source, KPI_SQL).unwrap_err();
    assert_fails(
        &err,
        1,
        &[
            "source `t`",
            "data/t.csv",
            "line 3, column `amount`: cannot read 'lots' as Float64",
        ],
    );
}

#[test]
fn declared_column_missing_from_file() {
    let csv = "d,amount\n2026-01-03,1\n";
    let source = "    file: data/t.csv\n    columns: {amount_eur: double}";
    let err = run(&[("data/t.csv", csv)], source, KPI_SQL).unwrap_err();
    assert_fails(
        &err,
        2,
        &[
            "source `t`",
            "`columns:` declares `amount_eur`",
            "its columns: d, amount",
        ],
    );
}

#[test]
fn period_not_at_grain_start_is_a_contract_error() {
    let csv = "d,amount\n2026-01-03,1\n";
    let sql = "SELECT d AS period, CAST(amount AS DOUBLE) AS value FROM t";
    breaks_contract(csv, sql, "period 2026-01-03 is not the start of a month");
}

#[test]
fn as_of_parameter_and_future_periods() {
    let csv = "d,amount\n2026-01-03,1\n2026-02-04,2\n2026-03-04,4\n";
    let yaml = pipeline("    file: data/t.csv\n    columns: {d: date}");
    let sql = "SELECT CAST(date_trunc('month', d) AS DATE) AS period, CAST(sum(amount) AS DOUBLE) AS value FROM t WHERE d <= $as_of GROUP BY CAST(date_trunc('month', d) AS DATE)";
    let dir = project(&[
        ("pipelines/p.yaml", &yaml),
        ("sql/k.sql", sql),
        ("data/t.csv", csv),
    ]);
    let out = kpiforge(
        dir.path(),
        &["run", "pipelines/p.yaml", "--as-of", "2026-02-01"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let values = published_values(
        &dir.path()
            .join("out/kpi_values/pipeline=p/as_of=2026-02-01/part-0.parquet"),
    );
    // January in full; February holds only rows up to the as-of date (none); March is in the future.
    assert_eq!(values, vec![Some(1.0)]);
}

/// A text source is parsed once, and only in the columns the run's queries read;
/// what reads other columns (a failing check's sample of whole rows) still sees
/// them, read from the file again.
#[test]
fn text_sources_parse_only_the_columns_queries_read() {
    let yaml = "name: p\noutput: out\nsources:\n  t:\n    file: data/t.csv\n    checks:\n      \
                - expression: {name: positive, sql: amount > 0}\n\
                kpis:\n  - id: total\n    sql: sql/k.sql\n    grain: month\n";
    let csv = "d,amount,note,wide\n2026-01-05,10,a,xxxxxxxx\n2026-01-20,-2,b,yyyyyyyy\n2026-02-03,5,c,zzzzzzzz\n";
    let dir = project(&[
        ("pipelines/p.yaml", yaml),
        ("sql/k.sql", KPI_SQL),
        ("data/t.csv", csv),
    ]);
    let out = kpiforge(
        dir.path(),
        &["-v", "run", "pipelines/p.yaml", "--as-of", "2026-02-28"],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let log = stderr(&out);
    // d and amount (the KPI's), not note and wide.
    let ready = log
        .lines()
        .find(|l| l.contains("source ready") && l.contains("source=t"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(ready.contains("columns=2"), "{ready}");
    assert!(log.contains("reading the file again"), "{log}");
    assert_eq!(
        published_values(
            &dir.path()
                .join("out/kpi_values/pipeline=p/as_of=2026-02-28/part-0.parquet")
        ),
        vec![Some(8.0), Some(5.0)]
    );
    // The sample shows the whole failing row, columns not parsed included.
    let shown = super::util::stdout(&out);
    assert!(
        shown.contains("d=2026-01-20, amount=-2, note=b, wide=yyyyyyyy"),
        "{shown}"
    );
    // `check` parses what the checks read: `amount`.
    let out = kpiforge(
        dir.path(),
        &["-v", "check", "pipelines/p.yaml", "--as-of", "2026-02-28"],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let log = stderr(&out);
    assert!(
        log.contains("source=t kind=\"csv\" rows=3 in_memory=true columns=1"),
        "{log}"
    );
}
