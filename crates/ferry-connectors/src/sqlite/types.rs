//! SQLite declared types ⇄ Arrow types, and the text forms dates and times take in SQLite.
//!
//! SQLite stores any value in any column; a column's declared type is a name that ferry
//! maps to one Arrow type, by well-known names first and SQLite's affinity rules after.
//! The declared type travels in field metadata so a load into SQLite recreates it.

use std::collections::HashMap;

use arrow::datatypes::{DataType, Field, TimeUnit};

/// Field metadata key holding the column's declared SQLite type.
pub(crate) const META_SQLITE_TYPE: &str = "ferry.sqlite.type";
const META_PG_TYPE: &str = "ferry.pg.type";
const META_EXTENSION: &str = "ARROW:extension:name";
const UUID_EXTENSION: &str = "arrow.uuid";

/// What ferry reads a column as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SqlType {
    Bool,
    Int16,
    Int64,
    Float64,
    Decimal(u8, i8),
    Text,
    Blob,
    Date,
    Timestamp,
    TimestampTz,
    Time,
    Uuid,
}

impl SqlType {
    /// The type a declared type names; `None` when there is no declared type (SQLite's
    /// BLOB affinity without a name: the values decide).
    pub fn from_declared(declared: &str) -> Option<SqlType> {
        let upper = declared.trim().to_ascii_uppercase();
        if upper.is_empty() {
            return None;
        }
        let (bare, args) = match (upper.find('('), upper.rfind(')')) {
            (Some(open), Some(close)) if open < close => (
                upper[..open].trim().to_string(),
                Some(&upper[open + 1..close]),
            ),
            _ => (upper.clone(), None),
        };
        let bare = bare.split_whitespace().collect::<Vec<_>>().join(" ");
        Some(match bare.as_str() {
            "BOOLEAN" | "BOOL" => SqlType::Bool,
            "TINYINT" | "SMALLINT" | "INT2" => SqlType::Int16,
            // DECIMAL_TEXT: TEXT affinity, so SQLite keeps every digit (ferry's name for
            // decimals wider than a REAL holds exactly).
            "DECIMAL" | "NUMERIC" | "DECIMAL_TEXT" => match args.and_then(precision_scale) {
                Some((p, s)) if (1..=38).contains(&p) && s >= 0 && s as u8 <= p => {
                    SqlType::Decimal(p, s)
                }
                Some(_) => SqlType::Text,
                None => SqlType::Float64,
            },
            "DATE" => SqlType::Date,
            "DATETIME" | "TIMESTAMP" | "TIMESTAMP WITHOUT TIME ZONE" => SqlType::Timestamp,
            "TIMESTAMPTZ" | "TIMESTAMP WITH TIME ZONE" => SqlType::TimestampTz,
            "TIME" | "TIME WITHOUT TIME ZONE" => SqlType::Time,
            "UUID" => SqlType::Uuid,
            "JSON" | "JSONB" => SqlType::Text,
            // SQLite's affinity rules, in its order.
            b if b.contains("INT") => SqlType::Int64,
            b if b.contains("CHAR") || b.contains("CLOB") || b.contains("TEXT") => SqlType::Text,
            b if b.contains("BLOB") => SqlType::Blob,
            b if b.contains("REAL") || b.contains("FLOA") || b.contains("DOUB") => SqlType::Float64,
            // NUMERIC affinity: SQLite keeps such values as integers or reals.
            _ => SqlType::Float64,
        })
    }

    /// The type a column without a declared type is read as, from its first value's
    /// storage class (`typeof()`).
    pub fn from_storage_class(class: &str) -> SqlType {
        match class {
            "integer" => SqlType::Int64,
            "real" => SqlType::Float64,
            "blob" => SqlType::Blob,
            _ => SqlType::Text,
        }
    }

    pub fn arrow_type(self) -> DataType {
        match self {
            SqlType::Bool => DataType::Boolean,
            SqlType::Int16 => DataType::Int16,
            SqlType::Int64 => DataType::Int64,
            SqlType::Float64 => DataType::Float64,
            SqlType::Decimal(p, s) => DataType::Decimal128(p, s),
            SqlType::Text => DataType::Utf8,
            SqlType::Blob => DataType::Binary,
            SqlType::Date => DataType::Date32,
            SqlType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            SqlType::TimestampTz => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            SqlType::Time => DataType::Time64(TimeUnit::Microsecond),
            SqlType::Uuid => DataType::FixedSizeBinary(16),
        }
    }

    /// What a message calls the values this type holds.
    pub fn describe(self) -> &'static str {
        match self {
            SqlType::Bool => "a boolean (0 or 1)",
            SqlType::Int16 => "a 16-bit integer",
            SqlType::Int64 => "an integer",
            SqlType::Float64 => "a number",
            SqlType::Decimal(..) => "a decimal",
            SqlType::Text => "text",
            SqlType::Blob => "a blob",
            SqlType::Date => "a date (YYYY-MM-DD)",
            SqlType::Timestamp | SqlType::TimestampTz => {
                "a timestamp (YYYY-MM-DD HH:MM:SS[.ffffff] or unix seconds)"
            }
            SqlType::Time => "a time (HH:MM:SS[.ffffff])",
            SqlType::Uuid => "a UUID (text or a 16-byte blob)",
        }
    }

    /// Whether values of Arrow type `dt` can be written into a column of this type so that
    /// it reads them back.
    pub fn accepts(self, dt: &DataType) -> bool {
        use DataType as D;
        let integer = dt.is_integer();
        let text = matches!(dt, D::Utf8 | D::LargeUtf8 | D::Utf8View)
            || matches!(dt, D::Dictionary(_, v) if matches!(**v, D::Utf8 | D::LargeUtf8));
        let decimal = matches!(
            dt,
            D::Decimal32(..) | D::Decimal64(..) | D::Decimal128(..) | D::Decimal256(..)
        );
        match self {
            SqlType::Text => true,
            SqlType::Bool => matches!(dt, D::Boolean) || integer,
            SqlType::Int16 | SqlType::Int64 => {
                integer
                    || matches!(dt, D::Boolean)
                    || matches!(
                        dt,
                        D::Decimal32(_, 0)
                            | D::Decimal64(_, 0)
                            | D::Decimal128(_, 0)
                            | D::Decimal256(_, 0)
                    )
            }
            SqlType::Float64 => integer || dt.is_floating() || decimal || matches!(dt, D::Boolean),
            SqlType::Decimal(..) => integer || decimal || text,
            SqlType::Blob => matches!(
                dt,
                D::Binary | D::LargeBinary | D::BinaryView | D::FixedSizeBinary(_)
            ),
            SqlType::Date => matches!(dt, D::Date32 | D::Date64) || text,
            SqlType::Timestamp | SqlType::TimestampTz => {
                matches!(dt, D::Timestamp(..) | D::Date32 | D::Date64) || text
            }
            SqlType::Time => matches!(dt, D::Time32(_) | D::Time64(_)) || text,
            SqlType::Uuid => matches!(dt, D::FixedSizeBinary(16)) || text,
        }
    }
}

fn precision_scale(args: &str) -> Option<(u8, i8)> {
    let mut parts = args.split(',').map(str::trim);
    let p = parts.next()?.parse().ok()?;
    let s = parts.next().map_or(Some(0), |s| s.parse().ok())?;
    parts.next().is_none().then_some((p, s))
}

/// The Arrow field of a column: its type, and metadata keeping the declared type.
pub(crate) fn arrow_field(name: &str, declared: &str, ty: SqlType, nullable: bool) -> Field {
    let mut meta = HashMap::new();
    if !declared.is_empty() {
        meta.insert(META_SQLITE_TYPE.to_string(), declared.to_string());
    }
    if ty == SqlType::Uuid {
        meta.insert(META_EXTENSION.to_string(), UUID_EXTENSION.to_string());
    }
    Field::new(name, ty.arrow_type(), nullable).with_metadata(meta)
}

/// The declared type a new column for `field` gets: the SQLite type the field came from
/// when it still reads back as the field's type, else the natural one for the Arrow type.
pub(crate) fn declared_for(field: &Field) -> String {
    use DataType as D;
    let dt = field.data_type();
    if let Some(declared) = field.metadata().get(META_SQLITE_TYPE) {
        if let Some(ty) = SqlType::from_declared(declared) {
            if same_shape(&ty.arrow_type(), dt) {
                return declared.clone();
            }
        }
    }
    let is_uuid = field.metadata().get(META_EXTENSION).map(String::as_str) == Some(UUID_EXTENSION);
    match dt {
        D::Boolean => "BOOLEAN".into(),
        D::Int8 | D::Int16 | D::UInt8 => "SMALLINT".into(),
        D::Int32 | D::Int64 | D::UInt16 | D::UInt32 | D::UInt64 => "INTEGER".into(),
        D::Float16 | D::Float32 | D::Float64 => "REAL".into(),
        // SQLite turns text in a NUMERIC column into a REAL, exact to 15 digits only.
        D::Decimal32(p, s) | D::Decimal64(p, s) | D::Decimal128(p, s) | D::Decimal256(p, s)
            if *s >= 0 && *p <= 15 =>
        {
            format!("DECIMAL({p},{s})")
        }
        D::Decimal32(p, s) | D::Decimal64(p, s) | D::Decimal128(p, s) | D::Decimal256(p, s)
            if *s >= 0 && *p <= 38 =>
        {
            format!("DECIMAL_TEXT({p},{s})")
        }
        // Wider than Decimal128 or a negative scale: kept as exact text.
        D::Decimal32(..) | D::Decimal64(..) | D::Decimal128(..) | D::Decimal256(..) => {
            "TEXT".into()
        }
        D::Utf8 | D::LargeUtf8 | D::Utf8View | D::Dictionary(..) => {
            text_from_pg(field.metadata().get(META_PG_TYPE).map(String::as_str))
        }
        D::Binary | D::LargeBinary | D::BinaryView => "BLOB".into(),
        D::FixedSizeBinary(16) if is_uuid => "UUID".into(),
        D::FixedSizeBinary(_) => "BLOB".into(),
        D::Date32 | D::Date64 => "DATE".into(),
        D::Timestamp(_, None) => "TIMESTAMP".into(),
        D::Timestamp(_, Some(_)) => "TIMESTAMPTZ".into(),
        D::Time32(_) | D::Time64(_) => "TIME".into(),
        D::List(_)
        | D::LargeList(_)
        | D::ListView(_)
        | D::LargeListView(_)
        | D::FixedSizeList(..)
        | D::Struct(_)
        | D::Map(..) => "JSON".into(),
        _ => "TEXT".into(),
    }
}

/// A text column that came from PostgreSQL keeps what SQLite has a name for.
fn text_from_pg(pg: Option<&str>) -> String {
    let Some(pg) = pg else {
        return "TEXT".into();
    };
    let lower = pg.to_ascii_lowercase();
    let args = lower
        .find('(')
        .and_then(|i| lower[i..].strip_suffix(')').map(|a| &a[1..]))
        .filter(|a| a.chars().all(|c| c.is_ascii_digit()));
    match (lower.as_str(), args) {
        ("json" | "jsonb", _) => "JSON".into(),
        (l, Some(n)) if l.starts_with("character varying") || l.starts_with("varchar") => {
            format!("VARCHAR({n})")
        }
        (l, Some(n)) if l.starts_with("character") || l.starts_with("char") => {
            format!("CHAR({n})")
        }
        _ => "TEXT".into(),
    }
}

/// Arrow types equal in what decides the SQLite type (string and binary flavours,
/// timestamp units, time units).
fn same_shape(a: &DataType, b: &DataType) -> bool {
    fn shape(dt: &DataType) -> DataType {
        use DataType as D;
        match dt {
            D::LargeUtf8 | D::Utf8View | D::Dictionary(..) => D::Utf8,
            D::LargeBinary | D::BinaryView => D::Binary,
            D::Timestamp(_, tz) => {
                D::Timestamp(TimeUnit::Microsecond, tz.as_ref().map(|_| "UTC".into()))
            }
            D::Time32(_) | D::Time64(_) => D::Time64(TimeUnit::Microsecond),
            D::Date64 => D::Date32,
            D::Int8 | D::UInt8 => D::Int16,
            D::Int32 | D::UInt16 | D::UInt32 | D::UInt64 => D::Int64,
            D::Float16 | D::Float32 => D::Float64,
            D::Decimal32(p, s) | D::Decimal64(p, s) | D::Decimal256(p, s) => D::Decimal128(*p, *s),
            other => other.clone(),
        }
    }
    shape(a) == shape(b)
}

// ---------------------------------------------------------------------------------------------
// Text forms
// ---------------------------------------------------------------------------------------------

pub(crate) const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Days since 1970-01-01 of a proleptic Gregorian date.
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// (year, month, day) of days since 1970-01-01.
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn number(s: &str, len: usize) -> Option<u32> {
    (s.len() == len && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// `YYYY-MM-DD` → days since 1970-01-01.
pub(crate) fn parse_date(s: &str) -> Option<i64> {
    let (y, rest) = s.split_at_checked(4)?;
    let y = number(y, 4)? as i64;
    let rest = rest.strip_prefix('-')?;
    let (m, rest) = rest.split_at_checked(2)?;
    let d = number(rest.strip_prefix('-')?, 2)?;
    let m = number(m, 2)?;
    ((1..=12).contains(&m) && d >= 1 && d <= days_in_month(y, m)).then(|| days_from_civil(y, m, d))
}

/// `HH:MM[:SS[.ffffff]]` → microseconds since midnight. More than six fractional digits
/// are refused unless they are zeros: the value would not be exact.
pub(crate) fn parse_time(s: &str) -> Option<i64> {
    let (hm, rest) = s.split_at_checked(5)?;
    let h = number(&hm[..2], 2)?;
    let m = number(hm.get(3..5)?, 2)?;
    if hm.as_bytes()[2] != b':' || h > 23 || m > 59 {
        return None;
    }
    let mut micros = (h as i64 * 3600 + m as i64 * 60) * 1_000_000;
    if rest.is_empty() {
        return Some(micros);
    }
    let rest = rest.strip_prefix(':')?;
    let (sec, frac) = match rest.split_once('.') {
        Some((sec, frac)) => (sec, Some(frac)),
        None => (rest, None),
    };
    let sec = number(sec, 2)?;
    if sec > 59 {
        return None;
    }
    micros += sec as i64 * 1_000_000;
    if let Some(frac) = frac {
        if frac.is_empty() || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let (kept, extra) = frac.split_at(frac.len().min(6));
        if extra.bytes().any(|b| b != b'0') {
            return None;
        }
        micros += kept.parse::<i64>().ok()? * 10_i64.pow(6 - kept.len() as u32);
    }
    Some(micros)
}

/// `YYYY-MM-DD[ T]HH:MM[:SS[.ffffff]][Z|±HH:MM]`, or a date alone → microseconds since
/// 1970-01-01 00:00 UTC (an offset is applied).
pub(crate) fn parse_timestamp(s: &str) -> Option<i64> {
    let days = parse_date(s.get(..10)?)?;
    let rest = &s[10..];
    if rest.is_empty() {
        return Some(days * MICROS_PER_DAY);
    }
    let rest = rest.strip_prefix([' ', 'T'])?;
    let (time, offset) = match rest.find(['Z', 'z', '+', '-']) {
        Some(i) => (&rest[..i], Some(&rest[i..])),
        None => (rest.trim_end(), None),
    };
    let mut micros = days * MICROS_PER_DAY + parse_time(time.trim_end())?;
    if let Some(offset) = offset {
        if !offset.eq_ignore_ascii_case("z") {
            let sign = if offset.starts_with('-') { -1 } else { 1 };
            let o = &offset[1..];
            let (h, m) = match o.split_once(':') {
                Some((h, m)) => (number(h, 2)?, number(m, 2)?),
                None if o.len() == 4 => (number(&o[..2], 2)?, number(&o[2..], 2)?),
                None => (number(o, 2)?, 0),
            };
            micros -= sign * (h as i64 * 3600 + m as i64 * 60) * 1_000_000;
        }
    }
    Some(micros)
}

pub(crate) fn format_date(days: i64) -> String {
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// `HH:MM:SS`, with as many fractional digits as the value needs (none when whole).
pub(crate) fn format_time(nanos_of_day: i64) -> String {
    let secs = nanos_of_day / 1_000_000_000;
    let nanos = nanos_of_day % 1_000_000_000;
    let mut out = format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    if nanos != 0 {
        out.push_str(format!(".{nanos:09}").trim_end_matches('0'));
    }
    out
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff]` of nanoseconds since the epoch (i128: no overflow for
/// any unit).
pub(crate) fn format_timestamp(nanos: i128) -> String {
    let day = 86_400_000_000_000_i128;
    let days = nanos.div_euclid(day) as i64;
    let of_day = nanos.rem_euclid(day) as i64;
    format!("{} {}", format_date(days), format_time(of_day))
}

/// A UUID's 16 bytes from its text (with or without hyphens, braces).
pub(crate) fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let hex: Vec<u8> = s
        .trim_matches(['{', '}'])
        .bytes()
        .filter(|b| *b != b'-')
        .collect();
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

pub(crate) fn format_uuid(b: &[u8]) -> String {
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// An exact decimal from text (`-12.50`) with at most `p` digits, `s` after the point.
pub(crate) fn parse_decimal(text: &str, p: u8, s: i8) -> Option<i128> {
    let t = text.trim();
    let (negative, digits) = match t.as_bytes().first()? {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let scale = s.max(0) as usize;
    let (kept, extra) = frac.split_at(frac.len().min(scale));
    if extra.bytes().any(|b| b != b'0') {
        return None;
    }
    let int = int.trim_start_matches('0');
    if int.len() + scale > p as usize {
        return None;
    }
    let mut value: i128 = 0;
    for b in int.bytes().chain(kept.bytes()) {
        value = value * 10 + i128::from(b - b'0');
    }
    for _ in kept.len()..scale {
        value *= 10;
    }
    Some(if negative { -value } else { value })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_types_map_by_name_then_affinity() {
        let t = |s: &str| SqlType::from_declared(s);
        assert_eq!(t("integer"), Some(SqlType::Int64));
        assert_eq!(t("UNSIGNED BIG INT"), Some(SqlType::Int64));
        assert_eq!(t("smallint"), Some(SqlType::Int16));
        assert_eq!(t("decimal(12, 2)"), Some(SqlType::Decimal(12, 2)));
        assert_eq!(t("NUMERIC(50,2)"), Some(SqlType::Text));
        assert_eq!(t("DECIMAL_TEXT(38,10)"), Some(SqlType::Decimal(38, 10)));
        assert_eq!(t("numeric"), Some(SqlType::Float64));
        assert_eq!(t("VARCHAR(20)"), Some(SqlType::Text));
        assert_eq!(t("timestamp with time zone"), Some(SqlType::TimestampTz));
        assert_eq!(t("datetime"), Some(SqlType::Timestamp));
        assert_eq!(t("double precision"), Some(SqlType::Float64));
        assert_eq!(t("blob"), Some(SqlType::Blob));
        assert_eq!(t(""), None);
    }

    #[test]
    fn dates_and_times_round_trip_through_text() {
        for days in [-719_162, 0, 2_932_896, 19_000] {
            assert_eq!(parse_date(&format_date(days)), Some(days));
        }
        assert_eq!(format_date(-719_162), "0001-01-01");
        assert_eq!(parse_date("2023-02-29"), None);
        assert_eq!(parse_time("23:59:59.999999"), Some(MICROS_PER_DAY - 1));
        assert_eq!(parse_time("12:00:00.1234567"), None);
        assert_eq!(format_time(1_500_000_000), "00:00:01.5");
        assert_eq!(
            parse_timestamp("1970-01-01T01:00:00+01:00"),
            Some(0),
            "offsets are applied"
        );
        assert_eq!(parse_timestamp("1970-01-02"), Some(MICROS_PER_DAY));
        assert_eq!(format_timestamp(-1_000), "1969-12-31 23:59:59.999999");
        assert_eq!(format_timestamp(-1), "1969-12-31 23:59:59.999999999");
    }

    #[test]
    fn decimals_parse_exactly_or_not_at_all() {
        assert_eq!(parse_decimal("-12.5", 5, 2), Some(-1250));
        assert_eq!(parse_decimal("12.500", 5, 2), Some(1250));
        assert_eq!(parse_decimal("12.501", 5, 2), None);
        assert_eq!(parse_decimal("1234", 5, 2), None);
        assert_eq!(parse_decimal("abc", 5, 2), None);
        assert_eq!(parse_decimal(".5", 5, 2), Some(50));
    }
}
