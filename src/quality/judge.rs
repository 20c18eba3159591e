//! Judging a check from what its queries measured, with the semantics of the
//! established tools (Great Expectations, Soda, dbt, Deequ): value checks ignore
//! NULLs and `mostly` divides by the non-null rows; an all-null column passes
//! `unique`, `accepted_values` and `regex`; an empty accepted-value set fails;
//! thresholds are counts (`max_unexpected`) or fractions (`mostly`).

use chrono::{NaiveDate, NaiveDateTime, TimeZone, Utc};
use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::common::ScalarValue;

use super::history::History;
use super::{CheckResult, Measured, Outcome};
use crate::config::{Check, CheckKind, Pipeline, Severity, Threshold};

pub struct Context<'a> {
    pub pipeline: &'a Pipeline,
    pub source: Option<&'a str>,
    /// The source's columns, for `schema` checks.
    pub schema: Option<&'a Schema>,
    pub as_of: NaiveDate,
    pub history: &'a History,
}

/// A verdict before severity: pass, fail or cannot tell, with what was seen.
struct Verdict {
    pass: Option<bool>,
    observed: Option<f64>,
    unexpected: Option<u64>,
    fraction: Option<f64>,
    rows: Option<u64>,
    threshold: String,
    message: String,
}

/// The results of one check: the whole check, then each failing segment.
pub fn judge(
    cx: &Context,
    check: &Check,
    whole: &Measured,
    segments: &[(&Option<String>, &Measured)],
) -> Vec<CheckResult> {
    let result = |segment: Option<String>, v: Verdict| CheckResult {
        source: match &check.kind {
            CheckKind::Relationship { from, .. } => Some(from.0.clone()),
            _ => cx.source.map(str::to_string),
        },
        check: check.id.clone(),
        check_type: check.kind.name(),
        column: Some(check.kind.columns().join(", ")).filter(|c| !c.is_empty()),
        segment,
        severity: check.severity,
        outcome: match v.pass {
            None => Outcome::Skipped,
            Some(true) => Outcome::Passed,
            Some(false) if check.severity == Severity::Warn => Outcome::Warned,
            Some(false) => Outcome::Failed,
        },
        observed: v.observed,
        unexpected: v.unexpected,
        unexpected_fraction: v.fraction,
        rows_checked: v.rows,
        threshold: v.threshold,
        message: v.message,
        sample: Vec::new(),
    };
    if check.group_by.is_empty() || (segments.is_empty() && whole.error.is_none()) {
        // No segment at all (an empty table): judged as a whole over no rows.
        return vec![result(None, verdict(cx, check, whole))];
    }
    // Split by segment: the whole check fails when a segment does; each failing
    // segment is reported on its own row.
    let judged: Vec<(String, Verdict)> = segments
        .iter()
        .map(|(s, m)| ((*s).clone().unwrap_or_default(), verdict(cx, check, m)))
        .collect();
    let failing: Vec<&(String, Verdict)> = judged
        .iter()
        .filter(|(_, v)| v.pass == Some(false))
        .collect();
    let threshold = judged
        .first()
        .map(|(_, v)| v.threshold.clone())
        .unwrap_or_default();
    let summary = Verdict {
        pass: Some(failing.is_empty()),
        observed: Some(failing.len() as f64),
        unexpected: judged
            .iter()
            .map(|(_, v)| v.unexpected)
            .sum::<Option<u64>>(),
        fraction: None,
        rows: judged.iter().map(|(_, v)| v.rows).sum::<Option<u64>>(),
        threshold,
        message: if let Some(e) = &whole.error {
            format!("the check could not run: {e}")
        } else {
            format!(
                "{} of {} segments by {} fail{}",
                failing.len(),
                judged.len(),
                check.group_by.join(", "),
                if failing.is_empty() {
                    String::new()
                } else {
                    format!(
                        ": {}",
                        failing
                            .iter()
                            .map(|(s, _)| s.as_str())
                            .collect::<Vec<_>>()
                            .join("; ")
                    )
                }
            )
        },
    };
    let summary = if whole.error.is_some() {
        Verdict {
            pass: Some(false),
            ..summary
        }
    } else {
        summary
    };
    let mut out = vec![result(None, summary)];
    for (segment, v) in judged.into_iter().filter(|(_, v)| v.pass == Some(false)) {
        out.push(result(Some(segment), v));
    }
    out
}

fn verdict(cx: &Context, check: &Check, m: &Measured) -> Verdict {
    let mut v = Verdict {
        pass: Some(true),
        observed: None,
        unexpected: None,
        fraction: None,
        rows: m.rows,
        threshold: String::new(),
        message: String::new(),
    };
    if let Some(e) = &m.error {
        v.pass = Some(false);
        v.message = format!("the check could not run: {e}");
        return v;
    }
    match &check.kind {
        CheckKind::RowCount { min, max } => {
            let n = m.rows.unwrap_or(0);
            v.observed = Some(n as f64);
            v.threshold = bounds(*min, *max);
            v.pass = Some(within(n as f64, *min, *max));
            v.message = format!("{n} rows");
        }
        CheckKind::NotNull { .. }
        | CheckKind::AcceptedValues { .. }
        | CheckKind::Between { .. }
        | CheckKind::Regex { .. }
        | CheckKind::Expression { .. }
        | CheckKind::Unique { .. }
        | CheckKind::Relationship { .. } => {
            let checked = m.checked.unwrap_or(0);
            let bad = m.bad.unwrap_or(0).min(checked);
            v.rows = Some(checked);
            v.unexpected = Some(bad);
            v.observed = Some(bad as f64);
            v.fraction = (checked > 0).then(|| bad as f64 / checked as f64);
            v.threshold = threshold_text(check.threshold);
            v.pass = Some(allowed(check.threshold, bad, checked));
            let what = match &check.kind {
                CheckKind::NotNull { .. } => "NULL",
                CheckKind::Unique { .. } => "duplicated",
                CheckKind::Relationship { to, .. } => {
                    v.message = format!(
                        "{bad} of {checked} non-null values have no match in {}.{}",
                        to.0, to.1
                    );
                    ""
                }
                CheckKind::AcceptedValues { values, .. } if values.is_empty() => {
                    // An empty set accepts nothing: it fails, whatever the data.
                    v.pass = Some(false);
                    v.message = "the accepted-value set is empty".into();
                    ""
                }
                _ => "failing",
            };
            if !what.is_empty() {
                v.message = format!(
                    "{bad} of {checked} {}rows {what}{}",
                    if matches!(
                        check.kind,
                        CheckKind::NotNull { .. } | CheckKind::Expression { .. }
                    ) {
                        ""
                    } else {
                        "non-null "
                    },
                    m.keys.map(|k| format!(" ({k} keys)")).unwrap_or_default()
                );
            }
        }
        CheckKind::Completeness { min, .. } => {
            let rows = m.rows.unwrap_or(0);
            let nulls = m.bad.unwrap_or(0);
            let complete = if rows == 0 {
                1.0
            } else {
                (rows - nulls) as f64 / rows as f64
            };
            v.observed = Some(complete);
            v.unexpected = Some(nulls);
            v.fraction = (rows > 0).then(|| nulls as f64 / rows as f64);
            v.threshold = format!(">= {min}");
            v.pass = Some(complete >= *min);
            v.message = format!("{:.4} of {rows} rows have a value", complete);
        }
        CheckKind::Freshness { max_age, .. } => {
            let limit_hours = max_age.as_secs_f64() / 3600.0;
            v.threshold = format!("<= {}", hours(limit_hours));
            match m.latest.as_ref().and_then(|l| newest(l, cx.pipeline)) {
                None => {
                    v.pass = Some(false);
                    v.message = "no value to judge freshness by".into();
                }
                Some(latest) => {
                    let reference = reference_instant(cx);
                    let age = (reference - latest).num_seconds() as f64 / 3600.0;
                    v.observed = Some(age);
                    v.pass = Some(age <= limit_hours);
                    let local = latest.with_timezone(&cx.pipeline.timezone);
                    v.message = format!(
                        "newest value {} is {} old at the end of {}",
                        local.format("%Y-%m-%d %H:%M:%S %Z"),
                        hours(age),
                        cx.as_of
                    );
                }
            }
        }
        CheckKind::Schema {
            required,
            types,
            forbidden,
        } => {
            let mut problems = Vec::new();
            let fields: Vec<(&str, &DataType)> = cx
                .schema
                .map(|s| {
                    s.fields()
                        .iter()
                        .map(|f| (f.name().as_str(), f.data_type()))
                        .collect()
                })
                .unwrap_or_default();
            for c in required {
                if !fields.iter().any(|(n, _)| n == c) {
                    problems.push(format!("column `{c}` is missing"));
                }
            }
            for (c, t) in types {
                match fields.iter().find(|(n, _)| n == c) {
                    None => problems.push(format!("column `{c}` is missing")),
                    Some((_, actual)) if !super::compile::same_type(actual, t) => {
                        problems.push(format!("column `{c}` is {actual}, expected {t}"))
                    }
                    _ => {}
                }
            }
            for c in forbidden {
                if fields.iter().any(|(n, _)| n == c) {
                    problems.push(format!("column `{c}` must not be there"));
                }
            }
            problems.dedup();
            v.observed = Some(problems.len() as f64);
            v.unexpected = Some(problems.len() as u64);
            v.threshold = "no schema problems".into();
            v.pass = Some(problems.is_empty());
            v.message = if problems.is_empty() {
                "schema as declared".into()
            } else {
                problems.join("; ")
            };
        }
        CheckKind::Metric { sql, min, max } => {
            v.threshold = bounds(*min, *max);
            v.observed = m.metric;
            match m.metric {
                None => {
                    v.pass = Some(false);
                    v.message = format!("{sql} is NULL");
                }
                Some(x) => {
                    v.pass = Some(within(x, *min, *max));
                    v.message = format!("{sql} = {x}");
                }
            }
        }
        CheckKind::Change { sql, max_change } => {
            v.observed = m.metric;
            v.threshold = format!("change <= {:.1}%", max_change * 100.0);
            let previous = cx.history.values(cx.source, &check.id).first().copied();
            match (m.metric, previous) {
                (None, _) => {
                    v.pass = Some(false);
                    v.message = format!("{sql} is NULL");
                }
                (Some(x), None) => {
                    v.pass = None;
                    v.message = format!("{sql} = {x}; no earlier run to compare with");
                }
                (Some(x), Some((date, before))) => {
                    let change = if before == 0.0 {
                        if x == 0.0 { 0.0 } else { f64::INFINITY }
                    } else {
                        (x - before).abs() / before.abs()
                    };
                    v.fraction = change.is_finite().then_some(change);
                    v.pass = Some(change <= *max_change);
                    v.message = format!(
                        "{sql} = {x}, {before} on {date}: {}",
                        if change.is_finite() {
                            format!("{:+.1}%", (x - before) / before.abs() * 100.0)
                        } else {
                            "from zero".into()
                        }
                    );
                }
            }
        }
        CheckKind::Anomaly {
            sql,
            max_z,
            runs,
            min_runs,
        } => {
            v.observed = m.metric;
            v.threshold = format!("|z| <= {max_z} over the last {runs} runs");
            let past: Vec<f64> = cx
                .history
                .values(cx.source, &check.id)
                .iter()
                .take(*runs)
                .map(|(_, x)| *x)
                .collect();
            match m.metric {
                None => {
                    v.pass = Some(false);
                    v.message = format!("{sql} is NULL");
                }
                Some(_) if past.len() < *min_runs => {
                    v.pass = None;
                    v.message = format!("{} earlier runs, {min_runs} needed", past.len());
                }
                Some(x) => {
                    let n = past.len() as f64;
                    let mean = past.iter().sum::<f64>() / n;
                    let sd =
                        (past.iter().map(|p| (p - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
                    let z = if sd == 0.0 {
                        if x == mean { 0.0 } else { f64::INFINITY }
                    } else {
                        (x - mean) / sd
                    };
                    v.fraction = z.is_finite().then_some(z);
                    v.pass = Some(z.abs() <= *max_z);
                    v.message = format!(
                        "{sql} = {x}; mean {mean:.4}, sd {sd:.4} over {} runs: z = {}",
                        past.len(),
                        if z.is_finite() {
                            format!("{z:.2}")
                        } else {
                            "inf".into()
                        }
                    );
                }
            }
        }
        CheckKind::Reconcile { tolerance, .. } => {
            v.threshold = format!("relative difference <= {tolerance}");
            match (m.metric, m.right) {
                (Some(l), Some(r)) => {
                    let scale = l.abs().max(r.abs());
                    let diff = if scale == 0.0 {
                        0.0
                    } else {
                        (l - r).abs() / scale
                    };
                    v.observed = Some(diff);
                    v.pass = Some(diff <= *tolerance);
                    v.message = format!("left {l}, right {r}: relative difference {diff:.6}");
                }
                (l, r) => {
                    v.pass = Some(false);
                    v.message = format!("left {l:?}, right {r:?}: a side is NULL");
                }
            }
        }
    }
    v
}

fn allowed(threshold: Threshold, bad: u64, checked: u64) -> bool {
    match threshold {
        Threshold::Zero => bad == 0,
        Threshold::MaxUnexpected(n) => bad <= n,
        Threshold::Mostly(m) => {
            checked == 0 || checked.saturating_sub(bad) as f64 / checked as f64 >= m
        }
    }
}

fn threshold_text(threshold: Threshold) -> String {
    match threshold {
        Threshold::Zero => "unexpected = 0".into(),
        Threshold::MaxUnexpected(n) => format!("unexpected <= {n}"),
        Threshold::Mostly(m) => format!("mostly >= {m}"),
    }
}

fn within(x: f64, min: Option<f64>, max: Option<f64>) -> bool {
    min.is_none_or(|m| x >= m) && max.is_none_or(|m| x <= m)
}

fn bounds(min: Option<f64>, max: Option<f64>) -> String {
    match (min, max) {
        (Some(a), Some(b)) => format!("between {a} and {b}"),
        (Some(a), None) => format!(">= {a}"),
        (None, Some(b)) => format!("<= {b}"),
        (None, None) => "any".into(),
    }
}

fn hours(h: f64) -> String {
    if h.abs() >= 48.0 {
        format!("{:.1}d", h / 24.0)
    } else {
        format!("{h:.1}h")
    }
}

/// The instant freshness is judged at: the end of the as-of day in the
/// pipeline's time zone, or now if that is earlier (a run during the day).
fn reference_instant(cx: &Context) -> chrono::DateTime<Utc> {
    let next_day = cx
        .as_of
        .succ_opt()
        .unwrap_or(cx.as_of)
        .and_hms_opt(0, 0, 0)
        .unwrap_or_default();
    let end = local_to_utc(cx.pipeline, next_day);
    end.min(Utc::now().max(local_to_utc(
        cx.pipeline,
        cx.as_of.and_hms_opt(0, 0, 0).unwrap_or_default(),
    )))
}

fn local_to_utc(pipeline: &Pipeline, t: NaiveDateTime) -> chrono::DateTime<Utc> {
    // A local time in a daylight-saving gap does not exist: take the hour after.
    let zone = pipeline.timezone;
    zone.from_local_datetime(&t)
        .earliest()
        .or_else(|| {
            zone.from_local_datetime(&(t + chrono::Duration::hours(1)))
                .earliest()
        })
        .map_or_else(|| Utc.from_utc_datetime(&t), |d| d.with_timezone(&Utc))
}

/// The newest value as an instant: dates are midnight and timestamps without a
/// zone are local times, both in the pipeline's time zone.
fn newest(value: &ScalarValue, pipeline: &Pipeline) -> Option<chrono::DateTime<Utc>> {
    let micros = |v: i64, unit: i64| v.checked_mul(unit);
    let (micros, zoned) = match value {
        ScalarValue::Date32(Some(d)) => (micros(*d as i64, 86_400_000_000)?, false),
        ScalarValue::Date64(Some(ms)) => (micros(*ms, 1000)?, false),
        ScalarValue::TimestampSecond(Some(v), tz) => (micros(*v, 1_000_000)?, tz.is_some()),
        ScalarValue::TimestampMillisecond(Some(v), tz) => (micros(*v, 1000)?, tz.is_some()),
        ScalarValue::TimestampMicrosecond(Some(v), tz) => (*v, tz.is_some()),
        ScalarValue::TimestampNanosecond(Some(v), tz) => (v / 1000, tz.is_some()),
        _ => return None,
    };
    let utc = chrono::DateTime::<Utc>::from_timestamp_micros(micros)?;
    Some(if zoned {
        utc
    } else {
        local_to_utc(pipeline, utc.naive_utc())
    })
}
