//! Targets per period (and segment) from a source or view named by a KPI's
//! `targets:`: columns `period` and `target`, optionally `red_flag`, `kpi_id`
//! (then one table serves several KPIs) and the KPI's dimension columns. A NULL
//! period applies the row to every period, a NULL dimension to every segment;
//! each goal comes from the most specific matching row that gives it (so a red
//! flag for every period can sit beside monthly targets). Other columns are ignored.

use std::collections::HashMap;

use chrono::NaiveDate;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::{DataType, Date32Type, Schema};
use datafusion::prelude::{SessionContext, col, lit};

use super::ScoreError;
use crate::config::{Kpi, Pipeline};
use crate::kpi::period;

/// The targets of every KPI that reads them from a table.
#[derive(Debug, Default)]
pub struct Targets {
    by_kpi: HashMap<String, ByPeriod>,
}

/// Rows by period start; `None` holds the rows for every period.
type ByPeriod = HashMap<Option<NaiveDate>, Vec<TargetRow>>;

#[derive(Debug, Clone, PartialEq)]
struct TargetRow {
    /// One per KPI dimension; `None` matches any segment.
    dimensions: Vec<Option<String>>,
    target: Option<f64>,
    red_flag: Option<f64>,
}

impl Targets {
    /// The target and red flag from the table for a KPI's period and segment:
    /// the most specific matching row. `None` when the KPI has no targets table.
    pub fn lookup(
        &self,
        kpi: &str,
        period: NaiveDate,
        dimensions: &[Option<String>],
    ) -> Option<(Option<f64>, Option<f64>)> {
        let rows = self.by_kpi.get(kpi)?;
        let matching = |key: Option<NaiveDate>| {
            rows.get(&key).into_iter().flatten().filter(|r| {
                r.dimensions
                    .iter()
                    .zip(dimensions)
                    .all(|(want, have)| want.is_none() || want == have)
            })
        };
        // Most specific first: to the period, then to the segment. Each goal
        // comes from the most specific row that gives it.
        let specificity = |r: &&TargetRow| std::cmp::Reverse(r.dimensions.iter().flatten().count());
        let mut candidates: Vec<&TargetRow> = matching(Some(period)).collect();
        candidates.sort_by_key(specificity);
        let mut every_period: Vec<&TargetRow> = matching(None).collect();
        every_period.sort_by_key(specificity);
        candidates.extend(every_period);
        let first = |goal: fn(&TargetRow) -> Option<f64>| candidates.iter().find_map(|r| goal(r));
        Some((first(|r| r.target), first(|r| r.red_flag)))
    }
}

/// Checks a targets table's columns for a KPI, before anything is read.
pub fn check_schema(kpi: &Kpi, table: &str, schema: &Schema) -> Result<(), ScoreError> {
    let fail = |message: String| ScoreError::TargetsSchema {
        kpi: kpi.id.clone(),
        table: table.to_string(),
        message,
    };
    let column = |name: &str| schema.field_with_name(name).ok().map(|f| f.data_type());
    match column("period") {
        None => return Err(fail("it has no `period` column".into())),
        Some(
            DataType::Date32
            | DataType::Date64
            | DataType::Timestamp(..)
            | DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View,
        ) => {}
        Some(t) => return Err(fail(format!("column `period` is {t}, expected a date"))),
    }
    for (name, required) in [("target", true), ("red_flag", false)] {
        match column(name) {
            None if required => return Err(fail("it has no `target` column".into())),
            Some(t) if !(t.is_numeric() || *t == DataType::Null) => {
                return Err(fail(format!("column `{name}` is {t}, expected a number")));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Reads the targets of every KPI with a `targets:` table.
pub async fn load(ctx: &SessionContext, pipeline: &Pipeline) -> Result<Targets, ScoreError> {
    let mut targets = Targets::default();
    for kpi in &pipeline.kpis {
        let Some(table) = &kpi.targets else { continue };
        let sql_error = |source| ScoreError::TargetsRead {
            kpi: kpi.id.clone(),
            table: table.clone(),
            source,
        };
        let mut df = ctx.table(table.as_str()).await.map_err(sql_error)?;
        let schema = df.schema().as_arrow().clone();
        check_schema(kpi, table, &schema)?;
        if schema.field_with_name("kpi_id").is_ok() {
            df = df
                .filter(col("kpi_id").eq(lit(kpi.id.as_str())))
                .map_err(sql_error)?;
        }
        let batches = df.collect().await.map_err(sql_error)?;
        let rows = read_rows(kpi, &batches).map_err(|message| ScoreError::TargetsData {
            kpi: kpi.id.clone(),
            table: table.clone(),
            message,
        })?;
        targets.by_kpi.insert(kpi.id.clone(), rows);
    }
    Ok(targets)
}

fn read_rows(kpi: &Kpi, batches: &[RecordBatch]) -> Result<ByPeriod, String> {
    let mut rows = ByPeriod::new();
    let strict = CastOptions {
        safe: false,
        ..CastOptions::default()
    };
    for batch in batches {
        let column = |name: &str, t: &DataType| -> Result<Option<ArrayRef>, String> {
            match batch.schema().index_of(name) {
                // Not `safe`: a value that does not convert (a period of
                // "2025-01") is an error, not a NULL that would mean "every period".
                Ok(i) => cast_with_options(batch.column(i), t, &strict)
                    .map(Some)
                    .map_err(|e| format!("column `{name}`: {e}")),
                Err(_) => Ok(None),
            }
        };
        let periods = column("period", &DataType::Date32)?.ok_or("no `period` column")?;
        let periods = periods.as_primitive::<Date32Type>();
        let number = |name: &str| column(name, &DataType::Float64);
        let (target, red_flag) = (number("target")?, number("red_flag")?);
        let dims: Vec<Option<ArrayRef>> = kpi
            .dimensions
            .iter()
            .map(|d| column(d, &DataType::Utf8))
            .collect::<Result<_, _>>()?;
        let get = crate::kpi::contract::finite;
        for i in 0..batch.num_rows() {
            let start = match periods.is_valid(i).then(|| periods.value_as_date(i)) {
                None => None,
                Some(Some(date)) => Some(period::start_of(kpi.grain, date)),
                Some(None) => return Err("a `period` is out of range".into()),
            };
            let row = TargetRow {
                dimensions: dims
                    .iter()
                    .map(|a| {
                        a.as_ref().and_then(|a| {
                            let a = a.as_string::<i32>();
                            a.is_valid(i).then(|| a.value(i).to_string())
                        })
                    })
                    .collect(),
                target: get(&target, i),
                red_flag: get(&red_flag, i),
            };
            let same_period = rows.entry(start).or_default();
            if same_period.iter().any(|r| r.dimensions == row.dimensions) {
                let when = start.map_or("every period".to_string(), |d| {
                    format!("the {} starting {d}", kpi.grain.as_str())
                });
                return Err(format!(
                    "two rows give the target of {when}{}; keep one",
                    describe(kpi, &row.dimensions)
                ));
            }
            same_period.push(row);
        }
    }
    Ok(rows)
}

fn describe(kpi: &Kpi, dims: &[Option<String>]) -> String {
    let set: Vec<String> = kpi
        .dimensions
        .iter()
        .zip(dims)
        .filter_map(|(d, v)| v.as_ref().map(|v| format!("{d}={v}")))
        .collect();
    if set.is_empty() {
        String::new()
    } else {
        format!(" for {}", set.join(", "))
    }
}
