//! MySQL and MariaDB sources, read with `mysql_async` directly (see docs/sources.md
//! for why not through datafusion-table-providers).

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
        message: "MySQL sources are not built yet".into(),
    })
}
