//! A text source parsed once, keeping only the columns the run's queries read.
//!
//! CSV and JSON have no column layout to skip through: every query would pay
//! for parsing the whole file. So a run parses each text source once, into
//! memory, and only the columns its KPIs, views and checks read (building the
//! others' arrays was half the load of the TPC-H CSVs, and most of its memory).
//! The table keeps the file's whole schema: a scan of columns that were not
//! parsed (a check's sample of whole rows, say) reads the file again, so a
//! column the planning did not foresee is slower to read, never missing.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::{MemTable, TableType};
use datafusion::error::Result;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

#[derive(Debug)]
pub struct ParsedTable {
    /// The file's columns, all of them.
    schema: SchemaRef,
    /// For each column of `schema`, its index in `memory`, if it was parsed.
    parsed: Vec<Option<usize>>,
    memory: MemTable,
    /// The file itself, scanned lazily.
    file: Arc<dyn TableProvider>,
    name: String,
}

impl ParsedTable {
    /// `memory` holds the columns of `schema` named in its own schema.
    pub fn new(name: &str, file: Arc<dyn TableProvider>, memory: MemTable) -> ParsedTable {
        let schema = file.schema();
        let held = memory.schema();
        let parsed = schema
            .fields()
            .iter()
            .map(|f| held.index_of(f.name()).ok())
            .collect();
        ParsedTable {
            schema,
            parsed,
            memory,
            file,
            name: name.to_string(),
        }
    }
}

#[async_trait]
impl TableProvider for ParsedTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let all: Vec<usize> = (0..self.schema.fields().len()).collect();
        let wanted = projection.unwrap_or(&all);
        match wanted.iter().map(|&i| self.parsed[i]).collect() {
            Some(in_memory) => {
                self.memory
                    .scan(state, Some(&in_memory), filters, limit)
                    .await
            }
            None => {
                let columns: Vec<&str> = wanted
                    .iter()
                    .filter(|&&i| self.parsed[i].is_none())
                    .map(|&i| self.schema.field(i).name().as_str())
                    .collect();
                tracing::debug!(source = %self.name, ?columns, "columns not parsed up front: reading the file again");
                self.file.scan(state, projection, filters, limit).await
            }
        }
    }
}
