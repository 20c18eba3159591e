//! A DataFusion table over a SQL database reached through a driver (MySQL/MariaDB,
//! SQLite). The table's schema comes from the database's column metadata; every
//! scan sends one `SELECT` naming only the projected columns, with the filters
//! that translate exactly (see [`SqlTable::supports_filters_pushdown`]) in its
//! `WHERE` and the limit in `LIMIT`, and streams the rows back as Arrow batches of
//! [`BATCH_ROWS`] rows (fewer past [`BATCH_BYTES`]) through a bounded channel:
//! memory stays bounded whatever the table's size.
//!
//! What differs between databases is small: identifier quoting and literal
//! rendering ([`Dialect`]), and how rows are read ([`Reader`], one per driver).
//! Drivers turn their values into [`Cell`]s, which [`Batcher`] appends to Arrow
//! builders. A reader runs on its own task ([`spawn_reader`]): however it ends,
//! an error or a panic reaches the query as an error.

use std::fmt::Write as _;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, Decimal256Builder,
    Float32Builder, Float64Builder, Int8Builder, Int16Builder, Int32Builder, Int64Builder,
    RecordBatch, RecordBatchOptions, StringBuilder, Time64MicrosecondBuilder,
    TimestampMicrosecondBuilder, UInt8Builder, UInt16Builder, UInt32Builder, UInt64Builder,
};
use datafusion::arrow::compute::kernels::cast_utils::parse_decimal;
use datafusion::arrow::datatypes::{
    DataType, Decimal128Type, Decimal256Type, DecimalType, Field, Schema, SchemaRef, TimeUnit, i256,
};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{BinaryExpr, Expr, Like, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use futures::StreamExt;
use tokio::sync::mpsc;

use super::SourceError;
use crate::config::Relation;

/// Rows per Arrow batch sent by a scan.
pub const BATCH_ROWS: usize = 8192;

/// Bytes of values a batch may hold before it is sent with fewer than
/// [`BATCH_ROWS`] rows: wide rows then neither take much memory nor overflow
/// Arrow's 32-bit offsets (2 GiB of text or bytes in one column of one batch).
pub const BATCH_BYTES: usize = 64 << 20;

/// Batches a reader may have ready before the query consuming them takes one:
/// the bound on a scan's memory (with the driver's own socket buffers).
const CHANNEL_BATCHES: usize = 2;

/// The alias of a `query:` source in the `SELECT ... FROM (query) AS q` around it.
const QUERY_ALIAS: &str = "kpiforge_q";

// ---------------------------------------------------------------- dialects

/// How SQL is spelled for one database: quoting and literals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// MySQL and MariaDB.
    Mysql,
    Sqlite,
}

impl Dialect {
    /// A quoted identifier: `` `a``b` `` (MySQL) or `"a""b"` (SQLite).
    pub fn ident(self, name: &str) -> String {
        let q = match self {
            Dialect::Mysql => '`',
            Dialect::Sqlite => '"',
        };
        let mut out = String::with_capacity(name.len() + 2);
        out.push(q);
        for c in name.chars() {
            if c == q {
                out.push(q);
            }
            out.push(c);
        }
        out.push(q);
        out
    }

    /// A string literal, read the same whatever the session's settings: quotes
    /// doubled. MySQL reads `\` in a quoted string as an escape unless the
    /// session's `sql_mode` has `NO_BACKSLASH_ESCAPES`, and each scan opens a
    /// session of its own: text holding `\` (or NUL) is sent as a hex literal
    /// in the connection's character set, `_utf8mb4 X'5C'`, which both modes
    /// read alike (and which compares as a quoted literal does). No value
    /// reaches SQL any other way.
    pub fn string(self, text: &str) -> String {
        if self == Dialect::Mysql && text.contains(['\\', '\0']) {
            let mut out = String::with_capacity(text.len() * 2 + 12);
            out.push_str("_utf8mb4 X'");
            for byte in text.bytes() {
                let _ = write!(out, "{byte:02X}");
            }
            out.push('\'');
            return out;
        }
        let mut out = String::with_capacity(text.len() + 2);
        out.push('\'');
        for c in text.chars() {
            if c == '\'' {
                out.push('\'');
            }
            out.push(c);
        }
        out.push('\'');
        out
    }

    /// `FROM` target of a relation: a quoted (possibly schema-qualified) table,
    /// or the query as a derived table. The newline before the `)` ends a
    /// trailing `-- comment` (or MySQL `# comment`) in the query, which would
    /// otherwise comment out the rest of the statement.
    pub fn from(self, relation: &Relation) -> String {
        match relation {
            Relation::Table(name) => table_parts(name)
                .iter()
                .map(|p| self.ident(p))
                .collect::<Vec<_>>()
                .join("."),
            Relation::Query(sql) => format!("({}\n) AS {QUERY_ALIAS}", trim_query(sql)),
        }
    }

    /// A column as an operand of a comparison with a literal of its type, such
    /// that the database compares exactly as DataFusion does.
    fn operand(self, column: &str, data_type: &DataType) -> String {
        let c = self.ident(column);
        match (self, data_type) {
            // Booleans are read as "not zero" (MySQL tinyint(1), SQLite 0/1).
            (_, DataType::Boolean) => format!("({c} <> 0)"),
            // Byte-wise, case- and trailing-space-sensitive, whatever the
            // column's character set and collation: as DataFusion compares.
            (Dialect::Mysql, DataType::Utf8) => {
                format!("CAST(CONVERT({c} USING utf8mb4) AS BINARY)")
            }
            (Dialect::Sqlite, DataType::Utf8) => format!("{c} COLLATE BINARY"),
            _ => c,
        }
    }

    /// A literal compared with a column of `column_type`, or `None` when the
    /// two do not compare the same way in the database as in DataFusion.
    fn literal(self, value: &ScalarValue, column_type: &DataType) -> Option<String> {
        use ScalarValue as S;
        if value.is_null() {
            return None;
        }
        let numeric_column = column_type.is_integer()
            || column_type.is_floating()
            || matches!(
                column_type,
                DataType::Decimal128(..) | DataType::Decimal256(..)
            );
        match value {
            S::Int8(Some(v)) if numeric_column => Some(v.to_string()),
            S::Int16(Some(v)) if numeric_column => Some(v.to_string()),
            S::Int32(Some(v)) if numeric_column => Some(v.to_string()),
            S::Int64(Some(v)) if numeric_column => Some(v.to_string()),
            S::UInt8(Some(v)) if numeric_column => Some(v.to_string()),
            S::UInt16(Some(v)) if numeric_column => Some(v.to_string()),
            S::UInt32(Some(v)) if numeric_column => Some(v.to_string()),
            S::UInt64(Some(v)) if numeric_column => Some(v.to_string()),
            S::Float32(Some(v)) if numeric_column => float_literal(f64::from(*v)),
            S::Float64(Some(v)) if numeric_column => float_literal(*v),
            S::Decimal128(Some(v), _, s) if numeric_column => {
                Some(decimal_text(&v.to_string(), *s))
            }
            S::Decimal256(Some(v), _, s) if numeric_column => {
                Some(decimal_text(&v.to_string(), *s))
            }
            S::Utf8(Some(v)) | S::LargeUtf8(Some(v)) | S::Utf8View(Some(v))
                if *column_type == DataType::Utf8 =>
            {
                Some(self.string(v))
            }
            S::Boolean(Some(v)) if *column_type == DataType::Boolean => {
                Some(if *v { "1" } else { "0" }.to_string())
            }
            S::Date32(Some(days)) if *column_type == DataType::Date32 => {
                let date = date_from_days(i64::from(*days))?;
                Some(self.typed("DATE", &date.format("%Y-%m-%d").to_string()))
            }
            S::Date64(Some(ms)) if *column_type == DataType::Date32 => {
                if ms % 86_400_000 != 0 {
                    return None;
                }
                let date = date_from_days(ms / 86_400_000)?;
                Some(self.typed("DATE", &date.format("%Y-%m-%d").to_string()))
            }
            S::TimestampSecond(Some(v), tz)
            | S::TimestampMillisecond(Some(v), tz)
            | S::TimestampMicrosecond(Some(v), tz)
            | S::TimestampNanosecond(Some(v), tz) => {
                let DataType::Timestamp(_, column_tz) = column_type else {
                    return None;
                };
                if column_tz.is_some() != tz.is_some() {
                    return None;
                }
                let micros = match value {
                    S::TimestampSecond(..) => v.checked_mul(1_000_000)?,
                    S::TimestampMillisecond(..) => v.checked_mul(1_000)?,
                    S::TimestampMicrosecond(..) => *v,
                    _ if v % 1_000 == 0 => v / 1_000,
                    _ => return None,
                };
                // A zoned value is an instant: shown in UTC, the session's zone.
                let t = chrono::DateTime::from_timestamp_micros(micros)?.naive_utc();
                if !(0..=9999).contains(&chrono::Datelike::year(&t)) {
                    return None;
                }
                Some(self.typed("TIMESTAMP", &t.format("%Y-%m-%d %H:%M:%S%.6f").to_string()))
            }
            S::Binary(Some(b)) | S::LargeBinary(Some(b)) | S::BinaryView(Some(b))
                if *column_type == DataType::Binary =>
            {
                let mut hex = String::with_capacity(b.len() * 2 + 3);
                hex.push_str("X'");
                for byte in b {
                    let _ = write!(hex, "{byte:02X}");
                }
                hex.push('\'');
                Some(hex)
            }
            _ => None,
        }
    }

    /// `DATE'2026-01-31'` for MySQL; SQLite keeps dates as ISO text.
    fn typed(self, keyword: &str, text: &str) -> String {
        match self {
            Dialect::Mysql => format!("{keyword}{}", self.string(text)),
            Dialect::Sqlite => self.string(text),
        }
    }

    /// `column [NOT] LIKE pattern` with DataFusion's semantics: case-sensitive,
    /// `\` escaping the next character.
    fn like(self, column: &str, pattern: &str, negated: bool) -> Option<String> {
        let not = if negated { "NOT " } else { "" };
        let c = self.ident(column);
        match self {
            Dialect::Mysql => {
                // A trailing lone `\` is read differently by the two: leave it to DataFusion.
                pattern_tokens(pattern)?;
                Some(format!(
                    "CONVERT({c} USING utf8mb4) COLLATE utf8mb4_bin {not}LIKE {} ESCAPE {}",
                    self.string(pattern),
                    self.string("\\")
                ))
            }
            // SQLite's LIKE ignores ASCII case; GLOB does not.
            Dialect::Sqlite => {
                let mut glob = String::new();
                for (literal, c) in pattern_tokens(pattern)? {
                    match (literal, c) {
                        (false, '%') => glob.push('*'),
                        (false, '_') => glob.push('?'),
                        (_, '*') => glob.push_str("[*]"),
                        (_, '?') => glob.push_str("[?]"),
                        (_, '[') => glob.push_str("[[]"),
                        (_, c) => glob.push(c),
                    }
                }
                Some(format!("{c} {not}GLOB {}", self.string(&glob)))
            }
        }
    }
}

/// A LIKE pattern as (escaped, character) pairs; `None` when it ends in a lone `\`.
fn pattern_tokens(pattern: &str) -> Option<Vec<(bool, char)>> {
    let mut out = Vec::with_capacity(pattern.len());
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            out.push((true, chars.next()?));
        } else {
            out.push((false, c));
        }
    }
    Some(out)
}

/// A finite float as a double-precision literal (`2.5e0`: MySQL reads `2.5` as
/// an exact decimal, `2.5e0` as a double, as DataFusion compares).
fn float_literal(v: f64) -> Option<String> {
    v.is_finite().then(|| format!("{v:e}"))
}

/// The decimal `digits` (an integer, maybe negative) scaled by 10^-scale, as text.
fn decimal_text(digits: &str, scale: i8) -> String {
    let (sign, digits) = match digits.strip_prefix('-') {
        Some(d) => ("-", d),
        None => ("", digits),
    };
    if scale <= 0 {
        let zeros = "0".repeat(usize::from(scale.unsigned_abs()));
        return format!("{sign}{digits}{zeros}");
    }
    let scale = usize::from(scale.unsigned_abs());
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{sign}{int}.{frac}")
}

fn date_from_days(days: i64) -> Option<chrono::NaiveDate> {
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?;
    let date = epoch.checked_add_signed(chrono::TimeDelta::try_days(days)?)?;
    (0..=9999)
        .contains(&chrono::Datelike::year(&date))
        .then_some(date)
}

/// `schema.table` -> [`schema`, `table`], each part's own quotes removed.
pub fn table_parts(name: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut quote: Option<char> = None;
    let mut chars = name.trim().chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) if c == q => {
                if chars.peek() == Some(&q) {
                    chars.next();
                    current.push(q);
                } else {
                    quote = None;
                }
            }
            Some(_) => current.push(c),
            None if c == '"' || c == '`' => quote = Some(c),
            None if c == '.' => parts.push(std::mem::take(&mut current)),
            None => current.push(c),
        }
    }
    parts.push(current);
    parts
}

/// A `table:` as its schema (MySQL: database), if named, and its table, each
/// part's quotes removed; an error for more than two parts or an empty one.
pub fn split_table(name: &str) -> Result<(Option<String>, String), String> {
    let mut parts = table_parts(name);
    if parts.len() > 2 || parts.iter().any(|p| p.is_empty()) {
        return Err(format!(
            "`{name}` is not a table name: write `table` or `schema.table`, quoting a name \
             that holds a dot (`\"my.table\"`)"
        ));
    }
    let table = parts.pop().unwrap_or_default();
    Ok((parts.pop(), table))
}

/// "table `x` not found{place}: tables there: a, b" ("it has no tables"; "check
/// the name" when they could not be listed).
pub fn table_not_found(name: &str, place: &str, tables: Option<&[String]>) -> String {
    let there = match tables {
        None => "check the name".to_string(),
        Some([]) => "it has no tables".to_string(),
        Some(tables) => format!("tables there: {}", list(tables)),
    };
    format!("table `{name}` not found{place}: {there}")
}

/// At most 20 names, then "... (N in all)".
pub fn list(names: &[String]) -> String {
    let shown: Vec<&str> = names.iter().take(20).map(String::as_str).collect();
    if names.len() > shown.len() {
        format!("{}, ... ({} in all)", shown.join(", "), names.len())
    } else {
        shown.join(", ")
    }
}

/// `1s`, `5m`, `1h`, `1.5s`.
pub fn human(d: std::time::Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 3600.0 && s % 3600.0 == 0.0 {
        format!("{}h", s / 3600.0)
    } else if s >= 60.0 && s % 60.0 == 0.0 {
        format!("{}m", s / 60.0)
    } else {
        format!("{s}s")
    }
}

/// A query without its trailing `;` (it goes inside parentheses).
pub fn trim_query(sql: &str) -> &str {
    sql.trim()
        .trim_end_matches(|c: char| c == ';' || c.is_whitespace())
}

// ---------------------------------------------------------------- the table

/// Runs one `SELECT` and streams its rows, for one kind of database.
pub trait Reader: std::fmt::Debug + Send + Sync + 'static {
    /// Rows of `sql` as batches of `schema` (the projected columns in order;
    /// no columns: only the number of rows counts). Errors come through the
    /// stream; the reader logs the rows it fetched with [`log_fetched`].
    fn read(&self, sql: String, schema: SchemaRef) -> SendableRecordBatchStream;
}

/// A database table or query as a DataFusion table, scanned in place.
#[derive(Debug)]
pub struct SqlTable {
    source: String,
    dialect: Dialect,
    from: String,
    schema: SchemaRef,
    /// Per column: whether comparisons with it can be sent to the database.
    pushdown: Vec<bool>,
    reader: Arc<dyn Reader>,
}

/// A column as the database describes it.
#[derive(Debug, Clone)]
pub struct SqlColumn {
    pub name: String,
    pub data_type: DataType,
    /// Comparisons with literals give the same answer in the database as in
    /// DataFusion (false: DataFusion filters the rows itself).
    pub pushdown: bool,
}

impl SqlTable {
    pub fn new(
        source: &str,
        dialect: Dialect,
        relation: &Relation,
        columns: Vec<SqlColumn>,
        reader: Arc<dyn Reader>,
    ) -> Result<Self, SourceError> {
        let mut seen = std::collections::HashSet::new();
        for c in &columns {
            if !seen.insert(c.name.as_str()) {
                return Err(SourceError::Config {
                    name: source.to_string(),
                    message: format!("two columns are named `{}`", c.name),
                }
                .with_hint("give each column its own name with `AS` in `query:`"));
            }
        }
        let fields: Vec<Field> = columns
            .iter()
            .map(|c| Field::new(&c.name, c.data_type.clone(), true))
            .collect();
        Ok(SqlTable {
            source: source.to_string(),
            dialect,
            from: dialect.from(relation),
            schema: Arc::new(Schema::new(fields)),
            pushdown: columns.iter().map(|c| c.pushdown).collect(),
            reader,
        })
    }

    /// The `SELECT` a scan sends.
    pub fn select(
        &self,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<String> {
        let all: Vec<usize> = (0..self.schema.fields().len()).collect();
        let projection = projection.unwrap_or(&all);
        let columns = if projection.is_empty() {
            "1".to_string()
        } else {
            projection
                .iter()
                .map(|&i| self.dialect.ident(self.schema.field(i).name()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut sql = format!("SELECT {columns} FROM {}", self.from);
        let mut conditions = Vec::with_capacity(filters.len());
        for f in filters {
            // Only filters answered `Exact` arrive here: each must translate.
            let Some(c) = self.predicate(f) else {
                return Err(DataFusionError::Internal(format!(
                    "filter {f} was accepted for pushdown but does not translate"
                )));
            };
            conditions.push(c);
        }
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        if let Some(n) = limit {
            let _ = write!(sql, " LIMIT {n}");
        }
        Ok(sql)
    }

    /// A column of this table usable in a pushed-down comparison.
    fn column(&self, e: &Expr) -> Option<(&str, &DataType)> {
        let Expr::Column(c) = e else { return None };
        let i = self.schema.index_of(&c.name).ok()?;
        let field = self.schema.field(i);
        self.pushdown[i].then_some((field.name().as_str(), field.data_type()))
    }

    /// Any column of this table (for IS NULL, exact for every type).
    fn any_column(&self, e: &Expr) -> Option<String> {
        let Expr::Column(c) = e else { return None };
        let i = self.schema.index_of(&c.name).ok()?;
        Some(self.dialect.ident(self.schema.field(i).name()))
    }

    /// `expr` as SQL with the same meaning, or `None`.
    pub fn predicate(&self, e: &Expr) -> Option<String> {
        let d = self.dialect;
        match e {
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
                Operator::And | Operator::Or => Some(format!(
                    "({} {} {})",
                    self.predicate(left)?,
                    if *op == Operator::And { "AND" } else { "OR" },
                    self.predicate(right)?
                )),
                Operator::Eq
                | Operator::NotEq
                | Operator::Lt
                | Operator::LtEq
                | Operator::Gt
                | Operator::GtEq => self.comparison(left, *op, right),
                _ => None,
            },
            Expr::Not(inner) => Some(format!("(NOT {})", self.predicate(inner)?)),
            Expr::IsNull(inner) => Some(format!("({} IS NULL)", self.any_column(inner)?)),
            Expr::IsNotNull(inner) => Some(format!("({} IS NOT NULL)", self.any_column(inner)?)),
            Expr::Column(_) => {
                let (name, t) = self.column(e)?;
                (*t == DataType::Boolean).then(|| d.operand(name, t))
            }
            Expr::InList(list) => {
                let (name, t) = self.column(&list.expr)?;
                if list.list.is_empty() {
                    return None;
                }
                let values = list
                    .list
                    .iter()
                    .map(|v| match v {
                        Expr::Literal(s, _) => d.literal(s, t),
                        _ => None,
                    })
                    .collect::<Option<Vec<_>>>()?
                    .join(", ");
                let not = if list.negated { "NOT " } else { "" };
                let exact = format!("({} {not}IN ({values}))", d.operand(name, t));
                Some(self.index_friendly(name, t, &exact, !list.negated, |c| {
                    format!("{c} IN ({values})")
                }))
            }
            Expr::Between(b) => {
                let (name, t) = self.column(&b.expr)?;
                let (Expr::Literal(low, _), Expr::Literal(high, _)) = (&*b.low, &*b.high) else {
                    return None;
                };
                let not = if b.negated { "NOT " } else { "" };
                Some(format!(
                    "({} {not}BETWEEN {} AND {})",
                    d.operand(name, t),
                    d.literal(low, t)?,
                    d.literal(high, t)?
                ))
            }
            Expr::Like(Like {
                negated,
                expr,
                pattern,
                escape_char,
                case_insensitive,
            }) => {
                let (name, t) = self.column(expr)?;
                if *t != DataType::Utf8
                    || *case_insensitive
                    || !matches!(escape_char, None | Some('\\'))
                {
                    return None;
                }
                let Expr::Literal(
                    ScalarValue::Utf8(Some(p))
                    | ScalarValue::LargeUtf8(Some(p))
                    | ScalarValue::Utf8View(Some(p)),
                    _,
                ) = &**pattern
                else {
                    return None;
                };
                Some(format!("({})", d.like(name, p, *negated)?))
            }
            _ => None,
        }
    }

    /// `column op literal` (either way round).
    fn comparison(&self, left: &Expr, op: Operator, right: &Expr) -> Option<String> {
        let d = self.dialect;
        let (name, t, value, op) = match (left, right) {
            (Expr::Column(_), Expr::Literal(v, _)) => {
                let (n, t) = self.column(left)?;
                (n, t, v, op)
            }
            (Expr::Literal(v, _), Expr::Column(_)) => {
                let (n, t) = self.column(right)?;
                (n, t, v, op.swap()?)
            }
            _ => return None,
        };
        let literal = d.literal(value, t)?;
        let exact = format!("({} {op} {literal})", d.operand(name, t));
        Some(
            self.index_friendly(name, t, &exact, op == Operator::Eq, |c| {
                format!("{c} = {literal}")
            }),
        )
    }

    /// For MySQL text equality, `exact` (byte-wise, which no index serves)
    /// preceded by the same test in the column's own collation, which an index
    /// serves and which every exact match also passes.
    fn index_friendly(
        &self,
        name: &str,
        t: &DataType,
        exact: &str,
        equality: bool,
        plain: impl FnOnce(&str) -> String,
    ) -> String {
        match self.dialect {
            Dialect::Mysql if equality && *t == DataType::Utf8 => {
                format!("({} AND {exact})", plain(&self.dialect.ident(name)))
            }
            _ => exact.to_string(),
        }
    }
}

#[async_trait]
impl TableProvider for SqlTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// Exact for what [`SqlTable::predicate`] translates; the rest DataFusion
    /// filters itself.
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| match self.predicate(f) {
                Some(_) => TableProviderFilterPushDown::Exact,
                None => TableProviderFilterPushDown::Unsupported,
            })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let sql = self.select(projection, filters, limit)?;
        let schema = match projection {
            Some(p) => Arc::new(self.schema.project(p)?),
            None => self.schema.clone(),
        };
        let partition = Arc::new(SqlPartition {
            source: self.source.clone(),
            sql,
            schema: schema.clone(),
            reader: self.reader.clone(),
        });
        Ok(Arc::new(StreamingTableExec::try_new(
            schema,
            vec![partition],
            None,
            Vec::new(),
            false,
            limit,
        )?))
    }
}

/// One scan: its SQL, run when the plan executes.
#[derive(Debug)]
struct SqlPartition {
    source: String,
    sql: String,
    schema: SchemaRef,
    reader: Arc<dyn Reader>,
}

impl PartitionStream for SqlPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The query starts at the stream's first poll, not here: a plan executes
    /// all its partitions up front, and a hash join's probe side should not
    /// hold a connection and a running query while its build side is read.
    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let (source, sql) = (self.source.clone(), self.sql.clone());
        let (schema, reader) = (self.schema.clone(), self.reader.clone());
        let start = async move {
            tracing::debug!(source = %source, sql = %sql, "query");
            reader.read(sql, schema)
        };
        let stream = futures::stream::once(start).flatten();
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), stream))
    }
}

/// Logs what a scan read (the proof, in tests, that filters ran in the database).
pub fn log_fetched(source: &str, rows: u64, started: std::time::Instant) {
    tracing::debug!(
        source = %source,
        rows,
        ms = started.elapsed().as_millis() as u64,
        "rows fetched"
    );
}

/// The sending half of a scan: a reader task pushes batches (or one error) here.
pub type BatchSender = mpsc::Sender<DfResult<RecordBatch>>;

/// A bounded channel and the stream of `schema` batches that drains it.
fn channel(schema: SchemaRef) -> (BatchSender, SendableRecordBatchStream) {
    let (tx, rx) = mpsc::channel(CHANNEL_BATCHES);
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    (tx, Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
}

/// Runs a scan's reader on its own task and returns the stream of the batches
/// it sends. `read` gets the sending half and returns its failure; a panic in it
/// (Arrow's, say) becomes `panicked(message)`. Either way the stream ends with
/// that error, never as if every row had been read: the channel stays open,
/// held by a task that awaits the reader, until the error is in it.
pub fn spawn_reader<R>(
    schema: SchemaRef,
    read: impl FnOnce(BatchSender) -> R,
    panicked: impl FnOnce(String) -> DataFusionError + Send + 'static,
) -> SendableRecordBatchStream
where
    R: std::future::Future<Output = DfResult<()>> + Send + 'static,
{
    let (tx, stream) = channel(schema);
    let reader = tokio::spawn(read(tx.clone()));
    tokio::spawn(async move {
        let error = match reader.await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e,
            Err(e) => panicked(join_error_text(e)),
        };
        // Fails only when nobody reads the stream any more.
        let _ = tx.send(Err(error)).await;
    });
    stream
}

/// What a task that did not finish said: its panic's message, or why it was cancelled.
pub fn join_error_text(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(panic) => match panic.downcast::<String>() {
            Ok(text) => format!("it panicked: {text}"),
            Err(panic) => match panic.downcast::<&'static str>() {
                Ok(text) => format!("it panicked: {text}"),
                Err(_) => "it panicked".to_string(),
            },
        },
        Err(e) => e.to_string(),
    }
}

/// A source error as DataFusion carries it through a query.
pub fn external(error: SourceError) -> DataFusionError {
    DataFusionError::External(Box::new(error))
}

impl SourceError {
    /// The message with ` (hint)` appended (for `Config` and `Remote`).
    pub fn with_hint(self, hint: &str) -> Self {
        match self {
            SourceError::Config { name, message } => SourceError::Config {
                name,
                message: format!("{message}: {hint}"),
            },
            SourceError::Remote { name, message } => SourceError::Remote {
                name,
                message: format!("{message}: {hint}"),
            },
            other => other,
        }
    }
}

// ---------------------------------------------------------------- rows to batches

/// One value from a driver, in the shape its column's Arrow type takes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cell<'a> {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    /// Text; for a decimal column, the number as text (`-12.50`).
    Text(&'a str),
    Bytes(&'a [u8]),
    /// Days since 1970-01-01.
    Date(i32),
    /// Microseconds since midnight (time) or since the epoch (timestamp).
    Micros(i64),
}

/// Builds batches of `schema` row by row.
pub struct Batcher {
    schema: SchemaRef,
    columns: Vec<ColumnBuilder>,
    rows: usize,
    /// Bytes of the values appended since the last batch (about: 8 for a
    /// fixed-width value, the length for text and bytes).
    bytes: usize,
    /// A batch is sent once `bytes` reaches this ([`BATCH_BYTES`]).
    byte_cap: usize,
}

impl Batcher {
    pub fn new(schema: SchemaRef) -> Result<Self, String> {
        let columns = schema
            .fields()
            .iter()
            .map(|f| ColumnBuilder::new(f.data_type()))
            .collect::<Result<_, _>>()?;
        Ok(Batcher {
            schema,
            columns,
            rows: 0,
            bytes: 0,
            byte_cap: BATCH_BYTES,
        })
    }

    /// The same with batches sent once they hold `cap` bytes.
    #[cfg(test)]
    pub fn with_byte_cap(mut self, cap: usize) -> Self {
        self.byte_cap = cap;
        self
    }

    /// Appends `cell` to column `i` of the current row; the error says why the
    /// value does not fit the column's type.
    pub fn push(&mut self, i: usize, cell: Cell) -> Result<(), String> {
        self.bytes += match cell {
            Cell::Null => 0,
            Cell::Text(v) => v.len(),
            Cell::Bytes(v) => v.len(),
            _ => 8,
        };
        match self.columns.get_mut(i) {
            Some(c) => c.append(cell),
            None => Err(format!("no column {i}")),
        }
    }

    /// Ends a row; returns a batch every [`BATCH_ROWS`] rows, or sooner once
    /// the values held reach the byte cap.
    pub fn end_row(&mut self) -> Result<Option<RecordBatch>, DataFusionError> {
        self.rows += 1;
        if self.rows >= BATCH_ROWS || self.bytes >= self.byte_cap {
            self.flush()
        } else {
            Ok(None)
        }
    }

    /// The rows so far as a batch (`None` when there are none).
    pub fn flush(&mut self) -> Result<Option<RecordBatch>, DataFusionError> {
        if self.rows == 0 {
            return Ok(None);
        }
        let arrays: Vec<ArrayRef> = self.columns.iter_mut().map(|c| c.finish()).collect();
        let options = RecordBatchOptions::new().with_row_count(Some(self.rows));
        self.rows = 0;
        self.bytes = 0;
        Ok(Some(RecordBatch::try_new_with_options(
            self.schema.clone(),
            arrays,
            &options,
        )?))
    }
}

enum ColumnBuilder {
    Boolean(BooleanBuilder),
    Int8(Int8Builder),
    Int16(Int16Builder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    UInt8(UInt8Builder),
    UInt16(UInt16Builder),
    UInt32(UInt32Builder),
    UInt64(UInt64Builder),
    Float32(Float32Builder),
    Float64(Float64Builder),
    Decimal128(Decimal128Builder, u8, i8),
    Decimal256(Decimal256Builder, u8, i8),
    Utf8(StringBuilder),
    Binary(BinaryBuilder),
    Date32(Date32Builder),
    Time64(Time64MicrosecondBuilder),
    Timestamp(TimestampMicrosecondBuilder),
}

macro_rules! int_append {
    ($b:expr, $t:ty, $cell:expr) => {
        match $cell {
            Cell::Int(v) => <$t>::try_from(v)
                .map(|v| $b.append_value(v))
                .map_err(|_| format!("{v} is out of range for {}", stringify!($t))),
            Cell::UInt(v) => <$t>::try_from(v)
                .map(|v| $b.append_value(v))
                .map_err(|_| format!("{v} is out of range for {}", stringify!($t))),
            Cell::Bool(v) => {
                $b.append_value(<$t>::from(v));
                Ok(())
            }
            other => Err(mismatch(&other, stringify!($t))),
        }
    };
}

impl ColumnBuilder {
    fn new(t: &DataType) -> Result<Self, String> {
        let n = BATCH_ROWS;
        Ok(match t {
            DataType::Boolean => Self::Boolean(BooleanBuilder::with_capacity(n)),
            DataType::Int8 => Self::Int8(Int8Builder::with_capacity(n)),
            DataType::Int16 => Self::Int16(Int16Builder::with_capacity(n)),
            DataType::Int32 => Self::Int32(Int32Builder::with_capacity(n)),
            DataType::Int64 => Self::Int64(Int64Builder::with_capacity(n)),
            DataType::UInt8 => Self::UInt8(UInt8Builder::with_capacity(n)),
            DataType::UInt16 => Self::UInt16(UInt16Builder::with_capacity(n)),
            DataType::UInt32 => Self::UInt32(UInt32Builder::with_capacity(n)),
            DataType::UInt64 => Self::UInt64(UInt64Builder::with_capacity(n)),
            DataType::Float32 => Self::Float32(Float32Builder::with_capacity(n)),
            DataType::Float64 => Self::Float64(Float64Builder::with_capacity(n)),
            DataType::Decimal128(p, s) => Self::Decimal128(
                Decimal128Builder::with_capacity(n)
                    .with_precision_and_scale(*p, *s)
                    .map_err(|e| e.to_string())?,
                *p,
                *s,
            ),
            DataType::Decimal256(p, s) => Self::Decimal256(
                Decimal256Builder::with_capacity(n)
                    .with_precision_and_scale(*p, *s)
                    .map_err(|e| e.to_string())?,
                *p,
                *s,
            ),
            DataType::Utf8 => Self::Utf8(StringBuilder::with_capacity(n, n * 16)),
            DataType::Binary => Self::Binary(BinaryBuilder::with_capacity(n, n * 16)),
            DataType::Date32 => Self::Date32(Date32Builder::with_capacity(n)),
            DataType::Time64(TimeUnit::Microsecond) => {
                Self::Time64(Time64MicrosecondBuilder::with_capacity(n))
            }
            DataType::Timestamp(TimeUnit::Microsecond, tz) => Self::Timestamp(
                TimestampMicrosecondBuilder::with_capacity(n).with_timezone_opt(tz.clone()),
            ),
            other => return Err(format!("no reader for Arrow type {other}")),
        })
    }

    fn append(&mut self, cell: Cell) -> Result<(), String> {
        if cell == Cell::Null {
            self.append_null();
            return Ok(());
        }
        match self {
            Self::Boolean(b) => match cell {
                Cell::Bool(v) => b.append_value(v),
                Cell::Int(v) => b.append_value(v != 0),
                Cell::UInt(v) => b.append_value(v != 0),
                other => return Err(mismatch(&other, "a boolean")),
            },
            Self::Int8(b) => return int_append!(b, i8, cell),
            Self::Int16(b) => return int_append!(b, i16, cell),
            Self::Int32(b) => return int_append!(b, i32, cell),
            Self::Int64(b) => return int_append!(b, i64, cell),
            Self::UInt8(b) => return int_append!(b, u8, cell),
            Self::UInt16(b) => return int_append!(b, u16, cell),
            Self::UInt32(b) => return int_append!(b, u32, cell),
            Self::UInt64(b) => return int_append!(b, u64, cell),
            Self::Float32(b) => match cell {
                Cell::Float(v) => b.append_value(v as f32),
                Cell::Int(v) => b.append_value(v as f32),
                Cell::UInt(v) => b.append_value(v as f32),
                other => return Err(mismatch(&other, "a float")),
            },
            Self::Float64(b) => match cell {
                Cell::Float(v) => b.append_value(v),
                Cell::Int(v) => b.append_value(v as f64),
                Cell::UInt(v) => b.append_value(v as f64),
                other => return Err(mismatch(&other, "a double")),
            },
            Self::Decimal128(b, p, s) => {
                let v = decimal_cell(cell, *p, *s)?;
                let v = v
                    .to_i128()
                    .filter(|v| Decimal128Type::is_valid_decimal_precision(*v, *p))
                    .ok_or_else(|| format!("{} does not fit decimal({p},{s})", show(&cell)))?;
                b.append_value(v);
            }
            Self::Decimal256(b, p, s) => {
                let v = decimal_cell(cell, *p, *s)?;
                if !Decimal256Type::is_valid_decimal_precision(v, *p) {
                    return Err(format!("{} does not fit decimal({p},{s})", show(&cell)));
                }
                b.append_value(v);
            }
            Self::Utf8(b) => match cell {
                Cell::Text(v) => b.append_value(v),
                Cell::Bytes(v) => match std::str::from_utf8(v) {
                    Ok(v) => b.append_value(v),
                    Err(_) => return Err(format!("{} is not UTF-8 text", show(&cell))),
                },
                Cell::Int(v) => b.append_value(v.to_string()),
                Cell::UInt(v) => b.append_value(v.to_string()),
                Cell::Float(v) => b.append_value(v.to_string()),
                other => return Err(mismatch(&other, "text")),
            },
            Self::Binary(b) => match cell {
                Cell::Bytes(v) => b.append_value(v),
                Cell::Text(v) => b.append_value(v.as_bytes()),
                other => return Err(mismatch(&other, "bytes")),
            },
            Self::Date32(b) => match cell {
                Cell::Date(v) => b.append_value(v),
                other => return Err(mismatch(&other, "a date")),
            },
            Self::Time64(b) => match cell {
                Cell::Micros(v) => b.append_value(v),
                other => return Err(mismatch(&other, "a time")),
            },
            Self::Timestamp(b) => match cell {
                Cell::Micros(v) => b.append_value(v),
                other => return Err(mismatch(&other, "a timestamp")),
            },
        }
        Ok(())
    }

    fn append_null(&mut self) {
        match self {
            Self::Boolean(b) => b.append_null(),
            Self::Int8(b) => b.append_null(),
            Self::Int16(b) => b.append_null(),
            Self::Int32(b) => b.append_null(),
            Self::Int64(b) => b.append_null(),
            Self::UInt8(b) => b.append_null(),
            Self::UInt16(b) => b.append_null(),
            Self::UInt32(b) => b.append_null(),
            Self::UInt64(b) => b.append_null(),
            Self::Float32(b) => b.append_null(),
            Self::Float64(b) => b.append_null(),
            Self::Decimal128(b, ..) => b.append_null(),
            Self::Decimal256(b, ..) => b.append_null(),
            Self::Utf8(b) => b.append_null(),
            Self::Binary(b) => b.append_null(),
            Self::Date32(b) => b.append_null(),
            Self::Time64(b) => b.append_null(),
            Self::Timestamp(b) => b.append_null(),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Self::Boolean(b) => Arc::new(b.finish()),
            Self::Int8(b) => Arc::new(b.finish()),
            Self::Int16(b) => Arc::new(b.finish()),
            Self::Int32(b) => Arc::new(b.finish()),
            Self::Int64(b) => Arc::new(b.finish()),
            Self::UInt8(b) => Arc::new(b.finish()),
            Self::UInt16(b) => Arc::new(b.finish()),
            Self::UInt32(b) => Arc::new(b.finish()),
            Self::UInt64(b) => Arc::new(b.finish()),
            Self::Float32(b) => Arc::new(b.finish()),
            Self::Float64(b) => Arc::new(b.finish()),
            Self::Decimal128(b, ..) => Arc::new(b.finish()),
            Self::Decimal256(b, ..) => Arc::new(b.finish()),
            Self::Utf8(b) => Arc::new(b.finish()),
            Self::Binary(b) => Arc::new(b.finish()),
            Self::Date32(b) => Arc::new(b.finish()),
            Self::Time64(b) => Arc::new(b.finish()),
            Self::Timestamp(b) => Arc::new(b.finish()),
        }
    }
}

/// A value as a message shows it.
pub fn show(cell: &Cell) -> String {
    match cell {
        Cell::Null => "NULL".into(),
        Cell::Bool(v) => v.to_string(),
        Cell::Int(v) => v.to_string(),
        Cell::UInt(v) => v.to_string(),
        Cell::Float(v) => v.to_string(),
        Cell::Text(v) => format!("'{}'", clip(v)),
        Cell::Bytes(v) => match std::str::from_utf8(v) {
            Ok(s) => format!("'{}'", clip(s)),
            Err(_) => format!("{} bytes", v.len()),
        },
        Cell::Date(v) => date_from_days(i64::from(*v))
            .map(|d| d.to_string())
            .unwrap_or_else(|| format!("day {v}")),
        Cell::Micros(v) => format!("{v} µs"),
    }
}

fn clip(text: &str) -> String {
    if text.chars().count() > 60 {
        format!("{}...", text.chars().take(60).collect::<String>())
    } else {
        text.to_string()
    }
}

fn mismatch(cell: &Cell, wanted: &str) -> String {
    format!("{} is not {wanted}", show(cell))
}

/// A cell as a decimal of scale `s`, rounded half away from zero.
fn decimal_cell(cell: Cell, p: u8, s: i8) -> Result<i256, String> {
    let text = match cell {
        Cell::Text(t) => t.trim().to_string(),
        Cell::Bytes(b) => std::str::from_utf8(b)
            .map_err(|_| format!("{} is not a number", show(&cell)))?
            .trim()
            .to_string(),
        Cell::Int(v) => v.to_string(),
        Cell::UInt(v) => v.to_string(),
        // The shortest text that reads back as the same double (`12.345`, not
        // 12.3449999...), so that rounding follows the digits as written.
        Cell::Float(v) if v.is_finite() => v.to_string(),
        other => return Err(mismatch(&other, &format!("a decimal({p},{s})"))),
    };
    round_decimal(&text, s).ok_or_else(|| format!("{} is not a decimal({p},{s})", show(&cell)))
}

/// `text` scaled by 10^s and rounded half away from zero, or `None`.
pub fn round_decimal(text: &str, s: i8) -> Option<i256> {
    if s >= 75 {
        return parse_decimal::<Decimal256Type>(text, 76, s).ok();
    }
    let wide = parse_decimal::<Decimal256Type>(text, 76, s + 1).ok()?;
    let ten = i256::from_i128(10);
    let q = wide.checked_div(ten)?;
    let r = wide.checked_rem(ten)?;
    let five = i256::from_i128(5);
    if r.checked_abs()? >= five {
        q.checked_add(if wide.is_negative() {
            i256::from_i128(-1)
        } else {
            i256::from_i128(1)
        })
    } else {
        Some(q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::logical_expr::{col, lit};
    use datafusion::prelude::Expr;

    const MYSQL: Dialect = Dialect::Mysql;

    #[derive(Debug)]
    struct NoReader;
    impl Reader for NoReader {
        fn read(&self, _sql: String, schema: SchemaRef) -> SendableRecordBatchStream {
            channel(schema).1
        }
    }

    fn one_int_batch(schema: &SchemaRef) -> RecordBatch {
        let mut b = Batcher::new(schema.clone()).unwrap();
        b.push(0, Cell::Int(1)).unwrap();
        b.end_row().unwrap();
        b.flush().unwrap().unwrap()
    }

    /// Everything a stream yields, errors as their text.
    async fn drain(mut stream: SendableRecordBatchStream) -> Vec<Result<usize, String>> {
        let mut out = Vec::new();
        while let Some(item) = stream.next().await {
            out.push(item.map(|b| b.num_rows()).map_err(|e| e.to_string()));
        }
        out
    }

    #[tokio::test]
    async fn a_reader_that_panics_or_fails_ends_its_stream_with_an_error() {
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, true)]));
        let batch = one_int_batch(&schema);
        let panicked = |text: String| DataFusionError::Execution(format!("reader: {text}"));
        // A panic after one batch (as Arrow's on a 2 GiB string column).
        let sent = batch.clone();
        let stream = spawn_reader(
            schema.clone(),
            |tx| async move {
                tx.send(Ok(sent)).await.unwrap();
                panic!("byte array offset overflow");
            },
            panicked,
        );
        let items = drain(stream).await;
        assert_eq!(items.len(), 2, "{items:?}");
        assert_eq!(items[0], Ok(1));
        let err = items[1].clone().unwrap_err();
        assert!(
            err.contains("reader: it panicked: byte array offset overflow"),
            "{err}"
        );
        // A panic with a formatted message, before any batch.
        let stream = spawn_reader(
            schema.clone(),
            |_tx| async move {
                let n = 3;
                panic!("column {n}");
            },
            panicked,
        );
        let items = drain(stream).await;
        assert_eq!(items.len(), 1, "{items:?}");
        assert!(
            items[0]
                .clone()
                .unwrap_err()
                .contains("it panicked: column 3")
        );
        // A reader that returns its failure.
        let sent = batch.clone();
        let stream = spawn_reader(
            schema.clone(),
            |tx| async move {
                tx.send(Ok(sent)).await.unwrap();
                Err(DataFusionError::Execution("the server went away".into()))
            },
            panicked,
        );
        let items = drain(stream).await;
        assert_eq!(items.len(), 2, "{items:?}");
        assert!(
            items[1]
                .clone()
                .unwrap_err()
                .contains("the server went away")
        );
        // One that finishes: its batches, then the end.
        let stream = spawn_reader(
            schema.clone(),
            |tx| async move {
                tx.send(Ok(batch)).await.unwrap();
                Ok(())
            },
            panicked,
        );
        assert_eq!(drain(stream).await, vec![Ok(1)]);
    }

    /// Counts the scans started.
    #[derive(Debug, Default)]
    struct CountingReader(std::sync::atomic::AtomicUsize);
    impl Reader for CountingReader {
        fn read(&self, _sql: String, schema: SchemaRef) -> SendableRecordBatchStream {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            channel(schema).1
        }
    }

    #[tokio::test]
    async fn a_scan_starts_its_query_at_the_first_poll() {
        let reader = Arc::new(CountingReader::default());
        let partition = SqlPartition {
            source: "t".into(),
            sql: "SELECT 1".into(),
            schema: Arc::new(Schema::empty()),
            reader: reader.clone(),
        };
        let started = || reader.0.load(std::sync::atomic::Ordering::SeqCst);
        let mut stream = partition.execute(Arc::new(TaskContext::default()));
        assert_eq!(started(), 0, "started at execute()");
        assert!(stream.next().await.is_none());
        assert_eq!(started(), 1);
        // A stream dropped unpolled never starts its query.
        drop(partition.execute(Arc::new(TaskContext::default())));
        assert_eq!(started(), 1);
    }

    #[test]
    fn a_batch_is_sent_early_once_its_values_reach_the_byte_cap() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("pad", DataType::Utf8, true),
        ]));
        let mut b = Batcher::new(schema).unwrap().with_byte_cap(100);
        let pad = "x".repeat(40);
        let mut batches = Vec::new();
        for i in 0..10 {
            b.push(0, Cell::Int(i)).unwrap();
            b.push(1, Cell::Text(&pad)).unwrap();
            if let Some(batch) = b.end_row().unwrap() {
                batches.push(batch.num_rows());
            }
        }
        if let Some(batch) = b.flush().unwrap() {
            batches.push(batch.num_rows());
        }
        // 48 bytes a row: a batch every 3 rows (144 bytes >= 100), then the rest.
        assert_eq!(batches, vec![3, 3, 3, 1]);
        // Without a cap reached, rows wait for BATCH_ROWS.
        let mut b = Batcher::new(Arc::new(Schema::new(vec![Field::new(
            "pad",
            DataType::Utf8,
            true,
        )])))
        .unwrap();
        for _ in 0..100 {
            b.push(0, Cell::Text(&pad)).unwrap();
            assert!(b.end_row().unwrap().is_none());
        }
    }

    fn table(dialect: Dialect, relation: Relation) -> SqlTable {
        let c = |name: &str, data_type: DataType, pushdown: bool| SqlColumn {
            name: name.into(),
            data_type,
            pushdown,
        };
        SqlTable::new(
            "t",
            dialect,
            &relation,
            vec![
                c("id", DataType::Int64, true),
                c("note", DataType::Utf8, true),
                c("amount", DataType::Decimal128(10, 2), true),
                c("d", DataType::Date32, true),
                c(
                    "ts",
                    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                    true,
                ),
                c("flag", DataType::Boolean, true),
                c("f32", DataType::Float32, false),
                c("we`ird", DataType::Int32, true),
            ],
            Arc::new(NoReader),
        )
        .unwrap()
    }

    fn orders(dialect: Dialect) -> SqlTable {
        table(dialect, Relation::Table("shop.orders".into()))
    }

    #[test]
    fn identifiers_are_quoted_with_quotes_doubled() {
        assert_eq!(MYSQL.ident("a`b"), "`a``b`");
        assert_eq!(Dialect::Sqlite.ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(table_parts("shop.orders"), vec!["shop", "orders"]);
        assert_eq!(table_parts("`my.db`.\"t\"\"x\""), vec!["my.db", "t\"x"]);
        assert_eq!(split_table("orders"), Ok((None, "orders".into())));
        assert_eq!(
            split_table("\"order lines\""),
            Ok((None, "order lines".into()))
        );
        assert_eq!(
            split_table("shop.`my.t`"),
            Ok((Some("shop".into()), "my.t".into()))
        );
        for bad in ["a.b.c", "shop.", ".t", "", "\"\""] {
            let e = split_table(bad).unwrap_err();
            assert!(e.contains("is not a table name"), "{bad}: {e}");
        }
        assert_eq!(
            MYSQL.from(&Relation::Table("shop.orders".into())),
            "`shop`.`orders`"
        );
        assert_eq!(
            MYSQL.from(&Relation::Query("SELECT 1 AS a # one\n".into())),
            "(SELECT 1 AS a # one\n) AS kpiforge_q"
        );
        assert_eq!(
            Dialect::Sqlite.from(&Relation::Query("SELECT 1 AS a;\n".into())),
            "(SELECT 1 AS a\n) AS kpiforge_q"
        );
    }

    #[test]
    fn strings_are_escaped_per_dialect() {
        let nasty = r#"say "hi" it's a \ back'); DROP TABLE t; --"#;
        // MySQL: no backslash ever reaches the SQL text (its meaning depends on
        // the session's sql_mode); such text goes as hex.
        assert_eq!(
            MYSQL.string(nasty),
            "_utf8mb4 X'736179202268692220697427732061205C206261636B27293B2044524F50205441424C4520743B202D2D'"
        );
        assert_eq!(MYSQL.string(r#"say "hi" it's"#), r#"'say "hi" it''s'"#);
        assert_eq!(MYSQL.string("a\0b"), "_utf8mb4 X'610062'");
        assert_eq!(MYSQL.string("né"), "'né'");
        assert_eq!(MYSQL.string(""), "''");
        assert_eq!(
            Dialect::Sqlite.string(nasty),
            r#"'say "hi" it''s a \ back''); DROP TABLE t; --'"#
        );
    }

    #[test]
    fn select_names_only_projected_columns_and_translated_filters() {
        let t = orders(MYSQL);
        let filters = vec![col("id").gt(lit(10i64)), col("note").eq(lit("it's"))];
        assert_eq!(
            t.select(Some(&vec![0, 2]), &filters, Some(5)).unwrap(),
            "SELECT `id`, `amount` FROM `shop`.`orders` WHERE (`id` > 10) AND \
             (`note` = 'it''s' AND (CAST(CONVERT(`note` USING utf8mb4) AS BINARY) = 'it''s')) LIMIT 5"
        );
        assert_eq!(
            t.select(Some(&vec![]), &[], None).unwrap(),
            "SELECT 1 FROM `shop`.`orders`"
        );
        let q = table(Dialect::Sqlite, Relation::Query("SELECT * FROM x".into()));
        assert_eq!(
            q.select(Some(&vec![1]), &[col("note").eq(lit(r#"say "hi""#))], None)
                .unwrap(),
            "SELECT \"note\" FROM (SELECT * FROM x\n) AS kpiforge_q WHERE (\"note\" COLLATE BINARY = 'say \"hi\"')"
        );
    }

    fn pushed(t: &SqlTable, e: Expr) -> Option<String> {
        t.predicate(&e)
    }

    #[test]
    fn literals_of_each_type() {
        let t = orders(MYSQL);
        let dec = lit(ScalarValue::Decimal128(Some(-1205), 10, 2));
        assert_eq!(
            pushed(&t, col("amount").lt_eq(dec)).unwrap(),
            "(`amount` <= -12.05)"
        );
        assert_eq!(
            pushed(&t, col("amount").gt(lit(2.5f64))).unwrap(),
            "(`amount` > 2.5e0)"
        );
        assert_eq!(
            pushed(&t, col("d").gt_eq(lit(ScalarValue::Date32(Some(20454))))).unwrap(),
            "(`d` >= DATE'2026-01-01')"
        );
        let ts = lit(ScalarValue::TimestampNanosecond(
            Some(1_767_225_600_123_456_000),
            Some("+01:00".into()),
        ));
        assert_eq!(
            pushed(&t, col("ts").lt(ts)).unwrap(),
            "(`ts` < TIMESTAMP'2026-01-01 00:00:00.123456')"
        );
        // A naive timestamp against a zoned column does not compare the same way.
        let naive = lit(ScalarValue::TimestampMicrosecond(Some(0), None));
        assert_eq!(pushed(&t, col("ts").lt(naive)), None);
        assert_eq!(pushed(&t, col("flag")).unwrap(), "(`flag` <> 0)");
        assert_eq!(
            pushed(&t, col("flag").eq(lit(false))).unwrap(),
            "((`flag` <> 0) = 0)"
        );
        assert_eq!(
            pushed(&t, lit(3i64).lt(col("id"))).unwrap(),
            "(`id` > 3)",
            "a literal on the left swaps the comparison"
        );
        // Not pushable: FLOAT column, NaN, text against a number, column vs column.
        assert_eq!(pushed(&t, col("f32").eq(lit(1.5f32))), None);
        assert_eq!(pushed(&t, col("id").eq(lit(f64::NAN))), None);
        assert_eq!(pushed(&t, col("id").eq(lit("1"))), None);
        assert_eq!(pushed(&t, col("id").eq(col("amount"))), None);
        assert_eq!(
            pushed(&t, col("id").eq(lit(ScalarValue::Int64(None)))),
            None
        );
        assert_eq!(
            pushed(&t, col("we`ird").eq(lit(1i32))).unwrap(),
            "(`we``ird` = 1)"
        );
    }

    #[test]
    fn boolean_logic_in_lists_between_and_nulls() {
        let t = orders(MYSQL);
        let e = col("id").in_list(vec![lit(1i64), lit(2i64)], false).and(
            col("note")
                .is_not_null()
                .or(!col("id").between(lit(1i64), lit(9i64))),
        );
        assert_eq!(
            pushed(&t, e).unwrap(),
            "((`id` IN (1, 2)) AND ((`note` IS NOT NULL) OR (NOT (`id` BETWEEN 1 AND 9))))"
        );
        assert_eq!(
            pushed(&t, col("note").in_list(vec![lit("a"), lit("b'")], true)).unwrap(),
            "(CAST(CONVERT(`note` USING utf8mb4) AS BINARY) NOT IN ('a', 'b'''))"
        );
        // IS NULL works on any column, even one not pushed otherwise.
        assert_eq!(pushed(&t, col("f32").is_null()).unwrap(), "(`f32` IS NULL)");
        // Any untranslatable part makes the whole filter stay in DataFusion.
        assert_eq!(
            pushed(&t, col("id").gt(lit(1i64)).or(col("f32").gt(lit(1f32)))),
            None
        );
    }

    #[test]
    fn like_keeps_datafusion_semantics() {
        let t = orders(MYSQL);
        assert_eq!(
            pushed(&t, col("note").like(lit(r"50\%_off%"))).unwrap(),
            "(CONVERT(`note` USING utf8mb4) COLLATE utf8mb4_bin LIKE _utf8mb4 X'35305C255F6F666625' \
             ESCAPE _utf8mb4 X'5C')"
        );
        assert_eq!(pushed(&t, col("note").ilike(lit("a%"))), None);
        assert_eq!(pushed(&t, col("note").like(lit(r"ends\"))), None);
        let s = orders(Dialect::Sqlite);
        assert_eq!(
            pushed(&s, col("note").not_like(lit(r"a*?[\%_%it's"))).unwrap(),
            r#"("note" NOT GLOB 'a[*][?][[]%?*it''s')"#
        );
    }

    #[test]
    fn not_found_messages_list_the_tables_there() {
        let names: Vec<String> = (0..25).map(|i| format!("t{i}")).collect();
        assert_eq!(
            table_not_found("x", " in schema `main`", Some(&names[..2])),
            "table `x` not found in schema `main`: tables there: t0, t1"
        );
        assert!(table_not_found("x", "", Some(&names)).ends_with("t18, t19, ... (25 in all)"));
        assert_eq!(
            table_not_found("x", "", Some(&[])),
            "table `x` not found: it has no tables"
        );
        assert_eq!(
            table_not_found("x", "", None),
            "table `x` not found: check the name"
        );
        assert_eq!(human(std::time::Duration::from_secs(3600)), "1h");
        assert_eq!(human(std::time::Duration::from_secs(300)), "5m");
        assert_eq!(human(std::time::Duration::from_millis(1500)), "1.5s");
    }

    #[test]
    fn decimals_render_and_round() {
        assert_eq!(decimal_text("12345", 2), "123.45");
        assert_eq!(decimal_text("-5", 3), "-0.005");
        assert_eq!(decimal_text("7", -2), "700");
        assert_eq!(decimal_text("0", 2), "0.00");
        assert_eq!(round_decimal("2.5", 2), Some(i256::from_i128(250)));
        assert_eq!(round_decimal("2.505", 2), Some(i256::from_i128(251)));
        assert_eq!(round_decimal("-2.505", 2), Some(i256::from_i128(-251)));
        assert_eq!(round_decimal("2.5049", 2), Some(i256::from_i128(250)));
        assert_eq!(round_decimal("abc", 2), None);
    }

    #[test]
    fn batcher_checks_ranges_and_emits_counted_empty_batches() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int8, true),
            Field::new("d", DataType::Decimal128(5, 2), true),
        ]));
        let mut b = Batcher::new(schema).unwrap();
        b.push(0, Cell::Int(127)).unwrap();
        b.push(1, Cell::Text("123.456")).unwrap();
        b.end_row().unwrap();
        assert!(
            b.push(0, Cell::Int(128))
                .unwrap_err()
                .contains("out of range")
        );
        assert!(
            b.push(1, Cell::Text("1234.5"))
                .unwrap_err()
                .contains("does not fit")
        );
        let mut none = Batcher::new(Arc::new(Schema::empty())).unwrap();
        for _ in 0..3 {
            none.end_row().unwrap();
        }
        assert_eq!(none.flush().unwrap().unwrap().num_rows(), 3);
        assert!(none.flush().unwrap().is_none());
    }
}
