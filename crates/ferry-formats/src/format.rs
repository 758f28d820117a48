use std::fmt;
use std::str::FromStr;

use ferry_core::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::schema::ColumnSpec;

/// A file format ferry reads and writes on the record path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Csv,
    /// JSON lines: one object per line.
    #[serde(alias = "jsonl", alias = "ndjson", alias = "jsonlines")]
    Json,
    Parquet,
    Avro,
    Orc,
}

impl Format {
    pub const ALL: [Format; 5] = [
        Format::Csv,
        Format::Json,
        Format::Parquet,
        Format::Avro,
        Format::Orc,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Json => "json",
            Format::Parquet => "parquet",
            Format::Avro => "avro",
            Format::Orc => "orc",
        }
    }

    /// The extension ferry gives files it writes in this format.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Json => "jsonl",
            other => other.as_str(),
        }
    }

    /// The format a file name's extension stands for, if any.
    pub fn from_name(name: &str) -> Option<Format> {
        // `orders.csv.gz` is CSV, compressed.
        let name = crate::compression::Codec::strip(name);
        let base = name.rsplit('/').next().unwrap_or(name);
        let (_, ext) = base.rsplit_once('.')?;
        Some(match ext.to_ascii_lowercase().as_str() {
            "csv" | "tsv" => Format::Csv,
            "json" | "jsonl" | "ndjson" => Format::Json,
            "parquet" | "pq" => Format::Parquet,
            "avro" => Format::Avro,
            "orc" => Format::Orc,
            _ => return None,
        })
    }

    /// `name` with its format extension replaced by this format's (or this one's added).
    pub fn rename(self, name: &str) -> String {
        let name = crate::compression::Codec::strip(name);
        let stem = match Format::from_name(name) {
            Some(_) => &name[..name.rfind('.').unwrap_or(name.len())],
            None => name,
        };
        format!("{stem}.{}", self.extension())
    }
}

impl FormatOptions {
    /// The name of a file written in `format` in place of the one named `name`: its format
    /// extension, and `.gz` or `.zst` when these options compress CSV or JSON.
    pub fn file_name(&self, format: Format, name: &str) -> Result<String> {
        let renamed = format.rename(name);
        Ok(
            match crate::compression::Codec::for_output(format, self, &renamed)? {
                Some(codec) => format!("{renamed}.{}", codec.extension()),
                None => renamed,
            },
        )
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Format {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "jsonl" | "ndjson" | "jsonlines" => Ok(Format::Json),
            lower => Format::ALL
                .into_iter()
                .find(|f| f.as_str() == lower)
                .ok_or_else(|| {
                    Error::invalid_option(
                        "format",
                        format!(
                            "unknown format '{s}'; known: csv, json (lines), parquet, avro, orc"
                        ),
                    )
                }),
        }
    }
}

/// How a format is read or written. Every field is optional; unknown keys are errors.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FormatOptions {
    /// CSV: the first line names the columns (default true), read and written.
    pub header: Option<bool>,
    /// CSV: one character separating fields (default `,`; `\t` for .tsv files).
    pub delimiter: Option<String>,
    /// CSV: the quote character (default `"`).
    pub quote: Option<String>,
    /// CSV: an escape character inside quoted fields (default: quotes are doubled).
    pub escape: Option<String>,
    /// CSV: the text that stands for null (default: an empty field).
    pub null_value: Option<String>,
    /// CSV and JSON: rows read to infer a schema when none is declared (default 1000).
    pub infer_rows: Option<usize>,
    /// The columns and their types, instead of inferring them (CSV and JSON).
    pub schema: Option<Vec<ColumnSpec>>,
    /// Parquet: snappy (default), zstd, zstd(LEVEL), gzip, lz4, none.
    /// Avro: none (default), deflate, snappy, zstd. ORC: none (default), zstd, snappy.
    /// CSV and JSON: none (default), gzip, zstd: the whole file, named `.csv.gz`, ….
    pub compression: Option<String>,
    /// Parquet: most rows in a row group (default 1048576).
    pub row_group_size: Option<usize>,
    /// Rows per record batch moved through the pipeline (default 8192).
    pub batch_size: Option<usize>,
    /// Write columns the destination format cannot hold (ORC decimals, CSV lists) as text
    /// instead of refusing them.
    pub allow_lossy: Option<bool>,
}

impl FormatOptions {
    pub const DEFAULT_BATCH_SIZE: usize = 8192;

    pub fn batch_size(&self) -> usize {
        self.batch_size.unwrap_or(Self::DEFAULT_BATCH_SIZE).max(1)
    }

    /// Fills unset fields from `defaults` (set fields win).
    pub fn or(mut self, defaults: &FormatOptions) -> FormatOptions {
        macro_rules! fill {
            ($($f:ident),*) => { $( if self.$f.is_none() { self.$f = defaults.$f.clone(); } )* };
        }
        fill!(
            header,
            delimiter,
            quote,
            escape,
            null_value,
            infer_rows,
            schema,
            compression,
            row_group_size,
            batch_size,
            allow_lossy
        );
        self
    }

    pub(crate) fn byte(&self, name: &str, value: &Option<String>, default: u8) -> Result<u8> {
        let Some(value) = value else {
            return Ok(default);
        };
        let c = match value.as_str() {
            "\\t" | "tab" => "\t",
            other => other,
        };
        match c.as_bytes() {
            [b] => Ok(*b),
            _ => Err(Error::invalid_option(
                name,
                format!("'{value}' must be a single ASCII character"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_extensions() {
        assert_eq!(Format::from_name("a/b/orders.CSV"), Some(Format::Csv));
        assert_eq!(Format::from_name("x.ndjson"), Some(Format::Json));
        assert_eq!(Format::from_name("x.tar.gz"), None);
        assert_eq!(Format::from_name("noext"), None);
        assert_eq!(Format::Parquet.rename("logs/day1.csv"), "logs/day1.parquet");
        assert_eq!(Format::Json.rename("README"), "README.jsonl");
        assert_eq!("JSONL".parse::<Format>().unwrap(), Format::Json);
        assert!("xls"
            .parse::<Format>()
            .unwrap_err()
            .to_string()
            .contains("unknown format 'xls'"));
    }
}
