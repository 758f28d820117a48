//! MySQL column types and their Arrow types, and values both ways: binary-protocol values
//! into Arrow builders, Arrow values into SQL literals.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder,
    Decimal256Builder, Float32Builder, Float64Builder, Int16Builder, Int32Builder, Int64Builder,
    Int8Builder, RecordBatchOptions, StringBuilder, Time64MicrosecondBuilder,
    TimestampMicrosecondBuilder, UInt16Builder, UInt32Builder, UInt64Builder, UInt8Builder,
};
use arrow::datatypes::{
    i256, DataType, Date32Type, Date64Type, Decimal128Type, Decimal256Type, Field, FieldRef,
    Float16Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, Schema,
    SchemaRef, Time32MillisecondType, Time32SecondType, Time64MicrosecondType,
    Time64NanosecondType, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType, UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use arrow::json::writer::{make_encoder, EncoderOptions};
use arrow::record_batch::RecordBatch;
use mysql_async::consts::{ColumnFlags, ColumnType};
use mysql_async::{Column, Value};

/// Field metadata holding the column's MySQL type (`varchar(40)`, `enum('a','b')`,
/// `decimal(12,2) unsigned`), so a load into MySQL recreates it exactly.
pub const TYPE_KEY: &str = "ferry.mysql.type";

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// How a MySQL column's values travel in Arrow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MyType {
    /// `tinyint(1)` / `bool`
    Bool,
    Int8,
    Int16,
    Int32,
    Int64,
    UInt8,
    UInt16,
    UInt32,
    UInt64,
    Decimal {
        precision: u8,
        scale: i8,
    },
    Float32,
    Float64,
    /// Character strings, `enum`, `set`, `json`, MariaDB's `uuid`/`inet4`/`inet6`.
    Text,
    Binary,
    Date,
    /// `time` within a day; values outside 00:00:00–23:59:59.999999 are refused.
    Time,
    /// `datetime`: wall-clock time without a zone.
    DateTime,
    /// `timestamp`: an instant, read in UTC.
    Timestamp,
    Year,
    /// `bit(n)`, n ≤ 64
    Bit,
}

impl MyType {
    /// From the catalog: `DATA_TYPE` and `COLUMN_TYPE` of `information_schema.COLUMNS`.
    pub fn from_catalog(data_type: &str, column_type: &str) -> Result<Self, String> {
        let column_type = column_type.to_ascii_lowercase();
        let unsigned = column_type.contains("unsigned");
        let pick = |signed, unsigned_ty| if unsigned { unsigned_ty } else { signed };
        Ok(match data_type.to_ascii_lowercase().as_str() {
            "tinyint" if column_type.starts_with("tinyint(1)") && !unsigned => Self::Bool,
            "bool" | "boolean" => Self::Bool,
            "tinyint" => pick(Self::Int8, Self::UInt8),
            "smallint" => pick(Self::Int16, Self::UInt16),
            "mediumint" | "int" | "integer" => pick(Self::Int32, Self::UInt32),
            "bigint" => pick(Self::Int64, Self::UInt64),
            "decimal" | "numeric" | "fixed" => {
                let (precision, scale) = match args(&column_type).as_slice() {
                    [] => (10, 0),
                    [p] => (p.parse().unwrap_or(10), 0),
                    [p, s, ..] => (p.parse().unwrap_or(10), s.parse().unwrap_or(0)),
                };
                Self::Decimal { precision, scale }
            }
            "float" => Self::Float32,
            "double" | "real" | "double precision" => Self::Float64,
            "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" | "enum"
            | "set" | "json" | "uuid" | "inet4" | "inet6" => Self::Text,
            "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => {
                Self::Binary
            }
            "date" => Self::Date,
            "time" => Self::Time,
            "datetime" => Self::DateTime,
            "timestamp" => Self::Timestamp,
            "year" => Self::Year,
            "bit" => Self::Bit,
            other => return Err(format!("type {other} is not supported")),
        })
    }

    /// From a result set's column description (a query, which has no catalog entry).
    pub fn from_result(column: &Column) -> Result<Self, String> {
        use ColumnType::*;
        let unsigned = column.flags().contains(ColumnFlags::UNSIGNED_FLAG);
        let pick = |signed, unsigned_ty| if unsigned { unsigned_ty } else { signed };
        Ok(match column.column_type() {
            MYSQL_TYPE_TINY if column.column_length() == 1 && !unsigned => Self::Bool,
            MYSQL_TYPE_TINY => pick(Self::Int8, Self::UInt8),
            MYSQL_TYPE_SHORT => pick(Self::Int16, Self::UInt16),
            MYSQL_TYPE_INT24 | MYSQL_TYPE_LONG => pick(Self::Int32, Self::UInt32),
            MYSQL_TYPE_LONGLONG => pick(Self::Int64, Self::UInt64),
            MYSQL_TYPE_DECIMAL | MYSQL_TYPE_NEWDECIMAL => {
                let scale = column.decimals().min(38);
                let extra = u32::from(scale > 0) + u32::from(!unsigned);
                let precision = column.column_length().saturating_sub(extra).clamp(1, 65) as u8;
                Self::Decimal {
                    precision: precision.max(scale),
                    scale: scale as i8,
                }
            }
            MYSQL_TYPE_FLOAT => Self::Float32,
            MYSQL_TYPE_DOUBLE => Self::Float64,
            MYSQL_TYPE_DATE | MYSQL_TYPE_NEWDATE => Self::Date,
            MYSQL_TYPE_TIME | MYSQL_TYPE_TIME2 => Self::Time,
            MYSQL_TYPE_DATETIME | MYSQL_TYPE_DATETIME2 => Self::DateTime,
            MYSQL_TYPE_TIMESTAMP | MYSQL_TYPE_TIMESTAMP2 => Self::Timestamp,
            MYSQL_TYPE_YEAR => Self::Year,
            MYSQL_TYPE_BIT => Self::Bit,
            MYSQL_TYPE_NULL => Self::Text,
            MYSQL_TYPE_VARCHAR
            | MYSQL_TYPE_VAR_STRING
            | MYSQL_TYPE_STRING
            | MYSQL_TYPE_TINY_BLOB
            | MYSQL_TYPE_MEDIUM_BLOB
            | MYSQL_TYPE_LONG_BLOB
            | MYSQL_TYPE_BLOB
                if column.character_set() == 63 =>
            {
                Self::Binary
            }
            MYSQL_TYPE_VARCHAR
            | MYSQL_TYPE_VAR_STRING
            | MYSQL_TYPE_STRING
            | MYSQL_TYPE_TINY_BLOB
            | MYSQL_TYPE_MEDIUM_BLOB
            | MYSQL_TYPE_LONG_BLOB
            | MYSQL_TYPE_BLOB
            | MYSQL_TYPE_ENUM
            | MYSQL_TYPE_SET
            | MYSQL_TYPE_JSON => Self::Text,
            other => return Err(format!("type {other:?} is not supported")),
        })
    }

    pub fn arrow(self) -> DataType {
        match self {
            Self::Bool => DataType::Boolean,
            Self::Int8 => DataType::Int8,
            Self::Int16 | Self::Year => DataType::Int16,
            Self::Int32 => DataType::Int32,
            Self::Int64 => DataType::Int64,
            Self::UInt8 => DataType::UInt8,
            Self::UInt16 => DataType::UInt16,
            Self::UInt32 => DataType::UInt32,
            Self::UInt64 | Self::Bit => DataType::UInt64,
            Self::Decimal { precision, scale } if precision <= 38 => {
                DataType::Decimal128(precision, scale)
            }
            Self::Decimal { precision, scale } => DataType::Decimal256(precision, scale),
            Self::Float32 => DataType::Float32,
            Self::Float64 => DataType::Float64,
            Self::Text => DataType::Utf8,
            Self::Binary => DataType::Binary,
            Self::Date => DataType::Date32,
            Self::Time => DataType::Time64(TimeUnit::Microsecond),
            Self::DateTime => DataType::Timestamp(TimeUnit::Microsecond, None),
            Self::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        }
    }
}

/// The numbers in a type's parentheses: `decimal(12,2) unsigned` → `["12", "2"]`.
fn args(column_type: &str) -> Vec<&str> {
    match (column_type.find('('), column_type.find(')')) {
        (Some(a), Some(b)) if a < b => column_type[a + 1..b].split(',').map(str::trim).collect(),
        _ => Vec::new(),
    }
}

/// A column as read: its name, how it travels, and its declared type when known.
#[derive(Clone, Debug)]
pub struct MyColumn {
    pub name: String,
    pub ty: MyType,
    /// `COLUMN_TYPE` from the catalog (absent for a query's columns).
    pub sql: Option<String>,
    pub nullable: bool,
}

impl MyColumn {
    pub fn arrow_field(&self) -> Field {
        let field = Field::new(&self.name, self.ty.arrow(), self.nullable);
        match &self.sql {
            Some(sql) => field.with_metadata(HashMap::from([(TYPE_KEY.to_string(), sql.clone())])),
            None => field,
        }
    }
}

pub fn schema_of(columns: &[MyColumn]) -> SchemaRef {
    Arc::new(Schema::new(
        columns
            .iter()
            .map(MyColumn::arrow_field)
            .collect::<Vec<_>>(),
    ))
}

// ---- reading ------------------------------------------------------------------------

enum Builder {
    Bool(BooleanBuilder),
    Int8(Int8Builder),
    Int16(Int16Builder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    UInt8(UInt8Builder),
    UInt16(UInt16Builder),
    UInt32(UInt32Builder),
    UInt64(UInt64Builder),
    D128(Decimal128Builder, u8, i8),
    D256(Decimal256Builder, u8, i8),
    Float32(Float32Builder),
    Float64(Float64Builder),
    Text(StringBuilder),
    Binary(BinaryBuilder),
    Date(Date32Builder),
    Time(Time64MicrosecondBuilder),
    Timestamp(TimestampMicrosecondBuilder, bool),
}

impl Builder {
    fn new(ty: MyType) -> Self {
        match ty {
            MyType::Bool => Self::Bool(BooleanBuilder::new()),
            MyType::Int8 => Self::Int8(Int8Builder::new()),
            MyType::Int16 | MyType::Year => Self::Int16(Int16Builder::new()),
            MyType::Int32 => Self::Int32(Int32Builder::new()),
            MyType::Int64 => Self::Int64(Int64Builder::new()),
            MyType::UInt8 => Self::UInt8(UInt8Builder::new()),
            MyType::UInt16 => Self::UInt16(UInt16Builder::new()),
            MyType::UInt32 => Self::UInt32(UInt32Builder::new()),
            MyType::UInt64 | MyType::Bit => Self::UInt64(UInt64Builder::new()),
            MyType::Decimal { precision, scale } if precision <= 38 => {
                Self::D128(Decimal128Builder::new(), precision, scale)
            }
            MyType::Decimal { precision, scale } => {
                Self::D256(Decimal256Builder::new(), precision, scale)
            }
            MyType::Float32 => Self::Float32(Float32Builder::new()),
            MyType::Float64 => Self::Float64(Float64Builder::new()),
            MyType::Text => Self::Text(StringBuilder::new()),
            MyType::Binary => Self::Binary(BinaryBuilder::new()),
            MyType::Date => Self::Date(Date32Builder::new()),
            MyType::Time => Self::Time(Time64MicrosecondBuilder::new()),
            MyType::DateTime => Self::Timestamp(TimestampMicrosecondBuilder::new(), false),
            MyType::Timestamp => Self::Timestamp(TimestampMicrosecondBuilder::new(), true),
        }
    }

    /// Appends one value; returns about how many bytes it holds.
    fn push(&mut self, value: Value) -> Result<usize, String> {
        if value == Value::NULL {
            self.push_null();
            return Ok(1);
        }
        match self {
            Self::Bool(b) => b.append_value(int(&value)? != 0),
            Self::Int8(b) => b.append_value(fit(int(&value)?)?),
            Self::Int16(b) => b.append_value(fit(int(&value)?)?),
            Self::Int32(b) => b.append_value(fit(int(&value)?)?),
            Self::Int64(b) => b.append_value(fit(int(&value)?)?),
            Self::UInt8(b) => b.append_value(fit(int(&value)?)?),
            Self::UInt16(b) => b.append_value(fit(int(&value)?)?),
            Self::UInt32(b) => b.append_value(fit(int(&value)?)?),
            Self::UInt64(b) => b.append_value(match &value {
                // bit(n) arrives as big-endian bytes (integers arrive as integers)
                Value::Bytes(bytes) if bytes.len() <= 8 => {
                    bytes.iter().fold(0u64, |n, b| n << 8 | u64::from(*b))
                }
                _ => fit(int(&value)?)?,
            }),
            Self::D128(b, _, scale) => b.append_value(decimal(&text(&value)?, *scale)?),
            Self::D256(b, _, scale) => b.append_value(decimal256(&text(&value)?, *scale)?),
            Self::Float32(b) => b.append_value(match value {
                Value::Float(f) => f,
                Value::Double(d) => d as f32,
                ref v => parse(&text(v)?)?,
            }),
            Self::Float64(b) => b.append_value(match value {
                Value::Double(d) => d,
                Value::Float(f) => f64::from(f),
                ref v => parse(&text(v)?)?,
            }),
            Self::Text(b) => {
                let s = match value {
                    Value::Bytes(bytes) => {
                        String::from_utf8(bytes).map_err(|_| "not valid UTF-8".to_string())?
                    }
                    other => text(&other)?,
                };
                b.append_value(&s);
                return Ok(s.len() + 4);
            }
            Self::Binary(b) => match value {
                Value::Bytes(bytes) => {
                    b.append_value(&bytes);
                    return Ok(bytes.len() + 4);
                }
                other => b.append_value(text(&other)?.as_bytes()),
            },
            Self::Date(b) => {
                let micros = datetime(&value)?;
                if micros % MICROS_PER_DAY != 0 {
                    return Err("a date with a time of day".into());
                }
                b.append_value(fit(i128::from(micros / MICROS_PER_DAY))?)
            }
            Self::Time(b) => b.append_value(time(&value)?),
            Self::Timestamp(b, _) => b.append_value(datetime(&value)?),
        }
        Ok(8)
    }

    fn push_null(&mut self) {
        match self {
            Self::Bool(b) => b.append_null(),
            Self::Int8(b) => b.append_null(),
            Self::Int16(b) => b.append_null(),
            Self::Int32(b) => b.append_null(),
            Self::Int64(b) => b.append_null(),
            Self::UInt8(b) => b.append_null(),
            Self::UInt16(b) => b.append_null(),
            Self::UInt32(b) => b.append_null(),
            Self::UInt64(b) => b.append_null(),
            Self::D128(b, ..) => b.append_null(),
            Self::D256(b, ..) => b.append_null(),
            Self::Float32(b) => b.append_null(),
            Self::Float64(b) => b.append_null(),
            Self::Text(b) => b.append_null(),
            Self::Binary(b) => b.append_null(),
            Self::Date(b) => b.append_null(),
            Self::Time(b) => b.append_null(),
            Self::Timestamp(b, _) => b.append_null(),
        }
    }

    fn finish(&mut self) -> Result<ArrayRef, String> {
        let array: ArrayRef = match self {
            Self::Bool(b) => Arc::new(b.finish()),
            Self::Int8(b) => Arc::new(b.finish()),
            Self::Int16(b) => Arc::new(b.finish()),
            Self::Int32(b) => Arc::new(b.finish()),
            Self::Int64(b) => Arc::new(b.finish()),
            Self::UInt8(b) => Arc::new(b.finish()),
            Self::UInt16(b) => Arc::new(b.finish()),
            Self::UInt32(b) => Arc::new(b.finish()),
            Self::UInt64(b) => Arc::new(b.finish()),
            Self::D128(b, p, s) => Arc::new(
                b.finish()
                    .with_precision_and_scale(*p, *s)
                    .map_err(|e| e.to_string())?,
            ),
            Self::D256(b, p, s) => Arc::new(
                b.finish()
                    .with_precision_and_scale(*p, *s)
                    .map_err(|e| e.to_string())?,
            ),
            Self::Float32(b) => Arc::new(b.finish()),
            Self::Float64(b) => Arc::new(b.finish()),
            Self::Text(b) => Arc::new(b.finish()),
            Self::Binary(b) => Arc::new(b.finish()),
            Self::Date(b) => Arc::new(b.finish()),
            Self::Time(b) => Arc::new(b.finish()),
            Self::Timestamp(b, utc) => {
                let array = b.finish();
                if *utc {
                    Arc::new(array.with_timezone("UTC"))
                } else {
                    Arc::new(array)
                }
            }
        };
        Ok(array)
    }
}

fn fit<T: TryFrom<i128>>(n: i128) -> Result<T, String> {
    T::try_from(n).map_err(|_| format!("{n} is out of the column's range"))
}

fn parse<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number"))
}

fn int(value: &Value) -> Result<i128, String> {
    match value {
        Value::Int(i) => Ok(i128::from(*i)),
        Value::UInt(u) => Ok(i128::from(*u)),
        other => parse(&text(other)?),
    }
}

fn text(value: &Value) -> Result<String, String> {
    match value {
        Value::Bytes(b) => String::from_utf8(b.clone()).map_err(|_| "not valid UTF-8".into()),
        Value::Int(i) => Ok(i.to_string()),
        Value::UInt(u) => Ok(u.to_string()),
        Value::Float(f) => Ok(f.to_string()),
        Value::Double(d) => Ok(d.to_string()),
        other => Ok(other.as_sql(true).trim_matches('\'').to_string()),
    }
}

/// `-12.340` at scale 3 → -12340.
fn decimal(s: &str, scale: i8) -> Result<i128, String> {
    let digits = decimal_digits(s, scale)?;
    digits
        .parse()
        .map_err(|_| format!("'{s}' does not fit the column's decimal type"))
}

fn decimal256(s: &str, scale: i8) -> Result<i256, String> {
    let digits = decimal_digits(s, scale)?;
    i256::from_string(&digits).ok_or_else(|| format!("'{s}' does not fit the column's decimal"))
}

/// The unscaled integer of a decimal string, as digits with a sign.
fn decimal_digits(s: &str, scale: i8) -> Result<String, String> {
    let s = s.trim();
    let (negative, body) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let (whole, frac) = body.split_once('.').unwrap_or((body, ""));
    let scale = scale.max(0) as usize;
    if whole.is_empty() && frac.is_empty()
        || !whole
            .bytes()
            .chain(frac.bytes())
            .all(|b| b.is_ascii_digit())
    {
        return Err(format!("'{s}' is not a decimal number"));
    }
    if frac.len() > scale && frac[scale..].bytes().any(|b| b != b'0') {
        return Err(format!("'{s}' has more than {scale} decimal places"));
    }
    let mut digits = String::with_capacity(whole.len() + scale + 1);
    if negative {
        digits.push('-');
    }
    digits.push_str(if whole.is_empty() { "0" } else { whole });
    let kept = &frac[..frac.len().min(scale)];
    digits.push_str(kept);
    digits.extend(std::iter::repeat_n('0', scale - kept.len()));
    Ok(digits)
}

/// Microseconds since the epoch of a date or date-time value.
fn datetime(value: &Value) -> Result<i64, String> {
    match *value {
        Value::Date(y, mo, d, h, mi, s, us) => {
            if y == 0 || mo == 0 || d == 0 {
                return Err(format!(
                    "zero date {y:04}-{mo:02}-{d:02} has no calendar day (read it through a query with NULLIF or a CASE)"
                ));
            }
            let days = days_from_civil(i64::from(y), u32::from(mo), u32::from(d));
            Ok(days * MICROS_PER_DAY
                + (i64::from(h) * 3600 + i64::from(mi) * 60 + i64::from(s)) * 1_000_000
                + i64::from(us))
        }
        ref other => {
            let s = text(other)?;
            parse_datetime(&s).ok_or_else(|| format!("'{s}' is not a date"))
        }
    }
}

fn parse_datetime(s: &str) -> Option<i64> {
    let (date, time) = s.split_once([' ', 'T']).unwrap_or((s, "00:00:00"));
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    if y == 0 || m == 0 || day == 0 {
        return None;
    }
    let days = days_from_civil(y, m as u32, day as u32);
    Some(days * MICROS_PER_DAY + time_micros(time)?)
}

fn time_micros(s: &str) -> Option<i64> {
    let (hms, frac) = s.split_once('.').unwrap_or((s, ""));
    let mut p = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (h, m, sec) = (p.next()??, p.next()??, p.next().unwrap_or(Some(0))?);
    let mut micros: i64 = 0;
    for (i, c) in frac
        .chars()
        .chain(std::iter::repeat('0'))
        .take(6)
        .enumerate()
    {
        let _ = i;
        micros = micros * 10 + i64::from(c.to_digit(10)?);
    }
    Some((h * 3600 + m * 60 + sec) * 1_000_000 + micros)
}

/// Microseconds since midnight of a `time` value within one day.
fn time(value: &Value) -> Result<i64, String> {
    let micros = match *value {
        Value::Time(negative, days, h, m, s, us) => {
            let total =
                ((i64::from(days) * 24 + i64::from(h)) * 3600 + i64::from(m) * 60 + i64::from(s))
                    * 1_000_000
                    + i64::from(us);
            if negative {
                -total
            } else {
                total
            }
        }
        ref other => {
            let s = text(other)?;
            match s.strip_prefix('-') {
                Some(rest) => -time_micros(rest).ok_or_else(|| format!("'{s}' is not a time"))?,
                None => time_micros(&s).ok_or_else(|| format!("'{s}' is not a time"))?,
            }
        }
    };
    if !(0..MICROS_PER_DAY).contains(&micros) {
        return Err(format!(
            "time {} is outside 00:00:00..23:59:59.999999, which Arrow's time of day holds (read it through a query, e.g. TIME_TO_SEC(col))",
            format_time(micros)
        ));
    }
    Ok(micros)
}

fn format_time(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let m = micros.unsigned_abs();
    let secs = m / 1_000_000;
    format!(
        "{sign}{:02}:{:02}:{:02}.{:06}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        m % 1_000_000
    )
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date of a day count since 1970-01-01.
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Rows of a result into record batches of the scan's columns.
pub struct RowDecoder {
    schema: SchemaRef,
    columns: Vec<MyColumn>,
    builders: Vec<Builder>,
    rows: usize,
    bytes: usize,
    /// Rows decoded before the current batch, for messages.
    before: u64,
}

impl RowDecoder {
    pub fn new(columns: Vec<MyColumn>) -> Self {
        Self {
            schema: schema_of(&columns),
            builders: columns.iter().map(|c| Builder::new(c.ty)).collect(),
            columns,
            rows: 0,
            bytes: 0,
            before: 0,
        }
    }

    /// Appends a row; an error names the column and the row (1-based).
    pub fn push(&mut self, values: Vec<Value>) -> Result<(), String> {
        for ((value, builder), column) in values
            .into_iter()
            .zip(&mut self.builders)
            .zip(&self.columns)
        {
            self.bytes += builder.push(value).map_err(|e| {
                format!(
                    "column '{}', row {}: {e}",
                    column.name,
                    self.before + self.rows as u64 + 1
                )
            })?;
        }
        self.rows += 1;
        Ok(())
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The rows so far as one batch (none when empty).
    pub fn flush(&mut self) -> Result<Option<RecordBatch>, String> {
        if self.rows == 0 {
            return Ok(None);
        }
        let arrays = self
            .builders
            .iter_mut()
            .map(Builder::finish)
            .collect::<Result<Vec<_>, _>>()?;
        let batch = RecordBatch::try_new_with_options(
            self.schema.clone(),
            arrays,
            &RecordBatchOptions::new().with_row_count(Some(self.rows)),
        )
        .map_err(|e| e.to_string())?;
        self.before += self.rows as u64;
        self.rows = 0;
        self.bytes = 0;
        Ok(Some(batch))
    }
}

// ---- writing ------------------------------------------------------------------------

/// The MySQL type a new column gets for an Arrow field: the recorded MySQL type when the
/// field came from MySQL, else one that holds every value of the Arrow type.
pub fn create_type(field: &Field, key: bool) -> Result<String, String> {
    if let Some(sql) = field.metadata().get(TYPE_KEY) {
        return Ok(sql.clone());
    }
    Ok(match field.data_type() {
        DataType::Null => "text".into(),
        DataType::Boolean => "tinyint(1)".into(),
        DataType::Int8 => "tinyint".into(),
        DataType::Int16 => "smallint".into(),
        DataType::Int32 => "int".into(),
        DataType::Int64 => "bigint".into(),
        DataType::UInt8 => "tinyint unsigned".into(),
        DataType::UInt16 => "smallint unsigned".into(),
        DataType::UInt32 => "int unsigned".into(),
        DataType::UInt64 => "bigint unsigned".into(),
        DataType::Float16 | DataType::Float32 => "float".into(),
        DataType::Float64 => "double".into(),
        DataType::Decimal32(p, s)
        | DataType::Decimal64(p, s)
        | DataType::Decimal128(p, s)
        | DataType::Decimal256(p, s) => {
            if *p > 65 || *s > 30 || *s < 0 {
                return Err(format!(
                    "decimal({p},{s}) does not fit MySQL's decimal (precision ≤ 65, scale 0..30)"
                ));
            }
            format!("decimal({p},{s})")
        }
        // A key needs a bounded length.
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View if key => "varchar(255)".into(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "longtext".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView if key => {
            "varbinary(255)".into()
        }
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "longblob".into(),
        DataType::FixedSizeBinary(n) if *n <= 255 => format!("binary({n})"),
        DataType::FixedSizeBinary(_) => "longblob".into(),
        DataType::Date32 | DataType::Date64 => "date".into(),
        DataType::Time32(TimeUnit::Second) => "time".into(),
        DataType::Time32(_) => "time(3)".into(),
        DataType::Time64(_) => "time(6)".into(),
        DataType::Timestamp(unit, _) => match unit {
            TimeUnit::Second => "datetime".into(),
            TimeUnit::Millisecond => "datetime(3)".into(),
            _ => "datetime(6)".into(),
        },
        DataType::List(_)
        | DataType::LargeList(_)
        | DataType::ListView(_)
        | DataType::LargeListView(_)
        | DataType::FixedSizeList(..)
        | DataType::Struct(_)
        | DataType::Map(..) => "json".into(),
        other => return Err(format!("Arrow type {other} cannot be written to MySQL")),
    })
}

/// Whether values of `ty` can be written as SQL literals.
pub fn writable(ty: &DataType) -> Result<(), String> {
    match ty {
        DataType::Null
        | DataType::Boolean
        | DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64
        | DataType::Float16
        | DataType::Float32
        | DataType::Float64
        | DataType::Decimal128(..)
        | DataType::Decimal256(..)
        | DataType::Utf8
        | DataType::LargeUtf8
        | DataType::Utf8View
        | DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView
        | DataType::FixedSizeBinary(_)
        | DataType::Date32
        | DataType::Date64
        | DataType::Time32(_)
        | DataType::Time64(_)
        | DataType::Timestamp(..)
        | DataType::List(_)
        | DataType::LargeList(_)
        | DataType::FixedSizeList(..)
        | DataType::Struct(_)
        | DataType::Map(..) => Ok(()),
        other => Err(format!("Arrow type {other} cannot be written to MySQL")),
    }
}

/// Writes one batch's columns as SQL literals, row by row.
pub struct LiteralWriter<'a> {
    columns: Vec<ColumnLiterals<'a>>,
    /// Columns that refuse NULL, checked here so the error can name the row.
    not_null: &'a [bool],
}

enum ColumnLiterals<'a> {
    Plain(&'a dyn Array),
    Json(&'a dyn Array, arrow::json::writer::NullableEncoder<'a>),
}

impl ColumnLiterals<'_> {
    fn array(&self) -> &dyn Array {
        match self {
            Self::Plain(array) | Self::Json(array, _) => *array,
        }
    }
}

impl<'a> LiteralWriter<'a> {
    pub fn new(
        batch: &'a RecordBatch,
        fields: &'a [FieldRef],
        not_null: &'a [bool],
        options: &'a EncoderOptions,
    ) -> Result<Self, String> {
        let columns = batch
            .columns()
            .iter()
            .zip(fields)
            .map(|(array, field)| match array.data_type() {
                DataType::List(_)
                | DataType::LargeList(_)
                | DataType::FixedSizeList(..)
                | DataType::Struct(_)
                | DataType::Map(..) => make_encoder(field, array.as_ref(), options)
                    .map(|e| ColumnLiterals::Json(array.as_ref(), e))
                    .map_err(|e| e.to_string()),
                _ => Ok(ColumnLiterals::Plain(array.as_ref())),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { columns, not_null })
    }

    /// Appends `(v1, v2, …)` for `row`; an error names the column index at fault.
    pub fn row(&mut self, row: usize, out: &mut String) -> Result<(), (usize, String)> {
        out.push('(');
        for (i, column) in self.columns.iter_mut().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            if self.not_null.get(i) == Some(&true) && column.array().is_null(row) {
                return Err((i, "NULL into a column that is NOT NULL".into()));
            }
            match column {
                ColumnLiterals::Plain(array) => literal(*array, row, out).map_err(|e| (i, e))?,
                ColumnLiterals::Json(array, encoder) => {
                    if array.is_null(row) {
                        out.push_str("NULL");
                    } else {
                        let mut json = Vec::new();
                        encoder.encode(row, &mut json);
                        let json = String::from_utf8_lossy(&json);
                        string_literal(&json, out);
                    }
                }
            }
        }
        out.push(')');
        Ok(())
    }
}

fn string_literal(s: &str, out: &mut String) {
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push('\'');
        }
        out.push(c);
    }
    out.push('\'');
}

fn hex_literal(bytes: &[u8], out: &mut String) {
    out.push_str("X'");
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out.push('\'');
}

fn date_literal(days: i64, out: &mut String) {
    let (y, m, d) = civil_from_days(days);
    let _ = write!(out, "'{y:04}-{m:02}-{d:02}'");
}

fn micros_literal(micros: i64, out: &mut String) {
    let days = micros.div_euclid(MICROS_PER_DAY);
    let rest = micros.rem_euclid(MICROS_PER_DAY);
    let (y, m, d) = civil_from_days(days);
    let secs = rest / 1_000_000;
    let _ = write!(
        out,
        "'{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:06}'",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        rest % 1_000_000
    );
}

fn time_literal(micros: i64, out: &mut String) -> Result<(), String> {
    if !(0..MICROS_PER_DAY).contains(&micros) {
        return Err(format!("time {} is not a time of day", format_time(micros)));
    }
    let _ = write!(out, "'{}'", format_time(micros));
    Ok(())
}

fn scaled(digits: String, scale: i8, out: &mut String) {
    let (sign, digits) = match digits.strip_prefix('-') {
        Some(d) => ("-", d),
        None => ("", digits.as_str()),
    };
    if scale <= 0 {
        out.push_str(sign);
        out.push_str(digits);
        out.extend(std::iter::repeat_n('0', (-scale) as usize));
        return;
    }
    let scale = scale as usize;
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (whole, frac) = padded.split_at(padded.len() - scale);
    let _ = write!(out, "{sign}{whole}.{frac}");
}

fn finite(v: f64, out: &mut String) -> Result<(), String> {
    if !v.is_finite() {
        return Err(format!(
            "{v} cannot be stored in MySQL, which has no NaN or infinity"
        ));
    }
    let _ = write!(out, "{v:?}");
    Ok(())
}

/// The SQL literal of `array[row]`.
fn literal(array: &dyn Array, row: usize, out: &mut String) -> Result<(), String> {
    if array.is_null(row) {
        out.push_str("NULL");
        return Ok(());
    }
    macro_rules! int {
        ($t:ty) => {{
            let _ = write!(out, "{}", array.as_primitive::<$t>().value(row));
        }};
    }
    match array.data_type() {
        DataType::Null => out.push_str("NULL"),
        DataType::Boolean => out.push(if array.as_boolean().value(row) {
            '1'
        } else {
            '0'
        }),
        DataType::Int8 => int!(Int8Type),
        DataType::Int16 => int!(Int16Type),
        DataType::Int32 => int!(Int32Type),
        DataType::Int64 => int!(Int64Type),
        DataType::UInt8 => int!(UInt8Type),
        DataType::UInt16 => int!(UInt16Type),
        DataType::UInt32 => int!(UInt32Type),
        DataType::UInt64 => int!(UInt64Type),
        DataType::Float16 => finite(array.as_primitive::<Float16Type>().value(row).to_f64(), out)?,
        // The exact value of the f32, so MySQL's double-to-float conversion finds it again.
        DataType::Float32 => finite(
            f64::from(array.as_primitive::<Float32Type>().value(row)),
            out,
        )?,
        DataType::Float64 => finite(array.as_primitive::<Float64Type>().value(row), out)?,
        DataType::Decimal128(_, s) => scaled(
            array
                .as_primitive::<Decimal128Type>()
                .value(row)
                .to_string(),
            *s,
            out,
        ),
        DataType::Decimal256(_, s) => scaled(
            array
                .as_primitive::<Decimal256Type>()
                .value(row)
                .to_string(),
            *s,
            out,
        ),
        DataType::Utf8 => string_literal(array.as_string::<i32>().value(row), out),
        DataType::LargeUtf8 => string_literal(array.as_string::<i64>().value(row), out),
        DataType::Utf8View => string_literal(array.as_string_view().value(row), out),
        DataType::Binary => hex_literal(array.as_binary::<i32>().value(row), out),
        DataType::LargeBinary => hex_literal(array.as_binary::<i64>().value(row), out),
        DataType::BinaryView => hex_literal(array.as_binary_view().value(row), out),
        DataType::FixedSizeBinary(_) => hex_literal(array.as_fixed_size_binary().value(row), out),
        DataType::Date32 => date_literal(
            i64::from(array.as_primitive::<Date32Type>().value(row)),
            out,
        ),
        DataType::Date64 => date_literal(
            array
                .as_primitive::<Date64Type>()
                .value(row)
                .div_euclid(86_400_000),
            out,
        ),
        DataType::Time32(TimeUnit::Second) => time_literal(
            i64::from(array.as_primitive::<Time32SecondType>().value(row)) * 1_000_000,
            out,
        )?,
        DataType::Time32(_) => time_literal(
            i64::from(array.as_primitive::<Time32MillisecondType>().value(row)) * 1000,
            out,
        )?,
        DataType::Time64(TimeUnit::Microsecond) => time_literal(
            array.as_primitive::<Time64MicrosecondType>().value(row),
            out,
        )?,
        DataType::Time64(_) => {
            let ns = array.as_primitive::<Time64NanosecondType>().value(row);
            time_literal(sub_micro(ns)?, out)?
        }
        DataType::Timestamp(unit, _) => {
            let micros = match unit {
                TimeUnit::Second => array
                    .as_primitive::<TimestampSecondType>()
                    .value(row)
                    .checked_mul(1_000_000)
                    .ok_or("timestamp out of range")?,
                TimeUnit::Millisecond => array
                    .as_primitive::<TimestampMillisecondType>()
                    .value(row)
                    .checked_mul(1000)
                    .ok_or("timestamp out of range")?,
                TimeUnit::Microsecond => {
                    array.as_primitive::<TimestampMicrosecondType>().value(row)
                }
                TimeUnit::Nanosecond => {
                    sub_micro(array.as_primitive::<TimestampNanosecondType>().value(row))?
                }
            };
            micros_literal(micros, out)
        }
        other => return Err(format!("Arrow type {other} cannot be written to MySQL")),
    }
    Ok(())
}

/// Nanoseconds to microseconds, refusing to drop a fraction (MySQL keeps six digits).
fn sub_micro(ns: i64) -> Result<i64, String> {
    if ns % 1000 != 0 {
        return Err(format!(
            "{ns} ns has a fraction below a microsecond, which MySQL cannot hold"
        ));
    }
    Ok(ns / 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_conversions_agree() {
        for (y, m, d) in [
            (1970, 1, 1),
            (1000, 1, 1),
            (9999, 12, 31),
            (2000, 2, 29),
            (1, 1, 1),
        ] {
            assert_eq!(civil_from_days(days_from_civil(y, m, d)), (y, m, d));
        }
        assert_eq!(days_from_civil(1970, 1, 2), 1);
        let mut s = String::new();
        micros_literal(-1, &mut s);
        assert_eq!(s, "'1969-12-31 23:59:59.999999'");
    }

    #[test]
    fn decimals_parse_and_print_at_their_scale() {
        assert_eq!(decimal("-12.34", 3).unwrap(), -12340);
        assert_eq!(decimal(".5", 1).unwrap(), 5);
        assert!(decimal("1.25", 1).is_err());
        let mut s = String::new();
        scaled("-5".into(), 3, &mut s);
        assert_eq!(s, "-0.005");
        s.clear();
        scaled("12345".into(), 2, &mut s);
        assert_eq!(s, "123.45");
        assert_eq!(
            decimal256("-12345678901234567890123456789012345678901234.5", 1)
                .unwrap()
                .to_string(),
            "-123456789012345678901234567890123456789012345"
        );
    }

    #[test]
    fn catalog_types_map_to_arrow() {
        assert_eq!(
            MyType::from_catalog("tinyint", "tinyint(1)").unwrap(),
            MyType::Bool
        );
        assert_eq!(
            MyType::from_catalog("int", "int(10) unsigned").unwrap(),
            MyType::UInt32
        );
        assert_eq!(
            MyType::from_catalog("decimal", "decimal(65,30) unsigned").unwrap(),
            MyType::Decimal {
                precision: 65,
                scale: 30
            }
        );
        assert!(MyType::from_catalog("geometry", "geometry").is_err());
    }
}
