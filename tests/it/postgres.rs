//! PostgreSQL sources against the real server at `KPIFORGE_TEST_POSTGRES_URL`:
//! every common type with NULLs, pushdown, `query:` sources, errors that say
//! what to check without the password, and incremental pulls.

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Int64Type, TimeUnit};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::prelude::SessionContext;
use kpiforge::source::Mode;

use super::util::{project, stderr, unique, walk};

/// The server URL, or `None` after saying why the test is skipped.
pub fn url() -> Option<String> {
    match std::env::var("KPIFORGE_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!(
                "skipped: KPIFORGE_TEST_POSTGRES_URL is not set (e.g. postgres://postgres@127.0.0.1:5432/test)"
            );
            None
        }
    }
}

/// Runs SQL statements on the server.
pub async fn execute(url: &str, sql: &str) {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test PostgreSQL");
    let task = tokio::spawn(connection);
    client.batch_execute(sql).await.expect("setup SQL runs");
    drop(client);
    let _ = task.await;
}

/// Registers a pipeline's one source in a fresh context, as a run does.
pub async fn register(source_yaml: &str) -> Result<SessionContext, String> {
    let yaml = format!("name: p\noutput: out\nsources:\n  src:\n{source_yaml}\n");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pipelines/p.yaml");
    let pipeline =
        kpiforge::config::parse(&yaml, &file).map_err(|(_, problems)| format!("{problems:?}"))?;
    let ctx = SessionContext::new();
    kpiforge::source::register(&ctx, &pipeline.sources[0], Mode::Load)
        .await
        .map_err(|e| e.to_string())?;
    Ok(ctx)
}

pub async fn collect(ctx: &SessionContext, sql: &str) -> Vec<RecordBatch> {
    ctx.sql(sql).await.unwrap().collect().await.unwrap()
}

/// Every cell of one column, as text, NULL as `None`.
pub fn texts(batches: &[RecordBatch], column: &str) -> Vec<Option<String>> {
    let mut out = Vec::new();
    for b in batches {
        let array = b.column(b.schema().index_of(column).unwrap());
        let f = ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default()).unwrap();
        out.extend((0..array.len()).map(|i| array.is_valid(i).then(|| f.value(i).to_string())));
    }
    out
}

#[tokio::test]
async fn every_common_type_round_trips_with_nulls() {
    let Some(url) = url() else { return };
    let t = unique("types");
    execute(
        &url,
        &format!(
            "DROP TYPE IF EXISTS {t}_mood; CREATE TYPE {t}_mood AS ENUM ('sad', 'ok', 'happy');
             CREATE TABLE {t} (id int, i2 smallint, i8 bigint, dec numeric(12,2), big numeric,
               r real, d double precision, txt text, vc varchar(20), ch char(3), b boolean,
               day date, tod time, ts timestamp, tstz timestamptz, u uuid, j json, jb jsonb,
               bin bytea, mood {t}_mood);
             INSERT INTO {t} VALUES (1, -32768, 9223372036854775807, 1234567890.12,
               123456789012345678901234.5, 1.5, 2.25, 'héllo \"q\" ''s''', 'vc', 'abc', true,
               '2026-11-27', '13:45:30.5', '2026-11-27 08:00:00', '2026-11-27 08:00:00+02',
               'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{{\"a\": 1}}', '{{\"b\": [1, 2]}}',
               '\\x00ff10', 'happy');
             INSERT INTO {t} (id) VALUES (2);"
        ),
    )
    .await;
    let ctx = register(&format!(
        "    postgres: {{url: \"{url}\", table: {t}, tls: {{mode: disable}}}}"
    ))
    .await
    .unwrap();
    let batches = collect(&ctx, "SELECT * FROM src ORDER BY id").await;
    execute(&url, &format!("DROP TABLE {t}; DROP TYPE {t}_mood;")).await;

    let schema = batches[0].schema();
    let ty = |c: &str| schema.field_with_name(c).unwrap().data_type().clone();
    assert_eq!(ty("i2"), DataType::Int16);
    assert_eq!(ty("i8"), DataType::Int64);
    assert_eq!(ty("dec"), DataType::Decimal128(12, 2));
    assert_eq!(
        ty("big"),
        DataType::Decimal128(38, 10),
        "bare numeric read as numeric(38,10)"
    );
    assert_eq!(ty("r"), DataType::Float32);
    assert_eq!(ty("d"), DataType::Float64);
    assert_eq!(ty("b"), DataType::Boolean);
    assert_eq!(ty("day"), DataType::Date32);
    assert_eq!(
        ty("tstz"),
        DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()))
    );
    assert_eq!(ty("bin"), DataType::Binary);
    let expect = [
        ("i2", "-32768"),
        ("i8", "9223372036854775807"),
        ("dec", "1234567890.12"),
        ("big", "123456789012345678901234.5000000000"),
        ("r", "1.5"),
        ("d", "2.25"),
        ("txt", "héllo \"q\" 's'"),
        ("vc", "vc"),
        ("ch", "abc"),
        ("b", "true"),
        ("day", "2026-11-27"),
        ("tod", "13:45:30.500"),
        ("ts", "2026-11-27T08:00:00"),
        ("tstz", "2026-11-27T06:00:00Z"),
        ("u", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        ("j", "{\"a\": 1}"),
        ("jb", "{\"b\": [1, 2]}"),
        ("bin", "00ff10"),
        ("mood", "happy"),
    ];
    for (column, value) in expect {
        let cells = texts(&batches, column);
        assert_eq!(cells[0].as_deref(), Some(value), "column {column}");
        assert_eq!(cells[1], None, "column {column} keeps its NULL");
    }
}

#[tokio::test]
async fn table_sources_push_projection_and_filters_into_the_sql() {
    let Some(url) = url() else { return };
    let t = unique("pushdown");
    execute(
        &url,
        &format!(
            "CREATE TABLE {t} (id int, bucket int, note text, amount numeric(10,2), created timestamptz);
             INSERT INTO {t} SELECT g, g % 10, 'note ' || g, g * 1.5, now() FROM generate_series(1, 1000) g;"
        ),
    )
    .await;
    let ctx = register(&format!(
        "    postgres: {{url: \"{url}\", table: {t}, tls: {{mode: disable}}}}"
    ))
    .await
    .unwrap();
    let sql = "SELECT id FROM src WHERE bucket = 3 AND note <> 'say \"hi\"'";
    let plan = collect(&ctx, &format!("EXPLAIN {sql}")).await;
    let plan = texts(&plan, "plan")
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join("\n");
    let rows = collect(&ctx, sql).await;
    // A scan that needs no column (the crate would return one).
    let count = collect(&ctx, "SELECT count(*) AS n FROM src").await;
    execute(&url, &format!("DROP TABLE {t}")).await;
    assert_eq!(texts(&count, "n"), [Some("1000".to_string())]);
    // The SQL sent names only the needed columns and carries the WHERE clause.
    let sent = plan
        .lines()
        .find(|l| l.contains("PostgresScan"))
        .unwrap_or_else(|| panic!("no PostgresScan in\n{plan}"));
    assert!(sent.contains("\"bucket\" = 3"), "{sent}");
    assert!(
        !sent.contains("amount") && !sent.contains("created"),
        "{sent}"
    );
    assert_eq!(rows.iter().map(|b| b.num_rows()).sum::<usize>(), 100);
}

#[tokio::test]
async fn query_sources_run_with_filters_around_them() {
    let Some(url) = url() else { return };
    let t = unique("query");
    execute(
        &url,
        &format!(
            "CREATE TABLE {t} (region text, amount numeric(10,2), at timestamptz);
             INSERT INTO {t} VALUES ('north', 10.50, '2026-11-01 00:30+01'), ('south', 4.25, '2026-11-02 12:00Z'),
               ('north', 1, '2026-11-03 12:00Z'), ('it''s', 2, NULL);"
        ),
    )
    .await;
    let ctx = register(&format!(
        "    postgres:\n      url: \"{url}\"\n      tls: {{mode: disable}}\n      query: SELECT region, sum(amount) AS total, min(at) AS first_at, count(*) AS n FROM {t} GROUP BY region"
    ))
    .await
    .unwrap();
    let rows = collect(
        &ctx,
        "SELECT region, total, first_at, n FROM src WHERE region IN ('north', 'it''s') ORDER BY region",
    )
    .await;
    execute(&url, &format!("DROP TABLE {t}")).await;
    assert_eq!(
        texts(&rows, "region"),
        [Some("it's".into()), Some("north".into())]
    );
    // `sum` of numeric(10,2) is a bare numeric: read as numeric(38,10).
    assert_eq!(
        texts(&rows, "total"),
        [Some("2.0000000000".into()), Some("11.5000000000".into())]
    );
    // Sessions run in UTC: 00:30+01 is 23:30 the day before.
    assert_eq!(
        texts(&rows, "first_at")[1].as_deref(),
        Some("2026-10-31T23:30:00Z")
    );
    let n = rows[0].column(3).as_primitive::<Int64Type>();
    assert_eq!((n.value(0), n.value(1)), (1, 2));
}

#[tokio::test]
async fn connection_errors_say_what_to_check_and_never_the_password() {
    let Some(url) = url() else { return };
    execute(
        &url,
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'kpiforge_pw') THEN
           CREATE ROLE kpiforge_pw LOGIN PASSWORD 'right-horse-battery'; END IF; END $$;",
    )
    .await;
    // Trust auth accepts any password for a role, so a missing role shows the
    // authentication path; the password must not appear anywhere.
    let host = url.split('@').nth(1).unwrap_or("127.0.0.1:5432/test");
    let wrong = format!("postgres://nosuchrole_kpf:Sup3rS3cretPw@{host}");
    let err = register(&format!(
        "    postgres: {{url: \"{wrong}\", table: t, tls: {{mode: disable}}, retries: 0}}"
    ))
    .await
    .err()
    .unwrap();
    assert!(!err.contains("Sup3rS3cretPw"), "{err}");
    assert!(
        err.contains("nosuchrole_kpf") && err.contains("127.0.0.1:5432"),
        "{err}"
    );

    let closed = "postgres://postgres:Sup3rS3cretPw@127.0.0.1:1/test";
    let err = register(&format!(
        "    postgres: {{url: \"{closed}\", table: t, tls: {{mode: disable}}, retries: 1}}"
    ))
    .await
    .err()
    .unwrap();
    assert!(err.contains("is PostgreSQL running there"), "{err}");
    assert!(
        err.contains("127.0.0.1:1") && err.contains("after 2 attempts"),
        "{err}"
    );
    assert!(!err.contains("Sup3rS3cretPw"), "{err}");

    let err = register(&format!(
        "    postgres: {{url: \"{url}\", table: no_such_table_kpf, tls: {{mode: disable}}}}"
    ))
    .await
    .err()
    .unwrap();
    assert!(err.contains("table `no_such_table_kpf` not found"), "{err}");
}

#[test]
fn a_run_reads_postgres_through_the_binary_with_the_url_from_the_environment() {
    let Some(url) = url() else { return };
    let t = unique("run");
    tokio::runtime::Runtime::new().unwrap().block_on(execute(
        &url,
        &format!(
            "CREATE TABLE {t} (d date, amount numeric(10,2));
             INSERT INTO {t} VALUES ('2026-10-05', 10), ('2026-10-20', 5.5), ('2026-11-02', 7), (NULL, 1);"
        ),
    ));
    let yaml = format!(
        "name: p\noutput: out\nsources:\n  sales:\n    postgres: {{url: \"${{KPF_PG_URL}}\", table: {t}, tls: {{mode: disable}}}}\n    checks:\n      - not_null: {{column: d, severity: warn}}\nkpis:\n  - id: revenue\n    sql: sql/k.sql\n    grain: month\n"
    );
    let sql = "SELECT CAST(date_trunc('month', d) AS DATE) AS period, CAST(sum(amount) AS DOUBLE) AS value FROM sales WHERE d IS NOT NULL GROUP BY 1";
    let dir = project(&[("pipelines/p.yaml", &yaml), ("sql/k.sql", sql)]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kpiforge"))
        .args(["run", "pipelines/p.yaml", "--as-of", "2026-11-30"])
        .current_dir(dir.path())
        .env("KPF_PG_URL", &url)
        .output()
        .unwrap();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(execute(&url, &format!("DROP TABLE {t}")));
    assert!(out.status.success(), "{}", stderr(&out));
    let values = super::util::published_values(
        &dir.path()
            .join("out/kpi_values/pipeline=p/as_of=2026-11-30/part-0.parquet"),
    );
    assert_eq!(values, [Some(15.5), Some(7.0)]);
}

/// Every log line (all crates, at trace level) and error of runs whose URL
/// carries a password: the password never appears.
#[test]
fn the_password_never_reaches_logs_errors_or_outputs() {
    let Some(url) = url() else { return };
    let secret = "Zq9-very-secret-pw";
    // Trust authentication accepts the password, so the run succeeds with it.
    let with_password = url.replacen("://postgres@", &format!("://postgres:{secret}@"), 1);
    assert!(
        with_password.contains(secret),
        "the test URL must be postgres://postgres@...: {url}"
    );
    let closed = format!("postgres://postgres:{secret}@127.0.0.1:1/test");
    let sql = "SELECT CAST(DATE '2026-11-01' AS DATE) AS period, CAST(count(*) AS DOUBLE) AS value FROM s";
    for (database_url, succeeds) in [(with_password.as_str(), true), (closed.as_str(), false)] {
        let yaml = "name: p\noutput: out\nsources:\n  s:\n    postgres: {url: \"${KPF_SECRET_URL}\", query: \"SELECT 1 AS one\", tls: {mode: disable}, retries: 1}\nkpis:\n  - id: k\n    sql: sql/k.sql\n    grain: month\n";
        let dir = project(&[("pipelines/p.yaml", yaml), ("sql/k.sql", sql)]);
        for command in [
            &["run", "pipelines/p.yaml", "--as-of", "2026-11-30"][..],
            &["validate", "pipelines/p.yaml"],
            &["check", "pipelines/p.yaml"],
        ] {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_kpiforge"))
                .args(command)
                .current_dir(dir.path())
                .env("KPF_SECRET_URL", database_url)
                .env("KPIFORGE_LOG", "trace")
                .output()
                .unwrap();
            let all = format!("{}{}", stderr(&out), String::from_utf8_lossy(&out.stdout));
            assert_eq!(out.status.success(), succeeds, "{command:?}: {all}");
            assert!(
                !all.contains(secret),
                "{command:?} leaked the password:\n{all}"
            );
            assert!(all.len() > 200, "{command:?}: expected logs, got {all}");
        }
        // Nor anything published (the runs dataset records errors).
        for entry in walk(&dir.path().join("out")) {
            let bytes = std::fs::read(&entry).unwrap();
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{} holds the password",
                entry.display()
            );
        }
    }
}

/// A million-row table streams through a KPI in batches: the process's peak
/// memory stays far below the table's size in memory.
#[test]
fn a_million_rows_stream_with_bounded_memory() {
    let Some(url) = url() else { return };
    let t = unique("million");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(execute(
        &url,
        &format!(
            "CREATE TABLE {t} AS SELECT g AS id, DATE '2026-01-01' + (g % 300) AS d,
               (g % 1000)::numeric(10,2) AS amount, repeat('x', 100) AS note
             FROM generate_series(1, 1000000) g;"
        ),
    ));
    let yaml = format!(
        "name: p\noutput: out\nsources:\n  big:\n    postgres: {{url: \"{url}\", table: {t}, tls: {{mode: disable}}}}\nkpis:\n  - id: total\n    sql: sql/k.sql\n    grain: year\n"
    );
    // Every row and its 100-byte note cross the wire (~130 MB as Arrow).
    let sql = "SELECT DATE '2026-01-01' AS period, CAST(sum(amount) + sum(length(note)) AS DOUBLE) AS value FROM big";
    let dir = project(&[("pipelines/p.yaml", &yaml), ("sql/k.sql", sql)]);
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_kpiforge"));
    command
        .args(["run", "pipelines/p.yaml", "--as-of", "2026-12-31"])
        .current_dir(dir.path());
    let (out, peak_mib) = super::util::run_measuring_peak_rss(command);
    rt.block_on(execute(&url, &format!("DROP TABLE {t}")));
    assert!(out.status.success(), "{}", stderr(&out));
    eprintln!("peak RSS streaming 1,000,000 PostgreSQL rows: {peak_mib:.0} MiB");
    let values = super::util::published_values(
        &dir.path()
            .join("out/kpi_values/pipeline=p/as_of=2026-12-31/part-0.parquet"),
    );
    // sum(g % 1000) over 1..=1e6 = 1000 * 499500; plus 100 bytes per row.
    assert_eq!(values, [Some(499_500_000.0 + 100_000_000.0)]);
    // A memory bound, not a timing: the rows as Arrow alone would be ~130 MB.
    assert!(peak_mib < 400.0, "peak RSS {peak_mib:.0} MiB");
}

/// `tls:` reaches the server: `require` encrypts (the server says so), and
/// `verify-full` against the local self-signed certificate fails with advice.
#[tokio::test]
async fn tls_modes_reach_the_server() {
    let Some(url) = url() else { return };
    let ssl = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    let ctx = match register(&format!(
        "    postgres: {{url: \"{url}\", query: \"{ssl}\", tls: {{mode: require}}}}"
    ))
    .await
    {
        Ok(ctx) => ctx,
        Err(e) if e.contains("TLS") => {
            eprintln!("skipped: the test server does not offer TLS ({e})");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    assert_eq!(
        texts(&collect(&ctx, "SELECT ssl FROM src").await, "ssl"),
        [Some("true".to_string())]
    );
    let ctx = register(&format!(
        "    postgres: {{url: \"{url}\", query: \"{ssl}\", tls: {{mode: disable}}}}"
    ))
    .await
    .unwrap();
    assert_eq!(
        texts(&collect(&ctx, "SELECT ssl FROM src").await, "ssl"),
        [Some("false".to_string())]
    );
    let err = register(&format!(
        "    postgres: {{url: \"{url}\", table: t, tls: {{mode: verify-full}}, retries: 0}}"
    ))
    .await
    .err()
    .unwrap();
    assert!(
        err.contains("TLS with 127.0.0.1:5432 failed") && err.contains("tls: {ca:"),
        "{err}"
    );
}

/// A `query:` with its own WHERE, ORDER BY, LIMIT and a trailing comment, read
/// with filters, sorting and counting around it: the query's own LIMIT applies
/// first (the source is its result), and nothing is pasted into its text.
#[tokio::test]
async fn query_sources_keep_their_own_where_order_limit_and_comments() {
    let Some(url) = url() else { return };
    let t = unique("qlimit");
    execute(
        &url,
        &format!(
            "CREATE TABLE {t} AS SELECT g AS id, CASE WHEN g % 2 = 0 THEN 'even where limit' ELSE 'odd' END AS kind
             FROM generate_series(1, 100) g;"
        ),
    )
    .await;
    let query = format!(
        "SELECT id, kind FROM {t} WHERE kind <> ' LIMIT ' ORDER BY id DESC LIMIT 10 -- the ten newest"
    );
    let ctx = register(&format!(
        "    postgres:\n      url: \"{url}\"\n      tls: {{mode: disable}}\n      query: \"{query}\""
    ))
    .await
    .unwrap();
    let sorted = collect(
        &ctx,
        "SELECT id FROM src WHERE kind = 'even where limit' ORDER BY id LIMIT 3",
    )
    .await;
    let counted = collect(&ctx, "SELECT count(*) AS n FROM src WHERE id > 95").await;
    execute(&url, &format!("DROP TABLE {t}")).await;
    // The ten newest are 91..=100; the even ones, ascending, first three.
    assert_eq!(
        texts(&sorted, "id"),
        [Some("92".into()), Some("94".into()), Some("96".into())]
    );
    assert_eq!(texts(&counted, "n"), [Some("5".into())]);
}
