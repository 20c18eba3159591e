//! The KPI SQL contract: what a KPI query must return, checked on its plan before
//! anything runs, and the extraction of its rows once it has.

use std::sync::Arc;

use chrono::NaiveDate;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Date32Type, Float64Type, Schema};
use datafusion::error::DataFusionError;

use crate::config::Kpi;

/// What a KPI measures: a value, or the parts of a ratio (summed before dividing
/// when rolled up to a coarser grain).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    Value,
    Ratio,
}

/// One row of a KPI query's result, typed.
#[derive(Debug, Clone, PartialEq)]
pub struct KpiRow {
    pub period: NaiveDate,
    /// Dimension values in declared order; empty for a KPI without dimensions.
    pub dimensions: Vec<Option<String>>,
    pub value: Option<f64>,
    pub numerator: Option<f64>,
    pub denominator: Option<f64>,
}

/// Checks the columns of a KPI query's result against the contract.
pub fn check(kpi: &Kpi, schema: &Schema) -> Result<Measure, String> {
    let has = |name: &str| schema.fields().iter().find(|f| f.name() == name);
    let expected = || {
        let mut cols = vec!["period".to_string()];
        cols.extend(kpi.dimensions.iter().map(|d| d.to_string()));
        format!(
            "{}, and `value` or `numerator` + `denominator`",
            cols.join(", ")
        )
    };
    match has("period").map(|f| f.data_type()) {
        None => {
            return Err(format!(
                "the query returns no `period` column (expected columns: {})",
                expected()
            ));
        }
        Some(DataType::Date32 | DataType::Date64 | DataType::Timestamp(..)) => {}
        Some(other) => {
            return Err(format!(
                "column `period` is {other}, expected DATE or TIMESTAMP; write e.g. `CAST(date_trunc('{}', d) AS DATE) AS period`",
                kpi.grain.as_str()
            ));
        }
    }
    for d in &kpi.dimensions {
        if has(d).is_none() {
            return Err(format!(
                "dimension column `{d}` is declared but the query does not return it"
            ));
        }
    }
    for f in schema.fields() {
        let name = f.name().as_str();
        let known = ["period", "value", "numerator", "denominator"].contains(&name)
            || kpi.dimensions.iter().any(|d| d == name);
        if !known {
            return Err(format!(
                "column `{name}` is not part of the KPI contract (expected columns: {}); declare it under `dimensions:` if it is a segment",
                expected()
            ));
        }
        if ["value", "numerator", "denominator"].contains(&name) && !is_numeric(f.data_type()) {
            return Err(format!(
                "column `{name}` is {}, expected a number; cast it: `CAST(... AS DOUBLE) AS {name}`",
                f.data_type()
            ));
        }
    }
    match (has("value").is_some(), has("numerator").is_some(), has("denominator").is_some()) {
        (true, false, false) => Ok(Measure::Value),
        (false, true, true) => Ok(Measure::Ratio),
        (true, _, _) => Err("the query returns both `value` and ratio parts; return `value`, or `numerator` and `denominator`".into()),
        (false, true, false) => Err("the query returns `numerator` but no `denominator`".into()),
        (false, false, true) => Err("the query returns `denominator` but no `numerator`".into()),
        (false, false, false) => Err(format!("the query returns no measure (expected columns: {})", expected())),
    }
}

fn is_numeric(t: &DataType) -> bool {
    t.is_numeric() || matches!(t, DataType::Null)
}

/// Row `i` of a Float64 column, if present, non-null and finite.
pub(crate) fn finite(column: &Option<ArrayRef>, i: usize) -> Option<f64> {
    column.as_ref().and_then(|a| {
        let a = a.as_primitive::<Float64Type>();
        a.is_valid(i).then(|| a.value(i)).filter(|v| v.is_finite())
    })
}

/// Reads the rows of a checked KPI result.
pub fn rows(
    kpi: &Kpi,
    measure: Measure,
    batches: &[RecordBatch],
) -> Result<Vec<KpiRow>, DataFusionError> {
    let mut out = Vec::new();
    for batch in batches {
        let column = |name: &str, t: &DataType| -> Result<Option<ArrayRef>, DataFusionError> {
            match batch.schema().index_of(name) {
                Ok(i) => Ok(Some(cast(batch.column(i), t)?)),
                Err(_) => Ok(None),
            }
        };
        let period = column("period", &DataType::Date32)?.unwrap_or_else(|| {
            Arc::new(datafusion::arrow::array::Date32Array::from(vec![
                None;
                batch
                    .num_rows(
                    )
            ]))
        });
        let period = period.as_primitive::<Date32Type>();
        let float = |name: &str| column(name, &DataType::Float64);
        let (value, numerator, denominator) = match measure {
            Measure::Value => (float("value")?, None, None),
            Measure::Ratio => (None, float("numerator")?, float("denominator")?),
        };
        let dims: Vec<ArrayRef> = kpi
            .dimensions
            .iter()
            .map(|d| column(d, &DataType::Utf8).map(|c| c.expect("checked by contract")))
            .collect::<Result<_, _>>()?;
        let get = finite;
        for i in 0..batch.num_rows() {
            if period.is_null(i) {
                return Err(DataFusionError::Execution(
                    "a row has a NULL `period`; every row needs its period start".into(),
                ));
            }
            let date = period
                .value_as_date(i)
                .ok_or_else(|| DataFusionError::Execution("`period` out of range".into()))?;
            let numerator = get(&numerator, i);
            let denominator = get(&denominator, i);
            let value = match measure {
                Measure::Value => get(&value, i),
                Measure::Ratio => match (numerator, denominator) {
                    (Some(n), Some(d)) if d != 0.0 => Some(n / d),
                    _ => None,
                },
            };
            let dimensions = dims
                .iter()
                .map(|a| {
                    let a = a.as_string::<i32>();
                    a.is_valid(i).then(|| a.value(i).to_string())
                })
                .collect();
            out.push(KpiRow {
                period: date,
                dimensions,
                value,
                numerator,
                denominator,
            });
        }
    }
    Ok(out)
}
