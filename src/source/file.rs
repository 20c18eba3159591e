//! File sources: CSV, Parquet, JSON and NDJSON, one path or a glob of files.
//!
//! CSV and JSON are parsed by DataFusion's parallel readers once and held in
//! memory. When parsing fails, the failing file is read again on the error path
//! alone, one reader per file from its start, so the message names the file and
//! its true line rather than a line within a parallel chunk.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::csv::ReaderBuilder as CsvReaderBuilder;
use datafusion::arrow::csv::reader::Format;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::json::ReaderBuilder as JsonReaderBuilder;
use datafusion::arrow::json::reader::infer_json_schema;
use datafusion::catalog::TableProvider;
use datafusion::common::ScalarValue;
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{Expr, cast, ident, lit, when};
use datafusion::prelude::{
    CsvReadOptions, DataFrame, JsonReadOptions, ParquetReadOptions, SessionContext,
};

use super::parsed::ParsedTable;
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
    if mode == Mode::Load && cfg.format != FileFormat::Parquet {
        return load(ctx, name, cfg, None).await;
    }
    let engine = |source: DataFusionError| SourceError::Engine {
        name: name.to_string(),
        source,
    };
    let (kind, frame) = frame(ctx, name, cfg).await?;
    let schema: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
    let rows = match mode {
        Mode::Plan => None,
        // Scanned in place with projection pushdown; the row count comes from
        // the files' metadata.
        Mode::Load => Some(count_rows(frame.clone()).await.map_err(engine)?),
    };
    ctx.register_table(name, frame.into_view())
        .map_err(engine)?;
    Ok(SourceTable {
        name: name.to_string(),
        kind,
        schema,
        rows,
        in_memory: false,
        pull: None,
    })
}

/// Parses a text source once, into memory: only `columns`, when given (the
/// others are read from the file if a query asks for them; `parsed.rs`).
pub async fn load(
    ctx: &SessionContext,
    name: &str,
    cfg: &FileSource,
    columns: Option<&BTreeSet<String>>,
) -> Result<SourceTable, SourceError> {
    let engine = |source: DataFusionError| SourceError::Engine {
        name: name.to_string(),
        source,
    };
    let (kind, frame) = frame(ctx, name, cfg).await?;
    let schema: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
    let mut keep: Vec<&str> = schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .filter(|c| columns.is_none_or(|wanted| wanted.contains(*c)))
        .collect();
    if keep.is_empty() {
        // Row counts still need rows: keep the narrowest thing there is, one column.
        keep.extend(schema.fields().first().map(|f| f.name().as_str()));
    }
    let whole = keep.len() == schema.fields().len();
    let parse = if whole {
        frame.clone()
    } else {
        frame.clone().select_columns(&keep).map_err(engine)?
    };
    let parsed_schema = Arc::new(parse.schema().as_arrow().clone());
    let partitions = match parse.collect_partitioned().await {
        Ok(p) => p,
        Err(e) => return Err(diagnose(name, cfg, Some(&schema), e)),
    };
    let rows = partitions
        .iter()
        .flatten()
        .map(|b| b.num_rows() as u64)
        .sum();
    let memory = MemTable::try_new(parsed_schema, partitions).map_err(engine)?;
    let table: Arc<dyn TableProvider> = if whole {
        Arc::new(memory)
    } else {
        Arc::new(ParsedTable::new(name, frame.into_view(), memory))
    };
    // Replaces the lazy registration of a run's first pass, if there was one.
    ctx.deregister_table(name).map_err(engine)?;
    ctx.register_table(name, table).map_err(engine)?;
    Ok(SourceTable {
        name: name.to_string(),
        kind,
        schema,
        rows: Some(rows),
        in_memory: true,
        pull: None,
    })
}

/// The source as a lazy DataFrame over its files, typed as declared, and its
/// format's name.
async fn frame(
    ctx: &SessionContext,
    name: &str,
    cfg: &FileSource,
) -> Result<(&'static str, DataFrame), SourceError> {
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

    Ok(match cfg.format {
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
            let inferred = match ctx.read_csv(paths.clone(), options()).await {
                Ok(frame) => frame,
                Err(e) => return Err(diagnose(name, cfg, None, e)),
            };
            let schema = declared_schema(name, inferred.schema().as_arrow(), cfg)?;
            let frame = match &cfg.csv.null_values {
                None => ctx
                    .read_csv(paths, options().schema(&schema))
                    .await
                    .map_err(engine)?,
                // DataFusion 55's CSV scan applies `null_regex` only while inferring
                // types, not while reading: read the columns as text, then turn the
                // markers into NULL and cast, still in parallel.
                Some(markers) => {
                    let text = Schema::new(
                        schema
                            .fields()
                            .iter()
                            .map(|f| Field::new(f.name(), DataType::Utf8, true))
                            .collect::<Vec<_>>(),
                    );
                    let frame = ctx
                        .read_csv(paths, options().schema(&text))
                        .await
                        .map_err(engine)?;
                    frame
                        .select(null_markers_to_null(&schema, markers))
                        .map_err(engine)?
                }
            };
            ("csv", frame)
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
            let inferred = match ctx.read_json(paths.clone(), options()).await {
                Ok(frame) => frame,
                Err(e) => return Err(diagnose(name, cfg, None, e)),
            };
            let schema = declared_schema(name, inferred.schema().as_arrow(), cfg)?;
            let kind = if lines { "ndjson" } else { "json" };
            (
                kind,
                ctx.read_json(paths, options().schema(&schema))
                    .await
                    .map_err(engine)?,
            )
        }
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

/// For each column: NULL where the text is a null marker, else the text cast to
/// the column's type.
fn null_markers_to_null(schema: &Schema, markers: &[String]) -> Vec<Expr> {
    let markers: Vec<Expr> = markers.iter().map(|m| lit(m.as_str())).collect();
    let column = |f: &Field| -> Result<Expr, DataFusionError> {
        let text = ident(f.name());
        let null = lit(ScalarValue::try_from(f.data_type())?);
        let typed = cast(text.clone(), f.data_type().clone());
        Ok(when(text.in_list(markers.clone(), false), null)
            .otherwise(typed)?
            .alias(f.name()))
    };
    // Every type of a declared schema has a typed NULL; keep the text if not.
    schema
        .fields()
        .iter()
        .map(|f| column(f).unwrap_or_else(|_| ident(f.name())))
        .collect()
}

/// A regex matching exactly the configured null markers, and the empty field,
/// which is always NULL.
fn null_regex(csv: &CsvOptions) -> Option<String> {
    let values = csv.null_values.as_ref()?;
    let mut alternatives: Vec<String> = values.iter().map(|v| regex_escape(v)).collect();
    if !values.iter().any(String::is_empty) {
        alternatives.push(String::new());
    }
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

/// Turns a failure of the parallel readers into an error naming the file and
/// line, by reading the files again one at a time from their start: with the
/// table's `schema` once it is known, else inferring types as DataFusion did.
fn diagnose(
    name: &str,
    cfg: &FileSource,
    schema: Option<&SchemaRef>,
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
            .find_map(|p| first_json_error(p, schema).map(|m| (p, m))),
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

fn first_csv_error(path: &Path, schema: Option<&SchemaRef>, csv: &CsvOptions) -> Option<String> {
    let delimiter = csv.delimiter.map_or(b',', |c| c as u8);
    let quote = csv.quote.map_or(b'"', |c| c as u8);
    let null_regex = null_regex(csv).and_then(|r| regex::Regex::new(&r).ok());
    let Some(schema) = schema else {
        let mut format = Format::default()
            .with_header(csv.header)
            .with_delimiter(delimiter)
            .with_quote(quote);
        if let Some(re) = null_regex {
            format = format.with_null_regex(re);
        }
        return format
            .infer_schema(File::open(path).ok()?, None)
            .err()
            .map(|e| csv_message(&e.to_string(), None, csv.header));
    };
    let mut builder = CsvReaderBuilder::new(schema.clone())
        .with_header(csv.header)
        .with_delimiter(delimiter)
        .with_quote(quote);
    if let Some(e) = csv.escape {
        builder = builder.with_escape(e as u8);
    }
    if let Some(re) = null_regex {
        builder = builder.with_null_regex(re);
    }
    let reader = builder.build(File::open(path).ok()?).ok()?;
    for batch in reader {
        if let Err(e) = batch {
            return Some(csv_message(&e.to_string(), Some(schema), csv.header));
        }
    }
    None
}

/// Rewrites an Arrow CSV error as `line N: what`, counting lines as an editor does
/// (the header is line 1). Arrow counts a ragged row by file line but a value it
/// cannot parse by data row.
fn csv_message(arrow: &str, schema: Option<&SchemaRef>, header: bool) -> String {
    let text = arrow
        .strip_prefix("Csv error: ")
        .or_else(|| arrow.strip_prefix("Parser error: "))
        .unwrap_or(arrow);
    let number = |s: &str| {
        s.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse::<usize>()
            .ok()
    };
    if let Some(rest) = text.strip_prefix("incorrect number of fields for line ") {
        // "N, expected A got B"
        let (line, counts) = rest.split_once(", expected ").unwrap_or((rest, ""));
        let (expected, got) = counts.split_once(" got ").unwrap_or((counts, "?"));
        return format!("line {line}: expected {expected} fields, found {got}");
    }
    if let Some(rest) =
        text.strip_prefix("Encountered unequal lengths between records on CSV file. Expected ")
    {
        // "A records, found B records at line N" (while inferring types)
        let parsed = (|| {
            let (expected, rest) = rest.split_once(" records, found ")?;
            let (got, line) = rest.split_once(" records at line ")?;
            Some(format!(
                "line {line}: expected {expected} fields, found {got}"
            ))
        })();
        if let Some(message) = parsed {
            return message;
        }
    }
    if let Some(rest) = text.strip_prefix("Error while parsing value ") {
        // "'x' as type 'T' for column C at line N. Row data: '[..]'"
        let parsed = (|| {
            let (value, rest) = rest.split_once(" as type ")?;
            let (data_type, rest) = rest.split_once(" for column ")?;
            let column = number(rest)?;
            let line = number(rest.split_once(" at line ")?.1)? + usize::from(header);
            let name = schema
                .and_then(|s| s.fields().get(column))
                .map_or(column.to_string(), |f| format!("`{}`", f.name()));
            Some(format!(
                "line {line}, column {name}: cannot read {value} as {}; fix the value, or declare the column's type under `columns:`",
                data_type.trim_matches('\'')
            ))
        })();
        if let Some(message) = parsed {
            return message;
        }
    }
    text.to_string()
}

/// The first JSON error in a file, with its line. Arrays are checked with serde_json,
/// which knows lines and columns; NDJSON with Arrow's reader.
fn first_json_error(path: &Path, schema: Option<&SchemaRef>) -> Option<String> {
    if starts_with_array(path) {
        let text = std::fs::read_to_string(path).ok()?;
        return serde_json::from_str::<serde_json::Value>(&text)
            .err()
            .map(|e| e.to_string());
    }
    let schema = schema.cloned().or_else(|| {
        let mut lines = std::io::BufReader::new(File::open(path).ok()?);
        infer_json_schema(&mut lines, None)
            .map(|(s, _)| Arc::new(s))
            .ok()
    })?;
    let file = std::io::BufReader::new(File::open(path).ok()?);
    let reader = JsonReaderBuilder::new(schema).build(file).ok()?;
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
            "Csv error: incorrect number of fields for line 3, expected 9 got 8",
            None,
            true,
        );
        assert_eq!(msg, "line 3: expected 9 fields, found 8");
        let msg = csv_message(
            "Csv error: Encountered unequal lengths between records on CSV file. Expected 3 records, found 2 records at line 52",
            None,
            true,
        );
        assert_eq!(msg, "line 52: expected 3 fields, found 2");
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("b", DataType::Int64, true),
        ]));
        let msg = csv_message(
            "Parser error: Error while parsing value 'x' as type 'Int64' for column 1 at line 2. Row data: '[3,x]'",
            Some(&schema),
            true,
        );
        assert_eq!(
            msg,
            "line 3, column `b`: cannot read 'x' as Int64; fix the value, or declare the column's type under `columns:`"
        );
    }

    #[test]
    fn null_markers_become_an_anchored_regex() {
        let csv = CsvOptions {
            header: true,
            delimiter: None,
            quote: None,
            escape: None,
            null_values: Some(vec!["N/A".into()]),
        };
        assert_eq!(null_regex(&csv).as_deref(), Some("^(?:N/A|)$"));
    }
}
