//! Incremental pulls: only rows past the watermark are fetched, the watermark
//! advances only when a run publishes, and KPIs see the whole history with
//! updated rows replacing their older copies.

use std::path::Path;
use std::process::Output;

use super::postgres::{execute, url};
use super::util::{project, published_values, stderr};

fn run(dir: &Path, as_of: &str, env: &[(&str, &str)]) -> Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_kpiforge"));
    command
        .args(["run", "pipelines/p.yaml", "--as-of", as_of])
        .current_dir(dir)
        .env("KPIFORGE_LOG", "kpiforge=info");
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().unwrap()
}

/// The watermark the state store holds for source `orders`.
fn watermark(dir: &Path) -> Option<String> {
    let conn = rusqlite::Connection::open(dir.join(".kpiforge/state.db")).unwrap();
    conn.query_row(
        "SELECT value FROM watermarks WHERE pipeline = 'p' AND source = 'orders'",
        [],
        |r| r.get(0),
    )
    .ok()
}

/// Rows pulled by the last run, from its log line.
fn pulled(out: &Output) -> u64 {
    let err = stderr(out);
    let line = err
        .lines()
        .rfind(|l| l.contains("incremental pull"))
        .unwrap_or_else(|| panic!("no pull logged:\n{err}"));
    let start = line.find("rows=").expect("rows field") + 5;
    line[start..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_pulls_only_new_rows_and_advances_only_on_publish() {
    let Some(url) = url() else { return };
    let t = format!("inc_{}", std::process::id());
    execute(
        &url,
        &format!(
            "DROP TABLE IF EXISTS {t};
             CREATE TABLE {t} (id int, amount numeric(10,2), d date, updated_at timestamptz);
             INSERT INTO {t} VALUES (1, 10, '2026-10-01', '2026-10-01 10:00Z'),
               (2, 20, '2026-10-02', '2026-10-02 10:00Z'), (3, 30, '2026-11-01', '2026-11-01 10:00Z');"
        ),
    )
    .await;
    let yaml = format!(
        "name: p\noutput: out\nsources:\n  orders:\n    postgres: {{url: \"${{KPF_PG_URL}}\", table: {t}, tls: {{mode: disable}}}}\n    incremental: {{column: updated_at}}\n    key: [id]\nkpis:\n  - id: revenue\n    sql: sql/k.sql\n    grain: month\n"
    );
    let sql = "SELECT CAST(date_trunc('month', d) AS DATE) AS period, CAST(sum(amount) AS DOUBLE) AS value FROM orders GROUP BY 1";
    let dir = project(&[("pipelines/p.yaml", &yaml), ("sql/k.sql", sql)]);
    let env = [("KPF_PG_URL", url.as_str())];
    let values = |as_of: &str| {
        published_values(&dir.path().join(format!(
            "out/kpi_values/pipeline=p/as_of={as_of}/part-0.parquet"
        )))
    };

    let first = run(dir.path(), "2026-11-30", &env);
    assert!(first.status.success(), "{}", stderr(&first));
    assert_eq!(pulled(&first), 3);
    assert_eq!(values("2026-11-30"), [Some(30.0), Some(30.0)]);
    assert_eq!(
        watermark(dir.path()).as_deref(),
        Some("2026-11-01T10:00:00Z")
    );

    // Two new rows and one update; nothing else changes.
    execute(
        &url,
        &format!(
            "INSERT INTO {t} VALUES (4, 5, '2026-11-15', '2026-11-15 09:00Z'), (5, 7, '2026-11-16', '2026-11-16 09:00Z');
             UPDATE {t} SET amount = 12, updated_at = '2026-11-16 12:00Z' WHERE id = 1;"
        ),
    )
    .await;
    let second = run(dir.path(), "2026-12-01", &env);
    assert!(second.status.success(), "{}", stderr(&second));
    // The new and updated rows, and (with a key) the row at the watermark again.
    assert_eq!(pulled(&second), 4);
    // October: 12 (updated) + 20; November: 30 + 5 + 7.
    assert_eq!(values("2026-12-01"), [Some(32.0), Some(42.0)]);
    assert_eq!(
        watermark(dir.path()).as_deref(),
        Some("2026-11-16T12:00:00Z")
    );

    // A run that fails after pulling (its output is a file, so publishing fails)
    // keeps the watermark; the next run pulls the same row again.
    execute(
        &url,
        &format!("INSERT INTO {t} VALUES (6, 100, '2026-11-20', '2026-11-20 09:00Z');"),
    )
    .await;
    std::fs::write(dir.path().join("blocked"), "").unwrap();
    let failing = std::process::Command::new(env!("CARGO_BIN_EXE_kpiforge"))
        .args([
            "run",
            "pipelines/p.yaml",
            "--as-of",
            "2026-12-02",
            "--output",
            "blocked/out",
        ])
        .current_dir(dir.path())
        .env("KPF_PG_URL", &url)
        .output()
        .unwrap();
    assert!(!failing.status.success());
    assert_eq!(
        watermark(dir.path()).as_deref(),
        Some("2026-11-16T12:00:00Z")
    );
    let staged = std::fs::read_dir(dir.path().join(".kpiforge/cache/p/orders"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("staged-"))
        .count();
    assert_eq!(staged, 0, "a failed run leaves no staged pull");

    let third = run(dir.path(), "2026-12-03", &env);
    assert!(third.status.success(), "{}", stderr(&third));
    assert_eq!(pulled(&third), 2);
    assert_eq!(values("2026-12-03"), [Some(32.0), Some(142.0)]);
    assert_eq!(
        watermark(dir.path()).as_deref(),
        Some("2026-11-20T09:00:00Z")
    );

    // Nothing new: only the row at the watermark, same results.
    let fourth = run(dir.path(), "2026-12-04", &env);
    assert!(fourth.status.success(), "{}", stderr(&fourth));
    assert_eq!(pulled(&fourth), 1);
    assert_eq!(values("2026-12-04"), [Some(32.0), Some(142.0)]);
    execute(&url, &format!("DROP TABLE {t}")).await;
}

/// SQLite, keyed: a row first pulled without a value in the incremental column
/// is replaced by its later copy (NULLs never win), rows with a NULL key are all
/// kept, a second run of the same source waits for the first's lock, and a
/// cache file the store lists but the disk lost is an error, not lost rows.
#[test]
fn sqlite_keyed_pulls_replace_older_copies_and_guard_the_cache() {
    let dir = project(&[
        (
            "pipelines/p.yaml",
            "name: p\noutput: out\nsources:\n  orders:\n    sqlite: {path: hr.sqlite, table: orders}\n    incremental: {column: version}\n    key: [id]\nkpis:\n  - id: total\n    sql: sql/k.sql\n    grain: month\n",
        ),
        (
            "sql/k.sql",
            "SELECT DATE '2026-11-01' AS period, CAST(sum(amount) AS DOUBLE) AS value FROM orders",
        ),
    ]);
    let db = rusqlite::Connection::open(dir.path().join("hr.sqlite")).unwrap();
    db.execute_batch(
        "CREATE TABLE orders (id INTEGER, amount INTEGER, version INTEGER);
         INSERT INTO orders VALUES (1, 10, NULL), (2, 20, 1), (NULL, 5, 1), (NULL, 6, 2);",
    )
    .unwrap();
    let total = |as_of: &str| {
        published_values(&dir.path().join(format!(
            "out/kpi_values/pipeline=p/as_of={as_of}/part-0.parquet"
        )))
    };
    let first = run(dir.path(), "2026-11-28", &[]);
    assert!(first.status.success(), "{}", stderr(&first));
    assert_eq!(pulled(&first), 4);
    assert_eq!(total("2026-11-28"), [Some(41.0)]);

    db.execute_batch("UPDATE orders SET amount = 100, version = 3 WHERE id = 1;")
        .unwrap();
    let second = run(dir.path(), "2026-11-29", &[]);
    assert!(second.status.success(), "{}", stderr(&second));
    // version >= 2: the updated row and the NULL-key row at the watermark.
    assert_eq!(pulled(&second), 2);
    // 100 (id 1's new copy beats its NULL-version copy) + 20 + 5 + 6.
    assert_eq!(total("2026-11-29"), [Some(131.0)]);

    // Another run holds the source's lock.
    let lock = std::fs::File::create(dir.path().join(".kpiforge/cache/p/orders/.lock")).unwrap();
    lock.try_lock().unwrap();
    let blocked = run(dir.path(), "2026-11-30", &[]);
    assert!(!blocked.status.success());
    assert!(
        stderr(&blocked).contains("another run is pulling this source now"),
        "{}",
        stderr(&blocked)
    );
    drop(lock);

    // A listed cache file that went missing.
    let cache = dir.path().join(".kpiforge/cache/p/orders");
    let part = std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("part-"))
        .unwrap()
        .path();
    std::fs::remove_file(&part).unwrap();
    let broken = run(dir.path(), "2026-11-30", &[]);
    assert!(!broken.status.success());
    assert!(
        stderr(&broken).contains("that the state store lists is missing"),
        "{}",
        stderr(&broken)
    );
}

/// MariaDB, append-only (no key): only rows strictly past the watermark, a
/// `datetime(6)` column, microseconds kept in the watermark.
#[test]
fn mysql_appends_only_rows_past_the_watermark() {
    use super::databases::{mysql_exec, mysql_url};
    let Some(url) = mysql_url("mysql_appends_only_rows_past_the_watermark") else {
        return;
    };
    let t = super::util::unique("inc");
    mysql_exec(
        &url,
        &[
            &format!("CREATE TABLE {t} (id INT, amount DECIMAL(10,2), at DATETIME(6))"),
            &format!(
                "INSERT INTO {t} VALUES (1, 1.50, '2026-11-01 10:00:00.000001'), (2, 2.25, '2026-11-02 10:00:00.5')"
            ),
        ],
    );
    let yaml = format!(
        "name: p\noutput: out\nsources:\n  orders:\n    mysql: {{url: \"${{KPF_MY_URL}}\", table: {t}}}\n    incremental: {{column: at}}\nkpis:\n  - id: total\n    sql: sql/k.sql\n    grain: month\n"
    );
    let sql =
        "SELECT DATE '2026-11-01' AS period, CAST(sum(amount) AS DOUBLE) AS value FROM orders";
    let dir = project(&[("pipelines/p.yaml", &yaml), ("sql/k.sql", sql)]);
    let env = [("KPF_MY_URL", url.as_str())];
    let total = |as_of: &str| {
        published_values(&dir.path().join(format!(
            "out/kpi_values/pipeline=p/as_of={as_of}/part-0.parquet"
        )))
    };
    let first = run(dir.path(), "2026-11-28", &env);
    assert!(first.status.success(), "{}", stderr(&first));
    assert_eq!((pulled(&first), total("2026-11-28")), (2, vec![Some(3.75)]));
    assert_eq!(
        watermark(dir.path()).as_deref(),
        Some("2026-11-02T10:00:00.500")
    );

    // A row a microsecond past the watermark, and one just before it (late, missed
    // by design without a key: the docs say to use an insert sequence then).
    mysql_exec(
        &url,
        &[&format!(
            "INSERT INTO {t} VALUES (3, 10, '2026-11-02 10:00:00.500001'), (4, 100, '2026-11-02 10:00:00.4')"
        )],
    );
    let second = run(dir.path(), "2026-11-29", &env);
    mysql_exec(&url, &[&format!("DROP TABLE {t}")]);
    assert!(second.status.success(), "{}", stderr(&second));
    assert_eq!(
        (pulled(&second), total("2026-11-29")),
        (1, vec![Some(13.75)])
    );
}
