//! The PostgreSQL state store: the SQLite tables with a `kpiforge_` prefix, in
//! the connection's current schema. Sync calls over tokio-postgres: the store
//! owns a current-thread runtime and drives it from a scoped thread, so a call
//! never blocks inside the caller's runtime (the binary's, or a test's).

use std::future::Future;

use tokio_postgres::{Client, NoTls};

use super::{RunEntry, RunFilter, Watermark};

/// Created once per database; the advisory lock keeps two processes that open
/// the store at once from racing on CREATE TABLE.
const SCHEMA: &str = r#"
BEGIN;
SELECT pg_advisory_xact_lock(7345012931);
CREATE TABLE IF NOT EXISTS kpiforge_watermarks (
    pipeline   TEXT NOT NULL,
    source     TEXT NOT NULL,
    "column"   TEXT NOT NULL,
    value      TEXT NOT NULL,
    run_id     TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (pipeline, source)
);
CREATE TABLE IF NOT EXISTS kpiforge_cache_parts (
    pipeline TEXT NOT NULL,
    source   TEXT NOT NULL,
    file     TEXT NOT NULL,
    rows     BIGINT NOT NULL,
    run_id   TEXT NOT NULL,
    added_at TEXT NOT NULL,
    PRIMARY KEY (pipeline, source, file)
);
CREATE TABLE IF NOT EXISTS kpiforge_runs (
    run_id           TEXT PRIMARY KEY,
    pipeline         TEXT NOT NULL,
    as_of            TEXT NOT NULL,
    trigger          TEXT NOT NULL,
    started_at       TEXT NOT NULL,
    finished_at      TEXT,
    status           TEXT NOT NULL,
    rows_read        TEXT NOT NULL DEFAULT '{}',
    checks_failed    BIGINT NOT NULL DEFAULT 0,
    checks_warned    BIGINT NOT NULL DEFAULT 0,
    kpis_published   BIGINT NOT NULL DEFAULT 0,
    values_published BIGINT NOT NULL DEFAULT 0,
    error            TEXT
);
CREATE INDEX IF NOT EXISTS kpiforge_runs_by_pipeline ON kpiforge_runs (pipeline, started_at);
COMMIT;
"#;

pub(super) struct Store {
    runtime: Option<tokio::runtime::Runtime>,
    client: Client,
}

impl Drop for Store {
    fn drop(&mut self) {
        // Dropping a runtime inside another one panics; this does not.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Runs `future` to completion on `runtime`, from a thread of its own.
fn block<T: Send>(
    runtime: &tokio::runtime::Runtime,
    future: impl Future<Output = Result<T, tokio_postgres::Error>> + Send,
) -> Result<T, String> {
    std::thread::scope(|s| {
        s.spawn(|| runtime.block_on(future))
            .join()
            .map_err(|_| "the PostgreSQL call panicked".to_string())?
            .map_err(|e| message(&e))
    })
}

fn message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

impl Store {
    pub(super) fn open(url: &str) -> Result<Store, String> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
            format!("not a PostgreSQL URL ({e}): write postgres://user:password@host:5432/database")
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(std::time::Duration::from_secs(10));
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start its runtime: {e}"))?;
        let client = std::thread::scope(|s| {
            s.spawn(|| {
                runtime.block_on(async {
                    let (client, connection) = config
                        .connect(NoTls)
                        .await
                        .map_err(|e| format!("cannot connect (without TLS): {}", message(&e)))?;
                    tokio::spawn(async move {
                        if let Err(e) = connection.await {
                            tracing::warn!(error = %e, "the state store's PostgreSQL connection failed");
                        }
                    });
                    client
                        .batch_execute(SCHEMA)
                        .await
                        .map_err(|e| format!("cannot create its tables: {}", message(&e)))?;
                    Ok::<_, String>(client)
                })
            })
            .join()
            .map_err(|_| "the PostgreSQL connection panicked".to_string())?
        });
        let client = match client {
            Ok(client) => client,
            Err(message) => {
                // Dropping a runtime inside another one panics; this does not.
                runtime.shutdown_background();
                return Err(message);
            }
        };
        Ok(Store {
            runtime: Some(runtime),
            client,
        })
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().expect("the runtime lives until drop")
    }

    pub(super) fn watermark(
        &self,
        pipeline: &str,
        source: &str,
    ) -> Result<Option<Watermark>, String> {
        let c = &self.client;
        let row = block(self.rt(), async move {
            c.query_opt(
                r#"SELECT "column", value FROM kpiforge_watermarks WHERE pipeline = $1 AND source = $2"#,
                &[&pipeline, &source],
            )
            .await
        })?;
        Ok(row.map(|r| Watermark {
            column: r.get(0),
            value: r.get(1),
        }))
    }

    pub(super) fn cache_parts(&self, pipeline: &str, source: &str) -> Result<Vec<String>, String> {
        let c = &self.client;
        let rows = block(self.rt(), async move {
            c.query(
                "SELECT file FROM kpiforge_cache_parts WHERE pipeline = $1 AND source = $2 ORDER BY added_at, file",
                &[&pipeline, &source],
            )
            .await
        })?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    pub(super) fn record_pull(
        &mut self,
        pipeline: &str,
        source: &str,
        part: Option<(&str, u64)>,
        watermark: &Watermark,
        run_id: &str,
        now: &str,
    ) -> Result<(), String> {
        let Store { runtime, client } = self;
        let runtime = runtime.as_ref().expect("the runtime lives until drop");
        block(runtime, async move {
            let tx = client.transaction().await?;
            if let Some((file, rows)) = part {
                tx.execute(
                    "INSERT INTO kpiforge_cache_parts VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (pipeline, source, file) DO UPDATE SET
                       rows = excluded.rows, run_id = excluded.run_id, added_at = excluded.added_at",
                    &[&pipeline, &source, &file, &(rows as i64), &run_id, &now],
                )
                .await?;
            }
            tx.execute(
                r#"INSERT INTO kpiforge_watermarks VALUES ($1, $2, $3, $4, $5, $6)
                   ON CONFLICT (pipeline, source) DO UPDATE SET
                     "column" = excluded."column", value = excluded.value,
                     run_id = excluded.run_id, updated_at = excluded.updated_at"#,
                &[
                    &pipeline,
                    &source,
                    &watermark.column,
                    &watermark.value,
                    &run_id,
                    &now,
                ],
            )
            .await?;
            tx.commit().await
        })
    }

    pub(super) fn record_run(&self, entry: &RunEntry) -> Result<(), String> {
        let c = &self.client;
        let rows_read = entry.rows_read.to_string();
        let rows_read = &rows_read;
        block(self.rt(), async move {
            c.execute(
                "INSERT INTO kpiforge_runs VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
                 ON CONFLICT (run_id) DO UPDATE SET
                   pipeline = excluded.pipeline, as_of = excluded.as_of, trigger = excluded.trigger,
                   started_at = excluded.started_at, finished_at = excluded.finished_at,
                   status = excluded.status, rows_read = excluded.rows_read,
                   checks_failed = excluded.checks_failed, checks_warned = excluded.checks_warned,
                   kpis_published = excluded.kpis_published,
                   values_published = excluded.values_published, error = excluded.error
                 WHERE excluded.finished_at IS NOT NULL",
                &[
                    &entry.run_id,
                    &entry.pipeline,
                    &entry.as_of,
                    &entry.trigger,
                    &entry.started_at,
                    &entry.finished_at,
                    &entry.status,
                    rows_read,
                    &entry.checks_failed,
                    &entry.checks_warned,
                    &entry.kpis_published,
                    &entry.values_published,
                    &entry.error,
                ],
            )
            .await
        })
        .map(|_| ())
    }

    pub(super) fn runs(&self, filter: &RunFilter) -> Result<Vec<RunEntry>, String> {
        let c = &self.client;
        let limit = filter.limit.map(|l| l as i64);
        let limit = &limit;
        let rows = block(self.rt(), async move {
            c.query(
                "SELECT run_id, pipeline, as_of, trigger, started_at, finished_at, status, rows_read,
                        checks_failed, checks_warned, kpis_published, values_published, error
                 FROM kpiforge_runs
                 WHERE ($1::text IS NULL OR pipeline = $1) AND ($2::text IS NULL OR status = $2)
                 ORDER BY started_at DESC, run_id DESC LIMIT $3",
                &[&filter.pipeline, &filter.status, limit],
            )
            .await
        })?;
        Ok(rows
            .iter()
            .map(|r| {
                let rows: String = r.get(7);
                RunEntry {
                    run_id: r.get(0),
                    pipeline: r.get(1),
                    as_of: r.get(2),
                    trigger: r.get(3),
                    started_at: r.get(4),
                    finished_at: r.get(5),
                    status: r.get(6),
                    rows_read: serde_json::from_str(&rows).unwrap_or(serde_json::Value::Null),
                    checks_failed: r.get(8),
                    checks_warned: r.get(9),
                    kpis_published: r.get(10),
                    values_published: r.get(11),
                    error: r.get(12),
                }
            })
            .collect())
    }

    pub(super) fn last_fire(&self, pipeline: &str) -> Result<Option<String>, String> {
        let c = &self.client;
        let row = block(self.rt(), async move {
            c.query_one(
                "SELECT max(started_at) FROM kpiforge_runs WHERE pipeline = $1 AND trigger IN ('schedule', 'catch_up')",
                &[&pipeline],
            )
            .await
        })?;
        Ok(row.get(0))
    }

    pub(super) fn abandon_running(
        &self,
        pipeline: &str,
        error: &str,
        now: &str,
    ) -> Result<usize, String> {
        let c = &self.client;
        block(self.rt(), async move {
            c.execute(
                "UPDATE kpiforge_runs SET status = 'cancelled', finished_at = $2, error = $3 WHERE pipeline = $1 AND status = 'running'",
                &[&pipeline, &now, &error],
            )
            .await
        })
        .map(|n| n as usize)
    }
}
