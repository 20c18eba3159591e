//! The embedded state store (SQLite, `.kpiforge/state.db` by default): what a
//! run must remember for the next one. Each incremental source's watermark and
//! the cache files that hold what it pulled, and the run history (`kpiforge
//! runs`; the scheduler's catch-up and backfill's resume read it).
//!
//! `state:` may instead be a `postgres://` (or `postgresql://`) URL, for teams
//! that already run PostgreSQL: the same three tables, named `kpiforge_watermarks`,
//! `kpiforge_cache_parts` and `kpiforge_runs`, are created (IF NOT EXISTS) in the
//! connection's current schema (choose one with `?options=-csearch_path%3Dname`).
//! The connection is made without TLS. Incremental cache files stay in a local
//! folder (`.kpiforge/cache/` under the project root). The API stays sync: each
//! PostgreSQL store owns a small current-thread runtime, driven from a scoped
//! thread, so it works from inside the binary's runtime and from plain code.
//!
//! A pull is recorded in one transaction (its cache file and its new
//! watermark together), after the run has published: a run that fails leaves
//! the watermark where it was, so the next run pulls the same rows again.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

#[derive(Debug, thiserror::Error)]
#[error("state store {store}: {message}")]
pub struct StateError {
    /// The file, or the URL without its password.
    pub store: String,
    pub message: String,
}

/// Takes the lock file `.lock` in `dir` without waiting; when another run
/// holds it, says so, as `another run {busy} (it holds ...)`.
pub fn lock_dir(dir: &Path, busy: &str) -> Result<std::fs::File, String> {
    let path = dir.join(".lock");
    let file = std::fs::File::create(&path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(format!("another run {busy} (it holds {})", path.display()))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(format!("cannot lock {}: {e}", path.display())),
    }
}

/// Where a pipeline's state store lives (its `state:`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StateLocation {
    /// An SQLite file; incremental caches go in the folder beside it.
    Sqlite(PathBuf),
    /// A PostgreSQL database (`url` already interpolated); `cache` is the local
    /// folder under which incremental caches go (`cache/<pipeline>/<source>`).
    Postgres { url: String, cache: PathBuf },
}

impl StateLocation {
    /// The local folder for what a pipeline keeps on disk (incremental caches
    /// and aggregate states): beside the SQLite file, or a PostgreSQL store's `cache`.
    pub fn local_dir(&self) -> &Path {
        match self {
            StateLocation::Sqlite(path) => path.parent().unwrap_or(Path::new(".")),
            StateLocation::Postgres { cache, .. } => cache.as_path(),
        }
    }

    /// Reads `state:` (already interpolated): a `postgres://` or
    /// `postgresql://` URL, or a path relative to `root`.
    pub fn parse(text: &str, root: &Path) -> Result<StateLocation, String> {
        let trimmed = text.trim();
        if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
            return Ok(StateLocation::Postgres {
                url: trimmed.to_string(),
                cache: root.join(".kpiforge"),
            });
        }
        if let Some((scheme, _)) = trimmed.split_once("://") {
            return Err(format!(
                "`{}` is a {scheme}:// URL: the state store is a file path (SQLite) or a postgres:// URL",
                crate::config::strip_password(trimmed)
            ));
        }
        Ok(StateLocation::Sqlite(root.join(trimmed)))
    }

    /// The prefix of its table names: `kpiforge_` in PostgreSQL, none in SQLite.
    pub fn table_prefix(&self) -> &'static str {
        match self {
            StateLocation::Sqlite(_) => "",
            StateLocation::Postgres { .. } => "kpiforge_",
        }
    }

    /// Whether there may be a store there already (a file that exists, or a server).
    pub fn exists(&self) -> bool {
        match self {
            StateLocation::Sqlite(path) => path.is_file(),
            StateLocation::Postgres { .. } => true,
        }
    }
}

impl std::fmt::Display for StateLocation {
    /// The file, or the URL without its password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateLocation::Sqlite(path) => write!(f, "{}", path.display()),
            StateLocation::Postgres { url, .. } => {
                write!(f, "{}", crate::config::strip_password(url))
            }
        }
    }
}

/// The greatest value of an incremental column seen so far, as text (the
/// column's type casts it back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watermark {
    pub column: String,
    pub value: String,
}

pub struct StateStore {
    location: StateLocation,
    backend: Backend,
}

enum Backend {
    Sqlite(Connection),
    Postgres(pg::Store),
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS watermarks (
    pipeline   TEXT NOT NULL,
    source     TEXT NOT NULL,
    column     TEXT NOT NULL,
    value      TEXT NOT NULL,
    run_id     TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (pipeline, source)
);
CREATE TABLE IF NOT EXISTS cache_parts (
    pipeline TEXT NOT NULL,
    source   TEXT NOT NULL,
    file     TEXT NOT NULL,
    rows     INTEGER NOT NULL,
    run_id   TEXT NOT NULL,
    added_at TEXT NOT NULL,
    PRIMARY KEY (pipeline, source, file)
);
CREATE TABLE IF NOT EXISTS runs (
    run_id           TEXT PRIMARY KEY,
    pipeline         TEXT NOT NULL,
    as_of            TEXT NOT NULL,
    trigger          TEXT NOT NULL,
    started_at       TEXT NOT NULL,
    finished_at      TEXT,
    status           TEXT NOT NULL,
    rows_read        TEXT NOT NULL DEFAULT '{}',
    checks_failed    INTEGER NOT NULL DEFAULT 0,
    checks_warned    INTEGER NOT NULL DEFAULT 0,
    kpis_published   INTEGER NOT NULL DEFAULT 0,
    values_published INTEGER NOT NULL DEFAULT 0,
    error            TEXT
);
CREATE INDEX IF NOT EXISTS runs_by_pipeline ON runs (pipeline, started_at);
";

/// What started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    #[default]
    Manual,
    Schedule,
    CatchUp,
    Retry,
    Backfill,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Manual => "manual",
            Trigger::Schedule => "schedule",
            Trigger::CatchUp => "catch_up",
            Trigger::Retry => "retry",
            Trigger::Backfill => "backfill",
        }
    }
}

/// One run in the history. `status` is `running`, `succeeded`,
/// `quality_failed`, `failed` or `cancelled`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RunEntry {
    pub run_id: String,
    pub pipeline: String,
    pub as_of: String,
    pub trigger: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub status: String,
    /// Source name -> rows read (null when the source is read in place).
    pub rows_read: serde_json::Value,
    pub checks_failed: i64,
    pub checks_warned: i64,
    pub kpis_published: i64,
    pub values_published: i64,
    pub error: Option<String>,
}

/// Which runs `runs()` lists, newest first.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub pipeline: Option<String>,
    pub status: Option<String>,
    pub limit: Option<usize>,
}

/// SQLite's answer when another connection holds the lock it needs.
fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

impl StateStore {
    /// Opens (creating if needed) the store at `location`.
    pub fn open(location: &StateLocation) -> Result<StateStore, StateError> {
        let fail = |message: String| StateError {
            store: location.to_string(),
            message,
        };
        let backend = match location {
            StateLocation::Sqlite(path) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| fail(format!("cannot create its folder: {e}")))?;
                }
                let conn = Connection::open(path).map_err(|e| fail(e.to_string()))?;
                // Concurrent runs of different pipelines share the file.
                let wait = std::time::Duration::from_secs(30);
                conn.busy_timeout(wait)
                    .map_err(|e| fail(format!("{e}: delete the file to start afresh")))?;
                // A file that several connections create at once (a run's start
                // record and its sources' watermarks, on its first run) answers
                // `locked` to all but one of them at once, the busy timeout
                // notwithstanding: tried again until it is set up.
                let deadline = std::time::Instant::now() + wait;
                loop {
                    let setup = conn
                        .pragma_update(None, "journal_mode", "WAL")
                        .and_then(|_| conn.execute_batch(SCHEMA));
                    match setup {
                        Ok(()) => break,
                        Err(e) if is_busy(&e) && std::time::Instant::now() < deadline => {
                            std::thread::sleep(std::time::Duration::from_millis(5))
                        }
                        Err(e) => {
                            return Err(fail(format!("{e}: delete the file to start afresh")));
                        }
                    }
                }
                Backend::Sqlite(conn)
            }
            StateLocation::Postgres { url, .. } => {
                Backend::Postgres(pg::Store::open(url).map_err(fail)?)
            }
        };
        Ok(StateStore {
            location: location.clone(),
            backend,
        })
    }

    fn fail(&self, e: impl std::fmt::Display) -> StateError {
        StateError {
            store: self.location.to_string(),
            message: crate::config::env::redact(&e.to_string()),
        }
    }

    /// The folder where incremental sources keep their cache: beside the
    /// SQLite file, or in the local folder of a PostgreSQL store.
    pub fn cache_dir(&self, pipeline: &str, source: &str) -> PathBuf {
        self.location
            .local_dir()
            .join("cache")
            .join(pipeline)
            .join(source)
    }

    pub fn watermark(&self, pipeline: &str, source: &str) -> Result<Option<Watermark>, StateError> {
        match &self.backend {
            Backend::Sqlite(conn) => conn
                .query_row(
                    "SELECT column, value FROM watermarks WHERE pipeline = ?1 AND source = ?2",
                    params![pipeline, source],
                    |r| {
                        Ok(Watermark {
                            column: r.get(0)?,
                            value: r.get(1)?,
                        })
                    },
                )
                .optional()
                .map_err(|e| self.fail(e)),
            Backend::Postgres(store) => store.watermark(pipeline, source).map_err(|e| self.fail(e)),
        }
    }

    /// The cache files of a source, oldest first (file names within its cache folder).
    pub fn cache_parts(&self, pipeline: &str, source: &str) -> Result<Vec<String>, StateError> {
        let conn = match &self.backend {
            Backend::Sqlite(conn) => conn,
            Backend::Postgres(store) => {
                return store
                    .cache_parts(pipeline, source)
                    .map_err(|e| self.fail(e));
            }
        };
        let mut statement = conn
            .prepare(
                "SELECT file FROM cache_parts WHERE pipeline = ?1 AND source = ?2 ORDER BY added_at, file",
            )
            .map_err(|e| self.fail(e))?;
        statement
            .query_map(params![pipeline, source], |r| r.get(0))
            .and_then(|rows| rows.collect())
            .map_err(|e| self.fail(e))
    }

    /// Records one pull: its cache file (when it brought rows) and the new
    /// watermark, both or neither.
    pub fn record_pull(
        &mut self,
        pipeline: &str,
        source: &str,
        part: Option<(&str, u64)>,
        watermark: &Watermark,
        run_id: &str,
    ) -> Result<(), StateError> {
        let now = chrono::Utc::now().to_rfc3339();
        let shown = self.location.to_string();
        let fail = |message: String| StateError {
            store: shown.clone(),
            message: crate::config::env::redact(&message),
        };
        let conn = match &mut self.backend {
            Backend::Sqlite(conn) => conn,
            Backend::Postgres(store) => {
                return store
                    .record_pull(pipeline, source, part, watermark, run_id, &now)
                    .map_err(fail);
            }
        };
        let tx = conn.transaction().map_err(|e| fail(e.to_string()))?;
        let result = (|| {
            if let Some((file, rows)) = part {
                tx.execute(
                    "INSERT OR REPLACE INTO cache_parts VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![pipeline, source, file, rows as i64, run_id, now],
                )?;
            }
            tx.execute(
                "INSERT INTO watermarks VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (pipeline, source) DO UPDATE SET
                   column = excluded.column, value = excluded.value,
                   run_id = excluded.run_id, updated_at = excluded.updated_at",
                params![
                    pipeline,
                    source,
                    watermark.column,
                    watermark.value,
                    run_id,
                    now
                ],
            )?;
            tx.commit()
        })();
        result.map_err(|e| fail(e.to_string()))
    }
}

impl RunEntry {
    /// A run that has just started.
    pub fn started(
        pipeline: &crate::config::Pipeline,
        run_id: &str,
        as_of: chrono::NaiveDate,
        trigger: Trigger,
        started_at: chrono::DateTime<chrono::Utc>,
    ) -> RunEntry {
        RunEntry {
            run_id: run_id.to_string(),
            pipeline: pipeline.name.clone(),
            as_of: as_of.to_string(),
            trigger: trigger.as_str().to_string(),
            started_at: started_at.to_rfc3339(),
            finished_at: None,
            status: "running".to_string(),
            rows_read: serde_json::json!({}),
            checks_failed: 0,
            checks_warned: 0,
            kpis_published: 0,
            values_published: 0,
            error: None,
        }
    }

    /// A run that has ended, from its record in the `runs/` dataset.
    pub fn finished(record: &crate::publish::RunRecord, trigger: Trigger) -> RunEntry {
        let rows: serde_json::Map<String, serde_json::Value> = record
            .rows_read
            .iter()
            .map(|(source, rows)| (source.clone(), serde_json::json!(rows)))
            .collect();
        RunEntry {
            run_id: record.run_id.clone(),
            pipeline: record.pipeline.clone(),
            as_of: record.as_of.to_string(),
            trigger: trigger.as_str().to_string(),
            started_at: record.started_at.to_rfc3339(),
            finished_at: Some(record.finished_at.to_rfc3339()),
            status: record.status.as_str().to_string(),
            rows_read: serde_json::Value::Object(rows),
            checks_failed: record.checks_failed as i64,
            checks_warned: record.checks_warned as i64,
            kpis_published: record.kpis_published as i64,
            values_published: record.values_published as i64,
            error: record.error.clone(),
        }
    }
}

impl StateStore {
    fn sqlite(&self) -> Option<&Connection> {
        match &self.backend {
            Backend::Sqlite(conn) => Some(conn),
            Backend::Postgres(_) => None,
        }
    }

    fn pg(&self) -> &pg::Store {
        match &self.backend {
            Backend::Postgres(store) => store,
            Backend::Sqlite(_) => unreachable!("checked by sqlite()"),
        }
    }

    /// Records `entry` (a run starting, finishing, or both). A record of a run
    /// that ended replaces any earlier record of the same run id; a start
    /// (no `finished_at`) replaces none: written late, from the thread a run
    /// records its start on, it would make an ended run look running.
    pub fn record_run(&self, entry: &RunEntry) -> Result<(), StateError> {
        let Some(conn) = self.sqlite() else {
            return self.pg().record_run(entry).map_err(|e| self.fail(e));
        };
        let insert = match entry.finished_at {
            Some(_) => "INSERT OR REPLACE",
            None => "INSERT OR IGNORE",
        };
        conn.execute(
            &format!(
                "{insert} INTO runs VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
            ),
            params![
                entry.run_id,
                entry.pipeline,
                entry.as_of,
                entry.trigger,
                entry.started_at,
                entry.finished_at,
                entry.status,
                entry.rows_read.to_string(),
                entry.checks_failed,
                entry.checks_warned,
                entry.kpis_published,
                entry.values_published,
                entry.error,
            ],
        )
        .map(|_| ())
        .map_err(|e| self.fail(e))
    }

    /// Runs, newest first.
    pub fn runs(&self, filter: &RunFilter) -> Result<Vec<RunEntry>, StateError> {
        let Some(conn) = self.sqlite() else {
            return self.pg().runs(filter).map_err(|e| self.fail(e));
        };
        let mut statement = conn
            .prepare(
                "SELECT run_id, pipeline, as_of, trigger, started_at, finished_at, status, rows_read,
                        checks_failed, checks_warned, kpis_published, values_published, error
                 FROM runs
                 WHERE (?1 IS NULL OR pipeline = ?1) AND (?2 IS NULL OR status = ?2)
                 ORDER BY started_at DESC, run_id DESC LIMIT ?3",
            )
            .map_err(|e| self.fail(e))?;
        let limit = filter.limit.map_or(-1, |l| l as i64);
        statement
            .query_map(params![filter.pipeline, filter.status, limit], |r| {
                let rows: String = r.get(7)?;
                Ok(RunEntry {
                    run_id: r.get(0)?,
                    pipeline: r.get(1)?,
                    as_of: r.get(2)?,
                    trigger: r.get(3)?,
                    started_at: r.get(4)?,
                    finished_at: r.get(5)?,
                    status: r.get(6)?,
                    rows_read: serde_json::from_str(&rows).unwrap_or(serde_json::Value::Null),
                    checks_failed: r.get(8)?,
                    checks_warned: r.get(9)?,
                    kpis_published: r.get(10)?,
                    values_published: r.get(11)?,
                    error: r.get(12)?,
                })
            })
            .and_then(|rows| rows.collect())
            .map_err(|e| self.fail(e))
    }

    /// When the scheduler last fired `pipeline` (a scheduled or catch-up run's start).
    pub fn last_fire(&self, pipeline: &str) -> Result<Option<String>, StateError> {
        let Some(conn) = self.sqlite() else {
            return self.pg().last_fire(pipeline).map_err(|e| self.fail(e));
        };
        conn
            .query_row(
                "SELECT max(started_at) FROM runs WHERE pipeline = ?1 AND trigger IN ('schedule', 'catch_up')",
                params![pipeline],
                |r| r.get(0),
            )
            .map_err(|e| self.fail(e))
    }

    /// Marks runs still `running` in the history as `cancelled`: after a crash
    /// or a kill, no process is running them any more.
    pub fn abandon_running(&self, pipeline: &str, error: &str) -> Result<usize, StateError> {
        let now = chrono::Utc::now().to_rfc3339();
        let Some(conn) = self.sqlite() else {
            return self
                .pg()
                .abandon_running(pipeline, error, &now)
                .map_err(|e| self.fail(e));
        };
        conn
            .execute(
                "UPDATE runs SET status = 'cancelled', finished_at = ?2, error = ?3 WHERE pipeline = ?1 AND status = 'running'",
                params![pipeline, now, error],
            )
            .map_err(|e| self.fail(e))
    }
}

mod pg;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_store_opened_by_several_connections_at_once_opens_in_each() {
        // A run records its start while its sources read their watermarks:
        // on the first run both create the file at the same moment.
        for _ in 0..200 {
            let dir = tempfile::tempdir().unwrap();
            let location = StateLocation::Sqlite(dir.path().join("state.db"));
            let opened: Vec<_> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..3)
                    .map(|_| s.spawn(|| StateStore::open(&location).map(|_| ())))
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            for o in opened {
                o.unwrap();
            }
        }
    }

    #[test]
    fn a_pull_records_its_part_and_watermark_together() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/state.db");
        let mut store = StateStore::open(&StateLocation::Sqlite(path.clone())).unwrap();
        assert_eq!(store.watermark("p", "s").unwrap(), None);
        let w = Watermark {
            column: "updated_at".into(),
            value: "2026-11-27T10:00:00".into(),
        };
        store
            .record_pull("p", "s", Some(("part-1.parquet", 10)), &w, "r1")
            .unwrap();
        let w2 = Watermark {
            value: "2026-11-28T10:00:00".into(),
            ..w.clone()
        };
        store
            .record_pull("p", "s", Some(("part-2.parquet", 3)), &w2, "r2")
            .unwrap();
        drop(store);
        let store = StateStore::open(&StateLocation::Sqlite(path.clone())).unwrap();
        assert_eq!(store.watermark("p", "s").unwrap(), Some(w2));
        assert_eq!(
            store.cache_parts("p", "s").unwrap(),
            ["part-1.parquet", "part-2.parquet"]
        );
        assert_eq!(store.watermark("p", "other").unwrap(), None);
        assert!(store.cache_dir("p", "s").ends_with("nested/cache/p/s"));
    }

    #[test]
    fn runs_are_listed_newest_first_and_filtered() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(&StateLocation::Sqlite(dir.path().join("state.db"))).unwrap();
        let entry = |id: &str, pipeline: &str, status: &str, trigger: Trigger, at: &str| RunEntry {
            run_id: id.into(),
            pipeline: pipeline.into(),
            as_of: "2026-11-27".into(),
            trigger: trigger.as_str().into(),
            started_at: at.into(),
            finished_at: None,
            status: status.into(),
            rows_read: serde_json::json!({"orders": 3}),
            checks_failed: 0,
            checks_warned: 0,
            kpis_published: 0,
            values_published: 0,
            error: None,
        };
        store
            .record_run(&entry(
                "r1",
                "a",
                "running",
                Trigger::Schedule,
                "2026-11-27T01:00:00Z",
            ))
            .unwrap();
        store
            .record_run(&entry(
                "r2",
                "a",
                "failed",
                Trigger::Manual,
                "2026-11-27T02:00:00Z",
            ))
            .unwrap();
        store
            .record_run(&entry(
                "r3",
                "b",
                "succeeded",
                Trigger::CatchUp,
                "2026-11-27T03:00:00Z",
            ))
            .unwrap();
        let ids = |f: RunFilter| {
            store
                .runs(&f)
                .unwrap()
                .into_iter()
                .map(|r| r.run_id)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(RunFilter::default()), ["r3", "r2", "r1"]);
        assert_eq!(
            ids(RunFilter {
                pipeline: Some("a".into()),
                ..Default::default()
            }),
            ["r2", "r1"]
        );
        assert_eq!(
            ids(RunFilter {
                status: Some("failed".into()),
                ..Default::default()
            }),
            ["r2"]
        );
        assert_eq!(
            ids(RunFilter {
                limit: Some(1),
                ..Default::default()
            }),
            ["r3"]
        );
        assert_eq!(
            store.last_fire("a").unwrap().as_deref(),
            Some("2026-11-27T01:00:00Z")
        );
        assert_eq!(store.last_fire("c").unwrap(), None);
        assert_eq!(store.abandon_running("a", "killed").unwrap(), 1);
        assert_eq!(
            ids(RunFilter {
                status: Some("cancelled".into()),
                ..Default::default()
            }),
            ["r1"]
        );
        assert_eq!(
            store.runs(&RunFilter::default()).unwrap()[0].rows_read["orders"],
            3
        );
        a_late_start_keeps_the_end(&store);
    }

    /// A run's end, then its start recorded late (a run records its start on a
    /// thread of its own): the end stays.
    fn a_late_start_keeps_the_end(store: &StateStore) {
        let ended = RunEntry {
            run_id: "late".into(),
            pipeline: "late".into(),
            as_of: "2026-11-27".into(),
            trigger: Trigger::Manual.as_str().into(),
            started_at: "2026-11-27T04:00:00Z".into(),
            finished_at: Some("2026-11-27T04:00:02Z".into()),
            status: "succeeded".into(),
            rows_read: serde_json::json!({"orders": 3}),
            checks_failed: 0,
            checks_warned: 0,
            kpis_published: 1,
            values_published: 2,
            error: None,
        };
        store.record_run(&ended).unwrap();
        let start = RunEntry {
            finished_at: None,
            status: "running".into(),
            kpis_published: 0,
            values_published: 0,
            ..ended.clone()
        };
        store.record_run(&start).unwrap();
        let late = RunFilter {
            pipeline: Some("late".into()),
            ..Default::default()
        };
        assert_eq!(store.runs(&late).unwrap(), [ended]);
    }

    /// Runs SQL on the test server (`KPIFORGE_TEST_POSTGRES_URL`).
    fn pg_execute(url: &str, sql: &str) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                runtime.block_on(async {
                    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                        .await
                        .unwrap();
                    tokio::spawn(connection);
                    client.batch_execute(sql).await.unwrap();
                })
            })
            .join()
            .unwrap()
        });
        runtime.shutdown_background();
    }

    /// The same semantics against PostgreSQL, called from inside a
    /// current-thread runtime (the store must not block it).
    #[tokio::test]
    async fn postgres_store_keeps_pulls_and_runs() {
        let Ok(url) = std::env::var("KPIFORGE_TEST_POSTGRES_URL") else {
            eprintln!("skipped: KPIFORGE_TEST_POSTGRES_URL is not set");
            return;
        };
        let schema = format!("kpf_state_unit_{}", std::process::id());
        pg_execute(
            &url,
            &format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema};"),
        );
        let sep = if url.contains('?') { '&' } else { '?' };
        let location = StateLocation::Postgres {
            url: format!("{url}{sep}options=-csearch_path%3D{schema}"),
            cache: PathBuf::from("/tmp/kpf-cache"),
        };
        let mut store = StateStore::open(&location).unwrap();
        assert_eq!(store.watermark("p", "s").unwrap(), None);
        let w = Watermark {
            column: "updated_at".into(),
            value: "2026-11-27T10:00:00".into(),
        };
        store
            .record_pull("p", "s", Some(("part-1.parquet", 10)), &w, "r1")
            .unwrap();
        let w2 = Watermark {
            value: "2026-11-28".into(),
            ..w.clone()
        };
        store.record_pull("p", "s", None, &w2, "r2").unwrap();
        drop(store);
        let store = StateStore::open(&location).unwrap();
        assert_eq!(store.watermark("p", "s").unwrap(), Some(w2));
        assert_eq!(store.cache_parts("p", "s").unwrap(), ["part-1.parquet"]);
        assert_eq!(
            store.cache_dir("p", "s"),
            PathBuf::from("/tmp/kpf-cache/cache/p/s")
        );
        let entry = |id: &str, status: &str, trigger: Trigger, at: &str| RunEntry {
            run_id: id.into(),
            pipeline: "p".into(),
            as_of: "2026-11-27".into(),
            trigger: trigger.as_str().into(),
            started_at: at.into(),
            finished_at: None,
            status: status.into(),
            rows_read: serde_json::json!({"orders": 3}),
            checks_failed: 0,
            checks_warned: 1,
            kpis_published: 2,
            values_published: 4,
            error: None,
        };
        store
            .record_run(&entry(
                "r1",
                "running",
                Trigger::Schedule,
                "2026-11-27T01:00:00Z",
            ))
            .unwrap();
        store
            .record_run(&entry(
                "r2",
                "succeeded",
                Trigger::Manual,
                "2026-11-27T02:00:00Z",
            ))
            .unwrap();
        let failed = RunEntry {
            finished_at: Some("2026-11-27T02:00:05Z".into()),
            ..entry("r2", "failed", Trigger::Manual, "2026-11-27T02:00:00Z")
        };
        store.record_run(&failed).unwrap();
        let runs = store.runs(&RunFilter::default()).unwrap();
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0], failed);
        a_late_start_keeps_the_end(&store);
        let limited = store
            .runs(&RunFilter {
                status: Some("running".into()),
                limit: Some(1),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(limited.len(), 1);
        assert_eq!(limited[0].run_id, "r1");
        assert_eq!(
            store.last_fire("p").unwrap().as_deref(),
            Some("2026-11-27T01:00:00Z")
        );
        assert_eq!(store.last_fire("q").unwrap(), None);
        assert_eq!(store.abandon_running("p", "killed").unwrap(), 1);
        drop(store);
        pg_execute(&url, &format!("DROP SCHEMA {schema} CASCADE;"));
    }
}
