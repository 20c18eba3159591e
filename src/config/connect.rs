//! Database and HTTP API sources: the YAML shape (`Raw*`, serde) and the checked
//! model the source modules read. Secrets arrive by `${VAR}` and are only ever
//! shown redacted (see `env::redact`, and `DatabaseSource::display`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use datafusion::arrow::datatypes::DataType;
use serde::Deserialize;

use super::checks::parse_duration;
use super::env::interpolate;
use super::error::Problem;
use super::model::parse_type;

// ---------------------------------------------------------------- databases

/// `postgres:`, `mysql:` or `sqlite:` under a source.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDatabase {
    /// `postgres://user:pass@host:5432/db`, `mysql://...`; usually `${VAR}`.
    #[serde(default)]
    pub url: Option<String>,
    /// SQLite only: the database file, relative to the project root.
    #[serde(default)]
    pub path: Option<String>,
    /// A table (or view), optionally schema-qualified: only the columns and rows
    /// each query needs are fetched.
    #[serde(default)]
    pub table: Option<String>,
    /// Any SELECT; queries over it push their filters around it.
    #[serde(default)]
    pub query: Option<String>,
    #[serde(default)]
    pub tls: Option<RawTls>,
    #[serde(default)]
    pub connect_timeout: Option<String>,
    #[serde(default)]
    pub query_timeout: Option<String>,
    /// Attempts after the first on a transient error (connection refused or reset,
    /// timeouts, server restarts). Default 3.
    #[serde(default)]
    pub retries: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    #[serde(default)]
    pub mode: Option<TlsMode>,
    /// A PEM file of the certificate authority to trust, relative to the project root.
    #[serde(default)]
    pub ca: Option<String>,
}

/// PostgreSQL's `sslmode` names; MySQL's are mapped onto them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// No TLS.
    Disable,
    /// TLS when the server offers it (the default: what a local server expects).
    #[default]
    Prefer,
    /// TLS, without checking the certificate.
    Require,
    /// TLS, the certificate signed by a trusted authority.
    VerifyCa,
    /// TLS, the certificate signed by a trusted authority and naming the host.
    VerifyFull,
}

impl TlsMode {
    /// PostgreSQL's `sslmode` spelling.
    pub fn name(self) -> &'static str {
        match self {
            TlsMode::Disable => "disable",
            TlsMode::Prefer => "prefer",
            TlsMode::Require => "require",
            TlsMode::VerifyCa => "verify-ca",
            TlsMode::VerifyFull => "verify-full",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseKind {
    Postgres,
    Mysql,
    Sqlite,
}

impl DatabaseKind {
    pub fn name(self) -> &'static str {
        match self {
            DatabaseKind::Postgres => "postgres",
            DatabaseKind::Mysql => "mysql",
            DatabaseKind::Sqlite => "sqlite",
        }
    }
}

/// What a database source reads: a table (pushdown) or a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Relation {
    Table(String),
    Query(String),
}

/// A checked database source. Its `Debug` shows the URL without the password.
#[derive(Clone)]
pub struct DatabaseSource {
    pub kind: DatabaseKind,
    /// The connection URL, password included (never print it: use [`Self::display`]).
    /// For SQLite, the database file's path.
    pub url: String,
    pub relation: Relation,
    pub tls: TlsMode,
    pub ca: Option<std::path::PathBuf>,
    pub connect_timeout: Duration,
    pub query_timeout: Duration,
    pub retries: u32,
}

impl DatabaseSource {
    /// The URL without its password, for messages.
    pub fn display(&self) -> String {
        strip_password(&self.url)
    }
}

impl std::fmt::Debug for DatabaseSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseSource")
            .field("kind", &self.kind)
            .field("url", &self.display())
            .field("relation", &self.relation)
            .field("tls", &self.tls)
            .field("connect_timeout", &self.connect_timeout)
            .field("query_timeout", &self.query_timeout)
            .field("retries", &self.retries)
            .finish_non_exhaustive()
    }
}

/// `scheme://user:secret@host/db` -> `scheme://user@host/db`; anything else
/// unchanged. The user part ends at the *last* `@`, so a password holding an
/// unencoded `@`, `/` or `?` is still cut out whole.
pub fn strip_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    match rest.rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or("");
            format!("{}://{}@{}", &url[..scheme_end], user, &rest[at + 1..])
        }
        None => url.to_string(),
    }
}

/// A password that a URL parser would split: `/`, `?` or `#` before the last `@`.
fn password_needs_encoding(url: &str) -> Option<char> {
    let rest = &url[url.find("://")? + 3..];
    let user_info = &rest[..rest.rfind('@')?];
    user_info.chars().find(|c| matches!(c, '/' | '?' | '#'))
}

pub fn check_database(
    kind: DatabaseKind,
    raw: RawDatabase,
    path: &str,
    root: &Path,
    problems: &mut Vec<Problem>,
) -> Option<DatabaseSource> {
    let before = problems.len();
    let url = match (kind, raw.url, raw.path) {
        (DatabaseKind::Sqlite, None, Some(file)) => {
            match interpolate(&file, &format!("{path}.path")) {
                Ok(file) => {
                    let full = root.join(&file);
                    if !full.is_file() {
                        problems.push(
                            Problem::new(
                                format!("{path}.path"),
                                format!("SQLite database `{file}` not found (looked at {})", full.display()),
                            )
                            .hint("paths are relative to the project root (the folder above `pipelines/`)"),
                        );
                    }
                    full.to_string_lossy().into_owned()
                }
                Err(p) => {
                    problems.push(p);
                    String::new()
                }
            }
        }
        (DatabaseKind::Sqlite, _, _) => {
            problems.push(
                Problem::new(path, "an SQLite source needs `path:` (and no `url:`)")
                    .hint("sqlite: {path: fixtures/hr.sqlite, table: staff}"),
            );
            String::new()
        }
        (_, Some(url), None) => match interpolate(&url, &format!("{path}.url")) {
            Ok(url) => {
                if let Some(c) = password_needs_encoding(&url) {
                    problems.push(
                        Problem::new(
                            format!("{path}.url"),
                            format!("the URL's user or password holds `{c}`, which ends it early"),
                        )
                        .hint(format!(
                            "percent-encode it in the URL: `{c}` is %{:02X}",
                            c as u32
                        )),
                    );
                }
                let scheme = url.split("://").next().unwrap_or("");
                let expected: &[&str] = match kind {
                    DatabaseKind::Postgres => &["postgres", "postgresql"],
                    _ => &["mysql", "mariadb"],
                };
                if !expected.contains(&scheme) {
                    problems.push(
                        Problem::new(
                            format!("{path}.url"),
                            format!("`{}` is not a {} URL", strip_password(&url), kind.name()),
                        )
                        .hint(format!(
                            "write it as {}://user:password@host:port/database",
                            expected[0]
                        )),
                    );
                }
                url
            }
            Err(p) => {
                problems.push(p);
                String::new()
            }
        },
        (_, _, _) => {
            problems.push(
                Problem::new(path, format!("a {} source needs `url:` (and no `path:`)", kind.name()))
                    .hint(format!(
                        "url: \"${{DATABASE_URL}}\" with the URL, password included, in the environment ({}://user:password@host/db)",
                        kind.name()
                    )),
            );
            String::new()
        }
    };
    let relation = match (raw.table, raw.query) {
        (Some(table), None) if !table.trim().is_empty() => Relation::Table(table),
        (None, Some(query)) if !query.trim().is_empty() => Relation::Query(query),
        _ => {
            problems.push(
                Problem::new(path, "name exactly one of `table:` or `query:`")
                    .hint("`table: orders` fetches only what each query needs; `query: SELECT ...` runs that SELECT"),
            );
            Relation::Table(String::new())
        }
    };
    let (tls, ca) = match raw.tls {
        None => (TlsMode::default(), None),
        Some(t) => {
            if kind == DatabaseKind::Sqlite {
                problems.push(Problem::new(
                    format!("{path}.tls"),
                    "SQLite has no connection to secure",
                ));
            }
            let ca = t.ca.map(|ca| {
                let full = root.join(&ca);
                if !full.is_file() {
                    problems.push(Problem::new(
                        format!("{path}.tls.ca"),
                        format!(
                            "certificate file `{ca}` not found (looked at {})",
                            full.display()
                        ),
                    ));
                }
                full
            });
            let mode = t.mode.unwrap_or(if ca.is_some() {
                TlsMode::VerifyFull
            } else {
                TlsMode::Prefer
            });
            (mode, ca)
        }
    };
    let mut duration = |value: Option<String>, field: &str, default: u64| match value {
        None => Duration::from_secs(default),
        Some(text) => parse_duration(&text).unwrap_or_else(|message| {
            problems.push(
                Problem::new(format!("{path}.{field}"), message)
                    .hint("write it like 30s, 5m or 1h"),
            );
            Duration::from_secs(default)
        }),
    };
    let connect_timeout = duration(raw.connect_timeout, "connect_timeout", 10);
    let query_timeout = duration(raw.query_timeout, "query_timeout", 3600);
    (problems.len() == before).then_some(DatabaseSource {
        kind,
        url,
        relation,
        tls,
        ca,
        connect_timeout,
        query_timeout,
        retries: raw.retries.unwrap_or(3),
    })
}

// ---------------------------------------------------------------- HTTP APIs

/// `http:` under a source: a JSON API read page by page.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    pub url: String,
    #[serde(default)]
    pub method: Option<HttpMethod>,
    /// A JSON body, sent with POST.
    #[serde(default)]
    pub body: Option<serde_json::Value>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Query parameters added to every request.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// Dotted path to the array of records in each response (`data.items`);
    /// absent: the response itself is the array.
    #[serde(default)]
    pub records: Option<String>,
    #[serde(default, deserialize_with = "one_key")]
    pub paginate: Option<Paginate>,
    /// Stop after this many pages (default 1000): a guard against a loop.
    #[serde(default)]
    pub max_pages: Option<u32>,
    #[serde(default, deserialize_with = "one_key")]
    pub auth: Option<HttpAuth>,
    /// Per request (default 30s).
    #[serde(default)]
    pub timeout: Option<String>,
    /// Attempts after the first on 5xx, 429, timeouts and resets (default 3).
    #[serde(default)]
    pub retries: Option<u32>,
    /// Requests per second at most.
    #[serde(default)]
    pub rate_limit: Option<f64>,
    /// Columns picked from each record by dotted path: `{customer: customer.name}`.
    /// Absent: every top-level field of the records. Columns keep this order.
    #[serde(default, deserialize_with = "ordered_map")]
    pub fields: Vec<(String, String)>,
}

/// An enum written as a map with one key naming the variant (`{cursor: {...}}`,
/// `{bearer: "${TOKEN}"}`), where serde_norway would expect a YAML tag (`!cursor`).
fn one_key<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct OneKey<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for OneKey<T> {
        type Value = T;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("one key naming the kind, with its settings: `{cursor: {path: meta.next, param: cursor}}`")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
            use serde::de::Error;
            let value = T::deserialize(serde::de::value::MapAccessDeserializer::new(&mut map))?;
            if let Some(extra) = map.next_key::<String>()? {
                return Err(A::Error::custom(format!(
                    "`{extra}`: name exactly one kind here"
                )));
            }
            Ok(value)
        }
    }
    d.deserialize_map(OneKey(std::marker::PhantomData))
        .map(Some)
}

/// A map of text to text, in the order written.
fn ordered_map<'de, D>(d: D) -> Result<Vec<(String, String)>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Ordered;
    impl<'de> serde::de::Visitor<'de> for Ordered {
        type Value = Vec<(String, String)>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a map of column names to dotted paths: `{customer: customer.name}`")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            use serde::de::Error;
            let mut out: Vec<(String, String)> = Vec::new();
            while let Some((key, value)) = map.next_entry::<String, String>()? {
                if out.iter().any(|(k, _)| *k == key) {
                    return Err(A::Error::custom(format!("`{key}` is named twice")));
                }
                out.push((key, value));
            }
            Ok(out)
        }
    }
    d.deserialize_map(Ordered)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    #[default]
    Get,
    Post,
}

/// How to ask for the next page. Exactly one style.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Paginate {
    /// `?page=1`, `?page=2`, ... until a page has no records.
    Page {
        #[serde(default = "page_param")]
        param: String,
        #[serde(default = "one")]
        start: u64,
        /// Page size parameter and value, when the API takes one.
        #[serde(default)]
        size_param: Option<String>,
        #[serde(default)]
        size: Option<u64>,
    },
    /// `?offset=0&limit=100`, `?offset=100&limit=100`, ... until a short page.
    Offset {
        #[serde(default = "offset_param")]
        param: String,
        #[serde(default = "limit_param")]
        limit_param: String,
        #[serde(default = "hundred")]
        limit: u64,
    },
    /// The next cursor is read from the body at `path` and sent as `param`,
    /// until it is absent, null or empty.
    Cursor { path: String, param: String },
    /// Follow the `Link: <...>; rel="next"` header.
    Link {},
}

fn page_param() -> String {
    "page".into()
}
fn offset_param() -> String {
    "offset".into()
}
fn limit_param() -> String {
    "limit".into()
}
fn one() -> u64 {
    1
}
fn hundred() -> u64 {
    100
}

/// Credentials, each value usually `${VAR}`.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum HttpAuth {
    Bearer(String),
    Basic {
        user: String,
        password: String,
    },
    /// An API key in a request header.
    Header {
        name: String,
        value: String,
    },
    /// An API key in a query parameter.
    Query {
        name: String,
        value: String,
    },
}

impl std::fmt::Debug for HttpAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            HttpAuth::Bearer(_) => "bearer",
            HttpAuth::Basic { .. } => "basic",
            HttpAuth::Header { .. } => "header",
            HttpAuth::Query { .. } => "query",
        };
        write!(f, "HttpAuth::{kind}(redacted)")
    }
}

/// A checked HTTP source.
#[derive(Debug, Clone)]
pub struct HttpSource {
    pub url: String,
    pub method: HttpMethod,
    pub body: Option<serde_json::Value>,
    pub headers: Vec<(String, String)>,
    pub params: Vec<(String, String)>,
    pub records: Option<String>,
    pub paginate: Option<Paginate>,
    pub max_pages: u32,
    pub auth: Option<HttpAuth>,
    pub timeout: Duration,
    pub retries: u32,
    pub rate_limit: Option<f64>,
    /// Output column -> dotted path into a record, in declaration order.
    pub fields: Vec<(String, String)>,
    /// Declared column types (the source's `columns:`), overriding inference.
    pub columns: Vec<(String, DataType)>,
}

pub fn check_http(
    raw: RawHttp,
    columns: &BTreeMap<String, String>,
    path: &str,
    problems: &mut Vec<Problem>,
) -> Option<HttpSource> {
    let before = problems.len();
    let mut text = |value: String, field: String| {
        interpolate(&value, &field).unwrap_or_else(|p| {
            problems.push(p);
            String::new()
        })
    };
    let url = text(raw.url, format!("{path}.url"));
    let headers: Vec<_> = raw
        .headers
        .into_iter()
        .map(|(k, v)| {
            let v = text(v, format!("{path}.headers.{k}"));
            (k, v)
        })
        .collect();
    let params: Vec<_> = raw
        .params
        .into_iter()
        .map(|(k, v)| {
            let v = text(v, format!("{path}.params.{k}"));
            (k, v)
        })
        .collect();
    let auth_path = format!("{path}.auth");
    let auth = raw.auth.map(|a| match a {
        HttpAuth::Bearer(token) => HttpAuth::Bearer(text(token, auth_path.clone())),
        HttpAuth::Basic { user, password } => HttpAuth::Basic {
            user: text(user, auth_path.clone()),
            password: text(password, auth_path.clone()),
        },
        HttpAuth::Header { name, value } => HttpAuth::Header {
            name,
            value: text(value, auth_path.clone()),
        },
        HttpAuth::Query { name, value } => HttpAuth::Query {
            name,
            value: text(value, auth_path.clone()),
        },
    });
    if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
        problems.push(
            Problem::new(
                format!("{path}.url"),
                "the URL must start with http:// or https://",
            )
            .hint("url: https://api.example.com/v1/tickets"),
        );
    }
    let method = raw.method.unwrap_or_default();
    if raw.body.is_some() && method != HttpMethod::Post {
        problems.push(Problem::new(
            format!("{path}.body"),
            "a body is sent only with `method: POST`",
        ));
    }
    let timeout = match raw.timeout {
        None => Duration::from_secs(30),
        Some(t) => parse_duration(&t).unwrap_or_else(|message| {
            problems.push(
                Problem::new(format!("{path}.timeout"), message).hint("write it like 30s or 2m"),
            );
            Duration::from_secs(30)
        }),
    };
    if let Some(rate) = raw.rate_limit
        && !(rate.is_finite() && rate > 0.0)
    {
        problems.push(Problem::new(
            format!("{path}.rate_limit"),
            "must be a positive number of requests per second",
        ));
    }
    if raw.max_pages == Some(0) {
        problems.push(Problem::new(
            format!("{path}.max_pages"),
            "must be at least 1",
        ));
    }
    match &raw.paginate {
        Some(Paginate::Offset { limit: 0, .. }) => problems.push(Problem::new(
            format!("{path}.paginate.offset.limit"),
            "must be at least 1",
        )),
        Some(Paginate::Page {
            size_param, size, ..
        }) if size_param.is_some() != size.is_some() => problems.push(
            Problem::new(
                format!("{path}.paginate.page"),
                "`size_param:` and `size:` go together",
            )
            .hint("paginate: {page: {param: page, size_param: per_page, size: 100}}"),
        ),
        Some(Paginate::Cursor { path: p, param }) if p.is_empty() || param.is_empty() => problems
            .push(
                Problem::new(
                    format!("{path}.paginate.cursor"),
                    "`path:` and `param:` must not be empty",
                )
                .hint("paginate: {cursor: {path: meta.next, param: cursor}}"),
            ),
        _ => {}
    }
    for (column, field_path) in &raw.fields {
        if field_path.split('.').any(str::is_empty) {
            problems.push(
                Problem::new(
                    format!("{path}.fields.{column}"),
                    format!("`{field_path}` is not a dotted path"),
                )
                .hint("customer: customer.name"),
            );
        }
    }
    if let Some(records) = &raw.records
        && records.split('.').any(str::is_empty)
    {
        problems.push(
            Problem::new(
                format!("{path}.records"),
                format!("`{records}` is not a dotted path"),
            )
            .hint("records: data.items (leave it out when the response is the array)"),
        );
    }
    let mut declared = Vec::new();
    for (column, type_name) in columns {
        match parse_type(type_name) {
            Ok(t) => declared.push((column.clone(), t)),
            Err(message) => {
                problems.push(Problem::new(format!("{path}.columns.{column}"), message))
            }
        }
    }
    (problems.len() == before).then_some(HttpSource {
        url,
        method,
        body: raw.body,
        headers,
        params,
        records: raw.records,
        paginate: raw.paginate,
        max_pages: raw.max_pages.unwrap_or(1000),
        auth,
        timeout,
        retries: raw.retries.unwrap_or(3),
        rate_limit: raw.rate_limit,
        fields: raw.fields,
        columns: declared,
    })
}

// ---------------------------------------------------------------- incremental pulls

/// `incremental:` on a database or HTTP source: pull only rows past the watermark.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIncremental {
    /// A column that grows with new and changed rows (`updated_at`, an id).
    pub column: String,
    /// HTTP only: the query parameter that carries the watermark (`updated_since`).
    #[serde(default)]
    pub param: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incremental {
    pub column: String,
    pub param: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The HTTP keys as users write them: one-key maps for `paginate:` and
    /// `auth:`, `fields:` in the order written.
    #[test]
    fn http_yaml_shapes() {
        let http = |settings: &str| {
            let yaml = format!(
                "name: p\noutput: out\nsources:\n  t:\n    http:\n      url: http://h/x\n{settings}"
            );
            let parsed = crate::config::parse(&yaml, Path::new("pipelines/p.yaml"));
            match parsed.map(|p| p.sources.into_iter().next().map(|s| s.kind)) {
                Ok(Some(crate::config::SourceKind::Http(cfg))) => Ok(cfg),
                Ok(_) => panic!("not an HTTP source"),
                Err((_, problems)) => Err(problems
                    .iter()
                    .map(|p| format!("{}: {}", p.path, p.message))
                    .collect::<Vec<_>>()
                    .join("; ")),
            }
        };
        let cfg = http(
            "      paginate: {cursor: {path: meta.next, param: cursor}}\n      auth: {bearer: tok}\n      fields: {zeta: a.z, alpha: a.a}\n",
        )
        .unwrap();
        assert_eq!(
            cfg.paginate,
            Some(Paginate::Cursor {
                path: "meta.next".into(),
                param: "cursor".into()
            })
        );
        assert_eq!(cfg.auth, Some(HttpAuth::Bearer("tok".into())));
        assert_eq!(
            cfg.fields,
            [
                ("zeta".to_string(), "a.z".to_string()),
                ("alpha".to_string(), "a.a".to_string())
            ]
        );
        let cfg = http("      paginate: {link: {}}\n      auth: {query: {name: key, value: k}}\n")
            .unwrap();
        assert_eq!(cfg.paginate, Some(Paginate::Link {}));
        let cfg = http("      paginate: {page: {}}\n").unwrap();
        assert_eq!(
            cfg.paginate,
            Some(Paginate::Page {
                param: "page".into(),
                start: 1,
                size_param: None,
                size: None
            })
        );
        let err = http("      paginate: {pages: {}}\n").unwrap_err();
        assert!(err.contains("unknown value 'pages'"), "{err}");
        let err = http("      auth: {bearer: a, basic: {user: u, password: p}}\n").unwrap_err();
        assert!(err.contains("`basic`: name exactly one kind here"), "{err}");
        let err = http("      fields: {a: x, a: y}\n").unwrap_err();
        assert!(err.contains("sources.t.http.fields"), "{err}");
    }

    #[test]
    fn passwords_are_stripped_from_urls() {
        assert_eq!(
            strip_password("postgres://kpi:s3cret@db.internal:5432/crm?sslmode=require"),
            "postgres://kpi@db.internal:5432/crm?sslmode=require"
        );
        assert_eq!(
            strip_password("mysql://root@127.0.0.1/test"),
            "mysql://root@127.0.0.1/test"
        );
        assert_eq!(strip_password("mysql://u:p@ss@h/db"), "mysql://u@h/db");
        // Unencoded `/` and `?` in a password: still cut out whole.
        assert_eq!(
            strip_password("postgres://u:12/ab?c@h:5432/db"),
            "postgres://u@h:5432/db"
        );
        assert_eq!(
            password_needs_encoding("postgres://u:12/ab@h/db"),
            Some('/')
        );
        assert_eq!(password_needs_encoding("postgres://u:12%2Fab@h/db"), None);
        assert_eq!(strip_password("/tmp/x.sqlite"), "/tmp/x.sqlite");
    }
}
