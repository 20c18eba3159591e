//! HTTP JSON API sources: pages fetched with reqwest, records parsed once into Arrow.
//!
//! One [`reqwest::Client`] per fetch carries the per-request timeout, the headers
//! and the credentials. Each page is one request, retried with exponential backoff
//! and jitter on 5xx, 408, 429 (honouring `Retry-After`), timeouts and broken
//! connections; other 4xx fail at once. Requests start no closer together than
//! `rate_limit` allows. Pages are followed by page number, offset, a cursor in the
//! body or the `Link` header, up to `max_pages` (then a warning, and the rows
//! fetched so far).
//!
//! Every record of every page is kept as JSON until the last page, then the column
//! types are inferred over all of them (declared `columns:` win) and the records are
//! decoded into Arrow batches of [`BATCH_ROWS`].
//!
//! Secrets: URLs are shown without `user:password@` and with the value of the
//! auth query parameter (and of well-known key parameters) as `***`; every message
//! is scrubbed of the credential values; a 401 names the `${VAR}`, never its value.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::json::ReaderBuilder;
use datafusion::arrow::json::reader::infer_json_schema_from_iterator;
use datafusion::arrow::record_batch::RecordBatch;
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Client, Method, StatusCode, Url};
use serde_json::{Map, Value};

use super::{Mode, SourceError};
use crate::config::{HttpAuth, HttpMethod, HttpSource, Paginate};

/// Rows per Arrow batch.
const BATCH_ROWS: usize = 8192;
/// The first retry waits about this long; each next one twice as long.
const BACKOFF_BASE: Duration = Duration::from_millis(250);
const BACKOFF_CAP: Duration = Duration::from_secs(10);
/// The longest `Retry-After` honoured; a longer one is waited this long.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(300);
/// Connecting may take at most this long (or the request timeout, if shorter).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Characters of a response body quoted in an error.
const SNIPPET_CHARS: usize = 160;
/// Query parameters whose values are never shown, besides `auth: {query}`'s.
const SECRET_PARAMS: &[&str] = &[
    "api_key",
    "apikey",
    "api-key",
    "key",
    "token",
    "access_token",
    "secret",
    "client_secret",
    "password",
    "signature",
    "sig",
];

/// The watermark of an incremental pull: sent as `param`, and rows at or below
/// it are dropped client-side too (APIs differ on `>` and `>=`).
#[derive(Debug, Clone)]
pub struct Since<'a> {
    pub column: &'a str,
    pub param: Option<&'a str>,
    /// The watermark as text (RFC 3339 for timestamps, digits for numbers).
    pub value: &'a str,
}

/// Every record of every page, as Arrow batches. In [`Mode::Plan`] only the
/// first page is fetched (enough to learn the schema).
pub async fn fetch(
    name: &str,
    cfg: &HttpSource,
    mode: Mode,
    since: Option<Since<'_>>,
) -> Result<(SchemaRef, Vec<RecordBatch>), SourceError> {
    let mut api = Api::new(name, cfg)?;
    let pulled = api.pull(mode, since.as_ref()).await?;
    let name = name.to_string();
    let fields = cfg.fields.clone();
    let columns = cfg.columns.clone();
    let secrets = api.secrets;
    let failed = name.clone();
    tokio::task::spawn_blocking(move || to_batches(&name, &fields, &columns, pulled, &secrets))
        .await
        .unwrap_or_else(|e| {
            Err(SourceError::Remote {
                name: failed,
                message: format!("parsing the records failed: {e}"),
            })
        })
}

// ---------------------------------------------------------------- requests

/// One fetch: the client, the first URL and what to keep out of messages.
struct Api<'a> {
    name: &'a str,
    cfg: &'a HttpSource,
    client: Client,
    method: Method,
    base: Url,
    secrets: Secrets,
    /// Credentials go to the configured origin only (redirects, `Link` URLs).
    same_origin_only: bool,
    /// The least time between two request starts (`rate_limit`).
    interval: Option<Duration>,
    last_start: Option<tokio::time::Instant>,
}

/// A successful response.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

/// Why an attempt failed, when it may be retried.
enum Transient {
    Status {
        status: StatusCode,
        retry_after: Option<Duration>,
        snippet: String,
    },
    Transport {
        timed_out: bool,
        text: String,
    },
}

/// Every record fetched, shaped to the output columns, with where each came from.
struct Pulled {
    records: Vec<Value>,
    pages: Vec<PageInfo>,
}

struct PageInfo {
    number: u32,
    /// Index in [`Pulled::records`] of the page's first record.
    first: usize,
    /// `GET <url>` as shown in messages.
    request: String,
}

impl<'a> Api<'a> {
    fn new(name: &'a str, cfg: &'a HttpSource) -> Result<Self, SourceError> {
        let config = |message: String| SourceError::Config {
            name: name.to_string(),
            message,
        };
        let base =
            Url::parse(&cfg.url).map_err(|e| config(format!("`url:` is not a usable URL: {e}")))?;
        let secrets = Secrets::of(cfg, &base);
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        for (key, value) in &cfg.headers {
            let key_name = HeaderName::from_bytes(key.as_bytes())
                .map_err(|_| config(format!("`headers:` has `{key}`, not a header name")))?;
            let mut header_value = HeaderValue::from_str(value).map_err(|_| {
                config(format!(
                    "the value of header `{key}` cannot be sent (it holds a line break or a non-ASCII character)"
                ))
            })?;
            // A value from the environment may be a key: keep it out of debug output.
            header_value.set_sensitive(crate::config::env::redact(value) != *value);
            headers.insert(key_name, header_value);
        }
        let sensitive = |text: String| {
            HeaderValue::from_str(&text)
                .map(|mut v| {
                    v.set_sensitive(true);
                    v
                })
                .map_err(|_| {
                    config(format!(
                        "the `auth:` value cannot be sent in a header (it holds a line break or a non-ASCII character): check {}",
                        credential_names(cfg.auth.as_ref())
                    ))
                })
        };
        match &cfg.auth {
            Some(HttpAuth::Bearer(token)) => {
                headers.insert(header::AUTHORIZATION, sensitive(format!("Bearer {token}"))?);
            }
            Some(HttpAuth::Basic { user, password }) => {
                let encoded = base64(format!("{user}:{password}").as_bytes());
                headers.insert(
                    header::AUTHORIZATION,
                    sensitive(format!("Basic {encoded}"))?,
                );
            }
            Some(HttpAuth::Header { name: key, value }) => {
                let key_name = HeaderName::from_bytes(key.as_bytes()).map_err(|_| {
                    config(format!(
                        "`auth: {{header: {{name: {key}}}}}` is not a header name"
                    ))
                })?;
                headers.insert(key_name, sensitive(value.clone())?);
            }
            Some(HttpAuth::Query { .. }) | None => {}
        }
        // Credentials in headers (ours or the user's) never follow a redirect off
        // the API's origin; without any, redirects are followed like a browser's.
        let same_origin_only =
            cfg.auth.is_some() || !cfg.headers.is_empty() || base.password().is_some();
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            let cross = attempt
                .previous()
                .first()
                .is_some_and(|first| first.origin() != attempt.url().origin());
            if attempt.previous().len() >= 10 {
                attempt.error("more than 10 redirects")
            } else if cross && same_origin_only {
                attempt.stop()
            } else {
                attempt.follow()
            }
        });
        let client = Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(CONNECT_TIMEOUT))
            .user_agent(concat!("kpiforge/", env!("CARGO_PKG_VERSION")))
            .default_headers(headers)
            .redirect(redirects)
            .build()
            .map_err(|e| SourceError::Remote {
                name: name.to_string(),
                message: format!("cannot set up the HTTP client: {}", chain(&e.without_url())),
            })?;
        let interval = cfg.rate_limit.map(|rate| {
            Duration::try_from_secs_f64(1.0 / rate).unwrap_or(Duration::from_secs(86_400))
        });
        Ok(Api {
            name,
            cfg,
            client,
            method: match cfg.method {
                HttpMethod::Get => Method::GET,
                HttpMethod::Post => Method::POST,
            },
            base,
            secrets,
            same_origin_only,
            interval,
            last_start: None,
        })
    }

    /// `GET <url>` for messages, credentials stripped.
    fn request_text(&self, url: &Url) -> String {
        format!("{} {}", self.method, self.secrets.url(url))
    }

    fn remote(&self, url: &Url, page: u32, what: &str) -> SourceError {
        SourceError::Remote {
            name: self.name.to_string(),
            message: self
                .secrets
                .scrub(&format!("{} (page {page}): {what}", self.request_text(url))),
        }
    }

    /// Every page (one in [`Mode::Plan`]), records shaped to the output columns.
    async fn pull(&mut self, mode: Mode, since: Option<&Since<'_>>) -> Result<Pulled, SourceError> {
        let cfg = self.cfg;
        // What every request carries: `params:`, the watermark and the query key.
        let mut always: Vec<(String, String)> = cfg.params.clone();
        if let Some(since) = since {
            tracing::debug!(
                column = since.column,
                param = since.param,
                "incremental pull past the watermark"
            );
            if let Some(param) = since.param {
                always.push((param.to_string(), since.value.to_string()));
            }
        }
        if let Some(HttpAuth::Query { name, value }) = &cfg.auth {
            always.push((name.clone(), value.clone()));
        }
        let mut url = with_params(&self.base, &always, true);
        match &cfg.paginate {
            Some(Paginate::Page {
                param,
                start,
                size_param,
                size,
            }) => {
                let mut first = vec![(param.clone(), start.to_string())];
                if let (Some(size_param), Some(size)) = (size_param, size) {
                    first.push((size_param.clone(), size.to_string()));
                }
                url = with_params(&url, &first, true);
            }
            Some(Paginate::Offset {
                param,
                limit_param,
                limit,
            }) => {
                let first = [
                    (param.clone(), "0".to_string()),
                    (limit_param.clone(), limit.to_string()),
                ];
                url = with_params(&url, &first, true);
            }
            Some(Paginate::Cursor { .. } | Paginate::Link {}) | None => {}
        }

        let mut records = Vec::new();
        let mut pages = Vec::new();
        let mut page: u32 = 1;
        let mut offset: u64 = 0;
        let mut last_cursor: Option<String> = None;
        let mut previous_page: Option<u64> = None;
        loop {
            let started = Instant::now();
            let reply = self.send(&url, page).await?;
            // 204 No Content: no records, and no more pages.
            let (cursor, found) = if reply.status == StatusCode::NO_CONTENT {
                (None, Vec::new())
            } else {
                let mut body = self.parse(&reply, &url, page)?;
                let cursor = match &cfg.paginate {
                    Some(Paginate::Cursor { path, .. }) => {
                        cursor_at(&body, path).map_err(|what| self.remote(&url, page, &what))?
                    }
                    _ => None,
                };
                let found = take_records(&mut body, cfg.records.as_deref())
                    .map_err(|what| self.remote(&url, page, &what))?;
                (cursor, found)
            };
            let n = found.len();
            // An API that ignores the page parameter returns page 1 forever.
            let digest = {
                use std::hash::{Hash, Hasher};
                let mut h = std::hash::DefaultHasher::new();
                reply.body.hash(&mut h);
                h.finish()
            };
            if n > 0 && previous_page == Some(digest) {
                return Err(self.remote(
                    &url,
                    page,
                    &format!(
                        "page {page} is the same as page {}: the API seems to ignore the pagination parameter; check `paginate:`",
                        page - 1
                    ),
                ));
            }
            previous_page = Some(digest);
            tracing::debug!(
                page,
                url = %self.secrets.url(&url),
                status = reply.status.as_u16(),
                rows = n,
                ms = started.elapsed().as_millis() as u64,
                "page fetched"
            );
            pages.push(PageInfo {
                number: page,
                first: records.len(),
                request: self.request_text(&url),
            });
            records.extend(found.into_iter().map(|r| shape(r, &cfg.fields)));
            if mode == Mode::Plan {
                break;
            }
            let next = match &cfg.paginate {
                None => None,
                Some(Paginate::Page { param, start, .. }) => (n > 0).then(|| {
                    let number = start.saturating_add(u64::from(page));
                    with_params(&url, &[(param.clone(), number.to_string())], true)
                }),
                Some(Paginate::Offset { param, limit, .. }) => {
                    offset = offset.saturating_add(n as u64);
                    (n > 0 && n as u64 >= *limit)
                        .then(|| with_params(&url, &[(param.clone(), offset.to_string())], true))
                }
                Some(Paginate::Cursor { path, param }) => match cursor {
                    None => None,
                    Some(c) if last_cursor.as_deref() == Some(c.as_str()) => {
                        return Err(self.remote(
                            &url,
                            page,
                            &format!(
                                "the next cursor at `{path}` is the one just sent: the API would return this page forever; check `paginate: {{cursor: {{path, param}}}}`"
                            ),
                        ));
                    }
                    Some(c) => {
                        let next = with_params(&url, &[(param.clone(), c.clone())], true);
                        last_cursor = Some(c);
                        Some(next)
                    }
                },
                Some(Paginate::Link {}) if reply.status == StatusCode::NO_CONTENT => None,
                Some(Paginate::Link {}) => self.next_link(&reply.headers, &url, page, &always)?,
            };
            let Some(next) = next else { break };
            if page >= cfg.max_pages {
                tracing::warn!(
                    source = self.name,
                    max_pages = cfg.max_pages,
                    rows = records.len(),
                    next = %self.secrets.url(&next),
                    "stopped at `max_pages` with more pages to fetch: the rows are incomplete; raise `max_pages:` to read them all"
                );
                break;
            }
            page += 1;
            url = next;
        }
        Ok(Pulled { records, pages })
    }

    /// The `Link: <...>; rel="next"` URL, resolved against `current`.
    fn next_link(
        &self,
        headers: &HeaderMap,
        current: &Url,
        page: u32,
        always: &[(String, String)],
    ) -> Result<Option<Url>, SourceError> {
        let Some(target) = headers
            .get_all(header::LINK)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(link_next)
        else {
            return Ok(None);
        };
        let next = current.join(&target).map_err(|e| {
            self.remote(
                current,
                page,
                &format!("the `Link` header's next page is not a URL ({e})"),
            )
        })?;
        if self.same_origin_only && next.origin() != self.base.origin() {
            return Err(self.remote(
                current,
                page,
                &format!(
                    "the `Link` header's next page {} is on another host: the credentials are sent only to {}",
                    self.secrets.url(&next),
                    self.base.origin().ascii_serialization()
                ),
            ));
        }
        // The next link usually carries every parameter; add any it lacks.
        Ok(Some(with_params(&next, always, false)))
    }

    /// Waits until the rate limit allows the next request to start.
    async fn pace(&mut self) {
        if let Some(interval) = self.interval {
            if let Some(last) = self.last_start {
                tokio::time::sleep_until(last + interval).await;
            }
            self.last_start = Some(tokio::time::Instant::now());
        }
    }

    /// One page, with retries.
    async fn send(&mut self, url: &Url, page: u32) -> Result<Reply, SourceError> {
        let attempts = self.cfg.retries.saturating_add(1);
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            self.pace().await;
            let mut request = self.client.request(self.method.clone(), url.clone());
            if let Some(body) = &self.cfg.body {
                request = request.json(body);
            }
            let failure = match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    if status.is_success() {
                        let headers = response.headers().clone();
                        match response.bytes().await {
                            Ok(body) => {
                                return Ok(Reply {
                                    status,
                                    headers,
                                    body: body.to_vec(),
                                });
                            }
                            Err(e) => self.transport(e),
                        }
                    } else {
                        let retry_after = response
                            .headers()
                            .get(header::RETRY_AFTER)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| parse_retry_after(v, Utc::now()));
                        let location = response
                            .headers()
                            .get(header::LOCATION)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| url.join(v).ok());
                        let snippet = match response.bytes().await {
                            Ok(body) => snippet(&body),
                            Err(_) => String::new(),
                        };
                        let retryable = status.is_server_error()
                            || status == StatusCode::TOO_MANY_REQUESTS
                            || status == StatusCode::REQUEST_TIMEOUT;
                        if !retryable {
                            return Err(self.refused(url, page, status, location, &snippet));
                        }
                        Transient::Status {
                            status,
                            retry_after,
                            snippet,
                        }
                    }
                }
                Err(e) if e.is_builder() || e.is_redirect() => {
                    return Err(self.remote(
                        url,
                        page,
                        &format!("the request cannot be made: {}", chain(&e.without_url())),
                    ));
                }
                Err(e) => self.transport(e),
            };
            let last = match &failure {
                Transient::Status {
                    status, snippet, ..
                } => format!("{}{}", status_text(*status), quoted(snippet)),
                Transient::Transport { text, .. } => text.clone(),
            };
            if attempt >= attempts {
                let timed_out = matches!(
                    failure,
                    Transient::Transport {
                        timed_out: true,
                        ..
                    }
                );
                let tried = if attempts == 1 {
                    "1 attempt (`retries: 0`)".to_string()
                } else {
                    format!("{attempts} attempts")
                };
                let hint = if timed_out {
                    "check that the API is up and answers in time, or raise `timeout:` or `retries:`"
                } else if let Transient::Status { status, .. } = &failure
                    && *status == StatusCode::TOO_MANY_REQUESTS
                {
                    "the API kept limiting the rate: set or lower `rate_limit:`, or raise `retries:`"
                } else {
                    "check that the API is up and reachable from here, or raise `retries:`"
                };
                return Err(self.remote(
                    url,
                    page,
                    &format!("gave up after {tried}: {last}: {hint}"),
                ));
            }
            let wait = match &failure {
                Transient::Status {
                    retry_after: Some(wait),
                    ..
                } => (*wait).min(RETRY_AFTER_CAP),
                _ => backoff(attempt),
            };
            tracing::warn!(
                source = self.name,
                page,
                url = %self.secrets.url(url),
                attempt,
                attempts,
                wait_ms = wait.as_millis() as u64,
                error = %self.secrets.scrub(&last),
                "request failed; retrying"
            );
            tokio::time::sleep(wait).await;
        }
    }

    fn transport(&self, e: reqwest::Error) -> Transient {
        let timed_out = e.is_timeout();
        let text = if timed_out {
            format!(
                "timed out (no complete response within {})",
                human(self.cfg.timeout)
            )
        } else {
            chain(&e.without_url())
        };
        Transient::Transport { timed_out, text }
    }

    /// The error for a response that retrying cannot fix.
    fn refused(
        &self,
        url: &Url,
        page: u32,
        status: StatusCode,
        location: Option<Url>,
        snippet: &str,
    ) -> SourceError {
        let what = status_text(status);
        let body = quoted(snippet);
        let message = match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => match &self.cfg.auth {
                Some(auth) => format!(
                    "{what}{body}: the API refused the credentials: check the credentials in {}",
                    credential_names(Some(auth))
                ),
                None => format!(
                    "{what}{body}: the API wants credentials: add `auth:` (bearer, basic, header or query) with the secret from the environment, e.g. `auth: {{bearer: \"${{API_TOKEN}}\"}}`"
                ),
            },
            StatusCode::NOT_FOUND if page > 1 => {
                format!("{what}{body}: page 1 was found but this page is not: check `paginate:`")
            }
            StatusCode::NOT_FOUND | StatusCode::GONE => {
                format!("{what}{body}: the URL is wrong (nothing there): check `url:`")
            }
            s if s.is_redirection() => match location {
                Some(to) => format!(
                    "{what}: redirected to {} on another host, where the credentials are not sent: set `url:` to the final address",
                    self.secrets.url(&to)
                ),
                None => format!("{what}: a redirect without a `Location`: check `url:`"),
            },
            _ => format!(
                "{what}{body}: the API rejected the request: check `url:`, `params:`, `body:` and `paginate:`"
            ),
        };
        self.remote(url, page, &message)
    }

    /// The body as JSON, or an error naming what came instead.
    fn parse(&self, reply: &Reply, url: &Url, page: u32) -> Result<Value, SourceError> {
        let body = &reply.body;
        let content_type = reply
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("no content type")
            .to_string();
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(self.remote(
                url,
                page,
                &format!(
                    "expected a JSON body, got an empty one ({content_type}, HTTP {}): check `url:` and `method:`",
                    reply.status.as_u16()
                ),
            ));
        }
        serde_json::from_slice(body).map_err(|e| {
            self.remote(
                url,
                page,
                &format!(
                    "expected JSON, got {content_type} that is not: {e}; the body starts{}: check that `url:` is the API's JSON endpoint (not a web or login page)",
                    quoted(&snippet(body))
                ),
            )
        })
    }
}

// ---------------------------------------------------------------- secrets

/// Credential values to keep out of messages, and query parameters to hide.
#[derive(Debug, Clone, Default)]
struct Secrets {
    values: Vec<String>,
    params: Vec<String>,
}

impl Secrets {
    fn of(cfg: &HttpSource, base: &Url) -> Self {
        let mut values = Vec::new();
        let mut params: Vec<String> = SECRET_PARAMS.iter().map(|p| p.to_string()).collect();
        match &cfg.auth {
            Some(HttpAuth::Bearer(token)) => values.push(token.clone()),
            Some(HttpAuth::Basic { user, password }) => {
                values.push(password.clone());
                values.push(base64(format!("{user}:{password}").as_bytes()));
            }
            Some(HttpAuth::Header { value, .. }) => values.push(value.clone()),
            Some(HttpAuth::Query { name, value }) => {
                values.push(value.clone());
                params.push(name.to_ascii_lowercase());
            }
            None => {}
        }
        if let Some(password) = base.password() {
            values.push(password.to_string());
        }
        // Header and parameter values read from the environment may be keys too.
        for (_, value) in cfg.headers.iter().chain(&cfg.params) {
            if crate::config::env::redact(value) != *value {
                values.push(value.clone());
            }
        }
        // As they appear in a query string too.
        let encoded: Vec<String> = values.iter().filter_map(|v| query_encoded(v)).collect();
        values.extend(encoded);
        values.retain(|v| v.len() >= 3);
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        Secrets { values, params }
    }

    fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        for v in &self.values {
            if out.contains(v.as_str()) {
                out = out.replace(v.as_str(), "***");
            }
        }
        out
    }

    /// `url` for messages: no `user:password@`, secret parameters as `***`.
    fn url(&self, url: &Url) -> String {
        self.scrub(&shown_url(url, &self.params))
    }
}

/// `url` without user info, the values of `hidden` query parameters (lower case
/// names) replaced by `***`.
fn shown_url(url: &Url, hidden: &[String]) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    let is_hidden = |key: &str| hidden.iter().any(|h| h.eq_ignore_ascii_case(key));
    if shown.query_pairs().any(|(k, _)| is_hidden(&k)) {
        let pairs: Vec<(String, String)> = shown
            .query_pairs()
            .map(|(k, v)| {
                let v = if is_hidden(&k) {
                    "***".into()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        shown.query_pairs_mut().clear().extend_pairs(pairs);
    }
    shown.to_string()
}

/// `value` as `application/x-www-form-urlencoded` writes it, when that differs.
fn query_encoded(value: &str) -> Option<String> {
    let mut url = Url::parse("http://localhost/").ok()?;
    url.query_pairs_mut().append_pair("k", value);
    let encoded = url.query()?.strip_prefix("k=")?.to_string();
    (encoded != value).then_some(encoded)
}

/// The `${VAR}`s the credentials came from, for "check the credentials in ...";
/// never a value.
fn credential_names(auth: Option<&HttpAuth>) -> String {
    let values: Vec<&str> = match auth {
        Some(HttpAuth::Bearer(token)) => vec![token],
        Some(HttpAuth::Basic { user, password }) => vec![user, password],
        Some(HttpAuth::Header { value, .. }) | Some(HttpAuth::Query { value, .. }) => vec![value],
        None => vec![],
    };
    let mut names = Vec::new();
    for v in values {
        let redacted = crate::config::env::redact(v);
        let mut rest = redacted.as_str();
        while let Some(start) = rest.find("${") {
            let Some(len) = rest[start..].find('}') else {
                break;
            };
            let name = &rest[start..start + len + 1];
            if !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
            rest = &rest[start + len + 1..];
        }
    }
    if names.is_empty() {
        "`auth:`".to_string()
    } else {
        names.join(" and ")
    }
}

/// Standard base64 with padding (for `Authorization: Basic`).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

// ---------------------------------------------------------------- small helpers

/// `url` with each pair set: replacing a parameter of that name, or (with
/// `replace` false) only when the URL lacks it.
fn with_params(url: &Url, pairs: &[(String, String)], replace: bool) -> Url {
    if pairs.is_empty() {
        return url.clone();
    }
    let existing: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let mut kept: Vec<(String, String)> = if replace {
        existing
            .iter()
            .filter(|(k, _)| !pairs.iter().any(|(p, _)| p == k))
            .cloned()
            .collect()
    } else {
        existing.clone()
    };
    for (k, v) in pairs {
        if replace || !existing.iter().any(|(e, _)| e == k) {
            kept.push((k.clone(), v.clone()));
        }
    }
    let mut out = url.clone();
    out.query_pairs_mut().clear().extend_pairs(kept);
    out
}

/// The value at a dotted path: object keys, or array indexes (`items.0.id`).
fn lookup<'v>(value: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('.').try_fold(value, |v, key| match v {
        Value::Object(map) => map.get(key),
        Value::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

fn lookup_mut<'v>(value: &'v mut Value, path: &str) -> Option<&'v mut Value> {
    path.split('.').try_fold(value, |v, key| match v {
        Value::Object(map) => map.get_mut(key),
        Value::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get_mut(i)),
        _ => None,
    })
}

/// What a JSON value is, for messages (never its content, except object keys).
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(_) => "a boolean".into(),
        Value::Number(_) => "a number".into(),
        Value::String(_) => "a string".into(),
        Value::Array(_) => "an array".into(),
        Value::Object(map) => {
            let keys: Vec<&str> = map.keys().take(12).map(String::as_str).collect();
            if keys.is_empty() {
                "an empty object".into()
            } else {
                format!("an object (keys: {})", keys.join(", "))
            }
        }
    }
}

/// The records array out of a page's body (`path` None: the body itself).
fn take_records(body: &mut Value, path: Option<&str>) -> Result<Vec<Value>, String> {
    let place = match path {
        Some(p) => format!("`{p}`"),
        None => "the top of the response".to_string(),
    };
    let target = match path {
        None => Some(&mut *body),
        Some(p) => lookup_mut(body, p),
    };
    let Some(target) = target else {
        return Err(format!(
            "expected an array of records at {place}, found nothing there; the response is {}: check `records:`",
            describe(body)
        ));
    };
    match target {
        Value::Array(items) => {
            if let Some((i, item)) = items.iter().enumerate().find(|(_, v)| !v.is_object()) {
                return Err(format!(
                    "expected an array of objects at {place}, found {} at index {i}",
                    describe(item)
                ));
            }
            Ok(std::mem::take(items))
        }
        // Some APIs say "no records" with null.
        Value::Null => Ok(Vec::new()),
        other => {
            let hint = if path.is_none() {
                ": set `records:` to the dotted path of the array of records"
            } else {
                ": check `records:`"
            };
            Err(format!(
                "expected an array at {place}, found {}{hint}",
                describe(other)
            ))
        }
    }
}

/// The next cursor at `path`: absent, null or empty ends the pages.
fn cursor_at(body: &Value, path: &str) -> Result<Option<String>, String> {
    match lookup(body, path) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => Err(format!(
            "expected the next cursor at `{path}` to be a string or a number, found {}: check `paginate: {{cursor: {{path}}}}`",
            describe(other)
        )),
    }
}

/// A record as the output columns: `fields` picked by dotted path, else as is.
fn shape(record: Value, fields: &[(String, String)]) -> Value {
    if fields.is_empty() {
        return record;
    }
    let mut out = Map::new();
    for (column, path) in fields {
        out.insert(
            column.clone(),
            lookup(&record, path).cloned().unwrap_or(Value::Null),
        );
    }
    Value::Object(out)
}

/// The `rel="next"` target of a `Link` header value.
fn link_next(header: &str) -> Option<String> {
    let mut rest = header;
    while let Some(open) = rest.find('<') {
        let close = open + rest[open..].find('>')?;
        let target = rest[open + 1..close].trim();
        let after = &rest[close + 1..];
        // This link's parameters run up to the next link.
        let params_end = after.find('<').unwrap_or(after.len());
        let is_next = after[..params_end].split(';').any(|param| {
            let Some((key, value)) = param.split_once('=') else {
                return false;
            };
            key.trim().eq_ignore_ascii_case("rel")
                && value
                    .trim()
                    .trim_end_matches(',')
                    .trim()
                    .trim_matches('"')
                    .split_ascii_whitespace()
                    .any(|rel| rel.eq_ignore_ascii_case("next"))
        });
        if is_next {
            return Some(target.to_string());
        }
        rest = &after[params_end..];
    }
    None
}

/// `Retry-After`: seconds, or an HTTP date (RFC 2822 form, e.g.
/// `Wed, 21 Oct 2026 07:28:00 GMT`); a date in the past means now.
fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (when.with_timezone(&Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

/// The wait before retry `retry` (1-based): 250 ms doubling, capped at 10 s, with
/// "equal jitter" (between half and all of it).
fn backoff(retry: u32) -> Duration {
    let full = BACKOFF_BASE
        .saturating_mul(1u32 << retry.saturating_sub(1).min(16))
        .min(BACKOFF_CAP);
    let half = full.as_millis() as u64 / 2;
    Duration::from_millis(half + random_below(half + 1))
}

/// A pseudo-random number below `bound` (> 0), from the clock and a counter
/// through SplitMix64: enough to spread retries, not for anything secret.
fn random_below(bound: u64) -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut z = nanos
        ^ COUNTER
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    z % bound.max(1)
}

/// `HTTP 503 Service Unavailable`.
fn status_text(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("HTTP {} {reason}", status.as_u16()),
        None => format!("HTTP {}", status.as_u16()),
    }
}

/// The start of a body, on one line, for messages.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut out: String = one_line.chars().take(SNIPPET_CHARS).collect();
    if one_line.chars().count() > SNIPPET_CHARS {
        out.push_str("...");
    }
    out
}

/// ` (`text`)`, or nothing for empty text.
fn quoted(text: &str) -> String {
    if text.is_empty() {
        String::new()
    } else {
        format!(" `{text}`")
    }
}

/// An error and its causes, `: `-joined (reqwest's own text says little).
fn chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// `1s`, `1.5s`, `250ms`.
fn human(d: Duration) -> String {
    if d.as_millis().is_multiple_of(1000) {
        format!("{}s", d.as_secs())
    } else if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

// ---------------------------------------------------------------- into Arrow

/// The records as Arrow batches: declared types, the rest inferred over all of
/// them; nested objects and arrays become structs and lists (or JSON text in a
/// column declared `varchar`).
fn to_batches(
    name: &str,
    fields: &[(String, String)],
    declared: &[(String, DataType)],
    pulled: Pulled,
    secrets: &Secrets,
) -> Result<(SchemaRef, Vec<RecordBatch>), SourceError> {
    let Pulled { mut records, pages } = pulled;
    let config = |message: String| SourceError::Config {
        name: name.to_string(),
        message,
    };
    let remote = |message: String| SourceError::Remote {
        name: name.to_string(),
        message: secrets.scrub(&message),
    };
    if !fields.is_empty() {
        for (column, _) in declared {
            if !fields.iter().any(|(f, _)| f == column) {
                let picked: Vec<&str> = fields.iter().map(|(f, _)| f.as_str()).collect();
                return Err(config(format!(
                    "`columns:` declares `{column}`, which `fields:` does not pick (its columns: {})",
                    picked.join(", ")
                )));
            }
        }
    }
    let declared_types: HashMap<&str, &DataType> =
        declared.iter().map(|(c, t)| (c.as_str(), t)).collect();

    // Columns declared as text keep nested values as JSON text.
    let text_columns: Vec<&str> = declared
        .iter()
        .filter(|(_, t)| matches!(t, DataType::Utf8 | DataType::LargeUtf8))
        .map(|(c, _)| c.as_str())
        .collect();
    if !text_columns.is_empty() {
        for record in &mut records {
            if let Value::Object(map) = record {
                for column in &text_columns {
                    if let Some(v) = map.get_mut(*column)
                        && (v.is_object() || v.is_array())
                    {
                        *v = Value::String(v.to_string());
                    }
                }
            }
        }
    }

    // Column order: `fields:` as configured, else keys as first seen, then any
    // declared column no record has (all NULL).
    let mut names: Vec<String> = Vec::new();
    if fields.is_empty() {
        let mut seen = HashSet::new();
        for record in &records {
            if let Value::Object(map) = record {
                for key in map.keys() {
                    if seen.insert(key.as_str()) {
                        names.push(key.clone());
                    }
                }
            }
        }
        for (column, _) in declared {
            if !names.contains(column) {
                names.push(column.clone());
            }
        }
    } else {
        names = fields.iter().map(|(c, _)| c.clone()).collect();
    }

    if records.is_empty() {
        if names.is_empty() {
            let first = pages.first().map(|p| p.request.clone()).unwrap_or_default();
            return Err(config(format!(
                "{first} returned no records, so there are no columns to infer: declare them in `columns:` (or pick them with `fields:`) so that an empty response has a schema"
            )));
        }
        let schema = Arc::new(Schema::new(
            names
                .iter()
                .map(|n| {
                    let t = declared_types
                        .get(n.as_str())
                        .map_or(DataType::Utf8, |t| (*t).clone());
                    Field::new(n, t, true)
                })
                .collect::<Vec<_>>(),
        ));
        return Ok((schema, Vec::new()));
    }

    let inferred = infer_json_schema_from_iterator(records.iter().map(Ok::<&Value, ArrowError>))
        .map_err(|e| remote(inference_conflict(&records, &names, &pages, &e)))?;
    let schema = Arc::new(Schema::new(
        names
            .iter()
            .map(|n| {
                let t = match declared_types.get(n.as_str()) {
                    Some(t) => (*t).clone(),
                    None => inferred
                        .field_with_name(n)
                        .map_or(DataType::Utf8, |f| normalize(f.data_type())),
                };
                Field::new(n, t, true)
            })
            .collect::<Vec<_>>(),
    ));

    let decoder = || {
        ReaderBuilder::new(schema.clone())
            .with_batch_size(BATCH_ROWS)
            .with_coerce_primitive(true)
            .build_decoder()
    };
    let mut batches = Vec::with_capacity(records.len().div_ceil(BATCH_ROWS));
    let mut ndjson = Vec::new();
    for (chunk_no, chunk) in records.chunks(BATCH_ROWS).enumerate() {
        ndjson.clear();
        for record in chunk {
            serde_json::to_writer(&mut ndjson, record)
                .map_err(|e| remote(format!("cannot re-encode a record: {e}")))?;
            ndjson.push(b'\n');
        }
        let decoded = decoder().and_then(|mut d| {
            decode_all(&mut d, &ndjson, &mut batches)?;
            if let Some(batch) = d.flush()? {
                batches.push(batch);
            }
            Ok(())
        });
        if let Err(e) = decoded {
            let (index, what) = explain(&schema, chunk).unwrap_or((0, arrow_message(&e)));
            let at = chunk_no * BATCH_ROWS + index;
            return Err(remote(format!(
                "{}: {what}: declare the column's type in `columns:` (or fix the data)",
                locate(&pages, at),
            )));
        }
    }
    Ok((schema, batches))
}

/// Feeds NDJSON to `decoder`, flushing full batches into `batches`.
fn decode_all(
    decoder: &mut datafusion::arrow::json::reader::Decoder,
    mut bytes: &[u8],
    batches: &mut Vec<RecordBatch>,
) -> Result<(), ArrowError> {
    while !bytes.is_empty() {
        let read = decoder.decode(bytes)?;
        bytes = &bytes[read..];
        if read == 0 {
            match decoder.flush()? {
                Some(batch) => batches.push(batch),
                None => break,
            }
        }
    }
    Ok(())
}

/// `GET <url> (page 2), record 7` for the record at `index`.
fn locate(pages: &[PageInfo], index: usize) -> String {
    let at = pages
        .partition_point(|p| p.first <= index)
        .saturating_sub(1);
    match pages.get(at) {
        Some(p) => format!(
            "{} (page {}), record {}",
            p.request,
            p.number,
            index - p.first + 1
        ),
        None => format!("record {}", index + 1),
    }
}

/// Decodes one record against `schema`.
fn decode_one(schema: &SchemaRef, record: &Value) -> Result<(), ArrowError> {
    let mut bytes = serde_json::to_vec(record).map_err(|e| ArrowError::JsonError(e.to_string()))?;
    bytes.push(b'\n');
    let mut decoder = ReaderBuilder::new(schema.clone())
        .with_coerce_primitive(true)
        .build_decoder()?;
    decode_all(&mut decoder, &bytes, &mut Vec::new())?;
    decoder.flush().map(|_| ())
}

/// The first record of `chunk` that does not decode, and why: "column `x`: ...".
fn explain(schema: &SchemaRef, chunk: &[Value]) -> Option<(usize, String)> {
    chunk.iter().enumerate().find_map(|(i, record)| {
        let error = decode_one(schema, record).err()?;
        let column = schema.fields().iter().find_map(|field| {
            let one = Arc::new(Schema::new(vec![field.as_ref().clone()]));
            let mut only = Map::new();
            if let Some(v) = record.get(field.name()) {
                only.insert(field.name().clone(), v.clone());
            }
            decode_one(&one, &Value::Object(only))
                .err()
                .map(|e| format!("column `{}`: {}", field.name(), arrow_message(&e)))
        });
        Some((i, column.unwrap_or_else(|| arrow_message(&error))))
    })
}

/// Arrow's message without its error-kind prefix and field context.
fn arrow_message(e: &ArrowError) -> String {
    let text = e.to_string();
    let mut text = ["Json error: ", "Parser error: ", "Cast error: "]
        .iter()
        .find_map(|p| text.strip_prefix(p))
        .unwrap_or(&text)
        .to_string();
    while let Some(rest) = text.strip_prefix("whilst decoding field '") {
        match rest.split_once("': ") {
            Some((_, after)) => text = after.to_string(),
            None => break,
        }
    }
    text
}

/// Which column's values do not fit one type (objects in some records, other
/// values in others), found by inferring column by column.
fn inference_conflict(
    records: &[Value],
    names: &[String],
    pages: &[PageInfo],
    error: &ArrowError,
) -> String {
    let where_ = pages
        .first()
        .map(|p| format!("{} and the following pages", p.request))
        .unwrap_or_default();
    for name in names {
        let single = records.iter().map(|r| {
            let mut one = Map::new();
            if let Some(v) = r.get(name) {
                one.insert(name.clone(), v.clone());
            }
            Ok::<Value, ArrowError>(Value::Object(one))
        });
        if infer_json_schema_from_iterator(single).is_err() {
            return format!(
                "{where_}: column `{name}` holds objects or arrays in some records and other values in others: pick its parts with `fields:` (e.g. `{name}_id: {name}.id`), or declare it `varchar` in `columns:` to keep it as JSON text"
            );
        }
    }
    format!(
        "{where_}: the records' column types cannot be inferred ({}): declare them in `columns:` or pick them with `fields:`",
        arrow_message(error)
    )
}

/// Inferred types made usable: NULL-only columns as text, struct fields in name
/// order (inference sees them in no particular order).
fn normalize(t: &DataType) -> DataType {
    match t {
        DataType::Null => DataType::Utf8,
        DataType::List(item) => DataType::List(Arc::new(
            item.as_ref()
                .clone()
                .with_data_type(normalize(item.data_type())),
        )),
        DataType::Struct(children) => {
            let mut children: Vec<Field> = children
                .iter()
                .map(|f| f.as_ref().clone().with_data_type(normalize(f.data_type())))
                .collect();
            children.sort_by(|a, b| a.name().cmp(b.name()));
            DataType::Struct(children.into())
        }
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::{
        Decimal128Type, Int64Type, TimeUnit, TimestampMicrosecondType,
    };
    use serde_json::json;

    #[test]
    fn dotted_paths_walk_objects_and_arrays() {
        let v = json!({"data": {"items": [{"id": 7}], "n": null}, "a.b": 1});
        assert_eq!(lookup(&v, "data.items.0.id"), Some(&json!(7)));
        assert_eq!(lookup(&v, "data.n"), Some(&Value::Null));
        assert_eq!(lookup(&v, "data.items.1"), None);
        assert_eq!(lookup(&v, "data.items.x"), None);
        assert_eq!(lookup(&v, "data.missing.deeper"), None);
        assert_eq!(lookup(&v, "data.n.deeper"), None);
    }

    #[test]
    fn link_headers_yield_the_next_page() {
        let github = r#"<https://api.github.com/x?page=2>; rel="next", <https://api.github.com/x?page=5>; rel="last""#;
        assert_eq!(
            link_next(github).as_deref(),
            Some("https://api.github.com/x?page=2")
        );
        let last_first = r#"<https://a/x?page=1>; rel="prev", </x?page=3&a=1,2>; rel=next"#;
        assert_eq!(link_next(last_first).as_deref(), Some("/x?page=3&a=1,2"));
        let several = r#"<https://a/x?p=4>; title="n"; rel="next last""#;
        assert_eq!(link_next(several).as_deref(), Some("https://a/x?p=4"));
        assert_eq!(link_next(r#"<https://a/x?page=1>; rel="prev""#), None);
        assert_eq!(link_next(""), None);
        assert_eq!(link_next("<broken"), None);
    }

    #[test]
    fn retry_after_is_seconds_or_an_http_date() {
        let now = DateTime::parse_from_rfc3339("2026-10-21T07:28:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(parse_retry_after("1", now), Some(Duration::from_secs(1)));
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2026 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2026 07:00:00 GMT", now),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }

    #[test]
    fn urls_are_shown_without_credentials() {
        let hidden = vec!["api_key".to_string(), "x-key".to_string()];
        let url = Url::parse("https://kpi:s3cret@api.example.com/v1/t?page=2&X-Key=abc123&q=a+b")
            .unwrap();
        let shown = shown_url(&url, &hidden);
        assert_eq!(shown, "https://api.example.com/v1/t?page=2&X-Key=***&q=a+b");
        let plain = Url::parse("http://127.0.0.1:8080/items?cursor=abc").unwrap();
        assert_eq!(
            shown_url(&plain, &hidden),
            "http://127.0.0.1:8080/items?cursor=abc"
        );
        let user_only = Url::parse("http://me@h/x").unwrap();
        assert_eq!(shown_url(&user_only, &hidden), "http://h/x");
    }

    #[test]
    fn secrets_are_scrubbed_in_every_form() {
        let cfg = source(
            "http://u:urlpass@h/x",
            Some(HttpAuth::Basic {
                user: "ann".into(),
                password: "pa ss/word".into(),
            }),
        );
        let secrets = Secrets::of(&cfg, &Url::parse(&cfg.url).unwrap());
        let text = format!(
            "a pa ss/word b pa+ss%2Fword c {} d urlpass",
            base64(b"ann:pa ss/word")
        );
        assert_eq!(secrets.scrub(&text), "a *** b *** c *** d ***");
    }

    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(
            base64(b"Aladdin:open sesame"),
            "QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
    }

    #[test]
    fn params_replace_or_fill_in() {
        let url = Url::parse("http://h/x?page=1&a=b").unwrap();
        let set = with_params(&url, &[("page".into(), "2".into())], true);
        assert_eq!(set.as_str(), "http://h/x?a=b&page=2");
        let filled = with_params(
            &url,
            &[("page".into(), "9".into()), ("key".into(), "k".into())],
            false,
        );
        assert_eq!(filled.as_str(), "http://h/x?page=1&a=b&key=k");
    }

    #[test]
    fn records_must_be_an_array_of_objects() {
        let mut body = json!({"data": {"items": {"id": 1}}});
        let err = take_records(&mut body, Some("data.items")).unwrap_err();
        assert!(
            err.starts_with("expected an array at `data.items`, found an object (keys: id)"),
            "{err}"
        );
        let mut body = json!({"data": [1]});
        let err = take_records(&mut body, Some("data")).unwrap_err();
        assert!(err.contains("found a number at index 0"), "{err}");
        let mut body = json!({"data": []});
        let err = take_records(&mut body, Some("items")).unwrap_err();
        assert!(err.contains("found nothing there"), "{err}");
        let mut body = json!({"data": [], "meta": {}});
        let err = take_records(&mut body, None).unwrap_err();
        assert!(err.contains("set `records:`"), "{err}");
        let mut body = json!({"data": {"items": null}});
        assert!(
            take_records(&mut body, Some("data.items"))
                .unwrap()
                .is_empty()
        );
        let mut body = json!([{"a": 1}, {"a": 2}]);
        assert_eq!(take_records(&mut body, None).unwrap().len(), 2);
    }

    #[test]
    fn cursors_end_when_absent_null_or_empty() {
        let body = json!({"meta": {"next": "abc", "n": 5, "e": "", "z": null, "o": {}}});
        assert_eq!(
            cursor_at(&body, "meta.next").unwrap().as_deref(),
            Some("abc")
        );
        assert_eq!(cursor_at(&body, "meta.n").unwrap().as_deref(), Some("5"));
        assert_eq!(cursor_at(&body, "meta.e").unwrap(), None);
        assert_eq!(cursor_at(&body, "meta.z").unwrap(), None);
        assert_eq!(cursor_at(&body, "meta.missing").unwrap(), None);
        assert!(cursor_at(&body, "meta.o").is_err());
    }

    #[test]
    fn backoff_doubles_with_jitter_and_a_cap() {
        for retry in 1..=10 {
            let full = BACKOFF_BASE
                .saturating_mul(1 << (retry - 1))
                .min(BACKOFF_CAP);
            let wait = backoff(retry);
            assert!(wait >= full / 2 && wait <= full, "retry {retry}: {wait:?}");
        }
        assert!(backoff(u32::MAX) <= BACKOFF_CAP);
    }

    fn pulled(records: Vec<Value>) -> Pulled {
        Pulled {
            records,
            pages: vec![PageInfo {
                number: 1,
                first: 0,
                request: "GET http://h/x".into(),
            }],
        }
    }

    #[test]
    fn records_become_typed_batches() {
        let records = vec![
            json!({"id": 1, "at": "2026-01-05T10:00:00Z", "price": "0.10", "c": {"n": "Ann"}, "tags": ["a"]}),
            json!({"id": 2, "at": "2026-01-06T00:00:00+02:00", "price": 0.2, "extra": true}),
        ];
        let declared = vec![
            (
                "at".to_string(),
                DataType::Timestamp(TimeUnit::Microsecond, None),
            ),
            ("price".to_string(), DataType::Decimal128(10, 2)),
            ("gone".to_string(), DataType::Int64),
        ];
        let (schema, batches) =
            to_batches("t", &[], &declared, pulled(records), &Secrets::default()).unwrap();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["at", "c", "id", "price", "tags", "extra", "gone"]);
        assert!(matches!(
            schema.field_with_name("c").unwrap().data_type(),
            DataType::Struct(_)
        ));
        let b = &batches[0];
        assert_eq!(b.num_rows(), 2);
        let at = b.column(0).as_primitive::<TimestampMicrosecondType>();
        assert_eq!(at.value(0), 1_767_607_200_000_000);
        assert_eq!(at.value(1), 1_767_650_400_000_000);
        let price = b.column(3).as_primitive::<Decimal128Type>();
        assert_eq!((price.value(0), price.value(1)), (10, 20));
        assert_eq!(b.column(2).as_primitive::<Int64Type>().value(1), 2);
        assert_eq!(b.column(6).null_count(), 2);
    }

    #[test]
    fn fields_pick_nested_values_and_text_keeps_json() {
        let fields = vec![
            ("customer".to_string(), "customer.name".to_string()),
            ("raw".to_string(), "customer".to_string()),
            ("missing".to_string(), "no.such.path".to_string()),
        ];
        let records: Vec<Value> = [
            json!({"customer": {"name": "Ann", "id": 1}}),
            json!({"customer": {"name": "Bo"}}),
        ]
        .into_iter()
        .map(|r| shape(r, &fields))
        .collect();
        let declared = vec![("raw".to_string(), DataType::Utf8)];
        let (schema, batches) = to_batches(
            "t",
            &fields,
            &declared,
            pulled(records),
            &Secrets::default(),
        )
        .unwrap();
        assert_eq!(schema.field(0).data_type(), &DataType::Utf8);
        assert_eq!(
            schema.field(2).data_type(),
            &DataType::Utf8,
            "all NULL: text"
        );
        let b = &batches[0];
        assert_eq!(b.column(0).as_string::<i32>().value(1), "Bo");
        assert_eq!(
            b.column(1).as_string::<i32>().value(0),
            r#"{"id":1,"name":"Ann"}"#
        );
        assert_eq!(b.column(2).null_count(), 2);
    }

    #[test]
    fn bad_values_and_empty_results() {
        let records = vec![json!({"n": 1}), json!({"n": "lots"})];
        let declared = vec![("n".to_string(), DataType::Int64)];
        let err = to_batches("t", &[], &declared, pulled(records), &Secrets::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("GET http://h/x (page 1), record 2"), "{err}");
        assert!(err.contains("column `n`: failed to parse"), "{err}");

        let records = vec![json!({"c": {"a": 1}}), json!({"c": 5})];
        let err = to_batches("t", &[], &[], pulled(records), &Secrets::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("column `c` holds objects"), "{err}");

        let err = to_batches("t", &[], &[], pulled(vec![]), &Secrets::default()).unwrap_err();
        assert!(matches!(err, SourceError::Config { .. }), "{err}");
        let (schema, batches) =
            to_batches("t", &[], &declared, pulled(vec![]), &Secrets::default()).unwrap();
        assert_eq!((schema.fields().len(), batches.len()), (1, 0));
    }

    #[test]
    fn many_records_are_cut_into_batches() {
        let records: Vec<Value> = (0..20_000).map(|i| json!({"i": i})).collect();
        let (_, batches) = to_batches("t", &[], &[], pulled(records), &Secrets::default()).unwrap();
        let sizes: Vec<usize> = batches.iter().map(|b| b.num_rows()).collect();
        assert_eq!(sizes, [8192, 8192, 3616]);
    }

    fn source(url: &str, auth: Option<HttpAuth>) -> HttpSource {
        HttpSource {
            url: url.into(),
            method: HttpMethod::Get,
            body: None,
            headers: vec![],
            params: vec![("fixed".into(), "1".into())],
            records: None,
            paginate: None,
            max_pages: 1000,
            auth,
            timeout: Duration::from_secs(5),
            retries: 0,
            rate_limit: None,
            fields: vec![],
            columns: vec![],
        }
    }

    /// Serves one request with `body`; returns the port and the request line.
    async fn serve_once(body: &'static str) -> (u16, tokio::task::JoinHandle<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut chunk).await.unwrap();
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let reply = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(reply.as_bytes()).await.unwrap();
            let text = String::from_utf8_lossy(&buf).into_owned();
            text.lines().next().unwrap_or("").to_string()
        });
        (port, task)
    }

    #[tokio::test]
    async fn since_sends_the_watermark_as_a_parameter() {
        let (port, request) = serve_once(r#"[{"id": 3, "updated": "2026-02-01"}]"#).await;
        let cfg = source(&format!("http://127.0.0.1:{port}/t"), None);
        let since = Since {
            column: "updated",
            param: Some("updated_since"),
            value: "2026-01-31T00:00:00Z",
        };
        let (schema, batches) = fetch("t", &cfg, Mode::Load, Some(since)).await.unwrap();
        assert_eq!(schema.fields().len(), 2);
        assert_eq!(batches[0].num_rows(), 1);
        assert_eq!(
            request.await.unwrap(),
            "GET /t?fixed=1&updated_since=2026-01-31T00%3A00%3A00Z HTTP/1.1"
        );
    }

    #[tokio::test]
    async fn since_without_a_param_sends_nothing_extra() {
        let (port, request) = serve_once("[]").await;
        let mut cfg = source(&format!("http://127.0.0.1:{port}/t"), None);
        cfg.columns = vec![("id".into(), DataType::Int64)];
        let since = Since {
            column: "id",
            param: None,
            value: "10",
        };
        let (schema, batches) = fetch("t", &cfg, Mode::Load, Some(since)).await.unwrap();
        assert_eq!((schema.fields().len(), batches.len()), (1, 0));
        assert_eq!(request.await.unwrap(), "GET /t?fixed=1 HTTP/1.1");
    }
}
