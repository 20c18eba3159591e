//! `kpiforge backfill`: one run per period, resumable, side by side, no bars off a terminal.

use std::path::Path;
use std::process::Output;

use super::util::{kpiforge, project, published_values, stderr, stdout};

const PIPELINE: &str = "name: p\noutput: out\nsources:\n  t:\n    file: data/t.csv\n    columns: {d: date}\nkpis:\n  - id: total\n    sql: sql/k.sql\n    grain: month\n";

const CSV: &str =
    "d,amount\n2026-01-03,1\n2026-01-20,2\n2026-02-05,10\n2026-03-07,100\n2026-04-01,1000\n";

const KPI_SQL: &str = "SELECT CAST(date_trunc('month', d) AS DATE) AS period, CAST(sum(amount) AS DOUBLE) AS value FROM t GROUP BY 1 ORDER BY 1";

/// Fails (a cast error while computing) only when run as of 2026-02-28.
const FAILS_IN_FEBRUARY: &str = "SELECT CAST(date_trunc('month', d) AS DATE) AS period, \
    CAST(sum(amount) AS DOUBLE) + CASE WHEN $as_of = DATE '2026-02-28' THEN CAST(CAST(min(d) AS VARCHAR) AS DOUBLE) ELSE 0 END AS value \
    FROM t GROUP BY 1 ORDER BY 1";

const AS_OF: [&str; 3] = ["2026-01-31", "2026-02-28", "2026-03-31"];

fn monthly(sql: &str) -> tempfile::TempDir {
    project(&[
        ("pipelines/p.yaml", PIPELINE),
        ("data/t.csv", CSV),
        ("sql/k.sql", sql),
    ])
}

/// Backfills January to March 2026 with `extra` arguments; asserts no terminal
/// escape codes (the tests run without a terminal).
fn backfill(dir: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "backfill",
        "pipelines/p.yaml",
        "--from",
        "2026-01-01",
        "--to",
        "2026-03-31",
    ];
    args.extend_from_slice(extra);
    let out = kpiforge(dir, &args);
    for text in [stdout(&out), stderr(&out)] {
        assert!(
            !text.contains('\u{1b}'),
            "escape codes without a terminal:\n{text:?}"
        );
    }
    out
}

fn values(dir: &Path, as_of: &str) -> Vec<Option<f64>> {
    published_values(&dir.join(format!(
        "out/kpi_values/pipeline=p/as_of={as_of}/part-0.parquet"
    )))
}

/// The run history as JSON objects, newest first.
fn runs(dir: &Path) -> Vec<serde_json::Value> {
    let state = dir.join(".kpiforge/state.db");
    let out = kpiforge(dir, &["runs", "--json", "--state", state.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn field<'a>(run: &'a serde_json::Value, key: &str) -> &'a str {
    run[key].as_str().unwrap_or_default()
}

#[test]
fn backfill_runs_one_period_per_month() {
    let dir = monthly(KPI_SQL);
    let out = backfill(dir.path(), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("3 periods: 3 done, 0 checks failed, 0 failed, 0 skipped"),
        "{}",
        stdout(&out)
    );
    assert_eq!(values(dir.path(), AS_OF[0]), vec![Some(3.0)]);
    assert_eq!(values(dir.path(), AS_OF[1]), vec![Some(3.0), Some(10.0)]);
    assert_eq!(
        values(dir.path(), AS_OF[2]),
        vec![Some(3.0), Some(10.0), Some(100.0)]
    );
    let partitions: Vec<String> = {
        let mut p: Vec<String> = std::fs::read_dir(dir.path().join("out/kpi_values/pipeline=p"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        p.sort();
        p
    };
    assert_eq!(partitions, AS_OF.map(|d| format!("as_of={d}")).to_vec());
    let history = runs(dir.path());
    assert_eq!(history.len(), 3);
    let mut dates: Vec<&str> = history.iter().map(|r| field(r, "as_of")).collect();
    dates.sort();
    assert_eq!(dates, AS_OF.to_vec());
    for r in &history {
        assert_eq!(field(r, "trigger"), "backfill");
        assert_eq!(field(r, "status"), "succeeded");
    }
}

#[test]
fn backfill_rerun_skips_published_periods_unless_forced() {
    let dir = monthly(KPI_SQL);
    assert_eq!(backfill(dir.path(), &[]).status.code(), Some(0));
    let again = backfill(dir.path(), &[]);
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert!(
        stderr(&again).contains("3 of 3 periods already published: skipped"),
        "{}",
        stderr(&again)
    );
    assert!(stdout(&again).contains("0 done, 0 checks failed, 0 failed, 3 skipped"));
    assert_eq!(runs(dir.path()).len(), 3, "nothing recomputed");

    let forced = backfill(dir.path(), &["--force"]);
    assert_eq!(forced.status.code(), Some(0), "{}", stderr(&forced));
    assert!(stdout(&forced).contains("3 done, 0 checks failed, 0 failed, 0 skipped"));
    let history = runs(dir.path());
    assert_eq!(history.len(), 6);
    assert!(history.iter().all(|r| field(r, "trigger") == "backfill"));
    assert_eq!(
        values(dir.path(), AS_OF[2]),
        vec![Some(3.0), Some(10.0), Some(100.0)]
    );

    // Another output holds none of them: nothing is skipped there.
    let elsewhere = dir.path().join("elsewhere");
    let other = backfill(dir.path(), &["--output", elsewhere.to_str().unwrap()]);
    assert_eq!(other.status.code(), Some(0), "{}", stderr(&other));
    assert!(
        stdout(&other).contains("3 done, 0 checks failed, 0 failed, 0 skipped"),
        "{}",
        stdout(&other)
    );
    assert!(
        elsewhere
            .join("kpi_values/pipeline=p/as_of=2026-03-31/part-0.parquet")
            .is_file()
    );
}

#[test]
fn backfill_failed_period_is_named_and_resumed() {
    let dir = monthly(FAILS_IN_FEBRUARY);
    let out = backfill(dir.path(), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let summary = stdout(&out);
    assert!(
        summary.contains("2 done, 0 checks failed, 1 failed, 0 skipped"),
        "{summary}"
    );
    assert!(
        summary.contains("failed        as of 2026-02-28: KPI `total`"),
        "{summary}"
    );
    assert!(summary.contains("Cast error"), "{summary}");
    // The other periods published; February did not.
    assert_eq!(values(dir.path(), AS_OF[0]), vec![Some(3.0)]);
    assert_eq!(values(dir.path(), AS_OF[2]).len(), 3);
    assert!(
        !dir.path()
            .join("out/kpi_values/pipeline=p/as_of=2026-02-28")
            .exists()
    );

    // Fixed: the resume runs February only.
    std::fs::write(dir.path().join("sql/k.sql"), KPI_SQL).unwrap();
    let resumed = backfill(dir.path(), &[]);
    assert_eq!(resumed.status.code(), Some(0), "{}", stderr(&resumed));
    assert!(
        stdout(&resumed).contains("1 done, 0 checks failed, 0 failed, 2 skipped"),
        "{}",
        stdout(&resumed)
    );
    assert!(stderr(&resumed).contains("2 of 3 periods already published: skipped"));
    let history = runs(dir.path());
    assert_eq!(history.len(), 4);
    assert_eq!(field(&history[0], "as_of"), "2026-02-28");
    assert_eq!(field(&history[0], "status"), "succeeded");
    assert_eq!(values(dir.path(), AS_OF[1]), vec![Some(3.0), Some(10.0)]);
}

#[test]
fn backfill_in_parallel_matches_sequential() {
    let sequential = monthly(KPI_SQL);
    let parallel = monthly(KPI_SQL);
    assert_eq!(backfill(sequential.path(), &[]).status.code(), Some(0));
    let out = backfill(parallel.path(), &["--parallel", "2"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("parallel=2"), "{}", stderr(&out));
    for as_of in AS_OF {
        assert_eq!(
            values(parallel.path(), as_of),
            values(sequential.path(), as_of),
            "as of {as_of}"
        );
    }
    assert_eq!(runs(parallel.path()).len(), 3);
}

#[test]
fn backfill_checks_failed_exit_3_and_bad_range_exit_2() {
    let dir = monthly(KPI_SQL);
    let yaml = PIPELINE.replace(
        "    columns: {d: date}\n",
        "    columns: {d: date}\n    checks:\n      - row_count: {max: 2}\n",
    );
    std::fs::write(dir.path().join("pipelines/p.yaml"), yaml).unwrap();
    let out = backfill(dir.path(), &[]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("0 done, 3 checks failed"),
        "{}",
        stdout(&out)
    );

    let out = kpiforge(
        dir.path(),
        &[
            "backfill",
            "pipelines/p.yaml",
            "--from",
            "2026-03-01",
            "--to",
            "2026-01-01",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("is after --to"), "{}", stderr(&out));
}

#[test]
fn backfill_interrupted_finishes_running_periods_and_resumes() {
    let dir = project(&[
        (
            "pipelines/p.yaml",
            &PIPELINE.replace("grain: month", "grain: day"),
        ),
        ("data/t.csv", CSV),
        (
            "sql/k.sql",
            "SELECT d AS period, CAST(sum(amount) AS DOUBLE) AS value FROM t GROUP BY 1 ORDER BY 1",
        ),
    ]);
    let args = [
        "backfill",
        "pipelines/p.yaml",
        "--from",
        "2026-01-01",
        "--to",
        "2026-03-31",
    ];
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_kpiforge"))
        .args(args)
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt once the first period has published.
    let published = dir.path().join("out/kpi_values/pipeline=p");
    let waited = std::time::Instant::now();
    while !published.exists() && waited.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let kill = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    let summary = stdout(&out);
    assert_eq!(out.status.code(), Some(130), "{summary}\n{}", stderr(&out));
    assert!(summary.contains("not started (interrupted)"), "{summary}");
    assert!(stderr(&out).contains("interrupted: no new periods start"));
    // Every period that started finished: nothing is left running.
    let history = runs(dir.path());
    let done = history.len();
    assert!((1..90).contains(&done), "{done} runs");
    assert!(history.iter().all(|r| field(r, "status") == "succeeded"));

    // The rerun resumes with the rest.
    let out = kpiforge(dir.path(), &args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("{done} of 90 periods already published: skipped")),
        "{}",
        stderr(&out)
    );
    assert_eq!(runs_all(dir.path()), 90);
}

/// How many runs the history holds (beyond the default limit of 50).
fn runs_all(dir: &Path) -> usize {
    let state = dir.join(".kpiforge/state.db");
    let out = kpiforge(
        dir,
        &[
            "runs",
            "--json",
            "--limit",
            "10000",
            "--state",
            state.to_str().unwrap(),
        ],
    );
    stdout(&out).lines().count()
}

#[test]
fn run_reports_each_stage_to_its_progress_hook() {
    use kpiforge::progress::{Hook, Progress, Stage};
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);
    impl Progress for Recorder {
        fn begin(&self, stage: Stage, item: &str) {
            self.0
                .lock()
                .unwrap()
                .push(format!("begin {} {item}", stage.as_str()));
        }
        fn end(&self, stage: Stage, item: &str, ok: bool) {
            self.0
                .lock()
                .unwrap()
                .push(format!("end {} {item} {ok}", stage.as_str()));
        }
    }

    let dir = monthly(KPI_SQL);
    let pipeline = kpiforge::config::load(&dir.path().join("pipelines/p.yaml")).unwrap();
    let recorder = std::sync::Arc::new(Recorder::default());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let as_of = chrono::NaiveDate::from_ymd_opt(2026, 3, 31);
    let with = runtime
        .block_on(kpiforge::run(
            &pipeline,
            &kpiforge::RunOptions {
                as_of,
                output: Some(dir.path().join("with")),
                progress: Hook(Some(recorder.clone())),
                ..Default::default()
            },
        ))
        .unwrap();
    let without = runtime
        .block_on(kpiforge::run(
            &pipeline,
            &kpiforge::RunOptions {
                as_of,
                output: Some(dir.path().join("without")),
                ..Default::default()
            },
        ))
        .unwrap();
    assert_eq!(
        with.tables.kpi_values.column_by_name("value"),
        without.tables.kpi_values.column_by_name("value")
    );
    let mut events = recorder.0.lock().unwrap().clone();
    // Checks and KPIs run side by side: their order varies.
    events[2..6].sort();
    assert_eq!(
        events,
        [
            "begin source t",
            "end source t true",
            "begin KPIs ",
            "begin checks ",
            "end KPIs  true",
            "end checks  true",
            "begin publish ",
            "end publish  true",
        ]
    );
}

#[test]
fn run_without_a_terminal_draws_no_progress() {
    let dir = monthly(KPI_SQL);
    let out = kpiforge(
        dir.path(),
        &["run", "pipelines/p.yaml", "--as-of", "2026-03-31"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    for text in [stdout(&out), stderr(&out)] {
        assert!(!text.contains('\u{1b}'), "{text:?}");
        assert!(!text.contains("done in"), "{text}");
    }
}
