//! Opening a file of any format as a stream of record batches.

use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use ferry_core::{Error, Result};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use std::io::BufRead;

use crate::compression::Codec;
use crate::format::{Format, FormatOptions};
use crate::input::Input;
use crate::schema::declared_schema;

/// The batches of one file, with the schema they all have.
pub struct BatchReader {
    schema: SchemaRef,
    location: String,
    batches: Box<dyn Iterator<Item = std::result::Result<RecordBatch, ArrowError>> + Send>,
}

impl BatchReader {
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}

impl Iterator for BatchReader {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Result<RecordBatch>> {
        let next = self.batches.next()?;
        Some(next.map_err(|e| data_error(&self.location, &self.schema, e)))
    }
}

/// Opens `input` (named `location` in errors) as `format`.
///
/// The schema is, in order: `schema` (the dataset's, when this is not its first file), the
/// declared `options.schema`, the file's own (Parquet, Avro, ORC), or one inferred from
/// the first `options.infer_rows` rows (CSV, JSON).
pub fn open_reader(
    format: Format,
    options: &FormatOptions,
    input: Input,
    location: &str,
    schema: Option<SchemaRef>,
) -> Result<BatchReader> {
    let schema = match (schema, &options.schema) {
        (Some(schema), _) => Some(schema),
        (None, Some(columns)) => Some(declared_schema(columns)?),
        (None, None) => None,
    };
    let batch_size = options.batch_size();
    let codec = Codec::from_name(location);
    if let Some(codec) = codec {
        codec.check(format, location)?;
    }
    // The bytes front to back, decompressed when the file is.
    let text = || -> Box<dyn BufRead + Send> {
        match codec {
            Some(codec) => codec.decoder(input.sequential(0), location),
            None => Box::new(input.sequential(0)),
        }
    };
    let fail = |e: &dyn std::fmt::Display| Error::data(location, e);
    let arrow_fail = |e: ArrowError| data_error(location, &Schema::empty(), e);
    let (schema, batches): (SchemaRef, Box<dyn Iterator<Item = _> + Send>) = match format {
        Format::Csv => {
            let csv = csv_format(options, location)?;
            let schema = match schema {
                Some(schema) => {
                    if !input.is_empty() {
                        check_header(
                            &csv,
                            options.header.unwrap_or(true),
                            text(),
                            &schema,
                            location,
                        )?;
                    }
                    schema
                }
                None => {
                    let rows = options.infer_rows.unwrap_or(1000);
                    let (schema, _) = csv.infer_schema(text(), Some(rows)).map_err(arrow_fail)?;
                    with_zones(schema, &csv, text(), rows).map_err(arrow_fail)?
                }
            };
            let mut builder = arrow::csv::ReaderBuilder::new(schema.clone())
                .with_format(csv)
                .with_batch_size(batch_size);
            if let Some(null) = &options.null_value {
                let regex = regex::Regex::new(&format!("^(?:{})?$", regex::escape(null)))
                    .map_err(|e| Error::invalid_option("nullValue", e))?;
                builder = builder.with_null_regex(regex);
            }
            let reader = builder.build_buffered(text()).map_err(arrow_fail)?;
            (schema, Box::new(reader))
        }
        Format::Json => {
            let schema = match schema {
                Some(schema) => schema,
                None => {
                    let rows = options.infer_rows.unwrap_or(1000);
                    let (schema, _) = arrow::json::reader::infer_json_schema(text(), Some(rows))
                        .map_err(arrow_fail)?;
                    Arc::new(schema)
                }
            };
            let reader = arrow::json::ReaderBuilder::new(schema.clone())
                .with_batch_size(batch_size)
                .build(text())
                .map_err(arrow_fail)?;
            (schema, Box::new(reader))
        }
        Format::Parquet => {
            let builder = ParquetRecordBatchReaderBuilder::try_new(input)
                .map_err(|e| fail(&format!("not a valid Parquet file: {e}")))?
                .with_batch_size(batch_size);
            let file_schema = builder.schema().clone();
            let reader = builder.build().map_err(|e| fail(&e))?;
            (file_schema, Box::new(reader))
        }
        Format::Avro => {
            let reader = arrow_avro::reader::ReaderBuilder::new()
                .with_batch_size(batch_size)
                .build(text())
                .map_err(|e| fail(&format!("not a valid Avro file: {e}")))?;
            (reader.schema(), Box::new(reader))
        }
        Format::Orc => {
            let builder = orc_rust::ArrowReaderBuilder::try_new(input)
                .map_err(|e| fail(&format!("not a valid ORC file: {e}")))?
                .with_batch_size(batch_size);
            let file_schema = builder.schema();
            (file_schema, Box::new(builder.build()))
        }
    };
    Ok(BatchReader {
        schema,
        location: location.to_string(),
        batches,
    })
}

fn csv_format(options: &FormatOptions, location: &str) -> Result<arrow::csv::reader::Format> {
    let tsv = Codec::strip(location)
        .to_ascii_lowercase()
        .ends_with(".tsv");
    let delimiter = options.byte(
        "delimiter",
        &options.delimiter,
        if tsv { b'\t' } else { b',' },
    )?;
    let mut csv = arrow::csv::reader::Format::default()
        .with_header(options.header.unwrap_or(true))
        .with_delimiter(delimiter)
        .with_quote(options.byte("quote", &options.quote, b'"')?);
    if options.escape.is_some() {
        csv = csv.with_escape(options.byte("escape", &options.escape, b'\\')?);
    }
    Ok(csv)
}

/// arrow-csv infers `2026-01-03T17:06:00Z` as a timestamp without a zone, and would write
/// it back without its `Z`. A column whose sampled values carry a zone or an offset is an
/// instant: it becomes a UTC timestamp.
fn with_zones(
    schema: Schema,
    csv: &arrow::csv::reader::Format,
    bytes: Box<dyn BufRead + Send>,
    rows: usize,
) -> std::result::Result<SchemaRef, ArrowError> {
    use arrow::array::AsArray;
    use arrow::datatypes::{DataType, Field};
    let naive: Vec<usize> = schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| matches!(f.data_type(), DataType::Timestamp(_, None)))
        .map(|(i, _)| i)
        .collect();
    if naive.is_empty() {
        return Ok(Arc::new(schema));
    }
    let text = Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| Field::new(f.name(), DataType::Utf8, true))
            .collect::<Vec<_>>(),
    );
    let sample = arrow::csv::ReaderBuilder::new(Arc::new(text))
        .with_format(csv.clone())
        .with_batch_size(rows.max(1))
        .build_buffered(bytes)?
        .next()
        .transpose()?;
    let Some(sample) = sample else {
        return Ok(Arc::new(schema));
    };
    let has_zone = |v: &str| {
        let b = v.as_bytes();
        v.ends_with('Z')
            || (b.len() > 6 && matches!(b[b.len() - 6], b'+' | b'-') && b[b.len() - 3] == b':')
    };
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    for i in naive {
        let column = sample.column(i).as_string::<i32>();
        if column.iter().flatten().next().is_some_and(has_zone) {
            if let DataType::Timestamp(unit, None) = fields[i].data_type().clone() {
                fields[i] = fields[i]
                    .clone()
                    .with_data_type(DataType::Timestamp(unit, Some("UTC".into())));
            }
        }
    }
    Ok(Arc::new(Schema::new(fields)))
}

/// A declared schema must have the columns the header names, in the same order.
fn check_header(
    csv: &arrow::csv::reader::Format,
    has_header: bool,
    text: Box<dyn BufRead + Send>,
    schema: &Schema,
    location: &str,
) -> Result<()> {
    if !has_header {
        return Ok(());
    }
    let (header, _) = csv
        .infer_schema(text, Some(0))
        .map_err(|e| Error::data(location, e))?;
    let named: Vec<&String> = header.fields().iter().map(|f| f.name()).collect();
    let declared: Vec<&String> = schema.fields().iter().map(|f| f.name()).collect();
    if named != declared {
        let show = |v: &[&String]| v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
        return Err(Error::data(
            location,
            format!(
                "the header names columns [{}] but the schema declares [{}]",
                show(&named),
                show(&declared)
            ),
        ));
    }
    Ok(())
}

/// Turns an Arrow error into one that names the file and, for CSV, the column by name.
fn data_error(location: &str, schema: &Schema, error: ArrowError) -> Error {
    let mut text = match error {
        ArrowError::ParseError(m) | ArrowError::CsvError(m) | ArrowError::JsonError(m) => m,
        ArrowError::ExternalError(e) => e.to_string(),
        other => other.to_string(),
    };
    // arrow-csv counts fields as "records"; say it the way users read a file.
    if let Some(rest) =
        text.strip_prefix("Encountered unequal lengths between records on CSV file. ")
    {
        let numbers: Vec<&str> = rest
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .collect();
        if let [expected, found, line] = numbers.as_slice() {
            text = format!(
                "line {line}: {found} fields where {expected} were expected (quote values that contain the delimiter)"
            );
        }
    }
    // arrow-csv says "Error while parsing value 'abc' as type 'Int64' for column 2 at
    // line 7. Row data: '[...]'", counting lines from 0; name the column, count lines from
    // 1, and leave the rest of the row (other people's data) out of logs.
    if let Some(rest) = text.strip_prefix("Error while parsing value '") {
        let parsed = rest.rsplit_once("' for column ").and_then(|(head, tail)| {
            let (value, data_type) = head.rsplit_once("' as type '")?;
            let (column, tail) = tail.split_once(" at line ")?;
            let line: usize = tail
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()?;
            let column = column
                .parse::<usize>()
                .ok()
                .and_then(|i| schema.fields().get(i))
                .map_or(column.to_string(), |f| f.name().clone());
            Some(format!(
                "line {}, column '{column}': cannot read '{value}' as {data_type}",
                line + 1
            ))
        });
        if let Some(parsed) = parsed {
            text = parsed;
        }
    }
    Error::data(location, text)
}
