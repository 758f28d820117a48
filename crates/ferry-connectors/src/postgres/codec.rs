//! PostgreSQL binary `COPY` ⇄ Arrow.
//!
//! [`CopyDecoder`] turns the output of `COPY … TO STDOUT (FORMAT binary)` into record batches,
//! decoding every value straight into a typed Arrow builder. [`CopyEncoder`] writes record
//! batches as the input of `COPY … FROM STDIN (FORMAT binary)`. [`PgType`] is the set of column
//! types both understand and the mapping between them and Arrow types.

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::sync::Arc;

use arrow::array::*;
use arrow::buffer::{NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::*;
use bytes::{BufMut, BytesMut};
use tokio_postgres::types::{Kind, Type};

/// Field metadata key holding [`PgType::sql`], so that a later `CREATE TABLE` can recreate the type.
const META_PG_TYPE: &str = "ferry.pg.type";
/// Field metadata key holding an enum's labels as a JSON array of strings.
const META_PG_ENUM: &str = "ferry.pg.enum";
const META_EXTENSION: &str = "ARROW:extension:name";
const UUID_EXTENSION: &str = "arrow.uuid";

/// Days from 1970-01-01 (Arrow's epoch) to 2000-01-01 (PostgreSQL's).
const PG_EPOCH_DAYS: i32 = 10_957;
/// Microseconds from 1970-01-01 to 2000-01-01.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
const MICROS_PER_DAY: i64 = 86_400_000_000;

const COPY_SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
const HEADER_LEN: usize = 19;
/// A batch is cut once its values take this many bytes, whatever its row count.
const MAX_BATCH_BYTES: usize = 16 << 20;
/// Rows the builders of the first batch have room for; later ones are sized like the last batch.
const FIRST_BATCH_CAPACITY: usize = 4096;

const NUMERIC_POS: u16 = 0x0000;
const NUMERIC_NEG: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;
const NUMERIC_PINF: u16 = 0xD000;
const NUMERIC_NINF: u16 = 0xF000;
/// Largest display scale numeric_recv accepts (NUMERIC_DSCALE_MASK).
const NUMERIC_MAX_DSCALE: i64 = 0x3FFF;

// ---------------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------------

/// A PostgreSQL column as ferry sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct PgColumn {
    pub name: String,
    pub ty: PgType,
    pub nullable: bool,
}

/// The PostgreSQL column types ferry reads and writes.
#[derive(Clone, Debug, PartialEq)]
pub enum PgType {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    /// numeric(p, s) when declared; unconstrained numeric is None.
    Numeric(Option<(u8, i8)>),
    /// text, varchar(n), char(n)/bpchar, name, citext …: anything whose binary form is UTF-8 text.
    /// `sql` is the declared type as PostgreSQL's format_type() prints it ("character varying(20)").
    Text {
        sql: String,
    },
    Bytea,
    Date,
    Time,
    Timestamp,
    Timestamptz,
    Interval,
    Uuid,
    Json,
    Jsonb,
    /// `oid` is the enum type's OID, written in the header of arrays of it; 0 when unknown
    /// (built from Arrow metadata) until the caller has created or looked up the type.
    Enum {
        sql: String,
        labels: Vec<String>,
        oid: u32,
    },
    /// One-dimensional arrays of the element type.
    Array(Box<PgType>),
}

impl PgType {
    /// From a type as tokio-postgres resolves it, its typmod (pg_attribute.atttypmod; -1 when
    /// unknown) and its format_type() text ("" when unknown).
    pub fn from_pg(ty: &Type, typmod: i32, sql: &str) -> Result<PgType, String> {
        match ty.kind() {
            // A domain's typmod lives on the domain, not the column, so the base is unconstrained.
            Kind::Domain(base) => return PgType::from_pg(base, -1, ""),
            Kind::Enum(labels) => {
                return Ok(PgType::Enum {
                    sql: or_name(sql, ty),
                    labels: labels.clone(),
                    oid: ty.oid(),
                })
            }
            Kind::Array(member) => {
                let member_sql = sql.strip_suffix("[]").unwrap_or("");
                return match PgType::from_pg(member, typmod, member_sql)? {
                    PgType::Array(_) => {
                        Err(format!("type '{}' is not supported", or_name(sql, ty)))
                    }
                    elem => Ok(PgType::Array(Box::new(elem))),
                };
            }
            _ => {}
        }
        Ok(match ty.oid() {
            16 => PgType::Bool,
            21 => PgType::Int2,
            23 => PgType::Int4,
            20 => PgType::Int8,
            700 => PgType::Float4,
            701 => PgType::Float8,
            1700 => PgType::Numeric(numeric_typmod(typmod)),
            25 | 1043 | 1042 | 19 => PgType::Text {
                sql: text_sql(ty, sql),
            },
            17 => PgType::Bytea,
            1082 => PgType::Date,
            1083 => PgType::Time,
            1114 => PgType::Timestamp,
            1184 => PgType::Timestamptz,
            1186 => PgType::Interval,
            2950 => PgType::Uuid,
            114 => PgType::Json,
            3802 => PgType::Jsonb,
            // citext is an extension type: no fixed OID, but its binary form is text's.
            _ if ty.name() == "citext" && matches!(ty.kind(), Kind::Simple) => PgType::Text {
                sql: text_sql(ty, sql),
            },
            _ => return Err(format!("type '{}' is not supported", or_name(sql, ty))),
        })
    }

    /// The type to use in CREATE TABLE ("bigint", "numeric(12,2)", "character varying(20)", …).
    pub fn sql(&self) -> String {
        match self {
            PgType::Bool => "boolean".into(),
            PgType::Int2 => "smallint".into(),
            PgType::Int4 => "integer".into(),
            PgType::Int8 => "bigint".into(),
            PgType::Float4 => "real".into(),
            PgType::Float8 => "double precision".into(),
            PgType::Numeric(None) => "numeric".into(),
            PgType::Numeric(Some((p, s))) => format!("numeric({p},{s})"),
            PgType::Text { sql } | PgType::Enum { sql, .. } => sql.clone(),
            PgType::Bytea => "bytea".into(),
            PgType::Date => "date".into(),
            PgType::Time => "time without time zone".into(),
            PgType::Timestamp => "timestamp without time zone".into(),
            PgType::Timestamptz => "timestamp with time zone".into(),
            PgType::Interval => "interval".into(),
            PgType::Uuid => "uuid".into(),
            PgType::Json => "json".into(),
            PgType::Jsonb => "jsonb".into(),
            PgType::Array(elem) => format!("{}[]", elem.sql()),
        }
    }

    /// The Arrow type values of this PostgreSQL type are decoded into.
    pub fn arrow_type(&self) -> DataType {
        match self {
            PgType::Bool => DataType::Boolean,
            PgType::Int2 => DataType::Int16,
            PgType::Int4 => DataType::Int32,
            PgType::Int8 => DataType::Int64,
            PgType::Float4 => DataType::Float32,
            PgType::Float8 => DataType::Float64,
            PgType::Numeric(Some((p, s))) if decimal128_fits(*p, *s) => {
                DataType::Decimal128(*p, *s)
            }
            PgType::Numeric(_)
            | PgType::Text { .. }
            | PgType::Json
            | PgType::Jsonb
            | PgType::Enum { .. } => DataType::Utf8,
            PgType::Bytea => DataType::Binary,
            PgType::Date => DataType::Date32,
            PgType::Time => DataType::Time64(TimeUnit::Microsecond),
            PgType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            PgType::Timestamptz => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            PgType::Interval => DataType::Interval(IntervalUnit::MonthDayNano),
            PgType::Uuid => DataType::FixedSizeBinary(16),
            PgType::Array(elem) => DataType::List(item_field(elem)),
        }
    }

    /// The PostgreSQL type a column of `field`'s Arrow type should be created as: the type
    /// recorded in the field metadata by [`PgColumn::arrow_field`] when it still matches the
    /// Arrow type, otherwise the natural mapping of the Arrow type.
    pub fn from_arrow(field: &Field) -> Result<PgType, String> {
        if let Some(sql) = field.metadata().get(META_PG_TYPE) {
            let labels = field
                .metadata()
                .get(META_PG_ENUM)
                .and_then(|j| parse_json_strings(j));
            if let Some(ty) = parse_sql(sql, labels) {
                if shape(&ty.arrow_type()) == shape(field.data_type()) {
                    return Ok(ty);
                }
            }
        }
        from_arrow_type(field)
    }

    /// The OID written in an array header when this is the element type (0 when unknown).
    pub fn element_oid(&self) -> u32 {
        match self {
            PgType::Bool => 16,
            PgType::Int2 => 21,
            PgType::Int4 => 23,
            PgType::Int8 => 20,
            PgType::Float4 => 700,
            PgType::Float8 => 701,
            PgType::Numeric(_) => 1700,
            PgType::Text { sql } => text_oid(sql),
            PgType::Bytea => 17,
            PgType::Date => 1082,
            PgType::Time => 1083,
            PgType::Timestamp => 1114,
            PgType::Timestamptz => 1184,
            PgType::Interval => 1186,
            PgType::Uuid => 2950,
            PgType::Json => 114,
            PgType::Jsonb => 3802,
            PgType::Enum { oid, .. } => *oid,
            PgType::Array(_) => 0,
        }
    }

    fn enum_labels(&self) -> Option<&[String]> {
        match self {
            PgType::Enum { labels, .. } => Some(labels),
            PgType::Array(elem) => elem.enum_labels(),
            _ => None,
        }
    }
}

impl PgColumn {
    /// The Arrow field: name, arrow_type(), nullable, and metadata recording the PostgreSQL type.
    pub fn arrow_field(&self) -> Field {
        let mut meta = HashMap::from([(META_PG_TYPE.to_string(), self.ty.sql())]);
        if let Some(labels) = self.ty.enum_labels() {
            meta.insert(META_PG_ENUM.to_string(), json_strings(labels));
        }
        if self.ty == PgType::Uuid {
            meta.insert(META_EXTENSION.to_string(), UUID_EXTENSION.to_string());
        }
        Field::new(&self.name, self.ty.arrow_type(), self.nullable).with_metadata(meta)
    }
}

fn item_field(elem: &PgType) -> FieldRef {
    Arc::new(Field::new("item", elem.arrow_type(), true))
}

/// Decimal128 holds at most 38 digits and no scale above the precision or below zero.
fn decimal128_fits(p: u8, s: i8) -> bool {
    (1..=38).contains(&p) && s >= 0 && s as u8 <= p
}

fn or_name(sql: &str, ty: &Type) -> String {
    if sql.is_empty() {
        ty.name().to_string()
    } else {
        sql.to_string()
    }
}

/// format_type() of a text-like type when the caller had none (domains, Type::from_oid).
fn text_sql(ty: &Type, sql: &str) -> String {
    match (sql, ty.name()) {
        ("", "varchar") => "character varying".into(),
        ("", name) => name.into(),
        (sql, _) => sql.into(),
    }
}

fn text_oid(sql: &str) -> u32 {
    let sql = sql.to_ascii_lowercase();
    if sql.starts_with("character varying") || sql.starts_with("varchar") {
        1043
    } else if sql.starts_with("character") || sql.starts_with("bpchar") || sql.starts_with("char") {
        1042
    } else if sql == "name" {
        19
    } else {
        25
    }
}

/// (precision, scale) of a numeric typmod; None when unconstrained or beyond what PgType holds.
fn numeric_typmod(typmod: i32) -> Option<(u8, i8)> {
    if typmod < 4 {
        return None;
    }
    let t = typmod - 4;
    let precision = (t >> 16) & 0xffff;
    // PostgreSQL 15 stores the scale as an 11-bit two's complement number.
    let scale = ((t & 0x7ff) ^ 1024) - 1024;
    Some((u8::try_from(precision).ok()?, i8::try_from(scale).ok()?))
}

fn is_string_type(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    )
}

/// The natural PostgreSQL type of an Arrow type.
fn from_arrow_type(field: &Field) -> Result<PgType, String> {
    use DataType as D;
    Ok(match field.data_type() {
        D::Boolean => PgType::Bool,
        D::Int8 | D::Int16 | D::UInt8 => PgType::Int2,
        D::Int32 | D::UInt16 => PgType::Int4,
        D::Int64 | D::UInt32 => PgType::Int8,
        D::UInt64 => PgType::Numeric(Some((20, 0))),
        D::Float16 | D::Float32 => PgType::Float4,
        D::Float64 => PgType::Float8,
        D::Decimal32(p, s) | D::Decimal64(p, s) | D::Decimal128(p, s) | D::Decimal256(p, s) => {
            if *s < 0 {
                return Err(format!(
                    "Arrow type {} (negative scale) has no PostgreSQL equivalent",
                    field.data_type()
                ));
            }
            PgType::Numeric(Some((*p, *s)))
        }
        D::Utf8 | D::LargeUtf8 | D::Utf8View => PgType::Text { sql: "text".into() },
        D::Dictionary(_, v) if is_string_type(v) => PgType::Text { sql: "text".into() },
        D::Binary | D::LargeBinary | D::BinaryView => PgType::Bytea,
        D::FixedSizeBinary(16)
            if field.metadata().get(META_EXTENSION).map(String::as_str) == Some(UUID_EXTENSION) =>
        {
            PgType::Uuid
        }
        D::FixedSizeBinary(_) => PgType::Bytea,
        D::Date32 | D::Date64 => PgType::Date,
        D::Time32(_) | D::Time64(_) => PgType::Time,
        D::Timestamp(_, None) => PgType::Timestamp,
        D::Timestamp(_, Some(_)) => PgType::Timestamptz,
        D::Interval(_) | D::Duration(_) => PgType::Interval,
        D::List(item) | D::LargeList(item) => match PgType::from_arrow(item)? {
            PgType::Array(_) => {
                return Err(format!(
                    "Arrow type {} (nested list) has no PostgreSQL equivalent",
                    field.data_type()
                ))
            }
            elem => PgType::Array(Box::new(elem)),
        },
        other => return Err(format!("Arrow type {other} has no PostgreSQL equivalent")),
    })
}

/// Arrow types reduced to what decides the PostgreSQL type, so that metadata written for
/// Utf8 still applies after a trip through LargeUtf8, Time32 for Time64 and so on.
fn shape(dt: &DataType) -> DataType {
    use DataType as D;
    match dt {
        D::LargeUtf8 | D::Utf8View => D::Utf8,
        D::Dictionary(_, v) if is_string_type(v) => D::Utf8,
        D::LargeBinary | D::BinaryView => D::Binary,
        D::Timestamp(_, tz) => {
            D::Timestamp(TimeUnit::Microsecond, tz.as_ref().map(|_| "UTC".into()))
        }
        D::Time32(_) | D::Time64(_) => D::Time64(TimeUnit::Microsecond),
        D::Date64 => D::Date32,
        D::Duration(_) | D::Interval(_) => D::Interval(IntervalUnit::MonthDayNano),
        D::Float16 => D::Float32,
        D::Decimal32(p, s) | D::Decimal64(p, s) | D::Decimal256(p, s) => D::Decimal128(*p, *s),
        D::List(f) | D::LargeList(f) => {
            D::List(Arc::new(Field::new("item", shape(f.data_type()), true)))
        }
        other => other.clone(),
    }
}

/// Parses a type name written by [`PgType::sql`] back; None when it is not one ferry handles.
fn parse_sql(sql: &str, labels: Option<Vec<String>>) -> Option<PgType> {
    let sql = sql.trim();
    if let Some(elem) = sql.strip_suffix("[]") {
        return match parse_sql(elem, labels)? {
            PgType::Array(_) => None,
            elem => Some(PgType::Array(Box::new(elem))),
        };
    }
    if let Some(labels) = labels {
        return Some(PgType::Enum {
            sql: sql.into(),
            labels,
            oid: 0,
        });
    }
    let lower = sql.to_ascii_lowercase();
    let (bare, args) = split_typmod(&lower);
    Some(match bare.as_str() {
        "boolean" | "bool" => PgType::Bool,
        "smallint" | "int2" => PgType::Int2,
        "integer" | "int" | "int4" => PgType::Int4,
        "bigint" | "int8" => PgType::Int8,
        "real" | "float4" => PgType::Float4,
        "double precision" | "float8" => PgType::Float8,
        "numeric" | "decimal" => PgType::Numeric(match args {
            None => None,
            Some(args) => Some(parse_precision_scale(args)?),
        }),
        "bytea" => PgType::Bytea,
        "date" => PgType::Date,
        "time" | "time without time zone" => PgType::Time,
        "timestamp" | "timestamp without time zone" => PgType::Timestamp,
        "timestamptz" | "timestamp with time zone" => PgType::Timestamptz,
        "uuid" => PgType::Uuid,
        "json" => PgType::Json,
        "jsonb" => PgType::Jsonb,
        "timetz" | "time with time zone" => return None,
        b if b.starts_with("interval") => PgType::Interval,
        _ => PgType::Text { sql: sql.into() },
    })
}

/// "timestamp(3) with time zone" → ("timestamp with time zone", Some("3")).
fn split_typmod(sql: &str) -> (String, Option<&str>) {
    match (sql.find('('), sql.find(')')) {
        (Some(open), Some(close)) if open < close => {
            let bare = format!("{}{}", sql[..open].trim_end(), &sql[close + 1..]);
            (bare, Some(&sql[open + 1..close]))
        }
        _ => (sql.to_string(), None),
    }
}

fn parse_precision_scale(args: &str) -> Option<(u8, i8)> {
    let mut parts = args.split(',').map(str::trim);
    let p = parts.next()?.parse().ok()?;
    let s = parts.next().map_or(Some(0), |s| s.parse().ok())?;
    parts.next().is_none().then_some((p, s))
}

/// `["a","b"]`: enum labels in field metadata.
fn json_strings(items: &[String]) -> String {
    let mut out = String::from("[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        for c in item.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if (c as u32) < 0x20 => {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push(']');
    out
}

/// Parses a JSON array of strings; None for anything else.
fn parse_json_strings(text: &str) -> Option<Vec<String>> {
    let mut chars = text.chars().peekable();
    let skip_ws = |chars: &mut std::iter::Peekable<std::str::Chars>| {
        while chars.next_if(|c| c.is_ascii_whitespace()).is_some() {}
    };
    let mut items = Vec::new();
    skip_ws(&mut chars);
    (chars.next()? == '[').then_some(())?;
    skip_ws(&mut chars);
    if chars.next_if_eq(&']').is_none() {
        loop {
            skip_ws(&mut chars);
            (chars.next()? == '"').then_some(())?;
            items.push(parse_json_string_body(&mut chars)?);
            skip_ws(&mut chars);
            match chars.next()? {
                ',' => continue,
                ']' => break,
                _ => return None,
            }
        }
    }
    skip_ws(&mut chars);
    chars.next().is_none().then_some(items)
}

/// The rest of a JSON string after its opening quote.
fn parse_json_string_body(chars: &mut impl Iterator<Item = char>) -> Option<String> {
    let mut out = String::new();
    loop {
        match chars.next()? {
            '"' => return Some(out),
            '\\' => match chars.next()? {
                c @ ('"' | '\\' | '/') => out.push(c),
                'b' => out.push('\u{8}'),
                'f' => out.push('\u{c}'),
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                't' => out.push('\t'),
                'u' => {
                    let hi = json_hex4(chars)?;
                    let code = if (0xD800..0xDC00).contains(&hi) {
                        (chars.next()? == '\\' && chars.next()? == 'u').then_some(())?;
                        let lo = json_hex4(chars)?;
                        0x10000 + ((hi - 0xD800) << 10) + (lo.checked_sub(0xDC00)? & 0x3FF)
                    } else {
                        hi
                    };
                    out.push(char::from_u32(code)?);
                }
                _ => return None,
            },
            c => out.push(c),
        }
    }
}

fn json_hex4(chars: &mut impl Iterator<Item = char>) -> Option<u32> {
    (0..4).try_fold(0, |acc, _| Some(acc * 16 + chars.next()?.to_digit(16)?))
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// A malformed COPY stream or a value that cannot be converted; the message names column and row.
#[derive(Debug, Clone, PartialEq)]
pub struct CodecError(pub String);

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CodecError {}

fn value_error(column: &str, row: u64, message: impl fmt::Display) -> CodecError {
    CodecError(format!("column '{column}', row {row}: {message}"))
}

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

/// Streaming decoder of COPY binary output.
pub struct CopyDecoder {
    names: Vec<String>,
    nullable: Vec<bool>,
    schema: SchemaRef,
    cols: Vec<Col>,
    types: Vec<PgType>,
    batch_rows: usize,
    state: State,
    /// The start of a header or tuple whose end has not arrived yet.
    tail: Vec<u8>,
    /// How far `tail` has been scanned, so a value arriving in many chunks is scanned once.
    cursor: Cursor,
    batch_len: usize,
    batch_bytes: usize,
    rows: u64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum State {
    Header,
    Tuples,
    Done,
}

/// Scan progress through a tuple: bytes known to be complete fields and how many fields they are.
#[derive(Clone, Copy, Debug, Default)]
struct Cursor {
    pos: usize,
    fields: usize,
}

/// The length of the next header or tuple, or how many more bytes are needed to learn more.
enum Extent {
    Complete(usize),
    Need(usize),
}

impl CopyDecoder {
    /// A decoder of rows of `columns`, emitting batches of `batch_rows` rows (or fewer, once
    /// their values take ~16 MiB).
    pub fn new(columns: Vec<PgColumn>, batch_rows: usize) -> CopyDecoder {
        let fields: Vec<Field> = columns.iter().map(PgColumn::arrow_field).collect();
        CopyDecoder {
            schema: Arc::new(Schema::new(fields)),
            cols: columns
                .iter()
                .map(|c| Col::new(&c.ty, FIRST_BATCH_CAPACITY.min(batch_rows), 0))
                .collect(),
            types: columns.iter().map(|c| c.ty.clone()).collect(),
            names: columns.iter().map(|c| c.name.clone()).collect(),
            nullable: columns.iter().map(|c| c.nullable).collect(),
            batch_rows: batch_rows.max(1),
            state: State::Header,
            tail: Vec::new(),
            cursor: Cursor::default(),
            batch_len: 0,
            batch_bytes: 0,
            rows: 0,
        }
    }

    /// The schema of the batches: the columns' [`PgColumn::arrow_field`]s.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Rows decoded so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Feeds the next chunk of the COPY stream (split anywhere); full batches go to `out`.
    /// Errors are final: the decoder may hold half a row afterwards.
    pub fn push(&mut self, mut chunk: &[u8], out: &mut Vec<RecordBatch>) -> Result<(), CodecError> {
        if !self.tail.is_empty() || self.state == State::Header {
            // Copy just enough of the chunk to finish the buffered unit.
            loop {
                let mut cursor = self.cursor;
                let extent = self.extent(&self.tail, &mut cursor)?;
                self.cursor = cursor;
                match extent {
                    Extent::Complete(_) => break,
                    Extent::Need(_) if chunk.is_empty() => return Ok(()),
                    Extent::Need(n) => {
                        let take = n.min(chunk.len());
                        self.tail.extend_from_slice(&chunk[..take]);
                        chunk = &chunk[take..];
                    }
                }
            }
            let tail = std::mem::take(&mut self.tail);
            let result = self.unit(&tail, out);
            self.tail = tail;
            self.tail.clear();
            self.cursor = Cursor::default();
            result?;
        }
        while !chunk.is_empty() {
            let mut cursor = Cursor::default();
            match self.extent(chunk, &mut cursor)? {
                Extent::Complete(n) => {
                    self.unit(&chunk[..n], out)?;
                    chunk = &chunk[n..];
                }
                Extent::Need(_) => {
                    self.tail.extend_from_slice(chunk);
                    self.cursor = cursor;
                    break;
                }
            }
        }
        Ok(())
    }

    /// End of stream: the trailer must have been seen. Returns the last, partial batch.
    pub fn finish(&mut self) -> Result<Option<RecordBatch>, CodecError> {
        match self.state {
            State::Done => {}
            State::Header => return Err(CodecError("COPY data ended inside the header".into())),
            State::Tuples if self.tail.is_empty() => {
                return Err(CodecError(
                    "COPY data ended without the end-of-data trailer".into(),
                ))
            }
            State::Tuples => {
                return Err(CodecError(format!(
                    "COPY data ended inside row {}",
                    self.rows + 1
                )))
            }
        }
        if self.batch_len == 0 {
            return Ok(None);
        }
        self.flush().map(Some)
    }

    /// Where the header or tuple starting at `buf[0]` ends, resuming the scan at `cursor`.
    fn extent(&self, buf: &[u8], cursor: &mut Cursor) -> Result<Extent, CodecError> {
        match self.state {
            State::Header => header_extent(buf),
            State::Done => Err(CodecError(
                "unexpected data after the COPY end-of-data trailer".into(),
            )),
            State::Tuples => tuple_extent(buf, cursor, self.cols.len(), self.rows + 1),
        }
    }

    /// Consumes one complete header, tuple or trailer.
    fn unit(&mut self, buf: &[u8], out: &mut Vec<RecordBatch>) -> Result<(), CodecError> {
        match self.state {
            State::Header => self.state = State::Tuples,
            State::Tuples if buf == [0xff, 0xff] => self.state = State::Done,
            State::Tuples => {
                self.decode_tuple(buf)?;
                if self.batch_len >= self.batch_rows || self.batch_bytes >= MAX_BATCH_BYTES {
                    out.push(self.flush()?);
                }
            }
            State::Done => unreachable!("extent() rejects data after the trailer"),
        }
        Ok(())
    }

    /// Appends the values of one complete tuple (already checked by tuple_extent) to the builders.
    fn decode_tuple(&mut self, buf: &[u8]) -> Result<(), CodecError> {
        let row = self.rows + 1;
        let mut pos = 2;
        let start = pos;
        for (i, col) in self.cols.iter_mut().enumerate() {
            let len = be_i32(buf, pos);
            pos += 4;
            if len < 0 {
                if !self.nullable[i] {
                    return Err(value_error(
                        &self.names[i],
                        row,
                        "NULL in a NOT NULL column",
                    ));
                }
                col.append_null();
                continue;
            }
            let value = &buf[pos..pos + len as usize];
            pos += value.len();
            col.append(value)
                .map_err(|m| value_error(&self.names[i], row, m))?;
        }
        self.batch_bytes += pos - start; // values and their length words: close enough
        self.rows += 1;
        self.batch_len += 1;
        Ok(())
    }

    fn flush(&mut self) -> Result<RecordBatch, CodecError> {
        // Fresh builders sized like this batch: the next one is most likely as long.
        let rows = self.batch_len;
        let arrays = (self.cols.iter_mut().zip(&self.types))
            .map(|(col, ty)| std::mem::replace(col, Col::new(ty, rows, col.data_len())).finish())
            .collect();
        let options = RecordBatchOptions::new().with_row_count(Some(self.batch_len));
        self.batch_len = 0;
        self.batch_bytes = 0;
        RecordBatch::try_new_with_options(self.schema.clone(), arrays, &options)
            .map_err(|e| CodecError(format!("cannot assemble a record batch: {e}")))
    }
}

fn be_i16(buf: &[u8], pos: usize) -> i16 {
    let b = &buf[pos..pos + 2]; // one bounds check instead of one per byte
    i16::from_be_bytes([b[0], b[1]])
}

fn be_i32(buf: &[u8], pos: usize) -> i32 {
    let b = &buf[pos..pos + 4];
    i32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Signature, flags and header extension.
fn header_extent(buf: &[u8]) -> Result<Extent, CodecError> {
    let sig_len = buf.len().min(COPY_SIGNATURE.len());
    if buf[..sig_len] != COPY_SIGNATURE[..sig_len] {
        return Err(CodecError("not binary COPY data: bad signature".into()));
    }
    if buf.len() < HEADER_LEN {
        return Ok(Extent::Need(HEADER_LEN - buf.len()));
    }
    let flags = be_i32(buf, 11) as u32;
    if flags & (1 << 16) != 0 {
        return Err(CodecError(
            "binary COPY data with OIDs is not supported".into(),
        ));
    }
    // Bits 17-31 are reserved for format changes a reader must not ignore.
    if flags >> 17 != 0 {
        return Err(CodecError(format!(
            "unknown binary COPY header flags {flags:#x}"
        )));
    }
    let extension = be_i32(buf, 15);
    if extension < 0 {
        return Err(CodecError(format!(
            "bad binary COPY header extension length {extension}"
        )));
    }
    let total = HEADER_LEN + extension as usize;
    Ok(match buf.len() < total {
        true => Extent::Need(total - buf.len()),
        false => Extent::Complete(total),
    })
}

/// Field count and field lengths of the tuple (or trailer) at `buf[0]`.
fn tuple_extent(
    buf: &[u8],
    cursor: &mut Cursor,
    ncols: usize,
    row: u64,
) -> Result<Extent, CodecError> {
    if cursor.pos == 0 {
        if buf.len() < 2 {
            return Ok(Extent::Need(2 - buf.len()));
        }
        let count = be_i16(buf, 0);
        if count == -1 {
            return Ok(Extent::Complete(2));
        }
        if count < 0 || count as usize != ncols {
            return Err(CodecError(format!(
                "row {row}: tuple has {count} fields, expected {ncols}"
            )));
        }
        cursor.pos = 2;
    }
    // Locals in the loop, the cursor written back only when stopping: this loop is hot.
    let (mut pos, mut fields) = (cursor.pos, cursor.fields);
    let extent = loop {
        if fields == ncols {
            break Extent::Complete(pos);
        }
        let Some(word) = buf.get(pos..pos + 4) else {
            break Extent::Need(pos + 4 - buf.len());
        };
        let len = i32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        let end = match len {
            -1 => pos + 4,
            len if len < 0 => {
                let field = fields + 1;
                return Err(CodecError(format!(
                    "row {row}, field {field}: bad value length {len}"
                )));
            }
            len => pos + 4 + len as usize,
        };
        if buf.len() < end {
            break Extent::Need(end - buf.len());
        }
        pos = end;
        fields += 1;
    };
    *cursor = Cursor { pos, fields };
    Ok(extent)
}

/// One column's builder; `append` decodes one binary value into it.
enum Col {
    Bool(BooleanBuilder),
    Int16(Int16Builder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    Float32(Float32Builder),
    Float64(Float64Builder),
    Decimal(Decimal128Builder, u8, i8),
    NumericText(StringBuilder, String),
    Text(StringBuilder),
    Jsonb(StringBuilder),
    Bytea(BinaryBuilder),
    Date(Date32Builder),
    Time(Time64MicrosecondBuilder),
    Timestamp(TimestampMicrosecondBuilder),
    Interval(IntervalMonthDayNanoBuilder),
    Uuid(FixedSizeBinaryBuilder),
    List(Box<ListCol>),
}

/// A list column: offsets and validity here, elements in `items`.
struct ListCol {
    item: FieldRef,
    offsets: Vec<i32>,
    nulls: NullBufferBuilder,
    items: Col,
}

impl Col {
    /// A builder with room for `rows` values and `data` bytes of variable-length values.
    fn new(ty: &PgType, rows: usize, data: usize) -> Col {
        match ty {
            PgType::Bool => Col::Bool(BooleanBuilder::with_capacity(rows)),
            PgType::Int2 => Col::Int16(Int16Builder::with_capacity(rows)),
            PgType::Int4 => Col::Int32(Int32Builder::with_capacity(rows)),
            PgType::Int8 => Col::Int64(Int64Builder::with_capacity(rows)),
            PgType::Float4 => Col::Float32(Float32Builder::with_capacity(rows)),
            PgType::Float8 => Col::Float64(Float64Builder::with_capacity(rows)),
            PgType::Numeric(Some((p, s))) if decimal128_fits(*p, *s) => Col::Decimal(
                Decimal128Builder::with_capacity(rows).with_data_type(DataType::Decimal128(*p, *s)),
                *p,
                *s,
            ),
            PgType::Numeric(_) => {
                Col::NumericText(StringBuilder::with_capacity(rows, data), String::new())
            }
            PgType::Text { .. } | PgType::Json | PgType::Enum { .. } => {
                Col::Text(StringBuilder::with_capacity(rows, data))
            }
            PgType::Jsonb => Col::Jsonb(StringBuilder::with_capacity(rows, data)),
            PgType::Bytea => Col::Bytea(BinaryBuilder::with_capacity(rows, data)),
            PgType::Date => Col::Date(Date32Builder::with_capacity(rows)),
            PgType::Time => Col::Time(Time64MicrosecondBuilder::with_capacity(rows)),
            PgType::Timestamp => Col::Timestamp(TimestampMicrosecondBuilder::with_capacity(rows)),
            PgType::Timestamptz => Col::Timestamp(
                TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC"),
            ),
            PgType::Interval => Col::Interval(IntervalMonthDayNanoBuilder::with_capacity(rows)),
            PgType::Uuid => Col::Uuid(FixedSizeBinaryBuilder::with_capacity(rows, 16)),
            PgType::Array(elem) => Col::List(Box::new(ListCol {
                item: item_field(elem),
                offsets: first_offset(rows),
                nulls: NullBufferBuilder::new(rows),
                items: Col::new(elem, rows, 0),
            })),
        }
    }

    /// Bytes of variable-length values so far.
    fn data_len(&self) -> usize {
        match self {
            Col::NumericText(b, _) | Col::Text(b) | Col::Jsonb(b) => b.values_slice().len(),
            Col::Bytea(b) => b.values_slice().len(),
            _ => 0,
        }
    }

    fn append_null(&mut self) {
        match self {
            Col::Bool(b) => b.append_null(),
            Col::Int16(b) => b.append_null(),
            Col::Int32(b) => b.append_null(),
            Col::Int64(b) => b.append_null(),
            Col::Float32(b) => b.append_null(),
            Col::Float64(b) => b.append_null(),
            Col::Decimal(b, ..) => b.append_null(),
            Col::NumericText(b, _) | Col::Text(b) | Col::Jsonb(b) => b.append_null(),
            Col::Bytea(b) => b.append_null(),
            Col::Date(b) => b.append_null(),
            Col::Time(b) => b.append_null(),
            Col::Timestamp(b) => b.append_null(),
            Col::Interval(b) => b.append_null(),
            Col::Uuid(b) => b.append_null(),
            Col::List(l) => {
                let last = *l.offsets.last().unwrap_or(&0);
                l.offsets.push(last);
                l.nulls.append_null();
            }
        }
    }

    /// Decodes one non-NULL value; the error says what is wrong with it.
    fn append(&mut self, v: &[u8]) -> Result<(), String> {
        match self {
            Col::Bool(b) => b.append_value(fixed::<1>(v, "boolean")?[0] != 0),
            Col::Int16(b) => b.append_value(i16::from_be_bytes(fixed(v, "smallint")?)),
            Col::Int32(b) => b.append_value(i32::from_be_bytes(fixed(v, "integer")?)),
            Col::Int64(b) => b.append_value(i64::from_be_bytes(fixed(v, "bigint")?)),
            Col::Float32(b) => b.append_value(f32::from_be_bytes(fixed(v, "real")?)),
            Col::Float64(b) => b.append_value(f64::from_be_bytes(fixed(v, "double precision")?)),
            Col::Decimal(b, p, s) => append_decimal(b, *p, *s, v)?,
            Col::NumericText(b, scratch) => append_numeric_text(b, scratch, v)?,
            Col::Text(b) => b.append_value(utf8(v)?),
            Col::Jsonb(b) => append_jsonb(b, v)?,
            Col::Bytea(b) => b.append_value(v),
            Col::Date(b) => b.append_value(date_from_pg(i32::from_be_bytes(fixed(v, "date")?))?),
            Col::Time(b) => b.append_value(i64::from_be_bytes(fixed(v, "time")?)),
            Col::Timestamp(b) => b.append_value(timestamp_from_pg(i64::from_be_bytes(fixed(
                v,
                "timestamp",
            )?))?),
            Col::Interval(b) => b.append_value(interval_from_pg(fixed(v, "interval")?)?),
            Col::Uuid(b) => append_uuid(b, v)?,
            Col::List(l) => l.append(v)?,
        }
        Ok(())
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Col::Bool(b) => Arc::new(b.finish()),
            Col::Int16(b) => Arc::new(b.finish()),
            Col::Int32(b) => Arc::new(b.finish()),
            Col::Int64(b) => Arc::new(b.finish()),
            Col::Float32(b) => Arc::new(b.finish()),
            Col::Float64(b) => Arc::new(b.finish()),
            Col::Decimal(b, ..) => Arc::new(b.finish()),
            Col::NumericText(b, _) | Col::Text(b) | Col::Jsonb(b) => Arc::new(b.finish()),
            Col::Bytea(b) => Arc::new(b.finish()),
            Col::Date(b) => Arc::new(b.finish()),
            Col::Time(b) => Arc::new(b.finish()),
            Col::Timestamp(b) => Arc::new(b.finish()),
            Col::Interval(b) => Arc::new(b.finish()),
            Col::Uuid(b) => Arc::new(b.finish()),
            Col::List(l) => {
                let offsets = std::mem::replace(&mut l.offsets, vec![0]);
                let offsets = OffsetBuffer::new(ScalarBuffer::from(offsets));
                Arc::new(ListArray::new(
                    l.item.clone(),
                    offsets,
                    l.items.finish(),
                    l.nulls.finish(),
                ))
            }
        }
    }
}

// The less common decoders stay out of line so that Col::append stays small and fast.

#[inline(never)]
fn append_decimal(b: &mut Decimal128Builder, p: u8, s: i8, v: &[u8]) -> Result<(), String> {
    b.append_value(Numeric::parse(v)?.to_i128(p, s)?);
    Ok(())
}

#[inline(never)]
fn append_numeric_text(
    b: &mut StringBuilder,
    scratch: &mut String,
    v: &[u8],
) -> Result<(), String> {
    Numeric::parse(v)?.write_text(scratch)?;
    b.append_value(&*scratch);
    Ok(())
}

/// jsonb's binary form is a version byte (1) and the JSON text.
#[inline(never)]
fn append_jsonb(b: &mut StringBuilder, v: &[u8]) -> Result<(), String> {
    match v.split_first() {
        Some((1, text)) => b.append_value(utf8(text)?),
        Some((version, _)) => return Err(format!("unsupported jsonb format version {version}")),
        None => return Err("empty jsonb value".into()),
    }
    Ok(())
}

#[inline(never)]
fn append_uuid(b: &mut FixedSizeBinaryBuilder, v: &[u8]) -> Result<(), String> {
    b.append_value(fixed::<16>(v, "uuid")?)
        .map_err(|e| e.to_string())
}

/// List offsets with room for `rows` lists, starting at 0.
fn first_offset(rows: usize) -> Vec<i32> {
    let mut offsets = Vec::with_capacity(rows + 1);
    offsets.push(0);
    offsets
}

impl ListCol {
    /// Array binary form: ndim, has-null flag, element OID, (length, lower bound) per dimension,
    /// then the elements as length-prefixed values.
    fn append(&mut self, v: &[u8]) -> Result<(), String> {
        let mut r = Reader(v);
        let ndim = r.i32()?;
        let _has_nulls = r.i32()?;
        let _element_oid = r.i32()?;
        let len = match ndim {
            0 => 0,
            1 => {
                let len = r.i32()?;
                let _lower_bound = r.i32()?;
                usize::try_from(len).map_err(|_| format!("bad array length {len}"))?
            }
            n if n > 1 => return Err(format!("{n}-dimensional arrays are not supported")),
            n => return Err(format!("bad array dimension count {n}")),
        };
        for _ in 0..len {
            match r.i32()? {
                -1 => self.items.append_null(),
                n if n < 0 => return Err(format!("bad array element length {n}")),
                n => self.items.append(r.take(n as usize)?)?,
            }
        }
        if !r.0.is_empty() {
            return Err("array value has trailing bytes".into());
        }
        let last = *self.offsets.last().unwrap_or(&0);
        let end = i32::try_from(len)
            .ok()
            .and_then(|n| last.checked_add(n))
            .ok_or("more array elements in one batch than an Arrow List holds")?;
        self.offsets.push(end);
        self.nulls.append_non_null();
        Ok(())
    }
}

/// Big-endian reads from inside a value; running out means the value is malformed.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("value is truncated".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn i32(&mut self) -> Result<i32, String> {
        Ok(be_i32(self.take(4)?, 0))
    }
}

#[inline]
fn fixed<const N: usize>(v: &[u8], ty: &str) -> Result<[u8; N], String> {
    match <[u8; N]>::try_from(v) {
        Ok(bytes) => Ok(bytes),
        Err(_) => Err(bad_length(ty, v.len(), N)),
    }
}

#[cold]
#[inline(never)]
fn bad_length(ty: &str, len: usize, expected: usize) -> String {
    format!("{ty} value has {len} bytes, expected {expected}")
}

fn utf8(v: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(v).map_err(|e| format!("invalid UTF-8 in text value: {e}"))
}

/// PostgreSQL's ±infinity (i32::MAX/MIN) stay sentinels; other dates move to the Unix epoch.
fn date_from_pg(days: i32) -> Result<i32, String> {
    match days {
        i32::MAX | i32::MIN => Ok(days),
        _ => days
            .checked_add(PG_EPOCH_DAYS)
            .ok_or_else(|| format!("date {days} is out of Date32's range")),
    }
}

fn timestamp_from_pg(micros: i64) -> Result<i64, String> {
    match micros {
        i64::MAX | i64::MIN => Ok(micros),
        _ => micros
            .checked_add(PG_EPOCH_MICROS)
            .ok_or_else(|| format!("timestamp {micros} is out of range")),
    }
}

/// Binary interval: i64 microseconds, i32 days, i32 months. PostgreSQL 17's ±infinity (every
/// field at its extreme) maps to the same extremes in Arrow.
fn interval_from_pg(v: [u8; 16]) -> Result<IntervalMonthDayNano, String> {
    let micros = be_i64(&v[..8]);
    let days = be_i32(&v, 8);
    let months = be_i32(&v, 12);
    match (months, days, micros) {
        (i32::MAX, i32::MAX, i64::MAX) => {
            return Ok(IntervalMonthDayNano::new(months, days, i64::MAX))
        }
        (i32::MIN, i32::MIN, i64::MIN) => {
            return Ok(IntervalMonthDayNano::new(months, days, i64::MIN))
        }
        _ => {}
    }
    let nanos = micros.checked_mul(1000).ok_or_else(|| {
        format!("interval of {micros} microseconds overflows Arrow's nanoseconds")
    })?;
    Ok(IntervalMonthDayNano::new(months, days, nanos))
}

fn be_i64(v: &[u8]) -> i64 {
    i64::from_be_bytes([v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]])
}

/// 10^0 ..= 10^38, the powers a Decimal128 scale can need.
const POW10: [i128; 39] = {
    let mut table = [1i128; 39];
    let mut i = 1;
    while i < 39 {
        table[i] = table[i - 1] * 10;
        i += 1;
    }
    table
};

/// A numeric value in PostgreSQL's binary form: base-10000 digits, value = Σ digit[i]·10000^(weight−i).
struct Numeric<'a> {
    weight: i16,
    sign: u16,
    dscale: u16,
    digits: &'a [u8],
}

impl<'a> Numeric<'a> {
    fn parse(v: &'a [u8]) -> Result<Numeric<'a>, String> {
        if v.len() < 8 {
            return Err(format!(
                "numeric value has {} bytes, expected at least 8",
                v.len()
            ));
        }
        let ndigits = be_i16(v, 0);
        if ndigits < 0 || v.len() != 8 + 2 * ndigits as usize {
            return Err(format!(
                "numeric value has {} bytes for {ndigits} digits",
                v.len()
            ));
        }
        let sign = be_i16(v, 4) as u16;
        if ![
            NUMERIC_POS,
            NUMERIC_NEG,
            NUMERIC_NAN,
            NUMERIC_PINF,
            NUMERIC_NINF,
        ]
        .contains(&sign)
        {
            return Err(format!("numeric value has bad sign {sign:#x}"));
        }
        Ok(Numeric {
            weight: be_i16(v, 2),
            sign,
            dscale: be_i16(v, 6) as u16,
            digits: &v[8..],
        })
    }

    fn ndigits(&self) -> usize {
        self.digits.len() / 2
    }

    /// Digit `i`, 0 outside the stored digits (leading and trailing zero groups are not stored).
    fn digit(&self, i: i64) -> Result<u16, String> {
        if i < 0 || i >= self.ndigits() as i64 {
            return Ok(0);
        }
        let d = be_i16(self.digits, 2 * i as usize) as u16;
        if d >= 10000 {
            return Err(format!("numeric value has bad base-10000 digit {d}"));
        }
        Ok(d)
    }

    fn special(&self) -> Option<&'static str> {
        match self.sign {
            NUMERIC_NAN => Some("NaN"),
            NUMERIC_PINF => Some("Infinity"),
            NUMERIC_NINF => Some("-Infinity"),
            _ => None,
        }
    }

    /// The value scaled by 10^scale, which must be exact and below 10^precision.
    fn to_i128(&self, precision: u8, scale: i8) -> Result<i128, String> {
        let target = || format!("Decimal128({precision},{scale})");
        if let Some(special) = self.special() {
            return Err(format!("{special} cannot be stored as {}", target()));
        }
        let overflow = || format!("numeric value does not fit in {}", target());
        let (n, weight, s) = (self.ndigits() as i64, self.weight as i64, scale as i64);
        // Group i's units digit sits at 10^(4·(weight−i)+s) in the scaled integer; groups with a
        // non-negative exponent are whole, the next may need a division, the rest must be zero.
        let whole = (weight + s / 4 + 1).clamp(0, n);
        // The magnitude in u128: its overflow checks compile inline, i128's call a library.
        let mut acc: u128 = 0;
        for i in 0..whole {
            let d = u128::from(self.digit(i)?);
            acc = acc
                .checked_mul(10_000)
                .and_then(|a| a.checked_add(d))
                .ok_or_else(overflow)?;
        }
        if whole > 0 && acc != 0 {
            let exp = 4 * (weight - (whole - 1)) + s;
            let factor = POW10.get(exp as usize).ok_or_else(overflow)?;
            acc = acc.checked_mul(*factor as u128).ok_or_else(overflow)?;
        }
        for i in whole..n {
            let (d, exp) = (u32::from(self.digit(i)?), 4 * (weight - i) + s);
            let div = if exp > -4 {
                10u32.pow((-exp) as u32)
            } else {
                u32::MAX
            };
            if d % div != 0 {
                return Err(format!(
                    "numeric value has more than {scale} decimal places for {}",
                    target()
                ));
            }
            acc += u128::from(d / div);
        }
        if acc >= POW10[precision as usize] as u128 {
            return Err(overflow());
        }
        let acc = acc as i128; // below 10^38
        Ok(if self.sign == NUMERIC_NEG { -acc } else { acc })
    }

    /// The text numeric_out prints: "-12.50", "0.0001", "NaN", "Infinity".
    fn write_text(&self, out: &mut String) -> Result<(), String> {
        out.clear();
        if let Some(special) = self.special() {
            out.push_str(special);
            return Ok(());
        }
        if self.sign == NUMERIC_NEG {
            out.push('-');
        }
        let weight = self.weight as i64;
        if weight < 0 {
            out.push('0');
        }
        for i in 0..=weight {
            let d = self.digit(i)?;
            if i == 0 {
                let _ = write!(out, "{d}");
            } else {
                push_digits(out, d, 4);
            }
        }
        if self.dscale > 0 {
            out.push('.');
            let mut left = self.dscale as usize;
            let mut i = weight + 1;
            while left > 0 {
                push_digits(out, self.digit(i)?, left.min(4));
                left = left.saturating_sub(4);
                i += 1;
            }
        }
        Ok(())
    }
}

/// The first `count` of the 4 zero-padded decimal digits of a base-10000 digit.
fn push_digits(out: &mut String, d: u16, count: usize) {
    for div in [1000, 100, 10, 1].into_iter().take(count) {
        out.push((b'0' + (d / div % 10) as u8) as char);
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------

/// Encoder of COPY binary input. Arrow columns are matched to `target` by position; the target
/// types decide the wire format. After an error the output is unusable (the row is half written).
pub struct CopyEncoder {
    target: Vec<PgColumn>,
    rows: u64,
}

impl CopyEncoder {
    /// Checks that every Arrow column of `schema` can be written into its target column.
    pub fn new(target: Vec<PgColumn>, schema: &Schema) -> Result<CopyEncoder, CodecError> {
        if schema.fields().len() != target.len() {
            return Err(CodecError(format!(
                "{} Arrow columns cannot be written into {} PostgreSQL columns",
                schema.fields().len(),
                target.len()
            )));
        }
        if target.len() > i16::MAX as usize {
            return Err(CodecError(format!(
                "{} columns are more than COPY allows",
                target.len()
            )));
        }
        for (col, field) in target.iter().zip(schema.fields()) {
            // array_recv rejects arrays whose element OID is not the column's element type.
            if let PgType::Array(elem) = &col.ty {
                if elem.element_oid() == 0 {
                    return Err(CodecError(format!(
                        "column '{}': the OID of element type {} is unknown",
                        col.name,
                        elem.sql()
                    )));
                }
            }
            Writer::new(&col.ty, &new_empty_array(field.data_type()))
                .ok_or_else(|| cannot_write(col, field.data_type()))?;
        }
        Ok(CopyEncoder { target, rows: 0 })
    }

    /// The 19-byte signature + flags + header extension.
    pub fn header(out: &mut BytesMut) {
        out.put_slice(COPY_SIGNATURE);
        out.put_i32(0);
        out.put_i32(0);
    }

    /// Appends the rows of `batch`; errors name the column and the row (1-based, counted across
    /// all batches of this encoder).
    pub fn encode(&mut self, batch: &RecordBatch, out: &mut BytesMut) -> Result<(), CodecError> {
        if batch.num_columns() != self.target.len() {
            return Err(CodecError(format!(
                "batch has {} columns, expected {}",
                batch.num_columns(),
                self.target.len()
            )));
        }
        let mut writers = Vec::with_capacity(self.target.len());
        for (col, array) in self.target.iter().zip(batch.columns()) {
            writers.push(
                Writer::new(&col.ty, array).ok_or_else(|| cannot_write(col, array.data_type()))?,
            );
        }
        let ncols = self.target.len() as i16;
        for i in 0..batch.num_rows() {
            let row = self.rows + 1;
            out.put_i16(ncols);
            for (writer, col) in writers.iter_mut().zip(&self.target) {
                if !col.nullable && writer.is_null(i) {
                    return Err(value_error(&col.name, row, "NULL in a NOT NULL column"));
                }
                writer
                    .write(i, out)
                    .map_err(|m| value_error(&col.name, row, m))?;
            }
            self.rows += 1;
        }
        Ok(())
    }

    /// The -1 trailer.
    pub fn trailer(out: &mut BytesMut) {
        out.put_i16(-1);
    }
}

fn cannot_write(col: &PgColumn, dt: &DataType) -> CodecError {
    CodecError(format!(
        "column '{}': cannot write Arrow type {dt} into PostgreSQL type {}",
        col.name,
        col.ty.sql()
    ))
}

/// Writes the length word and bytes of row `i`, which is not NULL.
trait Put {
    fn put(&mut self, i: usize, out: &mut BytesMut) -> Result<(), String>;
}

/// One Arrow column ready to be written as a PostgreSQL type.
struct Writer {
    put: Box<dyn Put>,
    nulls: Option<NullBuffer>,
}

impl Writer {
    /// None when `array`'s type cannot be written as `ty`.
    fn new(ty: &PgType, array: &ArrayRef) -> Option<Writer> {
        Some(Writer {
            put: make_put(ty, array)?,
            nulls: array.logical_nulls(),
        })
    }

    fn is_null(&self, i: usize) -> bool {
        self.nulls.as_ref().is_some_and(|n| n.is_null(i))
    }

    fn write(&mut self, i: usize, out: &mut BytesMut) -> Result<(), String> {
        if self.is_null(i) {
            out.put_i32(-1);
            return Ok(());
        }
        self.put.put(i, out)
    }
}

/// Runs `$body` with `$T` naming the Arrow type of the integer type `$dt`; None for others.
macro_rules! with_int_type {
    ($dt:expr, $T:ident => $body:expr) => {
        match $dt {
            DataType::Int8 => {
                type $T = Int8Type;
                Some($body)
            }
            DataType::Int16 => {
                type $T = Int16Type;
                Some($body)
            }
            DataType::Int32 => {
                type $T = Int32Type;
                Some($body)
            }
            DataType::Int64 => {
                type $T = Int64Type;
                Some($body)
            }
            DataType::UInt8 => {
                type $T = UInt8Type;
                Some($body)
            }
            DataType::UInt16 => {
                type $T = UInt16Type;
                Some($body)
            }
            DataType::UInt32 => {
                type $T = UInt32Type;
                Some($body)
            }
            DataType::UInt64 => {
                type $T = UInt64Type;
                Some($body)
            }
            _ => None,
        }
    };
}

/// The writer of `array` as `ty`; None when that pair is not supported.
fn make_put(ty: &PgType, array: &ArrayRef) -> Option<Box<dyn Put>> {
    use DataType as D;
    let dt = array.data_type();
    match ty {
        PgType::Bool => match dt {
            D::Boolean => Some(Box::new(BoolPut(array.as_boolean().clone()))),
            _ => None,
        },
        PgType::Int2 => int_put(array, 2),
        PgType::Int4 => int_put(array, 4),
        PgType::Int8 => int_put(array, 8),
        PgType::Float4 => match dt {
            D::Float16 => Some(prim::<Float16Type, _>(array, |v, out| {
                put_f32(f32::from(v), out)
            })),
            D::Float32 => Some(prim::<Float32Type, _>(array, put_f32)),
            _ => None,
        },
        PgType::Float8 => match dt {
            D::Float32 => Some(prim::<Float32Type, _>(array, |v, out| {
                put_f64(f64::from(v), out)
            })),
            D::Float64 => Some(prim::<Float64Type, _>(array, put_f64)),
            _ => None,
        },
        PgType::Numeric(typmod) => numeric_put(array, *typmod),
        PgType::Text { .. } | PgType::Json | PgType::Enum { .. } => strs(array, put_text),
        PgType::Jsonb => strs(array, put_jsonb),
        PgType::Bytea => bins(array, put_bytes),
        PgType::Date => date_put(array),
        PgType::Time => time_put(array),
        PgType::Timestamp | PgType::Timestamptz => timestamp_put(array),
        PgType::Interval => interval_put(array),
        PgType::Uuid => match dt {
            D::FixedSizeBinary(16) => bins(array, put_bytes),
            _ => strs(array, put_uuid_text),
        },
        PgType::Array(elem) => list_put(elem, array),
    }
}

/// Values of a primitive array through a conversion `f`.
struct Prim<T: ArrowPrimitiveType, F> {
    array: PrimitiveArray<T>,
    f: F,
}

impl<T, F> Put for Prim<T, F>
where
    T: ArrowPrimitiveType,
    F: FnMut(T::Native, &mut BytesMut) -> Result<(), String>,
{
    fn put(&mut self, i: usize, out: &mut BytesMut) -> Result<(), String> {
        (self.f)(self.array.value(i), out)
    }
}

fn prim<T, F>(array: &ArrayRef, f: F) -> Box<dyn Put>
where
    T: ArrowPrimitiveType,
    F: FnMut(T::Native, &mut BytesMut) -> Result<(), String> + 'static,
{
    Box::new(Prim {
        array: array.as_primitive::<T>().clone(),
        f,
    })
}

struct BoolPut(BooleanArray);

impl Put for BoolPut {
    fn put(&mut self, i: usize, out: &mut BytesMut) -> Result<(), String> {
        out.put_i32(1);
        out.put_u8(self.0.value(i) as u8);
        Ok(())
    }
}

/// Any of Arrow's string arrays; dictionaries are expanded once per batch.
enum Strs {
    Utf8(StringArray),
    Large(LargeStringArray),
    View(StringViewArray),
}

impl Strs {
    fn new(array: &ArrayRef) -> Option<Strs> {
        Some(match array.data_type() {
            DataType::Utf8 => Strs::Utf8(array.as_string::<i32>().clone()),
            DataType::LargeUtf8 => Strs::Large(array.as_string::<i64>().clone()),
            DataType::Utf8View => Strs::View(array.as_string_view().clone()),
            DataType::Dictionary(_, values) if is_string_type(values) => {
                Strs::new(&arrow::compute::cast(array, values).ok()?)?
            }
            _ => return None,
        })
    }

    fn value(&self, i: usize) -> &str {
        match self {
            Strs::Utf8(a) => a.value(i),
            Strs::Large(a) => a.value(i),
            Strs::View(a) => a.value(i),
        }
    }
}

struct StrPut<F> {
    strs: Strs,
    f: F,
}

impl<F: FnMut(&str, &mut BytesMut) -> Result<(), String>> Put for StrPut<F> {
    fn put(&mut self, i: usize, out: &mut BytesMut) -> Result<(), String> {
        (self.f)(self.strs.value(i), out)
    }
}

fn strs<F>(array: &ArrayRef, f: F) -> Option<Box<dyn Put>>
where
    F: FnMut(&str, &mut BytesMut) -> Result<(), String> + 'static,
{
    Some(Box::new(StrPut {
        strs: Strs::new(array)?,
        f,
    }))
}

/// Any of Arrow's binary arrays.
enum Bins {
    Binary(BinaryArray),
    Large(LargeBinaryArray),
    View(BinaryViewArray),
    Fixed(FixedSizeBinaryArray),
}

impl Bins {
    fn value(&self, i: usize) -> &[u8] {
        match self {
            Bins::Binary(a) => a.value(i),
            Bins::Large(a) => a.value(i),
            Bins::View(a) => a.value(i),
            Bins::Fixed(a) => a.value(i),
        }
    }
}

struct BinPut<F> {
    bins: Bins,
    f: F,
}

impl<F: FnMut(&[u8], &mut BytesMut) -> Result<(), String>> Put for BinPut<F> {
    fn put(&mut self, i: usize, out: &mut BytesMut) -> Result<(), String> {
        (self.f)(self.bins.value(i), out)
    }
}

fn bins<F>(array: &ArrayRef, f: F) -> Option<Box<dyn Put>>
where
    F: FnMut(&[u8], &mut BytesMut) -> Result<(), String> + 'static,
{
    let bins = match array.data_type() {
        DataType::Binary => Bins::Binary(array.as_binary::<i32>().clone()),
        DataType::LargeBinary => Bins::Large(array.as_binary::<i64>().clone()),
        DataType::BinaryView => Bins::View(array.as_binary_view().clone()),
        DataType::FixedSizeBinary(_) => Bins::Fixed(array.as_fixed_size_binary().clone()),
        _ => return None,
    };
    Some(Box::new(BinPut { bins, f }))
}

/// A one-dimensional array value per list, its elements written by `items`.
struct ListPut<O: OffsetSizeTrait> {
    offsets: OffsetBuffer<O>,
    items: Writer,
    oid: u32,
}

impl<O: OffsetSizeTrait> Put for ListPut<O> {
    fn put(&mut self, i: usize, out: &mut BytesMut) -> Result<(), String> {
        let (start, end) = (self.offsets[i].as_usize(), self.offsets[i + 1].as_usize());
        let len_at = out.len();
        out.put_i32(0); // patched below, once the elements are written
        if start == end {
            out.put_i32(0); // no dimensions: PostgreSQL's empty array
            out.put_i32(0);
            out.put_u32(self.oid);
        } else {
            let has_null = (start..end).any(|j| self.items.is_null(j));
            out.put_i32(1);
            out.put_i32(has_null as i32);
            out.put_u32(self.oid);
            out.put_i32(value_len(end - start)?);
            out.put_i32(1);
            for j in start..end {
                let element = j - start + 1;
                self.items
                    .write(j, out)
                    .map_err(|m| format!("array element {element}: {m}"))?;
            }
        }
        let len = value_len(out.len() - len_at - 4)?;
        out[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
        Ok(())
    }
}

fn list_put(elem: &PgType, array: &ArrayRef) -> Option<Box<dyn Put>> {
    if matches!(elem, PgType::Array(_)) {
        return None;
    }
    let oid = elem.element_oid();
    match array.data_type() {
        DataType::List(_) => {
            let list = array.as_list::<i32>();
            let items = Writer::new(elem, list.values())?;
            Some(Box::new(ListPut {
                offsets: list.offsets().clone(),
                items,
                oid,
            }))
        }
        DataType::LargeList(_) => {
            let list = array.as_list::<i64>();
            let items = Writer::new(elem, list.values())?;
            Some(Box::new(ListPut {
                offsets: list.offsets().clone(),
                items,
                oid,
            }))
        }
        _ => None,
    }
}

/// A PostgreSQL value length word for `n` bytes.
fn value_len(n: usize) -> Result<i32, String> {
    i32::try_from(n).map_err(|_| format!("value of {n} bytes is too large for PostgreSQL"))
}

fn int_put(array: &ArrayRef, width: usize) -> Option<Box<dyn Put>> {
    with_int_type!(array.data_type(), T => prim::<T, _>(array, move |v, out| put_int(v.into(), width, out)))
}

fn put_int(v: i128, width: usize, out: &mut BytesMut) -> Result<(), String> {
    let out_of_range = |ty: &str| format!("value {v} is out of range for {ty}");
    match width {
        2 => {
            let v = i16::try_from(v).map_err(|_| out_of_range("smallint"))?;
            out.put_i32(2);
            out.put_i16(v);
        }
        4 => {
            let v = i32::try_from(v).map_err(|_| out_of_range("integer"))?;
            out.put_i32(4);
            out.put_i32(v);
        }
        _ => {
            let v = i64::try_from(v).map_err(|_| out_of_range("bigint"))?;
            out.put_i32(8);
            out.put_i64(v);
        }
    }
    Ok(())
}

fn put_f32(v: f32, out: &mut BytesMut) -> Result<(), String> {
    out.put_i32(4);
    out.put_f32(v);
    Ok(())
}

fn put_f64(v: f64, out: &mut BytesMut) -> Result<(), String> {
    out.put_i32(8);
    out.put_f64(v);
    Ok(())
}

/// PostgreSQL stores no NUL characters in text; catching them here names the row.
fn check_text(s: &str) -> Result<(), String> {
    match s.as_bytes().contains(&0) {
        true => Err("text contains a NUL character, which PostgreSQL cannot store".into()),
        false => Ok(()),
    }
}

fn put_text(s: &str, out: &mut BytesMut) -> Result<(), String> {
    check_text(s)?;
    out.put_i32(value_len(s.len())?);
    out.put_slice(s.as_bytes());
    Ok(())
}

/// jsonb's binary form is a version byte (1) and the JSON text.
fn put_jsonb(s: &str, out: &mut BytesMut) -> Result<(), String> {
    check_text(s)?;
    out.put_i32(value_len(s.len() + 1)?);
    out.put_u8(1);
    out.put_slice(s.as_bytes());
    Ok(())
}

fn put_bytes(b: &[u8], out: &mut BytesMut) -> Result<(), String> {
    out.put_i32(value_len(b.len())?);
    out.put_slice(b);
    Ok(())
}

fn put_uuid_text(s: &str, out: &mut BytesMut) -> Result<(), String> {
    let uuid = parse_uuid(s).ok_or_else(|| format!("value '{s}' is not a valid uuid"))?;
    out.put_i32(16);
    out.put_slice(&uuid);
    Ok(())
}

/// 32 hex digits, optionally in braces, with hyphens allowed after any group of four (as uuid_in).
fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let body = text
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .unwrap_or(text);
    let mut uuid = [0u8; 16];
    let mut n = 0;
    let mut after_hyphen = true; // no leading hyphen
    for c in body.bytes() {
        if c == b'-' {
            if after_hyphen || n % 4 != 0 {
                return None;
            }
            after_hyphen = true;
            continue;
        }
        let d = (c as char).to_digit(16)? as u8;
        if n == 32 {
            return None;
        }
        uuid[n / 2] |= if n % 2 == 0 { d << 4 } else { d };
        n += 1;
        after_hyphen = false;
    }
    (n == 32 && !after_hyphen).then_some(uuid)
}

fn date_put(array: &ArrayRef) -> Option<Box<dyn Put>> {
    match array.data_type() {
        DataType::Date32 => Some(prim::<Date32Type, _>(array, |d, out| {
            put_date(date32_to_pg(d)?, out)
        })),
        DataType::Date64 => Some(prim::<Date64Type, _>(array, |ms, out| {
            put_date(date64_to_pg(ms)?, out)
        })),
        _ => None,
    }
}

fn put_date(days: i32, out: &mut BytesMut) -> Result<(), String> {
    out.put_i32(4);
    out.put_i32(days);
    Ok(())
}

/// Date32's i32::MAX/MIN are PostgreSQL's ±infinity, as the decoder produces them.
fn date32_to_pg(days: i32) -> Result<i32, String> {
    match days {
        i32::MAX | i32::MIN => Ok(days),
        _ => days
            .checked_sub(PG_EPOCH_DAYS)
            .ok_or_else(|| format!("date {days} is out of range")),
    }
}

fn date64_to_pg(ms: i64) -> Result<i32, String> {
    match ms {
        i64::MAX => Ok(i32::MAX),
        i64::MIN => Ok(i32::MIN),
        _ => i32::try_from(ms.div_euclid(86_400_000))
            .ok()
            .and_then(|d| d.checked_sub(PG_EPOCH_DAYS))
            .ok_or_else(|| format!("date {ms}ms is out of range")),
    }
}

/// `v` in `unit` as microseconds; nanoseconds must be whole microseconds.
fn to_micros(v: i64, unit: TimeUnit, what: &str) -> Result<i64, String> {
    let out_of_range = || format!("{what} {v} ({unit:?}) is out of range");
    match unit {
        TimeUnit::Second => v.checked_mul(1_000_000).ok_or_else(out_of_range),
        TimeUnit::Millisecond => v.checked_mul(1_000).ok_or_else(out_of_range),
        TimeUnit::Microsecond => Ok(v),
        TimeUnit::Nanosecond if v % 1000 != 0 => Err(format!(
            "{what} {v} (Nanosecond) has sub-microsecond precision"
        )),
        TimeUnit::Nanosecond => Ok(v / 1000),
    }
}

fn time_put(array: &ArrayRef) -> Option<Box<dyn Put>> {
    use TimeUnit as U;
    Some(match array.data_type() {
        DataType::Time32(U::Second) => prim::<Time32SecondType, _>(array, |v, out| {
            put_time(to_micros(v.into(), U::Second, "time")?, out)
        }),
        DataType::Time32(U::Millisecond) => prim::<Time32MillisecondType, _>(array, |v, out| {
            put_time(to_micros(v.into(), U::Millisecond, "time")?, out)
        }),
        DataType::Time64(U::Microsecond) => prim::<Time64MicrosecondType, _>(array, put_time),
        DataType::Time64(U::Nanosecond) => prim::<Time64NanosecondType, _>(array, |v, out| {
            put_time(to_micros(v, U::Nanosecond, "time")?, out)
        }),
        _ => return None,
    })
}

fn put_time(micros: i64, out: &mut BytesMut) -> Result<(), String> {
    if !(0..=MICROS_PER_DAY).contains(&micros) {
        return Err(format!("time of day {micros}µs is out of range"));
    }
    out.put_i32(8);
    out.put_i64(micros);
    Ok(())
}

/// Any unit, any time zone: instants are absolute, and naive timestamps are written as they are.
fn timestamp_put(array: &ArrayRef) -> Option<Box<dyn Put>> {
    use TimeUnit as U;
    let DataType::Timestamp(unit, _) = array.data_type() else {
        return None;
    };
    Some(match unit {
        U::Second => {
            prim::<TimestampSecondType, _>(array, |v, out| put_timestamp(v, U::Second, out))
        }
        U::Millisecond => prim::<TimestampMillisecondType, _>(array, |v, out| {
            put_timestamp(v, U::Millisecond, out)
        }),
        U::Microsecond => prim::<TimestampMicrosecondType, _>(array, |v, out| {
            put_timestamp(v, U::Microsecond, out)
        }),
        U::Nanosecond => {
            prim::<TimestampNanosecondType, _>(array, |v, out| put_timestamp(v, U::Nanosecond, out))
        }
    })
}

/// i64::MAX/MIN (in any unit) are PostgreSQL's ±infinity, as the decoder produces them.
fn put_timestamp(v: i64, unit: TimeUnit, out: &mut BytesMut) -> Result<(), String> {
    let micros = match v {
        i64::MAX | i64::MIN => v,
        _ => to_micros(v, unit, "timestamp")?
            .checked_sub(PG_EPOCH_MICROS)
            .ok_or_else(|| format!("timestamp {v} ({unit:?}) is out of range"))?,
    };
    out.put_i32(8);
    out.put_i64(micros);
    Ok(())
}

fn interval_put(array: &ArrayRef) -> Option<Box<dyn Put>> {
    use TimeUnit as U;
    Some(match array.data_type() {
        DataType::Interval(IntervalUnit::MonthDayNano) => {
            prim::<IntervalMonthDayNanoType, _>(array, put_month_day_nano)
        }
        DataType::Interval(IntervalUnit::YearMonth) => {
            prim::<IntervalYearMonthType, _>(array, |months, out| put_interval(months, 0, 0, out))
        }
        DataType::Interval(IntervalUnit::DayTime) => {
            prim::<IntervalDayTimeType, _>(array, |v, out| {
                put_interval(0, v.days, i64::from(v.milliseconds) * 1000, out)
            })
        }
        DataType::Duration(U::Second) => prim::<DurationSecondType, _>(array, |v, out| {
            put_interval(0, 0, to_micros(v, U::Second, "duration")?, out)
        }),
        DataType::Duration(U::Millisecond) => {
            prim::<DurationMillisecondType, _>(array, |v, out| {
                put_interval(0, 0, to_micros(v, U::Millisecond, "duration")?, out)
            })
        }
        DataType::Duration(U::Microsecond) => {
            prim::<DurationMicrosecondType, _>(array, |v, out| put_interval(0, 0, v, out))
        }
        DataType::Duration(U::Nanosecond) => prim::<DurationNanosecondType, _>(array, |v, out| {
            put_interval(0, 0, to_micros(v, U::Nanosecond, "duration")?, out)
        }),
        _ => return None,
    })
}

fn put_month_day_nano(v: IntervalMonthDayNano, out: &mut BytesMut) -> Result<(), String> {
    let micros = match (v.months, v.days, v.nanoseconds) {
        // The decoder's mapping of PostgreSQL 17's ±infinity.
        (i32::MAX, i32::MAX, i64::MAX) => i64::MAX,
        (i32::MIN, i32::MIN, i64::MIN) => i64::MIN,
        (_, _, nanos) if nanos % 1000 != 0 => {
            return Err(format!(
                "interval nanoseconds {nanos} are not whole microseconds"
            ))
        }
        (_, _, nanos) => nanos / 1000,
    };
    put_interval(v.months, v.days, micros, out)
}

fn put_interval(months: i32, days: i32, micros: i64, out: &mut BytesMut) -> Result<(), String> {
    out.put_i32(16);
    out.put_i64(micros);
    out.put_i32(days);
    out.put_i32(months);
    Ok(())
}

fn numeric_put(array: &ArrayRef, typmod: Option<(u8, i8)>) -> Option<Box<dyn Put>> {
    use DataType as D;
    match array.data_type() {
        D::Decimal32(_, s) => {
            let s = *s;
            Some(prim::<Decimal32Type, _>(array, move |v, out| {
                put_numeric_i128(v.into(), s, typmod, out)
            }))
        }
        D::Decimal64(_, s) => {
            let s = *s;
            Some(prim::<Decimal64Type, _>(array, move |v, out| {
                put_numeric_i128(v.into(), s, typmod, out)
            }))
        }
        D::Decimal128(_, s) => {
            let s = *s;
            Some(prim::<Decimal128Type, _>(array, move |v, out| {
                put_numeric_i128(v, s, typmod, out)
            }))
        }
        D::Decimal256(_, s) => {
            let s = *s;
            Some(prim::<Decimal256Type, _>(array, move |v, out| {
                put_numeric_i256(v, s, typmod, out)
            }))
        }
        D::Utf8 | D::LargeUtf8 | D::Utf8View | D::Dictionary(..) => {
            strs(array, move |text, out| put_numeric_text(text, typmod, out))
        }
        dt => {
            with_int_type!(dt, T => prim::<T, _>(array, move |v, out| put_numeric_i128(v.into(), 0, typmod, out)))
        }
    }
}

/// A decimal `v`·10^-scale as numeric.
fn put_numeric_i128(
    v: i128,
    scale: i8,
    typmod: Option<(u8, i8)>,
    out: &mut BytesMut,
) -> Result<(), String> {
    let mut buf = [0u8; 40];
    let digits = u128_digits(v.unsigned_abs(), &mut buf);
    put_numeric(out, v < 0, [digits, b""], scale.into(), typmod)
        .map_err(|why| format!("value {} {why}", decimal_text(v, scale)))
}

/// Decimal256 values beyond i128 go through their decimal text (rare, so allocating is fine).
fn put_numeric_i256(
    v: i256,
    scale: i8,
    typmod: Option<(u8, i8)>,
    out: &mut BytesMut,
) -> Result<(), String> {
    if let Some(v) = v.to_i128() {
        return put_numeric_i128(v, scale, typmod, out);
    }
    let text = v.to_string();
    let digits = text.trim_start_matches('-');
    put_numeric(
        out,
        v.is_negative(),
        [digits.as_bytes(), b""],
        scale.into(),
        typmod,
    )
    .map_err(|why| format!("value {text}e{} {why}", -i64::from(scale)))
}

/// Decimal text as numeric_in reads it: "-12.50", "1e-3", "NaN", "Infinity".
fn put_numeric_text(
    text: &str,
    typmod: Option<(u8, i8)>,
    out: &mut BytesMut,
) -> Result<(), String> {
    let fail = |why: &str| format!("value '{text}' {why}");
    let trimmed = text.trim();
    let (neg, body) = match trimmed.as_bytes().first() {
        Some(b'-') => (true, &trimmed[1..]),
        Some(b'+') => (false, &trimmed[1..]),
        _ => (false, trimmed),
    };
    if body.eq_ignore_ascii_case("nan") {
        put_numeric_special(NUMERIC_NAN, out);
        return Ok(());
    }
    if body.eq_ignore_ascii_case("infinity") || body.eq_ignore_ascii_case("inf") {
        if let Some((p, s)) = typmod {
            return Err(fail(&format!("cannot be stored in numeric({p},{s})")));
        }
        put_numeric_special(if neg { NUMERIC_NINF } else { NUMERIC_PINF }, out);
        return Ok(());
    }
    let invalid = || fail("is not a valid numeric");
    let (mantissa, exp) = match body.find(['e', 'E']) {
        Some(k) => {
            let exp = body[k + 1..]
                .parse::<i64>()
                .ok()
                .filter(|e| e.abs() <= 1_000_000);
            (&body[..k], exp.ok_or_else(invalid)?)
        }
        None => (body, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int.len() + frac.len() == 0 || !all_digits(int) || !all_digits(frac) {
        return Err(invalid());
    }
    let scale = frac.len() as i64 - exp;
    put_numeric(out, neg, [int.as_bytes(), frac.as_bytes()], scale, typmod)
        .map_err(|why| fail(&why))
}

fn put_numeric_special(sign: u16, out: &mut BytesMut) {
    out.put_i32(8);
    out.put_i16(0);
    out.put_i16(0);
    out.put_u16(sign);
    out.put_u16(0);
}

/// Writes ±(digits[0]‖digits[1])·10^-scale (ASCII digits) as a binary numeric, checking it
/// against numeric(p,s) when `typmod` is set. The error completes "value X …".
fn put_numeric(
    out: &mut BytesMut,
    neg: bool,
    digits: [&[u8]; 2],
    scale: i64,
    typmod: Option<(u8, i8)>,
) -> Result<(), String> {
    let len = digits[0].len() + digits[1].len();
    let at = |j: usize| match j.checked_sub(digits[0].len()) {
        None => digits[0][j] - b'0',
        Some(k) => digits[1][k] - b'0',
    };
    let dscale = match typmod {
        Some((_, s)) => i64::from(s).max(0),
        None => scale.max(0),
    };
    if dscale > NUMERIC_MAX_DSCALE {
        return Err("has more decimal places than PostgreSQL's numeric allows".into());
    }
    let (Some(first), Some(last)) = (
        (0..len).find(|&j| at(j) != 0),
        (0..len).rfind(|&j| at(j) != 0),
    ) else {
        out.put_i32(8);
        out.put_i64(dscale); // ndigits 0, weight 0, sign +, dscale
        return Ok(());
    };
    // The significant digits alone: n digits, the last at 10^-sig_scale.
    let n = (last - first + 1) as i64;
    let sig_scale = scale - (len - 1 - last) as i64;
    if let Some((p, s)) = typmod {
        if sig_scale > i64::from(s) {
            return Err(format!(
                "has more decimal places than numeric({p},{s}) keeps"
            ));
        }
        if n - sig_scale > i64::from(p) - i64::from(s) {
            return Err(format!("does not fit in numeric({p},{s})"));
        }
    }
    // Pad with zeros to the right so the last digit ends a base-10000 group.
    let pad = (4 - sig_scale.rem_euclid(4)) % 4;
    let total = n + pad;
    let groups = (total + 3) / 4;
    let weight = groups - 1 - (sig_scale + pad) / 4;
    let (Ok(groups_i16), Ok(weight)) = (i16::try_from(groups), i16::try_from(weight)) else {
        return Err("is out of PostgreSQL numeric's range".into());
    };
    out.put_i32(8 + 2 * i32::from(groups_i16));
    out.put_i16(groups_i16);
    out.put_i16(weight);
    out.put_u16(if neg { NUMERIC_NEG } else { NUMERIC_POS });
    out.put_u16(dscale as u16);
    let mut j = first;
    let mut group_len = total - 4 * (groups - 1);
    for _ in 0..groups {
        let mut group = 0u16;
        for _ in 0..group_len {
            group = group * 10 + if j <= last { u16::from(at(j)) } else { 0 };
            j += 1;
        }
        out.put_u16(group);
        group_len = 4;
    }
    Ok(())
}

/// Decimal digits of `v`, most significant first; empty for 0. Works in u64 chunks because
/// u128 division is slow.
fn u128_digits(mut v: u128, buf: &mut [u8; 40]) -> &[u8] {
    const CHUNK: u128 = 10_000_000_000_000_000_000; // 10^19
    let mut pos = buf.len();
    while v > u128::from(u64::MAX) {
        let mut low = (v % CHUNK) as u64;
        v /= CHUNK;
        for _ in 0..19 {
            pos -= 1;
            buf[pos] = b'0' + (low % 10) as u8;
            low /= 10;
        }
    }
    let mut rest = v as u64;
    while rest > 0 {
        pos -= 1;
        buf[pos] = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    &buf[pos..]
}

/// `v`·10^-scale as text, for error messages.
fn decimal_text(v: i128, scale: i8) -> String {
    if scale <= 0 {
        let zeros = if v == 0 {
            0
        } else {
            usize::from(scale.unsigned_abs())
        };
        return format!("{v}{}", "0".repeat(zeros));
    }
    let scale = scale as usize;
    let digits = format!("{:0>width$}", v.unsigned_abs(), width = scale + 1);
    let (int, frac) = digits.split_at(digits.len() - scale);
    format!("{}{int}.{frac}", if v < 0 { "-" } else { "" })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::compute::concat_batches;

    fn col(name: &str, ty: PgType) -> PgColumn {
        PgColumn {
            name: name.into(),
            ty,
            nullable: true,
        }
    }

    fn text_type() -> PgType {
        PgType::Text { sql: "text".into() }
    }

    fn mood() -> PgType {
        PgType::Enum {
            sql: "mood".into(),
            labels: vec!["sad".into(), "ok".into()],
            oid: 16_385,
        }
    }

    /// The value bytes (without the length word) numeric_put writes.
    fn wire_i128(v: i128, scale: i8, typmod: Option<(u8, i8)>) -> Result<Vec<u8>, String> {
        let mut out = BytesMut::new();
        put_numeric_i128(v, scale, typmod, &mut out)?;
        Ok(out[4..].to_vec())
    }

    fn wire_text(text: &str, typmod: Option<(u8, i8)>) -> Result<Vec<u8>, String> {
        let mut out = BytesMut::new();
        put_numeric_text(text, typmod, &mut out)?;
        Ok(out[4..].to_vec())
    }

    fn numeric_text(wire: &[u8]) -> String {
        let mut text = String::new();
        Numeric::parse(wire).unwrap().write_text(&mut text).unwrap();
        text
    }

    /// ndigits, weight, sign, dscale, digits… as PostgreSQL's numeric_send writes them.
    fn pg_numeric(words: &[u16]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_be_bytes()).collect()
    }

    const MAX38: i128 = 99_999_999_999_999_999_999_999_999_999_999_999_999;

    #[test]
    fn numeric_round_trips_through_decimal_and_text() {
        let cases: &[(i128, i8)] = &[
            (0, 0),
            (0, 2),
            (-1, 0),
            (1, 4),
            (1, 10),
            (-1, 10),
            (150, 2),
            (10_000, 0),
            (123_456_789, 4),
            (1_234_567_890_123_456_789_012, 2),
            (-1_234_567_890_123_456_789_012, 2),
            (MAX38, 0),
            (-MAX38, 0),
            (MAX38, 2),
            (MAX38, 10),
            (-MAX38, 10),
            (MAX38, 38),
        ];
        for &(v, s) in cases {
            for typmod in [None, Some((38, s))] {
                let wire = wire_i128(v, s, typmod).unwrap();
                let back = Numeric::parse(&wire).unwrap().to_i128(38, s);
                assert_eq!(back, Ok(v), "{v} scale {s}");
                let text = numeric_text(&wire);
                assert_eq!(text, decimal_text(v, s), "{v} scale {s}");
                assert_eq!(wire_text(&text, typmod).unwrap(), wire, "{text}");
            }
        }
    }

    #[test]
    fn numeric_wire_matches_postgres() {
        // SELECT numeric_send(x) in PostgreSQL for each x.
        assert_eq!(
            wire_text("12345.678", None).unwrap(),
            pg_numeric(&[3, 1, 0, 3, 1, 2345, 6780])
        );
        assert_eq!(
            wire_text("0.0001", None).unwrap(),
            pg_numeric(&[1, 0xffff, 0, 4, 1])
        );
        assert_eq!(
            wire_text("10000", None).unwrap(),
            pg_numeric(&[1, 1, 0, 0, 1])
        );
        assert_eq!(
            wire_text("-1.50", None).unwrap(),
            pg_numeric(&[2, 0, 0x4000, 2, 1, 5000])
        );
        assert_eq!(wire_text("0", None).unwrap(), pg_numeric(&[0, 0, 0, 0]));
        assert_eq!(wire_text("0.00", None).unwrap(), pg_numeric(&[0, 0, 0, 2]));
        assert_eq!(
            wire_text("NaN", None).unwrap(),
            pg_numeric(&[0, 0, 0xC000, 0])
        );
        assert_eq!(
            wire_text("-Infinity", None).unwrap(),
            pg_numeric(&[0, 0, 0xF000, 0])
        );
        assert_eq!(
            wire_i128(12_345_678, 3, Some((12, 4))).unwrap(),
            pg_numeric(&[3, 1, 0, 4, 1, 2345, 6780])
        );
    }

    #[test]
    fn numeric_text_forms() {
        for (input, printed) in [
            ("1.50", "1.50"),
            ("1e3", "1000"),
            ("1.5E-3", "0.0015"),
            ("+007.0700", "7.0700"),
            ("-0.00", "0.00"),
            (" 42 ", "42"),
            ("nan", "NaN"),
            ("Infinity", "Infinity"),
            ("-inf", "-Infinity"),
            (
                "123456789012345678901234567890123456789012.5",
                "123456789012345678901234567890123456789012.5",
            ),
        ] {
            assert_eq!(
                numeric_text(&wire_text(input, None).unwrap()),
                printed,
                "{input}"
            );
        }
        for bad in ["", "abc", "1.2.3", "1e", "--1", "1e9999999"] {
            assert!(
                wire_text(bad, None)
                    .unwrap_err()
                    .contains("is not a valid numeric"),
                "{bad}"
            );
        }
    }

    #[test]
    fn numeric_typmod_checks() {
        // 1.5 into numeric(5,3) is written with dscale 3 and reads back as 1.500.
        let wire = wire_i128(15, 1, Some((5, 3))).unwrap();
        assert_eq!(numeric_text(&wire), "1.500");
        assert_eq!(Numeric::parse(&wire).unwrap().to_i128(5, 3), Ok(1500));
        assert_eq!(
            wire_i128(1234, 3, Some((5, 2))).unwrap_err(),
            "value 1.234 has more decimal places than numeric(5,2) keeps"
        );
        assert_eq!(
            wire_i128(12_340, 3, Some((5, 2))).map(|w| numeric_text(&w)),
            Ok("12.34".into())
        );
        assert_eq!(
            wire_i128(123_456, 0, Some((5, 2))).unwrap_err(),
            "value 123456 does not fit in numeric(5,2)"
        );
        assert_eq!(
            wire_i128(999, 0, Some((5, 2))).map(|w| numeric_text(&w)),
            Ok("999.00".into())
        );
        assert_eq!(
            wire_text("Infinity", Some((5, 2))).unwrap_err(),
            "value 'Infinity' cannot be stored in numeric(5,2)"
        );
        assert!(wire_text("NaN", Some((5, 2))).is_ok());
        // Negative scale (PostgreSQL 15): numeric(3,-2) holds multiples of 100 below 10^5.
        assert_eq!(
            wire_i128(12_300, 0, Some((3, -2))).map(|w| numeric_text(&w)),
            Ok("12300".into())
        );
        assert!(wire_i128(12_350, 0, Some((3, -2))).is_err());
        // Decoding: digits below the scale and values beyond the precision are errors.
        let wire = wire_text("1.5", None).unwrap();
        assert!(Numeric::parse(&wire)
            .unwrap()
            .to_i128(38, 0)
            .unwrap_err()
            .contains("decimal places"));
        let wire = wire_text("1000", None).unwrap();
        assert_eq!(
            Numeric::parse(&wire).unwrap().to_i128(3, 0).unwrap_err(),
            "numeric value does not fit in Decimal128(3,0)"
        );
        let wire = wire_text("NaN", None).unwrap();
        assert_eq!(
            Numeric::parse(&wire).unwrap().to_i128(12, 2).unwrap_err(),
            "NaN cannot be stored as Decimal128(12,2)"
        );
        let wire = wire_text("1e40", None).unwrap();
        assert!(Numeric::parse(&wire).unwrap().to_i128(38, 0).is_err());
    }

    #[test]
    fn decimal256_and_integers_into_numeric() {
        let big = i256::from_string("-123456789012345678901234567890123456789012345").unwrap();
        let mut out = BytesMut::new();
        put_numeric_i256(big, 5, None, &mut out).unwrap();
        assert_eq!(
            numeric_text(&out[4..]),
            "-1234567890123456789012345678901234567890.12345"
        );
        let mut out = BytesMut::new();
        put_numeric_i128(u64::MAX.into(), 0, Some((20, 0)), &mut out).unwrap();
        assert_eq!(numeric_text(&out[4..]), "18446744073709551615");
    }

    /// One column of every decodable type, rows covering NULLs and extremes.
    fn sample() -> (Vec<PgColumn>, RecordBatch) {
        let columns = vec![
            col("b", PgType::Bool),
            col("i2", PgType::Int2),
            col("i4", PgType::Int4),
            col("i8", PgType::Int8),
            col("f4", PgType::Float4),
            col("f8", PgType::Float8),
            col("dec", PgType::Numeric(Some((12, 2)))),
            col("num", PgType::Numeric(None)),
            col("t", text_type()),
            col("js", PgType::Json),
            col("jb", PgType::Jsonb),
            col("e", mood()),
            col("by", PgType::Bytea),
            col("d", PgType::Date),
            col("tm", PgType::Time),
            col("ts", PgType::Timestamp),
            col("tz", PgType::Timestamptz),
            col("iv", PgType::Interval),
            col("u", PgType::Uuid),
            col("ai", PgType::Array(Box::new(PgType::Int4))),
            col("at", PgType::Array(Box::new(text_type()))),
            col(
                "an",
                PgType::Array(Box::new(PgType::Numeric(Some((10, 2))))),
            ),
            col("ae", PgType::Array(Box::new(mood()))),
        ];
        let schema = CopyDecoder::new(columns.clone(), 1).schema();
        let mut ai = ListBuilder::new(Int32Builder::new());
        for row in [
            Some(vec![Some(1), None, Some(i32::MIN)]),
            Some(vec![]),
            None,
            Some(vec![Some(0)]),
        ] {
            ai.append_option(row);
        }
        let mut at = ListBuilder::new(StringBuilder::new());
        for row in [
            Some(vec![Some("a"), None]),
            None,
            Some(vec![]),
            Some(vec![Some("ü,\"{}")]),
        ] {
            at.append_option(row);
        }
        let mut an =
            ListBuilder::new(Decimal128Builder::new().with_data_type(DataType::Decimal128(10, 2)));
        for row in [
            Some(vec![Some(-150), None]),
            Some(vec![]),
            Some(vec![Some(99_999_999)]),
            None,
        ] {
            an.append_option(row);
        }
        let mut ae = ListBuilder::new(StringBuilder::new());
        for row in [
            Some(vec![Some("sad"), Some("ok")]),
            None,
            Some(vec![None]),
            Some(vec![]),
        ] {
            ae.append_option(row);
        }
        let uuid = [
            0x12u8, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0, 1, 2, 3, 4, 5, 6, 0xff,
        ];
        let micros = |v: Vec<Option<i64>>| TimestampMicrosecondArray::from(v);
        let arrays: Vec<ArrayRef> = vec![
            Arc::new(BooleanArray::from(vec![
                Some(true),
                Some(false),
                None,
                Some(true),
            ])),
            Arc::new(Int16Array::from(vec![
                Some(i16::MIN),
                Some(i16::MAX),
                None,
                Some(0),
            ])),
            Arc::new(Int32Array::from(vec![
                Some(i32::MIN),
                Some(i32::MAX),
                None,
                Some(-1),
            ])),
            Arc::new(Int64Array::from(vec![
                Some(i64::MIN),
                Some(i64::MAX),
                None,
                Some(1),
            ])),
            Arc::new(Float32Array::from(vec![
                Some(f32::NAN),
                Some(f32::INFINITY),
                None,
                Some(f32::NEG_INFINITY),
            ])),
            Arc::new(Float64Array::from(vec![
                Some(1e308),
                Some(f64::NAN),
                None,
                Some(f64::NEG_INFINITY),
            ])),
            Arc::new(
                Decimal128Array::from(vec![Some(0), Some(-1), None, Some(999_999_999_999)])
                    .with_precision_and_scale(12, 2)
                    .unwrap(),
            ),
            Arc::new(StringArray::from(vec![
                Some("NaN"),
                Some("1.50"),
                None,
                Some("-0.0001"),
            ])),
            Arc::new(StringArray::from(vec![
                Some(""),
                Some("héllo 𝄞"),
                None,
                Some("tab\tnew\nline"),
            ])),
            Arc::new(StringArray::from(vec![
                Some("{ \"a\" : 1 }"),
                None,
                Some("[]"),
                Some("null"),
            ])),
            Arc::new(StringArray::from(vec![
                Some("{}"),
                None,
                Some("[1, 2]"),
                Some("\"s\""),
            ])),
            Arc::new(StringArray::from(vec![
                Some("sad"),
                Some("ok"),
                None,
                Some("ok"),
            ])),
            Arc::new(BinaryArray::from(vec![
                Some(&b""[..]),
                Some(&[0, 255][..]),
                None,
                Some(&b"\\x"[..]),
            ])),
            Arc::new(Date32Array::from(vec![
                Some(i32::MAX),
                Some(i32::MIN),
                None,
                Some(-25_567),
            ])),
            Arc::new(Time64MicrosecondArray::from(vec![
                Some(0),
                Some(MICROS_PER_DAY),
                None,
                Some(1),
            ])),
            Arc::new(micros(vec![
                Some(i64::MAX),
                Some(i64::MIN),
                None,
                Some(-2_208_988_800_000_000),
            ])),
            Arc::new(
                micros(vec![
                    Some(i64::MAX),
                    Some(0),
                    None,
                    Some(9_214_646_400_000_000),
                ])
                .with_timezone("UTC"),
            ),
            Arc::new(IntervalMonthDayNanoArray::from(vec![
                Some(IntervalMonthDayNano::new(-14, -3, -4_000_001_000)),
                Some(IntervalMonthDayNano::new(0, 0, 0)),
                None,
                Some(IntervalMonthDayNano::new(i32::MAX, 1, 86_400_000_000_000)),
            ])),
            Arc::new(
                FixedSizeBinaryArray::try_from_sparse_iter_with_size(
                    vec![Some(uuid), None, Some([0; 16]), Some([0xff; 16])].into_iter(),
                    16,
                )
                .unwrap(),
            ),
            Arc::new(ai.finish()),
            Arc::new(at.finish()),
            Arc::new(an.finish()),
            Arc::new(ae.finish()),
        ];
        (columns, RecordBatch::try_new(schema, arrays).unwrap())
    }

    fn encode(columns: &[PgColumn], batches: &[RecordBatch]) -> Vec<u8> {
        let mut encoder = CopyEncoder::new(columns.to_vec(), &batches[0].schema()).unwrap();
        let mut out = BytesMut::new();
        CopyEncoder::header(&mut out);
        for batch in batches {
            encoder.encode(batch, &mut out).unwrap();
        }
        CopyEncoder::trailer(&mut out);
        out.to_vec()
    }

    /// Decodes `chunks` fed one after another.
    fn decode<'a>(
        columns: &[PgColumn],
        batch_rows: usize,
        chunks: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Vec<RecordBatch>, CodecError> {
        let mut decoder = CopyDecoder::new(columns.to_vec(), batch_rows);
        let mut out = Vec::new();
        for chunk in chunks {
            decoder.push(chunk, &mut out)?;
        }
        out.extend(decoder.finish()?);
        Ok(out)
    }

    #[test]
    fn every_type_round_trips() {
        let (columns, batch) = sample();
        let stream = encode(&columns, &[batch.clone(), batch.clone()]);
        let batches = decode(&columns, 3, [&stream[..]]).unwrap();
        assert_eq!(
            batches.iter().map(|b| b.num_rows()).collect::<Vec<_>>(),
            vec![3, 3, 2]
        );
        let decoded = concat_batches(&batch.schema(), &batches).unwrap();
        assert_eq!(
            decoded,
            concat_batches(&batch.schema(), &[batch.clone(), batch]).unwrap()
        );
    }

    #[test]
    fn chunks_split_anywhere_decode_the_same() {
        let (columns, batch) = sample();
        let stream = encode(&columns, &[batch.clone(), batch.clone(), batch]);
        let whole = decode(&columns, 5, [&stream[..]]).unwrap();
        assert_eq!(decode(&columns, 5, stream.chunks(1)).unwrap(), whole);
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..50 {
            let mut chunks = Vec::new();
            let mut rest = &stream[..];
            while !rest.is_empty() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let (head, tail) = rest.split_at((seed % 40) as usize % (rest.len() + 1));
                chunks.push(head);
                rest = tail;
            }
            assert_eq!(decode(&columns, 5, chunks).unwrap(), whole);
        }
    }

    #[test]
    fn header_extension_is_skipped_and_tail_stays_small() {
        let columns = vec![col("a", PgType::Int4)];
        let mut stream = COPY_SIGNATURE.to_vec();
        stream.extend([0, 0, 0, 0, 0, 0, 0, 3, 9, 9, 9]);
        stream.extend([0, 1, 0, 0, 0, 4, 0, 0, 0, 7, 0xff, 0xff]);
        let mut decoder = CopyDecoder::new(columns, 10);
        let mut out = Vec::new();
        decoder.push(&stream[..25], &mut out).unwrap();
        assert_eq!(decoder.tail.len(), 3, "only the started tuple is buffered");
        decoder.push(&stream[25..], &mut out).unwrap();
        let batch = decoder.finish().unwrap().unwrap();
        assert_eq!(batch.column(0).as_primitive::<Int32Type>().value(0), 7);
        assert_eq!(decoder.rows(), 1);
    }

    #[test]
    fn stream_structure_errors() {
        let columns = vec![col("a", PgType::Int4), col("b", PgType::Int4)];
        let mut header = BytesMut::new();
        CopyEncoder::header(&mut header);
        let row = [0, 2, 0, 0, 0, 4, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff];
        let err = |chunks: &[&[u8]]| decode(&columns, 10, chunks.iter().copied()).unwrap_err().0;
        assert!(err(&[b"PGCOPY\n\xfe"]).contains("bad signature"));
        assert!(err(&[b"COPY"]).contains("bad signature"));
        assert_eq!(err(&[]), "COPY data ended inside the header");
        assert_eq!(err(&[&header[..10]]), "COPY data ended inside the header");
        assert_eq!(
            err(&[&header, &row]),
            "COPY data ended without the end-of-data trailer"
        );
        assert_eq!(err(&[&header, &row[..7]]), "COPY data ended inside row 1");
        assert_eq!(
            err(&[&header, &row, &[0xff, 0xff, 0]]),
            "unexpected data after the COPY end-of-data trailer"
        );
        assert_eq!(
            err(&[&header, &row, &[0, 1, 0, 0, 0, 0]]),
            "row 2: tuple has 1 fields, expected 2"
        );
        assert_eq!(
            err(&[&header, &[0, 2, 0xff, 0xff, 0xff, 0xfe]]),
            "row 1, field 1: bad value length -2"
        );
        let mut with_oids = header.to_vec();
        with_oids[12] = 1; // flag bit 16
        assert!(err(&[&with_oids]).contains("OIDs"));
    }

    #[test]
    fn value_errors_name_column_and_row() {
        let columns = vec![
            col("n", PgType::Int4),
            col("price", PgType::Numeric(Some((12, 2)))),
            col("arr", PgType::Array(Box::new(PgType::Int4))),
        ];
        let mut ok = BytesMut::new();
        ok.put_i16(3);
        put_int(1, 4, &mut ok).unwrap();
        put_numeric_i128(100, 2, Some((12, 2)), &mut ok).unwrap();
        ok.put_i32(-1);
        let mut stream = BytesMut::new();
        CopyEncoder::header(&mut stream);
        stream.put_slice(&ok);

        let mut short_int = stream.clone();
        short_int.put_slice(&[
            0, 3, 0, 0, 0, 2, 0, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ]);
        assert_eq!(
            decode(&columns, 10, [&short_int[..]]).unwrap_err().0,
            "column 'n', row 2: integer value has 2 bytes, expected 4"
        );

        let mut nan = stream.clone();
        nan.put_slice(&[0, 3, 0xff, 0xff, 0xff, 0xff]);
        put_numeric_special(NUMERIC_NAN, &mut nan);
        nan.put_i32(-1);
        assert_eq!(
            decode(&columns, 10, [&nan[..]]).unwrap_err().0,
            "column 'price', row 2: NaN cannot be stored as Decimal128(12,2)"
        );

        let mut matrix = stream.clone();
        matrix.put_slice(&[0, 3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        let dims: [i32; 7] = [2, 0, 23, 1, 1, 1, 1];
        matrix.put_i32(dims.len() as i32 * 4 + 8);
        dims.iter().for_each(|d| matrix.put_i32(*d));
        matrix.put_slice(&[0, 0, 0, 4, 0, 0, 0, 5]);
        assert_eq!(
            decode(&columns, 10, [&matrix[..]]).unwrap_err().0,
            "column 'arr', row 2: 2-dimensional arrays are not supported"
        );

        let strict = vec![PgColumn {
            nullable: false,
            ..col("n", PgType::Int4)
        }];
        let mut null = BytesMut::new();
        CopyEncoder::header(&mut null);
        null.put_slice(&[0, 1, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(
            decode(&strict, 10, [&null[..]]).unwrap_err().0,
            "column 'n', row 1: NULL in a NOT NULL column"
        );
    }

    fn schema_of(fields: Vec<(&str, DataType)>) -> Schema {
        Schema::new(
            fields
                .into_iter()
                .map(|(n, t)| Field::new(n, t, true))
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn encoder_errors_name_column_and_row() {
        let err = CopyEncoder::new(
            vec![col("x", PgType::Int4)],
            &schema_of(vec![("x", DataType::Utf8)]),
        );
        assert_eq!(
            err.err().unwrap().0,
            "column 'x': cannot write Arrow type Utf8 into PostgreSQL type integer"
        );
        assert!(CopyEncoder::new(
            vec![col("x", PgType::Float8)],
            &schema_of(vec![("x", DataType::Int64)])
        )
        .is_err());
        assert!(CopyEncoder::new(
            vec![col("x", PgType::Numeric(None))],
            &schema_of(vec![("x", DataType::Float64)])
        )
        .is_err());
        let unknown_enum = PgType::Array(Box::new(PgType::Enum {
            sql: "m".into(),
            labels: vec![],
            oid: 0,
        }));
        let list = DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)));
        let err = CopyEncoder::new(vec![col("e", unknown_enum)], &schema_of(vec![("e", list)]));
        assert!(err
            .err()
            .unwrap()
            .0
            .contains("OID of element type m is unknown"));

        let columns = vec![col("small", PgType::Int2), col("id", PgType::Uuid)];
        let schema = Arc::new(schema_of(vec![
            ("small", DataType::Int64),
            ("id", DataType::Utf8),
        ]));
        let batch = |small: Vec<i64>, ids: Vec<&str>| {
            let arrays: Vec<ArrayRef> = vec![
                Arc::new(Int64Array::from(small)),
                Arc::new(StringArray::from(ids)),
            ];
            RecordBatch::try_new(schema.clone(), arrays).unwrap()
        };
        let mut encoder = CopyEncoder::new(columns, &schema).unwrap();
        let mut out = BytesMut::new();
        let good = "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11";
        encoder
            .encode(
                &batch(
                    vec![1, -32768],
                    vec![good, "{a0eebc999c0b4ef8bb6d6bb9bd380a11}"],
                ),
                &mut out,
            )
            .unwrap();
        assert_eq!(
            encoder
                .encode(&batch(vec![5, 40_000], vec![good, good]), &mut out)
                .unwrap_err()
                .0,
            "column 'small', row 4: value 40000 is out of range for smallint"
        );
        let mut encoder = CopyEncoder::new(encoder.target.clone(), &schema).unwrap();
        assert_eq!(
            encoder
                .encode(&batch(vec![1], vec!["not-a-uuid"]), &mut out)
                .unwrap_err()
                .0,
            "column 'id', row 1: value 'not-a-uuid' is not a valid uuid"
        );
    }

    #[test]
    fn encoder_accepts_other_arrow_types() {
        use arrow::datatypes::TimeUnit as U;
        let dict: DictionaryArray<Int8Type> = vec!["x", "y", "x"].into_iter().collect();
        let cases: Vec<(PgType, ArrayRef, &str)> = vec![
            (
                PgType::Int2,
                Arc::new(UInt8Array::from(vec![255, 0, 1])),
                "255",
            ),
            (
                PgType::Int8,
                Arc::new(UInt32Array::from(vec![u32::MAX, 0, 1])),
                "4294967295",
            ),
            (
                PgType::Numeric(Some((20, 0))),
                Arc::new(UInt64Array::from(vec![u64::MAX, 0, 1])),
                "18446744073709551615",
            ),
            (
                PgType::Float8,
                Arc::new(Float32Array::from(vec![1.5, 0.0, 1.0])),
                "1.5",
            ),
            (text_type(), Arc::new(dict), "x"),
            (
                text_type(),
                Arc::new(LargeStringArray::from(vec!["a", "b", "c"])),
                "a",
            ),
            (
                text_type(),
                Arc::new(StringViewArray::from(vec!["a", "b", "c"])),
                "a",
            ),
            (
                PgType::Numeric(None),
                Arc::new(StringArray::from(vec!["-1.5e2", "0", "1"])),
                "-150",
            ),
            (
                PgType::Date,
                Arc::new(Date64Array::from(vec![86_400_000, 0, 1])),
                "1970-01-02",
            ),
            (
                PgType::Time,
                Arc::new(Time32SecondArray::from(vec![61, 0, 1])),
                "00:01:01",
            ),
            (
                PgType::Time,
                Arc::new(Time64NanosecondArray::from(vec![1000, 0, 1000])),
                "00:00:00.000001",
            ),
            (
                PgType::Timestamp,
                Arc::new(TimestampSecondArray::from(vec![0, 0, 1])),
                "1970-01-01 00:00:00",
            ),
            (
                PgType::Interval,
                Arc::new(DurationMillisecondArray::from(vec![-1500, 0, 1])),
                "-00:00:01.5",
            ),
            (
                PgType::Bytea,
                Arc::new(LargeBinaryArray::from(vec![&b"a"[..], b"", b""])),
                "\\x61",
            ),
        ];
        for (ty, array, _) in cases {
            let schema = schema_of(vec![("c", array.data_type().clone())]);
            let mut encoder = CopyEncoder::new(vec![col("c", ty.clone())], &schema).unwrap();
            let batch = RecordBatch::try_new(Arc::new(schema), vec![array]).unwrap();
            encoder.encode(&batch, &mut BytesMut::new()).unwrap();
        }
        // Sub-microsecond nanoseconds cannot be written.
        let schema = schema_of(vec![("t", DataType::Timestamp(U::Nanosecond, None))]);
        let mut encoder = CopyEncoder::new(vec![col("t", PgType::Timestamp)], &schema).unwrap();
        let batch = RecordBatch::try_new(
            Arc::new(schema),
            vec![Arc::new(TimestampNanosecondArray::from(vec![1]))],
        );
        assert!(encoder
            .encode(&batch.unwrap(), &mut BytesMut::new())
            .unwrap_err()
            .0
            .contains("sub-microsecond"));
    }

    #[test]
    fn batches_are_cut_by_bytes() {
        let columns = vec![col("blob", PgType::Bytea)];
        let schema = CopyDecoder::new(columns.clone(), 1).schema();
        let blob = vec![7u8; 6 << 20];
        let array = BinaryArray::from(vec![&blob[..]; 6]);
        let batch = RecordBatch::try_new(schema, vec![Arc::new(array)]).unwrap();
        let stream = encode(&columns, &[batch]);
        let batches = decode(&columns, 1000, stream.chunks(1 << 16)).unwrap();
        assert_eq!(
            batches.iter().map(|b| b.num_rows()).collect::<Vec<_>>(),
            vec![3, 3]
        );
    }

    #[test]
    fn types_from_postgres() {
        let numeric_12_2 = ((12 << 16) | 2) + 4;
        assert_eq!(
            PgType::from_pg(&Type::INT4, -1, "integer"),
            Ok(PgType::Int4)
        );
        assert_eq!(
            PgType::from_pg(&Type::NUMERIC, numeric_12_2, "numeric(12,2)"),
            Ok(PgType::Numeric(Some((12, 2))))
        );
        assert_eq!(
            PgType::from_pg(&Type::NUMERIC, -1, "numeric"),
            Ok(PgType::Numeric(None))
        );
        let negative_scale = ((5 << 16) | (-2i32 & 0x7ff)) + 4;
        assert_eq!(
            PgType::from_pg(&Type::NUMERIC, negative_scale, ""),
            Ok(PgType::Numeric(Some((5, -2))))
        );
        assert_eq!(PgType::Numeric(Some((5, -2))).arrow_type(), DataType::Utf8);
        assert_eq!(PgType::Numeric(Some((40, 2))).arrow_type(), DataType::Utf8);
        let varchar = PgType::from_pg(&Type::VARCHAR_ARRAY, 24, "character varying(20)[]").unwrap();
        assert_eq!(
            varchar,
            PgType::Array(Box::new(PgType::Text {
                sql: "character varying(20)".into()
            }))
        );
        assert_eq!(varchar.sql(), "character varying(20)[]");
        let numerics =
            PgType::from_pg(&Type::NUMERIC_ARRAY, numeric_12_2, "numeric(12,2)[]").unwrap();
        assert_eq!(
            numerics,
            PgType::Array(Box::new(PgType::Numeric(Some((12, 2)))))
        );
        assert_eq!(
            PgType::from_pg(&Type::VARCHAR, -1, ""),
            Ok(PgType::Text {
                sql: "character varying".into()
            })
        );
        assert_eq!(
            PgType::from_pg(&Type::POINT, -1, "point"),
            Err("type 'point' is not supported".into())
        );
        let labels = vec!["sad".to_string(), "ok".to_string()];
        let enum_type = Type::new(
            "mood".into(),
            16_385,
            Kind::Enum(labels.clone()),
            "public".into(),
        );
        assert_eq!(PgType::from_pg(&enum_type, -1, "mood"), Ok(mood()));
        let enum_array = Type::new(
            "_mood".into(),
            16_384,
            Kind::Array(enum_type),
            "public".into(),
        );
        assert_eq!(
            PgType::from_pg(&enum_array, -1, "mood[]"),
            Ok(PgType::Array(Box::new(mood())))
        );
        let domain = Type::new(
            "posint".into(),
            16_390,
            Kind::Domain(Type::INT4),
            "public".into(),
        );
        assert_eq!(PgType::from_pg(&domain, -1, "posint"), Ok(PgType::Int4));
        let citext = Type::new("citext".into(), 16_400, Kind::Simple, "public".into());
        assert_eq!(
            PgType::from_pg(&citext, -1, "citext"),
            Ok(PgType::Text {
                sql: "citext".into()
            })
        );
        for (sql, oid) in [
            ("character varying(3)", 1043),
            ("character(5)", 1042),
            ("bpchar", 1042),
            ("name", 19),
            ("text", 25),
        ] {
            assert_eq!(PgType::Text { sql: sql.into() }.element_oid(), oid, "{sql}");
        }
    }

    #[test]
    fn arrow_fields_round_trip_to_postgres_types() {
        let types = [
            PgType::Bool,
            PgType::Int2,
            PgType::Int4,
            PgType::Int8,
            PgType::Float4,
            PgType::Float8,
            PgType::Numeric(Some((12, 2))),
            PgType::Numeric(Some((60, 10))),
            PgType::Numeric(Some((5, -2))),
            PgType::Numeric(None),
            text_type(),
            PgType::Text {
                sql: "character varying(20)".into(),
            },
            PgType::Text {
                sql: "character(5)".into(),
            },
            PgType::Bytea,
            PgType::Date,
            PgType::Time,
            PgType::Timestamp,
            PgType::Timestamptz,
            PgType::Interval,
            PgType::Uuid,
            PgType::Json,
            PgType::Jsonb,
            PgType::Enum {
                sql: "\"Odd\"\"Mood\"".into(),
                labels: vec!["a\"b".into(), "c\\d\n".into(), "é😀".into()],
                oid: 0,
            },
            PgType::Array(Box::new(PgType::Int4)),
            PgType::Array(Box::new(PgType::Numeric(None))),
            PgType::Array(Box::new(PgType::Enum {
                sql: "mood".into(),
                labels: vec!["x".into()],
                oid: 0,
            })),
        ];
        for ty in types {
            let field = PgColumn {
                name: "c".into(),
                ty: ty.clone(),
                nullable: false,
            }
            .arrow_field();
            assert_eq!(PgType::from_arrow(&field), Ok(ty.clone()), "{field:?}");
            // The metadata still applies after a trip through another string/time representation…
            let relaxed = match field.data_type() {
                DataType::Utf8 => field.clone().with_data_type(DataType::LargeUtf8),
                DataType::Timestamp(_, tz) => field
                    .clone()
                    .with_data_type(DataType::Timestamp(TimeUnit::Millisecond, tz.clone())),
                _ => field.clone(),
            };
            assert_eq!(PgType::from_arrow(&relaxed), Ok(ty.clone()));
        }
        // …but not when the Arrow type no longer matches it.
        let stale = PgColumn {
            name: "c".into(),
            ty: PgType::Int4,
            nullable: true,
        }
        .arrow_field()
        .with_data_type(DataType::Int64);
        assert_eq!(PgType::from_arrow(&stale), Ok(PgType::Int8));
        let uuid = PgColumn {
            name: "u".into(),
            ty: PgType::Uuid,
            nullable: true,
        }
        .arrow_field();
        assert_eq!(
            uuid.metadata()
                .get("ARROW:extension:name")
                .map(String::as_str),
            Some("arrow.uuid")
        );
    }

    #[test]
    fn arrow_types_without_metadata() {
        use DataType as D;
        let item = |t: D| Arc::new(Field::new("item", t, true));
        let cases = [
            (D::Int8, PgType::Int2),
            (D::UInt8, PgType::Int2),
            (D::UInt16, PgType::Int4),
            (D::UInt32, PgType::Int8),
            (D::UInt64, PgType::Numeric(Some((20, 0)))),
            (D::Float16, PgType::Float4),
            (D::Decimal256(50, 3), PgType::Numeric(Some((50, 3)))),
            (D::Utf8View, text_type()),
            (
                D::Dictionary(Box::new(D::Int32), Box::new(D::Utf8)),
                text_type(),
            ),
            (D::FixedSizeBinary(16), PgType::Bytea),
            (D::BinaryView, PgType::Bytea),
            (D::Date64, PgType::Date),
            (D::Time32(TimeUnit::Millisecond), PgType::Time),
            (D::Timestamp(TimeUnit::Nanosecond, None), PgType::Timestamp),
            (
                D::Timestamp(TimeUnit::Second, Some("+02:00".into())),
                PgType::Timestamptz,
            ),
            (D::Duration(TimeUnit::Second), PgType::Interval),
            (
                D::LargeList(item(D::Int64)),
                PgType::Array(Box::new(PgType::Int8)),
            ),
        ];
        for (dt, ty) in cases {
            assert_eq!(
                PgType::from_arrow(&Field::new("c", dt.clone(), true)),
                Ok(ty),
                "{dt}"
            );
        }
        let uuid = Field::new("u", D::FixedSizeBinary(16), true).with_metadata(HashMap::from([(
            META_EXTENSION.into(),
            UUID_EXTENSION.into(),
        )]));
        assert_eq!(PgType::from_arrow(&uuid), Ok(PgType::Uuid));
        assert_eq!(
            PgType::from_arrow(&Field::new("c", D::Null, true)),
            Err("Arrow type Null has no PostgreSQL equivalent".into())
        );
        assert!(PgType::from_arrow(&Field::new(
            "c",
            D::List(item(D::List(item(D::Int32)))),
            true
        ))
        .is_err());
        assert!(PgType::from_arrow(&Field::new("c", D::Decimal128(10, -2), true)).is_err());
    }

    #[test]
    fn json_string_arrays() {
        let labels = vec![
            "".to_string(),
            "a\"b\\c".into(),
            "\u{1}\t".into(),
            "日本😀".into(),
        ];
        assert_eq!(parse_json_strings(&json_strings(&labels)), Some(labels));
        assert_eq!(
            parse_json_strings(" [ \"\\ud83d\\ude00\" , \"\\u00e9\" ] "),
            Some(vec!["😀".into(), "é".into()])
        );
        assert_eq!(parse_json_strings("[]"), Some(vec![]));
        assert_eq!(parse_json_strings("[1]"), None);
        assert_eq!(parse_json_strings("[\"a\"] x"), None);
    }
}
