//! Period arithmetic at a KPI's grain. Weeks are ISO weeks starting on Monday,
//! as DataFusion's `date_trunc('week', ..)` gives them.

use chrono::{Datelike, Duration, Months, NaiveDate};

use crate::config::Grain;

/// The start of the period at `grain` that contains `date`.
pub fn start_of(grain: Grain, date: NaiveDate) -> NaiveDate {
    match grain {
        Grain::Day => date,
        Grain::Week => date - Duration::days(date.weekday().num_days_from_monday() as i64),
        Grain::Month => date.with_day(1).unwrap_or(date),
        Grain::Quarter => {
            let month = (date.month0() / 3) * 3 + 1;
            NaiveDate::from_ymd_opt(date.year(), month, 1).unwrap_or(date)
        }
        Grain::Year => NaiveDate::from_ymd_opt(date.year(), 1, 1).unwrap_or(date),
    }
}

/// The start of the period `n` periods after the one starting at `start` (n may be negative).
pub fn shift(grain: Grain, start: NaiveDate, n: i32) -> NaiveDate {
    let months = |m: i32| {
        if m >= 0 {
            start.checked_add_months(Months::new(m as u32))
        } else {
            start.checked_sub_months(Months::new(m.unsigned_abs()))
        }
        .unwrap_or(start)
    };
    match grain {
        Grain::Day => start + Duration::days(n as i64),
        Grain::Week => start + Duration::weeks(n as i64),
        Grain::Month => months(n),
        Grain::Quarter => months(3 * n),
        Grain::Year => months(12 * n),
    }
}

/// The last day of the period that starts at `start` (inclusive).
pub fn end_of(grain: Grain, start: NaiveDate) -> NaiveDate {
    shift(grain, start, 1) - Duration::days(1)
}

/// The same period one year earlier.
pub fn year_before(grain: Grain, start: NaiveDate) -> NaiveDate {
    match grain {
        // 52 weeks keeps the weekday, which is what a weekly comparison wants.
        Grain::Week => start - Duration::weeks(52),
        Grain::Day => start.checked_sub_months(Months::new(12)).unwrap_or(start),
        _ => shift(grain, start, 0)
            .checked_sub_months(Months::new(12))
            .unwrap_or(start),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    #[test]
    fn starts_and_ends() {
        assert_eq!(start_of(Grain::Week, d(2026, 11, 27)), d(2026, 11, 23));
        assert_eq!(start_of(Grain::Quarter, d(2026, 11, 27)), d(2026, 10, 1));
        assert_eq!(end_of(Grain::Month, d(2024, 2, 1)), d(2024, 2, 29));
        assert_eq!(end_of(Grain::Quarter, d(2026, 10, 1)), d(2026, 12, 31));
        assert_eq!(end_of(Grain::Week, d(2026, 11, 23)), d(2026, 11, 29));
        assert_eq!(end_of(Grain::Year, d(2026, 1, 1)), d(2026, 12, 31));
    }

    #[test]
    fn shifts() {
        assert_eq!(shift(Grain::Month, d(2026, 1, 1), -1), d(2025, 12, 1));
        assert_eq!(shift(Grain::Quarter, d(2026, 1, 1), -1), d(2025, 10, 1));
        assert_eq!(year_before(Grain::Month, d(2026, 3, 1)), d(2025, 3, 1));
        assert_eq!(year_before(Grain::Week, d(2026, 11, 23)), d(2025, 11, 24));
    }
}
