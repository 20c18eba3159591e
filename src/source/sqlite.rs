//! SQLite sources, read with `rusqlite` directly, types from the declared column
//! types (see docs/sources.md).

use std::sync::Arc;

use datafusion::catalog::TableProvider;

use super::SourceError;
use crate::config::DatabaseSource;

/// A table provider over the source's table or query.
pub async fn provider(
    name: &str,
    cfg: &DatabaseSource,
) -> Result<Arc<dyn TableProvider>, SourceError> {
    let _ = cfg;
    Err(SourceError::Remote {
        name: name.to_string(),
        message: "SQLite sources are not built yet".into(),
    })
}
