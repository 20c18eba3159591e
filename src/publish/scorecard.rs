//! The `scorecard/` dataset: one row per node of the scorecard tree (overall,
//! perspective, objective, KPI) per period of the scorecard's grain.

use std::path::Path;
use std::sync::Arc;

use chrono::NaiveDate;
use datafusion::arrow::array::{
    ArrayRef, Date32Array, Float64Array, Int32Array, ListBuilder, RecordBatch, StringArray,
    StringBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use super::{PublishError, Staged, stage_partition};
use crate::config::Pipeline;
use crate::kpi::epoch_days;
use crate::score::ScorecardRow;

/// Columns of the `scorecard` files; `pipeline` and `as_of` are partition keys.
pub fn scorecard_schema() -> SchemaRef {
    let text = |n: &str, null: bool| Field::new(n, DataType::Utf8, null);
    let float = |n: &str, null: bool| Field::new(n, DataType::Float64, null);
    let int = |n: &str| Field::new(n, DataType::Int32, false);
    let date = |n: &str| Field::new(n, DataType::Date32, false);
    Arc::new(Schema::new(vec![
        text("run_id", false),
        text("grain", false),
        date("period_start"),
        date("period_end"),
        text("level", false),
        text("id", false),
        text("name", false),
        text("parent", true),
        text("perspective", true),
        float("value", true),
        float("target", true),
        float("score", true),
        text("status", false),
        float("weight", false),
        int("children_scored"),
        int("children_total"),
        Field::new(
            "causes",
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            false,
        ),
    ]))
}

/// Stages the run's scorecard as its `scorecard` partition (replacing a previous
/// run's for the same pipeline and as-of date).
pub fn stage_scorecard(
    output: &Path,
    pipeline: &Pipeline,
    run_id: &str,
    as_of: NaiveDate,
    rows: &[ScorecardRow],
) -> Result<(RecordBatch, Staged), PublishError> {
    let n = rows.len();
    let text = |f: &dyn Fn(&ScorecardRow) -> Option<&str>| -> ArrayRef {
        Arc::new(rows.iter().map(f).collect::<StringArray>())
    };
    let float = |f: &dyn Fn(&ScorecardRow) -> Option<f64>| -> ArrayRef {
        Arc::new(rows.iter().map(f).collect::<Float64Array>())
    };
    let date = |f: &dyn Fn(&ScorecardRow) -> NaiveDate| -> ArrayRef {
        Arc::new(Date32Array::from_iter_values(
            rows.iter().map(|r| epoch_days(f(r))),
        ))
    };
    let count = |f: &dyn Fn(&ScorecardRow) -> usize| -> ArrayRef {
        Arc::new(Int32Array::from_iter_values(
            rows.iter().map(|r| f(r) as i32),
        ))
    };
    let mut causes = ListBuilder::new(StringBuilder::new());
    for r in rows {
        for c in &r.causes {
            causes.values().append_value(c);
        }
        causes.append(true);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![run_id; n])),
        Arc::new(StringArray::from(vec![
            pipeline.scorecard.grain.as_str();
            n
        ])),
        date(&|r| r.period_start),
        date(&|r| r.period_end),
        text(&|r| Some(r.level.as_str())),
        text(&|r| Some(&r.id)),
        text(&|r| Some(&r.name)),
        text(&|r| r.parent.as_deref()),
        text(&|r| r.perspective.as_deref()),
        float(&|r| r.value),
        float(&|r| r.target),
        float(&|r| r.score),
        text(&|r| Some(r.status.as_str())),
        float(&|r| Some(r.weight)),
        count(&|r| r.children_scored),
        count(&|r| r.children_total),
        Arc::new(causes.finish()),
    ];
    stage_partition(
        output,
        "scorecard",
        &pipeline.name,
        as_of,
        run_id,
        scorecard_schema(),
        columns,
    )
}
