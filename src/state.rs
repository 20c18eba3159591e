//! The embedded state store (SQLite, `.kpiforge/state.db` by default): what a
//! run must remember for the next one. Today: each incremental source's
//! watermark and the cache files that hold what it pulled. The scheduler keeps
//! its run history in the same file.
//!
//! A pull is recorded in one transaction (its cache file and its new
//! watermark together), after the run has published: a run that fails leaves
//! the watermark where it was, so the next run pulls the same rows again.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

#[derive(Debug, thiserror::Error)]
#[error("state store {}: {message}", path.display())]
pub struct StateError {
    pub path: PathBuf,
    pub message: String,
}

/// The greatest value of an incremental column seen so far, as text (the
/// column's type casts it back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watermark {
    pub column: String,
    pub value: String,
}

pub struct StateStore {
    path: PathBuf,
    conn: Connection,
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
";

impl StateStore {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<StateStore, StateError> {
        let fail = |message: String| StateError {
            path: path.to_path_buf(),
            message,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| fail(format!("cannot create its folder: {e}")))?;
        }
        let conn = Connection::open(path).map_err(|e| fail(e.to_string()))?;
        // Concurrent runs of different pipelines share the file.
        conn.busy_timeout(std::time::Duration::from_secs(30))
            .and_then(|_| conn.pragma_update(None, "journal_mode", "WAL"))
            .and_then(|_| conn.execute_batch(SCHEMA))
            .map_err(|e| fail(format!("{e}: delete the file to start afresh")))?;
        Ok(StateStore {
            path: path.to_path_buf(),
            conn,
        })
    }

    fn fail(&self, e: rusqlite::Error) -> StateError {
        StateError {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// The folder beside the store where incremental sources keep their cache.
    pub fn cache_dir(&self, pipeline: &str, source: &str) -> PathBuf {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        dir.join("cache").join(pipeline).join(source)
    }

    pub fn watermark(&self, pipeline: &str, source: &str) -> Result<Option<Watermark>, StateError> {
        self.conn
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
            .map_err(|e| self.fail(e))
    }

    /// The cache files of a source, oldest first (file names within its cache folder).
    pub fn cache_parts(&self, pipeline: &str, source: &str) -> Result<Vec<String>, StateError> {
        let mut statement = self
            .conn
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
        let tx = self.conn.transaction().map_err(|e| StateError {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
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
        result.map_err(|e| StateError {
            path: self.path.clone(),
            message: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pull_records_its_part_and_watermark_together() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/state.db");
        let mut store = StateStore::open(&path).unwrap();
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
        let store = StateStore::open(&path).unwrap();
        assert_eq!(store.watermark("p", "s").unwrap(), Some(w2));
        assert_eq!(
            store.cache_parts("p", "s").unwrap(),
            ["part-1.parquet", "part-2.parquet"]
        );
        assert_eq!(store.watermark("p", "other").unwrap(), None);
        assert!(store.cache_dir("p", "s").ends_with("nested/cache/p/s"));
    }
}
