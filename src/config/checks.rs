//! Data-quality check definitions: the raw `checks:` entries turned into typed
//! checks, with what can be known without data checked here (types of settings,
//! regexes, ranges, names). Columns and SQL are checked against the sources'
//! schemas when the checks are planned (`quality/compile.rs`).

use std::time::Duration;

use datafusion::arrow::datatypes::DataType;

use super::error::Problem;
use super::model::{closest, parse_type};
use super::raw::{CheckArgs, CheckBody, Literal, RawCheck};
pub use super::raw::{OnFailure, Severity};

/// One check of a source (or across sources).
#[derive(Debug, Clone)]
pub struct Check {
    /// Unique within its source; names the check in results and history.
    pub id: String,
    pub kind: CheckKind,
    pub severity: Severity,
    /// `where:`: a SQL predicate selecting the rows checked.
    pub filter: Option<String>,
    pub group_by: Vec<String>,
    /// How many failing rows are allowed (value checks).
    pub threshold: Threshold,
    /// Where the check is in the pipeline file, like `sources.orders.checks[2]`.
    pub path: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CheckKind {
    RowCount {
        min: Option<f64>,
        max: Option<f64>,
    },
    NotNull {
        column: String,
    },
    /// The fraction of non-null values is at least `min`.
    Completeness {
        column: String,
        min: f64,
    },
    Unique {
        columns: Vec<String>,
    },
    AcceptedValues {
        column: String,
        values: Vec<Literal>,
    },
    /// Bounds are numbers, or text that the column's type reads (a date).
    Between {
        column: String,
        min: Option<Literal>,
        max: Option<Literal>,
        strict_min: bool,
        strict_max: bool,
    },
    Regex {
        column: String,
        pattern: String,
    },
    Freshness {
        column: String,
        max_age: Duration,
    },
    Schema {
        required: Vec<String>,
        types: Vec<(String, DataType)>,
        forbidden: Vec<String>,
    },
    /// Every non-null `from` value exists among the `to` values.
    Relationship {
        from: (String, String),
        to: (String, String),
    },
    /// Two scalar queries agree within a relative tolerance.
    Reconcile {
        left: String,
        right: String,
        tolerance: f64,
    },
    /// A row-level predicate; rows where it is false fail (NULL passes, as in dbt).
    Expression {
        sql: String,
    },
    /// An aggregate within bounds.
    Metric {
        sql: String,
        min: Option<f64>,
        max: Option<f64>,
    },
    /// An aggregate's relative change against the previous run.
    Change {
        sql: String,
        max_change: f64,
    },
    /// An aggregate's z-score against the last `runs` runs.
    Anomaly {
        sql: String,
        max_z: f64,
        runs: usize,
        min_runs: usize,
    },
}

/// How many failing rows a value check allows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    /// None: the default.
    Zero,
    /// At least this fraction of the checked (non-null) rows must pass.
    Mostly(f64),
    /// At most this many rows may fail.
    MaxUnexpected(u64),
}

impl CheckKind {
    pub fn name(&self) -> &'static str {
        match self {
            CheckKind::RowCount { .. } => "row_count",
            CheckKind::NotNull { .. } => "not_null",
            CheckKind::Completeness { .. } => "completeness",
            CheckKind::Unique { .. } => "unique",
            CheckKind::AcceptedValues { .. } => "accepted_values",
            CheckKind::Between { .. } => "between",
            CheckKind::Regex { .. } => "regex",
            CheckKind::Freshness { .. } => "freshness",
            CheckKind::Schema { .. } => "schema",
            CheckKind::Relationship { .. } => "relationship",
            CheckKind::Reconcile { .. } => "reconcile",
            CheckKind::Expression { .. } => "expression",
            CheckKind::Metric { .. } => "metric",
            CheckKind::Change { .. } => "change",
            CheckKind::Anomaly { .. } => "anomaly",
        }
    }

    /// The column(s) the check is about, for results.
    pub fn columns(&self) -> Vec<&str> {
        match self {
            CheckKind::NotNull { column }
            | CheckKind::Completeness { column, .. }
            | CheckKind::AcceptedValues { column, .. }
            | CheckKind::Between { column, .. }
            | CheckKind::Regex { column, .. }
            | CheckKind::Freshness { column, .. } => vec![column],
            CheckKind::Unique { columns } => columns.iter().map(String::as_str).collect(),
            CheckKind::Relationship { from, .. } => vec![&from.1],
            _ => Vec::new(),
        }
    }

    /// Whether the check judges rows one at a time (so failing rows can be
    /// sampled and quarantined, and `mostly` applies).
    pub fn is_row_level(&self) -> bool {
        matches!(
            self,
            CheckKind::NotNull { .. }
                | CheckKind::AcceptedValues { .. }
                | CheckKind::Between { .. }
                | CheckKind::Regex { .. }
                | CheckKind::Expression { .. }
        )
    }

    fn across_sources(&self) -> bool {
        matches!(
            self,
            CheckKind::Relationship { .. } | CheckKind::Reconcile { .. }
        )
    }
}

/// The settings each check type takes beyond the common ones.
fn settings_of(kind: &str) -> &'static [&'static str] {
    match kind {
        "row_count" => &["min", "max"],
        "not_null" => &["column", "mostly", "max_unexpected"],
        "completeness" => &["column", "min"],
        "unique" => &["column", "columns", "mostly", "max_unexpected"],
        "accepted_values" => &["column", "values", "mostly", "max_unexpected"],
        "between" => &[
            "column",
            "min",
            "max",
            "strict_min",
            "strict_max",
            "mostly",
            "max_unexpected",
        ],
        "regex" => &["column", "pattern", "mostly", "max_unexpected"],
        "freshness" => &["column", "max_age"],
        "schema" => &["required", "types", "forbidden"],
        "relationship" => &["from", "to"],
        "reconcile" => &["left", "right", "tolerance"],
        "expression" => &["sql", "mostly", "max_unexpected"],
        "metric" => &["sql", "min", "max"],
        "change" => &["sql", "max_change"],
        "anomaly" => &["sql", "max_z", "runs", "min_runs"],
        _ => &[],
    }
}

/// Checks the `checks:` of one source (`source` is `Some`) or of the pipeline,
/// expanding `not_null: [a, b]` into one check per column.
pub fn check_checks(
    raw: Vec<RawCheck>,
    base: &str,
    source: Option<&str>,
    problems: &mut Vec<Problem>,
) -> Vec<Check> {
    let mut checks: Vec<Check> = Vec::new();
    for (i, raw) in raw.into_iter().enumerate() {
        let path = format!("{base}[{i}]");
        let (kind_name, body) = (raw.kind, raw.body);
        let at = format!("{path}.{kind_name}");
        let mut bodies = Vec::new();
        match body {
            // `not_null: [a, b]` is one check per column; `unique: [a, b]` one compound key.
            CheckBody::Columns(cols) if kind_name != "unique" => {
                for c in cols {
                    bodies.push(CheckArgs {
                        column: Some(c),
                        ..CheckArgs::default()
                    });
                }
            }
            CheckBody::Columns(cols) => bodies.push(CheckArgs {
                columns: Some(cols),
                ..CheckArgs::default()
            }),
            CheckBody::Column(c) => bodies.push(CheckArgs {
                column: Some(c),
                ..CheckArgs::default()
            }),
            CheckBody::Args(args) => bodies.push(*args),
        }
        for args in bodies {
            if let Some(check) = check_one(kind_name, args, &at, source, problems) {
                if checks.iter().any(|c| c.id == check.id) {
                    problems.push(
                        Problem::new(&at, format!("two checks are named `{}`", check.id))
                            .hint("give one of them its own `name:`"),
                    );
                }
                checks.push(check);
            }
        }
    }
    checks
}

fn check_one(
    kind_name: &'static str,
    a: CheckArgs,
    at: &str,
    source: Option<&str>,
    problems: &mut Vec<Problem>,
) -> Option<Check> {
    let before = problems.len();
    let mut fail = |key: &str, message: String, hint: &str| {
        let path = if key.is_empty() {
            at.to_string()
        } else {
            format!("{at}.{key}")
        };
        let p = Problem::new(path, message);
        problems.push(if hint.is_empty() { p } else { p.hint(hint) });
    };

    // Settings this type does not take.
    let allowed = settings_of(kind_name);
    let given: Vec<(&str, bool)> = vec![
        ("column", a.column.is_some()),
        ("columns", a.columns.is_some()),
        ("values", a.values.is_some()),
        ("min", a.min.is_some()),
        ("max", a.max.is_some()),
        ("strict_min", a.strict_min),
        ("strict_max", a.strict_max),
        ("pattern", a.pattern.is_some()),
        ("max_age", a.max_age.is_some()),
        ("required", !a.required.is_empty()),
        ("types", !a.types.is_empty()),
        ("forbidden", !a.forbidden.is_empty()),
        ("from", a.from.is_some()),
        ("to", a.to.is_some()),
        ("left", a.left.is_some()),
        ("right", a.right.is_some()),
        ("tolerance", a.tolerance.is_some()),
        ("sql", a.sql.is_some()),
        ("max_change", a.max_change.is_some()),
        ("max_z", a.max_z.is_some()),
        ("runs", a.runs.is_some()),
        ("min_runs", a.min_runs.is_some()),
        ("mostly", a.mostly.is_some()),
        ("max_unexpected", a.max_unexpected.is_some()),
    ];
    for (key, present) in given {
        if present && !allowed.contains(&key) {
            fail(
                key,
                format!("`{key}` does not apply to a `{kind_name}` check"),
                &format!("a `{kind_name}` check takes: {}", allowed.join(", ")),
            );
        }
    }

    // `min`/`max` as numbers, for every type but `between`.
    let number = |v: &Option<Literal>| match v {
        Some(Literal::Int(i)) => Some(*i as f64),
        Some(Literal::Float(f)) => Some(*f),
        _ => None,
    };
    let (min_number, max_number) = (number(&a.min), number(&a.max));
    if kind_name != "between" {
        for (key, v, n) in [("min", &a.min, min_number), ("max", &a.max, max_number)] {
            if v.is_some() && n.is_none() {
                fail(
                    key,
                    format!("`{key}` of a `{kind_name}` check must be a number"),
                    "",
                );
            }
        }
    }
    let mut need = |key: &str, value: Option<String>| -> String {
        value.unwrap_or_else(|| {
            fail(
                "",
                format!("a `{kind_name}` check needs `{key}:`"),
                &format!("a `{kind_name}` check takes: {}", allowed.join(", ")),
            );
            String::new()
        })
    };
    let kind = match kind_name {
        "row_count" => CheckKind::RowCount {
            min: min_number,
            max: max_number,
        },
        "not_null" => CheckKind::NotNull {
            column: need("column", a.column.clone()),
        },
        "completeness" => CheckKind::Completeness {
            column: need("column", a.column.clone()),
            min: min_number.unwrap_or(1.0),
        },
        "unique" => CheckKind::Unique {
            columns: match (&a.column, &a.columns) {
                (Some(c), None) => vec![c.clone()],
                (None, Some(cs)) if !cs.is_empty() => cs.clone(),
                _ => {
                    need("column", None);
                    Vec::new()
                }
            },
        },
        "accepted_values" => CheckKind::AcceptedValues {
            column: need("column", a.column.clone()),
            values: a.values.clone().unwrap_or_else(|| {
                need("values", None);
                Vec::new()
            }),
        },
        "between" => CheckKind::Between {
            column: need("column", a.column.clone()),
            min: a.min.clone(),
            max: a.max.clone(),
            strict_min: a.strict_min,
            strict_max: a.strict_max,
        },
        "regex" => CheckKind::Regex {
            column: need("column", a.column.clone()),
            pattern: need("pattern", a.pattern.clone()),
        },
        "freshness" => CheckKind::Freshness {
            column: need("column", a.column.clone()),
            max_age: Duration::ZERO,
        },
        "schema" => CheckKind::Schema {
            required: a.required.clone(),
            types: Vec::new(),
            forbidden: a.forbidden.clone(),
        },
        "relationship" => CheckKind::Relationship {
            from: (need("from", a.from.clone()), String::new()),
            to: (need("to", a.to.clone()), String::new()),
        },
        "reconcile" => CheckKind::Reconcile {
            left: need("left", a.left.clone()),
            right: need("right", a.right.clone()),
            tolerance: a.tolerance.unwrap_or(0.0),
        },
        "expression" => CheckKind::Expression {
            sql: need("sql", a.sql.clone()),
        },
        "metric" => CheckKind::Metric {
            sql: need("sql", a.sql.clone()),
            min: min_number,
            max: max_number,
        },
        "change" => CheckKind::Change {
            sql: need("sql", a.sql.clone()),
            max_change: a.max_change.unwrap_or_else(|| {
                need("max_change", None);
                0.0
            }),
        },
        "anomaly" => CheckKind::Anomaly {
            sql: need("sql", a.sql.clone()),
            max_z: a.max_z.unwrap_or(3.0),
            runs: a.runs.unwrap_or(10),
            min_runs: a.min_runs.unwrap_or(3),
        },
        _ => unreachable!("every check type is listed"),
    };
    // What can be checked before any data is read.
    let kind = match kind {
        CheckKind::Freshness { column, .. } => {
            let max_age = match a.max_age.as_deref().map(parse_duration) {
                Some(Ok(d)) => d,
                Some(Err(message)) => {
                    fail(
                        "max_age",
                        message,
                        "write a number and a unit: `36h`, `2d`, `90m`",
                    );
                    Duration::ZERO
                }
                None => {
                    fail(
                        "",
                        "a `freshness` check needs `max_age:`".into(),
                        "e.g. `max_age: 36h`",
                    );
                    Duration::ZERO
                }
            };
            CheckKind::Freshness { column, max_age }
        }
        CheckKind::Regex { column, pattern } => {
            if let Err(e) = regex::Regex::new(&pattern) {
                let detail = e.to_string();
                let last = detail.lines().last().unwrap_or_default().trim().to_string();
                fail(
                    "pattern",
                    format!("the regex `{pattern}` does not compile: {last}"),
                    "",
                );
            }
            CheckKind::Regex { column, pattern }
        }
        CheckKind::Schema {
            required,
            forbidden,
            ..
        } => {
            let mut types = Vec::new();
            for (column, t) in &a.types {
                match parse_type(t) {
                    Ok(t) => types.push((column.clone(), t)),
                    Err(m) => fail(
                        &format!("types.{column}"),
                        m,
                        "use one of: boolean, int, bigint, double, decimal(p,s), varchar, date, timestamp, timestamptz",
                    ),
                }
            }
            CheckKind::Schema {
                required,
                types,
                forbidden,
            }
        }
        CheckKind::Relationship { from, to } => {
            let mut split = |key: &str, text: String| match text.split_once('.') {
                Some((s, c)) if !s.is_empty() && !c.is_empty() => (s.to_string(), c.to_string()),
                _ => {
                    if !text.is_empty() {
                        fail(
                            key,
                            format!("`{text}` is not `source.column`"),
                            "e.g. `from: orders.customer_id`",
                        );
                    }
                    (String::new(), String::new())
                }
            };
            CheckKind::Relationship {
                from: split("from", from.0),
                to: split("to", to.0),
            }
        }
        other => other,
    };
    let above = match (&a.min, &a.max) {
        (Some(Literal::Text(lo)), Some(Literal::Text(hi))) => {
            (lo > hi).then(|| (lo.clone(), hi.clone()))
        }
        _ => min_number
            .zip(max_number)
            .filter(|(lo, hi)| lo > hi)
            .map(|(lo, hi)| (lo.to_string(), hi.to_string())),
    };
    if let Some((min, max)) = above {
        fail(
            "min",
            format!("min {min} is above max {max}"),
            "swap them, or drop one for a one-sided bound",
        );
    }
    if let CheckKind::Completeness { min, .. } = &kind
        && !(0.0..=1.0).contains(min)
    {
        fail(
            "min",
            format!("completeness min {min} is not a fraction"),
            "write the share of non-null values required, e.g. `min: 0.95`",
        );
    }
    if let Some(m) = a.mostly
        && !(m > 0.0 && m <= 1.0)
    {
        fail(
            "mostly",
            format!("mostly {m} is not in (0, 1]"),
            "write the fraction of rows that must pass, e.g. `mostly: 0.99`",
        );
    }
    if a.mostly.is_some() && a.max_unexpected.is_some() {
        fail(
            "mostly",
            "`mostly` and `max_unexpected` both set the threshold".into(),
            "keep one: a fraction or a count",
        );
    }
    for (key, v) in [
        ("tolerance", a.tolerance),
        ("max_change", a.max_change),
        ("max_z", a.max_z),
    ] {
        if v.is_some_and(|v| !(v.is_finite() && v >= 0.0)) {
            fail(key, format!("{key} must be a number >= 0"), "");
        }
    }
    if let CheckKind::Anomaly { runs, min_runs, .. } = &kind
        && (*min_runs < 2 || min_runs > runs)
    {
        fail(
            "min_runs",
            format!("min_runs {min_runs} must be at least 2 and at most runs ({runs})"),
            "a z-score needs at least two earlier values",
        );
    }
    if !a.group_by.is_empty() && !group_by_allowed(&kind) {
        fail(
            "group_by",
            format!("a `{kind_name}` check cannot be split by segment"),
            "`group_by:` applies to row_count, not_null, completeness, accepted_values, between, regex, expression, metric and freshness",
        );
    }
    match (source, kind.across_sources()) {
        (Some(s), true) => fail(
            "",
            format!(
                "a `{kind_name}` check compares sources: declare it under the pipeline's top-level `checks:`, not under source `{s}`"
            ),
            "",
        ),
        (None, false) => fail(
            "",
            format!(
                "a `{kind_name}` check belongs to one source: declare it under that source's `checks:`"
            ),
            "top-level `checks:` take relationship and reconcile",
        ),
        _ => {}
    }
    if let Some(name) = &a.name
        && !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        fail(
            "name",
            format!("`{name}` is not a valid check name"),
            "use letters, digits and `_`",
        );
    }
    if problems.len() > before {
        return None;
    }
    let threshold = match (a.mostly, a.max_unexpected) {
        (Some(m), _) => Threshold::Mostly(m),
        (_, Some(n)) => Threshold::MaxUnexpected(n),
        _ => Threshold::Zero,
    };
    let id = a.name.clone().unwrap_or_else(|| default_id(&kind));
    Some(Check {
        id,
        kind,
        severity: a.severity.unwrap_or_default(),
        filter: a.filter,
        group_by: a.group_by,
        threshold,
        path: at.to_string(),
    })
}

fn group_by_allowed(kind: &CheckKind) -> bool {
    !matches!(
        kind,
        CheckKind::Unique { .. }
            | CheckKind::Schema { .. }
            | CheckKind::Relationship { .. }
            | CheckKind::Reconcile { .. }
            | CheckKind::Change { .. }
            | CheckKind::Anomaly { .. }
    )
}

/// `not_null_order_id`, `unique_order_id_line_no`, `row_count`, `expression`, ...
fn default_id(kind: &CheckKind) -> String {
    let columns = match kind {
        CheckKind::Relationship { from, to } => {
            vec![from.0.as_str(), from.1.as_str(), to.0.as_str()]
        }
        _ => kind.columns(),
    };
    std::iter::once(kind.name())
        .chain(columns)
        .collect::<Vec<_>>()
        .join("_")
}

/// `36h`, `2d`, `90m`, `45s`, `1w`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration"))?;
    let seconds = match unit.trim() {
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        "w" => 604800.0,
        u => return Err(format!("unknown unit `{u}` in `{text}`")),
    };
    Duration::try_from_secs_f64(n * seconds).map_err(|_| format!("`{text}` is too long a duration"))
}

/// Suggests a column name close to `name`.
pub fn column_hint(name: &str, columns: &[String]) -> String {
    match closest(name, columns.iter().map(String::as_str)) {
        Some(best) => format!("did you mean `{best}`?"),
        None => format!("columns: {}", columns.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("36h"), Ok(Duration::from_secs(36 * 3600)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(2 * 86400)));
        assert_eq!(parse_duration("90m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("3 fortnights").is_err());
        assert!(parse_duration("h").is_err());
    }
}
