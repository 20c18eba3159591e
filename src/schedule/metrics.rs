//! The daemon's counters, rendered in the Prometheus text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Run-duration histogram bucket bounds, in seconds.
pub const BUCKETS: [f64; 12] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

#[derive(Default)]
struct Histogram {
    /// Observations <= each bound (cumulative when rendered).
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

#[derive(Default)]
struct Inner {
    runs_total: BTreeMap<(String, String), u64>,
    duration: BTreeMap<String, Histogram>,
    last_success: BTreeMap<String, f64>,
    checks_failed: BTreeMap<String, u64>,
    rows_read: BTreeMap<(String, String), u64>,
    running: BTreeMap<String, i64>,
    skipped: BTreeMap<String, u64>,
}

/// What a finished (or cancelled) run adds to the metrics.
pub struct Finished<'a> {
    pub pipeline: &'a str,
    pub status: &'a str,
    pub seconds: f64,
    pub finished_at: f64,
    pub checks_failed: u64,
    pub rows_read: Vec<(String, u64)>,
}

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let mut guard = match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    /// Makes a pipeline's series appear (at zero) before its first run.
    pub fn register(&self, pipeline: &str) {
        self.with(|m| {
            m.running.entry(pipeline.to_string()).or_insert(0);
            m.checks_failed.entry(pipeline.to_string()).or_insert(0);
            m.skipped.entry(pipeline.to_string()).or_insert(0);
            m.duration.entry(pipeline.to_string()).or_default();
        })
    }

    pub fn started(&self, pipeline: &str) {
        self.with(|m| *m.running.entry(pipeline.to_string()).or_insert(0) += 1)
    }

    pub fn skipped(&self, pipeline: &str) {
        self.with(|m| *m.skipped.entry(pipeline.to_string()).or_insert(0) += 1)
    }

    pub fn finished(&self, run: Finished) {
        self.with(|m| {
            let p = run.pipeline.to_string();
            let running = m.running.entry(p.clone()).or_insert(0);
            *running = (*running - 1).max(0);
            *m.runs_total
                .entry((p.clone(), run.status.to_string()))
                .or_insert(0) += 1;
            let h = m.duration.entry(p.clone()).or_default();
            for (i, bound) in BUCKETS.iter().enumerate() {
                if run.seconds <= *bound {
                    h.counts[i] += 1;
                }
            }
            h.sum += run.seconds;
            h.count += 1;
            if run.status == "succeeded" || run.status == "quality_failed" {
                m.last_success.insert(p.clone(), run.finished_at);
            }
            *m.checks_failed.entry(p.clone()).or_insert(0) += run.checks_failed;
            for (source, rows) in run.rows_read {
                *m.rows_read.entry((p.clone(), source)).or_insert(0) += rows;
            }
        })
    }

    /// The Prometheus text exposition (version 0.0.4).
    pub fn render(&self) -> String {
        self.with(|m| {
            let mut out = String::new();
            let mut body = String::new();
            for ((p, s), n) in &m.runs_total {
                let _ = writeln!(
                    body,
                    "kpiforge_runs_total{{pipeline=\"{}\",status=\"{}\"}} {n}",
                    esc(p),
                    esc(s)
                );
            }
            let mut section = |name: &str, kind: &str, help: &str, body: String| {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
                out.push_str(&body);
            };
            section(
                "kpiforge_runs_total",
                "counter",
                "Runs finished by this daemon, by pipeline and status.",
                body,
            );
            let mut body = String::new();
            for (p, h) in &m.duration {
                for (i, bound) in BUCKETS.iter().enumerate() {
                    let _ = writeln!(
                        body,
                        "kpiforge_run_duration_seconds_bucket{{pipeline=\"{}\",le=\"{bound}\"}} {}",
                        esc(p),
                        h.counts[i]
                    );
                }
                let _ = writeln!(
                    body,
                    "kpiforge_run_duration_seconds_bucket{{pipeline=\"{}\",le=\"+Inf\"}} {}",
                    esc(p),
                    h.count
                );
                let _ = writeln!(
                    body,
                    "kpiforge_run_duration_seconds_sum{{pipeline=\"{}\"}} {}",
                    esc(p),
                    h.sum
                );
                let _ = writeln!(
                    body,
                    "kpiforge_run_duration_seconds_count{{pipeline=\"{}\"}} {}",
                    esc(p),
                    h.count
                );
            }
            section(
                "kpiforge_run_duration_seconds",
                "histogram",
                "Run durations, by pipeline.",
                body,
            );
            let mut body = String::new();
            for (p, t) in &m.last_success {
                let _ = writeln!(
                    body,
                    "kpiforge_last_success_timestamp_seconds{{pipeline=\"{}\"}} {t}",
                    esc(p)
                );
            }
            section(
                "kpiforge_last_success_timestamp_seconds",
                "gauge",
                "When the pipeline's last published run finished (Unix seconds).",
                body,
            );
            let mut body = String::new();
            for (p, n) in &m.checks_failed {
                let _ = writeln!(
                    body,
                    "kpiforge_checks_failed_total{{pipeline=\"{}\"}} {n}",
                    esc(p)
                );
            }
            section(
                "kpiforge_checks_failed_total",
                "counter",
                "Failed data-quality checks, summed over runs.",
                body,
            );
            let mut body = String::new();
            for ((p, s), n) in &m.rows_read {
                let _ = writeln!(
                    body,
                    "kpiforge_rows_read_total{{pipeline=\"{}\",source=\"{}\"}} {n}",
                    esc(p),
                    esc(s)
                );
            }
            section(
                "kpiforge_rows_read_total",
                "counter",
                "Rows read from each source, summed over runs.",
                body,
            );
            let mut body = String::new();
            for (p, n) in &m.running {
                let _ = writeln!(body, "kpiforge_runs_running{{pipeline=\"{}\"}} {n}", esc(p));
            }
            section("kpiforge_runs_running", "gauge", "Runs in progress.", body);
            let mut body = String::new();
            for (p, n) in &m.skipped {
                let _ = writeln!(
                    body,
                    "kpiforge_fires_skipped_total{{pipeline=\"{}\"}} {n}",
                    esc(p)
                );
            }
            section(
                "kpiforge_fires_skipped_total",
                "counter",
                "Fires not run because the previous run was still going (overlap).",
                body,
            );
            out
        })
    }
}

/// Escapes a label value.
fn esc(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family() {
        let m = Metrics::default();
        m.register("p");
        m.started("p");
        m.finished(Finished {
            pipeline: "p",
            status: "succeeded",
            seconds: 0.3,
            finished_at: 1000.0,
            checks_failed: 1,
            rows_read: vec![("s\"x".into(), 5)],
        });
        let text = m.render();
        assert!(text.contains("kpiforge_runs_total{pipeline=\"p\",status=\"succeeded\"} 1\n"));
        assert!(
            text.contains("kpiforge_run_duration_seconds_bucket{pipeline=\"p\",le=\"0.25\"} 0\n")
        );
        assert!(
            text.contains("kpiforge_run_duration_seconds_bucket{pipeline=\"p\",le=\"0.5\"} 1\n")
        );
        assert!(text.contains("kpiforge_run_duration_seconds_count{pipeline=\"p\"} 1\n"));
        assert!(text.contains("kpiforge_rows_read_total{pipeline=\"p\",source=\"s\\\"x\"} 5\n"));
        assert!(text.contains("kpiforge_runs_running{pipeline=\"p\"} 0\n"));
        assert!(text.contains("kpiforge_last_success_timestamp_seconds{pipeline=\"p\"} 1000\n"));
    }
}
