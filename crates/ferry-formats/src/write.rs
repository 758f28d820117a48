//! Writing record batches in a format to any `std::io::Write`.

use std::io::Write;

use std::sync::Arc;

use arrow::compute::{can_cast_types, cast};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use ferry_core::{Error, Result};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::compression::{Codec, Finish};
use crate::format::{Format, FormatOptions};

pub type Output = Box<dyn Write + Send>;

/// A Parquet row group is encoded in memory until it closes, so besides its row count it
/// closes at this many bytes: memory stays bounded however wide the rows are.
pub(crate) const ROW_GROUP_BYTES: usize = 128 << 20;

/// Writes one file, on one thread (some encoders are not `Send`). Dropping it without [`BatchWriter::finish`] leaves the output
/// incomplete, which the caller then discards.
pub trait BatchWriter {
    fn write(&mut self, batch: &RecordBatch) -> Result<()>;

    /// Writes what the format keeps for the end (a footer, buffered rows) and flushes.
    fn finish(self: Box<Self>) -> Result<()>;
}

/// Opens a writer of `format` for batches of `schema`. Types the format cannot hold
/// exactly are refused here, before any data is read.
pub fn open_writer(
    format: Format,
    options: &FormatOptions,
    schema: SchemaRef,
    out: Output,
    location: &str,
) -> Result<Box<dyn BatchWriter>> {
    let written = written_schema(format, options, &schema, location)?;
    if let Some(codec) = Codec::for_output(format, options, location)? {
        codec.check(format, location)?;
        let (shared, finish) = codec.encoder(out)?;
        let inner = open_plain(format, options, schema, written, Box::new(shared), location)?;
        return Ok(Box::new(Compressed {
            inner,
            finish,
            location: location.to_string(),
        }));
    }
    open_plain(format, options, schema, written, out, location)
}

/// A writer of `format` straight to `out`.
fn open_plain(
    format: Format,
    options: &FormatOptions,
    schema: SchemaRef,
    written: SchemaRef,
    out: Output,
    location: &str,
) -> Result<Box<dyn BatchWriter>> {
    if written != schema {
        let inner = open_plain(
            format,
            options,
            written.clone(),
            written.clone(),
            out,
            location,
        )?;
        return Ok(Box::new(Lossy {
            inner,
            schema: written,
            location: location.to_string(),
        }));
    }
    let fail = |e: &dyn std::fmt::Display| Error::data(location, e);
    Ok(match format {
        Format::Csv => {
            let tsv = Codec::strip(location)
                .to_ascii_lowercase()
                .ends_with(".tsv");
            let mut builder = arrow::csv::WriterBuilder::new()
                .with_header(options.header.unwrap_or(true))
                .with_delimiter(options.byte(
                    "delimiter",
                    &options.delimiter,
                    if tsv { b'\t' } else { b',' },
                )?)
                .with_quote(options.byte("quote", &options.quote, b'"')?);
            if options.escape.is_some() {
                builder = builder.with_double_quote(false).with_escape(options.byte(
                    "escape",
                    &options.escape,
                    b'\\',
                )?);
            }
            if let Some(null) = &options.null_value {
                builder = builder.with_null(null.clone());
            }
            Box::new(Csv {
                writer: builder.build(out),
                schema,
                wrote: false,
                location: location.to_string(),
            })
        }
        Format::Json => Encoder::boxed(
            arrow::json::LineDelimitedWriter::new(out),
            location,
            |w, batch| w.write(batch).map_err(text),
            |mut w| {
                w.finish().map_err(text)?;
                w.into_inner().flush().map_err(text)
            },
        ),
        Format::Parquet => {
            let max_rows = options.row_group_size.unwrap_or(1 << 20).max(1);
            let props = WriterProperties::builder()
                .set_compression(parquet_compression(options.compression.as_deref())?)
                .set_max_row_group_row_count(Some(max_rows))
                .set_max_row_group_bytes(Some(ROW_GROUP_BYTES))
                .build();
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
            if threads > 1 && schema.fields().len() > 1 {
                let columns = schema.fields().len();
                return Ok(Box::new(crate::parquet_write::ParallelParquet::new(
                    out,
                    schema,
                    props,
                    max_rows,
                    threads.min(columns),
                    location,
                )?));
            }
            let writer = parquet::arrow::ArrowWriter::try_new(out, schema, Some(props))
                .map_err(|e| fail(&e))?;
            Encoder::boxed(
                writer,
                location,
                |w, batch| w.write(batch).map_err(text),
                |w| w.into_inner().map_err(text)?.flush().map_err(text),
            )
        }
        Format::Avro => {
            use arrow_avro::compression::CompressionCodec;
            let codec = match options.compression.as_deref().map(str::to_ascii_lowercase) {
                None => None,
                Some(c) => match c.as_str() {
                    "none" | "null" | "uncompressed" => None,
                    "deflate" => Some(CompressionCodec::Deflate),
                    "snappy" => Some(CompressionCodec::Snappy),
                    "zstd" => Some(CompressionCodec::ZStandard),
                    _ => {
                        return Err(Error::invalid_option(
                            "compression",
                            format!("'{c}' for Avro; use none, deflate, snappy or zstd"),
                        ))
                    }
                },
            };
            let writer = arrow_avro::writer::WriterBuilder::new(schema.as_ref().clone())
                .with_compression(codec)
                .build::<_, arrow_avro::writer::format::AvroOcfFormat>(out)
                .map_err(|e| fail(&e))?;
            Encoder::boxed(
                writer,
                location,
                |w, batch| w.write(batch).map_err(text),
                |mut w| {
                    w.finish().map_err(text)?;
                    w.into_inner().flush().map_err(text)
                },
            )
        }
        Format::Orc => {
            use orc_rust::compression::CompressionType;
            let mut builder = orc_rust::ArrowWriterBuilder::new(out, schema);
            match options.compression.as_deref().map(str::to_ascii_lowercase) {
                None => {}
                Some(c) => match c.as_str() {
                    "none" | "uncompressed" => {}
                    "zstd" => builder = builder.with_compression(CompressionType::Zstd),
                    "snappy" => builder = builder.with_compression(CompressionType::Snappy),
                    "zlib" => builder = builder.with_compression(CompressionType::Zlib),
                    _ => {
                        return Err(Error::invalid_option(
                            "compression",
                            format!("'{c}' for ORC; use none, zstd, snappy or zlib"),
                        ))
                    }
                },
            }
            let writer = builder.try_build().map_err(|e| fail(&e))?;
            // orc-rust's close writes the footer and drops the output; the caller's own
            // handle on the same output flushes it.
            Encoder::boxed(
                writer,
                location,
                |w, batch| w.write(batch).map_err(text),
                |w| w.close().map_err(text),
            )
        }
    })
}

fn parquet_compression(name: Option<&str>) -> Result<Compression> {
    let Some(name) = name else {
        return Ok(Compression::SNAPPY);
    };
    let lower = name.to_ascii_lowercase();
    let bad = || {
        Error::invalid_option(
            "compression",
            format!("'{name}' for Parquet; use snappy, zstd, zstd(LEVEL), gzip, lz4 or none"),
        )
    };
    Ok(match lower.as_str() {
        "none" | "uncompressed" => Compression::UNCOMPRESSED,
        "snappy" => Compression::SNAPPY,
        "zstd" => Compression::ZSTD(ZstdLevel::default()),
        "gzip" => Compression::GZIP(Default::default()),
        "lz4" => Compression::LZ4_RAW,
        other => {
            let level = other
                .strip_prefix("zstd(")
                .and_then(|l| l.strip_suffix(')'))
                .and_then(|l| l.trim().parse::<i32>().ok())
                .ok_or_else(bad)?;
            Compression::ZSTD(ZstdLevel::try_new(level).map_err(|_| bad())?)
        }
    })
}

fn unsupported(format: Format, t: &DataType) -> bool {
    match format {
        Format::Csv => matches!(
            t,
            DataType::List(_)
                | DataType::LargeList(_)
                | DataType::FixedSizeList(..)
                | DataType::Struct(_)
                | DataType::Map(..)
                | DataType::Union(..)
        ),
        Format::Orc => {
            !matches!(
                t,
                DataType::Boolean
                    | DataType::Int8
                    | DataType::Int16
                    | DataType::Int32
                    | DataType::Int64
                    | DataType::Float32
                    | DataType::Float64
                    | DataType::Utf8
                    | DataType::LargeUtf8
                    | DataType::Binary
                    | DataType::LargeBinary
                    | DataType::Date32
            ) && !matches!(t, DataType::Timestamp(_, zone) if zone.as_deref().is_none_or(|z| z == "UTC"))
        }
        // parquet's Arrow writer has no month-day-nanosecond interval.
        Format::Parquet => match t {
            DataType::Interval(arrow::datatypes::IntervalUnit::MonthDayNano) => true,
            DataType::List(item) | DataType::LargeList(item) => {
                unsupported(format, item.data_type())
            }
            _ => false,
        },
        Format::Json | Format::Avro => false,
    }
}

/// The schema a file of `format` is written with for batches of `schema`: the same, or,
/// with `allowLossy`, with the columns the format cannot hold turned into text. Without
/// `allowLossy` such a column is an error naming it.
pub fn written_schema(
    format: Format,
    options: &FormatOptions,
    schema: &SchemaRef,
    location: &str,
) -> Result<SchemaRef> {
    let mut fields: Vec<Field> = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let t = field.data_type();
        if !unsupported(format, t) {
            fields.push(field.as_ref().clone());
            continue;
        }
        if !options.allow_lossy.unwrap_or(false) || !can_cast_types(t, &DataType::Utf8) {
            return Err(Error::not_supported(
                location,
                format!(
                    "column '{}' has type {t}, which ferry cannot write to {format} without loss; \
                     remove it, write another format, or set allowLossy to write it as text",
                    field.name()
                ),
            ));
        }
        fields.push(field.as_ref().clone().with_data_type(DataType::Utf8));
    }
    Ok(Arc::new(Schema::new_with_metadata(
        fields,
        schema.metadata().clone(),
    )))
}

/// Casts the columns a format cannot hold to text before writing (`allowLossy`).
struct Lossy {
    inner: Box<dyn BatchWriter>,
    schema: SchemaRef,
    location: String,
}

impl BatchWriter for Lossy {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let columns: Result<Vec<_>> = batch
            .columns()
            .iter()
            .zip(self.schema.fields())
            .map(|(c, f)| {
                if c.data_type() == f.data_type() {
                    Ok(c.clone())
                } else {
                    cast(c, f.data_type()).map_err(|e| Error::data(&self.location, e))
                }
            })
            .collect();
        let batch = RecordBatch::try_new(self.schema.clone(), columns?)
            .map_err(|e| Error::Internal(e.to_string()))?;
        self.inner.write(&batch)
    }

    fn finish(self: Box<Self>) -> Result<()> {
        self.inner.finish()
    }
}

/// A format's writer into a compressed stream, which ends after the format's own end.
struct Compressed {
    inner: Box<dyn BatchWriter>,
    finish: Finish,
    location: String,
}

impl BatchWriter for Compressed {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.inner.write(batch)
    }

    fn finish(self: Box<Self>) -> Result<()> {
        self.inner.finish()?;
        self.finish.finish(&self.location)
    }
}

struct Csv {
    writer: arrow::csv::Writer<Output>,
    schema: SchemaRef,
    wrote: bool,
    location: String,
}

impl BatchWriter for Csv {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.wrote = true;
        self.writer
            .write(batch)
            .map_err(|e| Error::data(&self.location, e))
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        if !self.wrote {
            // The header alone, so an empty table still says what its columns are.
            let empty = RecordBatch::new_empty(self.schema.clone());
            self.writer
                .write(&empty)
                .map_err(|e| Error::data(&self.location, e))?;
        }
        let location = self.location;
        self.writer
            .into_inner()
            .flush()
            .map_err(|e| Error::io(&location, &e))
    }
}

/// A format writer of arrow-rs or orc-rust: batches in, then a close that writes what
/// the format keeps for the end and flushes the output.
struct Encoder<W> {
    writer: W,
    location: String,
    write: fn(&mut W, &RecordBatch) -> std::result::Result<(), String>,
    close: fn(W) -> std::result::Result<(), String>,
}

impl<W> Encoder<W> {
    fn boxed(
        writer: W,
        location: &str,
        write: fn(&mut W, &RecordBatch) -> std::result::Result<(), String>,
        close: fn(W) -> std::result::Result<(), String>,
    ) -> Box<dyn BatchWriter>
    where
        W: 'static,
    {
        Box::new(Self {
            writer,
            location: location.to_string(),
            write,
            close,
        })
    }
}

impl<W> BatchWriter for Encoder<W> {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        (self.write)(&mut self.writer, batch).map_err(|e| Error::data(&self.location, e))
    }

    fn finish(self: Box<Self>) -> Result<()> {
        (self.close)(self.writer).map_err(|e| Error::data(&self.location, e))
    }
}

fn text(e: impl std::fmt::Display) -> String {
    e.to_string()
}
