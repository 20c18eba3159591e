//! Database sources: MySQL/MariaDB (read from `KPIFORGE_TEST_MYSQL_URL`, e.g.
//! `mysql://root@127.0.0.1:3306/test`; without it those tests say they skip) and
//! SQLite (files made here). Types and values are checked through the library;
//! pushdown, streaming memory and error messages through the real binary.
//! Every MySQL test creates and drops its own uniquely named tables.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, RecordBatch};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::prelude::SessionContext;
use kpiforge::config::Source;
use kpiforge::source::{Mode, register};
use mysql_async::prelude::Queryable;

use super::util::{project, published_values, stderr, stdout};

// ---------------------------------------------------------------- helpers

/// The test server's URL, or `None` (and a note) to skip.
pub fn mysql_url(test: &str) -> Option<String> {
    super::util::server_url("KPIFORGE_TEST_MYSQL_URL", test)
}

use super::util::unique;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Runs statements in order on one connection (so `SET time_zone` applies to the next).
pub fn mysql_exec(url: &str, statements: &[&str]) {
    runtime().block_on(async {
        let opts = mysql_async::Opts::from_url(url).unwrap();
        let mut conn = mysql_async::Conn::new(opts).await.unwrap();
        for s in statements {
            conn.query_drop(*s)
                .await
                .unwrap_or_else(|e| panic!("{s}: {e}"));
        }
        conn.disconnect().await.unwrap();
    });
}

fn mysql_first(url: &str, sql: &str) -> Option<String> {
    runtime().block_on(async {
        let opts = mysql_async::Opts::from_url(url).unwrap();
        let mut conn = mysql_async::Conn::new(opts).await.unwrap();
        let v: Option<String> = conn.query_first(sql).await.unwrap();
        conn.disconnect().await.unwrap();
        v
    })
}

/// A MySQL table dropped when the test ends (also when it fails).
struct Table {
    url: String,
    name: String,
}

impl Table {
    fn create(url: &str, prefix: &str, columns: &str) -> Table {
        let name = unique(prefix);
        mysql_exec(url, &[&format!("CREATE TABLE {name} ({columns})")]);
        Table {
            url: url.to_string(),
            name,
        }
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.name.clone());
        // A fresh thread: this may run while a runtime is being unwound.
        let _ = std::thread::spawn(move || {
            mysql_exec(&url, &[&format!("DROP TABLE IF EXISTS {name}")]);
        })
        .join();
    }
}

/// Host, port, database and user of a URL, as messages show them.
fn server_of(url: &str) -> (String, u16, String, String) {
    let o = mysql_async::Opts::from_url(url).unwrap();
    (
        o.ip_or_hostname().to_string(),
        o.tcp_port(),
        o.db_name().unwrap_or("").to_string(),
        o.user().unwrap_or("").to_string(),
    )
}

/// The one source of a pipeline with `source` (YAML under `t:`), anchored at `dir`.
fn source(dir: &Path, yaml: &str) -> Source {
    let text = format!("name: p\noutput: out\nsources:\n  t:\n{yaml}\n");
    let pipeline = kpiforge::config::parse(&text, &dir.join("pipelines/p.yaml"))
        .unwrap_or_else(|(_, problems)| panic!("{problems:?}"));
    pipeline.sources.into_iter().next().unwrap()
}

#[derive(Clone)]
struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Registers `source` as `t`, runs `sql`, and returns the rows (or the error)
/// with kpiforge's debug log of the run.
fn query(source: &Source, sql: &str) -> (Result<RecordBatch, String>, String) {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let writer = LogWriter(buf.clone());
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_env_filter("kpiforge=debug")
        .with_ansi(false)
        .finish();
    // One thread: the subscriber (thread-local) sees every task.
    let result = tracing::subscriber::with_default(subscriber, || {
        runtime().block_on(async {
            let ctx = SessionContext::new();
            let table = register(&ctx, source, Mode::Load)
                .await
                .map_err(|e| e.to_string())?;
            assert_eq!(table.name, "t");
            let df = ctx.sql(sql).await.map_err(|e| e.to_string())?;
            let schema = df.schema().inner().clone();
            let batches = df.collect().await.map_err(|e| e.to_string())?;
            concat_batches(&schema, &batches).map_err(|e| e.to_string())
        })
    });
    let log = String::from_utf8_lossy(&buf.lock().unwrap()).into_owned();
    (result, log)
}

#[track_caller]
fn rows_of(source: &Source, sql: &str) -> (RecordBatch, String) {
    let (result, log) = query(source, sql);
    match result {
        Ok(batch) => (batch, log),
        Err(e) => panic!("{sql}: {e}\n{log}"),
    }
}

/// A column's values as text (`None` for NULL).
fn cells(batch: &RecordBatch, column: &str) -> Vec<Option<String>> {
    let array = batch
        .column_by_name(column)
        .unwrap_or_else(|| panic!("no column {column}"));
    (0..array.len())
        .map(|i| (!array.is_null(i)).then(|| array_value_to_string(array, i).unwrap()))
        .collect()
}

fn some(values: &[&str]) -> Vec<Option<String>> {
    values.iter().map(|v| Some(v.to_string())).collect()
}

#[track_caller]
fn assert_type(batch: &RecordBatch, column: &str, expected: &DataType) {
    let field = batch.schema().field_with_name(column).unwrap().clone();
    assert_eq!(field.data_type(), expected, "type of `{column}`");
}

/// The log's records: a line that does not start with a timestamp continues
/// the record before it (a `query:` source's SQL spans lines).
fn records(log: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in log.lines() {
        let starts = line.len() > 4 && line.as_bytes()[..4].iter().all(u8::is_ascii_digit);
        match out.last_mut() {
            Some(last) if !starts => {
                last.push('\n');
                last.push_str(line);
            }
            _ => out.push(line.to_string()),
        }
    }
    out
}

/// The SQL of every scan of `t` and every "rows fetched" count, from a debug log.
fn scans(log: &str) -> (Vec<String>, Vec<u64>) {
    let mut sql = Vec::new();
    let mut rows = Vec::new();
    for line in &records(log) {
        let line = line.as_str();
        if !line.contains("source=t") {
            continue;
        }
        if line.contains(" query ")
            && let Some(at) = line.find("sql=")
        {
            sql.push(line[at + 4..].trim().to_string());
        }
        if line.contains("rows fetched")
            && let Some(at) = line.find("rows=")
        {
            let n: String = line[at + 5..]
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect();
            rows.push(n.parse().unwrap());
        }
    }
    (sql, rows)
}

/// Runs the binary with kpiforge's debug log on.
fn kpiforge_logged(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kpiforge"))
        .args(args)
        .current_dir(dir)
        .env("KPIFORGE_LOG", "kpiforge=debug")
        .output()
        .expect("the kpiforge binary runs")
}

/// A one-KPI pipeline over source `t` (`source`: its YAML body).
fn kpi_project(source: &str, sql: &str, files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let yaml = format!(
        "name: p\noutput: out\nsources:\n  t:\n{source}\nkpis:\n  - id: k\n    sql: sql/k.sql\n    grain: month\n"
    );
    let dir = project(&[("pipelines/p.yaml", &yaml), ("sql/k.sql", sql)]);
    for (path, bytes) in files {
        let full = dir.path().join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, bytes).unwrap();
    }
    dir
}

fn published(dir: &Path) -> Vec<Option<f64>> {
    published_values(&dir.join("out/kpi_values/pipeline=p/as_of=2026-12-31/part-0.parquet"))
}

const RUN: [&str; 4] = ["run", "pipelines/p.yaml", "--as-of", "2026-12-31"];

/// Runs the binary with debug logs and measures its peak resident memory in KiB.
fn run_measuring_rss(dir: &Path, args: &[&str]) -> (Output, u64) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kpiforge"));
    command
        .args(args)
        .current_dir(dir)
        .env("KPIFORGE_LOG", "kpiforge=debug");
    let (out, mib) = super::util::run_measuring_peak_rss(command);
    (out, (mib * 1024.0) as u64)
}

/// `SELECT` of the numbers 0..10^digits, for generating rows server-side.
fn mysql_numbers(digits: u32) -> String {
    let d = "(SELECT 0 AS n UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL \
             SELECT 4 UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL \
             SELECT 8 UNION ALL SELECT 9)";
    let from: Vec<String> = (0..digits).map(|i| format!("{d} d{i}")).collect();
    let sum: Vec<String> = (0..digits)
        .map(|i| format!("d{i}.n * {}", 10u64.pow(i)))
        .collect();
    format!(
        "SELECT {} AS n FROM {}",
        sum.join(" + "),
        from.join(" CROSS JOIN ")
    )
}

// ---------------------------------------------------------------- MySQL

#[test]
fn mysql_types_round_trip() {
    let Some(url) = mysql_url("mysql_types_round_trip") else {
        return;
    };
    let version = mysql_first(&url, "SELECT VERSION()").unwrap_or_default();
    let mariadb = version.contains("MariaDB");
    let uuid = if mariadb { ", u UUID" } else { "" };
    let t = Table::create(
        &url,
        "types",
        &format!(
            "id INT PRIMARY KEY, b TINYINT(1), i8 TINYINT, u8 TINYINT UNSIGNED, i16 SMALLINT, \
             u16 SMALLINT UNSIGNED, i24 MEDIUMINT, u24 MEDIUMINT UNSIGNED, i32 INT, u32 INT UNSIGNED, \
             i64 BIGINT, u64 BIGINT UNSIGNED, dc DECIMAL(12,3), bigdc DECIMAL(50,10), f FLOAT, \
             d DOUBLE, c CHAR(5), vc VARCHAR(20), tx TEXT, en ENUM('small','large'), \
             st SET('a','b','c'), js JSON, dt DATE, tm TIME(6), dtm DATETIME(6), ts TIMESTAMP(6) NULL, \
             yr YEAR, bin BINARY(3), vbin VARBINARY(10), bl BLOB, bit1 BIT(1), bit9 BIT(9){uuid}"
        ),
    );
    let (uuid_col, uuid_val) = if mariadb {
        (", u", ", '123e4567-e89b-12d3-a456-426614174000'")
    } else {
        ("", "")
    };
    let name = &t.name;
    let columns = format!(
        "id, b, i8, u8, i16, u16, i24, u24, i32, u32, i64, u64, dc, bigdc, f, d, c, vc, tx, en, st, \
         js, dt, tm, dtm, ts, yr, bin, vbin, bl, bit1, bit9{uuid_col}"
    );
    mysql_exec(
        &url,
        &[
            "SET time_zone = '+00:00'",
            &format!(
                "INSERT INTO {name} ({columns}) VALUES (1, 1, -128, 255, -32768, 65535, -8388608, \
                 16777215, -2147483648, 4294967295, -9223372036854775808, 18446744073709551615, \
                 -123456789.125, 1234567890123456789012345678901234567890.0123456789, 1.5, 2.25, \
                 'ab', 'say \"hi\"', 'it''s a \\\\ text', 'large', 'a,c', '{{\"k\": [1, 2]}}', \
                 '2026-01-31', '12:34:56.789012', '2026-01-31 23:59:59.123456', \
                 '2026-01-31 23:59:59.500000', 2026, 'ab', x'00ff10', x'deadbeef', b'1', \
                 b'100000001'{uuid_val})"
            ),
            &format!("INSERT INTO {name} (id) VALUES (2)"),
            // A timestamp written in another zone is read back in UTC.
            "SET time_zone = '+02:00'",
            &format!(
                "INSERT INTO {name} (id, b, u64, dc, dt, dtm, ts, bit1, bit9) VALUES \
                 (3, 0, 0, 0.5, '1969-12-31', '1969-12-31 23:00:00', '2026-06-01 12:00:00', b'0', b'0')"
            ),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let src = source(
        dir.path(),
        &format!("    mysql: {{url: \"{url}\", table: {name}}}"),
    );
    let (batch, _) = rows_of(&src, "SELECT * FROM t ORDER BY id");
    assert_eq!(batch.num_rows(), 3);
    let utc = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let naive = DataType::Timestamp(TimeUnit::Microsecond, None);
    let expected: Vec<(&str, DataType, [Option<&str>; 3])> = vec![
        ("b", DataType::Boolean, [Some("true"), None, Some("false")]),
        ("i8", DataType::Int8, [Some("-128"), None, None]),
        ("u8", DataType::UInt8, [Some("255"), None, None]),
        ("i16", DataType::Int16, [Some("-32768"), None, None]),
        ("u16", DataType::UInt16, [Some("65535"), None, None]),
        ("i24", DataType::Int32, [Some("-8388608"), None, None]),
        ("u24", DataType::UInt32, [Some("16777215"), None, None]),
        ("i32", DataType::Int32, [Some("-2147483648"), None, None]),
        ("u32", DataType::UInt32, [Some("4294967295"), None, None]),
        (
            "i64",
            DataType::Int64,
            [Some("-9223372036854775808"), None, None],
        ),
        (
            "u64",
            DataType::UInt64,
            [Some("18446744073709551615"), None, Some("0")],
        ),
        (
            "dc",
            DataType::Decimal128(12, 3),
            [Some("-123456789.125"), None, Some("0.500")],
        ),
        (
            "bigdc",
            DataType::Decimal256(50, 10),
            [
                Some("1234567890123456789012345678901234567890.0123456789"),
                None,
                None,
            ],
        ),
        ("f", DataType::Float32, [Some("1.5"), None, None]),
        ("d", DataType::Float64, [Some("2.25"), None, None]),
        ("c", DataType::Utf8, [Some("ab"), None, None]),
        ("vc", DataType::Utf8, [Some("say \"hi\""), None, None]),
        ("tx", DataType::Utf8, [Some("it's a \\ text"), None, None]),
        ("en", DataType::Utf8, [Some("large"), None, None]),
        ("st", DataType::Utf8, [Some("a,c"), None, None]),
        ("js", DataType::Utf8, [Some("{\"k\": [1, 2]}"), None, None]),
        (
            "dt",
            DataType::Date32,
            [Some("2026-01-31"), None, Some("1969-12-31")],
        ),
        (
            "tm",
            DataType::Time64(TimeUnit::Microsecond),
            [Some("12:34:56.789012"), None, None],
        ),
        (
            "dtm",
            naive.clone(),
            [
                Some("2026-01-31T23:59:59.123456"),
                None,
                Some("1969-12-31T23:00:00"),
            ],
        ),
        (
            "ts",
            utc.clone(),
            [
                Some("2026-01-31T23:59:59.500Z"),
                None,
                Some("2026-06-01T10:00:00Z"),
            ],
        ),
        ("yr", DataType::Int16, [Some("2026"), None, None]),
        ("bin", DataType::Binary, [Some("616200"), None, None]),
        ("vbin", DataType::Binary, [Some("00ff10"), None, None]),
        ("bl", DataType::Binary, [Some("deadbeef"), None, None]),
        (
            "bit1",
            DataType::Boolean,
            [Some("true"), None, Some("false")],
        ),
        ("bit9", DataType::UInt64, [Some("257"), None, Some("0")]),
    ];
    for (column, data_type, values) in &expected {
        assert_type(&batch, column, data_type);
        let values: Vec<Option<String>> = values.iter().map(|v| v.map(str::to_string)).collect();
        assert_eq!(cells(&batch, column), values, "values of `{column}`");
    }
    if mariadb {
        assert_type(&batch, "u", &DataType::Utf8);
        assert_eq!(
            cells(&batch, "u"),
            vec![
                Some("123e4567-e89b-12d3-a456-426614174000".into()),
                None,
                None
            ]
        );
    }
    // The row of NULLs is NULL in every column but the key.
    for field in batch.schema().fields().iter().skip(1) {
        assert!(
            batch.column_by_name(field.name()).unwrap().is_null(1),
            "{}",
            field.name()
        );
    }
    // Filters on each kind of column run in MySQL and give DataFusion's answers.
    let (filtered, log) = rows_of(
        &src,
        "SELECT id FROM t WHERE b AND u64 = 18446744073709551615 AND dc < -1 \
         AND dt = DATE '2026-01-31' AND dtm > TIMESTAMP '2026-01-31 23:59:59' \
         AND ts >= TIMESTAMP '2026-01-31 23:59:59.5Z' AND yr = 2026 AND en = 'large' \
         AND vbin = X'00ff10' AND c = 'ab'",
    );
    assert_eq!(cells(&filtered, "id"), some(&["1"]));
    let (sql, rows) = scans(&log);
    let last = sql.last().unwrap();
    for pushed in [
        "(`b` <> 0)",
        "`u64` = 18446744073709551615",
        "`dc` < -1",
        "`dt` = DATE'2026-01-31'",
        "`dtm` > TIMESTAMP'2026-01-31 23:59:59.000000'",
        "`ts` >= TIMESTAMP'2026-01-31 23:59:59.500000'",
        "`vbin` = X'00FF10'",
        "`en` = 'large'",
    ] {
        assert!(last.contains(pushed), "{pushed} not in {last}");
    }
    // A YEAR compared with a number is filtered by DataFusion: MySQL would read
    // `yr = 26` as `yr = 2026`.
    let conditions = &last[last.find(" WHERE ").unwrap()..];
    assert!(!conditions.contains("`yr`"), "{last}");
    assert_eq!(rows.last(), Some(&1));
    let (two_digits, log) = rows_of(&src, "SELECT id FROM t WHERE yr = 26 OR yr < 100");
    assert_eq!(cells(&two_digits, "id").len(), 0, "{log}");
}

#[test]
fn mysql_table_pushdown_fetches_only_needed_columns_and_rows() {
    let Some(url) = mysql_url("mysql_table_pushdown_fetches_only_needed_columns_and_rows") else {
        return;
    };
    let t = Table::create(
        &url,
        "pushdown",
        "id INT PRIMARY KEY, d DATE, status VARCHAR(10), amount DECIMAL(10,2), region VARCHAR(10), \
         c5 INT, c6 INT, c7 INT, c8 INT, c9 INT",
    );
    mysql_exec(
        &url,
        &[&format!(
            "INSERT INTO {} SELECT n, DATE '2026-01-01' + INTERVAL (n % 28) DAY, \
             CASE WHEN n % 10 = 3 THEN 'shipped' WHEN n % 10 = 4 THEN 'Shipped' ELSE 'placed' END, \
             n, 'eu', n, n, n, n, n FROM ({}) numbers",
            t.name,
            mysql_numbers(3)
        )],
    );
    // 'Shipped' (capital S) matches under MySQL's default collation, not in DataFusion.
    let sql = "SELECT CAST(date_trunc('month', d) AS DATE) AS period, CAST(sum(amount) AS DOUBLE) AS value \
               FROM t WHERE status = 'shipped' GROUP BY 1";
    let dir = kpi_project(
        &format!(
            "    mysql: {{url: \"${{KPIFORGE_TEST_MYSQL_URL}}\", table: {}}}",
            t.name
        ),
        sql,
        &[],
    );
    let out = kpiforge_logged(dir.path(), &RUN);
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    // ids 3, 13, ..., 993: 100 rows summing to 49800.
    assert_eq!(published(dir.path()), vec![Some(49800.0)]);
    let (sql, rows) = scans(&log);
    assert!(!sql.is_empty(), "no query logged:\n{log}");
    for s in &sql {
        assert!(
            s.starts_with(&format!("SELECT `d`, `amount` FROM `{}` WHERE ", t.name)),
            "{s}"
        );
        assert!(s.contains("`status` = 'shipped'"), "{s}");
    }
    assert!(
        rows.iter().all(|r| *r == 100),
        "rows fetched {rows:?}, not 100 of 1000"
    );
}

#[test]
fn mysql_filters_on_quotes_and_backslashes() {
    let Some(url) = mysql_url("mysql_filters_on_quotes_and_backslashes") else {
        return;
    };
    let t = Table::create(&url, "quotes", "id INT PRIMARY KEY, note VARCHAR(40)");
    mysql_exec(
        &url,
        &[&format!(
            "INSERT INTO {} VALUES (1, 'say \"hi\"'), (2, 'say hi'), (3, 'it''s'), (4, 'its'), \
             (5, 'back\\\\slash'), (6, 'backslash'), (7, 'back\\\\\\\\'), (8, 'IT''S'), (9, NULL)",
            t.name
        )],
    );
    let dir = tempfile::tempdir().unwrap();
    let src = source(
        dir.path(),
        &format!("    mysql: {{url: \"{url}\", table: {}}}", t.name),
    );
    let sent = check_quote_filters(&src, "`note`");
    // No backslash reaches the SQL (MySQL's reading of one depends on the
    // session's sql_mode): each statement as sent gives the same rows in a
    // session with NO_BACKSLASH_ESCAPES.
    runtime().block_on(async {
        let opts = mysql_async::Opts::from_url(&url).unwrap();
        let mut conn = mysql_async::Conn::new(opts).await.unwrap();
        conn.query_drop(
            "SET NAMES utf8mb4, SESSION sql_mode = CONCAT(@@sql_mode, ',NO_BACKSLASH_ESCAPES')",
        )
        .await
        .unwrap();
        for (sql, rows) in &sent {
            assert!(!sql.contains('\\'), "{sql}");
            let got: Vec<i64> = conn.query(sql.as_str()).await.unwrap();
            assert_eq!(got.len(), *rows, "{sql}");
        }
        conn.disconnect().await.unwrap();
    });
}

/// Filters on `say "hi"`, `it's` and a backslash return exactly their rows, and
/// each ran in the database (its SQL names `quoted`, the note column). Returns
/// each statement sent with the rows it read.
fn check_quote_filters(src: &Source, quoted: &str) -> Vec<(String, usize)> {
    let mut sent = Vec::new();
    // DataFusion's SQL: '' is a quote, backslashes are plain characters (but in
    // LIKE patterns `\` escapes the next character).
    let cases: [(&str, &[&str]); 7] = [
        (r#"note = 'say "hi"'"#, &["1"]),
        ("note = 'it''s'", &["3"]),
        (r"note = 'back\slash'", &["5"]),
        (r"note = 'back\\'", &["7"]),
        (r"note LIKE '%\\%' ", &["5", "7"]),
        ("note IN ('it''s', 'say \"hi\"')", &["1", "3"]),
        ("note <> 'it''s'", &["1", "2", "4", "5", "6", "7", "8"]),
    ];
    for (filter, ids) in cases {
        let (batch, log) = rows_of(src, &format!("SELECT id FROM t WHERE {filter} ORDER BY id"));
        assert_eq!(cells(&batch, "id"), some(ids), "WHERE {filter}");
        let (sql, rows) = scans(&log);
        let last = sql.last().unwrap();
        assert!(
            last.contains(" WHERE ") && last.contains(quoted),
            "{filter}: {last}"
        );
        assert_eq!(rows.last(), Some(&(ids.len() as u64)), "{filter}: {last}");
        sent.push((last.clone(), ids.len()));
    }
    sent
}

#[test]
fn mysql_query_source_with_pushed_filter() {
    let Some(url) = mysql_url("mysql_query_source_with_pushed_filter") else {
        return;
    };
    let t = Table::create(&url, "query", "id INT PRIMARY KEY, note TEXT");
    mysql_exec(
        &url,
        &[&format!(
            "INSERT INTO {} VALUES (1, 'a'), (2, 'b\"'), (3, 'c'), (4, 'd'), (5, NULL)",
            t.name
        )],
    );
    let dir = tempfile::tempdir().unwrap();
    let src = source(
        dir.path(),
        &format!(
            "    mysql: {{url: \"{url}\", query: \"SELECT id, note, id * 10 AS tens FROM {} WHERE id > 1;\"}}",
            t.name
        ),
    );
    let (batch, log) = rows_of(
        &src,
        "SELECT note, tens FROM t WHERE tens >= 30 ORDER BY tens",
    );
    assert_eq!(
        cells(&batch, "note"),
        vec![Some("c".into()), Some("d".into()), None]
    );
    assert_eq!(cells(&batch, "tens"), some(&["30", "40", "50"]));
    let (sql, rows) = scans(&log);
    assert_eq!(
        sql.last().unwrap(),
        &format!(
            "SELECT `note`, `tens` FROM (SELECT id, note, id * 10 AS tens FROM {} WHERE id > 1\n) AS kpiforge_q WHERE (`tens` >= 30)",
            t.name
        )
    );
    assert_eq!(rows.last(), Some(&3));
    // count(*) reads no column at all.
    let (batch, log) = rows_of(&src, "SELECT count(*) AS n FROM t");
    assert_eq!(cells(&batch, "n"), some(&["4"]));
    assert!(
        scans(&log).0.last().unwrap().starts_with("SELECT 1 FROM ("),
        "{log}"
    );
    // A query ending in a comment: the filters around it still apply.
    for comment in [
        "-- skip the first",
        "# skip the first",
        "/* skip the first */",
    ] {
        let src = source(
            dir.path(),
            &format!(
                "    mysql: {{url: \"{url}\", query: \"SELECT id, note FROM {} WHERE id > 1 {comment}\"}}",
                t.name
            ),
        );
        let (batch, log) = rows_of(
            &src,
            "SELECT id FROM t WHERE id >= 3 AND id < 5 ORDER BY id",
        );
        assert_eq!(cells(&batch, "id"), some(&["3", "4"]), "{comment}");
        let (sql, rows) = scans(&log);
        assert!(
            sql.last().unwrap().ends_with(&format!(
                "{comment}\n) AS kpiforge_q WHERE (`id` >= 3) AND (`id` < 5)"
            )),
            "{log}"
        );
        assert_eq!(rows.last(), Some(&2), "{comment}");
    }
}

#[test]
fn mysql_streams_a_million_rows_in_bounded_memory() {
    let Some(url) = mysql_url("mysql_streams_a_million_rows_in_bounded_memory") else {
        return;
    };
    let t = Table::create(
        &url,
        "million",
        "id INT PRIMARY KEY, amount INT, pad VARCHAR(200)",
    );
    let started = Instant::now();
    mysql_exec(
        &url,
        &[&format!(
            "INSERT INTO {} SELECT n, n % 1000, REPEAT('x', 200) FROM ({}) numbers",
            t.name,
            mysql_numbers(6)
        )],
    );
    eprintln!(
        "generated 1,000,000 rows in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    // Every row and both columns are read: 1M * (4 + 200 bytes) pass through.
    let sql = "SELECT DATE '2026-01-01' AS period, CAST(sum(amount) + sum(length(pad)) AS DOUBLE) AS value FROM t";
    let dir = kpi_project(
        &format!(
            "    mysql: {{url: \"${{KPIFORGE_TEST_MYSQL_URL}}\", table: {}}}",
            t.name
        ),
        sql,
        &[],
    );
    let started = Instant::now();
    let (out, kib) = run_measuring_rss(dir.path(), &RUN);
    assert!(out.status.success(), "{}", stderr(&out));
    let seconds = started.elapsed().as_secs_f64();
    // The same run over one row: what the process takes anyway.
    let one = Table::create(
        &url,
        "one_row",
        "id INT PRIMARY KEY, amount INT, pad VARCHAR(200)",
    );
    mysql_exec(
        &url,
        &[&format!("INSERT INTO {} VALUES (1, 1, 'x')", one.name)],
    );
    let base_dir = kpi_project(
        &format!(
            "    mysql: {{url: \"${{KPIFORGE_TEST_MYSQL_URL}}\", table: {}}}",
            one.name
        ),
        sql,
        &[],
    );
    let (base_out, base) = run_measuring_rss(base_dir.path(), &RUN);
    assert!(base_out.status.success(), "{}", stderr(&base_out));
    eprintln!(
        "mysql: 1,000,000 rows (~204 MB of column data) read in {seconds:.1}s, peak RSS {} MiB \
         (the same run over 1 row: {} MiB)",
        kib / 1024,
        base / 1024
    );
    // sum(n % 1000) = 1000 * 499500; sum(length(pad)) = 200 * 10^6.
    assert_eq!(
        published(dir.path()),
        vec![Some(499_500_000.0 + 200_000_000.0)]
    );
    let (_, rows) = scans(&stderr(&out));
    assert_eq!(rows, vec![1_000_000]);
    assert!(kib < 1024 * 1024, "peak RSS {kib} KiB");
    // Streamed: far less than the data on top of the process's own needs.
    assert!(
        kib < base + 100 * 1024,
        "peak RSS {kib} KiB, over 1 row {base} KiB"
    );
}

#[test]
fn mysql_errors_name_the_server_and_never_the_password() {
    let Some(url) = mysql_url("mysql_errors_name_the_server_and_never_the_password") else {
        return;
    };
    let (host, port, db, user) = server_of(&url);
    let run = |mysql: &str| {
        let dir = kpi_project(
            &format!("    mysql: {mysql}"),
            "SELECT DATE '2026-01-01' AS period, CAST(count(*) AS DOUBLE) AS value FROM t",
            &[],
        );
        let started = Instant::now();
        let out = super::util::kpiforge(dir.path(), &RUN);
        (out, started.elapsed())
    };
    #[track_caller]
    fn fails(out: &Output, needles: &[&str]) {
        let err = stderr(out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        for n in needles {
            assert!(err.contains(n), "stderr lacks {n:?}:\n{err}");
        }
    }

    // Wrong password for an existing user.
    mysql_exec(
        &url,
        &[
            "DROP USER IF EXISTS 'kpiforge_test'@'%'",
            "CREATE USER 'kpiforge_test'@'%' IDENTIFIED BY 'Right-pw-7731'",
        ],
    );
    let secret = "Wrong-pw-9046";
    let (out, _) = run(&format!(
        "{{url: \"mysql://kpiforge_test:{secret}@{host}:{port}/{db}\", table: t, retries: 0}}"
    ));
    // A short wrong password, the port's digits: not searched for in messages
    // (which would show the port as `***`, and so the password).
    let (short, _) = run(&format!(
        "{{url: \"mysql://kpiforge_test:{port}@{host}:{port}/{db}\", table: t, retries: 0}}"
    ));
    mysql_exec(&url, &["DROP USER IF EXISTS 'kpiforge_test'@'%'"]);
    for out in [&out, &short] {
        fails(
            out,
            &[&format!(
                "authentication failed for user 'kpiforge_test' on {host}:{port} (database {db}): \
                 check the password in the URL's environment variable"
            )],
        );
    }
    assert!(!stderr(&out).contains(secret) && !stdout(&out).contains(secret));

    // Nothing listens on port 1: refused, retried once, with backoff (the
    // warning of each retry, debug log on, never shows the password either).
    let dir = kpi_project(
        &format!(
            "    mysql: {{url: \"mysql://{user}:{secret}@127.0.0.1:1/{db}\", table: t, retries: 1}}"
        ),
        "SELECT DATE '2026-01-01' AS period, CAST(count(*) AS DOUBLE) AS value FROM t",
        &[],
    );
    let out = kpiforge_logged(dir.path(), &RUN);
    fails(
        &out,
        &[
            &format!(
                "connection refused: is MySQL running on 127.0.0.1:1? (database {db}, user '{user}') (2 attempts)"
            ),
            "retrying in 200 ms",
        ],
    );
    assert!(!stderr(&out).contains(secret) && !stdout(&out).contains(secret));

    // A server that never answers: the connect timeout. A listener on the
    // loopback that never accepts: the kernel completes the TCP handshake, and
    // the server's greeting never comes.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let (out, took) = run(&format!(
        "{{url: \"mysql://{user}:{secret}@127.0.0.1:{silent_port}/{db}\", table: t, connect_timeout: 1s, retries: 0}}"
    ));
    drop(silent);
    let err = stderr(&out);
    fails(
        &out,
        &[&format!(
            "could not connect to 127.0.0.1:{silent_port} within 1s: is the host reachable?"
        )],
    );
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert!(!err.contains(secret) && !stdout(&out).contains(secret));

    // Unknown database and unknown table (the tables there are listed).
    let other = Table::create(&url, "listed", "id INT");
    let (out, _) = run(&format!(
        "{{url: \"mysql://{user}@{host}:{port}/kpiforge_no_such_db\", table: t}}"
    ));
    fails(
        &out,
        &[&format!(
            "unknown database 'kpiforge_no_such_db' on {host}:{port} (user '{user}')"
        )],
    );
    // Quoted or not, qualified or not, the message names the table as parsed.
    for table in [
        "kpiforge_no_such_table".to_string(),
        "'`kpiforge_no_such_table`'".to_string(),
        format!("'`{db}`.kpiforge_no_such_table'"),
    ] {
        let (out, _) = run(&format!(
            "{{url: \"${{KPIFORGE_TEST_MYSQL_URL}}\", table: {table}}}"
        ));
        fails(
            &out,
            &[
                &format!(
                    "table `kpiforge_no_such_table` not found in database `{db}` on {host}:{port} (user '{user}'): tables there: "
                ),
                &other.name,
            ],
        );
    }
    let (out, _) = run("{url: \"${KPIFORGE_TEST_MYSQL_URL}\", table: a.b.c}");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("`a.b.c` is not a table name: write `table` or `schema.table`"),
        "{err}"
    );

    // A column of a type kpiforge does not read: named, with the conversion to use.
    let g = Table::create(&url, "geometry", "id INT, g GEOMETRY");
    let (out, _) = run(&format!(
        "{{url: \"${{KPIFORGE_TEST_MYSQL_URL}}\", table: {}}}",
        g.name
    ));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "column `g` of `{}` has type geometry, which kpiforge cannot read: convert it in a `query:`, \
             e.g. `query: SELECT ST_AsText(g) AS g, ... FROM ...`",
            g.name
        )),
        "{err}"
    );

    // A query that does not parse; one that takes longer than `query_timeout`.
    let (out, _) = run("{url: \"${KPIFORGE_TEST_MYSQL_URL}\", query: \"SELEC 1 AS x\"}");
    fails(
        &out,
        &[
            "the query does not run: ",
            "(error 1064)",
            &format!("on {host}:{port}"),
        ],
    );
    let started = Instant::now();
    let (out, _) = run(
        "{url: \"${KPIFORGE_TEST_MYSQL_URL}\", query: \"SELECT SLEEP(60) AS s\", query_timeout: 1s}",
    );
    fails(
        &out,
        &[&format!(
            "the query did not finish within 1s on {host}:{port} (database {db}, user '{user}'): raise `query_timeout`"
        )],
    );
    // Far less than the query's minute: the timeout ended it (a generous
    // bound, not a timing).
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );

    // `tls: require` on a server without TLS says so (with TLS, it connects).
    let (out, _) = run(&format!(
        "{{url: \"${{KPIFORGE_TEST_MYSQL_URL}}\", table: {}, tls: {{mode: require}}}}",
        other.name
    ));
    if !out.status.success() {
        fails(
            &out,
            &["does not offer TLS, which `tls: {mode: require}` requires"],
        );
    }
}

/// A scan that stops early (a LIMIT DataFusion applies after a filter of its
/// own) closes its connection without reading the rest of the result, and the
/// server, its writes failing, stops the query: no rows go on being read,
/// nothing is killed from a second connection.
#[test]
fn mysql_early_stop_ends_the_query_on_the_server() {
    let Some(url) = mysql_url("mysql_early_stop_ends_the_query_on_the_server") else {
        return;
    };
    let marker = unique("early");
    // 100,000 rows at a fifth of a millisecond each: 20 s if read to the end.
    let query = format!(
        "SELECT /* {marker} */ n FROM ({}) numbers WHERE SLEEP(0.0002) = 0",
        mysql_numbers(5)
    );
    let dir = tempfile::tempdir().unwrap();
    let src = source(
        dir.path(),
        &format!("    mysql: {{url: \"{url}\", query: \"{query}\"}}"),
    );
    let running = || {
        mysql_first(
            &url,
            &format!(
                "SELECT CAST(COUNT(*) AS CHAR) FROM information_schema.processlist \
                 WHERE info LIKE '%{marker}%' AND info NOT LIKE '%processlist%'"
            ),
        )
        .unwrap_or_default()
    };
    // The runtime lives on after the query (its workers run any task left), as
    // in a long run: a reader left draining the result would keep the query
    // running on the server.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let rows = rt.block_on(async {
        let ctx = SessionContext::new();
        register(&ctx, &src, Mode::Load).await.unwrap();
        let df = ctx
            .sql("SELECT n FROM t WHERE n + 0 >= 0 LIMIT 5")
            .await
            .unwrap();
        df.collect().await.unwrap()
    });
    assert_eq!(rows.iter().map(|b| b.num_rows()).sum::<usize>(), 5);
    let deadline = Instant::now() + Duration::from_secs(5);
    let gone = loop {
        let n = running();
        if n == "0" || Instant::now() > deadline {
            break n == "0";
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    drop(rt);
    assert!(
        gone,
        "the query still runs on the server {:?} after the early stop",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
}

/// A password holding URL delimiters (which the configuration rejects, asking
/// for percent-encoding; the provider must not leak it either way) stays a
/// password: no part of it shows in the error or in the log of the retries.
#[test]
fn mysql_password_with_url_delimiters_never_shows() {
    let dir = tempfile::tempdir().unwrap();
    for url in [
        "mysql://kpi:123?s3cret-pw@127.0.0.1:1/shop",
        "mysql://kpi:/s3cret-pw@127.0.0.1:1/shop",
        "mysql://kpi:s3c#ret-pw@127.0.0.1:1/shop",
        "mariadb://kpi:s3c@ret-pw@127.0.0.1:1/shop",
    ] {
        let mut src = source(
            dir.path(),
            "    mysql: {url: \"mysql://kpi@127.0.0.1:1/shop\", table: t, retries: 2}",
        );
        let kpiforge::config::SourceKind::Database(db) = &mut src.kind else {
            panic!("not a database source");
        };
        db.url = url.to_string();
        let (result, log) = query(&src, "SELECT * FROM t");
        let err = result.unwrap_err();
        assert!(
            err.contains(
                "connection refused: is MySQL running on 127.0.0.1:1? (database shop, user 'kpi') (3 attempts)"
            ),
            "{url}: {err}"
        );
        assert_eq!(log.matches("retrying in").count(), 2, "{url}: {log}");
        for secret in ["s3cret", "s3c", "ret-pw"] {
            assert!(!err.contains(secret), "{url}: {err}");
            assert!(!log.contains(secret), "{url}: {log}");
        }
    }
}

// ---------------------------------------------------------------- SQLite

/// An SQLite file at `dir/db.sqlite` made by `sql`.
fn sqlite_file(dir: &Path, sql: &str) {
    let conn = rusqlite::Connection::open(dir.join("db.sqlite")).unwrap();
    conn.execute_batch(sql).unwrap();
}

fn sqlite_source(dir: &Path, relation: &str) -> Source {
    source(dir, &format!("    sqlite: {{path: db.sqlite, {relation}}}"))
}

#[test]
fn sqlite_types_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    sqlite_file(
        dir.path(),
        "CREATE TABLE types (id INTEGER PRIMARY KEY, i INTEGER, big BIGINT, r REAL, dbl DOUBLE, \
           num NUMERIC(10,2), bare NUMERIC, flag BOOLEAN, d DATE, dt DATETIME, ts TIMESTAMP, \
           tx TEXT, vc VARCHAR(10), cl CLOB, bl BLOB, anything);
         -- NULL first: the declared types still decide.
         INSERT INTO types (id) VALUES (1);
         INSERT INTO types VALUES (2, -7, 9223372036854775807, 1.5, 2.25, 2.5, 3, 1, '2026-01-31',
           '2026-01-31 23:59:59.25', '2026-01-31T08:00:00', 'say \"hi\"', 'it''s', 'back\\slash',
           X'00FF', 42);
         INSERT INTO types VALUES (3, 0, 0, 3, 4, '12.345', 2.5, 0, '1969-12-31', 86400,
           '2026-06-01T12:00:00+02:00', '', 'x', 'y', X'', 'text now');
         CREATE TABLE empty (a INTEGER, b DATE, c);",
    );
    let src = sqlite_source(dir.path(), "table: types");
    let (batch, _) = rows_of(&src, "SELECT * FROM t ORDER BY id");
    let ts = DataType::Timestamp(TimeUnit::Microsecond, None);
    let expected: Vec<(&str, DataType, [Option<&str>; 3])> = vec![
        ("i", DataType::Int64, [None, Some("-7"), Some("0")]),
        (
            "big",
            DataType::Int64,
            [None, Some("9223372036854775807"), Some("0")],
        ),
        ("r", DataType::Float64, [None, Some("1.5"), Some("3.0")]),
        ("dbl", DataType::Float64, [None, Some("2.25"), Some("4.0")]),
        (
            "num",
            DataType::Decimal128(10, 2),
            [None, Some("2.50"), Some("12.35")],
        ),
        ("bare", DataType::Float64, [None, Some("3.0"), Some("2.5")]),
        (
            "flag",
            DataType::Boolean,
            [None, Some("true"), Some("false")],
        ),
        (
            "d",
            DataType::Date32,
            [None, Some("2026-01-31"), Some("1969-12-31")],
        ),
        (
            "dt",
            ts.clone(),
            [
                None,
                Some("2026-01-31T23:59:59.250"),
                Some("1970-01-02T00:00:00"),
            ],
        ),
        (
            "ts",
            ts.clone(),
            [
                None,
                Some("2026-01-31T08:00:00"),
                Some("2026-06-01T10:00:00"),
            ],
        ),
        ("tx", DataType::Utf8, [None, Some("say \"hi\""), Some("")]),
        ("vc", DataType::Utf8, [None, Some("it's"), Some("x")]),
        ("cl", DataType::Utf8, [None, Some("back\\slash"), Some("y")]),
        ("bl", DataType::Binary, [None, Some("00ff"), Some("")]),
        // No declared type, an integer then text: text.
        (
            "anything",
            DataType::Utf8,
            [None, Some("42"), Some("text now")],
        ),
    ];
    for (column, data_type, values) in &expected {
        assert_type(&batch, column, data_type);
        let values: Vec<Option<String>> = values.iter().map(|v| v.map(str::to_string)).collect();
        assert_eq!(cells(&batch, column), values, "values of `{column}`");
    }
    // An empty table keeps its columns and types.
    let (batch, _) = rows_of(
        &sqlite_source(dir.path(), "table: empty"),
        "SELECT * FROM t",
    );
    assert_eq!(batch.num_rows(), 0);
    assert_type(&batch, "a", &DataType::Int64);
    assert_type(&batch, "b", &DataType::Date32);
    assert_type(&batch, "c", &DataType::Utf8);
    // A query: declared types pass through; expressions are typed from their values.
    let q = sqlite_source(
        dir.path(),
        "query: \"SELECT id, num, d, i * 2 AS twice, r / 2 AS half, upper(tx) AS shout, NULL AS nada FROM types\"",
    );
    let (batch, _) = rows_of(&q, "SELECT * FROM t ORDER BY id");
    assert_type(&batch, "num", &DataType::Decimal128(10, 2));
    assert_type(&batch, "d", &DataType::Date32);
    assert_type(&batch, "twice", &DataType::Int64);
    assert_type(&batch, "half", &DataType::Float64);
    assert_type(&batch, "shout", &DataType::Utf8);
    assert_type(&batch, "nada", &DataType::Utf8);
    assert_eq!(
        cells(&batch, "twice"),
        vec![None, Some("-14".into()), Some("0".into())]
    );
    assert_eq!(
        cells(&batch, "half"),
        vec![None, Some("0.75".into()), Some("1.5".into())]
    );
    assert_eq!(
        cells(&batch, "shout"),
        vec![None, Some("SAY \"HI\"".into()), Some("".into())]
    );
}

#[test]
fn sqlite_value_that_does_not_fit_its_declared_type_is_named() {
    let dir = tempfile::tempdir().unwrap();
    sqlite_file(
        dir.path(),
        "CREATE TABLE t (id INTEGER, qty INTEGER, d DATE);
         INSERT INTO t VALUES (1, 5, '2026-01-01'), (2, 'abc', '2026-01-02'), (3, 1, '2026/01/03');",
    );
    let src = sqlite_source(dir.path(), "table: t");
    let (result, _) = query(&src, "SELECT sum(qty) FROM t");
    let err = result.unwrap_err();
    assert!(
        err.contains(
            "column `qty` (declared INTEGER, read as Int64) holds 'abc' (text), which does not fit: \
             it is not an integer: read it as text with `query: SELECT CAST(\"qty\" AS TEXT) AS \"qty\""
        ),
        "{err}"
    );
    assert!(err.contains("db.sqlite"), "names the file: {err}");
    let (result, _) = query(&src, "SELECT max(d) FROM t");
    let err = result.unwrap_err();
    assert!(
        err.contains("column `d` (declared DATE, read as Date32) holds '2026/01/03' (text)"),
        "{err}"
    );
    // A filter that leaves the bad row out reads fine (it is filtered in SQLite).
    let (batch, _) = rows_of(
        &src,
        "SELECT sum(qty) AS s FROM t WHERE id <> 2 AND d < DATE '2026-01-03'",
    );
    assert_eq!(cells(&batch, "s"), some(&["5"]));
}

#[test]
fn sqlite_table_pushdown_fetches_only_needed_columns_and_rows() {
    let dir_files = tempfile::tempdir().unwrap();
    sqlite_file(
        dir_files.path(),
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, d DATE, status TEXT, amount NUMERIC(10,2),
           region TEXT, c5 INT, c6 INT, c7 INT, c8 INT, c9 INT);
         INSERT INTO orders
           WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 999)
           SELECT i, date('2026-01-01', '+' || (i % 28) || ' days'),
             CASE i % 10 WHEN 3 THEN 'shipped' WHEN 4 THEN 'Shipped' ELSE 'placed' END,
             i, 'eu', i, i, i, i, i FROM n;",
    );
    let db = std::fs::read(dir_files.path().join("db.sqlite")).unwrap();
    let sql = "SELECT CAST(date_trunc('month', d) AS DATE) AS period, CAST(sum(amount) AS DOUBLE) AS value \
               FROM t WHERE status = 'shipped' AND id BETWEEN 0 AND 2000 GROUP BY 1";
    let dir = kpi_project(
        "    sqlite: {path: data/db.sqlite, table: orders}",
        sql,
        &[("data/db.sqlite", &db)],
    );
    let out = kpiforge_logged(dir.path(), &RUN);
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert_eq!(published(dir.path()), vec![Some(49800.0)]);
    let (sql, rows) = scans(&log);
    assert!(!sql.is_empty(), "no query logged:\n{log}");
    for s in &sql {
        assert!(
            s.starts_with("SELECT \"d\", \"amount\" FROM \"orders\" WHERE "),
            "{s}"
        );
        assert!(s.contains("(\"status\" COLLATE BINARY = 'shipped')"), "{s}");
        // DataFusion turns BETWEEN into two comparisons.
        assert!(s.contains("(\"id\" >= 0) AND (\"id\" <= 2000)"), "{s}");
    }
    assert!(
        rows.iter().all(|r| *r == 100),
        "rows fetched {rows:?}, not 100 of 1000"
    );
}

#[test]
fn sqlite_filters_on_quotes_and_backslashes() {
    let dir = tempfile::tempdir().unwrap();
    sqlite_file(
        dir.path(),
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, note TEXT COLLATE NOCASE);
         INSERT INTO notes VALUES (1, 'say \"hi\"'), (2, 'say hi'), (3, 'it''s'), (4, 'its'),
           (5, 'back\\slash'), (6, 'backslash'), (7, 'back\\\\'), (8, 'IT''S'), (9, NULL);",
    );
    // COLLATE NOCASE on the column: `it's` still must not match `IT'S`.
    check_quote_filters(&sqlite_source(dir.path(), "table: notes"), "\"note\"");
}

#[test]
fn sqlite_query_source_with_pushed_filter() {
    let dir = tempfile::tempdir().unwrap();
    sqlite_file(
        dir.path(),
        "CREATE TABLE t (id INTEGER PRIMARY KEY, note TEXT);
         INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c'), (4, 'd'), (5, NULL);",
    );
    let src = sqlite_source(
        dir.path(),
        "query: \"SELECT id, note, CAST(id * 10 AS INTEGER) AS tens, id * 10 AS raw FROM t WHERE id > 1\"",
    );
    let (batch, log) = rows_of(&src, "SELECT note FROM t WHERE id >= 3 ORDER BY id");
    assert_eq!(
        cells(&batch, "note"),
        vec![Some("c".into()), Some("d".into()), None]
    );
    let (sql, rows) = scans(&log);
    assert_eq!(
        sql.last().unwrap(),
        "SELECT \"id\", \"note\" FROM (SELECT id, note, CAST(id * 10 AS INTEGER) AS tens, id * 10 AS raw \
         FROM t WHERE id > 1\n) AS kpiforge_q WHERE (\"id\" >= 3)"
    );
    assert_eq!(rows.last(), Some(&3));
    // A CAST declares the expression's type: filtered in SQLite.
    let (batch, log) = rows_of(&src, "SELECT id FROM t WHERE tens = 40");
    assert_eq!(cells(&batch, "id"), some(&["4"]));
    assert!(
        scans(&log)
            .0
            .last()
            .unwrap()
            .ends_with("WHERE (\"tens\" = 40)"),
        "{log}"
    );
    assert_eq!(scans(&log).1.last(), Some(&1));
    // Without one, the type comes from the values and DataFusion filters.
    assert_type(&batch, "id", &DataType::Int64);
    let (batch, log) = rows_of(&src, "SELECT id, raw FROM t WHERE raw = 40");
    assert_type(&batch, "raw", &DataType::Int64);
    assert_eq!(cells(&batch, "id"), some(&["4"]));
    assert!(
        scans(&log).0.last().unwrap().ends_with("AS kpiforge_q"),
        "{log}"
    );
    assert_eq!(scans(&log).1.last(), Some(&4));
    let (batch, _) = rows_of(&src, "SELECT count(*) AS n FROM t");
    assert_eq!(cells(&batch, "n"), some(&["4"]));
    // A query ending in a comment: the filters around it still apply.
    let src = sqlite_source(
        dir.path(),
        "query: \"SELECT id, note FROM t WHERE id > 1 -- skip the first\"",
    );
    let (batch, log) = rows_of(
        &src,
        "SELECT id FROM t WHERE id >= 3 AND id < 5 ORDER BY id",
    );
    assert_eq!(cells(&batch, "id"), some(&["3", "4"]));
    let (sql, rows) = scans(&log);
    assert!(
        sql.last()
            .unwrap()
            .ends_with("-- skip the first\n) AS kpiforge_q WHERE (\"id\" >= 3) AND (\"id\" < 5)"),
        "{log}"
    );
    assert_eq!(rows.last(), Some(&2));
}

#[test]
fn sqlite_errors_say_what_to_check() {
    let dir = tempfile::tempdir().unwrap();
    sqlite_file(
        dir.path(),
        "CREATE TABLE orders (id INTEGER); CREATE VIEW big_orders AS SELECT * FROM orders;",
    );
    let (result, _) = query(
        &sqlite_source(dir.path(), "table: order"),
        "SELECT * FROM t",
    );
    let err = result.unwrap_err();
    assert!(
        err.contains("table `order` not found: tables there: big_orders, orders"),
        "{err}"
    );
    let (result, _) = query(
        &sqlite_source(dir.path(), "query: \"SELECT nope FROM orders\""),
        "SELECT * FROM t",
    );
    let err = result.unwrap_err();
    assert!(
        err.contains("the query does not run: no such column: nope"),
        "{err}"
    );
    // A query that runs too long, when typing its columns and when read.
    let endless = "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n) ";
    for select in [
        "SELECT count(*) AS c FROM n",
        "SELECT CAST(count(*) AS INTEGER) AS c FROM n",
    ] {
        let started = Instant::now();
        let src = source(
            dir.path(),
            &format!(
                "    sqlite: {{path: db.sqlite, query: \"{endless}{select}\", query_timeout: 1s}}"
            ),
        );
        let (result, _) = query(&src, "SELECT * FROM t");
        let err = result.unwrap_err();
        assert!(
            err.contains("did not finish within 1s: raise `query_timeout`"),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }
    // A repeated name is told apart the way SQLite does it.
    let (batch, _) = rows_of(
        &sqlite_source(
            dir.path(),
            "query: \"SELECT o.id, p.id FROM orders o JOIN orders p\"",
        ),
        "SELECT * FROM t",
    );
    let names: Vec<String> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(names, vec!["id", "id:1"]);
    std::fs::write(dir.path().join("db.sqlite"), "id,amount\n1,2\n".repeat(100)).unwrap();
    let (result, _) = query(
        &sqlite_source(dir.path(), "table: orders"),
        "SELECT * FROM t",
    );
    let err = result.unwrap_err();
    assert!(
        err.contains("db.sqlite: the file is not an SQLite database: check `path:`"),
        "{err}"
    );
}

#[test]
fn sqlite_quoted_and_qualified_table_names() {
    let dir = tempfile::tempdir().unwrap();
    sqlite_file(
        dir.path(),
        "CREATE TABLE \"order lines\" (id INTEGER, qty INTEGER);
         INSERT INTO \"order lines\" VALUES (1, 5), (2, 7);
         CREATE TABLE \"my.table\" (id INTEGER);
         INSERT INTO \"my.table\" VALUES (3);",
    );
    for (table, ids) in [
        (r#"'"order lines"'"#, &["1", "2"][..]),
        (r#"'main."order lines"'"#, &["1", "2"]),
        (r#"'"my.table"'"#, &["3"]),
    ] {
        let (batch, _) = rows_of(
            &sqlite_source(dir.path(), &format!("table: {table}")),
            "SELECT id FROM t ORDER BY id",
        );
        assert_eq!(cells(&batch, "id"), some(ids), "{table}");
    }
    // Not found: the name as parsed, without its quotes.
    let (result, _) = query(
        &sqlite_source(dir.path(), r#"table: '"order line"'"#),
        "SELECT * FROM t",
    );
    let err = result.unwrap_err();
    assert!(
        err.contains("table `order line` not found: tables there: my.table, order lines"),
        "{err}"
    );
    let (result, _) = query(
        &sqlite_source(dir.path(), "table: main.nope"),
        "SELECT * FROM t",
    );
    let err = result.unwrap_err();
    assert!(
        err.contains(
            "table `nope` not found in schema `main`: tables there: my.table, order lines"
        ),
        "{err}"
    );
    // More than two parts: a configuration error, before the file is opened.
    let (result, _) = query(
        &sqlite_source(dir.path(), "table: main.my.table"),
        "SELECT * FROM t",
    );
    let err = result.unwrap_err();
    assert!(
        err.contains(
            "`main.my.table` is not a table name: write `table` or `schema.table`, quoting a name \
             that holds a dot (`\"my.table\"`)"
        ),
        "{err}"
    );
}

/// `query_timeout` bounds the time a scan spends reading, not the time it waits
/// for the query consuming its rows: a slow consumer does not fail a big read,
/// while a query that runs too long still does (`sqlite_errors_say_what_to_check`).
#[test]
fn sqlite_query_timeout_counts_reading_not_waiting_for_the_consumer() {
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    sqlite_file(
        dir.path(),
        "CREATE TABLE big (id INTEGER PRIMARY KEY);
         INSERT INTO big
           WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 299999)
           SELECT i FROM n;",
    );
    let src = source(
        dir.path(),
        "    sqlite: {path: db.sqlite, table: big, query_timeout: 1s}",
    );
    runtime().block_on(async {
        let ctx = SessionContext::new();
        register(&ctx, &src, Mode::Load).await.unwrap();
        let mut stream = ctx
            .sql("SELECT id FROM t")
            .await
            .unwrap()
            .execute_stream()
            .await
            .unwrap();
        let mut rows = 0;
        while let Some(batch) = stream.next().await {
            let batch = batch.unwrap_or_else(|e| panic!("after {rows} rows: {e}"));
            if rows == 0 {
                // The reader fills the channel and waits: not its time.
                tokio::time::sleep(Duration::from_millis(2500)).await;
            }
            rows += batch.num_rows();
        }
        assert_eq!(rows, 300_000);
    });
}

#[test]
fn sqlite_streams_a_million_rows_in_bounded_memory() {
    let files = tempfile::tempdir().unwrap();
    let started = Instant::now();
    sqlite_file(
        files.path(),
        "CREATE TABLE big (id INTEGER PRIMARY KEY, amount INTEGER, pad TEXT);
         INSERT INTO big
           WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 999999)
           SELECT i, i % 1000, hex(zeroblob(100)) FROM n;",
    );
    eprintln!(
        "generated 1,000,000 rows in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let db = std::fs::read(files.path().join("db.sqlite")).unwrap();
    let sql = "SELECT DATE '2026-01-01' AS period, CAST(sum(amount) + sum(length(pad)) AS DOUBLE) AS value FROM t";
    let dir = kpi_project(
        "    sqlite: {path: db.sqlite, table: big}",
        sql,
        &[("db.sqlite", &db)],
    );
    drop(db);
    let started = Instant::now();
    let (out, kib) = run_measuring_rss(dir.path(), &RUN);
    assert!(out.status.success(), "{}", stderr(&out));
    let seconds = started.elapsed().as_secs_f64();
    // The same run over one row: what the process takes anyway.
    let one = tempfile::tempdir().unwrap();
    sqlite_file(
        one.path(),
        "CREATE TABLE big (id INTEGER PRIMARY KEY, amount INTEGER, pad TEXT);
         INSERT INTO big VALUES (1, 1, 'x');",
    );
    let one_db = std::fs::read(one.path().join("db.sqlite")).unwrap();
    let base_dir = kpi_project(
        "    sqlite: {path: db.sqlite, table: big}",
        sql,
        &[("db.sqlite", &one_db)],
    );
    let (base_out, base) = run_measuring_rss(base_dir.path(), &RUN);
    assert!(base_out.status.success(), "{}", stderr(&base_out));
    eprintln!(
        "sqlite: 1,000,000 rows (~204 MB of column data) read in {seconds:.1}s, peak RSS {} MiB \
         (the same run over 1 row: {} MiB)",
        kib / 1024,
        base / 1024
    );
    assert_eq!(
        published(dir.path()),
        vec![Some(499_500_000.0 + 200_000_000.0)]
    );
    assert_eq!(scans(&stderr(&out)).1, vec![1_000_000]);
    assert!(kib < 1024 * 1024, "peak RSS {kib} KiB");
    assert!(
        kib < base + 100 * 1024,
        "peak RSS {kib} KiB, over 1 row {base} KiB"
    );
}
