//! A small HTTP/1.1 server for the daemon (GET only, one request per
//! connection): `/healthz`, `/metrics`, `/runs`, `/` and `/report/<pipeline>`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::daemon::Shared;
use crate::error::Error;
use crate::state::{RunEntry, RunFilter, StateStore};

/// Checks the address/token combination: a non-loopback address needs a token.
pub fn token(addr: SocketAddr, token_env: Option<&str>) -> Result<Option<String>, Error> {
    let token = match token_env {
        Some(var) => match std::env::var(var) {
            Ok(t) if !t.trim().is_empty() => Some(t.trim().to_string()),
            _ => {
                return Err(Error::Usage(format!(
                    "--http-token-env {var}: the environment variable {var} is not set or empty"
                )));
            }
        },
        None => None,
    };
    if !addr.ip().is_loopback() && token.is_none() {
        return Err(Error::Usage(format!(
            "--http {addr} is not a loopback address: anyone who can reach it could read the metrics and run history; pass --http-token-env VAR (requests then need `Authorization: Bearer <token>`) or bind 127.0.0.1"
        )));
    }
    Ok(token)
}

pub async fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Usage(format!("--http {addr}: cannot listen: {e}")))
}

const MAX_CONNECTIONS: usize = 64;

/// Serves until the task is aborted.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, token: Option<String>) {
    let token = Arc::new(token);
    // At most this many connections at once: a client holding connections
    // open cannot exhaust the daemon's file descriptors.
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let shared = shared.clone();
        let token = token.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(
                Duration::from_secs(30),
                handle(stream, &shared, token.as_deref()),
            )
            .await;
            drop(slot);
        });
    }
}

struct Response {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
}

fn text(status: u16, body: impl Into<String>) -> Response {
    Response {
        status,
        content_type: "text/plain; charset=utf-8",
        body: body.into().into_bytes(),
    }
}

async fn handle(mut stream: TcpStream, shared: &Arc<Shared>, token: Option<&str>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break Some(String::from_utf8_lossy(&buf[..end]).into_owned());
        }
        if buf.len() > 16 * 1024 {
            break None;
        }
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => break None,
        }
    };
    let response = match head {
        None => text(400, "bad request\n"),
        Some(head) => respond(&head, shared, token).await,
    };
    let reason = match response.status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Internal Server Error",
    };
    let mut out = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        response.status,
        response.content_type,
        response.body.len()
    );
    if response.status == 401 {
        out.push_str("WWW-Authenticate: Bearer\r\n");
    }
    out.push_str("\r\n");
    let _ = stream.write_all(out.as_bytes()).await;
    let _ = stream.write_all(&response.body).await;
    let _ = stream.shutdown().await;
}

async fn respond(head: &str, shared: &Arc<Shared>, token: Option<&str>) -> Response {
    let mut lines = head.split("\r\n");
    let mut parts = lines.next().unwrap_or("").split_whitespace();
    let method = parts.next().unwrap_or("");
    let target = parts.next().unwrap_or("");
    if let Some(token) = token {
        let given = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("authorization"))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default();
        let expected = format!("Bearer {token}");
        if !same(given.as_bytes(), expected.as_bytes()) {
            return text(401, "unauthorized: send Authorization: Bearer <token>\n");
        }
    }
    if method != "GET" {
        return text(405, "only GET\n");
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let param = |name: &str| {
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k) == name).then(|| decode(v))
        })
    };
    match path {
        "/healthz" => text(200, "ok"),
        "/metrics" => Response {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: shared.metrics.render().into_bytes(),
        },
        "/runs" => {
            let pipeline = param("pipeline");
            let limit = param("limit").and_then(|l| l.parse().ok()).unwrap_or(1000);
            let shared = shared.clone();
            match tokio::task::spawn_blocking(move || runs(&shared, pipeline, limit)).await {
                Ok(Ok(runs)) => Response {
                    status: 200,
                    content_type: "application/json",
                    body: serde_json::to_vec(&runs).unwrap_or_default(),
                },
                Ok(Err(e)) => text(500, format!("{e}\n")),
                Err(e) => text(500, format!("{e}\n")),
            }
        }
        "/" => Response {
            status: 200,
            content_type: "text/html; charset=utf-8",
            body: index(shared).into_bytes(),
        },
        _ => match path.strip_prefix("/report/") {
            Some(name) => {
                let name = decode(name);
                let shared = shared.clone();
                match tokio::task::spawn_blocking(move || report(&shared, &name)).await {
                    Ok(r) => r,
                    Err(e) => text(500, format!("{e}\n")),
                }
            }
            None => text(404, "not found\n"),
        },
    }
}

/// Compares in time independent of where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Percent-decoding (`+` as a space).
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn url_escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The run history of every loaded pipeline's state store, newest first.
fn runs(
    shared: &Shared,
    pipeline: Option<String>,
    limit: usize,
) -> Result<Vec<RunEntry>, crate::state::StateError> {
    let mut stores: Vec<crate::state::StateLocation> =
        shared.pipelines().iter().map(|p| p.state.clone()).collect();
    stores.sort();
    stores.dedup();
    let mut all = Vec::new();
    for location in stores {
        if !location.exists() {
            continue;
        }
        let store = StateStore::open(&location)?;
        all.extend(store.runs(&RunFilter {
            pipeline: pipeline.clone(),
            status: None,
            limit: Some(limit),
        })?);
    }
    all.sort_by(|a, b| {
        (b.started_at.as_str(), b.run_id.as_str()).cmp(&(a.started_at.as_str(), a.run_id.as_str()))
    });
    all.dedup_by(|a, b| a.run_id == b.run_id && a.pipeline == b.pipeline);
    all.truncate(limit);
    Ok(all)
}

fn index(shared: &Shared) -> String {
    let mut pipelines = shared.pipelines();
    pipelines.sort_by(|a, b| a.name.cmp(&b.name));
    let mut rows = String::new();
    for p in &pipelines {
        let name = html_escape(&p.name);
        match &p.schedule {
            Some(cron) => rows.push_str(&format!(
                "<tr><td><a href=\"/report/{}\">{name}</a></td><td><code>{}</code></td><td>{}</td><td><a href=\"/runs?pipeline={}\">runs</a></td></tr>\n",
                url_escape(&p.name),
                html_escape(cron),
                html_escape(p.timezone.name()),
                url_escape(&p.name),
            )),
            None => rows.push_str(&format!(
                "<tr><td>{name}</td><td>not scheduled</td><td></td><td></td></tr>\n"
            )),
        }
    }
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>kpiforge scheduler</title></head><body>\n<h1>kpiforge scheduler</h1>\n<table>\n<tr><th>pipeline (latest scorecard)</th><th>schedule</th><th>time zone</th><th>history</th></tr>\n{rows}</table>\n<p><a href=\"/metrics\">metrics</a> &middot; <a href=\"/runs\">runs</a> &middot; <a href=\"/healthz\">health</a></p>\n</body></html>\n"
    )
}

/// The HTML scorecard of a pipeline's latest published run, rendered in memory.
fn report(shared: &Shared, name: &str) -> Response {
    let Some(pipeline) = shared.pipelines().into_iter().find(|p| p.name == name) else {
        return text(404, format!("no pipeline `{name}` is loaded\n"));
    };
    let result = crate::report::snapshot::load(&pipeline.output, Some(name), None)
        .map(|snapshot| crate::report::html::render(&snapshot).into_bytes());
    match result {
        Ok(body) => Response {
            status: 200,
            content_type: "text/html; charset=utf-8",
            body,
        },
        Err(e) => text(
            404,
            format!(
                "no scorecard for `{name}` yet: {}\n",
                crate::config::env::redact(&e.to_string())
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_loopback_needs_a_token() {
        let addr: SocketAddr = "0.0.0.0:9000".parse().unwrap();
        assert!(token(addr, None).is_err());
        let local: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        assert_eq!(token(local, None).unwrap(), None);
        assert!(token(addr, Some("KPIFORGE_TEST_SURELY_UNSET_VAR")).is_err());
    }

    #[test]
    fn decodes_queries() {
        assert_eq!(decode("a%20b+c"), "a b c");
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode("%zz"), "%zz");
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
    }
}
