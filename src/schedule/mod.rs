//! `kpiforge schedule`: the scheduler daemon. Fires each pipeline on its
//! `schedule:` (cron with seconds, in its `timezone:`), with the overlap,
//! catch-up and retry policies of its `scheduling` keys; reloads pipeline files
//! that change; serves health, metrics, run history and scorecards over HTTP;
//! shuts down gracefully on SIGTERM/SIGINT. See docs/schedule.md.
//!
//! [`fires`] is the pure cron/catch-up/DST logic, [`daemon`] the tasks,
//! [`http`] the endpoints, [`metrics`] the Prometheus counters.

pub mod daemon;
pub mod fires;
pub mod http;
pub mod metrics;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::error::Error;
pub use daemon::{Shared, pipeline_files};

/// The options of `kpiforge schedule`.
#[derive(Debug, Clone)]
pub struct ScheduleOptions {
    pub paths: Vec<PathBuf>,
    pub grace: Duration,
    pub poll: Duration,
    pub http: Option<SocketAddr>,
    /// The environment variable holding the bearer token for `--http`.
    pub http_token_env: Option<String>,
}

/// Runs the daemon until SIGTERM or SIGINT, then shuts down gracefully:
/// `Ok` after a clean shutdown.
pub async fn serve(options: ScheduleOptions) -> Result<(), Error> {
    let shared = Arc::new(Shared::default());
    let server = match options.http {
        Some(addr) => {
            let token = http::token(addr, options.http_token_env.as_deref())?;
            let listener = http::bind(addr).await?;
            let local = listener.local_addr().unwrap_or(addr);
            tracing::info!(address = %local, auth = token.is_some(), "serving /healthz /metrics /runs / on http://{local}");
            Some(tokio::spawn(http::serve(listener, shared.clone(), token)))
        }
        None => {
            if options.http_token_env.is_some() {
                return Err(Error::Usage("--http-token-env needs --http ADDRESS".into()));
            }
            None
        }
    };
    // 1 after the first SIGTERM/SIGINT (graceful), 2 after a second (cancel now).
    let (shutdown, rx) = watch::channel(0u8);
    let signals = tokio::spawn(async move {
        wait_for_signal().await;
        let _ = shutdown.send(1);
        wait_for_signal().await;
        tracing::warn!("second signal: cancelling the runs in flight now");
        let _ = shutdown.send(2);
    });
    let result = daemon::run(
        daemon::Options {
            paths: options.paths,
            grace: options.grace,
            poll: options.poll,
        },
        shared,
        rx,
    )
    .await;
    signals.abort();
    if let Some(server) = server {
        server.abort();
    }
    result
}

/// Waits for SIGTERM or SIGINT (Ctrl-C).
async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the scheduler");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Parses a duration like `30s`, `1m`, `500ms` or a number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, unit) = match t.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => (&t[..i], t[i..].trim()),
        None => (t, "s"),
    };
    let n: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration; write it like 30s, 2m or 500ms"))?;
    let seconds = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => {
            return Err(format!(
                "`{text}` is not a duration; write it like 30s, 2m or 500ms"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("`{text}`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5d").is_err());
    }
}
