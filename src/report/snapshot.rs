//! One run's published results read back from the output folder: what the HTML
//! scorecard shows. Reading the datasets, not the run's memory, means
//! `kpiforge report` draws any past run the same way `run` draws its own.

use std::fs::File;
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDate, Utc};
use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::compute::{cast, concat_batches};
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Float64Type, Int64Type, TimestampMicrosecondType,
};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::error::Error;

/// A run's results: its KPI values, scorecard, check results and run record.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub pipeline: String,
    pub as_of: NaiveDate,
    pub values: Vec<ValueRow>,
    pub nodes: Vec<NodeRow>,
    pub checks: Vec<CheckRow>,
    pub run: Option<RunRow>,
}

#[derive(Debug, Clone)]
pub struct ValueRow {
    pub kpi_id: String,
    pub kpi_name: String,
    pub period_start: NaiveDate,
    pub segment: Option<String>,
    pub value: Option<f64>,
    pub unit: Option<String>,
    pub status: Option<String>,
    pub quality_status: Option<String>,
}

#[derive(Debug, Clone)]
pub struct NodeRow {
    pub period_start: NaiveDate,
    pub period_end: NaiveDate,
    pub level: String,
    pub id: String,
    pub name: String,
    pub parent: Option<String>,
    pub perspective: Option<String>,
    pub value: Option<f64>,
    pub target: Option<f64>,
    pub score: Option<f64>,
    pub status: String,
    pub children_scored: i64,
    pub children_total: i64,
    pub causes: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct CheckRow {
    pub source: Option<String>,
    pub check: String,
    pub segment: Option<String>,
    pub severity: String,
    pub outcome: String,
    pub threshold: String,
    pub message: String,
    pub sample: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct RunRow {
    pub run_id: String,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub status: String,
    pub rows_read: Vec<(String, Option<i64>)>,
}

/// Reads the results of `pipeline` (the only one, if `None`) for `as_of` (the
/// latest, if `None`) from `output`.
pub fn load(
    output: &Path,
    pipeline: Option<&str>,
    as_of: Option<NaiveDate>,
) -> Result<Snapshot, Error> {
    let values_dir = output.join("kpi_values");
    let pipelines = subdirs(&values_dir, "pipeline=");
    let pipeline = match (pipeline, pipelines.as_slice()) {
        (Some(p), _) if pipelines.iter().any(|(name, _)| name == p) => p.to_string(),
        (None, [(only, _)]) => only.clone(),
        (p, found) => {
            let names: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
            return Err(Error::Usage(match (p, names.is_empty()) {
                (_, true) => format!(
                    "no results in {}: run a pipeline with `--output {}` first",
                    output.display(),
                    output.display()
                ),
                (Some(p), false) => format!(
                    "no results for pipeline `{p}` in {}; found: {}",
                    output.display(),
                    names.join(", ")
                ),
                (None, false) => format!(
                    "{} holds several pipelines ({}); choose one with --pipeline",
                    output.display(),
                    names.join(", ")
                ),
            }));
        }
    };
    let dates: Vec<NaiveDate> = subdirs(&values_dir.join(format!("pipeline={pipeline}")), "as_of=")
        .iter()
        .filter_map(|(d, _)| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
        .collect();
    let as_of = match as_of {
        Some(d) if dates.contains(&d) => d,
        Some(d) => {
            return Err(Error::Usage(format!(
                "pipeline `{pipeline}` has no results as of {d} in {}",
                output.display()
            )));
        }
        None => *dates.iter().max().ok_or_else(|| {
            Error::Usage(format!(
                "pipeline `{pipeline}` has no results in {}",
                output.display()
            ))
        })?,
    };
    let part = |dataset: &str| {
        output
            .join(dataset)
            .join(format!("pipeline={pipeline}"))
            .join(format!("as_of={as_of}"))
    };

    let values = Table::read(&part("kpi_values").join("part-0.parquet"))?;
    let run_id = values.texts("run_id").into_iter().flatten().next();
    let nodes = Table::read_if_exists(&part("scorecard").join("part-0.parquet"))?;
    let checks = Table::read_if_exists(&part("quality").join("part-0.parquet"))?;
    let run = match run_id {
        Some(id) => Table::read_if_exists(&part("runs").join(format!("run-{id}.parquet")))?,
        None => None,
    };
    Ok(Snapshot {
        values: value_rows(&values),
        nodes: nodes.as_ref().map(node_rows).unwrap_or_default(),
        checks: checks.as_ref().map(check_rows).unwrap_or_default(),
        run: run.as_ref().and_then(run_row),
        pipeline,
        as_of,
    })
}

fn value_rows(t: &Table) -> Vec<ValueRow> {
    let (ids, names, periods, segments) = (
        t.texts("kpi_id"),
        t.texts("kpi_name"),
        t.dates("period_start"),
        t.texts("segment"),
    );
    let (values, units, statuses, quality) = (
        t.floats("value"),
        t.texts("unit"),
        t.texts("status"),
        t.texts("quality_status"),
    );
    (0..t.rows())
        .filter_map(|i| {
            Some(ValueRow {
                kpi_id: ids[i].clone()?,
                kpi_name: names[i].clone().unwrap_or_default(),
                period_start: periods[i]?,
                segment: segments[i].clone(),
                value: values[i],
                unit: units[i].clone(),
                status: statuses[i].clone(),
                quality_status: quality[i].clone(),
            })
        })
        .collect()
}

fn node_rows(t: &Table) -> Vec<NodeRow> {
    let (starts, ends, levels, ids, names) = (
        t.dates("period_start"),
        t.dates("period_end"),
        t.texts("level"),
        t.texts("id"),
        t.texts("name"),
    );
    let (parents, perspectives, values, targets, scores) = (
        t.texts("parent"),
        t.texts("perspective"),
        t.floats("value"),
        t.floats("target"),
        t.floats("score"),
    );
    let (statuses, scored, total, causes) = (
        t.texts("status"),
        t.ints("children_scored"),
        t.ints("children_total"),
        t.lists("causes"),
    );
    (0..t.rows())
        .filter_map(|i| {
            Some(NodeRow {
                period_start: starts[i]?,
                period_end: ends[i]?,
                level: levels[i].clone()?,
                id: ids[i].clone()?,
                name: names[i].clone().unwrap_or_default(),
                parent: parents[i].clone(),
                perspective: perspectives[i].clone(),
                value: values[i],
                target: targets[i],
                score: scores[i],
                status: statuses[i].clone().unwrap_or_default(),
                children_scored: scored[i].unwrap_or(0),
                children_total: total[i].unwrap_or(0),
                causes: causes[i].clone(),
            })
        })
        .collect()
}

fn check_rows(t: &Table) -> Vec<CheckRow> {
    let (sources, checks, segments, severities) = (
        t.texts("source"),
        t.texts("check"),
        t.texts("segment"),
        t.texts("severity"),
    );
    let (outcomes, thresholds, messages, samples) = (
        t.texts("outcome"),
        t.texts("threshold"),
        t.texts("message"),
        t.lists("sample"),
    );
    (0..t.rows())
        .filter_map(|i| {
            Some(CheckRow {
                source: sources[i].clone(),
                check: checks[i].clone()?,
                segment: segments[i].clone(),
                severity: severities[i].clone().unwrap_or_default(),
                outcome: outcomes[i].clone().unwrap_or_default(),
                threshold: thresholds[i].clone().unwrap_or_default(),
                message: messages[i].clone().unwrap_or_default(),
                sample: samples[i].clone(),
            })
        })
        .collect()
}

fn run_row(t: &Table) -> Option<RunRow> {
    let rows_read = t.column("rows_read").and_then(|a| {
        let list = a.as_list_opt::<i32>()?;
        let entries = list.value(0);
        let entries = entries.as_struct_opt()?;
        let names = cast(entries.column(0), &DataType::Utf8).ok()?;
        let rows = cast(entries.column(1), &DataType::Int64).ok()?;
        let (names, rows) = (names.as_string::<i32>(), rows.as_primitive::<Int64Type>());
        Some(
            (0..entries.len())
                .map(|i| {
                    (
                        names.value(i).to_string(),
                        rows.is_valid(i).then(|| rows.value(i)),
                    )
                })
                .collect(),
        )
    });
    Some(RunRow {
        run_id: t.texts("run_id").first()?.clone()?,
        started_at: t.times("started_at").first().copied().flatten(),
        finished_at: t.times("finished_at").first().copied().flatten(),
        status: t.texts("status").first()?.clone()?,
        rows_read: rows_read.unwrap_or_default(),
    })
}

/// The `name=value` folders of `dir`, sorted.
fn subdirs(dir: &Path, prefix: &str) -> Vec<(String, PathBuf)> {
    let mut found: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| {
            Some((
                e.file_name().to_str()?.strip_prefix(prefix)?.to_string(),
                e.path(),
            ))
        })
        .collect();
    found.sort();
    found
}

/// One Parquet file as one batch, with typed column readers.
struct Table(RecordBatch);

impl Table {
    fn read(path: &Path) -> Result<Table, Error> {
        let fail = |e: String| Error::Usage(format!("cannot read {}: {e}", path.display()));
        let file = File::open(path).map_err(|e| fail(e.to_string()))?;
        let reader =
            ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| fail(e.to_string()))?;
        let schema = reader.schema().clone();
        let batches: Vec<RecordBatch> = reader
            .build()
            .map_err(|e| fail(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| fail(e.to_string()))?;
        concat_batches(&schema, &batches)
            .map(Table)
            .map_err(|e| fail(e.to_string()))
    }

    fn read_if_exists(path: &Path) -> Result<Option<Table>, Error> {
        if path.is_file() {
            Table::read(path).map(Some)
        } else {
            Ok(None)
        }
    }

    fn rows(&self) -> usize {
        self.0.num_rows()
    }

    fn column(&self, name: &str) -> Option<ArrayRef> {
        self.0
            .schema()
            .index_of(name)
            .ok()
            .map(|i| self.0.column(i).clone())
    }

    fn cast(&self, name: &str, to: &DataType) -> Option<ArrayRef> {
        self.column(name).and_then(|a| cast(&a, to).ok())
    }

    fn texts(&self, name: &str) -> Vec<Option<String>> {
        match self.cast(name, &DataType::Utf8) {
            Some(a) => a
                .as_string::<i32>()
                .iter()
                .map(|v| v.map(str::to_string))
                .collect(),
            None => vec![None; self.rows()],
        }
    }

    fn floats(&self, name: &str) -> Vec<Option<f64>> {
        match self.cast(name, &DataType::Float64) {
            Some(a) => a.as_primitive::<Float64Type>().iter().collect(),
            None => vec![None; self.rows()],
        }
    }

    fn ints(&self, name: &str) -> Vec<Option<i64>> {
        match self.cast(name, &DataType::Int64) {
            Some(a) => a.as_primitive::<Int64Type>().iter().collect(),
            None => vec![None; self.rows()],
        }
    }

    fn dates(&self, name: &str) -> Vec<Option<NaiveDate>> {
        match self.cast(name, &DataType::Date32) {
            Some(a) => {
                let a = a.as_primitive::<Date32Type>();
                (0..a.len())
                    .map(|i| a.is_valid(i).then(|| a.value_as_date(i)).flatten())
                    .collect()
            }
            None => vec![None; self.rows()],
        }
    }

    fn times(&self, name: &str) -> Vec<Option<DateTime<Utc>>> {
        let to = DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Microsecond, None);
        match self.cast(name, &to) {
            Some(a) => a
                .as_primitive::<TimestampMicrosecondType>()
                .iter()
                .map(|v| v.and_then(DateTime::<Utc>::from_timestamp_micros))
                .collect(),
            None => vec![None; self.rows()],
        }
    }

    fn lists(&self, name: &str) -> Vec<Vec<String>> {
        let Some(a) = self.column(name) else {
            return vec![Vec::new(); self.rows()];
        };
        let Some(list) = a.as_list_opt::<i32>() else {
            return vec![Vec::new(); self.rows()];
        };
        (0..list.len())
            .map(|i| {
                let items = list.value(i);
                match cast(&items, &DataType::Utf8) {
                    Ok(items) => items
                        .as_string::<i32>()
                        .iter()
                        .flatten()
                        .map(str::to_string)
                        .collect(),
                    Err(_) => Vec::new(),
                }
            })
            .collect()
    }
}
