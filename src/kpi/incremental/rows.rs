//! The rows under a maintained aggregate: which plans qualify (they only
//! select, project, join and union Parquet source rows), and the same plan
//! reading only some of each source's files.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

use datafusion::catalog::TableProvider;
use datafusion::common::JoinType;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::datasource::listing::{ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::datasource::{provider_as_source, source_as_provider};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{Expr, LogicalPlan, TableScan};

use super::stored::Stamp;

/// Chooses, for the `j`th Parquet scan of a plan, the table it reads instead
/// (`None`: its files as they are).
pub(super) type Pick<'a> =
    dyn FnMut(usize, &ListingTable) -> Result<Option<Arc<dyn TableProvider>>, DataFusionError> + 'a;

/// Checks that `plan` only selects, projects, joins (inner) and unions rows of
/// Parquet sources, and lists its scans' sources in visiting order.
pub(super) fn linear(
    plan: &LogicalPlan,
    within: Option<&str>,
    files: &HashMap<String, Vec<Stamp>>,
    scans: &mut Vec<String>,
) -> Result<(), String> {
    let within = match plan {
        LogicalPlan::SubqueryAlias(a) if files.contains_key(&a.alias.table().to_lowercase()) => {
            Some(a.alias.table())
        }
        _ => within,
    };
    let mut subquery = false;
    let _ = plan.apply_expressions(|e| {
        subquery |= e.exists(|e| {
            Ok(matches!(
                e,
                Expr::ScalarSubquery(_) | Expr::Exists(_) | Expr::InSubquery(_)
            ))
        })?;
        subquery |= e.is_volatile();
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    });
    if subquery {
        return Err("a subquery or a volatile function".into());
    }
    match plan {
        LogicalPlan::TableScan(scan) => {
            if scan.fetch.is_some() {
                return Err("a scan with a LIMIT".into());
            }
            let not_a_source = || {
                format!(
                    "reads `{}`, which is not a Parquet file source",
                    scan.table_name
                )
            };
            let provider = source_as_provider(&scan.source).map_err(|e| e.to_string())?;
            let Some(table) = (provider.as_ref() as &dyn Any).downcast_ref::<ListingTable>() else {
                return Err(not_a_source());
            };
            // Named by the alias of the source's view, or (where plans were
            // rewritten without it) found by its files.
            let source = within
                .map(str::to_lowercase)
                .filter(|s| files.contains_key(s))
                .or_else(|| source_of(table, files))
                .ok_or_else(not_a_source)?;
            if table.table_paths().len() != files[&source].len()
                || !table.options().table_partition_cols.is_empty()
            {
                return Err(format!(
                    "source `{source}`: its table does not list its files one by one"
                ));
            }
            scans.push(source);
            return Ok(());
        }
        LogicalPlan::Join(join) if join.join_type != JoinType::Inner => {
            return Err(format!("a {} join", join.join_type));
        }
        LogicalPlan::Limit(_) => return Err("a LIMIT".into()),
        LogicalPlan::Distinct(_) => return Err("a DISTINCT".into()),
        LogicalPlan::Projection(_)
        | LogicalPlan::Filter(_)
        | LogicalPlan::SubqueryAlias(_)
        | LogicalPlan::Join(_)
        | LogicalPlan::Union(_)
        | LogicalPlan::Sort(_)
        | LogicalPlan::EmptyRelation(_)
        | LogicalPlan::Values(_) => {}
        other => return Err(format!("a {} node", other.display())),
    }
    if let LogicalPlan::Sort(sort) = plan
        && sort.fetch.is_some()
    {
        return Err("an ORDER BY with a LIMIT".into());
    }
    for input in plan.inputs() {
        linear(input, within, files, scans)?;
    }
    Ok(())
}

/// The source whose files `table` lists, one by one (the first by name, if
/// two sources read the same files: the same on every run).
fn source_of(table: &ListingTable, files: &HashMap<String, Vec<Stamp>>) -> Option<String> {
    let paths: Vec<&str> = table.table_paths().iter().map(|u| u.as_str()).collect();
    let mut sources: Vec<&String> = files.keys().collect();
    sources.sort();
    sources.into_iter().find_map(|source| {
        let stamps = &files[source];
        let same = stamps.len() == paths.len()
            && stamps
                .iter()
                .zip(&paths)
                .all(|(s, p)| ListingTableUrl::parse(&s.path).is_ok_and(|u| u.as_str() == *p));
        same.then(|| source.clone())
    })
}

/// `plan` with each Parquet scan `j` (in visiting order) reading what `pick`
/// returns for it, or its files as they are when `pick` returns `None`.
pub(super) fn substitute(
    plan: &LogicalPlan,
    next: &mut usize,
    pick: &mut Pick,
) -> Result<LogicalPlan, DataFusionError> {
    if let LogicalPlan::TableScan(scan) = plan {
        let j = *next;
        *next += 1;
        let provider = source_as_provider(&scan.source)?;
        let table = (provider.as_ref() as &dyn Any)
            .downcast_ref::<ListingTable>()
            .ok_or_else(|| {
                DataFusionError::Internal("a maintained scan is not a listing table".into())
            })?;
        return Ok(match pick(j, table)? {
            Some(p) => LogicalPlan::TableScan(TableScan {
                source: provider_as_source(p),
                ..scan.clone()
            }),
            None => plan.clone(),
        });
    }
    plan.clone()
        .map_children(|c| substitute(&c, next, pick).map(Transformed::yes))
        .map(|t| t.data)
}

/// `table` over `files` only, with the same schema and options.
pub(super) fn narrowed(
    table: &ListingTable,
    files: &[Stamp],
) -> Result<Arc<dyn TableProvider>, DataFusionError> {
    let urls = files
        .iter()
        .map(|f| ListingTableUrl::parse(&f.path))
        .collect::<Result<Vec<_>, _>>()?;
    if urls.is_empty() {
        let empty = datafusion::datasource::empty::EmptyTable::new(table.schema());
        return Ok(Arc::new(empty));
    }
    let config = ListingTableConfig::new_with_multi_paths(urls)
        .with_listing_options(table.options().clone())
        .with_schema(table.schema());
    Ok(Arc::new(ListingTable::try_new(config)?))
}
