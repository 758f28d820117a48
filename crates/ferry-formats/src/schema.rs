//! Declared schemas (`schema:` in a manifest) and how schemas are reported.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use ferry_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// One declared column.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnSpec {
    pub name: String,
    /// A type name: string, int8..int64, uint8..uint64, float32, float64, bool, date,
    /// time, timestamp, `timestamp(ms)`, `timestamp(us, UTC)`, timestamptz,
    /// `decimal(P,S)`, binary; or any Arrow type name (`Decimal128(10, 2)`).
    #[serde(rename = "type")]
    pub data_type: String,
    #[serde(default = "yes")]
    pub nullable: bool,
}

fn yes() -> bool {
    true
}

/// A field as reported in a run's technical metadata.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FieldDescription {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: String,
    pub nullable: bool,
}

pub fn describe_schema(schema: &Schema) -> Vec<FieldDescription> {
    schema
        .fields()
        .iter()
        .map(|f| FieldDescription {
            name: f.name().clone(),
            data_type: f.data_type().to_string(),
            nullable: f.is_nullable(),
        })
        .collect()
}

pub fn declared_schema(columns: &[ColumnSpec]) -> Result<SchemaRef> {
    let fields: Result<Vec<Field>> = columns
        .iter()
        .map(|c| {
            let t = parse_type(&c.data_type).map_err(|reason| {
                Error::invalid_option(format!("schema column '{}'", c.name), reason)
            })?;
            Ok(Field::new(&c.name, t, c.nullable))
        })
        .collect();
    Ok(Arc::new(Schema::new(fields?)))
}

/// Parses a type name as a user writes it, or as Arrow prints it.
pub fn parse_type(name: &str) -> std::result::Result<DataType, String> {
    let lower = name.trim().to_ascii_lowercase();
    let simple = match lower.as_str() {
        "string" | "str" | "utf8" | "text" | "varchar" => Some(DataType::Utf8),
        "int8" | "tinyint" => Some(DataType::Int8),
        "int16" | "smallint" => Some(DataType::Int16),
        "int32" | "int" | "integer" => Some(DataType::Int32),
        "int64" | "bigint" | "long" => Some(DataType::Int64),
        "uint8" => Some(DataType::UInt8),
        "uint16" => Some(DataType::UInt16),
        "uint32" => Some(DataType::UInt32),
        "uint64" => Some(DataType::UInt64),
        "float32" | "float" | "real" => Some(DataType::Float32),
        "float64" | "double" => Some(DataType::Float64),
        "bool" | "boolean" => Some(DataType::Boolean),
        "date" | "date32" => Some(DataType::Date32),
        "time" => Some(DataType::Time64(TimeUnit::Microsecond)),
        "timestamp" => Some(DataType::Timestamp(TimeUnit::Microsecond, None)),
        "timestamptz" => Some(DataType::Timestamp(
            TimeUnit::Microsecond,
            Some("UTC".into()),
        )),
        "binary" | "bytes" => Some(DataType::Binary),
        _ => None,
    };
    if let Some(t) = simple {
        return Ok(t);
    }
    if let Some(args) = call_args(&lower, "decimal").or_else(|| call_args(&lower, "numeric")) {
        let parts: Vec<&str> = args.split(',').map(str::trim).collect();
        let (p, s) = match parts.as_slice() {
            [p] => (p.parse::<u8>(), Ok(0i8)),
            [p, s] => (p.parse::<u8>(), s.parse::<i8>()),
            _ => return Err(format!("'{name}': expected decimal(PRECISION, SCALE)")),
        };
        let (Ok(p), Ok(s)) = (p, s) else {
            return Err(format!("'{name}': precision and scale must be numbers"));
        };
        return match p {
            1..=38 => Ok(DataType::Decimal128(p, s)),
            39..=76 => Ok(DataType::Decimal256(p, s)),
            _ => Err(format!("'{name}': precision must be 1 to 76")),
        };
    }
    if let Some(args) = call_args(&lower, "timestamp") {
        let mut parts = args.splitn(2, ',').map(str::trim);
        let unit = match parts.next() {
            Some("s") => TimeUnit::Second,
            Some("ms") => TimeUnit::Millisecond,
            Some("us") => TimeUnit::Microsecond,
            Some("ns") => TimeUnit::Nanosecond,
            _ => return Err(format!("'{name}': the unit must be s, ms, us or ns")),
        };
        // Keep the zone as written (zone names are case-sensitive).
        let zone = name
            .split_once(',')
            .map(|(_, z)| z.trim().trim_end_matches(')').trim().to_string())
            .filter(|z| !z.is_empty());
        return Ok(DataType::Timestamp(unit, zone.map(Into::into)));
    }
    name.trim().parse::<DataType>().map_err(|_| {
        format!(
            "unknown type '{name}'; use string, int64, float64, bool, date, timestamp, \
             timestamp(us, UTC), decimal(P,S), binary or an Arrow type name"
        )
    })
}

fn call_args<'a>(text: &'a str, func: &str) -> Option<&'a str> {
    text.strip_prefix(func)?
        .trim()
        .strip_prefix('(')?
        .strip_suffix(')')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn friendly_and_arrow_type_names() {
        assert_eq!(parse_type("BIGINT").unwrap(), DataType::Int64);
        assert_eq!(
            parse_type("decimal(10, 2)").unwrap(),
            DataType::Decimal128(10, 2)
        );
        assert_eq!(
            parse_type("decimal(50,4)").unwrap(),
            DataType::Decimal256(50, 4)
        );
        assert_eq!(
            parse_type("timestamp(ms, Europe/Berlin)").unwrap(),
            DataType::Timestamp(TimeUnit::Millisecond, Some("Europe/Berlin".into()))
        );
        assert_eq!(
            parse_type("Decimal128(12, 3)").unwrap(),
            DataType::Decimal128(12, 3)
        );
        assert!(parse_type("decimal(99,1)").is_err());
        assert!(parse_type("money")
            .unwrap_err()
            .contains("unknown type 'money'"));
    }
}
