//! PostgreSQL sources, through datafusion-table-providers: rows stream in
//! batches, and each query's projection and filters are pushed into the SQL
//! sent to the server.
//!
//! Around that crate (see docs/sources.md, "Measured facts"): every session
//! runs with `TimeZone=UTC` (its pushed timestamptz filters drop the offset
//! otherwise), json/jsonb arrive as text, an unconstrained `numeric` is read as
//! `numeric(38,10)` (the crate would fail on values from 1e18 up), and `query:`
//! sources are wrapped as a subquery by [`PgTable`], because the crate reads
//! only tables.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::TableReference;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::TableType;
use datafusion::error::Result as DataFusionResult;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use datafusion::sql::unparser::dialect::PostgreSqlDialect;
use datafusion_table_providers::UnsupportedTypeAction;
use datafusion_table_providers::sql::db_connection_pool::postgrespool::{
    Error as PoolError, PostgresConnectionPool,
};
use datafusion_table_providers::sql::sql_provider_datafusion::{
    SqlExec, SqlTable, default_filter_pushdown,
};
use secrecy::SecretString;
use tokio_postgres::types::{Kind, Type};

use super::SourceError;
use crate::config::{DatabaseSource, Relation, TlsMode};

/// Connects (with retries) and returns the table or query as a provider.
pub async fn provider(
    name: &str,
    cfg: &DatabaseSource,
) -> Result<Arc<dyn TableProvider>, SourceError> {
    let target = Target::parse(name, &cfg.url)?;
    let pool = Arc::new(connect(name, cfg, &target).await?);
    let fail = |message: String| SourceError::Remote {
        name: name.to_string(),
        message: format!("{message} (PostgreSQL {})", target.describe()),
    };
    let query = match &cfg.relation {
        Relation::Query(query) => query.trim().trim_end_matches(';').to_string(),
        Relation::Table(table) => {
            // Bare `numeric` columns are cast server-side; otherwise the crate reads the table.
            let columns = table_columns(&pool, table).await.map_err(fail)?;
            if !columns.iter().any(|c| c.unconstrained_numeric) {
                let reference = table_reference(table);
                let dyn_pool: Arc<DynPool> = pool;
                let table = SqlTable::new("postgres", &dyn_pool, reference)
                    .await
                    .map_err(|e| fail(describe_query_error(&e.to_string(), table)))?
                    .with_dialect(Arc::new(PostgreSqlDialect {}));
                return Ok(Arc::new(PgTable { table, query: None }));
            }
            let list: Vec<String> = columns
                .iter()
                .map(|c| {
                    let quoted = quote(&c.name);
                    if c.unconstrained_numeric {
                        format!("CAST({quoted} AS numeric(38,10)) AS {quoted}")
                    } else {
                        quoted
                    }
                })
                .collect();
            format!("SELECT {} FROM {}", list.join(", "), quote_path(table))
        }
    };
    let schema = query_schema(&pool, &query).await.map_err(fail)?;
    Ok(Arc::new(PgTable::query(pool, query, schema)))
}

type DynPool = dyn datafusion_table_providers::sql::db_connection_pool::DbConnectionPool<
        PooledConnection,
        &'static (dyn tokio_postgres::types::ToSql + Sync),
    > + Send
    + Sync;
type PooledConnection = datafusion_table_providers::sql::db_connection_pool::dbconnection::postgresconn::PostgresPooledConnection;

/// Where a source connects, for messages: never the password.
struct Target {
    host: String,
    port: u16,
    user: String,
    database: String,
    password: Option<String>,
    /// `sslmode` from the URL's query, used when the source sets no `tls:`.
    sslmode: Option<String>,
}

impl Target {
    fn parse(name: &str, url: &str) -> Result<Target, SourceError> {
        let bad = |why: &str| SourceError::Remote {
            name: name.to_string(),
            message: format!(
                "the PostgreSQL URL `{}` {why}: write it as postgres://user:password@host:5432/database",
                crate::config::strip_password(url)
            ),
        };
        let parsed = reqwest::Url::parse(url).map_err(|_| bad("is not a valid URL"))?;
        let host = parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("names no host"))?
            .trim_matches(['[', ']'])
            .to_string();
        let database = percent_decode(parsed.path().trim_start_matches('/'));
        let user = percent_decode(parsed.username());
        let sslmode = match parsed.query_pairs().find(|(k, _)| k == "sslmode") {
            None => None,
            Some((_, v)) => {
                let mode = v.to_ascii_lowercase();
                if !["disable", "prefer", "require", "verify-ca", "verify-full"]
                    .contains(&mode.as_str())
                {
                    return Err(bad("has an unknown sslmode"));
                }
                Some(mode)
            }
        };
        Ok(Target {
            host,
            port: parsed.port().unwrap_or(5432),
            user: if user.is_empty() {
                "postgres".into()
            } else {
                user
            },
            database: if database.is_empty() {
                "postgres".into()
            } else {
                database
            },
            password: parsed.password().map(percent_decode),
            sslmode,
        })
    }

    fn describe(&self) -> String {
        format!(
            "{}:{}, database `{}`, user `{}`",
            self.host, self.port, self.database, self.user
        )
    }
}

/// `%40` -> `@` in URL user names and passwords.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = text.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A connection pool, tried `1 + retries` times on transient failures.
async fn connect(
    name: &str,
    cfg: &DatabaseSource,
    target: &Target,
) -> Result<PostgresConnectionPool, SourceError> {
    let sslmode = match (cfg.tls, &target.sslmode) {
        (TlsMode::Prefer, Some(from_url)) => from_url.clone(),
        (mode, _) => mode.name().to_string(),
    };
    let mut params: HashMap<String, SecretString> = [
        ("host", target.host.clone()),
        ("port", target.port.to_string()),
        ("user", target.user.clone()),
        ("db", target.database.clone()),
        ("sslmode", sslmode),
        (
            "options",
            format!(
                "-c TimeZone=UTC -c statement_timeout={}",
                cfg.query_timeout.as_millis()
            ),
        ),
        ("application_name", "kpiforge".to_string()),
        ("connection_pool_size", "4".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), SecretString::from(v)))
    .collect();
    if let Some(password) = &target.password {
        params.insert("pass".into(), SecretString::from(password.clone()));
    }
    if let Some(ca) = &cfg.ca {
        params.insert(
            "sslrootcert".into(),
            SecretString::from(ca.to_string_lossy().into_owned()),
        );
    }
    let mut attempt = 0;
    loop {
        let outcome = tokio::time::timeout(
            cfg.connect_timeout,
            PostgresConnectionPool::new(params.clone()),
        )
        .await;
        let failure = match outcome {
            Ok(Ok(pool)) => {
                let pool = pool.with_unsupported_type_action(UnsupportedTypeAction::String);
                check_utc(&pool)
                    .await
                    .map_err(|message| SourceError::Remote {
                        name: name.to_string(),
                        message: format!("{message} (PostgreSQL {})", target.describe()),
                    })?;
                return Ok(pool);
            }
            Ok(Err(e)) => classify(&e, target),
            Err(_) => Failure {
                transient: true,
                message: format!(
                    "could not connect to PostgreSQL at {}:{} within {:?}: is the host reachable, and the port open?",
                    target.host, target.port, cfg.connect_timeout
                ),
            },
        };
        if !failure.transient || attempt >= cfg.retries {
            let tries = if attempt > 0 {
                format!(" (after {} attempts)", attempt + 1)
            } else {
                String::new()
            };
            return Err(SourceError::Remote {
                name: name.to_string(),
                message: format!("{}{tries}", failure.message),
            });
        }
        let wait = Duration::from_millis(250 << attempt.min(6));
        tracing::warn!(
            source = name,
            attempt = attempt + 1,
            wait_ms = wait.as_millis() as u64,
            "{}",
            failure.message
        );
        tokio::time::sleep(wait).await;
        attempt += 1;
    }
}

/// Timestamp filters are pushed as UTC literals: a session in another zone
/// (a pooler such as PgBouncer may drop the startup option) would compare them
/// wrongly, so that is an error rather than wrong rows.
async fn check_utc(pool: &PostgresConnectionPool) -> Result<(), String> {
    let conn = pool
        .connect_direct()
        .await
        .map_err(|e| first_line(&e.to_string()).to_string())?;
    let zone: String = conn
        .conn
        .query_one("SHOW TimeZone", &[])
        .await
        .and_then(|row| row.try_get(0))
        .map_err(|e| db_message(&e))?;
    if zone.eq_ignore_ascii_case("UTC") || zone.eq_ignore_ascii_case("Etc/UTC") {
        Ok(())
    } else {
        Err(format!(
            "the session's time zone is `{zone}`, not UTC: the server (or a pooler in front of it) \
             ignored the startup option `-c TimeZone=UTC`; connect directly, or allow the `options` \
             startup parameter in the pooler"
        ))
    }
}

struct Failure {
    transient: bool,
    message: String,
}

/// What went wrong, in words that say what to check.
fn classify(error: &PoolError, target: &Target) -> Failure {
    let at = format!("{}:{}", target.host, target.port);
    // The crate's own message is generic; the cause at the end of the chain says what happened.
    let mut text = error.to_string();
    let mut cause: Option<&dyn std::error::Error> = std::error::Error::source(error);
    while let Some(c) = cause {
        text = c.to_string();
        cause = c.source();
    }
    let (transient, message) = match error {
        PoolError::InvalidHostOrPortError { .. } => (
            true,
            format!("cannot connect to {at}: is PostgreSQL running there, and the port open?"),
        ),
        PoolError::InvalidUsernameOrPassword { .. } => (
            false,
            format!(
                "authentication failed for user `{}` on {at} (database `{}`): check the password in the URL's environment variable",
                target.user, target.database
            ),
        ),
        _ if text.contains("does not exist") && text.contains("database") => (
            false,
            format!(
                "database `{}` does not exist on {at}: check the database name in the URL",
                target.database
            ),
        ),
        _ if text.contains("password authentication failed")
            || text.contains("no password")
            || (text.contains("role") && text.contains("does not exist")) =>
        {
            (
                false,
                format!(
                    "authentication failed for user `{}` on {at} (database `{}`): check the user and password in the URL",
                    target.user, target.database
                ),
            )
        }
        _ if text.to_ascii_lowercase().contains("tls") || text.contains("SSL") => (
            false,
            format!(
                "TLS with {at} failed ({}): set `tls: {{mode: disable}}` for a server without TLS, or `tls: {{ca: path/to/ca.pem}}` to trust its certificate",
                first_line(&text)
            ),
        ),
        _ => (
            text.contains("refused") || text.contains("reset") || text.contains("timed out"),
            format!(
                "cannot connect to PostgreSQL at {at}: {}",
                first_line(&text)
            ),
        ),
    };
    Failure { transient, message }
}

fn first_line(text: &str) -> &str {
    text.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(text)
        .trim()
}

fn describe_query_error(text: &str, relation: &str) -> String {
    if text.contains("doesn't exist") || text.contains("does not exist") {
        format!(
            "table `{relation}` not found: check the name and schema (`schema.table`), and that the user may read it"
        )
    } else {
        format!("cannot read `{relation}`: {}", first_line(text))
    }
}

struct Column {
    name: String,
    unconstrained_numeric: bool,
}

/// The table's columns, from a prepared `SELECT *` (no rows are read).
async fn table_columns(pool: &PostgresConnectionPool, table: &str) -> Result<Vec<Column>, String> {
    let statement = prepare(pool, &format!("SELECT * FROM {}", quote_path(table)))
        .await
        .map_err(|e| describe_query_error(&e, table))?;
    Ok(statement
        .columns()
        .iter()
        .map(|c| Column {
            name: c.name().to_string(),
            unconstrained_numeric: *c.type_() == Type::NUMERIC && c.type_modifier() < 0,
        })
        .collect())
}

/// Prepares `sql` on a pooled connection: its result columns, no rows read.
async fn prepare(
    pool: &PostgresConnectionPool,
    sql: &str,
) -> Result<tokio_postgres::Statement, String> {
    let conn = pool
        .connect_direct()
        .await
        .map_err(|e| first_line(&e.to_string()).to_string())?;
    conn.conn.prepare(sql).await.map_err(|e| db_message(&e))
}

fn db_message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map_or_else(|| e.to_string(), |d| d.message().to_string())
}

/// The Arrow schema of a query's result, from its prepared statement: the
/// types the crate's row conversion produces.
async fn query_schema(pool: &PostgresConnectionPool, query: &str) -> Result<SchemaRef, String> {
    let statement = prepare(pool, query)
        .await
        .map_err(|e| format!("the query does not run: {e}"))?;
    let mut fields = Vec::new();
    for c in statement.columns() {
        let data_type = arrow_type(c.type_(), c.type_modifier()).ok_or_else(|| {
            format!(
                "column `{}` has type `{}`, which kpiforge does not read: cast it in the query, for example `{}::text AS {}`",
                c.name(),
                c.type_().name(),
                quote(c.name()),
                quote(c.name())
            )
        })?;
        fields.push(Field::new(c.name(), data_type, true));
    }
    Ok(Arc::new(Schema::new(fields)))
}

/// PostgreSQL type -> Arrow type, as datafusion-table-providers converts rows.
fn arrow_type(t: &Type, modifier: i32) -> Option<DataType> {
    if let Kind::Enum(_) = t.kind() {
        return Some(DataType::Dictionary(
            Box::new(DataType::Int8),
            Box::new(DataType::Utf8),
        ));
    }
    Some(match *t {
        Type::INT2 => DataType::Int16,
        Type::INT4 => DataType::Int32,
        Type::INT8 | Type::MONEY => DataType::Int64,
        Type::OID => DataType::UInt32,
        Type::FLOAT4 => DataType::Float32,
        Type::FLOAT8 => DataType::Float64,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::UUID | Type::NAME => DataType::Utf8,
        Type::JSON | Type::JSONB => DataType::Utf8,
        Type::BYTEA => DataType::Binary,
        Type::BOOL => DataType::Boolean,
        Type::NUMERIC => {
            // typmod = ((precision << 16) | scale) + 4; -1 when unconstrained.
            if modifier >= 4 {
                let precision = ((modifier - 4) >> 16) & 0xffff;
                let scale = (modifier - 4) & 0xffff;
                if !(1..=38).contains(&precision) || scale > precision {
                    return None;
                }
                DataType::Decimal128(precision as u8, scale as i8)
            } else {
                DataType::Decimal128(38, 10)
            }
        }
        Type::TIMESTAMPTZ => DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
        Type::TIMESTAMP => DataType::Timestamp(TimeUnit::Nanosecond, None),
        Type::DATE => DataType::Date32,
        Type::TIME => DataType::Time64(TimeUnit::Nanosecond),
        _ => return None,
    })
}

/// `schema.table` as written, case kept (PostgreSQL folds only unquoted names,
/// and kpiforge always quotes).
fn table_reference(path: &str) -> TableReference {
    match path.split_once('.') {
        Some((schema, table)) => TableReference::partial(schema, table),
        None => TableReference::bare(path),
    }
}

/// `"name"`, doubling quotes inside.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `schema.table` -> `"schema"."table"`.
fn quote_path(path: &str) -> String {
    path.split('.').map(quote).collect::<Vec<_>>().join(".")
}

/// The crate's table provider, with two repairs: a `query:` source is read
/// through a stand-in table name that the SQL then replaces with the query as a
/// subquery (projections and filters still reach the server: PostgreSQL's
/// planner pushes them into it); and a scan that needs no column (`count(*)`)
/// returns batches without columns, where the crate returns one.
#[derive(Debug)]
struct PgTable {
    table: SqlTable<PooledConnection, &'static (dyn tokio_postgres::types::ToSql + Sync)>,
    /// For `query:` sources, the query behind the stand-in name.
    query: Option<String>,
}

/// The stand-in name, unlikely to occur in a query.
const ALIAS: &str = "kpiforge_source_query";

impl PgTable {
    fn query(pool: Arc<PostgresConnectionPool>, query: String, schema: SchemaRef) -> PgTable {
        let dyn_pool: Arc<DynPool> = pool;
        let table =
            SqlTable::new_with_schema("postgres", &dyn_pool, schema, TableReference::bare(ALIAS))
                .with_dialect(Arc::new(PostgreSqlDialect {}));
        PgTable {
            table,
            query: Some(query),
        }
    }
}

#[async_trait]
impl TableProvider for PgTable {
    fn schema(&self) -> SchemaRef {
        self.table.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DataFusionResult<Vec<TableProviderFilterPushDown>> {
        Ok(default_filter_pushdown(filters, &PostgreSqlDialect {}))
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DataFusionResult<Arc<dyn ExecutionPlan>> {
        // No column needed (`count(*)`): fetch the narrowest one and drop it.
        let narrowest = vec![narrowest_column(&self.table.schema())];
        let fetched = match projection {
            Some(p) if p.is_empty() && !self.table.schema().fields().is_empty() => Some(&narrowest),
            other => other,
        };
        let mut sql = self.table.scan_to_sql(fetched, filters, limit)?;
        if let Some(query) = &self.query {
            // The newline ends a trailing `-- comment` in the query.
            let from = format!("FROM \"{ALIAS}\"");
            sql = sql.replacen(&from, &format!("FROM ({query}\n) AS \"{ALIAS}\""), 1);
        }
        tracing::debug!(sql = %sql, "postgres query");
        let exec: Arc<dyn ExecutionPlan> = Arc::new(PostgresScan(SqlExec::new(
            fetched,
            &self.table.schema(),
            self.table.clone_pool(),
            sql,
            Arc::new(PostgreSqlDialect {}),
        )?));
        if fetched == projection {
            return Ok(exec);
        }
        Ok(Arc::new(ProjectionExec::try_new(
            Vec::<(Arc<dyn PhysicalExpr>, String)>::new(),
            exec,
        )?))
    }
}

/// The index of the column cheapest to fetch: the narrowest fixed-width one.
fn narrowest_column(schema: &Schema) -> usize {
    schema
        .fields()
        .iter()
        .enumerate()
        .min_by_key(|(_, f)| f.data_type().primitive_width().unwrap_or(usize::MAX))
        .map_or(0, |(i, _)| i)
}

/// The crate's scan, as a leaf the optimizer cannot rewrite: the crate's own
/// limit and sort pushdown edit the SQL text by searching it for ` LIMIT ` and
/// ` WHERE `, which would also find them inside a `query:` source's text.
#[derive(Debug)]
struct PostgresScan(SqlExec<PooledConnection, &'static (dyn tokio_postgres::types::ToSql + Sync)>);

impl DisplayAs for PostgresScan {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "PostgresScan sql={}", self.0.sql().unwrap_or_default())
    }
}

impl ExecutionPlan for PostgresScan {
    fn name(&self) -> &'static str {
        "PostgresScan"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.0.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DataFusionResult<TreeNodeRecursion>,
    ) -> DataFusionResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        _: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DataFusionResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DataFusionResult<SendableRecordBatchStream> {
        self.0.execute(partition, context)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_parts_without_leaking_the_password() {
        let t = Target::parse(
            "s",
            "postgres://kpi:p%40ss@db.internal:6543/crm?sslmode=require",
        )
        .unwrap();
        assert_eq!((t.host.as_str(), t.port), ("db.internal", 6543));
        assert_eq!(t.password.as_deref(), Some("p@ss"));
        assert_eq!(t.sslmode.as_deref(), Some("require"));
        assert!(!t.describe().contains("p@ss"));
        let e = Target::parse("s", "postgres://u:secret@/db")
            .err()
            .unwrap()
            .to_string();
        assert!(
            !e.contains("secret") && e.contains("postgres://u@/db"),
            "{e}"
        );
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_path("sales.orders"), "\"sales\".\"orders\"");
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
    }
}
