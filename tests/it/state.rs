//! The state store in PostgreSQL (`state:` a URL) against the real server at
//! `KPIFORGE_TEST_POSTGRES_URL`: run history for `kpiforge runs`, and an
//! incremental source's watermark kept across runs, without the password in
//! any output. Each test works in a schema of its own, dropped after.

use std::path::Path;
use std::process::Output;

use super::postgres::execute;
use super::util::{published_values, server_url, stderr, stdout, unique};

const SECRET: &str = "kpfStateS3cret";

/// The test server's URL with a password put in (trust auth ignores it), and
/// the search path set to `schema`.
fn state_url(base: &str, schema: &str) -> String {
    let (scheme, rest) = base.split_once("://").unwrap();
    let rest = match rest.split_once('@') {
        Some((user, host)) if !user.contains(':') => format!("{user}:{SECRET}@{host}"),
        _ => rest.to_string(),
    };
    let sep = if rest.contains('?') { '&' } else { '?' };
    format!("{scheme}://{rest}{sep}options=-csearch_path%3D{schema}")
}

fn kpiforge(dir: &Path, args: &[&str], url: &str) -> Output {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kpiforge"))
        .args(args)
        .current_dir(dir)
        .env("KPIFORGE_LOG", "kpiforge=info")
        .env("KPF_STATE_URL", url)
        .output()
        .unwrap();
    for text in [stdout(&out), stderr(&out)] {
        assert!(!text.contains(SECRET), "the password is shown:\n{text}");
    }
    out
}

async fn watermark(base: &str, schema: &str) -> Option<String> {
    let (client, connection) = tokio_postgres::connect(base, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .query_opt(
            &format!(
                "SELECT value FROM {schema}.kpiforge_watermarks WHERE pipeline = 'p' AND source = 'orders'"
            ),
            &[],
        )
        .await
        .unwrap()
        .map(|r| r.get(0))
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_state_keeps_history_and_watermarks() {
    let Some(base) = server_url(
        "KPIFORGE_TEST_POSTGRES_URL",
        "postgres_state_keeps_history_and_watermarks",
    ) else {
        return;
    };
    let schema = unique("state");
    execute(&base, &format!("CREATE SCHEMA {schema};")).await;
    let url = state_url(&base, &schema);

    let dir = super::util::project(&[
        (
            "pipelines/p.yaml",
            "name: p\noutput: out\nstate: \"${KPF_STATE_URL}\"\nsources:\n  orders:\n    sqlite: {path: shop.sqlite, table: orders}\n    incremental: {column: version}\n    key: [id]\nkpis:\n  - id: total\n    sql: sql/k.sql\n    grain: month\n",
        ),
        (
            "sql/k.sql",
            "SELECT DATE '2026-11-01' AS period, CAST(sum(amount) AS DOUBLE) AS value FROM orders",
        ),
    ]);
    let db = rusqlite::Connection::open(dir.path().join("shop.sqlite")).unwrap();
    db.execute_batch(
        "CREATE TABLE orders (id INTEGER, amount INTEGER, version INTEGER);
         INSERT INTO orders VALUES (1, 10, 1), (2, 20, 1), (4, 1, 2);",
    )
    .unwrap();
    let total = |as_of: &str| {
        published_values(&dir.path().join(format!(
            "out/kpi_values/pipeline=p/as_of={as_of}/part-0.parquet"
        )))
    };
    let run = |as_of: &str| {
        kpiforge(
            dir.path(),
            &["run", "pipelines/p.yaml", "--as-of", as_of],
            &url,
        )
    };

    let first = run("2026-11-28");
    assert!(first.status.success(), "{}", stderr(&first));
    assert_eq!(total("2026-11-28"), [Some(31.0)]);
    assert_eq!(watermark(&base, &schema).await.as_deref(), Some("2"));

    db.execute_batch("INSERT INTO orders VALUES (3, 5, 3); UPDATE orders SET amount = 15, version = 3 WHERE id = 1;")
        .unwrap();
    let second = run("2026-11-29");
    assert!(second.status.success(), "{}", stderr(&second));
    // Only rows at or past the watermark kept in PostgreSQL (2): ids 4, 3 and 1.
    let err = stderr(&second);
    let line = err
        .lines()
        .rfind(|l| l.contains("incremental pull"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(line.contains("rows=3"), "{line}");
    assert_eq!(total("2026-11-29"), [Some(41.0)]);
    assert_eq!(watermark(&base, &schema).await.as_deref(), Some("3"));
    // No SQLite store; the cache stays local.
    assert!(!dir.path().join(".kpiforge/state.db").exists());
    assert!(dir.path().join(".kpiforge/cache/p/orders").is_dir());

    let runs = kpiforge(dir.path(), &["runs", "--state", &url, "--json"], &url);
    assert!(runs.status.success(), "{}", stderr(&runs));
    let listed: Vec<serde_json::Value> = stdout(&runs)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.len(), 2, "{}", stdout(&runs));
    assert_eq!(listed[0]["as_of"], "2026-11-29");
    assert_eq!(listed[1]["as_of"], "2026-11-28");
    assert!(
        listed
            .iter()
            .all(|r| r["status"] == "succeeded" && r["pipeline"] == "p")
    );

    execute(&base, &format!("DROP SCHEMA {schema} CASCADE;")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_postgres_state_fails_without_the_password() {
    let dir = super::util::project(&[
        (
            "pipelines/p.yaml",
            "name: p\noutput: out\nstate: \"${KPF_STATE_URL}\"\nsources:\n  s: {file: s.csv}\nkpis:\n  - id: n\n    sql: sql/k.sql\n    grain: month\n",
        ),
        ("s.csv", "a\n1\n"),
        (
            "sql/k.sql",
            "SELECT DATE '2026-11-01' AS period, CAST(count(*) AS DOUBLE) AS value FROM s",
        ),
    ]);
    let url = format!("postgres://kpf:{SECRET}@127.0.0.1:1/nowhere?connect_timeout=2");
    let out = kpiforge(dir.path(), &["runs", "--state", &url], &url);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("postgres://kpf@127.0.0.1:1/nowhere"),
        "{}",
        stderr(&out)
    );
    let run = kpiforge(
        dir.path(),
        &["run", "pipelines/p.yaml", "--as-of", "2026-11-28"],
        &url,
    );
    // As with an SQLite store: the run publishes, the history says why it is missing.
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(
        stderr(&run).contains("the run history cannot be opened"),
        "{}",
        stderr(&run)
    );
}
