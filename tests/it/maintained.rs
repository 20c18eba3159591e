//! `incremental: true`: KPI aggregates kept between runs and updated with the
//! Parquet files appended since give the values a full recompute gives.

use std::collections::BTreeMap;
use std::path::Path;

use datafusion::prelude::SessionContext;

use super::util::{kpiforge, project, rows, stderr, text};

/// Orders `from..to` (monthly dates over 2025 and on), each with 1 to 4 lines.
const ORDERS: &str = "SELECT value AS o_orderkey, (value * 7919) % 50021 AS o_custkey, \
    CAST(to_timestamp_seconds(1735689600 + ((value * 13) % {days}) * 86400 + {offset} * 86400) AS DATE) AS o_orderdate, \
    CASE WHEN value % 5 = 0 THEN '1-URGENT' ELSE '3-MEDIUM' END AS o_priority \
    FROM generate_series({from}, {to})";
const LINES: &str = "SELECT o.value AS l_orderkey, l.value AS l_line, \
    CAST(((o.value * 37) % 1000) + l.value AS DECIMAL(12, 2)) AS l_price, \
    CAST(l.value AS DOUBLE) / 100 AS l_discount, \
    CASE WHEN (o.value + l.value) % 7 = 0 THEN NULL ELSE (o.value + l.value) % 11 END AS l_qty \
    FROM generate_series({from}, {to}) o, generate_series(1, 4) l WHERE l.value <= 1 + o.value % 4";

const KPIS: &[(&str, &str)] = &[
    // sum of decimals over a join
    (
        "revenue",
        "SELECT CAST(date_trunc('month', o.o_orderdate) AS DATE) AS period, CAST(sum(l.l_price * (1 - CAST(l.l_discount AS DECIMAL(4, 2)))) AS DOUBLE) AS value \
        FROM lines l JOIN orders o ON l.l_orderkey = o.o_orderkey GROUP BY 1",
    ),
    // avg, count, min and max of a column with NULLs, and a FILTER
    (
        "qty_spread",
        "SELECT CAST(date_trunc('month', o.o_orderdate) AS DATE) AS period, \
        CAST(avg(l.l_discount) + count(l.l_qty) + max(l.l_qty) - min(l.l_qty) + sum(l.l_qty) \
        + 1000 * count(*) FILTER (WHERE o.o_priority = '1-URGENT') AS DOUBLE) AS value \
        FROM lines l JOIN orders o ON l.l_orderkey = o.o_orderkey GROUP BY 1",
    ),
    // count(DISTINCT) beside a sum
    (
        "revenue_per_customer",
        "SELECT CAST(date_trunc('month', o.o_orderdate) AS DATE) AS period, \
        CAST(sum(l.l_price) AS DOUBLE) / CAST(count(DISTINCT o.o_custkey) AS DOUBLE) AS value \
        FROM lines l JOIN orders o ON l.l_orderkey = o.o_orderkey GROUP BY 1",
    ),
    // an aggregate over an aggregate
    (
        "repeat_rate",
        "SELECT period, CAST(avg(CASE WHEN n >= 2 THEN 1.0 ELSE 0.0 END) AS DOUBLE) AS value FROM ( \
        SELECT CAST(date_trunc('month', o_orderdate) AS DATE) AS period, o_custkey, count(*) AS n FROM orders GROUP BY 1, 2) t GROUP BY period",
    ),
    // a join of two aggregates, one a DISTINCT, one a min
    (
        "new_customer_share",
        "SELECT a.period, CAST(avg(CASE WHEN f.first = a.period THEN 1.0 ELSE 0.0 END) AS DOUBLE) AS value \
        FROM (SELECT DISTINCT CAST(date_trunc('month', o_orderdate) AS DATE) AS period, o_custkey FROM orders) a \
        JOIN (SELECT o_custkey, CAST(date_trunc('month', min(o_orderdate)) AS DATE) AS first FROM orders GROUP BY o_custkey) f \
        ON a.o_custkey = f.o_custkey GROUP BY a.period",
    ),
    // a scalar subquery on a source that does not change
    (
        "active_rate",
        "SELECT CAST(date_trunc('month', o_orderdate) AS DATE) AS period, \
        CAST(count(DISTINCT o_custkey) AS DOUBLE) / CAST((SELECT count(*) FROM customers) AS DOUBLE) AS value FROM orders GROUP BY 1",
    ),
    // a filter inside, and an aggregate that cannot be merged (median): computed in full
    (
        "median_urgent_price",
        "SELECT CAST(date_trunc('month', o.o_orderdate) AS DATE) AS period, CAST(median(l.l_price) AS DOUBLE) AS value \
        FROM lines l JOIN orders o ON l.l_orderkey = o.o_orderkey WHERE o.o_priority = '1-URGENT' GROUP BY 1",
    ),
];

fn pipeline(incremental: bool) -> String {
    let mut yaml = format!(
        "name: p\noutput: out\nincremental: {incremental}\nsources:\n  orders: {{file: data/orders/*.parquet}}\n  lines: {{file: data/lines/*.parquet}}\n  customers: {{file: data/customers.parquet}}\nkpis:\n"
    );
    for (id, _) in KPIS {
        yaml.push_str(&format!(
            "  - {{id: {id}, sql: sql/{id}.sql, grain: month}}\n"
        ));
    }
    yaml
}

/// Writes the result of `sql` as the Parquet file `path`.
fn write(dir: &Path, path: &str, sql: &str) {
    let target = dir.join(path);
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    let copy = format!("COPY ({sql}) TO '{}' STORED AS PARQUET", target.display());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        SessionContext::new()
            .sql(&copy)
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
    });
}

fn orders(from: u32, to: u32, days: u32, offset: u32) -> String {
    ORDERS
        .replace("{from}", &from.to_string())
        .replace("{to}", &to.to_string())
        .replace("{days}", &days.to_string())
        .replace("{offset}", &offset.to_string())
}

fn lines(from: u32, to: u32) -> String {
    LINES
        .replace("{from}", &from.to_string())
        .replace("{to}", &to.to_string())
}

/// `(kpi, period) -> value` of a run's published values.
fn values(dir: &Path, output: &str) -> BTreeMap<(String, String), Option<f64>> {
    let file = dir
        .join(output)
        .join("kpi_values/pipeline=p/as_of=2026-12-31/part-0.parquet");
    rows(&file)
        .iter()
        .map(|r| {
            let key = (
                text(r, "kpi_id").unwrap().to_string(),
                text(r, "period_start").unwrap().to_string(),
            );
            (key, text(r, "value").map(|v| v.parse::<f64>().unwrap()))
        })
        .collect()
}

fn run(dir: &Path, args: &[&str]) -> String {
    let mut all = vec!["run", "pipelines/p.yaml", "--as-of", "2026-12-31"];
    all.extend_from_slice(args);
    let out = kpiforge(dir, &all);
    assert!(out.status.success(), "{}", stderr(&out));
    stderr(&out)
}

/// Runs the full recompute (`incremental: false`) into `out_full` and
/// asserts the incremental run's values in `out` equal it.
fn assert_same_as_full(dir: &Path) {
    std::fs::write(dir.join("pipelines/full.yaml"), pipeline(false)).unwrap();
    let out = kpiforge(
        dir,
        &[
            "run",
            "pipelines/full.yaml",
            "--as-of",
            "2026-12-31",
            "--output",
            "out_full",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let (got, want) = (values(dir, "out"), values(dir, "out_full"));
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (key, w) in &want {
        match (got[key], w) {
            (Some(g), Some(w)) => assert!(
                (g - w).abs() <= 1e-9 * w.abs().max(1.0),
                "{key:?}: incremental {g} != full {w}"
            ),
            (g, w) => assert_eq!(g, *w, "{key:?}"),
        }
    }
    assert!(want.len() > 60, "{} values", want.len());
}

/// How many kept aggregates the run's log says were built (`full`) or updated (`incremental`).
fn modes(log: &str, mode: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("maintained aggregate") && l.contains(&format!("mode=\"{mode}\"")))
        .count()
}

#[test]
fn appended_files_update_the_kept_aggregates_to_the_full_result() {
    let mut files: Vec<(String, String)> = KPIS
        .iter()
        .map(|(id, sql)| (format!("sql/{id}.sql"), sql.to_string()))
        .collect();
    files.push(("pipelines/p.yaml".into(), pipeline(true)));
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let dir = project(&files);
    let d = dir.path();
    // Enough orders for over 100,000 (month, customer) groups: such states are
    // kept in one file per month.
    write(
        d,
        "data/customers.parquet",
        "SELECT value AS c_custkey FROM generate_series(0, 50020)",
    );
    write(d, "data/orders/1.parquet", &orders(1, 150_000, 400, 0));
    write(d, "data/lines/1.parquet", &lines(1, 150_000));

    // The first run builds the states; nothing is kept yet. The three KPIs over
    // the join share one; the median's is computed as written.
    let log = run(d, &[]);
    let kept = modes(&log, "full");
    assert!(kept >= 5, "{log}");
    assert_eq!(modes(&log, "incremental"), 0, "{log}");
    assert_same_as_full(d);
    let manifests: Vec<String> = std::fs::read_dir(d.join(".kpiforge/incremental/p"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .map(|p| std::fs::read_to_string(p.join("manifest.json")).unwrap())
        .collect();
    assert_eq!(manifests.len(), kept);
    assert!(
        manifests
            .iter()
            .any(|m| m.contains("\"partitioned\": true"))
    );
    assert!(
        manifests
            .iter()
            .any(|m| m.contains("\"partitioned\": false"))
    );
    // The FILTER aggregate is kept, with the other aggregates over the join.
    assert!(
        manifests
            .iter()
            .any(|m| m.contains("FILTER") && m.contains("l_qty"))
    );

    // A day appended: new orders in the last month and the next, their lines,
    // and late lines of old orders.
    write(
        d,
        "data/orders/2.parquet",
        &orders(150_001, 151_000, 20, 400),
    );
    write(d, "data/lines/2.parquet", &lines(150_001, 151_000));
    write(
        d,
        "data/lines/3.parquet",
        &lines(1, 40).replace("l.value <= 1 + o.value % 4", "l.value = 4"),
    );
    let log = run(d, &[]);
    assert_eq!(modes(&log, "full"), 0, "{log}");
    assert_eq!(modes(&log, "incremental"), kept, "{log}");
    assert_same_as_full(d);

    // Nothing new: the kept states are read as they are.
    let log = run(d, &[]);
    assert_eq!(modes(&log, "incremental"), kept, "{log}");
    assert_same_as_full(d);

    // A file the states cover is rewritten: they are rebuilt, not added to.
    write(d, "data/lines/1.parquet", &lines(1, 140_000));
    let log = run(d, &[]);
    assert!(modes(&log, "full") >= 1, "{log}");
    assert_same_as_full(d);

    // `--full` rebuilds every state.
    let log = run(d, &["--full"]);
    assert_eq!(modes(&log, "incremental"), 0, "{log}");
    assert_same_as_full(d);

    // While another run holds the kept states, a run computes in full and leaves them alone.
    let lock = std::fs::File::create(d.join(".kpiforge/incremental/p/.lock")).unwrap();
    lock.try_lock().unwrap();
    let log = run(d, &[]);
    assert!(
        log.contains("another run of this pipeline is updating its kept aggregates"),
        "{log}"
    );
    assert_eq!(modes(&log, "incremental") + modes(&log, "full"), 0, "{log}");
    assert_same_as_full(d);
    drop(lock);
    let log = run(d, &[]);
    assert_eq!(modes(&log, "incremental"), kept, "{log}");
}
