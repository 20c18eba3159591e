//! Period comparisons on every value: the previous period, the same period last
//! year, and the change against the previous period (null where division by zero).

use std::collections::HashMap;

use chrono::NaiveDate;

use super::{KpiValue, period};
use crate::config::Grain;

/// Fills the comparison fields of `values` (one KPI, any segments).
pub fn fill(grain: Grain, values: &mut [KpiValue]) {
    let index: HashMap<(Option<String>, NaiveDate), Option<f64>> = values
        .iter()
        .map(|v| ((v.segment.clone(), v.period_start), v.value))
        .collect();
    let at = |segment: &Option<String>, date: NaiveDate| {
        index.get(&(segment.clone(), date)).copied().flatten()
    };
    for v in values.iter_mut() {
        v.previous_value = at(&v.segment, period::shift(grain, v.period_start, -1));
        v.last_year_value = at(&v.segment, period::year_before(grain, v.period_start));
        if let (Some(now), Some(before)) = (v.value, v.previous_value) {
            v.change_abs = Some(now - before);
            v.change_pct = (before != 0.0).then(|| (now - before) / before.abs());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(month: u32, v: Option<f64>) -> KpiValue {
        let start = NaiveDate::from_ymd_opt(2026, month, 1).unwrap();
        KpiValue {
            value: v,
            ..KpiValue::empty(start, period::end_of(Grain::Month, start))
        }
    }

    #[test]
    fn changes_against_previous_period() {
        let mut values = vec![
            value(1, Some(0.0)),
            value(2, Some(10.0)),
            value(3, Some(15.0)),
            value(5, Some(1.0)),
        ];
        fill(Grain::Month, &mut values);
        assert_eq!(values[0].previous_value, None);
        // Division by zero gives null, not inf.
        assert_eq!(
            (values[1].change_abs, values[1].change_pct),
            (Some(10.0), None)
        );
        assert_eq!(
            (values[2].change_abs, values[2].change_pct),
            (Some(5.0), Some(0.5))
        );
        // April is missing: May has no previous value.
        assert_eq!(values[3].previous_value, None);
    }
}
