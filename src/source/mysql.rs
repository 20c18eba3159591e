//! MySQL and MariaDB sources, read with `mysql_async` directly (see docs/sources.md
//! for why not through datafusion-table-providers).
//!
//! Registration connects once: it settles TLS (`prefer` falls back to plain when
//! the server offers none) and prepares `SELECT * FROM <relation>` to learn the
//! columns without fetching a row. Every scan then opens its own connection,
//! runs its `SELECT` with the binary protocol and streams the rows (see
//! `sql.rs`). Sessions run in UTC.

use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use datafusion::catalog::TableProvider;
use datafusion::execution::SendableRecordBatchStream;
use futures::StreamExt;
use mysql_async::consts::{ColumnFlags, ColumnType};
use mysql_async::prelude::Queryable;
use mysql_async::{
    Column, Conn, DriverError, Error as MyError, IoError, Opts, OptsBuilder, Row, SslOpts,
    UrlError, Value,
};

use super::SourceError;
use super::sql::{
    BatchSender, Batcher, Cell, Dialect, Reader, SqlColumn, SqlTable, external, human, log_fetched,
    show, spawn_reader, split_table, table_not_found,
};
use crate::config::{DatabaseSource, Relation, TlsMode};

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
    let mut server = Server::new(name, cfg)?;
    let mut conn = match server.connect().await {
        Err(f) if f.no_tls && server.tls == TlsMode::Prefer => {
            tracing::debug!(
                source = %name,
                "{}: connecting without TLS (`tls: {{mode: prefer}}`)",
                f.message
            );
            server.opts = server.plain.clone();
            server.connect().await
        }
        other => other,
    }
    .map_err(|f| server.remote(f))?;
    let described = describe(&server, &mut conn, &cfg.relation).await;
    close(conn, true).await;
    let columns = described.map_err(|f| server.remote(f))?;
    let relation = &cfg.relation;
    let table = SqlTable::new(
        name,
        Dialect::Mysql,
        relation,
        columns,
        Arc::new(MysqlReader {
            server: Arc::new(server),
        }),
    )?;
    Ok(Arc::new(table))
}

/// Where and how to connect, for registration and every scan.
struct Server {
    source: String,
    /// Options as used (TLS settled).
    opts: Opts,
    /// The same without TLS, for `prefer`.
    plain: Opts,
    tls: TlsMode,
    host: String,
    port: u16,
    database: Option<String>,
    user: String,
    /// Only to make sure no message ever shows it.
    password: Option<String>,
    connect_timeout: Duration,
    query_timeout: Duration,
    retries: u32,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MySQL {}", self.at())
    }
}

/// Why a connection or query failed, as the user reads it.
#[derive(Debug)]
struct Failure {
    message: String,
    /// Worth another attempt: refused, reset, timed out, server gone away.
    transient: bool,
    /// TLS was asked for and could not be had.
    no_tls: bool,
    /// The URL itself is wrong (a configuration error).
    config: bool,
}

impl Failure {
    /// Unscrubbed: make failures with [`Server::failure`].
    fn new(message: impl Into<String>, transient: bool) -> Self {
        Failure {
            message: message.into(),
            transient,
            no_tls: false,
            config: false,
        }
    }
}

impl Server {
    fn new(name: &str, cfg: &DatabaseSource) -> Result<Self, SourceError> {
        let config = |message: String| SourceError::Config {
            name: name.to_string(),
            message,
        };
        // mysql_async knows only the `mysql://` scheme.
        let url = match cfg.url.strip_prefix("mariadb://") {
            Some(rest) => format!("mysql://{rest}"),
            None => cfg.url.clone(),
        };
        let (url, password) = encode_user_info(&url);
        let parsed = Opts::from_url(&url).map_err(|e| {
            let message = format!(
                "the URL `{}` is not valid ({}): write it as mysql://user:password@host:3306/database",
                cfg.display(),
                url_problem(&e)
            );
            config(scrub(message, password.as_deref()))
        })?;
        let host = parsed.ip_or_hostname().to_string();
        let port = parsed.tcp_port();
        let database = parsed.db_name().map(str::to_string);
        let user = parsed.user().unwrap_or("").to_string();
        let password = parsed.pass().map(str::to_string);
        let base = OptsBuilder::from_opts(parsed)
            .prefer_socket(false)
            .init(vec!["SET NAMES utf8mb4", "SET time_zone = '+00:00'"]);
        let ssl = match cfg.tls {
            TlsMode::Disable => None,
            // Encryption without checking the certificate (as libpq's prefer/require).
            TlsMode::Prefer | TlsMode::Require => Some(
                SslOpts::default()
                    .with_danger_accept_invalid_certs(true)
                    .with_danger_skip_domain_validation(true),
            ),
            TlsMode::VerifyCa | TlsMode::VerifyFull => {
                let mut ssl = SslOpts::default()
                    .with_danger_skip_domain_validation(cfg.tls == TlsMode::VerifyCa);
                if let Some(ca) = &cfg.ca {
                    ssl = ssl.with_root_certs(vec![ca.clone().into()]);
                }
                Some(ssl)
            }
        };
        let plain = Opts::from(base.clone().ssl_opts(None::<SslOpts>));
        let opts = Opts::from(base.ssl_opts(ssl));
        Ok(Server {
            source: name.to_string(),
            opts,
            plain,
            tls: cfg.tls,
            host,
            port,
            database,
            user,
            password,
            connect_timeout: cfg.connect_timeout,
            query_timeout: cfg.query_timeout,
            retries: cfg.retries,
        })
    }

    fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    fn database_name(&self) -> &str {
        self.database.as_deref().unwrap_or("(none)")
    }

    /// `127.0.0.1:3306 (database test, user 'kpi')`.
    fn at(&self) -> String {
        format!(
            "{} (database {}, user '{}')",
            self.host_port(),
            self.database_name(),
            self.user
        )
    }

    /// A failure whose message (often holding the driver's or the server's
    /// words) never shows the password, whether it is logged or returned.
    fn failure(&self, message: impl Into<String>, transient: bool) -> Failure {
        Failure::new(scrub(message.into(), self.password.as_deref()), transient)
    }

    /// The failure as the source's error.
    fn remote(&self, f: Failure) -> SourceError {
        let message = scrub(f.message, self.password.as_deref());
        if f.config {
            SourceError::Config {
                name: self.source.clone(),
                message,
            }
        } else {
            SourceError::Remote {
                name: self.source.clone(),
                message,
            }
        }
    }

    /// Connects, retrying transient failures with exponential backoff.
    async fn connect(&self) -> Result<Conn, Failure> {
        let mut attempt = 0;
        loop {
            match self.connect_once().await {
                Ok(conn) => return Ok(conn),
                Err(f) if f.transient && attempt < self.retries => {
                    attempt += 1;
                    self.backoff(attempt, &f).await;
                }
                Err(f) => return Err(self.attempts(f, attempt + 1)),
            }
        }
    }

    async fn backoff(&self, attempt: u32, f: &Failure) {
        // 200 ms, 400 ms, 800 ms, ... at most 5 s.
        let wait = Duration::from_millis(200u64 << attempt.saturating_sub(1).min(5))
            .min(Duration::from_secs(5));
        tracing::warn!(
            source = %self.source,
            attempt,
            of = self.retries,
            "{}; retrying in {} ms",
            f.message,
            wait.as_millis()
        );
        tokio::time::sleep(wait).await;
    }

    fn attempts(&self, mut f: Failure, attempts: u32) -> Failure {
        if attempts > 1 {
            f.message.push_str(&format!(" ({attempts} attempts)"));
        }
        f
    }

    async fn connect_once(&self) -> Result<Conn, Failure> {
        match tokio::time::timeout(self.connect_timeout, Conn::new(self.opts.clone())).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(self.classify(&e)),
            Err(_) => Err(self.failure(
                format!(
                    "could not connect to {} within {}: is the host reachable? (database {}, user '{}'; \
                     raise `connect_timeout` for a slow network)",
                    self.host_port(),
                    human(self.connect_timeout),
                    self.database_name(),
                    self.user
                ),
                true,
            )),
        }
    }

    /// A driver or server error, explained.
    fn classify(&self, e: &MyError) -> Failure {
        let hp = self.host_port();
        let at = self.at();
        match e {
            MyError::Io(IoError::Io(io)) => {
                use std::io::ErrorKind as K;
                match io.kind() {
                    K::ConnectionRefused => self.failure(
                        format!(
                            "connection refused: is MySQL running on {hp}? (database {}, user '{}')",
                            self.database_name(),
                            self.user
                        ),
                        true,
                    ),
                    K::TimedOut => self.failure(
                        format!("connection to {at} timed out ({io}): is the host reachable?"),
                        true,
                    ),
                    K::ConnectionReset
                    | K::ConnectionAborted
                    | K::BrokenPipe
                    | K::UnexpectedEof
                    | K::NotConnected => self.failure(
                        format!(
                            "the connection to {at} was lost ({io}): did the server restart or close it?"
                        ),
                        true,
                    ),
                    K::HostUnreachable | K::NetworkUnreachable => self.failure(
                        format!("cannot reach {at} ({io}): is the host reachable?"),
                        true,
                    ),
                    _ if io.to_string().contains("lookup") => self.failure(
                        format!(
                            "cannot resolve the host `{}` ({io}): check the host in the URL",
                            self.host
                        ),
                        false,
                    ),
                    _ => self.failure(format!("cannot talk to {at}: {io}"), true),
                }
            }
            MyError::Io(IoError::Tls(t)) => Failure {
                no_tls: true,
                ..self.failure(
                    format!(
                        "TLS with {at} failed: {t}: check `tls:` (its `mode`, and `ca` for verify-ca or verify-full)"
                    ),
                    false,
                )
            },
            MyError::Driver(DriverError::NoClientSslFlagFromServer)
                if self.tls == TlsMode::Prefer =>
            {
                Failure {
                    no_tls: true,
                    ..self.failure(format!("the server at {at} does not offer TLS"), false)
                }
            }
            MyError::Driver(DriverError::NoClientSslFlagFromServer) => Failure {
                no_tls: true,
                ..self.failure(
                    format!(
                        "the server at {at} does not offer TLS, which `tls: {{mode: {}}}` requires: \
                         enable TLS on the server, or set `tls: {{mode: prefer}}` to fall back to a plain connection",
                        self.tls.name()
                    ),
                    false,
                )
            },
            MyError::Driver(
                d @ (DriverError::ConnectionClosed
                | DriverError::PacketOutOfOrder
                | DriverError::UnexpectedPacket { .. }),
            ) => self.failure(
                format!("the connection to {at} was lost ({d}): did the server go away?"),
                true,
            ),
            MyError::Driver(d) => self.failure(format!("MySQL driver error with {at}: {d}"), false),
            MyError::Server(s) => self.server_error(s),
            MyError::Url(u) => Failure {
                config: true,
                ..self.failure(format!("the URL is not valid: {}", url_problem(u)), false)
            },
            MyError::Other(o) => self.failure(format!("error with {at}: {o}"), false),
        }
    }

    fn server_error(&self, s: &mysql_async::ServerError) -> Failure {
        let hp = self.host_port();
        let db = self.database_name();
        let user = &self.user;
        let said = format!("{} (error {})", s.message, s.code);
        match s.code {
            1045 => self.failure(
                format!(
                    "authentication failed for user '{user}' on {hp} (database {db}): check the \
                     password in the URL's environment variable (the server said: {said})"
                ),
                false,
            ),
            1044 => self.failure(
                format!(
                    "user '{user}' may not use database '{db}' on {hp}: grant access, or name another database (the server said: {said})"
                ),
                false,
            ),
            1049 => self.failure(
                format!(
                    "unknown database '{db}' on {hp} (user '{user}'): check the database at the end of the URL"
                ),
                false,
            ),
            1046 => self.failure(
                format!(
                    "no database is selected on {hp} (user '{user}'): name one at the end of the URL \
                     (mysql://user@host:3306/database) or write `table: database.table`"
                ),
                false,
            ),
            // Too many connections, shutdown in progress, network errors, lock
            // wait timeout, deadlock, connection killed: worth another attempt.
            1040 | 1053 | 1077 | 1078 | 1079 | 1080 | 1152 | 1153 | 1154 | 1155 | 1156 | 1157
            | 1158 | 1159 | 1160 | 1161 | 1203 | 1205 | 1213 | 1927 | 2006 | 2013 => {
                self.failure(format!("{} on {}", said, self.at()), true)
            }
            _ => self.failure(format!("{said} on {}", self.at()), false),
        }
    }

    /// Runs `sql` and sends its rows as batches of `schema`; returns the rows read.
    async fn stream_rows(
        &self,
        sql: &str,
        schema: SchemaRef,
        tx: &BatchSender,
    ) -> Result<u64, Failure> {
        let mut waited = Duration::ZERO;
        let mut attempt = 0;
        loop {
            let mut conn = match self.connect_once().await {
                Ok(c) => c,
                Err(f) if f.transient && attempt < self.retries => {
                    attempt += 1;
                    self.backoff(attempt, &f).await;
                    continue;
                }
                Err(f) => return Err(self.attempts(f, attempt + 1)),
            };
            let started = Instant::now();
            let executed = tokio::time::timeout(
                self.query_timeout.saturating_sub(waited),
                conn.exec_iter(sql, ()),
            )
            .await;
            waited += started.elapsed();
            let mut result = match executed {
                Ok(Ok(result)) => result,
                Ok(Err(e)) => {
                    let f = self.classify(&e);
                    if f.transient && attempt < self.retries {
                        attempt += 1;
                        self.backoff(attempt, &f).await;
                        continue;
                    }
                    return Err(self.attempts(f, attempt + 1));
                }
                Err(_) => {
                    close(conn, false).await;
                    return Err(self.timed_out());
                }
            };
            // From here on rows may have been sent: no retry, the failure is the query's.
            let outcome = match result.stream::<Row>().await {
                Ok(Some(stream)) => self.pump(stream, schema, tx, &mut waited).await,
                Ok(None) => Ok(Pumped::All(0)),
                Err(e) => Err(self.classify(&e)),
            };
            drop(result);
            close(conn, matches!(outcome, Ok(Pumped::All(_)))).await;
            return outcome.map(|(Pumped::All(rows) | Pumped::Stopped(rows))| rows);
        }
    }

    /// Reads rows into batches and sends them, until the end, an error, a
    /// timeout or the reader of the batches going away.
    async fn pump<S>(
        &self,
        mut stream: S,
        schema: SchemaRef,
        tx: &BatchSender,
        waited: &mut Duration,
    ) -> Result<Pumped, Failure>
    where
        S: futures::Stream<Item = mysql_async::Result<Row>> + Unpin,
    {
        let mut batcher = Batcher::new(schema.clone()).map_err(|m| self.failure(m, false))?;
        let columns = schema.fields().len();
        let mut rows = 0u64;
        loop {
            let started = Instant::now();
            let next = tokio::select! {
                _ = tx.closed() => {
                    // Nobody reads the rows any more (a LIMIT above, an error elsewhere).
                    return Ok(Pumped::Stopped(rows));
                }
                next = tokio::time::timeout(self.query_timeout.saturating_sub(*waited), stream.next()) => next,
            };
            *waited += started.elapsed();
            let row = match next {
                Err(_) => return Err(self.timed_out()),
                Ok(None) => break,
                Ok(Some(Err(e))) => return Err(self.classify(&e)),
                Ok(Some(Ok(row))) => row,
            };
            for i in 0..columns {
                let field = schema.field(i);
                let value = row.as_ref(i).unwrap_or(&Value::NULL);
                let appended = cell(value, field.data_type())
                    .and_then(|c| batcher.push(i, c).map_err(Hint::none));
                if let Err(hint) = appended {
                    return Err(self.failure(
                        format!(
                            "column `{}` on {}: {}{}",
                            field.name(),
                            self.at(),
                            hint.message,
                            hint.hint(field.name())
                        ),
                        false,
                    ));
                }
            }
            rows += 1;
            let batch = batcher
                .end_row()
                .map_err(|e| self.failure(e.to_string(), false))?;
            if let Some(batch) = batch
                && tx.send(Ok(batch)).await.is_err()
            {
                return Ok(Pumped::Stopped(rows));
            }
        }
        if let Some(batch) = batcher
            .flush()
            .map_err(|e| self.failure(e.to_string(), false))?
        {
            let _ = tx.send(Ok(batch)).await;
        }
        Ok(Pumped::All(rows))
    }

    fn timed_out(&self) -> Failure {
        self.failure(
            format!(
                "the query did not finish within {} on {}: raise `query_timeout`, or have it read fewer rows",
                human(self.query_timeout),
                self.at()
            ),
            false,
        )
    }
}

/// How a scan's rows ended, and how many were read.
enum Pumped {
    /// All of them.
    All(u64),
    /// Nobody reads them any more: the rest are left unread.
    Stopped(u64),
}

/// How long a scan that read all of its result waits to say goodbye (COM_QUIT).
const QUIT_WAIT: Duration = Duration::from_secs(1);

/// Closes a scan's connection. `Conn::disconnect` first reads whatever is left
/// of the result, which after an early stop, a failure or a timeout may be most
/// of a table, with no limit in time (and dropping a `Conn` does the same on a
/// task of its own): a result not read to the end gets no time at all, and the
/// dropped future closes the socket. The server stops the query when its next
/// write to the connection fails.
///
/// There is deliberately no `KILL QUERY <id>` from a second connection: behind
/// a load balancer or a proxy that connection may reach another server, where
/// the same id is an unrelated session. Comparing `@@hostname`, `@@port` and
/// `@@server_id` first would cost every scan a round trip and still not prove
/// it (cluster nodes may share them). The cost: a query still computing before
/// its first row may run on the server until it writes (bound it there with
/// `max_statement_time` / `max_execution_time`).
async fn close(conn: Conn, finished: bool) {
    let wait = if finished { QUIT_WAIT } else { Duration::ZERO };
    let _ = tokio::time::timeout(wait, conn.disconnect()).await;
}

/// Learns the columns on `conn`.
async fn describe(
    server: &Server,
    conn: &mut Conn,
    relation: &Relation,
) -> Result<Vec<SqlColumn>, Failure> {
    let sql = format!("SELECT * FROM {}", Dialect::Mysql.from(relation));
    let statement = match tokio::time::timeout(server.query_timeout, conn.prep(&sql)).await {
        Ok(Ok(s)) => s,
        Ok(Err(MyError::Server(s))) if s.code == 1146 => {
            if let Relation::Table(table) = relation {
                return Err(not_found(server, conn, table).await);
            }
            return Err(query_failed(server, relation, &MyError::Server(s)));
        }
        Ok(Err(e)) => return Err(query_failed(server, relation, &e)),
        Err(_) => return Err(server.timed_out()),
    };
    let mut columns = Vec::new();
    let mut unsupported = Vec::new();
    for c in statement.columns().iter() {
        let name = c.name_str().into_owned();
        match arrow_type(c) {
            Ok((data_type, pushdown)) => columns.push(SqlColumn {
                name,
                data_type,
                pushdown,
            }),
            Err((type_name, cast)) => unsupported.push((name, type_name, cast)),
        }
    }
    let _ = conn.close(statement).await;
    if let Some((name, type_name, cast)) = unsupported.first() {
        let what = match relation {
            Relation::Table(t) => format!("`{t}`"),
            Relation::Query(_) => "the query".to_string(),
        };
        let others = match unsupported.len() {
            1 => String::new(),
            n => format!(" ({} more such columns)", n - 1),
        };
        return Err(Failure {
            config: true,
            ..server.failure(
                format!(
                    "column `{name}` of {what} has type {type_name}, which kpiforge cannot read{others}: \
                     convert it in a `query:`, e.g. `query: SELECT {}, ... FROM ...`",
                    cast.replace("{c}", name)
                ),
                false,
            )
        });
    }
    Ok(columns)
}

fn query_failed(server: &Server, relation: &Relation, e: &MyError) -> Failure {
    let mut f = server.classify(e);
    if let (Relation::Query(_), MyError::Server(_)) = (relation, e) {
        f.message = format!("the query does not run: {}", f.message);
    }
    f
}

/// "table `x` not found in database `y` on ...: tables there: a, b".
async fn not_found(server: &Server, conn: &mut Conn, table: &str) -> Failure {
    // Checked before connecting: the split cannot fail here.
    let (schema, name) = split_table(table).unwrap_or((None, table.to_string()));
    let dialect = Dialect::Mysql;
    let database = schema
        .clone()
        .unwrap_or_else(|| server.database_name().to_string());
    let which = match &schema {
        Some(s) => dialect.string(s),
        None => "DATABASE()".to_string(),
    };
    let listed: Result<Vec<String>, _> = conn
        .query(format!(
            "SELECT CAST(table_name AS CHAR) FROM information_schema.tables WHERE table_schema = {which} ORDER BY 1"
        ))
        .await;
    let place = format!(
        " in database `{database}` on {} (user '{}')",
        server.host_port(),
        server.user
    );
    server.failure(
        table_not_found(&name, &place, listed.ok().as_deref()),
        false,
    )
}

/// Passwords shorter than this are not scrubbed from messages by search: one
/// like `330` would garble ordinary text (port `3306` shown as `***6`), and
/// show what the password is. Messages are made of the host, port, database
/// and user and the server's words, never the password: scrubbing is a second
/// line of defence.
const SCRUBBED_LENGTH: usize = 6;

/// `message` with every occurrence of `password` (of [`SCRUBBED_LENGTH`] or
/// more characters) replaced by `***`.
fn scrub(message: String, password: Option<&str>) -> String {
    match password {
        Some(p) if p.chars().count() >= SCRUBBED_LENGTH && message.contains(p) => {
            message.replace(p, "***")
        }
        _ => message,
    }
}

/// `url` with its user and password percent-encoded, and the password as
/// written (decoded). They end at the *last* `@` (as `config::strip_password`
/// reads them), so a password holding `/`, `?`, `#` or `@` is not cut by the
/// URL parser into a host, a path or a query, which messages would then show
/// (`mysql://kpi:/s3cret@db/shop` has host `kpi` and database `s3cret@db`
/// otherwise). A `%XX` already there is kept.
fn encode_user_info(url: &str) -> (String, Option<String>) {
    let Some(scheme_end) = url.find("://") else {
        return (url.to_string(), None);
    };
    let rest = &url[scheme_end + 3..];
    let Some(at) = rest.rfind('@') else {
        return (url.to_string(), None);
    };
    let (user, password) = match rest[..at].split_once(':') {
        Some((user, password)) => (user, Some(password)),
        None => (&rest[..at], None),
    };
    let mut out = format!("{}://{}", &url[..scheme_end], percent_encode(user));
    if let Some(p) = password {
        out.push(':');
        out.push_str(&percent_encode(p));
    }
    out.push('@');
    out.push_str(&rest[at + 1..]);
    (out, password.map(percent_decode))
}

/// Every byte but unreserved and sub-delimiter characters as `%XX`; an
/// existing `%XX` escape is kept.
fn percent_encode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    for (i, &b) in bytes.iter().enumerate() {
        let escape = b == b'%'
            && bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
            && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit);
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&b) || escape {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `%XX` escapes decoded (as the driver decodes the password).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What is wrong with a URL, in words of our own: the driver's text may quote
/// any part of it.
fn url_problem(e: &UrlError) -> String {
    match e {
        // The `url` crate's fixed descriptions ("invalid port number", "empty host").
        UrlError::Parse(p) => p.to_string(),
        UrlError::UnsupportedScheme { .. } => "the scheme must be mysql:// or mariadb://".into(),
        UrlError::UnknownParameter { param } => format!("unknown parameter `{}`", clip_name(param)),
        UrlError::InvalidParamValue { param, .. } => {
            format!("parameter `{}` has an invalid value", clip_name(param))
        }
        UrlError::FeatureRequired { param, .. } => {
            format!("parameter `{}` is not supported", clip_name(param))
        }
        _ => "it is incomplete".into(),
    }
}

/// A URL parameter's name, if it looks like one.
fn clip_name(name: &str) -> &str {
    if name.len() <= 40
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        name
    } else {
        "?"
    }
}

/// The Arrow type of a result column, and whether comparisons with it may run in
/// MySQL; or the type's name and a conversion (`{c}`: the column) to suggest.
fn arrow_type(c: &Column) -> Result<(DataType, bool), (String, &'static str)> {
    use ColumnType as T;
    let unsigned = c.flags().contains(ColumnFlags::UNSIGNED_FLAG);
    let int = |signed: DataType, unsigned_type: DataType| {
        Ok((if unsigned { unsigned_type } else { signed }, true))
    };
    match c.column_type() {
        T::MYSQL_TYPE_TINY if c.column_length() == 1 => Ok((DataType::Boolean, true)),
        T::MYSQL_TYPE_TINY => int(DataType::Int8, DataType::UInt8),
        T::MYSQL_TYPE_SHORT => int(DataType::Int16, DataType::UInt16),
        T::MYSQL_TYPE_INT24 | T::MYSQL_TYPE_LONG => int(DataType::Int32, DataType::UInt32),
        T::MYSQL_TYPE_LONGLONG => int(DataType::Int64, DataType::UInt64),
        // MySQL reads a number from 0 to 99 compared with a YEAR as a two-digit
        // year (`yr = 5` is `yr = 2005`, `yr < 10` holds for 2009): filtered by DataFusion.
        T::MYSQL_TYPE_YEAR => Ok((DataType::Int16, false)),
        // MySQL compares FLOAT columns as doubles: `f = 0.1` differs from DataFusion.
        T::MYSQL_TYPE_FLOAT => Ok((DataType::Float32, false)),
        T::MYSQL_TYPE_DOUBLE => Ok((DataType::Float64, true)),
        T::MYSQL_TYPE_DECIMAL | T::MYSQL_TYPE_NEWDECIMAL => decimal_type(c, unsigned),
        T::MYSQL_TYPE_DATE | T::MYSQL_TYPE_NEWDATE => Ok((DataType::Date32, true)),
        T::MYSQL_TYPE_DATETIME | T::MYSQL_TYPE_DATETIME2 => {
            Ok((DataType::Timestamp(TimeUnit::Microsecond, None), true))
        }
        T::MYSQL_TYPE_TIMESTAMP | T::MYSQL_TYPE_TIMESTAMP2 => Ok((
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        )),
        T::MYSQL_TYPE_TIME | T::MYSQL_TYPE_TIME2 => {
            Ok((DataType::Time64(TimeUnit::Microsecond), false))
        }
        T::MYSQL_TYPE_BIT if c.column_length() == 1 => Ok((DataType::Boolean, false)),
        T::MYSQL_TYPE_BIT if c.column_length() <= 64 => Ok((DataType::UInt64, false)),
        T::MYSQL_TYPE_JSON => Ok((DataType::Utf8, false)),
        T::MYSQL_TYPE_NULL => Ok((DataType::Utf8, false)),
        T::MYSQL_TYPE_ENUM | T::MYSQL_TYPE_SET => Ok((DataType::Utf8, true)),
        T::MYSQL_TYPE_VARCHAR
        | T::MYSQL_TYPE_VAR_STRING
        | T::MYSQL_TYPE_STRING
        | T::MYSQL_TYPE_TINY_BLOB
        | T::MYSQL_TYPE_MEDIUM_BLOB
        | T::MYSQL_TYPE_LONG_BLOB
        | T::MYSQL_TYPE_BLOB => {
            let text_flags = ColumnFlags::ENUM_FLAG | ColumnFlags::SET_FLAG;
            if c.character_set() == 63 && !c.flags().intersects(text_flags) {
                Ok((DataType::Binary, true))
            } else {
                Ok((DataType::Utf8, true))
            }
        }
        T::MYSQL_TYPE_GEOMETRY => Err(("geometry".into(), "ST_AsText({c}) AS {c}")),
        T::MYSQL_TYPE_BIT => Err((
            format!("bit({})", c.column_length()),
            "CAST({c} AS CHAR) AS {c}",
        )),
        T::MYSQL_TYPE_VECTOR => Err(("vector".into(), "VECTOR_TO_STRING({c}) AS {c}")),
        other => Err((format!("{other:?}"), "CAST({c} AS CHAR) AS {c}")),
    }
}

/// decimal(p,s): the column length counts the digits, the point (when s > 0)
/// and the sign (when signed).
fn decimal_type(c: &Column, unsigned: bool) -> Result<(DataType, bool), (String, &'static str)> {
    let scale = c.decimals();
    let length = c.column_length();
    let precision = length
        .saturating_sub(u32::from(scale > 0))
        .saturating_sub(u32::from(!unsigned))
        .max(u32::from(scale))
        .max(1);
    let hint = "CAST({c} AS DOUBLE) AS {c}";
    if scale > 38 {
        return Err((format!("decimal with scale {scale}"), hint));
    }
    let s = scale as i8;
    match u8::try_from(precision) {
        Ok(p) if p <= 38 => Ok((DataType::Decimal128(p, s), true)),
        Ok(p) if p <= 76 => Ok((DataType::Decimal256(p, s), true)),
        _ => Err((format!("decimal({precision},{scale})"), hint)),
    }
}

/// A conversion error and, when there is a better one than the generic cast,
/// a `query:` that reads the column anyway.
struct Hint {
    message: String,
    fix: Option<&'static str>,
}

impl Hint {
    fn none(message: String) -> Hint {
        Hint { message, fix: None }
    }

    fn hint(&self, column: &str) -> String {
        let fix = self.fix.unwrap_or("CAST({c} AS CHAR) AS {c}");
        format!(
            ": read it with `query: SELECT {}, ... FROM ...`",
            fix.replace("{c}", column)
        )
    }
}

/// A binary-protocol value as a cell of `t`.
fn cell<'v>(value: &'v Value, t: &DataType) -> Result<Cell<'v>, Hint> {
    Ok(match (value, t) {
        (Value::NULL, _) => Cell::Null,
        (Value::Int(v), _) => Cell::Int(*v),
        (Value::UInt(v), _) => Cell::UInt(*v),
        (Value::Float(v), _) => Cell::Float(f64::from(*v)),
        (Value::Double(v), _) => Cell::Float(*v),
        // bit(1)
        (Value::Bytes(b), DataType::Boolean) => Cell::Bool(b.iter().any(|x| *x != 0)),
        // bit(n): big-endian bytes
        (Value::Bytes(b), DataType::UInt64) if b.len() <= 8 => {
            Cell::UInt(b.iter().fold(0u64, |acc, x| (acc << 8) | u64::from(*x)))
        }
        (Value::Bytes(b), _) => Cell::Bytes(b),
        (Value::Date(y, m, d, h, i, s, us), DataType::Date32 | DataType::Timestamp(..)) => {
            let zero = *y == 0 || *m == 0 || *d == 0;
            let date = chrono::NaiveDate::from_ymd_opt(i32::from(*y), u32::from(*m), u32::from(*d))
                .filter(|_| !zero);
            let Some(date) = date else {
                let text = format!("{y:04}-{m:02}-{d:02}");
                return Err(Hint {
                    message: format!("'{text}' is not a valid date"),
                    fix: Some(if matches!(t, DataType::Date32) {
                        "NULLIF({c}, '0000-00-00') AS {c}"
                    } else {
                        "NULLIF({c}, '0000-00-00 00:00:00') AS {c}"
                    }),
                });
            };
            if *t == DataType::Date32 {
                let days = date.signed_duration_since(chrono::NaiveDate::default());
                Cell::Date(
                    i32::try_from(days.num_days())
                        .map_err(|_| Hint::none(format!("{date} is out of range")))?,
                )
            } else {
                let time = date
                    .and_hms_micro_opt(u32::from(*h), u32::from(*i), u32::from(*s), *us)
                    .ok_or_else(|| Hint::none(format!("{date} {h}:{i}:{s} is not a valid time")))?;
                Cell::Micros(time.and_utc().timestamp_micros())
            }
        }
        (Value::Time(negative, days, h, m, s, us), DataType::Time64(_)) => {
            if *negative || *days > 0 {
                let sign = if *negative { "-" } else { "" };
                let hours = u64::from(*days) * 24 + u64::from(*h);
                return Err(Hint {
                    message: format!(
                        "{sign}{hours}:{m:02}:{s:02} is not a time of day (negative or past 24 hours)"
                    ),
                    fix: Some("TIME_TO_SEC({c}) AS {c}"),
                });
            }
            Cell::Micros(
                ((i64::from(*h) * 60 + i64::from(*m)) * 60 + i64::from(*s)) * 1_000_000
                    + i64::from(*us),
            )
        }
        (other, t) => {
            return Err(Hint::none(format!(
                "{} cannot be read as {t}",
                show_value(other)
            )));
        }
    })
}

fn show_value(v: &Value) -> String {
    match v {
        Value::Bytes(b) => show(&Cell::Bytes(b)),
        other => other.as_sql(true),
    }
}

/// Scans of one MySQL source.
#[derive(Debug)]
struct MysqlReader {
    server: Arc<Server>,
}

impl Reader for MysqlReader {
    fn read(&self, sql: String, schema: SchemaRef) -> SendableRecordBatchStream {
        let server = self.server.clone();
        let failed = self.server.clone();
        spawn_reader(
            schema.clone(),
            move |tx| async move {
                let started = Instant::now();
                let rows = server
                    .stream_rows(&sql, schema, &tx)
                    .await
                    .map_err(|f| external(server.remote(f)))?;
                log_fetched(&server.source, rows, started);
                Ok(())
            },
            move |why| {
                let message = format!("reading from {} stopped: {why}", failed.at());
                external(failed.remote(failed.failure(message, false)))
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(
        t: ColumnType,
        length: u32,
        decimals: u8,
        flags: ColumnFlags,
        charset: u16,
    ) -> Column {
        Column::new(t)
            .with_column_length(length)
            .with_decimals(decimals)
            .with_flags(flags)
            .with_character_set(charset)
    }

    #[test]
    fn column_types_map_to_arrow() {
        use ColumnType as T;
        let none = ColumnFlags::empty();
        let unsigned = ColumnFlags::UNSIGNED_FLAG;
        let ty = |c: Column| arrow_type(&c).map(|(t, _)| t);
        assert_eq!(
            ty(column(T::MYSQL_TYPE_TINY, 1, 0, none, 63)),
            Ok(DataType::Boolean)
        );
        assert_eq!(
            ty(column(T::MYSQL_TYPE_TINY, 4, 0, none, 63)),
            Ok(DataType::Int8)
        );
        assert_eq!(
            ty(column(T::MYSQL_TYPE_TINY, 3, 0, unsigned, 63)),
            Ok(DataType::UInt8)
        );
        assert_eq!(
            ty(column(T::MYSQL_TYPE_LONGLONG, 20, 0, unsigned, 63)),
            Ok(DataType::UInt64)
        );
        // decimal(12,3): 12 digits, a point and a sign; decimal(5,2) unsigned: no sign.
        assert_eq!(
            ty(column(T::MYSQL_TYPE_NEWDECIMAL, 14, 3, none, 63)),
            Ok(DataType::Decimal128(12, 3))
        );
        assert_eq!(
            ty(column(T::MYSQL_TYPE_NEWDECIMAL, 6, 2, unsigned, 63)),
            Ok(DataType::Decimal128(5, 2))
        );
        assert_eq!(
            ty(column(T::MYSQL_TYPE_NEWDECIMAL, 11, 0, none, 63)),
            Ok(DataType::Decimal128(10, 0))
        );
        assert_eq!(
            ty(column(T::MYSQL_TYPE_NEWDECIMAL, 67, 30, none, 63)),
            Ok(DataType::Decimal256(65, 30))
        );
        assert_eq!(
            ty(column(T::MYSQL_TYPE_BLOB, 0, 0, none, 63)),
            Ok(DataType::Binary)
        );
        assert_eq!(
            ty(column(T::MYSQL_TYPE_BLOB, 0, 0, none, 45)),
            Ok(DataType::Utf8)
        );
        assert_eq!(
            ty(column(
                T::MYSQL_TYPE_STRING,
                3,
                0,
                ColumnFlags::ENUM_FLAG,
                63
            )),
            Ok(DataType::Utf8)
        );
        assert_eq!(
            ty(column(T::MYSQL_TYPE_JSON, 0, 0, none, 63)),
            Ok(DataType::Utf8)
        );
        assert_eq!(
            ty(column(T::MYSQL_TYPE_BIT, 1, 0, none, 63)),
            Ok(DataType::Boolean)
        );
        assert_eq!(
            ty(column(T::MYSQL_TYPE_BIT, 5, 0, none, 63)),
            Ok(DataType::UInt64)
        );
        assert_eq!(
            ty(column(T::MYSQL_TYPE_TIMESTAMP, 26, 6, none, 63)),
            Ok(DataType::Timestamp(
                TimeUnit::Microsecond,
                Some("UTC".into())
            ))
        );
        let geometry = arrow_type(&column(T::MYSQL_TYPE_GEOMETRY, 0, 0, none, 63)).unwrap_err();
        assert_eq!(geometry.0, "geometry");
        assert!(geometry.1.contains("ST_AsText"));
    }

    #[test]
    fn values_become_cells() {
        let ts = DataType::Timestamp(TimeUnit::Microsecond, None);
        assert_eq!(
            cell(&Value::Date(1970, 1, 2, 0, 0, 1, 5), &ts).ok(),
            Some(Cell::Micros(86_401_000_005))
        );
        assert_eq!(
            cell(&Value::Date(1970, 1, 2, 0, 0, 0, 0), &DataType::Date32).ok(),
            Some(Cell::Date(1))
        );
        let zero = cell(&Value::Date(0, 0, 0, 0, 0, 0, 0), &DataType::Date32)
            .err()
            .unwrap();
        assert!(zero.message.contains("'0000-00-00' is not a valid date"));
        assert!(zero.hint("d").contains("NULLIF(d, '0000-00-00') AS d"));
        let t = DataType::Time64(TimeUnit::Microsecond);
        assert_eq!(
            cell(&Value::Time(false, 0, 1, 2, 3, 4), &t).ok(),
            Some(Cell::Micros(3_723_000_004))
        );
        let long = cell(&Value::Time(false, 1, 2, 0, 0, 0), &t).err().unwrap();
        assert!(long.message.contains("26:00:00"), "{}", long.message);
        assert!(long.hint("t").contains("TIME_TO_SEC(t)"));
        assert_eq!(
            cell(&Value::Bytes(vec![1, 2]), &DataType::UInt64).ok(),
            Some(Cell::UInt(258))
        );
    }

    fn config(url: &str) -> DatabaseSource {
        DatabaseSource {
            kind: crate::config::DatabaseKind::Mysql,
            url: url.into(),
            relation: Relation::Table("orders".into()),
            tls: TlsMode::Prefer,
            ca: None,
            connect_timeout: Duration::from_secs(1),
            query_timeout: Duration::from_secs(1),
            retries: 0,
        }
    }

    #[test]
    fn messages_never_show_the_password() {
        let server = Server::new(
            "shop",
            &config("mariadb://kpi:s3cr3t-pw@db.example:3307/shop"),
        )
        .unwrap();
        assert_eq!(server.at(), "db.example:3307 (database shop, user 'kpi')");
        // Scrubbed where the failure is made (before any log line shows it) and again at the end.
        let f = server.failure("echo s3cr3t-pw", false);
        assert_eq!(f.message, "echo ***");
        let e = server.remote(Failure::new("echo s3cr3t-pw", false));
        assert_eq!(e.to_string(), "source `shop`: echo ***");
        assert!(!format!("{server:?}").contains("s3cr3t"));
        // A short password is not searched for: it would garble the port and show itself.
        let short = Server::new("shop", &config("mysql://kpi:330@127.0.0.1:3306/shop")).unwrap();
        let f = short.failure(format!("refused on {}", short.at()), false);
        assert_eq!(
            short.remote(f).to_string(),
            "source `shop`: refused on 127.0.0.1:3306 (database shop, user 'kpi')"
        );
    }

    #[test]
    fn passwords_holding_url_delimiters_stay_passwords() {
        for (url, password) in [
            ("mysql://kpi:123?s3cret@db/shop", "123?s3cret"),
            ("mysql://kpi:/s3cret@db/shop", "/s3cret"),
            ("mysql://kpi:s3c#ret@db/shop", "s3c#ret"),
            ("mysql://kpi:s3c@ret:x@db/shop", "s3c@ret:x"),
            ("mariadb://kpi:100%s3cret@db/shop", "100%s3cret"),
            // Already encoded: kept as it is.
            ("mysql://kpi:p%2Fs3cret%40x@db/shop", "p/s3cret@x"),
        ] {
            let server = Server::new("shop", &config(url)).unwrap();
            assert_eq!(server.at(), "db:3306 (database shop, user 'kpi')", "{url}");
            assert_eq!(server.password.as_deref(), Some(password), "{url}");
            assert_eq!(server.opts.pass(), Some(password), "{url}");
        }
        let server = Server::new("shop", &config("mysql://k%40pi@db:3307")).unwrap();
        assert_eq!(server.at(), "db:3307 (database (none), user 'k@pi')");
        // URLs that do not parse: the message shows no part of the password.
        for (url, problem) in [
            (
                "mysql://kpi:123?s3cret@db:99999/shop",
                "invalid port number",
            ),
            ("mysql://kpi:/s3cret@/shop", "empty host"),
            (
                "mysql://kpi:s3cret-pw@db/shop?bogus=1",
                "unknown parameter `bogus`",
            ),
            (
                "mysql://kpi:s3cret-pw@db/shop?prefer_socket=s3cret-pw",
                "parameter `prefer_socket` has an invalid value",
            ),
        ] {
            let e = Server::new("shop", &config(url)).unwrap_err().to_string();
            assert!(
                e.contains(&format!("is not valid ({problem})")),
                "{url}: {e}"
            );
            assert!(!e.contains("s3cret"), "{url}: {e}");
        }
    }
}
