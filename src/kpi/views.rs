//! Shared views: named SQL declared once per pipeline (`views:`) and read by
//! many KPIs. In a run each is computed once and held in memory, so the join or
//! aggregate it holds is never computed again by the KPIs that read it.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;

use super::KpiError;
use crate::config::{Pipeline, View};
use crate::source::Mode;

/// Registers every view of `pipeline`, each after the views it reads.
/// `Mode::Plan` registers them as lazy views; `Mode::Load` materialises them.
pub async fn register_all(
    ctx: &SessionContext,
    pipeline: &Pipeline,
    mode: Mode,
) -> Result<(), KpiError> {
    for view in dependency_order(ctx, &pipeline.views)? {
        let started = std::time::Instant::now();
        let fail = |source: DataFusionError| KpiError::View {
            view: view.name.clone(),
            file: file_of(view),
            source,
        };
        let frame = ctx.sql(&view.sql).await.map_err(fail)?;
        // A run plans its views lazily once (to learn what they read) before
        // materialising them: the second registration replaces the first.
        ctx.deregister_table(view.name.as_str()).map_err(fail)?;
        match mode {
            Mode::Plan => {
                ctx.register_table(view.name.as_str(), frame.into_view())
                    .map_err(fail)?;
            }
            Mode::Load => {
                let schema = Arc::new(frame.schema().as_arrow().clone());
                let partitions = crate::session::collect_partitioned(frame, &view.name)
                    .await
                    .map_err(fail)?;
                let rows: usize = partitions.iter().flatten().map(|b| b.num_rows()).sum();
                let table = MemTable::try_new(schema, partitions).map_err(fail)?;
                ctx.register_table(view.name.as_str(), Arc::new(table))
                    .map_err(fail)?;
                tracing::info!(view = %view.name, rows, ms = started.elapsed().as_millis() as u64, "view materialised");
            }
        }
    }
    Ok(())
}

fn file_of(view: &View) -> PathBuf {
    view.sql_file
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("views.{}", view.name)))
}

/// Views sorted so that each comes after the views its SQL reads.
fn dependency_order<'a>(
    ctx: &SessionContext,
    views: &'a [View],
) -> Result<Vec<&'a View>, KpiError> {
    // SQL resolves unquoted names in lower case.
    let names: HashSet<String> = views.iter().map(|v| v.name.to_lowercase()).collect();
    let mut reads: HashMap<&str, Vec<String>> = HashMap::new();
    for view in views {
        let refs = super::tables_read(ctx, &view.sql).map_err(|source| KpiError::View {
            view: view.name.clone(),
            file: file_of(view),
            source,
        })?;
        reads.insert(
            &view.name,
            refs.into_iter()
                .filter(|r| names.contains(r.as_str()))
                .collect(),
        );
    }
    let mut ordered: Vec<&View> = Vec::new();
    let mut done: HashSet<String> = HashSet::new();
    while ordered.len() < views.len() {
        let ready: Vec<&View> = views
            .iter()
            .filter(|v| !done.contains(&v.name.to_lowercase()))
            .filter(|v| reads[v.name.as_str()].iter().all(|r| done.contains(r)))
            .collect();
        if ready.is_empty() {
            let stuck: Vec<&str> = views
                .iter()
                .map(|v| v.name.as_str())
                .filter(|n| !done.contains(&n.to_lowercase()))
                .collect();
            return Err(KpiError::ViewCycle {
                views: stuck.join(", "),
            });
        }
        for v in ready {
            done.insert(v.name.to_lowercase());
            ordered.push(v);
        }
    }
    Ok(ordered)
}
