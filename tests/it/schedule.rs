//! `kpiforge schedule`: real schedules firing every second or two against the
//! real binary: one run per fire, overlap skip/queue under slow runs, catch-up
//! after a restart, retries with backoff, SIGTERM during a run, /metrics and
//! the other endpoints, config reload, and a soak over many pipelines.
//!
//! Timing is only ever asserted as a lower bound.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use kpiforge::state::{RunEntry, RunFilter, StateStore};

use super::util::{project, published_values, walk};

// ---------------------------------------------------------------- helpers

const KPI_SQL: &str =
    "SELECT DATE '2026-01-01' AS period, CAST(sum(amount) AS DOUBLE) AS value FROM t";

/// A pipeline file reading the CSV `data/t.csv` (fast) or `source` (indented
/// under `t:`), with extra top-level keys.
fn pipeline(name: &str, extra: &str, source: Option<&str>) -> String {
    let source = source.unwrap_or("    file: data/t.csv");
    format!(
        "name: {name}\n{extra}\noutput: out\nsources:\n  t:\n{source}\nkpis:\n  - id: total\n    sql: sql/k.sql\n    grain: month\n"
    )
}

/// A project with the given pipelines (file name, YAML) under `pipelines/`.
fn scheduled_project(pipelines: &[(String, String)]) -> tempfile::TempDir {
    let paths: Vec<String> = pipelines
        .iter()
        .map(|(f, _)| format!("pipelines/{f}"))
        .collect();
    let mut files: Vec<(&str, &str)> = vec![
        ("data/t.csv", "id,amount\n1,10\n2,32\n"),
        ("sql/k.sql", KPI_SQL),
    ];
    for (path, (_, yaml)) in paths.iter().zip(pipelines) {
        files.push((path.as_str(), yaml.as_str()));
    }
    project(&files)
}

/// The port the daemon (started with `--http 127.0.0.1:0`) logged it serves on.
fn served_port(daemon: &Daemon) -> u16 {
    let mut port = None;
    assert!(
        wait_for(Duration::from_secs(120), || {
            port = daemon.logs().iter().find_map(|l| {
                field(l, "address")
                    .rsplit_once(':')
                    .and_then(|(_, p)| p.parse::<u16>().ok())
                    .filter(|p| *p != 0)
            });
            port.is_some()
        }),
        "the daemon never logged its HTTP address"
    );
    port.unwrap()
}

/// `--grace` as passed (`30s`, `10m`, `500ms`); the daemon's default, 30 s,
/// otherwise.
fn grace_of(args: &[&str]) -> Duration {
    let Some(text) = args
        .iter()
        .position(|a| *a == "--grace")
        .and_then(|i| args.get(i + 1))
    else {
        return Duration::from_secs(30);
    };
    let digits: String = text.chars().take_while(char::is_ascii_digit).collect();
    let n: u64 = digits.parse().unwrap_or(30);
    match &text[digits.len()..] {
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(60 * n),
        "h" => Duration::from_secs(3600 * n),
        _ => Duration::from_secs(n),
    }
}

/// A running `kpiforge schedule`, JSON logs into a file; killed on drop.
struct Daemon {
    child: Child,
    log: PathBuf,
    grace: Duration,
}

impl Daemon {
    fn start(dir: &Path, args: &[&str]) -> Daemon {
        Daemon::start_env(dir, args, &[])
    }

    fn start_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let n = std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
        let log = dir.join(format!("daemon-{n}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_kpiforge"));
        command
            .args(["--log-format", "json", "schedule"])
            .args(args)
            .current_dir(dir)
            .env_remove("KPIFORGE_LOG")
            .stdout(Stdio::null())
            .stderr(file);
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command.spawn().expect("kpiforge schedule starts");
        Daemon {
            child,
            log,
            grace: grace_of(args),
        }
    }

    /// Sends SIGTERM.
    fn signal(&self) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(status.success());
    }

    /// SIGTERM, then waits for the exit; returns the exit code.
    fn terminate(mut self) -> (Option<i32>, Vec<serde_json::Value>) {
        self.signal();
        let started = Instant::now();
        let code = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status.code();
            }
            // A cap against a hung daemon, far above grace + the 30 s
            // cancellation wait, not a bound on how fast it stops.
            assert!(
                started.elapsed() < self.grace + Duration::from_secs(180),
                "the daemon did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        (code, self.logs())
    }

    fn logs(&self) -> Vec<serde_json::Value> {
        logs(&self.log)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn logs(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn message(line: &serde_json::Value) -> &str {
    line["fields"]["message"].as_str().unwrap_or("")
}

fn field<'a>(line: &'a serde_json::Value, name: &str) -> &'a str {
    line["fields"][name].as_str().unwrap_or("")
}

/// The fires logged as started (`fired`) with a trigger, per pipeline.
fn fired(logs: &[serde_json::Value], trigger: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for l in logs {
        if message(l) == "fired" && field(l, "trigger") == trigger {
            out.entry(field(l, "pipeline").to_string())
                .or_default()
                .push(field(l, "fire").to_string());
        }
    }
    out
}

/// Fires logged as skipped, per pipeline.
fn skipped(logs: &[serde_json::Value]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for l in logs {
        if message(l).starts_with("fire skipped") {
            out.entry(field(l, "pipeline").to_string())
                .or_default()
                .push(field(l, "fire").to_string());
        }
    }
    out
}

fn history(dir: &Path) -> Vec<RunEntry> {
    let path = dir.join(".kpiforge/state.db");
    if !path.is_file() {
        return Vec::new();
    }
    let mut runs = StateStore::open(&kpiforge::state::StateLocation::Sqlite(path))
        .unwrap()
        .runs(&RunFilter::default())
        .unwrap();
    runs.reverse(); // oldest first
    runs
}

fn succeeded(dir: &Path) -> usize {
    history(dir)
        .iter()
        .filter(|r| r.status == "succeeded")
        .count()
}

fn time(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("`{text}`: {e}"))
        .with_timezone(&Utc)
}

/// Waits until `done` holds, at most `limit` (a lower bound for the test, not
/// an assertion on speed).
fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    done()
}

/// GET `path`; (status, body).
fn get(port: u16, path: &str, auth: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    if let Some(token) = auth {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}

/// Waits until the daemon answers /healthz.
fn wait_http(port: u16) {
    assert!(
        wait_for(Duration::from_secs(120), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        }),
        "the HTTP server did not come up"
    );
}

/// An HTTP JSON source that answers 500 to its first `fail_first` requests
/// and the others after `delay`; counts requests.
struct SlowServer {
    port: u16,
    requests: Arc<AtomicUsize>,
}

impl SlowServer {
    fn start(delay: Duration, fail_first: usize) -> SlowServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let seen = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let mut stream = stream;
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut chunk) {
                            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                            _ => return,
                        }
                    }
                    let index = seen.fetch_add(1, Ordering::SeqCst);
                    let (status, body) = if index < fail_first {
                        ("500 Internal Server Error", "boom".to_string())
                    } else {
                        std::thread::sleep(delay);
                        (
                            "200 OK",
                            r#"[{"id": 1, "amount": 10}, {"id": 2, "amount": 32}]"#.to_string(),
                        )
                    };
                    let response = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes());
                });
            }
        });
        SlowServer { port, requests }
    }

    fn source(&self) -> String {
        format!(
            "    http:\n      url: http://127.0.0.1:{}/items\n      retries: 0",
            self.port
        )
    }
}

/// Runs never overlap: each starts after the previous finished.
#[track_caller]
fn assert_no_overlap(runs: &[RunEntry]) {
    for pair in runs.windows(2) {
        let finished = pair[0]
            .finished_at
            .as_deref()
            .unwrap_or_else(|| panic!("run {} never finished", pair[0].run_id));
        assert!(
            time(&pair[1].started_at) >= time(finished),
            "runs overlap: {:?} and {:?}",
            pair[0],
            pair[1]
        );
    }
}

// ---------------------------------------------------------------- tests

#[test]
fn one_run_per_fire() {
    // UTC+14: the as-of (today there) is often not today in UTC.
    let yaml = pipeline(
        "p",
        "schedule: \"*/1 * * * * *\"\ntimezone: Pacific/Kiritimati",
        None,
    );
    let dir = scheduled_project(&[("p.yaml".into(), yaml)]);
    let daemon = Daemon::start(dir.path(), &["pipelines"]);
    let enough = wait_for(Duration::from_secs(120), || succeeded(dir.path()) >= 3);
    let (code, logs) = daemon.terminate();
    assert!(
        enough,
        "fewer than 3 runs succeeded: {:?}",
        history(dir.path())
    );
    assert_eq!(code, Some(0));
    let fires = fired(&logs, "schedule").remove("p").unwrap_or_default();
    let skips = skipped(&logs).remove("p").unwrap_or_default();
    let distinct: BTreeSet<&String> = fires.iter().collect();
    assert_eq!(distinct.len(), fires.len(), "a fire ran twice: {fires:?}");
    assert!(fires.len() >= 3, "{fires:?}");
    // Every second between the first and the last fire was either run or skipped.
    let all: BTreeSet<DateTime<Utc>> = fires.iter().chain(&skips).map(|f| time(f)).collect();
    let first = *all.first().unwrap();
    let last = *all.last().unwrap();
    assert_eq!(
        all.len() as i64,
        (last - first).num_seconds() + 1,
        "missed fires"
    );
    let runs = history(dir.path());
    assert_eq!(runs.len(), fires.len(), "{runs:?}");
    assert!(runs.iter().all(|r| r.trigger == "schedule"));
    assert!(runs.iter().all(|r| r.status == "succeeded"), "{runs:?}");
    // The as-of of a scheduled run is the fire's date in the pipeline's time zone.
    for l in logs.iter().filter(|l| message(l) == "fired") {
        let fire = time(field(l, "fire"));
        let local = fire.with_timezone(&chrono_tz::Pacific::Kiritimati);
        let run = runs
            .iter()
            .find(|r| r.run_id == field(l, "run_id"))
            .expect("the fired run is in the history");
        assert_eq!(run.as_of, local.date_naive().to_string());
    }
}

#[test]
fn overlap_skip_under_a_slow_run() {
    let server = SlowServer::start(Duration::from_millis(2500), 0);
    let yaml = pipeline(
        "p",
        "schedule: \"*/1 * * * * *\"\noverlap: skip",
        Some(&server.source()),
    );
    let dir = scheduled_project(&[("p.yaml".into(), yaml)]);
    let daemon = Daemon::start(dir.path(), &["pipelines", "--grace", "30s"]);
    let enough = wait_for(Duration::from_secs(120), || {
        skipped(&daemon.logs()).get("p").map_or(0, Vec::len) >= 2 && succeeded(dir.path()) >= 1
    });
    let (code, logs) = daemon.terminate();
    assert!(enough, "no 2 skips and a run: {}", dir.path().display());
    assert_eq!(code, Some(0));
    let runs = history(dir.path());
    let skips = skipped(&logs).remove("p").unwrap_or_default();
    assert!(!runs.is_empty());
    assert!(skips.len() >= 2, "{skips:?}");
    assert_no_overlap(&runs);
    assert!(runs.iter().all(|r| r.status == "succeeded"), "{runs:?}");
    let fires = fired(&logs, "schedule").remove("p").unwrap_or_default();
    assert_eq!(fires.len(), runs.len());
    // A skipped fire never also ran.
    assert!(skips.iter().all(|s| !fires.contains(s)));
}

#[test]
fn overlap_queue_under_a_slow_run() {
    let server = SlowServer::start(Duration::from_millis(2000), 0);
    let yaml = pipeline(
        "p",
        "schedule: \"*/1 * * * * *\"\noverlap: queue",
        Some(&server.source()),
    );
    let dir = scheduled_project(&[("p.yaml".into(), yaml)]);
    let daemon = Daemon::start(dir.path(), &["pipelines", "--grace", "30s"]);
    // Until the queued fire has run (at least two runs finished).
    let done = wait_for(Duration::from_secs(60), || {
        history(dir.path())
            .iter()
            .filter(|r| r.status == "succeeded")
            .count()
            >= 2
    });
    let (code, logs) = daemon.terminate();
    assert!(done);
    assert_eq!(code, Some(0));
    let queued: Vec<&serde_json::Value> = logs
        .iter()
        .filter(|l| message(l).starts_with("fire queued"))
        .collect();
    let dropped = skipped(&logs).remove("p").unwrap_or_default();
    assert!(!queued.is_empty());
    // At most one waits: the fires after it while the run goes on are dropped.
    assert!(!dropped.is_empty());
    let runs = history(dir.path());
    assert_no_overlap(&runs);
    // The queued fire ran, after the run it waited for.
    let fires = fired(&logs, "schedule").remove("p").unwrap_or_default();
    let first_queued = field(queued[0], "fire");
    assert!(fires.iter().any(|f| f == first_queued), "{fires:?}");
}

#[test]
fn catch_up_after_a_restart() {
    let projects: Vec<(&str, tempfile::TempDir)> = ["none", "latest", "all"]
        .into_iter()
        .map(|policy| {
            let yaml = pipeline(
                "p",
                &format!("schedule: \"*/1 * * * * *\"\ncatch_up: {policy}"),
                None,
            );
            (policy, scheduled_project(&[("p.yaml".into(), yaml)]))
        })
        .collect();
    let daemons: Vec<Daemon> = projects
        .iter()
        .map(|(_, d)| Daemon::start(d.path(), &["pipelines"]))
        .collect();
    assert!(
        wait_for(Duration::from_secs(120), || projects
            .iter()
            .all(|(_, d)| succeeded(d.path()) >= 1)),
        "no run before the restart"
    );
    for d in daemons {
        assert_eq!(d.terminate().0, Some(0));
    }
    let before: Vec<usize> = projects
        .iter()
        .map(|(_, d)| history(d.path()).len())
        .collect();
    assert!(before.iter().all(|n| *n >= 1), "{before:?}");
    // Down for 4 seconds: about 4 fires missed.
    std::thread::sleep(Duration::from_secs(4));
    let daemons: Vec<Daemon> = projects
        .iter()
        .map(|(_, d)| Daemon::start(d.path(), &["pipelines"]))
        .collect();
    // Until each has caught up and run a scheduled fire after the restart
    // (so `none` cannot pass without having started at all).
    let restarted = Utc::now();
    let caught_up = |policy: &str, dir: &Path| {
        let runs = history(dir);
        let done = |trigger: &str| {
            runs.iter()
                .filter(|r| r.trigger == trigger && r.status == "succeeded")
                .count()
        };
        let scheduled_after = runs
            .iter()
            .filter(|r| r.trigger == "schedule" && r.status == "succeeded")
            .filter(|r| time(&r.started_at) >= restarted)
            .count();
        let wanted = match policy {
            "none" => 0,
            "latest" => 1,
            _ => 3,
        };
        done("catch_up") >= wanted && scheduled_after >= 1
    };
    let done = wait_for(Duration::from_secs(120), || {
        projects.iter().all(|(p, d)| caught_up(p, d.path()))
    });
    for d in daemons {
        assert_eq!(d.terminate().0, Some(0));
    }
    assert!(done, "catch-up never completed");
    for (policy, dir) in &projects {
        let runs = history(dir.path());
        let caught: Vec<&RunEntry> = runs.iter().filter(|r| r.trigger == "catch_up").collect();
        match *policy {
            "none" => assert!(caught.is_empty(), "{caught:?}"),
            "latest" => assert_eq!(caught.len(), 1, "{caught:?}"),
            _ => assert!(caught.len() >= 3, "{caught:?}"),
        }
        assert!(caught.iter().all(|r| r.status == "succeeded"));
    }
}

#[test]
fn failed_runs_are_retried_with_backoff() {
    // The source fails twice (and does not retry itself), then answers.
    let server = SlowServer::start(Duration::ZERO, 2);
    let yaml = pipeline(
        "p",
        "schedule: \"*/1 * * * * *\"\nretries: 2\nretry_delay: 1s",
        Some(&server.source()),
    );
    let dir = scheduled_project(&[("p.yaml".into(), yaml)]);
    let daemon = Daemon::start(dir.path(), &["pipelines"]);
    let done = wait_for(Duration::from_secs(60), || {
        history(dir.path()).iter().any(|r| r.status == "succeeded")
    });
    let (code, _) = daemon.terminate();
    assert!(done);
    assert_eq!(code, Some(0));
    let runs = history(dir.path());
    let first: Vec<(&str, &str)> = runs
        .iter()
        .take(3)
        .map(|r| (r.trigger.as_str(), r.status.as_str()))
        .collect();
    assert_eq!(
        first,
        [
            ("schedule", "failed"),
            ("retry", "failed"),
            ("retry", "succeeded")
        ],
        "{runs:?}"
    );
    assert!(
        runs[0].error.as_deref().unwrap_or("").contains("500"),
        "{runs:?}"
    );
    // Backoff: 1 s before the first retry, 2 s before the second.
    let gap = |a: &RunEntry, b: &RunEntry| {
        time(&b.started_at) - time(a.finished_at.as_deref().unwrap_or(&a.started_at))
    };
    assert!(gap(&runs[0], &runs[1]) >= chrono::Duration::milliseconds(990));
    assert!(gap(&runs[1], &runs[2]) >= chrono::Duration::milliseconds(1990));
    assert!(server.requests.load(Ordering::SeqCst) >= 3);
}

#[test]
fn sigterm_cancels_a_run_after_the_grace_period() {
    let server = SlowServer::start(Duration::from_secs(20), 0);
    let yaml = pipeline("p", "schedule: \"*/1 * * * * *\"", Some(&server.source()));
    let dir = scheduled_project(&[("p.yaml".into(), yaml)]);
    let daemon = Daemon::start(dir.path(), &["pipelines", "--grace", "1s"]);
    assert!(wait_for(Duration::from_secs(120), || {
        server.requests.load(Ordering::SeqCst) >= 1
    }));
    let (code, logs) = daemon.terminate();
    assert_eq!(code, Some(0));
    let runs = history(dir.path());
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].status, "cancelled");
    assert!(runs[0].finished_at.is_some());
    assert!(
        runs[0]
            .error
            .as_deref()
            .unwrap_or("")
            .starts_with("cancelled")
    );
    // Nothing of it was published.
    let values = dir.path().join("out/kpi_values");
    let published = walk(&values);
    assert!(published.is_empty(), "{published:?}");
    assert!(
        logs.iter().any(|l| message(l).starts_with("run cancelled")),
        "{logs:?}"
    );
}

#[test]
fn sigterm_cancels_a_cpu_bound_run() {
    // A KPI over a cross join of 10^12 rows: busy far longer than any test
    // runs, debug or release, so only cancellation ends it.
    let side = 1_000_000;
    let heavy = format!(
        "SELECT DATE '2026-01-01' AS period, CAST(sum(a.value * b.value) AS DOUBLE) AS value \
         FROM generate_series(1, {side}) a CROSS JOIN generate_series(1, {side}) b \
         CROSS JOIN (SELECT count(*) AS n FROM t) c"
    );
    let yaml =
        pipeline("p", "schedule: \"*/1 * * * * *\"", None).replace("sql/k.sql", "sql/heavy.sql");
    let dir = scheduled_project(&[("p.yaml".into(), yaml)]);
    std::fs::write(dir.path().join("sql/heavy.sql"), heavy).unwrap();
    let daemon = Daemon::start(dir.path(), &["pipelines", "--grace", "1s"]);
    assert!(wait_for(Duration::from_secs(120), || {
        history(dir.path()).iter().any(|r| r.status == "running")
    }));
    std::thread::sleep(Duration::from_millis(500));
    let stopping = Instant::now();
    let (code, _) = daemon.terminate();
    println!(
        "cpu-bound run: the daemon exited {:.1} s after SIGTERM (grace 1 s)",
        stopping.elapsed().as_secs_f64()
    );
    assert_eq!(code, Some(0));
    let runs = history(dir.path());
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].status, "cancelled", "{runs:?}");
    assert!(walk(&dir.path().join("out/kpi_values")).is_empty());
}

#[test]
fn a_second_sigterm_cancels_without_waiting_for_the_grace_period() {
    let server = SlowServer::start(Duration::from_secs(30), 0);
    let yaml = pipeline("p", "schedule: \"*/1 * * * * *\"", Some(&server.source()));
    let dir = scheduled_project(&[("p.yaml".into(), yaml)]);
    let daemon = Daemon::start(dir.path(), &["pipelines", "--grace", "10m"]);
    assert!(wait_for(Duration::from_secs(120), || {
        server.requests.load(Ordering::SeqCst) >= 1
    }));
    daemon.signal();
    assert!(wait_for(Duration::from_secs(120), || {
        daemon.log_text().contains("shutting down")
    }));
    let (code, _) = daemon.terminate();
    assert_eq!(code, Some(0));
    let runs = history(dir.path());
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].status, "cancelled");
    assert!(walk(&dir.path().join("out/kpi_values")).is_empty());
}

/// Parses a sample line `name{labels} value` (or `name value`).
fn sample(line: &str) -> Option<(String, BTreeMap<String, String>, f64)> {
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        v => v.parse().ok()?,
    };
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => (name, rest.strip_suffix('}')?),
        None => (series, ""),
    };
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return None;
    }
    let mut map = BTreeMap::new();
    let mut rest = labels;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        let end = after.find('"')?;
        map.insert(key.to_string(), after[..end].to_string());
        rest = after[end + 1..].trim_start_matches(',');
    }
    Some((name.to_string(), map, value))
}

/// Every sample has a `# TYPE`; each histogram series has buckets that never
/// decrease with `le`, and its `+Inf` bucket equals its `_count`.
fn check_types(
    types: &BTreeMap<String, String>,
    samples: &[(String, BTreeMap<String, String>, f64)],
) {
    for (name, _, _) in samples {
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|b| types.get(*b).is_some_and(|k| k == "histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(base), "no # TYPE for {name}");
    }
    let mut histograms = 0;
    for (base, _) in types.iter().filter(|(_, k)| *k == "histogram") {
        let bucket = format!("{base}_bucket");
        let count = format!("{base}_count");
        let mut series: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
        for (n, labels, v) in samples.iter().filter(|(n, _, _)| *n == bucket) {
            let mut key = labels.clone();
            let le = key.remove("le").unwrap_or_else(|| panic!("{n} without le"));
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            series.entry(key).or_default().push((le, *v));
        }
        for (key, mut buckets) in series {
            histograms += 1;
            buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
            assert!(
                buckets.windows(2).all(|w| w[0].1 <= w[1].1),
                "{base} {key:?}: buckets decrease: {buckets:?}"
            );
            let inf = buckets.last().filter(|b| b.0.is_infinite()).map(|b| b.1);
            let total = samples
                .iter()
                .find(|(n, l, _)| *n == count && *l == key)
                .map(|(_, _, v)| *v);
            assert!(
                inf.is_some() && inf == total,
                "{base} {key:?}: +Inf {inf:?} != count {total:?}"
            );
        }
    }
    assert!(histograms >= 1, "no histogram series");
}

#[test]
fn metrics_and_endpoints() {
    let yaml = pipeline("p", "schedule: \"*/2 * * * * *\"", None);
    let unscheduled = pipeline("q", "", None);
    let dir = scheduled_project(&[("p.yaml".into(), yaml), ("q.yaml".into(), unscheduled)]);
    let daemon = Daemon::start(dir.path(), &["pipelines", "--http", "127.0.0.1:0"]);
    let port = served_port(&daemon);
    wait_http(port);
    assert_eq!(get(port, "/healthz", None), (200, "ok".to_string()));
    assert!(wait_for(Duration::from_secs(120), || {
        history(dir.path())
            .iter()
            .filter(|r| r.status == "succeeded")
            .count()
            >= 2
    }));
    // Scrape between runs: the history before and after agrees with the counter.
    let mut matched = None;
    for _ in 0..50 {
        let before = history(dir.path());
        let (status, text) = get(port, "/metrics", None);
        let after = history(dir.path());
        assert_eq!(status, 200);
        let mut samples = Vec::new();
        let mut types: BTreeMap<String, String> = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest
                    .split_once(' ')
                    .unwrap_or_else(|| panic!("bad TYPE line `{line}`"));
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                    "{line}"
                );
                types.insert(name.to_string(), kind.to_string());
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            samples.push(sample(line).unwrap_or_else(|| panic!("bad sample line `{line}`")));
        }
        let total: f64 = samples
            .iter()
            .filter(|(n, l, _)| n == "kpiforge_runs_total" && l["pipeline"] == "p")
            .map(|(_, _, v)| v)
            .sum();
        let finished = |runs: &[RunEntry]| runs.iter().filter(|r| r.status != "running").count();
        if before == after && finished(&before) as f64 == total {
            check_types(&types, &samples);
            matched = Some((samples, before));
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let (samples, runs) = matched.expect("runs_total never matched the history");
    let value = |name: &str, labels: &[(&str, &str)]| {
        samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| *v)
    };
    let succeeded = runs.iter().filter(|r| r.status == "succeeded").count() as f64;
    assert_eq!(
        value(
            "kpiforge_runs_total",
            &[("pipeline", "p"), ("status", "succeeded")]
        ),
        Some(succeeded)
    );
    assert_eq!(
        value("kpiforge_run_duration_seconds_count", &[("pipeline", "p")]),
        Some(succeeded)
    );
    assert_eq!(
        value(
            "kpiforge_run_duration_seconds_bucket",
            &[("pipeline", "p"), ("le", "+Inf")]
        ),
        Some(succeeded)
    );
    assert!(value("kpiforge_run_duration_seconds_sum", &[("pipeline", "p")]).is_some());
    assert_eq!(
        value(
            "kpiforge_rows_read_total",
            &[("pipeline", "p"), ("source", "t")]
        ),
        Some(2.0 * succeeded)
    );
    assert_eq!(
        value("kpiforge_checks_failed_total", &[("pipeline", "p")]),
        Some(0.0)
    );
    assert!(
        value(
            "kpiforge_last_success_timestamp_seconds",
            &[("pipeline", "p")]
        )
        .unwrap_or(0.0)
            > 1.7e9
    );
    assert!(value("kpiforge_runs_running", &[("pipeline", "p")]).is_some());

    // /runs: the history, newest first, filtered.
    let (status, body) = get(port, "/runs?pipeline=p", None);
    assert_eq!(status, 200);
    let listed: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    assert!(listed.len() >= runs.len());
    let started: Vec<&str> = listed
        .iter()
        .map(|r| r["started_at"].as_str().unwrap())
        .collect();
    let mut sorted = started.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(started, sorted);
    assert!(listed.iter().all(|r| r["pipeline"] == "p"));
    let (_, none) = get(port, "/runs?pipeline=q", None);
    assert_eq!(none.trim(), "[]");

    // The index links the scorecard, which renders.
    let (status, index) = get(port, "/", None);
    assert_eq!(status, 200);
    assert!(index.contains("href=\"/report/p\""), "{index}");
    assert!(index.contains("not scheduled"), "{index}");
    let (status, html) = get(port, "/report/p", None);
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("<html") || html.contains("<!doctype") || html.contains("<!DOCTYPE"));
    assert_eq!(get(port, "/report/nope", None).0, 404);
    assert_eq!(get(port, "/nope", None).0, 404);

    let text = daemon.log_text();
    assert!(text.contains("not scheduled"), "{text}");
    let (code, _) = daemon.terminate();
    assert_eq!(code, Some(0));
}

#[test]
fn http_token_and_non_loopback() {
    let yaml = pipeline("p", "schedule: \"0 0 0 1 1 * 2099\"", None);
    let dir = scheduled_project(&[("p.yaml".into(), yaml)]);
    // A non-loopback address without a token: refused.
    let out = super::util::kpiforge(
        dir.path(),
        &["schedule", "pipelines", "--http", "0.0.0.0:0"],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = super::util::stderr(&out);
    assert!(
        err.contains("not a loopback address") && err.contains("--http-token-env"),
        "{err}"
    );
    // With a token: requests need it.
    let daemon = Daemon::start_env(
        dir.path(),
        &[
            "pipelines",
            "--http",
            "127.0.0.1:0",
            "--http-token-env",
            "SCHED_TOKEN",
        ],
        &[("SCHED_TOKEN", "s3cret")],
    );
    let port = served_port(&daemon);
    wait_http(port);
    assert_eq!(get(port, "/healthz", None).0, 401);
    assert_eq!(get(port, "/healthz", Some("wrong")).0, 401);
    assert_eq!(get(port, "/healthz", Some("s3cret")), (200, "ok".into()));
    assert_eq!(daemon.terminate().0, Some(0));
}

#[test]
fn each_run_lists_the_source_files_again() {
    // A nightly load appends a file: the daemon, loaded before it, must read it.
    let yaml = pipeline(
        "p",
        "schedule: \"*/1 * * * * *\"",
        Some("    file: data/t*.csv"),
    );
    let dir = scheduled_project(&[("p.yaml".into(), yaml)]);
    let daemon = Daemon::start(dir.path(), &["pipelines"]);
    let rows = |r: &RunEntry| r.rows_read["t"].as_i64();
    assert!(wait_for(Duration::from_secs(120), || {
        history(dir.path())
            .iter()
            .any(|r| r.status == "succeeded" && rows(r) == Some(2))
    }));
    std::fs::write(dir.path().join("data/t2.csv"), "id,amount\n3,100\n").unwrap();
    assert!(
        wait_for(Duration::from_secs(120), || {
            history(dir.path())
                .iter()
                .any(|r| r.status == "succeeded" && rows(r) == Some(3))
        }),
        "no run read the new file: {:?}",
        history(dir.path())
    );
    // Files gone: the run fails, naming the source and the pattern.
    std::fs::remove_file(dir.path().join("data/t.csv")).unwrap();
    std::fs::remove_file(dir.path().join("data/t2.csv")).unwrap();
    let mut error = None;
    assert!(wait_for(Duration::from_secs(120), || {
        error = history(dir.path())
            .into_iter()
            .find(|r| r.status == "failed")
            .and_then(|r| r.error);
        error.is_some()
    }));
    let error = error.unwrap();
    assert!(
        error.contains("sources.t.file: no file matches `data/t*.csv`")
            && error.contains("p.yaml:"),
        "{error}"
    );
    let (code, _) = daemon.terminate();
    assert_eq!(code, Some(0));
}

#[test]
fn an_edited_sql_file_is_reloaded() {
    let yaml = pipeline("p", "schedule: \"*/1 * * * * *\"", None);
    let dir = scheduled_project(&[("p.yaml".into(), yaml)]);
    let daemon = Daemon::start(dir.path(), &["pipelines", "--poll", "200ms"]);
    // The value the latest run published (its as-of's partition is the last).
    let latest = |dir: &Path| {
        let mut parts: Vec<PathBuf> = walk(&dir.join("out/kpi_values"))
            .into_iter()
            .filter(|p| p.file_name().is_some_and(|n| n == "part-0.parquet"))
            .collect();
        parts.sort();
        parts.last().map(|p| published_values(p))
    };
    assert!(wait_for(Duration::from_secs(120), || {
        latest(dir.path()) == Some(vec![Some(42.0)])
    }));
    // Only the KPI's SQL file changes, not the pipeline file.
    let sql = KPI_SQL.replace("sum(amount)", "sum(amount) * 2");
    std::fs::write(dir.path().join("sql/k.sql"), sql).unwrap();
    assert!(
        wait_for(Duration::from_secs(120), || {
            latest(dir.path()) == Some(vec![Some(84.0)])
        }),
        "the edited SQL never ran: {:?}",
        latest(dir.path())
    );
    let (code, logs) = daemon.terminate();
    assert_eq!(code, Some(0));
    assert!(logs.iter().any(|l| message(l) == "reloaded: scheduled"));
}

#[test]
fn config_reload() {
    // Rarely firing at first.
    let yaml = pipeline("p", "schedule: \"0 0 0 1 1 * 2099\"", None);
    let dir = scheduled_project(&[("p.yaml".into(), yaml)]);
    let daemon = Daemon::start(dir.path(), &["pipelines", "--poll", "200ms"]);
    std::thread::sleep(Duration::from_secs(2));
    assert!(history(dir.path()).is_empty());
    // The new schedule takes effect.
    let file = dir.path().join("pipelines/p.yaml");
    std::fs::write(&file, pipeline("p", "schedule: \"*/1 * * * * *\"", None)).unwrap();
    assert!(wait_for(Duration::from_secs(120), || history(dir.path())
        .len()
        >= 2));
    // A broken edit is reported; the last good version keeps running.
    std::fs::write(&file, "name: p\nschedule: [not, a, cron\n").unwrap();
    assert!(wait_for(Duration::from_secs(120), || {
        daemon
            .log_text()
            .contains("the last good version keeps running")
    }));
    let n = history(dir.path()).len();
    assert!(wait_for(Duration::from_secs(120), || history(dir.path())
        .len()
        >= n + 2));
    // A new file in the watched folder is picked up; a deleted one stops.
    std::fs::write(
        dir.path().join("pipelines/q.yaml"),
        pipeline("q", "schedule: \"*/1 * * * * *\"", None),
    )
    .unwrap();
    assert!(wait_for(Duration::from_secs(120), || {
        history(dir.path()).iter().any(|r| r.pipeline == "q")
    }));
    std::fs::remove_file(&file).unwrap();
    assert!(wait_for(Duration::from_secs(120), || {
        daemon.log_text().contains("no longer scheduled")
    }));
    // Let `q` run a few more fires, then: no fire of `p` after the removal.
    let q_runs = |dir: &Path| history(dir).iter().filter(|r| r.pipeline == "q").count();
    let n = q_runs(dir.path());
    assert!(wait_for(Duration::from_secs(120), || q_runs(dir.path()) >= n + 3));
    let (code, logs) = daemon.terminate();
    assert_eq!(code, Some(0));
    let removed = logs
        .iter()
        .find(|l| message(l).contains("no longer scheduled"))
        .map(|l| time(l["timestamp"].as_str().unwrap()))
        .expect("the removal is logged");
    let late: Vec<String> = fired(&logs, "schedule")
        .remove("p")
        .unwrap_or_default()
        .into_iter()
        .filter(|f| time(f) > removed)
        .collect();
    assert!(late.is_empty(), "a deleted pipeline kept firing: {late:?}");
}

#[test]
fn soak_many_pipelines() {
    const PIPELINES: usize = 20;
    let files: Vec<(String, String)> = (0..PIPELINES)
        .map(|i| {
            (
                format!("p{i:02}.yaml"),
                pipeline(
                    &format!("p{i:02}"),
                    "schedule: \"*/1 * * * * *\"\noverlap: skip",
                    None,
                ),
            )
        })
        .collect();
    let dir = scheduled_project(&files);
    const RUNS: usize = 15;
    let daemon = Daemon::start(dir.path(), &["pipelines", "--grace", "60s"]);
    let started = Instant::now();
    let enough = wait_for(Duration::from_secs(300), || {
        let runs = history(dir.path());
        (0..PIPELINES).all(|i| {
            let name = format!("p{i:02}");
            runs.iter()
                .filter(|r| r.pipeline == name && r.status == "succeeded")
                .count()
                >= RUNS
        })
    });
    let took = started.elapsed();
    let (code, logs) = daemon.terminate();
    assert!(enough, "not every pipeline ran {RUNS} times in 300 s");
    assert_eq!(code, Some(0));
    let fires = fired(&logs, "schedule");
    let skips = skipped(&logs);
    let runs = history(dir.path());
    let mut total_runs = 0;
    let mut total_skipped = 0;
    for i in 0..PIPELINES {
        let name = format!("p{i:02}");
        let fired = fires.get(&name).cloned().unwrap_or_default();
        let skipped = skips.get(&name).cloned().unwrap_or_default();
        let distinct: BTreeSet<&String> = fired.iter().collect();
        assert_eq!(distinct.len(), fired.len(), "{name}: a fire ran twice");
        let recorded: Vec<&RunEntry> = runs.iter().filter(|r| r.pipeline == name).collect();
        assert_eq!(recorded.len(), fired.len(), "{name}: runs != fires");
        assert!(
            recorded.iter().all(|r| r.status == "succeeded"),
            "{name}: {recorded:?}"
        );
        let all: BTreeSet<DateTime<Utc>> = fired.iter().chain(&skipped).map(|f| time(f)).collect();
        let (Some(first), Some(last)) = (all.first(), all.last()) else {
            panic!("{name} never fired");
        };
        assert_eq!(
            all.len() as i64,
            (*last - *first).num_seconds() + 1,
            "{name}: missed fires"
        );
        total_runs += fired.len();
        total_skipped += skipped.len();
    }
    // How late runs started after their fire (a figure, not an assertion).
    let mut lags: Vec<i64> = logs
        .iter()
        .filter(|l| message(l) == "fired")
        .filter_map(|l| {
            let at = time(l["timestamp"].as_str()?);
            Some((at - time(field(l, "fire"))).num_milliseconds())
        })
        .collect();
    lags.sort();
    let per_pipeline: Vec<usize> = (0..PIPELINES)
        .map(|i| fires.get(&format!("p{i:02}")).map_or(0, Vec::len))
        .collect();
    println!(
        "soak: {PIPELINES} pipelines x */1 s until each ran {RUNS} times ({:.1} s): {total_runs} runs ({}..{} per pipeline), {total_skipped} fires skipped (overlap), 0 doubled, 0 missed; start lag after the fire: median {} ms, max {} ms",
        took.as_secs_f64(),
        per_pipeline.iter().min().unwrap_or(&0),
        per_pipeline.iter().max().unwrap_or(&0),
        lags.get(lags.len() / 2).unwrap_or(&0),
        lags.last().unwrap_or(&0),
    );
    assert!(total_runs >= PIPELINES * RUNS, "{total_runs}");
}

#[test]
fn two_files_with_one_name_run_once() {
    let yaml = pipeline("p", "schedule: \"*/1 * * * * *\"", None);
    let dir = scheduled_project(&[("a.yaml".into(), yaml.clone()), ("b.yaml".into(), yaml)]);
    let daemon = Daemon::start(dir.path(), &["pipelines"]);
    let refused = wait_for(Duration::from_secs(120), || {
        daemon
            .log_text()
            .contains("another pipeline file has the same name")
    });
    let ran = wait_for(Duration::from_secs(120), || succeeded(dir.path()) >= 3);
    let (code, logs) = daemon.terminate();
    assert!(refused && ran, "{}", dir.path().display());
    assert_eq!(code, Some(0));
    let fires = fired(&logs, "schedule").remove("p").unwrap_or_default();
    let distinct: BTreeSet<&String> = fires.iter().collect();
    assert_eq!(distinct.len(), fires.len(), "a fire ran twice: {fires:?}");
    assert_no_overlap(&history(dir.path()));
    // The first file (sorted) is the one scheduled.
    let refusal = logs
        .iter()
        .find(|l| message(l).starts_with("another pipeline file"))
        .unwrap();
    assert!(field(refusal, "file").ends_with("b.yaml"), "{refusal}");
}

#[test]
fn a_removed_file_drops_its_retries() {
    // Always failing, with retries far apart.
    let server = SlowServer::start(Duration::ZERO, usize::MAX);
    let yaml = pipeline(
        "p",
        "schedule: \"*/1 * * * * *\"\noverlap: skip\nretries: 3\nretry_delay: 20s",
        Some(&server.source()),
    );
    let dir = scheduled_project(&[("p.yaml".into(), yaml)]);
    let daemon = Daemon::start(dir.path(), &["pipelines", "--poll", "200ms"]);
    assert!(wait_for(Duration::from_secs(120), || {
        daemon.log_text().contains("retrying the failed run")
    }));
    std::fs::remove_file(dir.path().join("pipelines/p.yaml")).unwrap();
    let dropped = wait_for(Duration::from_secs(120), || {
        daemon
            .log_text()
            .contains("pipeline file removed: retry not started")
    });
    let (code, logs) = daemon.terminate();
    assert!(dropped, "the retry was not dropped");
    assert_eq!(code, Some(0));
    assert!(fired(&logs, "retry").is_empty(), "a retry ran");
}

#[test]
fn a_file_removed_and_added_again_does_not_overlap_its_runs() {
    let server = SlowServer::start(Duration::from_secs(3), 0);
    let yaml = pipeline(
        "p",
        "schedule: \"*/1 * * * * *\"\noverlap: skip",
        Some(&server.source()),
    );
    let dir = scheduled_project(&[("p.yaml".into(), yaml.clone())]);
    let file = dir.path().join("pipelines/p.yaml");
    let daemon = Daemon::start(dir.path(), &["pipelines", "--poll", "200ms"]);
    assert!(wait_for(Duration::from_secs(120), || {
        history(dir.path()).iter().any(|r| r.status == "running")
    }));
    std::fs::remove_file(&file).unwrap();
    assert!(wait_for(Duration::from_secs(120), || {
        daemon.log_text().contains("no longer scheduled")
    }));
    std::fs::write(&file, &yaml).unwrap();
    // Added again while the run goes on: its fires are skipped, not run
    // beside it.
    let n = succeeded(dir.path());
    let ran = wait_for(Duration::from_secs(120), || succeeded(dir.path()) >= n + 2);
    let (code, _) = daemon.terminate();
    assert!(ran);
    assert_eq!(code, Some(0));
    assert_no_overlap(&history(dir.path()));
}
