//! HTTP JSON API sources against a small HTTP/1.1 server run by each test on
//! 127.0.0.1: every pagination style and the page limit, retries on 5xx and 429,
//! timeouts, malformed responses, auth styles, secrets kept out of all output,
//! POST bodies, dotted fields, declared and inferred types, the rate limit.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::util::{Row, num, project, rows, stderr, stdout, text};

// ---------------------------------------------------------------- the server

/// A request as the server saw it.
#[derive(Debug, Clone)]
struct Request {
    method: String,
    /// Path and query, as sent.
    target: String,
    headers: Vec<(String, String)>,
    body: String,
    at: Instant,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// A query parameter, decoded.
    fn param(&self, name: &str) -> Option<String> {
        let query = self.target.split_once('?')?.1;
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k) == name).then(|| decode(v))
        })
    }
}

/// `application/x-www-form-urlencoded` decoding.
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

/// What the server answers; `None` from a handler: accept and never answer.
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

fn json(body: impl Into<String>) -> Option<Response> {
    Some(Response {
        status: 200,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: body.into(),
    })
}

fn status(code: u16, body: impl Into<String>) -> Option<Response> {
    Some(Response {
        status: code,
        headers: vec![("Content-Type".into(), "text/plain".into())],
        body: body.into(),
    })
}

fn with_header(response: Option<Response>, name: &str, value: &str) -> Option<Response> {
    response.map(|mut r| {
        r.headers.push((name.into(), value.into()));
        r
    })
}

type Handler = dyn Fn(&Request, usize) -> Option<Response> + Send + Sync;

struct Server {
    port: u16,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl Server {
    /// Serves every connection on its own thread; `handler` gets each request
    /// and its index (0 for the first the server saw).
    fn start(
        handler: impl Fn(&Request, usize) -> Option<Response> + Send + Sync + 'static,
    ) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let seen = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let handler = handler.clone();
                let seen = seen.clone();
                std::thread::spawn(move || serve(stream, &*handler, &seen));
            }
        });
        Server { port, requests }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

fn serve(stream: TcpStream, handler: &Handler, seen: &Mutex<Vec<Request>>) {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let at = Instant::now();
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let length: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    let request = Request {
        method,
        target,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        at,
    };
    let index = {
        let mut seen = seen.lock().unwrap();
        seen.push(request.clone());
        seen.len() - 1
    };
    let Some(response) = handler(&request, index) else {
        // Hang: hold the connection open, answer nothing.
        std::thread::sleep(Duration::from_secs(30));
        return;
    };
    if response.status == 0 {
        // Drop the connection without a word.
        let _ = stream.shutdown(std::net::Shutdown::Both);
        return;
    }
    let mut out = format!("HTTP/1.1 {} Whatever\r\n", response.status);
    for (k, v) in &response.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n{}",
        response.body.len(),
        response.body
    ));
    let mut stream = stream;
    let _ = stream.write_all(out.as_bytes());
    let _ = stream.flush();
}

// ---------------------------------------------------------------- pipelines

const AS_OF: &str = "2026-12-31";

/// Row count and a sum of `amount`, as one KPI each.
const COUNT_SQL: &str =
    "SELECT DATE '2026-01-01' AS period, CAST(count(*) AS DOUBLE) AS value FROM t";
const SUM_SQL: &str =
    "SELECT DATE '2026-01-01' AS period, CAST(sum(amount) AS DOUBLE) AS value FROM t";

/// A project whose one source `t` is `source` (indented under `t:`), with KPIs
/// (id, SQL, dimensions).
fn http_project(source: &str, kpis: &[(&str, &str, &str)]) -> tempfile::TempDir {
    let mut yaml = format!("name: p\noutput: out\nsources:\n  t:\n{source}\nkpis:\n");
    let mut files = Vec::new();
    for (id, sql, dims) in kpis {
        yaml.push_str(&format!(
            "  - id: {id}\n    sql: sql/{id}.sql\n    grain: month\n"
        ));
        if !dims.is_empty() {
            yaml.push_str(&format!("    dimensions: [{dims}]\n"));
        }
        files.push((format!("sql/{id}.sql"), sql.to_string()));
    }
    let mut all: Vec<(&str, &str)> = vec![("pipelines/p.yaml", yaml.as_str())];
    all.extend(files.iter().map(|(p, s)| (p.as_str(), s.as_str())));
    project(&all)
}

/// The default two KPIs: `rows` (count) and `total` (sum of amount).
fn counting_project(source: &str) -> tempfile::TempDir {
    http_project(source, &[("rows", COUNT_SQL, ""), ("total", SUM_SQL, "")])
}

/// Runs the binary in `dir` with extra environment variables.
fn kpiforge_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kpiforge"));
    command
        .args(args)
        .current_dir(dir)
        .env_remove("KPIFORGE_LOG");
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("the kpiforge binary runs")
}

fn run(dir: &Path, env: &[(&str, &str)]) -> Output {
    kpiforge_env(dir, &["run", "pipelines/p.yaml", "--as-of", AS_OF], env)
}

#[track_caller]
fn run_ok(dir: &Path, env: &[(&str, &str)]) -> Output {
    let out = run(dir, env);
    assert!(
        out.status.success(),
        "run failed:\n{}{}",
        stdout(&out),
        stderr(&out)
    );
    out
}

/// The published KPI values.
fn kpi_rows(dir: &Path) -> Vec<Row> {
    rows(&dir.join(format!(
        "out/kpi_values/pipeline=p/as_of={AS_OF}/part-0.parquet"
    )))
}

/// The value of a KPI without dimensions.
fn value(rows: &[Row], kpi: &str) -> Option<f64> {
    let row = rows
        .iter()
        .find(|r| text(r, "kpi_id") == Some(kpi))
        .unwrap_or_else(|| panic!("no KPI {kpi}: {rows:?}"));
    num(row, "value")
}

/// (segment, value) of a KPI's rows, sorted by segment.
fn segments(rows: &[Row], kpi: &str) -> Vec<(String, Option<f64>)> {
    let mut out: Vec<(String, Option<f64>)> = rows
        .iter()
        .filter(|r| text(r, "kpi_id") == Some(kpi))
        .map(|r| {
            (
                text(r, "segment").unwrap_or("").to_string(),
                num(r, "value"),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// `n` records `{id, amount}` with ids from `first` and amount = id.
fn records(first: u64, n: u64) -> String {
    let items: Vec<String> = (first..first + n)
        .map(|i| format!(r#"{{"id": {i}, "amount": {i}}}"#))
        .collect();
    format!("[{}]", items.join(", "))
}

#[track_caller]
fn assert_failed(out: &Output, code: i32, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "exit code; stderr:\n{err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}:\n{err}");
    }
}

// ---------------------------------------------------------------- pagination

#[test]
fn pages_by_number_until_an_empty_page() {
    // Pages 1-3 hold 2 records each (ids 1-6); page 4 is empty.
    let server = Server::start(|r, _| {
        let page: u64 = r.param("page").unwrap().parse().unwrap();
        json(if page <= 3 {
            records(page * 2 - 1, 2)
        } else {
            "[]".into()
        })
    });
    let source = format!(
        "    http:\n      url: {}\n      paginate: {{page: {{param: page, size_param: per_page, size: 2}}}}",
        server.url("/items")
    );
    let dir = counting_project(&source);
    run_ok(dir.path(), &[]);
    let kpis = kpi_rows(dir.path());
    assert_eq!(value(&kpis, "rows"), Some(6.0));
    assert_eq!(value(&kpis, "total"), Some(21.0));
    let seen = server.requests();
    let pages: Vec<String> = seen.iter().map(|r| r.param("page").unwrap()).collect();
    assert_eq!(pages, ["1", "2", "3", "4"]);
    assert!(
        seen.iter()
            .all(|r| r.param("per_page").as_deref() == Some("2"))
    );
    assert!(
        seen.iter()
            .all(|r| r.path() == "/items" && r.method == "GET")
    );

    // `validate` reads the first page only, for the schema.
    let out = kpiforge_env(dir.path(), &["validate", "pipelines/p.yaml"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(server.requests().len(), 5);
}

#[test]
fn pages_by_offset_until_a_short_page() {
    // 5 records, 2 a page: offsets 0, 2, 4; the last page holds 1 and ends it.
    let server = Server::start(|r, _| {
        let offset: u64 = r.param("offset").unwrap().parse().unwrap();
        let limit: u64 = r.param("limit").unwrap().parse().unwrap();
        let n = limit.min(5u64.saturating_sub(offset));
        json(records(offset + 1, n))
    });
    let source = format!(
        "    http:\n      url: {}\n      paginate: {{offset: {{limit: 2}}}}",
        server.url("/items")
    );
    let dir = counting_project(&source);
    run_ok(dir.path(), &[]);
    let kpis = kpi_rows(dir.path());
    assert_eq!(value(&kpis, "rows"), Some(5.0));
    assert_eq!(value(&kpis, "total"), Some(15.0));
    let offsets: Vec<String> = server
        .requests()
        .iter()
        .map(|r| r.param("offset").unwrap())
        .collect();
    assert_eq!(offsets, ["0", "2", "4"]);
}

#[test]
fn pages_by_cursor_in_the_body() {
    // No cursor -> page 1 (next "b 2"), "b 2" -> page 2 (next 3, a number), 3 -> page 3 (next null).
    let server = Server::start(|r, _| {
        let (items, next) = match r.param("after").as_deref() {
            None => (records(1, 2), r#""b 2""#),
            Some("b 2") => (records(3, 2), "3"),
            Some("3") => (records(5, 1), "null"),
            other => panic!("unexpected cursor {other:?}"),
        };
        json(format!(
            r#"{{"data": {items}, "meta": {{"next": {next}}}}}"#
        ))
    });
    let source = format!(
        "    http:\n      url: {}\n      records: data\n      paginate: {{cursor: {{path: meta.next, param: after}}}}",
        server.url("/items")
    );
    let dir = counting_project(&source);
    run_ok(dir.path(), &[]);
    let kpis = kpi_rows(dir.path());
    assert_eq!(value(&kpis, "rows"), Some(5.0));
    assert_eq!(value(&kpis, "total"), Some(15.0));
    let cursors: Vec<Option<String>> = server.requests().iter().map(|r| r.param("after")).collect();
    assert_eq!(cursors, [None, Some("b 2".into()), Some("3".into())]);
}

#[test]
fn pages_by_link_header() {
    // Page 1 links to page 2 by an absolute URL, page 2 to page 3 by a relative
    // one; page 3 has no next link.
    let server = Server::start(|r, _| {
        let port = r.header("host").unwrap().to_string();
        match r.param("page").as_deref() {
            None => with_header(
                json(records(1, 2)),
                "Link",
                &format!(
                    r#"<http://{port}/items?page=2&fixed=x>; rel="next", <http://{port}/items?page=3>; rel="last""#
                ),
            ),
            Some("2") => with_header(
                json(records(3, 2)),
                "Link",
                r#"<http://example.invalid/items?page=1>; rel="prev", </items?page=3>; rel="next""#,
            ),
            Some("3") => with_header(
                json(records(5, 1)),
                "Link",
                r#"</items?page=2>; rel="prev""#,
            ),
            other => panic!("unexpected page {other:?}"),
        }
    });
    let source = format!(
        "    http:\n      url: {}\n      params: {{fixed: x}}\n      paginate: {{link: {{}}}}",
        server.url("/items")
    );
    let dir = counting_project(&source);
    run_ok(dir.path(), &[]);
    let kpis = kpi_rows(dir.path());
    assert_eq!(value(&kpis, "rows"), Some(5.0));
    assert_eq!(value(&kpis, "total"), Some(15.0));
    let seen = server.requests();
    let pages: Vec<Option<String>> = seen.iter().map(|r| r.param("page")).collect();
    assert_eq!(pages, [None, Some("2".into()), Some("3".into())]);
    // `params:` go on every request: kept from the link, or added when it lacks them.
    for r in &seen {
        assert_eq!(r.param("fixed").as_deref(), Some("x"), "{}", r.target);
        assert_eq!(r.target.matches("fixed=").count(), 1, "{}", r.target);
    }
}

#[test]
fn no_content_ends_the_pages() {
    let server = Server::start(|r, _| match r.param("page").as_deref() {
        Some("1") => json(records(1, 2)),
        _ => status(204, ""),
    });
    let source = format!(
        "    http:\n      url: {}\n      paginate: {{page: {{}}}}",
        server.url("/items")
    );
    let dir = counting_project(&source);
    run_ok(dir.path(), &[]);
    assert_eq!(value(&kpi_rows(dir.path()), "rows"), Some(2.0));
    assert_eq!(server.requests().len(), 2);
}

#[test]
fn max_pages_stops_with_a_warning() {
    // An API that never runs out of pages.
    let server = Server::start(|r, _| {
        let page: u64 = r.param("page").unwrap().parse().unwrap();
        json(records(page, 1))
    });
    let source = format!(
        "    http:\n      url: {}\n      paginate: {{page: {{}}}}\n      max_pages: 3",
        server.url("/items")
    );
    let dir = counting_project(&source);
    let out = run_ok(dir.path(), &[]);
    assert_eq!(server.requests().len(), 3);
    let kpis = kpi_rows(dir.path());
    assert_eq!(value(&kpis, "rows"), Some(3.0));
    let err = stderr(&out);
    assert!(err.contains("WARN"), "{err}");
    assert!(err.contains("stopped at `max_pages`"), "{err}");
    assert!(err.contains("max_pages=3"), "{err}");
}

// ---------------------------------------------------------------- failures and retries

#[test]
fn server_error_is_retried() {
    let server = Server::start(|_, i| {
        if i == 0 {
            status(500, "boom")
        } else {
            json(records(1, 3))
        }
    });
    let source = format!("    http:\n      url: {}", server.url("/items"));
    let dir = counting_project(&source);
    let out = run_ok(dir.path(), &[]);
    assert_eq!(server.requests().len(), 2);
    assert_eq!(value(&kpi_rows(dir.path()), "rows"), Some(3.0));
    let err = stderr(&out);
    assert!(
        err.contains("retrying") && err.contains("HTTP 500"),
        "{err}"
    );
}

#[test]
fn server_errors_exhaust_the_retries() {
    let server = Server::start(|_, _| status(503, "down for maintenance"));
    let source = format!(
        "    http:\n      url: {}\n      retries: 2",
        server.url("/items")
    );
    let dir = counting_project(&source);
    let out = run(dir.path(), &[]);
    assert_failed(
        &out,
        1,
        &[
            &format!("GET {} (page 1)", server.url("/items")),
            "gave up after 3 attempts",
            "HTTP 503 Service Unavailable `down for maintenance`",
        ],
    );
    assert_eq!(server.requests().len(), 3);
}

#[test]
fn dropped_connection_is_retried() {
    let server = Server::start(|_, i| {
        if i == 0 {
            status(0, "")
        } else {
            json(records(1, 2))
        }
    });
    let source = format!("    http:\n      url: {}", server.url("/items"));
    let dir = counting_project(&source);
    let out = run_ok(dir.path(), &[]);
    assert_eq!(server.requests().len(), 2);
    assert_eq!(value(&kpi_rows(dir.path()), "rows"), Some(2.0));
    assert!(stderr(&out).contains("retrying"), "{}", stderr(&out));
}

#[test]
fn too_many_requests_waits_for_retry_after() {
    let server = Server::start(|_, i| {
        if i == 0 {
            with_header(status(429, "slow down"), "Retry-After", "1")
        } else {
            json(records(1, 2))
        }
    });
    let source = format!("    http:\n      url: {}", server.url("/items"));
    let dir = counting_project(&source);
    run_ok(dir.path(), &[]);
    let seen = server.requests();
    assert_eq!(seen.len(), 2);
    let waited = seen[1].at - seen[0].at;
    assert!(waited >= Duration::from_millis(950), "waited {waited:?}");
    assert_eq!(value(&kpi_rows(dir.path()), "rows"), Some(2.0));
}

#[test]
fn hanging_response_times_out() {
    let server = Server::start(|_, _| None);
    let source = format!(
        "    http:\n      url: {}\n      timeout: 1s\n      retries: 0",
        server.url("/slow?x=1")
    );
    let dir = counting_project(&source);
    let started = Instant::now();
    let out = run(dir.path(), &[]);
    assert_failed(
        &out,
        1,
        &[
            "source `t`",
            &format!("GET {} (page 1)", server.url("/slow?x=1")),
            "timed out",
            "1 attempt",
            "`timeout:`",
        ],
    );
    assert!(started.elapsed() >= Duration::from_millis(950));
    assert_eq!(server.requests().len(), 1);
}

#[test]
fn client_errors_are_not_retried() {
    let server = Server::start(|r, _| match r.path() {
        "/missing" => status(404, "no such thing"),
        _ => status(401, "who are you"),
    });
    let source = format!("    http:\n      url: {}", server.url("/missing"));
    let dir = counting_project(&source);
    let out = run(dir.path(), &[]);
    assert_failed(
        &out,
        1,
        &[
            "HTTP 404 Not Found",
            "the URL is wrong",
            &server.url("/missing"),
        ],
    );
    let source = format!("    http:\n      url: {}", server.url("/private"));
    let dir = counting_project(&source);
    let out = run(dir.path(), &[]);
    assert_failed(&out, 1, &["HTTP 401 Unauthorized", "add `auth:`"]);
    assert_eq!(server.requests().len(), 2, "one request each, no retries");
}

#[test]
fn malformed_json_names_the_url_page_and_what_was_expected() {
    // Page 1 is fine; page 2 is an HTML error page.
    let server = Server::start(|r, _| match r.param("page").as_deref() {
        Some("1") => json(records(1, 2)),
        _ => Some(Response {
            status: 200,
            headers: vec![("Content-Type".into(), "text/html".into())],
            body: "<html><body>Gateway hiccup</body></html>".into(),
        }),
    });
    let source = format!(
        "    http:\n      url: {}\n      auth: {{query: {{name: api_key, value: \"${{HTTP_MALFORMED_KEY}}\"}}}}\n      paginate: {{page: {{}}}}",
        server.url("/items")
    );
    let dir = counting_project(&source);
    let key = "k3y/with+odd chars";
    let out = run(dir.path(), &[("HTTP_MALFORMED_KEY", key)]);
    assert_failed(
        &out,
        1,
        &[
            &format!("GET {}?api_key=***&page=2 (page 2)", server.url("/items")),
            "expected JSON, got text/html",
            "line 1 column 1",
            "`<html><body>Gateway hiccup</body></html>`",
        ],
    );
    let err = stderr(&out);
    assert!(!err.contains("k3y"), "{err}");
    // The key did arrive.
    assert_eq!(server.requests()[0].param("api_key").as_deref(), Some(key));
}

#[test]
fn an_api_ignoring_the_page_parameter_is_an_error() {
    let server = Server::start(|_, _| json(records(1, 2)));
    let source = format!(
        "    http:\n      url: {}\n      paginate: {{page: {{}}}}",
        server.url("/items")
    );
    let dir = counting_project(&source);
    let out = run(dir.path(), &[]);
    assert_failed(
        &out,
        1,
        &[
            "(page 2): page 2 is the same as page 1",
            "check `paginate:`",
        ],
    );
    assert_eq!(server.requests().len(), 2);
}

#[test]
fn redirects_keep_credentials_on_the_api_host() {
    let server = Server::start(|r, _| {
        let port = r
            .header("host")
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .to_string();
        match r.path() {
            "/old" => with_header(status(301, ""), "Location", "/new"),
            "/away" => with_header(
                status(302, ""),
                "Location",
                &format!("http://localhost:{port}/new?x=1"),
            ),
            _ => json(records(1, 1)),
        }
    });
    let env = [("HTTP_REDIRECT_TOKEN", "tok-redirect")];
    let auth = "      auth: {bearer: \"${HTTP_REDIRECT_TOKEN}\"}";
    let source = format!("    http:\n      url: {}\n{auth}", server.url("/old"));
    let dir = counting_project(&source);
    run_ok(dir.path(), &env);
    let seen = server.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].path(), "/new");
    assert_eq!(seen[1].header("authorization"), Some("Bearer tok-redirect"));

    let source = format!("    http:\n      url: {}\n{auth}", server.url("/away"));
    let dir = counting_project(&source);
    let out = run(dir.path(), &env);
    assert_failed(
        &out,
        1,
        &[
            "HTTP 302 Found: redirected to http://localhost:",
            "/new?x=1 on another host",
            "set `url:` to the final address",
        ],
    );
    assert_eq!(server.requests().len(), 3, "the other host was not asked");
}

#[test]
fn records_path_must_lead_to_an_array() {
    let server = Server::start(|_, _| json(r#"{"data": {"items": {"id": 1}}}"#));
    let source = format!(
        "    http:\n      url: {}\n      records: data.items",
        server.url("/items")
    );
    let dir = counting_project(&source);
    let out = run(dir.path(), &[]);
    assert_failed(
        &out,
        1,
        &[
            &format!("GET {} (page 1)", server.url("/items")),
            "expected an array at `data.items`, found an object (keys: id)",
        ],
    );
    // Without `records:`, an object response says to set it.
    let source = format!("    http:\n      url: {}", server.url("/items"));
    let dir = counting_project(&source);
    let out = run(dir.path(), &[]);
    assert_failed(
        &out,
        1,
        &[
            "expected an array at the top of the response, found an object (keys: data)",
            "set `records:`",
        ],
    );
}

#[test]
fn values_that_do_not_fit_the_declared_type_name_the_record() {
    let server =
        Server::start(|_, _| json(r#"[{"id": 1, "amount": 2}, {"id": 2, "amount": "lots"}]"#));
    let source = format!(
        "    http:\n      url: {}\n    columns: {{amount: \"decimal(10,2)\"}}",
        server.url("/items")
    );
    let dir = counting_project(&source);
    let out = run(dir.path(), &[]);
    assert_failed(
        &out,
        1,
        &[
            &format!("GET {} (page 1), record 2", server.url("/items")),
            "column `amount`",
            "lots",
        ],
    );
}

// ---------------------------------------------------------------- auth and secrets

#[test]
fn every_auth_style_arrives_as_configured() {
    let server = Server::start(|_, _| json(records(1, 1)));
    let cases: [(&str, &str, &str); 4] = [
        ("bearer", "{bearer: \"${HTTP_AUTH_SECRET}\"}", "tok-123"),
        (
            "basic",
            "{basic: {user: ann, password: \"${HTTP_AUTH_SECRET}\"}}",
            "open sesame",
        ),
        (
            "header",
            "{header: {name: X-Api-Key, value: \"${HTTP_AUTH_SECRET}\"}}",
            "hk-456",
        ),
        (
            "query",
            "{query: {name: api_key, value: \"${HTTP_AUTH_SECRET}\"}}",
            "qk 789/+",
        ),
    ];
    for (style, auth, secret) in cases {
        let source = format!(
            "    http:\n      url: {}\n      auth: {auth}",
            server.url(&format!("/{style}"))
        );
        let dir = counting_project(&source);
        run_ok(dir.path(), &[("HTTP_AUTH_SECRET", secret)]);
    }
    let seen = server.requests();
    assert_eq!(seen.len(), 4);
    let by_path = |p: &str| seen.iter().find(|r| r.path() == p).unwrap();
    assert_eq!(
        by_path("/bearer").header("authorization"),
        Some("Bearer tok-123")
    );
    assert_eq!(
        by_path("/basic").header("authorization"),
        Some("Basic YW5uOm9wZW4gc2VzYW1l"),
        "base64 of ann:open sesame"
    );
    assert_eq!(by_path("/header").header("x-api-key"), Some("hk-456"));
    assert_eq!(by_path("/header").header("authorization"), None);
    assert_eq!(
        by_path("/query").param("api_key").as_deref(),
        Some("qk 789/+")
    );
    assert_eq!(by_path("/query").header("authorization"), None);
}

#[test]
fn secrets_never_appear_in_any_output() {
    const TOKEN: &str = "tok SECRET-9f8e/7d+";
    const PASSWORD: &str = "pw SECRET/1a2b+3c";
    const HEADER_KEY: &str = "hk-SECRET-5e6f7a";
    const QUERY_KEY: &str = "qk SECRET/4d5e+6f";
    // Every form a secret could leak in: as is, URL-encoded (both ways), and the
    // basic credentials in base64.
    let forbidden = [
        "SECRET",
        "tok+SECRET",
        "tok%20SECRET",
        "qk+SECRET",
        "qk%20SECRET",
        "pw+SECRET",
        "9f8e",
        "1a2b",
        "5e6f7a",
        "4d5e",
        "a3BpOnB3IFNFQ1JFVC8xYTJiKzNj",
    ];
    let env = [
        ("HTTP_CRED_TOKEN", TOKEN),
        ("HTTP_CRED_PASSWORD", PASSWORD),
        ("HTTP_CRED_HEADER", HEADER_KEY),
        ("HTTP_CRED_QUERY", QUERY_KEY),
        ("KPIFORGE_LOG", "kpiforge=trace"),
    ];
    // The server echoes what it received (target and headers) in every body, so
    // an error that quotes a body would carry the secrets.
    let server = Server::start(|r, i| {
        let echo = format!("{} {:?}", r.target, r.headers);
        match r.path() {
            "/unauthorized" => status(401, echo),
            "/malformed" => status(200, format!("not json {echo}")),
            "/hang" => None,
            "/flaky" => status(500, echo),
            "/forbidden" => status(403, echo),
            _ if i % 2 == 0 => json(format!(r#"[{{"id": 1, "amount": 2, "echo": {echo:?}}}]"#)),
            _ => json(records(1, 1)),
        }
    });
    let bearer = "{bearer: \"${HTTP_CRED_TOKEN}\"}";
    let basic = "{basic: {user: kpi, password: \"${HTTP_CRED_PASSWORD}\"}}";
    let header = "{header: {name: X-Api-Key, value: \"${HTTP_CRED_HEADER}\"}}";
    let query = "{query: {name: access, value: \"${HTTP_CRED_QUERY}\"}}";
    let cases = [
        ("/unauthorized", bearer, "", false),
        ("/forbidden", basic, "", false),
        ("/malformed", query, "", false),
        ("/malformed", basic, "", false),
        (
            "/hang",
            basic,
            "\n      timeout: 1s\n      retries: 0",
            false,
        ),
        (
            "/hang",
            query,
            "\n      timeout: 1s\n      retries: 0",
            false,
        ),
        ("/flaky", query, "\n      retries: 1", false),
        ("/flaky", header, "\n      retries: 1", false),
        ("/fine", header, "", true),
        ("/fine", query, "\n      paginate: {link: {}}", true),
        ("/fine", bearer, "", true),
        ("/fine", basic, "", true),
    ];
    for (path, auth, extra, succeeds) in cases {
        let source = format!(
            "    http:\n      url: {}\n      auth: {auth}{extra}",
            server.url(path)
        );
        let dir = counting_project(&source);
        for args in [
            &["run", "pipelines/p.yaml", "--as-of", AS_OF][..],
            &["check", "pipelines/p.yaml"][..],
            &["validate", "pipelines/p.yaml"][..],
        ] {
            let out = kpiforge_env(dir.path(), args, &env);
            let all = format!("{}{}", stdout(&out), stderr(&out));
            assert_eq!(
                out.status.success(),
                succeeds,
                "{path} {auth} {args:?}:\n{all}"
            );
            for f in forbidden {
                assert!(
                    !all.contains(f),
                    "{f:?} leaked ({path}, {auth}, {args:?}):\n{all}"
                );
            }
            assert!(
                all.contains("DEBUG") || all.contains("TRACE") || !succeeds,
                "{all}"
            );
        }
        // The run's record (runs/) keeps the error text: no secrets there either.
        let runs = dir
            .path()
            .join(format!("out/runs/pipeline=p/as_of={AS_OF}"));
        for entry in std::fs::read_dir(runs).unwrap() {
            for row in rows(&entry.unwrap().path()) {
                let error = text(&row, "error").unwrap_or("").to_string();
                for f in forbidden {
                    assert!(!error.contains(f), "{f:?} in runs/: {error}");
                }
            }
        }
    }
    // Failures name the variable to check, never its value.
    let source = format!(
        "    http:\n      url: {}\n      auth: {bearer}",
        server.url("/unauthorized")
    );
    let dir = counting_project(&source);
    let out = run(dir.path(), &env);
    assert_failed(
        &out,
        1,
        &[
            "HTTP 401 Unauthorized",
            "check the credentials in ${HTTP_CRED_TOKEN}",
        ],
    );
    // And every secret did reach the server where it belongs.
    let seen = server.requests();
    assert!(
        seen.iter()
            .any(|r| r.header("authorization") == Some("Bearer tok SECRET-9f8e/7d+"))
    );
    assert!(
        seen.iter()
            .any(|r| r.header("authorization") == Some("Basic a3BpOnB3IFNFQ1JFVC8xYTJiKzNj"))
    );
    assert!(
        seen.iter()
            .any(|r| r.header("x-api-key") == Some(HEADER_KEY))
    );
    assert!(
        seen.iter()
            .any(|r| r.param("access").as_deref() == Some(QUERY_KEY))
    );
}

// ---------------------------------------------------------------- shapes and types

#[test]
fn post_with_a_body_dotted_fields_and_declared_types() {
    let server = Server::start(|r, _| {
        assert_eq!(r.method, "POST");
        json(
            r#"{"result": {"rows": [
                {"id": 1, "customer": {"name": "Ann"}, "meta": {"created_at": "2026-01-05T23:30:00Z"}, "amount": 0.1},
                {"id": 2, "customer": {"name": "Bo"}, "meta": {"created_at": "2026-01-31T10:00:00+00:00"}, "amount": "0.2"},
                {"id": 3, "customer": {"name": "Ann"}, "meta": {"created_at": "2026-02-01T00:00:00Z"}, "amount": 1.25},
                {"id": 4, "meta": {}, "amount": null}
            ]}}"#,
        )
    });
    let source = format!(
        "    http:
      url: {}
      method: POST
      body: {{query: {{status: open}}, size: 10}}
      records: result.rows
      fields: {{id: id, customer: customer.name, created: meta.created_at, price: amount}}
    columns: {{created: timestamp, price: \"decimal(10,2)\"}}",
        server.url("/search")
    );
    // Sums of a decimal are exact: 0.1 + 0.2 is 0.3, not 0.30000000000000004.
    let by_month = "SELECT CAST(date_trunc('month', created) AS DATE) AS period, CAST(sum(price) AS DOUBLE) AS value FROM t WHERE created IS NOT NULL GROUP BY 1";
    let by_customer = "SELECT DATE '2026-01-01' AS period, coalesce(customer, 'none') AS customer, CAST(count(*) AS DOUBLE) AS value FROM t GROUP BY 2";
    let dir = http_project(
        &source,
        &[
            ("by_month", by_month, ""),
            ("by_customer", by_customer, "customer"),
        ],
    );
    run_ok(dir.path(), &[]);
    let kpis = kpi_rows(dir.path());
    let mut months: Vec<(String, Option<f64>)> = kpis
        .iter()
        .filter(|r| text(r, "kpi_id") == Some("by_month"))
        .map(|r| {
            (
                text(r, "period_start").unwrap().to_string(),
                num(r, "value"),
            )
        })
        .collect();
    months.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        months,
        [
            ("2026-01-01".to_string(), Some(0.3)),
            ("2026-02-01".to_string(), Some(1.25))
        ]
    );
    assert_eq!(
        segments(&kpis, "by_customer"),
        [
            ("customer=Ann".to_string(), Some(2.0)),
            ("customer=Bo".to_string(), Some(1.0)),
            ("customer=none".to_string(), Some(1.0)),
        ]
    );
    let seen = server.requests();
    assert_eq!(seen.len(), 1);
    let body: serde_json::Value = serde_json::from_str(&seen[0].body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"query": {"status": "open"}, "size": 10})
    );
    assert_eq!(seen[0].header("content-type"), Some("application/json"));
}

#[test]
fn types_are_inferred_over_every_record() {
    // `n` is an integer on page 1 and a float on page 2 (so a double); `c` is an
    // object (a struct); `flag` is missing from a record (NULL).
    let server = Server::start(|r, _| match r.param("page").as_deref() {
        Some("1") => json(
            r#"[{"n": 1, "flag": true, "c": {"city": "Oslo", "zip": "0150"}}, {"n": 2, "c": {"city": "Rome"}}]"#,
        ),
        Some("2") => json(r#"[{"n": 2.5, "flag": false, "c": {"city": "Oslo"}}]"#),
        _ => json("[]"),
    });
    let source = format!(
        "    http:\n      url: {}\n      paginate: {{page: {{}}}}",
        server.url("/items")
    );
    let by_city = "SELECT DATE '2026-01-01' AS period, c['city'] AS city, CAST(sum(n) AS DOUBLE) AS value FROM t GROUP BY c['city']";
    let flags = "SELECT DATE '2026-01-01' AS period, CAST(count(flag) * 10 + sum(CASE WHEN flag THEN 1 ELSE 0 END) AS DOUBLE) AS value FROM t";
    let dir = http_project(
        &source,
        &[("by_city", by_city, "city"), ("flags", flags, "")],
    );
    run_ok(dir.path(), &[]);
    let kpis = kpi_rows(dir.path());
    assert_eq!(
        segments(&kpis, "by_city"),
        [
            ("city=Oslo".to_string(), Some(3.5)),
            ("city=Rome".to_string(), Some(2.0)),
        ]
    );
    // Two non-null flags, one of them true.
    assert_eq!(value(&kpis, "flags"), Some(21.0));
}

#[test]
fn an_empty_result_needs_declared_columns() {
    let server = Server::start(|_, _| json(r#"{"items": []}"#));
    let declared = format!(
        "    http:\n      url: {}\n      records: items\n    columns: {{id: bigint, amount: double}}",
        server.url("/items")
    );
    let dir = counting_project(&declared);
    run_ok(dir.path(), &[]);
    let kpis = kpi_rows(dir.path());
    assert_eq!(value(&kpis, "rows"), Some(0.0));
    assert_eq!(value(&kpis, "total"), None);

    let undeclared = format!(
        "    http:\n      url: {}\n      records: items",
        server.url("/items")
    );
    let dir = counting_project(&undeclared);
    let out = run(dir.path(), &[]);
    assert_failed(
        &out,
        2,
        &["returned no records", "declare them in `columns:`"],
    );
}

#[test]
fn rate_limit_spaces_the_requests() {
    let server = Server::start(|r, _| {
        let page: u64 = r.param("page").unwrap().parse().unwrap();
        json(if page <= 3 {
            records(page, 1)
        } else {
            "[]".into()
        })
    });
    let source = format!(
        "    http:\n      url: {}\n      paginate: {{page: {{}}}}\n      rate_limit: 4",
        server.url("/items")
    );
    let dir = counting_project(&source);
    run_ok(dir.path(), &[]);
    let seen = server.requests();
    assert_eq!(seen.len(), 4);
    // Four request starts at 4 per second span at least 750 ms at the client;
    // arrival times at the server jitter by a few tens of milliseconds each, so
    // the bound is on the whole span, not on each gap.
    let span = seen[3].at - seen[0].at;
    assert!(span >= Duration::from_millis(650), "span {span:?}");
}

#[test]
fn invalid_http_settings_are_config_errors() {
    let source = "    http:\n      url: http://127.0.0.1:9/x\n      max_pages: 0\n      paginate: {offset: {limit: 0}}\n      fields: {a: \"b..c\"}";
    let dir = counting_project(source);
    let out = run(dir.path(), &[]);
    assert_failed(
        &out,
        2,
        &[
            "sources.t.http.max_pages",
            "sources.t.http.paginate.offset.limit",
            "sources.t.http.fields.a",
        ],
    );
}

// ---------------------------------------------------------------- incremental pulls

/// The watermark travels as `updated_since`; rows at or below it are dropped
/// even when the API ignores the parameter; KPIs see every row pulled so far.
#[test]
fn incremental_pulls_send_the_watermark_and_keep_the_history() {
    let data = Arc::new(Mutex::new(vec![
        (1, 10, "2026-01-05T10:00:00"),
        (2, 20, "2026-01-06T10:00:00"),
        (3, 30, "2026-01-07T10:00:00"),
    ]));
    let honour_since = Arc::new(Mutex::new(true));
    let (served, honour) = (data.clone(), honour_since.clone());
    let server = Server::start(move |r, _| {
        let since = r.param("updated_since").filter(|_| *honour.lock().unwrap());
        let items: Vec<String> = served
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, _, at)| since.as_deref().is_none_or(|s| *at > s))
            .map(|(id, amount, at)| {
                format!(r#"{{"id": {id}, "amount": {amount}, "updated_at": "{at}"}}"#)
            })
            .collect();
        json(format!("[{}]", items.join(", ")))
    });
    let source = format!(
        "    http: {{url: \"{}\"}}\n    columns: {{updated_at: timestamp}}\n    incremental: {{column: updated_at, param: updated_since}}",
        server.url("/items")
    );
    let dir = counting_project(&source);
    let pulled = |out: &Output| {
        let err = stderr(out);
        let line = err
            .lines()
            .rfind(|l| l.contains("incremental pull"))
            .unwrap_or_else(|| panic!("{err}"))
            .to_string();
        line.split("rows=")
            .nth(1)
            .unwrap()
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    let env = [("KPIFORGE_LOG", "kpiforge=info")];

    let first = run_ok(dir.path(), &env);
    assert_eq!(pulled(&first), 3);
    assert_eq!(
        server.requests()[0].param("updated_since"),
        None,
        "the first pull takes everything"
    );
    assert_eq!(value(&kpi_rows(dir.path()), "total"), Some(60.0));

    data.lock()
        .unwrap()
        .extend([(4, 4, "2026-01-08T10:00:00"), (5, 5, "2026-01-09T10:00:00")]);
    let second = run_ok(dir.path(), &env);
    assert_eq!(pulled(&second), 2);
    assert_eq!(
        server
            .requests()
            .last()
            .unwrap()
            .param("updated_since")
            .as_deref(),
        Some("2026-01-07T10:00:00")
    );
    let rows = kpi_rows(dir.path());
    assert_eq!(
        (value(&rows, "rows"), value(&rows, "total")),
        (Some(5.0), Some(69.0))
    );

    // An API that ignores the parameter sends everything again: nothing is counted twice.
    *honour_since.lock().unwrap() = false;
    let third = run_ok(dir.path(), &env);
    assert_eq!(pulled(&third), 0);
    let rows = kpi_rows(dir.path());
    assert_eq!(
        (value(&rows, "rows"), value(&rows, "total")),
        (Some(5.0), Some(69.0))
    );
}
