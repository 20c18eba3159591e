//! Checks compiled to as few queries as possible: every scalar check of a
//! source (each with its `where:` inside its CASE) becomes one column of a single
//! aggregate query over that source, so N checks cost one scan; checks split by
//! `group_by:` share one GROUP BY per column set; uniqueness (with the accepted
//! values of the same column) one GROUP BY per key; relationships are anti-joins.
//! Columns and SQL are checked against the sources' schemas here, before any
//! data is read, and problems point at the check in the pipeline file.

use std::collections::HashMap;

use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::prelude::SessionContext;

use super::keys::{FastKeys, in_keys, in_keys_name};
use crate::config::checks::column_hint;
use crate::config::{Check, CheckKind, Literal, Pipeline, Problem};
use crate::kpi::incremental::{DeltaInput, Files};

/// Which check a result belongs to: `(Some(source), index)` for a source's
/// checks, `(None, index)` for the pipeline's checks across sources.
pub type CheckRef = (Option<String>, usize);

/// The queries that measure every check of a pipeline.
#[derive(Debug, Default)]
pub struct Compiled {
    pub queries: Vec<Query>,
    /// Each source's columns, as registered (for `schema` checks).
    pub schemas: HashMap<String, Schema>,
}

/// One query and what its result columns measure.
#[derive(Debug, Clone)]
pub struct Query {
    /// The source scanned (for logs), or `None` across sources.
    pub source: Option<String>,
    pub sql: String,
    /// Leading group-by columns (a row per segment), or empty (one row).
    pub group_by: Vec<String>,
    /// Result column alias -> (check, what it measures).
    pub slots: Vec<(String, CheckRef, Slot)>,
    /// A fused query's expressions (alias `m<i>` is expression `i`) and the
    /// clause after them, so it can be split into one query per check.
    parts: Option<(Vec<String>, String)>,
    /// Integer keys this query can be answered from with bitmaps (`keys.rs`).
    pub fast: Option<FastKeys>,
    /// How its counts follow appended files (`incremental:`), for the checks
    /// whose counts are not one aggregate over one source's rows.
    pub delta: Option<Delta>,
}

impl Query {
    /// A query serving one check, built as written.
    fn single(
        source: Option<String>,
        sql: String,
        group_by: Vec<String>,
        slots: Vec<(String, CheckRef, Slot)>,
    ) -> Query {
        Query {
            source,
            sql,
            group_by,
            slots,
            parts: None,
            fast: None,
            delta: None,
        }
    }

    /// A fused query from its select list: `SELECT [group columns,] exprs <rest>`.
    fn fused(source: &str, group_by: Vec<String>, select: Select, rest: String) -> Query {
        let lead: String = group_by.iter().map(|g| format!("{}, ", ident(g))).collect();
        Query {
            sql: format!("SELECT {lead}{}\n{rest}", select.list()),
            source: Some(source.to_string()),
            group_by,
            slots: select.slots,
            parts: Some((select.exprs, rest)),
            fast: None,
            delta: None,
        }
    }

    /// Whether it is one aggregate over one source's rows (a fused query), whose
    /// results an incremental run can keep and merge like a KPI's aggregate.
    pub fn fused_scan(&self) -> bool {
        self.parts.is_some()
    }

    /// The checks this query serves, in order.
    pub fn checks(&self) -> Vec<CheckRef> {
        let mut checks: Vec<CheckRef> = Vec::new();
        for (_, c, _) in &self.slots {
            if !checks.contains(c) {
                checks.push(c.clone());
            }
        }
        checks
    }

    /// One query per check this fused query serves: when the fused query fails,
    /// each check is measured (or fails) on its own, so one bad expression does
    /// not take its neighbours down with it.
    pub fn split(&self) -> Vec<Query> {
        let Some((exprs, rest)) = &self.parts else {
            return vec![self.clone()];
        };
        self.checks()
            .into_iter()
            .map(|check| {
                let mut select = Select::default();
                for (alias, c, slot) in self.slots.iter().filter(|(_, c, _)| *c == check) {
                    let i: usize = alias[1..].parse().unwrap_or(0);
                    select.add(exprs[i].clone(), c, *slot);
                }
                Query::fused(
                    self.source.as_deref().unwrap_or_default(),
                    self.group_by.clone(),
                    select,
                    rest.clone(),
                )
            })
            .collect()
    }
}

/// What a result column measures for a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Rows considered (after `where:`).
    Rows,
    /// Rows judged: non-null values for value checks.
    Checked,
    /// Rows that fail.
    Bad,
    /// Duplicated keys (unique), for the message.
    Keys,
    /// An aggregate's value (metric, change, anomaly; reconcile's left side).
    Metric,
    /// Reconcile's right side.
    Right,
    /// The newest value (freshness).
    Latest,
}

/// Builds the select list of one query, sharing identical aggregates.
#[derive(Default)]
struct Select {
    exprs: Vec<String>,
    slots: Vec<(String, CheckRef, Slot)>,
}

impl Select {
    fn add(&mut self, sql: String, check: &CheckRef, slot: Slot) {
        let index = match self.exprs.iter().position(|e| *e == sql) {
            Some(i) => i,
            None => {
                self.exprs.push(sql);
                self.exprs.len() - 1
            }
        };
        self.slots.push((format!("m{index}"), check.clone(), slot));
    }

    fn list(&self) -> String {
        self.exprs
            .iter()
            .enumerate()
            .map(|(i, e)| format!("{e} AS m{i}"))
            .collect::<Vec<_>>()
            .join(",\n       ")
    }
}

/// A column in SQL, quoted so any header name works.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A string in SQL.
pub fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn literal(value: &Literal) -> String {
    match value {
        Literal::Bool(b) => b.to_string(),
        Literal::Int(i) => i.to_string(),
        Literal::Float(f) => format!("{f:?}"),
        Literal::Text(t) => quote(t),
    }
}

fn count_if(condition: &str) -> String {
    if condition == "TRUE" {
        "count(*)".into()
    } else {
        // A filtered count: rows where the condition is TRUE (not FALSE, not NULL).
        format!("count(*) FILTER (WHERE {condition})")
    }
}

fn and(a: &str, b: &str) -> String {
    match (a, b) {
        ("TRUE", b) => b.to_string(),
        (a, "TRUE") => a.to_string(),
        (a, b) => format!("{a} AND {b}"),
    }
}

/// The rows a check considers: its `where:`, or all.
pub fn rows_condition(check: &Check) -> String {
    check
        .filter
        .as_deref()
        .map_or("TRUE".to_string(), |f| format!("({f})"))
}

/// For a row-level check: (rows it judges, rows that fail), as SQL predicates.
pub fn row_conditions(check: &Check) -> Option<(String, String)> {
    let rows = rows_condition(check);
    let present = |c: &str| and(&rows, &format!("{} IS NOT NULL", ident(c)));
    let (checked, bad) = match &check.kind {
        CheckKind::NotNull { column } => (rows.clone(), format!("{} IS NULL", ident(column))),
        CheckKind::AcceptedValues { column, values } => {
            let bad = if values.is_empty() {
                "TRUE".to_string()
            } else {
                let list: Vec<String> = values.iter().map(literal).collect();
                format!("NOT ({} IN ({}))", ident(column), list.join(", "))
            };
            (present(column), bad)
        }
        CheckKind::Between {
            column,
            min,
            max,
            strict_min,
            strict_max,
        } => {
            let c = ident(column);
            let mut ok = Vec::new();
            if let Some(min) = min {
                let op = if *strict_min { ">" } else { ">=" };
                ok.push(format!("{c} {op} {}", literal(min)));
            }
            if let Some(max) = max {
                let op = if *strict_max { "<" } else { "<=" };
                ok.push(format!("{c} {op} {}", literal(max)));
            }
            let bad = if ok.is_empty() {
                "FALSE".to_string()
            } else {
                format!("NOT ({})", ok.join(" AND "))
            };
            (present(column), bad)
        }
        CheckKind::Regex { column, pattern } => (
            present(column),
            format!(
                "NOT (CAST({} AS VARCHAR) ~ {})",
                ident(column),
                quote(pattern)
            ),
        ),
        // NULL passes, as in dbt's `expression_is_true`.
        CheckKind::Expression { sql } => (rows.clone(), format!("NOT ({sql})")),
        _ => return None,
    };
    let bad = and(&checked, &bad);
    Some((checked, bad))
}

/// Compiles every check of `pipeline`, checking columns against the registered
/// tables and planning every query. Returns the problems instead when any is found.
pub async fn compile(ctx: &SessionContext, pipeline: &Pipeline) -> Result<Compiled, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut schemas: HashMap<String, Schema> = HashMap::new();
    for s in &pipeline.sources {
        if let Ok(df) = ctx.table(s.name.as_str()).await {
            schemas.insert(s.name.clone(), df.schema().as_arrow().clone());
        }
    }
    let mut compiled = Compiled {
        schemas: schemas.clone(),
        ..Compiled::default()
    };
    // Scalar selects per source, and per (source, group-by set).
    let mut scalar: HashMap<String, Select> = HashMap::new();
    let mut grouped: HashMap<(String, Vec<String>), Select> = HashMap::new();

    for source in &pipeline.sources {
        let Some(schema) = schemas.get(&source.name) else {
            continue;
        };
        let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        for (i, key) in source.key.iter().enumerate() {
            if !columns.contains(key) {
                problems.push(unknown_column(
                    &format!("sources.{}.key[{i}]", source.name),
                    key,
                    &source.name,
                    &columns,
                ));
            }
        }
        let mut uniques: Vec<(usize, &Check)> = Vec::new();
        for (i, check) in source.checks.iter().enumerate() {
            let at = (Some(source.name.clone()), i);
            let mut known = true;
            for c in check
                .kind
                .columns()
                .into_iter()
                .chain(check.group_by.iter().map(String::as_str))
            {
                if !columns.iter().any(|x| x == c) {
                    problems.push(unknown_column(&check.path, c, &source.name, &columns));
                    known = false;
                }
            }
            if !known {
                continue;
            }
            let select = if check.group_by.is_empty() {
                scalar.entry(source.name.clone()).or_default()
            } else {
                grouped
                    .entry((source.name.clone(), check.group_by.clone()))
                    .or_default()
            };
            let rows = rows_condition(check);
            match &check.kind {
                CheckKind::Unique { .. } => uniques.push((i, check)),
                CheckKind::AcceptedValues { column, .. }
                    if check.group_by.is_empty()
                        && source
                            .checks
                            .iter()
                            .any(|u| shares_group_by(u, column, check)) =>
                {
                    // Measured by the GROUP BY of the unique check on the same column.
                    select.add(
                        count_if(&and(&rows, &format!("{} IS NOT NULL", ident(column)))),
                        &at,
                        Slot::Checked,
                    );
                }
                CheckKind::RowCount { .. } => select.add(count_if(&rows), &at, Slot::Rows),
                CheckKind::Completeness { column, .. } => {
                    select.add(count_if(&rows), &at, Slot::Rows);
                    select.add(
                        count_if(&and(&rows, &format!("{} IS NULL", ident(column)))),
                        &at,
                        Slot::Bad,
                    );
                }
                CheckKind::Freshness { column, .. } => {
                    let temporal = schema.field_with_name(column).is_ok_and(|f| {
                        matches!(
                            f.data_type(),
                            DataType::Date32 | DataType::Date64 | DataType::Timestamp(..)
                        )
                    });
                    if !temporal {
                        problems.push(
                            Problem::new(&check.path, format!("freshness needs a date or timestamp column; `{column}` is not one"))
                                .hint(format!("declare its type: `columns: {{{column}: timestamp}}` (or date)")),
                        );
                        continue;
                    }
                    select.add(count_if(&rows), &at, Slot::Rows);
                    let latest = if rows == "TRUE" {
                        format!("max({})", ident(column))
                    } else {
                        format!("max(CASE WHEN {rows} THEN {} END)", ident(column))
                    };
                    select.add(latest, &at, Slot::Latest);
                }
                CheckKind::Metric { sql, .. }
                | CheckKind::Change { sql, .. }
                | CheckKind::Anomaly { sql, .. } => {
                    if check.filter.is_none() {
                        select.add(format!("CAST(({sql}) AS DOUBLE)"), &at, Slot::Metric);
                    } else {
                        // An aggregate expression cannot take the filter inside
                        // it, so a filtered metric runs on its own.
                        let group = check.group_by.iter().map(|g| ident(g)).collect::<Vec<_>>();
                        let lead = if group.is_empty() {
                            String::new()
                        } else {
                            format!("{}, ", group.join(", "))
                        };
                        let tail = if group.is_empty() {
                            String::new()
                        } else {
                            format!(" GROUP BY {}", group.join(", "))
                        };
                        compiled.queries.push(Query::single(
                            Some(source.name.clone()),
                            format!("SELECT {lead}CAST(({sql}) AS DOUBLE) AS m0 FROM {} WHERE {rows}{tail}", source.name),
                            check.group_by.clone(),
                            vec![("m0".into(), at.clone(), Slot::Metric)],
                        ));
                    }
                }
                CheckKind::Schema { .. } => {}
                _ => {
                    let Some((checked, bad)) = row_conditions(check) else {
                        continue;
                    };
                    select.add(count_if(&rows), &at, Slot::Rows);
                    select.add(count_if(&checked), &at, Slot::Checked);
                    select.add(count_if(&bad), &at, Slot::Bad);
                }
            }
        }
        for (i, check) in uniques {
            let mut query = unique_query(source, i, check);
            if let CheckKind::Unique { columns } = &check.kind
                && let [column] = columns.as_slice()
                && check.filter.is_none()
                && query.slots.len() == 2
                && schema
                    .field_with_name(column)
                    .is_ok_and(|f| f.data_type().is_integer())
            {
                query.fast = Some(FastKeys::Unique {
                    table: source.name.clone(),
                    column: column.clone(),
                });
            }
            compiled.queries.push(query);
            let at = (Some(source.name.clone()), i);
            scalar.entry(source.name.clone()).or_default().add(
                count_if(&unique_rows(check)),
                &at,
                Slot::Checked,
            );
        }
    }

    for (i, check) in pipeline.checks.iter().enumerate() {
        let at = (None, i);
        match &check.kind {
            CheckKind::Relationship { from, to } => {
                let mut ok = true;
                for (side, (source, column)) in [("from", from), ("to", to)] {
                    match schemas.get(source) {
                        None => {
                            let names: Vec<String> =
                                pipeline.sources.iter().map(|s| s.name.clone()).collect();
                            problems.push(
                                Problem::new(
                                    format!("{}.{side}", check.path),
                                    format!("unknown source `{source}`"),
                                )
                                .hint(column_hint(source, &names)),
                            );
                            ok = false;
                        }
                        Some(schema) if schema.field_with_name(column).is_err() => {
                            let columns: Vec<String> =
                                schema.fields().iter().map(|f| f.name().clone()).collect();
                            problems.push(unknown_column(
                                &format!("{}.{side}", check.path),
                                column,
                                source,
                                &columns,
                            ));
                            ok = false;
                        }
                        _ => {}
                    }
                }
                if !ok {
                    continue;
                }
                let (checked, orphans) = relationship_conditions(check);
                let select = scalar.entry(from.0.clone()).or_default();
                select.add(count_if(&checked), &at, Slot::Checked);
                let mut query = Query::single(
                    None,
                    format!("SELECT count(*) AS m0 FROM {} AS f WHERE {orphans}", from.0),
                    Vec::new(),
                    vec![("m0".into(), at.clone(), Slot::Bad)],
                );
                query.delta = Some(Delta::Relationship {
                    from: from.clone(),
                    to: to.clone(),
                    checked: checked.clone(),
                    filter: check.filter.clone(),
                });
                let integer = |(s, c): &(String, String)| {
                    schemas
                        .get(s)
                        .and_then(|x| x.field_with_name(c).ok())
                        .is_some_and(|f| f.data_type().is_integer())
                };
                if check.filter.is_none() && integer(from) && integer(to) {
                    // A scan of the `from` keys testing each against a bitmap
                    // of the `to` keys; the anti-join stays for keys too spread
                    // for a bitmap. Its own scan, so the source's other checks
                    // need not wait for the bitmap (it decodes one column).
                    let name = in_keys_name(i);
                    ctx.register_udf(in_keys(&name, None));
                    let orphan = format!("NOT {name}({})", ident(&from.1));
                    let fallback = std::mem::replace(
                        &mut query.sql,
                        format!(
                            "SELECT {} AS m0 FROM {}",
                            count_if(&and(&checked, &orphan)),
                            from.0
                        ),
                    );
                    query.fast = Some(FastKeys::Relationship {
                        index: i,
                        to: to.clone(),
                        fallback,
                    });
                }
                compiled.queries.push(query);
            }
            CheckKind::Reconcile { left, right, .. } => {
                for (sql, slot) in [(left, Slot::Metric), (right, Slot::Right)] {
                    compiled.queries.push(Query::single(
                        None,
                        format!("SELECT CAST(v AS DOUBLE) AS m0 FROM ({sql}) AS side(v)"),
                        Vec::new(),
                        vec![("m0".into(), at.clone(), slot)],
                    ));
                }
            }
            _ => {}
        }
    }

    for (source, select) in scalar {
        if select.exprs.is_empty() {
            continue;
        }
        let rest = format!("FROM {source}");
        compiled
            .queries
            .push(Query::fused(&source, Vec::new(), select, rest));
    }
    for ((source, group_by), select) in grouped {
        let group: Vec<String> = group_by.iter().map(|g| ident(g)).collect();
        let rest = format!("FROM {source}\nGROUP BY {}", group.join(", "));
        compiled
            .queries
            .push(Query::fused(&source, group_by, select, rest));
    }

    // Plan every query: a column a `where:` or `sql:` names that does not exist,
    // or SQL that does not parse, is found now. A fused query that does not plan
    // is split, so the problem points at the check at fault.
    if problems.is_empty() {
        for q in &compiled.queries {
            if ctx.state().create_logical_plan(&q.sql).await.is_ok() {
                continue;
            }
            for single in q.split() {
                if let Err(e) = ctx.state().create_logical_plan(&single.sql).await {
                    let path = single
                        .checks()
                        .first()
                        .map(|c| check_path(pipeline, c))
                        .unwrap_or_default();
                    problems.push(
                        Problem::new(
                            path,
                            format!(
                                "the check's SQL does not plan: {}",
                                first_line(&e.to_string())
                            ),
                        )
                        .hint("check the column names and SQL in `where:` and `sql:`"),
                    );
                }
            }
        }
    }
    if problems.is_empty() {
        compiled.queries.sort_by(|a, b| a.sql.cmp(&b.sql));
        Ok(compiled)
    } else {
        Err(problems)
    }
}

/// Whether `unique` check `u` groups by exactly `column` with `check`'s filter.
fn shares_group_by(u: &Check, column: &str, check: &Check) -> bool {
    matches!(&u.kind, CheckKind::Unique { columns } if columns.len() == 1 && columns[0] == column)
        && u.filter == check.filter
        && u.group_by.is_empty()
}

/// One GROUP BY over the key: duplicated rows and keys, and the accepted values
/// of the same column (one hash aggregate serves both).
fn unique_query(source: &crate::config::Source, index: usize, check: &Check) -> Query {
    let CheckKind::Unique { columns } = &check.kind else {
        unreachable!("called for unique checks")
    };
    let at = (Some(source.name.clone()), index);
    let keys: Vec<String> = columns.iter().map(|c| ident(c)).collect();
    let mut outer = vec![
        "CAST(COALESCE(sum(CASE WHEN n > 1 THEN n ELSE 0 END), 0) AS BIGINT) AS m0".to_string(),
        "CAST(COALESCE(sum(CASE WHEN n > 1 THEN 1 ELSE 0 END), 0) AS BIGINT) AS m1".to_string(),
    ];
    let mut slots = vec![
        ("m0".to_string(), at.clone(), Slot::Bad),
        ("m1".to_string(), at.clone(), Slot::Keys),
    ];
    // The first unique check on the column measures its accepted values.
    let first = source
        .checks
        .iter()
        .position(|u| shares_group_by(u, &columns[0], check));
    if let [column] = columns.as_slice()
        && first == Some(index)
    {
        for (j, other) in source.checks.iter().enumerate() {
            if let CheckKind::AcceptedValues { column: c, .. } = &other.kind
                && c == column
                && other.group_by.is_empty()
                && shares_group_by(check, c, other)
                && let Some((_, bad)) = row_conditions(&Check {
                    filter: None,
                    ..other.clone()
                })
            {
                let alias = format!("m{}", outer.len());
                outer.push(format!(
                    "CAST(COALESCE(sum(CASE WHEN {bad} THEN n ELSE 0 END), 0) AS BIGINT) AS {alias}"
                ));
                slots.push((alias, (Some(source.name.clone()), j), Slot::Bad));
            }
        }
    }
    let mut query = Query::single(
        Some(source.name.clone()),
        format!(
            "SELECT {}\nFROM (SELECT {}, count(*) AS n FROM {} WHERE {} GROUP BY {}) AS keys",
            outer.join(", "),
            keys.join(", "),
            source.name,
            unique_rows(check),
            keys.join(", ")
        ),
        Vec::new(),
        slots,
    );
    query.delta = Some(Delta::Unique {
        source: source.name.clone(),
        keys: columns.clone(),
        rows: unique_rows(check),
        extra: outer[2..].to_vec(),
        filter: check.filter.clone(),
    });
    query
}

/// The rows a unique check judges: its `where:`, without rows whose key columns
/// are all NULL (a single key: without its NULLs).
pub fn unique_rows(check: &Check) -> String {
    let CheckKind::Unique { columns } = &check.kind else {
        return rows_condition(check);
    };
    let all_null = columns
        .iter()
        .map(|c| format!("{} IS NULL", ident(c)))
        .collect::<Vec<_>>()
        .join(" AND ");
    and(&rows_condition(check), &format!("NOT ({all_null})"))
}

/// A relationship's (rows judged, orphans) predicates over its `from` source,
/// the orphan test an anti-join (`NOT EXISTS`) against the `to` source.
pub fn relationship_conditions(check: &Check) -> (String, String) {
    let CheckKind::Relationship { from, to } = &check.kind else {
        return ("FALSE".into(), "FALSE".into());
    };
    let checked = and(
        &rows_condition(check),
        &format!("{} IS NOT NULL", ident(&from.1)),
    );
    let orphans = format!(
        "{checked} AND NOT EXISTS (SELECT 1 FROM {} AS t WHERE t.{} = f.{})",
        to.0,
        ident(&to.1),
        ident(&from.1)
    );
    (checked, orphans)
}

/// The config path of a check, for problems.
pub fn check_path(pipeline: &Pipeline, check: &CheckRef) -> String {
    lookup(pipeline, check).map_or_else(String::new, |c| c.path.clone())
}

/// The check a reference names.
pub fn lookup<'a>(pipeline: &'a Pipeline, check: &CheckRef) -> Option<&'a Check> {
    match &check.0 {
        Some(source) => pipeline
            .sources
            .iter()
            .find(|s| &s.name == source)?
            .checks
            .get(check.1),
        None => pipeline.checks.get(check.1),
    }
}

fn unknown_column(path: &str, column: &str, source: &str, columns: &[String]) -> Problem {
    Problem::new(path, format!("source `{source}` has no column `{column}`"))
        .hint(column_hint(column, columns))
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text)
}

/// Types the schema check compares, by the name `columns:` uses.
pub fn same_type(actual: &DataType, declared: &DataType) -> bool {
    match (actual, declared) {
        (DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View, DataType::Utf8) => true,
        // `timestamp` matches any unit; with or without a zone must agree.
        (DataType::Timestamp(_, a), DataType::Timestamp(_, b)) => a.is_some() == b.is_some(),
        (a, b) => a == b,
    }
}

/// How the counts of a check that reads more than one source's new rows at a
/// time follow appended files: a query over the old and the new files whose
/// results, added to the kept counts, give the counts over all files. Exact;
/// cheap when new keys fall outside the old files' key ranges (appended
/// surrogate keys), because the joins' key filters then prune the old files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delta {
    /// `unique`: each new key's rows, old and new, before and after.
    Unique {
        source: String,
        keys: Vec<String>,
        /// The rows judged (`unique_rows`).
        rows: String,
        /// Accepted values measured by the same query (`m2`...), over `n`.
        extra: Vec<String>,
        /// The check's `where:`.
        filter: Option<String>,
    },
    /// `relationship`: orphans among the new `from` rows, less the old orphans
    /// whose keys arrived in the new `to` rows.
    Relationship {
        from: (String, String),
        to: (String, String),
        /// The `from` rows judged.
        checked: String,
        /// The check's `where:`.
        filter: Option<String>,
    },
}

impl Delta {
    /// The sources whose new files the delta reads.
    pub fn sources(&self) -> Vec<String> {
        match self {
            Delta::Unique { source, .. } => vec![source.clone()],
            Delta::Relationship { from, to, .. } => vec![from.0.clone(), to.0.clone()],
        }
    }

    /// The check's `where:` and the source it filters: old rows are judged
    /// once, so it must give the same answer on every run (no subquery, no
    /// `now()`; the caller checks).
    pub fn filter(&self) -> Option<(&str, &str)> {
        match self {
            Delta::Unique { source, filter, .. } => Some((source.as_str(), filter.as_deref()?)),
            Delta::Relationship { from, filter, .. } => Some((from.0.as_str(), filter.as_deref()?)),
        }
    }

    /// The query giving, in `m0`..., what the new files add to the kept counts.
    /// Each source's files are read under the alias the check's own query
    /// gives the source, so its SQL (`where:`) applies unchanged.
    pub fn sql(&self, input: &DeltaInput) -> String {
        let table = input.table;
        match self {
            Delta::Unique {
                source,
                keys,
                rows,
                extra,
                ..
            } => {
                let list = keys.iter().map(|k| ident(k)).collect::<Vec<_>>().join(", ");
                let on = |a: &str, b: &str| {
                    keys.iter()
                        .map(|k| {
                            // A single key has no NULLs here (`unique_rows`).
                            let op = if keys.len() == 1 {
                                "="
                            } else {
                                "IS NOT DISTINCT FROM"
                            };
                            format!("({a}.{k} {op} {b}.{k})", k = ident(k))
                        })
                        .collect::<Vec<_>>()
                        .join(" AND ")
                };
                let judged = |files: Files| {
                    format!(
                        "(SELECT {list} FROM {} AS {source} WHERE {rows})",
                        table(source, files),
                    )
                };
                let d_keys: String = keys.iter().map(|k| format!("d.{}, ", ident(k))).collect();
                let o_keys: Vec<String> = keys.iter().map(|k| format!("t.{}", ident(k))).collect();
                let mut outer = vec![
                    "CAST(COALESCE(sum(CASE WHEN n + o > 1 THEN n + o ELSE 0 END) - sum(CASE WHEN o > 1 THEN o ELSE 0 END), 0) AS BIGINT) AS m0".to_string(),
                    "CAST(COALESCE(sum(CASE WHEN n + o > 1 THEN 1 ELSE 0 END) - sum(CASE WHEN o > 1 THEN 1 ELSE 0 END), 0) AS BIGINT) AS m1".to_string(),
                ];
                outer.extend(extra.iter().cloned());
                format!(
                    "SELECT {outer}\nFROM (SELECT {d_keys}d.n, COALESCE(old.o, 0) AS o\n  \
                     FROM (SELECT {list}, count(*) AS n FROM {new} AS j GROUP BY {list}) AS d\n  \
                     LEFT JOIN (SELECT {o_list}, count(*) AS o FROM {old} AS t\n    \
                     JOIN (SELECT DISTINCT {list} FROM {new} AS j) AS k ON {tk}\n    \
                     GROUP BY {o_list}) AS old ON {dold}) AS keys",
                    outer = outer.join(", "),
                    new = judged(Files::New),
                    old = judged(Files::Old),
                    o_list = o_keys.join(", "),
                    tk = on("t", "k"),
                    dold = on("d", "old"),
                )
            }
            Delta::Relationship {
                from, to, checked, ..
            } => {
                let (f, t) = (ident(&from.1), ident(&to.1));
                let orphans = format!(
                    "SELECT count(*) FROM {} AS f WHERE {checked} AND NOT EXISTS \
                     (SELECT 1 FROM {} AS t WHERE t.{t} = f.{f})",
                    table(&from.0, Files::New),
                    table(&to.0, Files::All),
                );
                // Old orphans can be resolved only by new `to` rows, if there are any.
                if input.kept.first().is_none_or(|&n| n == 0) || !(input.grew)(&to.0) {
                    return format!("SELECT CAST(({orphans}) AS BIGINT) AS m0");
                }
                let arrived = format!(
                    "SELECT n.{t} FROM {} AS n WHERE n.{t} IS NOT NULL AND NOT EXISTS \
                     (SELECT 1 FROM {} AS o WHERE o.{t} = n.{t})",
                    table(&to.0, Files::New),
                    table(&to.0, Files::Old),
                );
                let resolved = format!(
                    "SELECT count(*) FROM {} AS f WHERE {checked} AND f.{f} IN ({arrived})",
                    table(&from.0, Files::Old),
                );
                format!("SELECT CAST(({orphans}) - ({resolved}) AS BIGINT) AS m0")
            }
        }
    }
}
