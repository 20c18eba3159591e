//! A run's results as polars DataFrames, for Rust data teams who work in
//! polars (cargo feature `polars`). Polars is not a second query engine here,
//! only the other side of a bridge: each column crosses from arrow-rs by the
//! Arrow C data interface, so number, date and string bytes are not copied
//! (text is handed over as string views, which polars keeps as they are).

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, make_array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field};
use polars::prelude::{Column, DataFrame, PolarsResult, Series};

use crate::run::RunReport;

/// A run's published tables as DataFrames.
pub struct RunFrames {
    pub kpi_values: DataFrame,
    pub scorecard: DataFrame,
    pub quality: DataFrame,
}

impl RunReport {
    /// This run's `kpi_values`, `scorecard` and `quality` rows as DataFrames.
    pub fn frames(&self) -> PolarsResult<RunFrames> {
        Ok(RunFrames {
            kpi_values: to_polars(&self.tables.kpi_values)?,
            scorecard: to_polars(&self.tables.scorecard)?,
            quality: to_polars(&self.tables.quality)?,
        })
    }
}

/// A record batch as a DataFrame, column by column through the C data interface.
pub fn to_polars(batch: &RecordBatch) -> PolarsResult<DataFrame> {
    let columns = batch
        .schema()
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(field, array)| column(field, array))
        .collect::<PolarsResult<Vec<Column>>>()?;
    DataFrame::new(batch.num_rows(), columns)
}

fn column(field: &Field, array: &ArrayRef) -> PolarsResult<Column> {
    let array = as_views(array);
    let data = array.to_data();
    let (ffi_array, ffi_schema) = arrow::ffi::to_ffi(&data)
        .map_err(|e| polars::prelude::polars_err!(ComputeError: "{}: {e}", field.name()))?;
    // Both sides implement the same C structs (the Arrow C data interface): the
    // exported array and schema are read as polars-arrow's.
    // SAFETY: `to_ffi` produced valid, owned C structs; they are moved (not
    // copied) into polars-arrow, whose release callback frees them once.
    let imported = unsafe {
        let ffi_array: polars_arrow::ffi::ArrowArray = std::mem::transmute(ffi_array);
        let ffi_schema: polars_arrow::ffi::ArrowSchema = std::mem::transmute(ffi_schema);
        let field = polars_arrow::ffi::import_field_from_c(&ffi_schema)?;
        polars_arrow::ffi::import_array_from_c(ffi_array, field.dtype().clone())?
    };
    let series = Series::from_arrow(field.name().as_str().into(), imported)?;
    Ok(series.into())
}

/// Text as string views (what polars stores): the views point into the same
/// bytes, so crossing copies none of them.
fn as_views(array: &ArrayRef) -> ArrayRef {
    let to = match array.data_type() {
        DataType::Utf8 | DataType::LargeUtf8 => DataType::Utf8View,
        DataType::List(item)
            if matches!(item.data_type(), DataType::Utf8 | DataType::LargeUtf8) =>
        {
            DataType::List(Arc::new(Field::new(
                item.name(),
                DataType::Utf8View,
                item.is_nullable(),
            )))
        }
        _ => return make_array(array.to_data()),
    };
    cast(array, &to).unwrap_or_else(|_| make_array(array.to_data()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{
        Date32Array, Float64Array, ListBuilder, StringArray, StringBuilder,
    };
    use datafusion::arrow::datatypes::Schema;
    use polars::prelude::AnyValue;

    #[test]
    fn values_and_nulls_round_trip_without_copying_numbers() {
        let values = Float64Array::from(vec![Some(1.5), None, Some(-2.25)]);
        let mut lists = ListBuilder::new(StringBuilder::new());
        lists.values().append_value("id=7");
        lists.append(true);
        lists.append(true);
        lists.append(false);
        let schema = Schema::new(vec![
            Field::new("value", DataType::Float64, true),
            Field::new("kpi_id", DataType::Utf8, true),
            Field::new("period_start", DataType::Date32, true),
            Field::new(
                "sample",
                DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
                true,
            ),
        ]);
        let batch = RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(values.clone()),
                Arc::new(StringArray::from(vec![
                    Some("revenue"),
                    None,
                    Some("churn"),
                ])),
                Arc::new(Date32Array::from(vec![Some(20_454), Some(20_485), None])),
                Arc::new(lists.finish()),
            ],
        )
        .unwrap();
        let df = to_polars(&batch).unwrap();
        assert_eq!(df.shape(), (3, 4));
        let value = df
            .column("value")
            .unwrap()
            .as_materialized_series()
            .f64()
            .unwrap()
            .clone();
        assert_eq!(
            (0..3).map(|i| value.get(i)).collect::<Vec<_>>(),
            vec![Some(1.5), None, Some(-2.25)]
        );
        let kpi = df.column("kpi_id").unwrap();
        assert_eq!(kpi.get(0).unwrap(), AnyValue::String("revenue"));
        assert_eq!(kpi.get(1).unwrap(), AnyValue::Null);
        let dates = df.column("period_start").unwrap();
        assert_eq!(dates.null_count(), 1);
        assert_eq!(dates.get(0).unwrap(), AnyValue::Date(20_454));
        let sample = df.column("sample").unwrap();
        assert_eq!(sample.null_count(), 1);
        // The float buffer crossed as it is: polars reads arrow-rs's bytes.
        let series = df.column("value").unwrap().as_materialized_series().clone();
        let chunk = series.f64().unwrap().downcast_iter().next().unwrap();
        assert_eq!(chunk.values().as_ptr(), values.values().as_ptr());
    }
}
