//! File sources: CSV, Parquet, JSON and NDJSON, one path or a glob of files.
//!
//! CSV and JSON are parsed by DataFusion's parallel readers once and held in
//! memory. When parsing fails, the failing file is read again on the error path
//! alone, one reader per file from its start, so the message names the file and
//! its true line rather than a line within a parallel chunk.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::csv::ReaderBuilder as CsvReaderBuilder;
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::arrow::json::ReaderBuilder as JsonReaderBuilder;
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::prelude::{
    CsvReadOptions, DataFrame, JsonReadOptions, ParquetReadOptions, SessionContext,
};

use super::{Mode, SourceError, SourceTable};
use crate::config::{CsvOptions, FileFormat, FileSource};

/// Rows read to infer a text file's column types; declared `columns:` override them.
const INFER_ROWS: usize = 1000;

pub async fn register(
    ctx: &SessionContext,
    name: &str,
    cfg: &FileSource,
    mode: Mode,
) -> Result<SourceTable, SourceError> {
    let engine = |source: DataFusionError| SourceError::Engine {
        name: name.to_string(),
        source,
    };
    let paths: Vec<String> = cfg
        .paths
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let extension = common_extension(&cfg.paths);

    let (kind, frame) = match cfg.format {
        FileFormat::Parquet => {
            let opts = ParquetReadOptions::default().file_extension(&extension);
            (
                "parquet",
                ctx.read_parquet(paths, opts).await.map_err(engine)?,
            )
        }
        FileFormat::Csv => {
            let null_regex = null_regex(&cfg.csv);
            let options = || {
                let mut o = CsvReadOptions::new()
                    .has_header(cfg.csv.header)
                    .file_extension(&extension)
                    .schema_infer_max_records(INFER_ROWS);
                o.delimiter = cfg.csv.delimiter.map_or(b',', |c| c as u8);
                o.quote = cfg.csv.quote.map_or(b'"', |c| c as u8);
                o.escape = cfg.csv.escape.map(|c| c as u8);
                o.null_regex = null_regex.clone();
                o
            };
            let inferred = ctx
                .read_csv(paths.clone(), options())
                .await
                .map_err(engine)?;
            let schema = declared_schema(name, inferred.schema().as_arrow(), cfg)?;
            (
                "csv",
                ctx.read_csv(paths, options().schema(&schema))
                    .await
                    .map_err(engine)?,
            )
        }
        FileFormat::Json | FileFormat::Ndjson => {
            let lines = cfg.format == FileFormat::Ndjson || !starts_with_array(&cfg.paths[0]);
            let options = || {
                let mut o = JsonReadOptions::default()
                    .file_extension(&extension)
                    .schema_infer_max_records(INFER_ROWS);
                o.newline_delimited = lines;
                o
            };
            let inferred = ctx
                .read_json(paths.clone(), options())
                .await
                .map_err(|e| read_error(name, &cfg.paths[0], e))?;
            let schema = declared_schema(name, inferred.schema().as_arrow(), cfg)?;
            let kind = if lines { "ndjson" } else { "json" };
            (
                kind,
                ctx.read_json(paths, options().schema(&schema))
                    .await
                    .map_err(engine)?,
            )
        }
    };

    let schema: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
    let text = cfg.format != FileFormat::Parquet;
    let (rows, in_memory) = match mode {
        Mode::Plan => {
            ctx.register_table(name, frame.into_view())
                .map_err(engine)?;
            (None, false)
        }
        Mode::Load if text => {
            let partitions = match frame.collect_partitioned().await {
                Ok(p) => p,
                Err(e) => return Err(diagnose(name, cfg, &schema, e)),
            };
            let rows = partitions
                .iter()
                .flatten()
                .map(|b| b.num_rows() as u64)
                .sum();
            let table = MemTable::try_new(schema.clone(), partitions).map_err(engine)?;
            ctx.register_table(name, Arc::new(table)).map_err(engine)?;
            (Some(rows), true)
        }
        Mode::Load => {
            // Scanned in place with projection pushdown; the row count comes from
            // the files' metadata.
            let rows = count_rows(frame.clone()).await.map_err(engine)?;
            ctx.register_table(name, frame.into_view())
                .map_err(engine)?;
            (Some(rows), false)
        }
    };
    Ok(SourceTable {
        name: name.to_string(),
        kind,
        schema,
        rows,
        in_memory,
    })
}

async fn count_rows(frame: DataFrame) -> Result<u64, DataFusionError> {
    Ok(frame.count().await? as u64)
}

/// The inferred schema with the declared `columns:` types put in.
fn declared_schema(name: &str, inferred: &Schema, cfg: &FileSource) -> Result<Schema, SourceError> {
    let mut fields: Vec<Field> = inferred
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    for (column, data_type) in &cfg.columns {
        let Some(field) = fields.iter_mut().find(|f| f.name() == column) else {
            let known: Vec<&str> = inferred
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect();
            return Err(SourceError::Config {
                name: name.to_string(),
                message: format!(
                    "`columns:` declares `{column}`, which {} does not have (its columns: {})",
                    cfg.pattern,
                    known.join(", ")
                ),
            });
        };
        *field = Field::new(column, data_type.clone(), true);
    }
    Ok(Schema::new(fields))
}

/// A regex matching exactly the configured null markers.
fn null_regex(csv: &CsvOptions) -> Option<String> {
    let values = csv.null_values.as_ref()?;
    let alternatives: Vec<String> = values.iter().map(|v| regex_escape(v)).collect();
    Some(format!("^(?:{})$", alternatives.join("|")))
}

fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The extension all files share (with its dot), which DataFusion's listing needs.
fn common_extension(paths: &[PathBuf]) -> String {
    let ext = |p: &PathBuf| {
        p.extension()
            .map(|e| format!(".{}", e.to_string_lossy()))
            .unwrap_or_default()
    };
    let first = paths.first().map(ext).unwrap_or_default();
    if paths.iter().all(|p| ext(p) == first) {
        first
    } else {
        String::new()
    }
}

/// Whether a JSON file is one array of objects (else NDJSON).
fn starts_with_array(path: &Path) -> bool {
    use std::io::Read;
    let mut buf = [0u8; 256];
    let Ok(n) = File::open(path).and_then(|mut f| f.read(&mut buf)) else {
        return false;
    };
    buf[..n].iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[')
}

/// Turns a parse failure of the parallel readers into an error naming the file
/// and line, by reading the files again one at a time from their start.
fn diagnose(
    name: &str,
    cfg: &FileSource,
    schema: &SchemaRef,
    original: DataFusionError,
) -> SourceError {
    let found = match cfg.format {
        FileFormat::Csv => cfg
            .paths
            .iter()
            .find_map(|p| first_csv_error(p, schema, &cfg.csv).map(|m| (p, m))),
        FileFormat::Json | FileFormat::Ndjson => cfg
            .paths
            .iter()
            .find_map(|p| first_ndjson_error(p, schema).map(|m| (p, m))),
        FileFormat::Parquet => None,
    };
    match found {
        Some((path, message)) => SourceError::Read {
            name: name.to_string(),
            path: path.clone(),
            message,
        },
        None => read_error(name, &cfg.paths[0], original),
    }
}

fn read_error(name: &str, path: &Path, e: DataFusionError) -> SourceError {
    let message = match e.find_root() {
        DataFusionError::ArrowError(inner, _) => inner.to_string(),
        root => root.to_string(),
    };
    SourceError::Read {
        name: name.to_string(),
        path: path.to_path_buf(),
        message,
    }
}

fn first_csv_error(path: &Path, schema: &SchemaRef, csv: &CsvOptions) -> Option<String> {
    let file = File::open(path).ok()?;
    let mut builder = CsvReaderBuilder::new(schema.clone())
        .with_header(csv.header)
        .with_delimiter(csv.delimiter.map_or(b',', |c| c as u8))
        .with_quote(csv.quote.map_or(b'"', |c| c as u8));
    if let Some(e) = csv.escape {
        builder = builder.with_escape(e as u8);
    }
    if let Some(re) = null_regex(csv).and_then(|r| regex::Regex::new(&r).ok()) {
        builder = builder.with_null_regex(re);
    }
    let reader = builder.build(file).ok()?;
    for batch in reader {
        if let Err(e) = batch {
            return Some(csv_message(&e.to_string(), csv.header));
        }
    }
    None
}

/// Arrow counts CSV lines from 0 at the first data row; people count file lines
/// from 1 with the header as line 1.
fn csv_message(arrow: &str, header: bool) -> String {
    let text = arrow
        .strip_prefix("Csv error: ")
        .or_else(|| arrow.strip_prefix("Parser error: "))
        .unwrap_or(arrow);
    let shift = if header { 2 } else { 1 };
    let renumber = |s: &str, marker: &str| -> Option<String> {
        let at = s.find(marker)? + marker.len();
        let digits: String = s[at..].chars().take_while(char::is_ascii_digit).collect();
        let line: usize = digits.parse().ok()?;
        Some(format!(
            "{}{}{}",
            &s[..at],
            line + shift,
            &s[at + digits.len()..]
        ))
    };
    let text = renumber(text, "for line ")
        .or_else(|| renumber(text, "at line "))
        .unwrap_or_else(|| text.to_string());
    match text.strip_prefix("incorrect number of fields for line ") {
        Some(rest) => {
            // "N, expected A got B"
            let (line, counts) = rest.split_once(", expected ").unwrap_or((rest, ""));
            let (expected, got) = counts.split_once(" got ").unwrap_or((counts, "?"));
            format!("line {line}: expected {expected} fields, found {got}")
        }
        None => text,
    }
}

fn first_ndjson_error(path: &Path, schema: &SchemaRef) -> Option<String> {
    let file = std::io::BufReader::new(File::open(path).ok()?);
    let reader = JsonReaderBuilder::new(schema.clone()).build(file).ok()?;
    for batch in reader {
        if let Err(e) = batch {
            return Some(e.to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ragged_row_message_counts_file_lines() {
        let msg = csv_message(
            "Csv error: incorrect number of fields for line 1, expected 9 got 8",
            true,
        );
        assert_eq!(msg, "line 3: expected 9 fields, found 8");
    }

    #[test]
    fn null_markers_become_an_anchored_regex() {
        let csv = CsvOptions {
            header: true,
            delimiter: None,
            quote: None,
            escape: None,
            null_values: Some(vec!["".into(), "N/A".into()]),
        };
        assert_eq!(null_regex(&csv).as_deref(), Some("^(?:|N/A)$"));
    }
}
