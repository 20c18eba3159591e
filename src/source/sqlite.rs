//! SQLite sources, read with `rusqlite` directly, types from the declared column
//! types (see docs/sources.md).
//!
//! The file is opened read-only, once to learn the columns and once per scan.
//! A table's columns come from `PRAGMA table_info`; a query's from the same
//! pragma over a temporary view of it (the declared types of the columns it
//! selects). A column without a usable declared type (an expression, a view
//! column over one, a table column declared without a type or with a name
//! SQLite does not know, like `JSON`) takes its type from its first
//! [`INFER_ROWS`] values: integers -> Int64, with reals -> Float64, with text
//! (or mixed with blobs) -> Utf8, only blobs -> Binary, only NULLs -> Utf8.
//! rusqlite is synchronous: every read runs on a blocking thread, interrupted
//! once it has spent `query_timeout` reading (not counting the time it waits
//! for the query consuming its rows).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use datafusion::catalog::TableProvider;
use datafusion::execution::SendableRecordBatchStream;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, ErrorCode, OpenFlags};
use tokio::sync::watch;

use super::SourceError;
use super::sql::{
    BatchSender, Batcher, Cell, Dialect, Reader, SqlColumn, SqlTable, external, human,
    join_error_text, log_fetched, show, spawn_reader, split_table, table_not_found, trim_query,
};
use crate::config::{DatabaseSource, Relation};

/// Values looked at to type a column without a declared type.
pub const INFER_ROWS: usize = 1000;

const D: Dialect = Dialect::Sqlite;

/// A table provider over the source's table or query.
pub async fn provider(
    name: &str,
    cfg: &DatabaseSource,
) -> Result<Arc<dyn TableProvider>, SourceError> {
    if let Relation::Table(table) = &cfg.relation {
        split_table(table).map_err(|message| SourceError::Config {
            name: name.to_string(),
            message,
        })?;
    }
    let file = Arc::new(File {
        source: name.to_string(),
        path: PathBuf::from(&cfg.url),
        busy_timeout: cfg.connect_timeout,
        query_timeout: cfg.query_timeout,
    });
    let relation = cfg.relation.clone();
    let reading = file.clone();
    let described = tokio::task::spawn_blocking(move || reading.describe(&relation))
        .await
        .map_err(|e| file.error(format!("reading the columns failed: {e}")))?
        .map_err(|m| file.error(m))?;
    let origins = described
        .iter()
        .map(|(c, declared)| (c.name.clone(), declared.clone()))
        .collect();
    let columns = described.into_iter().map(|(c, _)| c).collect();
    let table = SqlTable::new(
        name,
        D,
        &cfg.relation,
        columns,
        Arc::new(SqliteReader { file, origins }),
    )?;
    Ok(Arc::new(table))
}

/// The database file of one source.
#[derive(Debug)]
struct File {
    source: String,
    path: PathBuf,
    busy_timeout: Duration,
    query_timeout: Duration,
}

/// How a column got its type: its declared type, or `None` when inferred.
type Origin = Option<String>;

impl File {
    fn error(&self, message: String) -> SourceError {
        SourceError::Read {
            name: self.source.clone(),
            path: self.path.clone(),
            message,
        }
    }

    fn open(&self) -> Result<Connection, String> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| self.explain(&e))?;
        conn.busy_timeout(self.busy_timeout)
            .map_err(|e| self.explain(&e))?;
        Ok(conn)
    }

    /// An SQLite error, with what to check.
    fn explain(&self, e: &rusqlite::Error) -> String {
        match e.sqlite_error_code() {
            Some(ErrorCode::NotADatabase) => {
                "the file is not an SQLite database: check `path:`".to_string()
            }
            Some(ErrorCode::CannotOpen) => {
                format!(
                    "cannot open the database ({e}): check that the file exists and is readable"
                )
            }
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => format!(
                "the database is locked by a writer ({e}): retry later, or raise `connect_timeout` to wait longer"
            ),
            Some(ErrorCode::OperationInterrupted) => format!(
                "it did not finish within {}: raise `query_timeout`, or have it read fewer rows",
                human(self.query_timeout)
            ),
            _ => e.to_string(),
        }
    }

    /// The columns of `relation`, each with its declared type (`None`: inferred).
    fn describe(&self, relation: &Relation) -> Result<Vec<(SqlColumn, Origin)>, String> {
        let conn = self.open()?;
        // Typing a query's expressions runs it (for INFER_ROWS rows): bounded too.
        let _watchdog = Watchdog::start(&conn, self.query_timeout);
        let declared = match relation {
            Relation::Table(table) => {
                let (schema_name, name) = split_table(table)?;
                let schema = match &schema_name {
                    Some(s) => format!("{}.", D.ident(s)),
                    None => String::new(),
                };
                let columns = table_info(
                    &conn,
                    &format!("PRAGMA {schema}table_info({})", D.ident(&name)),
                )
                .map_err(|e| self.explain(&e))?;
                if columns.is_empty() {
                    let tables: Vec<String> = conn
                        .prepare(&format!(
                            "SELECT name FROM {schema}sqlite_master WHERE type IN ('table', 'view') \
                             AND name NOT LIKE 'sqlite_%' ORDER BY name"
                        ))
                        .and_then(|mut s| {
                            s.query_map([], |r| r.get::<_, String>(0))?
                                .collect::<Result<_, _>>()
                        })
                        .map_err(|e| self.explain(&e))?;
                    let place = match &schema_name {
                        Some(s) => format!(" in schema `{s}`"),
                        None => String::new(),
                    };
                    return Err(table_not_found(&name, &place, Some(&tables)));
                }
                columns
            }
            Relation::Query(sql) => {
                // Does it run? (The message is SQLite's, e.g. "no such column: x".)
                let names: Vec<String> = conn
                    .prepare(&format!("SELECT * FROM {}", D.from(relation)))
                    .map_err(|e| format!("the query does not run: {}", self.explain(&e)))?
                    .column_names()
                    .into_iter()
                    .map(str::to_string)
                    .collect();
                conn.execute_batch(&format!(
                    "CREATE TEMP VIEW kpiforge_probe AS {}",
                    trim_query(sql)
                ))
                .map_err(|e| format!("the query does not run: {}", self.explain(&e)))?;
                let info = table_info(&conn, "PRAGMA temp.table_info(kpiforge_probe)")
                    .map_err(|e| self.explain(&e))?;
                // The names as the derived table gives them (a repeated `id`
                // becomes `id:1` there), with the view's declared types.
                names
                    .into_iter()
                    .zip(info)
                    .map(|(name, (_, declared))| (name, declared))
                    .collect()
            }
        };
        let mut typed: Vec<Option<(DataType, bool)>> =
            declared.iter().map(|(_, t)| declared_type(t)).collect();
        let unknown: Vec<usize> = (0..typed.len()).filter(|i| typed[*i].is_none()).collect();
        if !unknown.is_empty() {
            let names: Vec<String> = unknown.iter().map(|&i| D.ident(&declared[i].0)).collect();
            let sql = format!(
                "SELECT {} FROM {} LIMIT {INFER_ROWS}",
                names.join(", "),
                D.from(relation)
            );
            let inferred = infer(&conn, &sql, unknown.len()).map_err(|e| self.explain(&e))?;
            for (i, t) in unknown.iter().zip(inferred) {
                typed[*i] = Some((t, false));
            }
        }
        Ok(declared
            .into_iter()
            .zip(typed)
            .map(|((name, decl), t)| {
                let (data_type, pushdown) = t.unwrap_or((DataType::Utf8, false));
                let origin =
                    (!decl.trim().is_empty() && declared_type(&decl).is_some()).then_some(decl);
                (
                    SqlColumn {
                        name,
                        data_type,
                        pushdown,
                    },
                    origin,
                )
            })
            .collect())
    }
}

/// Interrupts what runs on a connection once `limit` has passed, unless dropped first.
struct Watchdog(Option<std::sync::mpsc::Sender<()>>);

impl Watchdog {
    fn start(conn: &Connection, limit: Duration) -> Watchdog {
        let handle = conn.get_interrupt_handle();
        let (done, wait) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(limit) {
                handle.interrupt();
            }
        });
        Watchdog(Some(done))
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // Disconnects the channel: the thread ends without interrupting.
        self.0.take();
    }
}

/// (name, declared type) of each column, from a `table_info` pragma.
fn table_info(conn: &Connection, pragma: &str) -> rusqlite::Result<Vec<(String, String)>> {
    let mut s = conn.prepare(pragma)?;
    s.query_map([], |r| {
        Ok((
            r.get::<_, String>(1)?,
            r.get::<_, Option<String>>(2)?.unwrap_or_default(),
        ))
    })?
    .collect()
}

/// The Arrow type of a declared SQLite type and whether comparisons with it may
/// run in SQLite; `None` to infer it from the values.
///
/// Refinements first (BOOLEAN, DATE, DATETIME/TIMESTAMP, DECIMAL/NUMERIC(p,s)),
/// then SQLite's affinity rules: INT -> Int64; CHAR, CLOB, TEXT -> Utf8; BLOB
/// -> Binary; REAL, FLOA, DOUB -> Float64; bare NUMERIC/DECIMAL -> Float64.
pub fn declared_type(declared: &str) -> Option<(DataType, bool)> {
    let upper = declared.trim().to_ascii_uppercase();
    if upper.is_empty() {
        return None;
    }
    let (base, args) = match upper.split_once('(') {
        Some((base, rest)) => (base.trim(), Some(rest.trim_end_matches(')').trim())),
        None => (upper.as_str(), None),
    };
    match base {
        "BOOLEAN" | "BOOL" => return Some((DataType::Boolean, true)),
        // Compared as ISO text: exact, as only 'YYYY-MM-DD' is read.
        "DATE" => return Some((DataType::Date32, true)),
        // Stored as text in several shapes or as numbers: filtered by DataFusion.
        b if b.starts_with("DATETIME") || b.starts_with("TIMESTAMP") => {
            return Some((DataType::Timestamp(TimeUnit::Microsecond, None), false));
        }
        "DECIMAL" | "NUMERIC" => {
            let Some(args) = args else {
                return Some((DataType::Float64, true));
            };
            let mut nums = args.split(',').map(|n| n.trim().parse::<u8>());
            let p = nums.next()?.ok()?;
            let s = match nums.next() {
                Some(s) => s.ok()?,
                None => 0,
            };
            // Stored as doubles, compared as doubles: filtered by DataFusion.
            return match p {
                1..=38 if s <= p => Some((DataType::Decimal128(p, s as i8), false)),
                39..=76 if s <= p => Some((DataType::Decimal256(p, s as i8), false)),
                _ => Some((DataType::Float64, true)),
            };
        }
        _ => {}
    }
    if upper.contains("INT") {
        Some((DataType::Int64, true))
    } else if upper.contains("CHAR") || upper.contains("CLOB") || upper.contains("TEXT") {
        Some((DataType::Utf8, true))
    } else if upper.contains("BLOB") {
        Some((DataType::Binary, false))
    } else if upper.contains("REAL") || upper.contains("FLOA") || upper.contains("DOUB") {
        Some((DataType::Float64, true))
    } else {
        None
    }
}

/// Types of the `n` columns of `sql` from their values (see the module doc).
fn infer(conn: &Connection, sql: &str, n: usize) -> rusqlite::Result<Vec<DataType>> {
    #[derive(Default, Clone, Copy)]
    struct Seen {
        int: bool,
        real: bool,
        text: bool,
        blob: bool,
    }
    let mut seen = vec![Seen::default(); n];
    let mut s = conn.prepare(sql)?;
    let mut rows = s.query([])?;
    while let Some(row) = rows.next()? {
        for (i, seen) in seen.iter_mut().enumerate() {
            match row.get_ref(i)? {
                ValueRef::Null => {}
                ValueRef::Integer(_) => seen.int = true,
                ValueRef::Real(_) => seen.real = true,
                ValueRef::Text(_) => seen.text = true,
                ValueRef::Blob(_) => seen.blob = true,
            }
        }
    }
    Ok(seen
        .into_iter()
        .map(|s| match s {
            Seen {
                blob: true,
                int: false,
                real: false,
                text: false,
            } => DataType::Binary,
            Seen { text: true, .. } | Seen { blob: true, .. } => DataType::Utf8,
            Seen { real: true, .. } => DataType::Float64,
            Seen { int: true, .. } => DataType::Int64,
            _ => DataType::Utf8,
        })
        .collect())
}

/// Scans of one SQLite source.
#[derive(Debug)]
struct SqliteReader {
    file: Arc<File>,
    origins: HashMap<String, Origin>,
}

impl Reader for SqliteReader {
    fn read(&self, sql: String, schema: SchemaRef) -> SendableRecordBatchStream {
        let file = self.file.clone();
        let failed = self.file.clone();
        let origins: Vec<Origin> = schema
            .fields()
            .iter()
            .map(|f| self.origins.get(f.name()).cloned().flatten())
            .collect();
        let stream_schema = schema.clone();
        let read = move |tx: BatchSender| async move {
            let started = Instant::now();
            let (handle_tx, handle_rx) = tokio::sync::oneshot::channel();
            let (clock, watched) = watch::channel(Clock::start());
            let sender = tx.clone();
            let reading = file.clone();
            let mut job = tokio::task::spawn_blocking(move || {
                let conn = reading.open()?;
                let _ = handle_tx.send(conn.get_interrupt_handle());
                read_rows(&reading, &conn, &sql, &schema, &origins, &sender, &clock)
            });
            let interrupt = handle_rx.await.ok();
            let deadline = budget_spent(watched, file.query_timeout);
            tokio::pin!(deadline);
            let (mut timed_out, mut cancelled) = (false, false);
            let outcome = loop {
                tokio::select! {
                    done = &mut job => break done,
                    () = &mut deadline, if !timed_out => {
                        timed_out = true;
                        if let Some(h) = &interrupt { h.interrupt(); }
                    }
                    _ = tx.closed(), if !cancelled => {
                        cancelled = true;
                        if let Some(h) = &interrupt { h.interrupt(); }
                    }
                }
            };
            let message = match outcome {
                Ok(Ok(rows)) => {
                    log_fetched(&file.source, rows, started);
                    return Ok(());
                }
                // Nobody reads the rows any more.
                _ if cancelled => return Ok(()),
                _ if timed_out => format!(
                    "the query did not finish within {}: raise `query_timeout`, or have it read fewer rows",
                    human(file.query_timeout)
                ),
                Ok(Err(message)) => message,
                Err(e) => format!("the read stopped: {}", join_error_text(e)),
            };
            Err(external(file.error(message)))
        };
        spawn_reader(stream_schema, read, move |why| {
            external(failed.error(format!("the read stopped: {why}")))
        })
    }
}

/// The time a scan has spent reading: `query_timeout` bounds it, not the time
/// the scan waits for the query consuming its rows (a hash join's other side,
/// a slow writer), which would otherwise fail big reads at random. The blocking
/// reader stops the clock while it waits to hand over a batch.
#[derive(Debug, Clone, Copy)]
enum Clock {
    Running { since: Instant, spent: Duration },
    Stopped { spent: Duration },
}

impl Clock {
    fn start() -> Clock {
        Clock::Running {
            since: Instant::now(),
            spent: Duration::ZERO,
        }
    }

    fn spent(self) -> Duration {
        match self {
            Clock::Running { since, spent } => spent + since.elapsed(),
            Clock::Stopped { spent } => spent,
        }
    }

    fn stop(&mut self) {
        *self = Clock::Stopped {
            spent: self.spent(),
        };
    }

    fn resume(&mut self) {
        if let Clock::Stopped { spent } = *self {
            *self = Clock::Running {
                since: Instant::now(),
                spent,
            };
        }
    }
}

/// Resolves once the clock has run for `limit`; never when the reader ends first.
async fn budget_spent(mut clock: watch::Receiver<Clock>, limit: Duration) {
    loop {
        let now = *clock.borrow_and_update();
        let changed = match now {
            Clock::Stopped { .. } => clock.changed().await,
            Clock::Running { .. } => {
                let left = limit.saturating_sub(now.spent());
                if left.is_zero() {
                    return;
                }
                tokio::select! {
                    () = tokio::time::sleep(left) => continue,
                    changed = clock.changed() => changed,
                }
            }
        };
        if changed.is_err() {
            // The reader is done (its end is awaited elsewhere).
            std::future::pending::<()>().await;
        }
    }
}

/// Hands a batch over, the clock stopped while the consumer is not ready;
/// false when nobody reads the rows any more.
fn hand_over(tx: &BatchSender, batch: RecordBatch, clock: &watch::Sender<Clock>) -> bool {
    clock.send_modify(Clock::stop);
    let sent = tx.blocking_send(Ok(batch)).is_ok();
    clock.send_modify(Clock::resume);
    sent
}

/// Runs `sql` and sends its rows (blocking); returns the rows read.
fn read_rows(
    file: &File,
    conn: &Connection,
    sql: &str,
    schema: &SchemaRef,
    origins: &[Origin],
    tx: &BatchSender,
    clock: &watch::Sender<Clock>,
) -> Result<u64, String> {
    let mut statement = conn.prepare(sql).map_err(|e| file.explain(&e))?;
    let mut rows = statement.query([]).map_err(|e| file.explain(&e))?;
    let mut batcher = Batcher::new(schema.clone())?;
    let columns = schema.fields().len();
    let mut count = 0u64;
    while let Some(row) = rows.next().map_err(|e| file.explain(&e))? {
        for i in 0..columns {
            let field = schema.field(i);
            let origin = origins.get(i).cloned().flatten();
            let value = row.get_ref(i).map_err(|e| file.explain(&e))?;
            let appended =
                cell(value, field.data_type(), origin.is_some()).and_then(|c| batcher.push(i, c));
            if let Err(reason) = appended {
                return Err(misfit(
                    field.name(),
                    field.data_type(),
                    origin,
                    value,
                    &reason,
                ));
            }
        }
        count += 1;
        if let Some(batch) = batcher.end_row().map_err(|e| e.to_string())?
            && !hand_over(tx, batch, clock)
        {
            return Ok(count);
        }
    }
    if let Some(batch) = batcher.flush().map_err(|e| e.to_string())? {
        hand_over(tx, batch, clock);
    }
    Ok(count)
}

/// "column `x` (declared INTEGER) holds 'abc' (text), which is not ...: read it with ...".
fn misfit(
    column: &str,
    data_type: &DataType,
    origin: Origin,
    value: ValueRef,
    reason: &str,
) -> String {
    let c = D.ident(column);
    let (what, fix) = match &origin {
        Some(declared) => (
            format!("declared {declared}, read as {data_type}"),
            format!(
                "read it as text with `query: SELECT CAST({c} AS TEXT) AS {c}, ... FROM ...`, \
                 or clean the value"
            ),
        ),
        None => (
            format!("no declared type; read as {data_type} from its first {INFER_ROWS} values"),
            format!(
                "give it a type in `query:`, e.g. `SELECT CAST({c} AS TEXT) AS {c}, ...` \
                 (or AS REAL, AS INTEGER)"
            ),
        ),
    };
    let kind = match value {
        ValueRef::Null => "null",
        ValueRef::Integer(_) => "integer",
        ValueRef::Real(_) => "real",
        ValueRef::Text(_) => "text",
        ValueRef::Blob(_) => "blob",
    };
    format!(
        "column `{column}` ({what}) holds {} ({kind}), which does not fit: {reason}: {fix}",
        show_value(value)
    )
}

fn show_value(v: ValueRef) -> String {
    match v {
        ValueRef::Null => "NULL".into(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(r) => r.to_string(),
        ValueRef::Text(t) => show(&Cell::Bytes(t)),
        ValueRef::Blob(b) => format!("a blob of {} bytes", b.len()),
    }
}

/// An SQLite value as a cell of `t`; `declared`: the type was declared (not inferred).
fn cell<'v>(v: ValueRef<'v>, t: &DataType, declared: bool) -> Result<Cell<'v>, String> {
    let text = |b: &'v [u8]| std::str::from_utf8(b).map_err(|_| "not UTF-8 text".to_string());
    Ok(match (v, t) {
        (ValueRef::Null, _) => Cell::Null,
        (ValueRef::Integer(i), DataType::Int64 | DataType::Boolean) => Cell::Int(i),
        (
            ValueRef::Integer(i),
            DataType::Float64 | DataType::Decimal128(..) | DataType::Decimal256(..),
        ) => Cell::Int(i),
        (
            ValueRef::Real(r),
            DataType::Float64 | DataType::Decimal128(..) | DataType::Decimal256(..),
        ) => Cell::Float(r),
        (ValueRef::Text(b), DataType::Decimal128(..) | DataType::Decimal256(..)) => {
            Cell::Text(text(b)?)
        }
        (ValueRef::Text(b), DataType::Date32) => {
            let s = text(b)?;
            Cell::Date(parse_date(s).ok_or("dates are read as 'YYYY-MM-DD' text")?)
        }
        (ValueRef::Text(b), DataType::Timestamp(..)) => {
            let s = text(b)?;
            Cell::Micros(parse_timestamp(s).ok_or(
                "timestamps are read as 'YYYY-MM-DD HH:MM:SS[.fff]' text (or with 'T', or an offset) or unix seconds",
            )?)
        }
        (ValueRef::Integer(i), DataType::Timestamp(..)) => Cell::Micros(
            i.checked_mul(1_000_000)
                .ok_or("out of range as unix seconds")?,
        ),
        (ValueRef::Real(r), DataType::Timestamp(..)) => {
            let micros = (r * 1e6).round();
            if !micros.is_finite() || micros.abs() > 9.2e18 {
                return Err("out of range as unix seconds".into());
            }
            Cell::Micros(micros as i64)
        }
        (ValueRef::Text(b), DataType::Utf8) => Cell::Text(text(b)?),
        (ValueRef::Blob(b), DataType::Utf8) if !declared => Cell::Bytes(b),
        (ValueRef::Integer(i), DataType::Utf8) => Cell::Int(i),
        (ValueRef::Real(r), DataType::Utf8) => Cell::Float(r),
        (ValueRef::Blob(b) | ValueRef::Text(b), DataType::Binary) => Cell::Bytes(b),
        (_, t) => return Err(format!("it is not {}", type_words(t))),
    })
}

fn type_words(t: &DataType) -> &'static str {
    match t {
        DataType::Int64 => "an integer",
        DataType::Float64 => "a number",
        DataType::Decimal128(..) | DataType::Decimal256(..) => "a decimal number",
        DataType::Boolean => "a boolean (an integer, 0 for false)",
        DataType::Date32 => "a date",
        DataType::Timestamp(..) => "a timestamp",
        DataType::Utf8 => "text (a blob in a text column)",
        DataType::Binary => "a blob",
        _ => "of the column's type",
    }
}

/// 'YYYY-MM-DD' exactly, as days since 1970-01-01.
fn parse_date(s: &str) -> Option<i32> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let date = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
    i32::try_from(
        date.signed_duration_since(chrono::NaiveDate::default())
            .num_days(),
    )
    .ok()
}

/// ISO text as microseconds since the epoch (an offset converts to UTC; none
/// or `Z` is taken as UTC).
fn parse_timestamp(s: &str) -> Option<i64> {
    let s = s.trim();
    for f in [
        "%Y-%m-%d %H:%M:%S%.f%:z",
        "%Y-%m-%dT%H:%M:%S%.f%:z",
        "%Y-%m-%d %H:%M:%S%.f%z",
        "%Y-%m-%dT%H:%M:%S%.f%z",
        "%Y-%m-%d %H:%M%:z",
        "%Y-%m-%dT%H:%M%:z",
    ] {
        if let Ok(t) = chrono::DateTime::parse_from_str(s, f) {
            return Some(t.timestamp_micros());
        }
    }
    let s = s.strip_suffix('Z').unwrap_or(s);
    for f in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, f) {
            return Some(t.and_utc().timestamp_micros());
        }
    }
    let days = parse_date(s)?;
    Some(i64::from(days) * 86_400_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_types_follow_affinity_with_refinements() {
        let t = |d: &str| declared_type(d).map(|(t, _)| t);
        assert_eq!(t("INTEGER"), Some(DataType::Int64));
        assert_eq!(t("bigint"), Some(DataType::Int64));
        assert_eq!(t("UNSIGNED BIG INT"), Some(DataType::Int64));
        assert_eq!(t("REAL"), Some(DataType::Float64));
        assert_eq!(t("double precision"), Some(DataType::Float64));
        assert_eq!(t("FLOAT"), Some(DataType::Float64));
        assert_eq!(t("NUMERIC(10,2)"), Some(DataType::Decimal128(10, 2)));
        assert_eq!(t("decimal( 12 , 3 )"), Some(DataType::Decimal128(12, 3)));
        assert_eq!(t("DECIMAL(50,10)"), Some(DataType::Decimal256(50, 10)));
        assert_eq!(t("NUMERIC(7)"), Some(DataType::Decimal128(7, 0)));
        assert_eq!(t("NUMERIC"), Some(DataType::Float64));
        assert_eq!(t("BOOLEAN"), Some(DataType::Boolean));
        assert_eq!(t("date"), Some(DataType::Date32));
        assert_eq!(
            t("DATETIME"),
            Some(DataType::Timestamp(TimeUnit::Microsecond, None))
        );
        assert_eq!(
            t("timestamp"),
            Some(DataType::Timestamp(TimeUnit::Microsecond, None))
        );
        assert_eq!(t("VARCHAR(20)"), Some(DataType::Utf8));
        assert_eq!(t("NCHAR(3)"), Some(DataType::Utf8));
        assert_eq!(t("CLOB"), Some(DataType::Utf8));
        assert_eq!(t("BLOB"), Some(DataType::Binary));
        assert_eq!(t(""), None);
        assert_eq!(t("JSON"), None);
    }

    #[test]
    fn dates_and_timestamps_parse() {
        assert_eq!(parse_date("1970-01-02"), Some(1));
        assert_eq!(parse_date("1970-1-2"), None);
        assert_eq!(parse_date("1970-01-02 00:00:00"), None);
        let day = 86_400_000_000i64;
        assert_eq!(parse_timestamp("1970-01-02 00:00:00"), Some(day));
        assert_eq!(
            parse_timestamp("1970-01-02T00:00:00.5"),
            Some(day + 500_000)
        );
        assert_eq!(parse_timestamp("1970-01-02 00:00"), Some(day));
        assert_eq!(parse_timestamp("1970-01-02T01:00:00+01:00"), Some(day));
        assert_eq!(parse_timestamp("1970-01-02T00:00:00Z"), Some(day));
        assert_eq!(parse_timestamp("1970-01-02"), Some(day));
        assert_eq!(parse_timestamp("yesterday"), None);
    }

    #[test]
    fn values_that_do_not_fit_are_errors() {
        assert_eq!(
            cell(ValueRef::Integer(3), &DataType::Int64, true),
            Ok(Cell::Int(3))
        );
        let err = cell(ValueRef::Text(b"abc"), &DataType::Int64, true).unwrap_err();
        assert_eq!(err, "it is not an integer");
        assert!(cell(ValueRef::Real(2.5), &DataType::Int64, true).is_err());
        assert!(cell(ValueRef::Blob(b"x"), &DataType::Utf8, true).is_err());
        assert_eq!(
            cell(ValueRef::Blob(b"x"), &DataType::Utf8, false),
            Ok(Cell::Bytes(b"x"))
        );
        let message = misfit(
            "qty",
            &DataType::Int64,
            Some("INTEGER".into()),
            ValueRef::Text(b"abc"),
            "it is not an integer",
        );
        assert!(
            message.contains("column `qty` (declared INTEGER"),
            "{message}"
        );
        assert!(message.contains("'abc' (text)"), "{message}");
        assert!(message.contains("CAST(\"qty\" AS TEXT)"), "{message}");
    }
}
