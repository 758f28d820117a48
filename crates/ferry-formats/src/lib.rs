//! File formats on the record path: CSV, JSON lines, Parquet, Avro and ORC, read into and
//! written from Arrow record batches with the arrow-rs crates (and orc-rust for ORC).
//!
//! Readers take an [`Input`]: bytes readable at any offset, which is a local file or an
//! object read in ranges, so a footer-indexed format (Parquet, ORC) never downloads more
//! than it needs and a row format streams. Writers write to any `std::io::Write`; the
//! engine hands them one that uploads in parts. CSV, JSON lines and Avro files may be
//! compressed as a whole (`orders.csv.gz`, `events.jsonl.zst`): see [`Codec`].

mod compression;
mod format;
mod input;
mod parquet_write;
mod read;
mod schema;
mod write;

pub use compression::{Codec, CodecWriter, Counted};
pub use format::{Format, FormatOptions};
pub use input::{FileAccess, Input, RandomAccess};
pub use read::{open_reader, BatchReader};
pub use schema::{declared_schema, describe_schema, parse_type, ColumnSpec, FieldDescription};
pub use write::{open_writer, written_schema, BatchWriter};
