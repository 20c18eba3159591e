//! The `kpi_values/` dataset: one row per KPI, period and segment.

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use datafusion::arrow::array::{
    ArrayRef, Date32Array, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use super::{PublishError, Staged, stage_partition};
use crate::config::Pipeline;
use crate::kpi::{KpiSeries, epoch_days};

/// Columns of the `kpi_values` files; `pipeline` and `as_of` are partition keys.
pub fn kpi_values_schema() -> SchemaRef {
    let text = |n: &str, null: bool| Field::new(n, DataType::Utf8, null);
    let float = |n: &str| Field::new(n, DataType::Float64, true);
    let date = |n: &str| Field::new(n, DataType::Date32, false);
    Arc::new(Schema::new(vec![
        text("run_id", false),
        text("kpi_id", false),
        text("kpi_name", false),
        text("perspective", true),
        text("objective", true),
        text("grain", false),
        date("period_start"),
        date("period_end"),
        text("segment", true),
        float("value"),
        float("numerator"),
        float("denominator"),
        text("unit", true),
        text("direction", true),
        float("target"),
        float("red_flag"),
        float("score"),
        text("status", true),
        float("previous_value"),
        float("change_abs"),
        float("change_pct"),
        float("last_year_value"),
        float("target_gap"),
        text("quality_status", false),
        Field::new(
            "computed_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        text("definition_hash", false),
    ]))
}

/// Stages the run's KPI values as its `kpi_values` partition, replacing a previous
/// run's for the same pipeline and as-of date. Returns the rows written.
pub fn stage_kpi_values(
    output: &Path,
    pipeline: &Pipeline,
    run_id: &str,
    as_of: chrono::NaiveDate,
    computed_at: DateTime<Utc>,
    series: &[KpiSeries],
) -> Result<(RecordBatch, Staged), PublishError> {
    let rows: Vec<(&KpiSeries, &crate::kpi::KpiValue)> = series
        .iter()
        .flat_map(|s| s.values.iter().map(move |v| (s, v)))
        .collect();
    let n = rows.len();
    let text = |f: &dyn Fn(&KpiSeries) -> Option<String>| -> ArrayRef {
        Arc::new(rows.iter().map(|(s, _)| f(s)).collect::<StringArray>())
    };
    let float = |f: &dyn Fn(&KpiSeries, &crate::kpi::KpiValue) -> Option<f64>| -> ArrayRef {
        Arc::new(rows.iter().map(|(s, v)| f(s, v)).collect::<Float64Array>())
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![run_id; n])),
        text(&|s| Some(s.kpi.id.clone())),
        text(&|s| Some(s.kpi.name.clone())),
        text(&|s| s.kpi.perspective.clone()),
        text(&|s| s.kpi.objective.clone()),
        text(&|s| Some(s.kpi.grain.as_str().to_string())),
        Arc::new(Date32Array::from_iter_values(
            rows.iter().map(|(_, v)| epoch_days(v.period_start)),
        )),
        Arc::new(Date32Array::from_iter_values(
            rows.iter().map(|(_, v)| epoch_days(v.period_end)),
        )),
        Arc::new(
            rows.iter()
                .map(|(_, v)| v.segment.as_deref())
                .collect::<StringArray>(),
        ),
        float(&|_, v| v.value),
        float(&|_, v| v.numerator),
        float(&|_, v| v.denominator),
        text(&|s| s.kpi.unit.clone()),
        text(&|s| s.kpi.direction.map(|d| d.as_str().to_string())),
        float(&|_, v| v.target),
        float(&|_, v| v.red_flag),
        float(&|_, v| v.score),
        Arc::new(
            rows.iter()
                .map(|(_, v)| v.status.map(|s| s.as_str()))
                .collect::<StringArray>(),
        ),
        float(&|_, v| v.previous_value),
        float(&|_, v| v.change_abs),
        float(&|_, v| v.change_pct),
        float(&|_, v| v.last_year_value),
        float(&|_, v| v.target_gap),
        text(&|s| Some(s.quality.as_str().to_string())),
        Arc::new(
            TimestampMicrosecondArray::from(vec![computed_at.timestamp_micros(); n])
                .with_timezone("UTC"),
        ),
        text(&|s| Some(s.kpi.definition_hash.clone())),
    ];
    stage_partition(
        output,
        "kpi_values",
        &pipeline.name,
        as_of,
        run_id,
        kpi_values_schema(),
        columns,
    )
}
