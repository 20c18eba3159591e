//! Helpers: run the binary, make scratch projects, read published Parquet.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use datafusion::arrow::array::RecordBatch;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// The repository root (where `pipelines/demo.yaml` lives).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `kpiforge ARGS` in `dir`.
pub fn kpiforge(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kpiforge"))
        .args(args)
        .current_dir(dir)
        .env_remove("KPIFORGE_LOG")
        .output()
        .expect("the kpiforge binary runs")
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A scratch project folder with the given files (path, content).
pub fn project(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for (path, content) in files {
        let full = dir.path().join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, content).unwrap();
    }
    dir
}

/// All record batches of one Parquet file.
pub fn read_parquet(path: &Path) -> Vec<RecordBatch> {
    let file = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap()
        .map(|b| b.unwrap())
        .collect()
}

/// The `value` column of a published `kpi_values` file, in order, NULLs kept.
pub fn published_values(path: &Path) -> Vec<Option<f64>> {
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::Float64Type;
    let mut out = Vec::new();
    for b in read_parquet(path) {
        let column = b
            .column(b.schema().index_of("value").unwrap())
            .as_primitive::<Float64Type>()
            .clone();
        out.extend((0..column.len()).map(|i| column.is_valid(i).then(|| column.value(i))));
    }
    out
}

/// Asserts a command failed with `code` and its stderr contains every needle.
#[track_caller]
pub fn assert_fails(out: &Output, code: i32, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "exit code; stderr:\n{err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}:\n{err}");
    }
}

/// Runs the demo pipeline as of 2026-11-27 into a temporary output folder;
/// returns the folder and the run's output.
pub fn run_demo() -> (tempfile::TempDir, Output) {
    let out_dir = tempfile::tempdir().unwrap();
    let out = kpiforge(
        &repo(),
        &[
            "run",
            "pipelines/demo.yaml",
            "--as-of",
            "2026-11-27",
            "--output",
            out_dir.path().to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "demo run failed:\n{}", stderr(&out));
    (out_dir, out)
}

/// One row of a published file: column name -> value as text (NULL as `None`).
pub type Row = std::collections::HashMap<String, Option<String>>;

/// Every row of a Parquet file, each value cast to text.
pub fn rows(path: &Path) -> Vec<Row> {
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::compute::cast;
    use datafusion::arrow::datatypes::DataType;
    let mut out = Vec::new();
    for b in read_parquet(path) {
        let columns: Vec<(String, datafusion::arrow::array::ArrayRef)> = b
            .schema()
            .fields()
            .iter()
            .zip(b.columns())
            .map(|(f, c)| (f.name().clone(), cast(c, &DataType::Utf8).unwrap()))
            .collect();
        for r in 0..b.num_rows() {
            out.push(
                columns
                    .iter()
                    .map(|(name, c)| {
                        let c = c.as_string::<i32>();
                        (name.clone(), c.is_valid(r).then(|| c.value(r).to_string()))
                    })
                    .collect(),
            );
        }
    }
    out
}

/// A numeric cell of a row.
pub fn num(row: &Row, column: &str) -> Option<f64> {
    row.get(column)
        .unwrap_or_else(|| panic!("no column {column}"))
        .as_deref()
        .map(|v| v.parse().unwrap())
}

/// A text cell of a row.
pub fn text<'a>(row: &'a Row, column: &str) -> Option<&'a str> {
    row.get(column)
        .unwrap_or_else(|| panic!("no column {column}"))
        .as_deref()
}

/// Asserts two scores agree to 1e-9 (both absent, or both present and close).
#[track_caller]
pub fn assert_close(actual: Option<f64>, expected: Option<f64>, what: &str) {
    match (actual, expected) {
        (Some(a), Some(e)) => assert!((a - e).abs() < 1e-9, "{what}: {a} != {e}"),
        _ => assert_eq!(actual, expected, "{what}"),
    }
}

/// Whether a program runs here (`program --version`). In CI it must; elsewhere a
/// test that needs it says it skips.
pub fn have(program: &str, test: &str, install: &str) -> bool {
    let ok = Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: {program} is required in CI (.ci/run installs it)"
        );
        eprintln!("SKIP {test}: {program} not found ({install})");
    }
    ok
}

/// Whether `python3 -c "import <module>"` works; in CI it must.
pub fn have_python_module(module: &str, test: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: python3 -m pip install {module} is required in CI (.ci/run installs it)"
        );
        eprintln!("SKIP {test}: python3 with {module} not found (pip install {module})");
    }
    ok
}

/// Runs a Python script with `arg` and parses the JSON it prints.
#[track_caller]
pub fn python_json(script: &str, arg: &Path) -> serde_json::Value {
    let result = Command::new("python3")
        .args(["-c", script, arg.to_str().unwrap()])
        .output()
        .expect("python3 runs");
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    serde_json::from_slice(&result.stdout).unwrap()
}

/// Runs a command to its end, polling its peak resident set size (VmHWM);
/// returns the output and the peak in MiB.
pub fn run_measuring_peak_rss(mut command: Command) -> (Output, f64) {
    use std::io::Read;
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the command starts");
    let status_file = format!("/proc/{}/status", child.id());
    // Drain the pipes on threads so a chatty child never blocks.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_thread = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stdout.read_to_end(&mut b);
        b
    });
    let err_thread = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stderr.read_to_end(&mut b);
        b
    });
    let mut peak_kib = 0u64;
    let status = loop {
        if let Ok(text) = std::fs::read_to_string(&status_file)
            && let Some(line) = text.lines().find(|l| l.starts_with("VmHWM:"))
            && let Some(kib) = line.split_whitespace().nth(1).and_then(|v| v.parse().ok())
        {
            peak_kib = peak_kib.max(kib);
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let output = Output {
        status,
        stdout: out_thread.join().unwrap(),
        stderr: err_thread.join().unwrap(),
    };
    (output, peak_kib as f64 / 1024.0)
}

/// A test server's URL from environment variable `var`, or `None` after saying
/// the test skips. In CI (`CI` set) the server is required: `.ci/run` sets both.
pub fn server_url(var: &str, test: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "{test}: {var} must be set in CI (.ci/run sets it)"
            );
            eprintln!("{test}: skipped: {var} is not set");
            None
        }
    }
}

/// A table name no other test (or run) uses.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("kpf_{prefix}_{}_{nanos}", std::process::id())
}

/// Every file under `dir`, recursively.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}
