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
    assert!(kept >= 4, "{log}");
    assert_eq!(modes(&log, "incremental"), 0, "{log}");
    assert_same_as_full(d);
    let manifests: Vec<String> = std::fs::read_dir(d.join(".kpiforge/incremental/p"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .map(|p| std::fs::read_to_string(p.join("manifest.json")).unwrap())
        .filter(|m| !is_output(m))
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

    let first_orders = first_order_file(d);

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
    // The KPIs over orders alone recompute the one month the new orders are
    // in; the first order of every customer is as it was. The late lines
    // touch the months of their orders. The scalar subquery and the median
    // are computed in full.
    assert_eq!(recomputed(&log, "repeat_rate"), Some(1), "{log}");
    assert_eq!(recomputed(&log, "new_customer_share"), Some(1), "{log}");
    assert!(recomputed(&log, "revenue").is_some_and(|n| n > 1), "{log}");
    assert_eq!(recomputed(&log, "active_rate"), None, "{log}");
    assert_eq!(recomputed(&log, "median_urgent_price"), None, "{log}");
    // No customer's first order changed: that state's file is kept as it was,
    // and its manifest covers the new file.
    assert_eq!(first_order_file(d), first_orders);
    assert!(first_order_manifest(d).contains("orders/2.parquet"));

    // Nothing new: the kept states are read as they are, and every kept KPI
    // output stands.
    let log = run(d, &[]);
    assert_eq!(modes(&log, "incremental"), kept, "{log}");
    assert_same_as_full(d);
    for kpi in [
        "revenue",
        "qty_spread",
        "revenue_per_customer",
        "repeat_rate",
        "new_customer_share",
    ] {
        assert_eq!(recomputed(&log, kpi), Some(0), "{kpi}: {log}");
    }

    // An order of customer 7919 (of order 1, 2025-01-14) before their first:
    // they are no longer new in January 2025, a month no new row is in. The
    // first-order aggregate tells by its changed group, which is followed
    // through the join to the months 7919 ordered in: December 2024 (the new
    // order), and January, June and October 2025 and February 2026 (orders 1,
    // 100043, 50022 and 150064).
    write(
        d,
        "data/orders/3.parquet",
        "SELECT CAST(200000 AS BIGINT) AS o_orderkey, CAST(7919 AS BIGINT) AS o_custkey, \
         CAST('2024-12-20' AS DATE) AS o_orderdate, '3-MEDIUM' AS o_priority",
    );
    let log = run(d, &["-v"]);
    assert_eq!(recomputed(&log, "repeat_rate"), Some(1), "{log}");
    assert_eq!(recomputed(&log, "new_customer_share"), Some(5), "{log}");
    assert_same_as_full(d);
    assert_ne!(first_order_file(d), first_orders);
    // The (month, customer) state, kept per month, is read by partition. The
    // query for the months customer 7919 was active in filters by customer,
    // so it reads every file; `new_customer_share` then reads the four months
    // it recomputes besides December (merged this run, in memory), and
    // `repeat_rate` no file for its one month, December.
    let reads = partition_reads(&log);
    let all = reads.iter().map(|&(_, of)| of).max().unwrap_or(0);
    assert!(all > 10, "{reads:?}");
    let mut seen = reads.clone();
    seen.sort();
    assert_eq!(seen, [(0, all), (4, all), (all, all)], "{log}");

    // A file the states cover is rewritten: they are rebuilt, not added to.
    write(d, "data/lines/1.parquet", &lines(1, 140_000));
    let log = run(d, &[]);
    assert!(modes(&log, "full") >= 1, "{log}");
    assert_same_as_full(d);

    // A kept file cut short (a partial copy of `.kpiforge`): the run still
    // gives the full result, computing in full what reads it.
    let partitioned = std::fs::read_dir(d.join(".kpiforge/incremental/p"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            std::fs::read_to_string(p.join("manifest.json"))
                .is_ok_and(|m| m.contains("\"partitioned\": true"))
        })
        .unwrap();
    let mut files: Vec<_> = std::fs::read_dir(&partitioned)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("groups-")
        })
        .collect();
    files.sort();
    std::fs::write(&files[0], b"PAR1 cut short").unwrap();
    let log = run(d, &[]);
    assert!(log.contains("in full"), "{log}");
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

    // A KPI's aggregate changed: its state is rebuilt, and the old one removed.
    let before = state_folders(d);
    assert_eq!(before.len(), kept);
    let sql = KPIS[0].1.replace("l.l_price * (1 - ", "l.l_price * (2 - ");
    std::fs::write(d.join("sql/revenue.sql"), sql).unwrap();
    let log = run(d, &[]);
    assert_eq!(modes(&log, "full"), 1, "{log}");
    let after = state_folders(d);
    assert_eq!(after.len(), kept);
    assert_eq!(before.intersection(&after).count(), kept - 1);
    assert_same_as_full(d);
}

/// The file of the state of each customer's first order, kept whole (it has
/// no `DATE` grouping).
fn first_order_file(dir: &Path) -> String {
    let manifest: serde_json::Value = serde_json::from_str(&first_order_manifest(dir)).unwrap();
    manifest["groups"]["all"].as_str().unwrap().to_string()
}

fn first_order_manifest(dir: &Path) -> String {
    std::fs::read_dir(dir.join(".kpiforge/incremental/p"))
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.unwrap().path().join("manifest.json")).ok())
        .find(|m| {
            !is_output(m)
                && m.split("min(").skip(1).any(|arg| {
                    arg.split(')')
                        .next()
                        .is_some_and(|arg| arg.ends_with(".o_orderdate"))
                })
                && m.contains("\"partitioned\": false")
        })
        .expect("the first-order state")
}

/// Whether a kept manifest is a KPI's output's, not an aggregate's.
fn is_output(manifest: &str) -> bool {
    manifest.contains("\"plan\": \"kpi output ")
}

/// How many periods of `kpi` the run's log says were recomputed, its kept
/// output standing for the others; `None`: computed in full.
fn recomputed(log: &str, kpi: &str) -> Option<usize> {
    let line = log
        .lines()
        .find(|l| l.contains("KPI computed") && l.contains(&format!("kpi={kpi} ")))
        .unwrap_or_else(|| panic!("no KPI computed line for {kpi}: {log}"));
    let (_, after) = line.split_once("periods_recomputed=")?;
    after.split_whitespace().next()?.parse().ok()
}

/// The files each read of a state kept per partition opened, and how many
/// it has (the debug log's `kept state read by partition`).
fn partition_reads(log: &str) -> Vec<(usize, usize)> {
    let field = |line: &str, name: &str| -> usize {
        let (_, after) = line.split_once(&format!(" {name}=")).unwrap();
        after.split_whitespace().next().unwrap().parse().unwrap()
    };
    log.lines()
        .filter(|l| l.contains("kept state read by partition"))
        .map(|l| (field(l, "files"), field(l, "of")))
        .collect()
}

/// The folders of the kept states.
fn state_folders(dir: &Path) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(dir.join(".kpiforge/incremental/p"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .filter(|p| !is_output(&std::fs::read_to_string(p.join("manifest.json")).unwrap()))
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// The checks of `check_pipeline`: every kind whose counts an incremental run
/// keeps, with a `where:`, a `group_by:` and keys duplicated across files; a
/// check twice (one kept state), and one whose `where:` changes with the day
/// (measured in full).
const CHECKS: &str = "  orders:
    file: data/orders/*.parquet
    checks:
      - row_count: {min: 1}
      - not_null: {column: o_custkey, name: custkey_present}
      - unique: {column: o_orderkey, severity: warn}
      - unique: {column: o_orderkey, where: \"o_priority = '1-URGENT'\", name: urgent_unique, severity: warn}
      - unique: {column: o_orderkey, name: pk_again, mostly: 0.99}
      - unique: {column: o_orderkey, where: \"o_orderdate <= current_date\", name: until_today, severity: warn}
      - accepted_values: {column: o_priority, values: ['1-URGENT', '3-MEDIUM'], group_by: [o_priority], name: priorities}
      - freshness: {column: o_orderdate, max_age: 400d}
      - metric: {sql: avg(o_custkey), min: 0, name: mean_customer}
  lines:
    file: data/lines/*.parquet
    checks:
      - unique: {columns: [l_orderkey, l_line], severity: warn}
      - between: {column: l_qty, min: 1, max: 9, severity: warn}
      - expression: {sql: \"l_discount < 0.04\", name: small_discount, severity: warn}
  customers: {file: data/customers.parquet}
checks:
  - relationship: {from: lines.l_orderkey, to: orders.o_orderkey, severity: warn}
  - relationship: {from: orders.o_custkey, to: customers.c_custkey, where: \"o_orderkey > 10\", severity: warn, name: known_customers}
";

fn check_pipeline(incremental: bool) -> String {
    format!(
        "name: p\noutput: out\nincremental: {incremental}\nsources:\n{CHECKS}kpis:\n  - {{id: orders, sql: sql/orders.sql, grain: month}}\n"
    )
}

/// `(check, segment) -> (outcome, observed, unexpected, rows checked)` of a run's quality results.
type Verdicts =
    BTreeMap<(String, String), (String, Option<String>, Option<String>, Option<String>)>;

fn verdicts(dir: &Path, output: &str) -> Verdicts {
    let file = dir
        .join(output)
        .join("quality/pipeline=p/as_of=2026-12-31/part-0.parquet");
    rows(&file)
        .iter()
        .map(|r| {
            let get = |c: &str| text(r, c).map(str::to_string);
            (
                (get("check").unwrap(), get("segment").unwrap_or_default()),
                (
                    get("outcome").unwrap(),
                    get("observed_value"),
                    get("unexpected_count"),
                    get("rows_checked"),
                ),
            )
        })
        .collect()
}

/// Runs `pipelines/p.yaml` (exit 3: a check failed), then a full run into
/// `out_full`, and asserts both judged every check alike. Returns the log.
fn checks_as_full(dir: &Path) -> String {
    let run = |file: &str, output: &str| {
        let out = kpiforge(
            dir,
            &["run", file, "--as-of", "2026-12-31", "--output", output],
        );
        assert!(matches!(out.status.code(), Some(0 | 3)), "{}", stderr(&out));
        stderr(&out)
    };
    let log = run("pipelines/p.yaml", "out");
    assert!(!log.contains("could not"), "{log}");
    std::fs::write(dir.join("pipelines/full.yaml"), check_pipeline(false)).unwrap();
    run("pipelines/full.yaml", "out_full");
    let (got, want) = (verdicts(dir, "out"), verdicts(dir, "out_full"));
    for (check, w) in &want {
        assert_eq!(got.get(check), Some(w), "{check:?}\n{log}");
    }
    assert_eq!(got.len(), want.len());
    assert_eq!(want.len(), 14, "{want:?}");
    log
}

/// How many lines `lines()` gives the orders `keys`.
fn lines_of(keys: &[u32]) -> u32 {
    keys.iter().map(|k| 1 + k % 4).sum()
}

/// How many kept check counts the log says were counted in `mode`.
fn counted(log: &str, mode: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("kept counts") && l.contains(&format!("mode=\"{mode}\"")))
        .count()
}

#[test]
fn appended_files_update_the_kept_check_counts_to_the_full_result() {
    let sql = "SELECT CAST(date_trunc('month', o_orderdate) AS DATE) AS period, CAST(count(*) AS DOUBLE) AS value FROM orders GROUP BY 1";
    let dir = project(&[
        ("pipelines/p.yaml", &check_pipeline(true)),
        ("sql/orders.sql", sql),
    ]);
    let d = dir.path();
    write(
        d,
        "data/customers.parquet",
        "SELECT value AS c_custkey FROM generate_series(0, 2999)",
    );
    // Orders 1..20000 with 5..9 twice; customer 3000 does not exist.
    let orders_of = |from: u32, to: u32| orders(from, to, 400, 0).replace("% 50021", "% 3001");
    write(
        d,
        "data/orders/1.parquet",
        &format!("{} UNION ALL {}", orders_of(1, 20_000), orders_of(5, 9)),
    );
    // Lines of those orders, and of orders 30000..30004 not there yet.
    write(
        d,
        "data/lines/1.parquet",
        &format!("{} UNION ALL {}", lines(1, 20_000), lines(30_000, 30_004)),
    );
    let log = checks_as_full(d);
    assert_eq!(counted(&log, "full"), 5, "{log}");

    // Appended: new orders, two of them old keys again (5 for the third time)
    // and three of them the orphaned lines' orders; new lines, one of them an
    // old line again and one of an order that does not exist.
    write(
        d,
        "data/orders/2.parquet",
        &format!(
            "{} UNION ALL {} UNION ALL {} UNION ALL {}",
            orders_of(20_001, 21_000),
            orders_of(100, 100),
            orders_of(5, 5),
            orders_of(30_000, 30_002)
        ),
    );
    write(
        d,
        "data/lines/2.parquet",
        &format!(
            "{} UNION ALL {} UNION ALL {}",
            lines(20_001, 21_000),
            lines(7, 7),
            lines(40_000, 40_000)
        ),
    );
    let log = checks_as_full(d);
    assert_eq!(counted(&log, "incremental"), 5, "{log}");
    assert_eq!(counted(&log, "full"), 0, "{log}");
    assert!(modes(&log, "incremental") >= 3, "{log}");
    assert_eq!(modes(&log, "full"), 0, "{log}");
    let quality = verdicts(d, "out");
    let unexpected = |check: &str| quality[&(check.to_string(), String::new())].2.clone();
    // 5..9 and 100 twice and 5 again: 13 rows; lines of 7 twice; 30000..30004's lines
    // (2 of 30000 .. 30002 resolved) and 40000's.
    assert_eq!(unexpected("unique_o_orderkey").as_deref(), Some("13"));
    assert_eq!(
        unexpected("relationship_lines_l_orderkey_orders").as_deref(),
        Some(&*lines_of(&[30_003, 30_004, 40_000]).to_string())
    );

    // Nothing new: the kept counts are used as they are.
    let log = checks_as_full(d);
    assert_eq!(
        counted(&log, "full") + counted(&log, "incremental"),
        0,
        "{log}"
    );

    // A covered file rewritten: the counts are rebuilt.
    write(d, "data/lines/1.parquet", &lines(1, 19_000));
    let log = checks_as_full(d);
    assert!(counted(&log, "full") >= 2, "{log}");
}
